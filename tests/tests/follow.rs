//! Following a job's output over the WebSocket, the way UCloud's core does: the
//! simulator opens `/ucloud/jobs.provider.{P}/websocket`, the gateway starts the
//! jobs.follow plugin as the mapped user through the setuid dispatcher, and the plugin
//! streams the output of a real Slurm job. Also what the gateway does with a bad token
//! and with hostile frames.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ucloud_im_tests::{
    base64url, job_id, uid_of, ws_client_frame, ws_connect, ws_server_frame, Stack,
};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

/// Tests that run the plugin as Alice take turns, so that "Alice's jobs.follow
/// process" names exactly one.
static ALICE_FOLLOWS: Mutex<()> = Mutex::new(());

/// A Job as UCloud's core sends it, running `sh -c SCRIPT` for Alice.
fn job(stack: &Stack, id: &str, script: &str) -> Value {
    stack.shell_job(ALICE, id, script, 10)
}

/// Submits the job as Alice; returns the Job with the providerGeneratedId UCloud
/// would then send, and the Slurm id.
fn start(stack: &Stack, id: &str, script: &str) -> (Value, String) {
    let mut job = job(stack, id, script);
    let body = json!({ "items": [job] }).to_string();
    let path = format!("/ucloud/{}/jobs", stack.get("UCLOUD_IM_PROVIDER"));
    let (status, answer) = stack.call(Some(ALICE), "POST", &path, Some(&body));
    assert_eq!(status, 200, "jobs.create: {answer}");
    let provider_id = answer["responses"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {answer}"))
        .to_string();
    let slurm_id = provider_id.rsplit('/').next().unwrap().to_string();
    job["providerGeneratedId"] = json!(provider_id);
    (job, slurm_id)
}

fn scancel(slurm_id: &str) {
    let _ = Command::new("scancel").arg(slurm_id).status();
}

fn follow_command(stack: &Stack, user: &str, job: &Value, extra: &[&str]) -> Command {
    let url = stack.get("UCLOUD_IM_GATEWAY_URL");
    let mut command = Command::new(stack.bin("ucloud-sim"));
    command
        .arg("follow")
        .args(["--url", &url])
        .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
        .args(["--state", &stack.get("UCLOUD_IM_STATE")])
        .args(["--user", user]);
    if url.starts_with("https:") {
        command.args(["--ca", &stack.get("UCLOUD_IM_CA")]);
    }
    command.args(extra).arg(job.to_string());
    command
}

/// Runs `ucloud-sim follow` to its end; its JSON lines.
fn follow(stack: &Stack, user: &str, job: &Value, extra: &[&str]) -> Vec<Value> {
    let output = follow_command(stack, user, job, extra)
        .output()
        .expect("cannot run ucloud-sim follow");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ucloud-sim follow failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn messages(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "message").collect()
}

fn joined(lines: &[Value], field: &str) -> String {
    messages(lines)
        .iter()
        .filter_map(|m| m["payload"][field].as_str())
        .collect()
}

/// Processes of `uid` running the jobs.follow plugin (its script stays open in the shell).
fn follow_plugins_of(uid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if !entry.metadata().is_ok_and(|m| m.uid() == uid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.ends_with("plugins/jobs.follow"))
        }) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn alice_follows_her_running_job_line_by_line_to_its_end() {
    let stack = Stack::with_slurm();
    let _turn = ALICE_FOLLOWS.lock().unwrap_or_else(|e| e.into_inner());
    let id = job_id();
    let script = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.4; done; echo oops >&2";
    let (job, slurm_id) = start(&stack, &id, script);
    let started = Instant::now();
    let lines = follow(&stack, ALICE, &job, &[]);
    scancel(&slurm_id);
    let expected: String = (1..=6).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(joined(&lines, "stdout"), expected, "{lines:#?}");
    assert_eq!(joined(&lines, "stderr"), "oops\n", "{lines:#?}");
    let msgs = messages(&lines);
    assert!(
        msgs.len() >= 2,
        "the output came in one piece, not as it grew: {lines:#?}"
    );
    for m in &msgs {
        assert!(
            m["streamId"]
                .as_str()
                .is_some_and(|s| s.starts_with("sim-")),
            "{m}"
        );
        assert_eq!(m["payload"]["rank"], 0, "{m}");
        assert_eq!(m["payload"]["streamId"], format!("slurm-{slurm_id}"), "{m}");
    }
    let n = lines.len();
    assert!(n >= 2, "{lines:#?}");
    assert_eq!(lines[n - 2]["type"], "response", "{lines:#?}");
    assert_eq!(lines[n - 2]["status"], 200, "{lines:#?}");
    assert_eq!(lines[n - 1]["close"], 1000, "{lines:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the stream did not end with the job"
    );
}

#[test]
fn bob_cannot_follow_alices_job() {
    let stack = Stack::with_slurm();
    let id = job_id();
    let (job, slurm_id) = start(&stack, &id, "echo secret-of-alice; sleep 60");
    let lines = follow(&stack, BOB, &job, &[]);
    scancel(&slurm_id);
    assert!(messages(&lines).is_empty(), "Bob saw output: {lines:#?}");
    let response = lines
        .iter()
        .find(|l| l["type"] == "response")
        .unwrap_or_else(|| panic!("no response: {lines:#?}"));
    assert_eq!(response["status"], 404, "{response}");
    assert!(!format!("{lines:?}").contains("secret-of-alice"));
}

#[test]
fn a_bad_token_is_refused_before_any_upgrade() {
    let stack = Stack::with_slurm();
    let job = job(&stack, "never-runs", "true");
    for token in ["garbage", "a.b.c"] {
        let lines = follow(&stack, ALICE, &job, &["--token", token]);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert_eq!(lines[0]["http"], 401, "{lines:#?}");
    }
    let expired = stack.token(&["--fresh", "--lifetime", "60", "--iat-offset", "-3600"]);
    let lines = follow(&stack, ALICE, &job, &["--token", &expired]);
    assert_eq!(lines[0]["http"], 401, "{lines:#?}");
}

#[test]
fn hostile_frames_close_the_socket_with_the_right_code() {
    let stack = Stack::with_slurm();
    let job = job(&stack, "never-runs", "true");
    let masked = |first: u8, payload: &[u8]| -> String {
        let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f.iter().map(|b| format!("{b:02x}")).collect()
    };
    let big_header = "81ff0000000000200000".to_string() + "00000000"; // 2 MiB announced
    let cases: Vec<(String, u16, &str)> = vec![
        ("810568656c6c6f".into(), 1002, "unmasked"),
        (masked(0xC1, b"x"), 1002, "reserved bits"),
        (masked(0x83, b"x"), 1002, "unknown opcode"),
        (big_header, 1009, "oversized"),
        (masked(0x82, b"bin"), 1003, "binary"),
        (masked(0x81, b"not json"), 1008, "not an init"),
        (masked(0x81, &[0xff, 0xfe]), 1007, "not UTF-8"),
    ];
    for (raw, code, what) in cases {
        let lines = follow(&stack, ALICE, &job, &["--raw", &raw]);
        let last = lines.last().unwrap_or_else(|| panic!("{what}: nothing"));
        assert_eq!(last["close"], code, "{what}: {lines:#?}");
        assert!(
            lines.iter().all(|l| l["type"] != "message"),
            "{what}: {lines:#?}"
        );
    }
}

#[test]
fn cancel_stops_the_plugin() {
    let stack = Stack::with_slurm();
    let _turn = ALICE_FOLLOWS.lock().unwrap_or_else(|e| e.into_inner());
    let alice = uid_of(&stack.local_of(ALICE));
    let id = job_id();
    let (job, slurm_id) = start(&stack, &id, "echo one; sleep 2; echo two; sleep 300");
    let mut child = follow_command(&stack, ALICE, &job, &["--cancel-after", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run ucloud-sim follow");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("one"), "{first}");
    let running = follow_plugins_of(alice);
    assert_eq!(running.len(), 1, "Alice's jobs.follow plugin: {running:?}");
    let rest: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success());
    let last = rest.last().unwrap_or_else(|| panic!("no end"));
    assert_eq!(last["close"], 1000, "{rest:#?}");
    assert_eq!(last["reason"], "cancelled", "{rest:#?}");
    // The job runs on; only the stream ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !follow_plugins_of(alice).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the plugin still runs after the cancel: {:?}",
            follow_plugins_of(alice)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = Command::new("squeue")
        .args(["-h", "-j", &slurm_id, "-o", "%T"])
        .output()
        .unwrap();
    scancel(&slurm_id);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "RUNNING");
}

/// Runs the installed jobs.follow plugin as `local` the way the dispatcher does (its
/// environment, the request as a file), but with `squeue` replaced by one that knows
/// no job, as Slurm's controller is MinJobAge (5 min here) after a job's end.
fn follow_forgotten(stack: &Stack, local: &str, init: &Value) -> std::process::Output {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("follow-acct-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let chmod = |path: &std::path::Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(&dir, 0o755);
    // What squeue 22.05 answers once the controller has purged the job.
    let squeue = dir.join("squeue");
    std::fs::write(
        &squeue,
        "#!/bin/sh\ncase \" $* \" in\n*' -j '*) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;\nesac\nexit 0\n",
    )
    .unwrap();
    chmod(&squeue, 0o755);
    let request = dir.join("request.json");
    std::fs::write(&request, init.to_string()).unwrap();
    chmod(&request, 0o644);
    let passwd = Command::new("getent")
        .args(["passwd", local])
        .output()
        .unwrap();
    let home = String::from_utf8_lossy(&passwd.stdout)
        .split(':')
        .nth(5)
        .unwrap_or_else(|| panic!("no passwd entry for {local}"))
        .to_string();
    let libexec = stack.get("UCLOUD_IM_LIBEXEC");
    let plugin = format!("{}/jobs.follow", stack.get("UCLOUD_IM_PLUGIN_DIR"));
    let output = ucloud_im_tests::run_as(
        local,
        &[
            "env",
            "-i",
            &format!("PATH={}:/usr/local/bin:/usr/bin:/bin", dir.display()),
            &format!("HOME={home}"),
            &format!("USER={local}"),
            &format!("LOGNAME={local}"),
            "LANG=C.UTF-8",
            "UCLOUD_CALL=jobs.follow",
            &format!("UCLOUD_IM_LIBEXEC={libexec}"),
            &format!("UCLOUD_IM_ETC={}", stack.get("UCLOUD_IM_ETC")),
            &plugin,
            &request.to_string_lossy(),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// The last line of a plugin's stderr, its failure (ucloud-im-protocol(7)).
fn failure(output: &std::process::Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{stderr:?}: {e}"))
}

#[test]
fn a_job_slurm_has_forgotten_is_followed_from_accounting() {
    let stack = Stack::with_slurm();
    let _turn = ALICE_FOLLOWS.lock().unwrap_or_else(|e| e.into_inner());
    let id = job_id();
    let (job, slurm_id) = start(&stack, &id, "echo acct-1; echo acct-2; echo warn >&2");
    // Accounting has the job once it ended (right after, a row may still be partial).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = Command::new("sacct")
            .args(["-X", "-P", "-n", "-j", &slurm_id, "-o", "JobName,State"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&row.stdout).trim() == format!("{id}|COMPLETED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job {slurm_id} is not COMPLETED in sacct: {}",
            String::from_utf8_lossy(&row.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let alice = stack.local_of(ALICE);
    let bob = stack.local_of(BOB);

    for init in [
        json!({"type": "init", "job": job}),
        json!({"type": "init", "job": {"id": id}}),
    ] {
        let output = follow_forgotten(&stack, &alice, &init);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines[..2],
            ["UCLOUD-IM/1", r#"{"websocket":true}"#],
            "{stdout}"
        );
        let payloads: Vec<Value> = lines[2..]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let all =
            |field: &str| -> String { payloads.iter().filter_map(|p| p[field].as_str()).collect() };
        assert_eq!(all("stdout"), "acct-1\nacct-2\n", "{stdout}");
        assert_eq!(all("stderr"), "warn\n", "{stdout}");
        assert!(
            payloads
                .iter()
                .all(|p| p["streamId"] == format!("slurm-{slurm_id}")),
            "{stdout}"
        );
    }

    // A providerGeneratedId naming another job, and Bob asking for Alice's job.
    let mut other = job.clone();
    other["providerGeneratedId"] = json!(format!("{alice}/1"));
    let output = follow_forgotten(&stack, &alice, &json!({"type": "init", "job": other}));
    assert!(!output.status.success());
    assert_eq!(failure(&output)["status"], 400, "{:?}", output);
    let output = follow_forgotten(&stack, &bob, &json!({"type": "init", "job": job}));
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "Bob saw {:?}", output.stdout);
    assert_eq!(failure(&output)["status"], 404, "{:?}", output);
}

/// The gateway pings every 30 s (ucloud-gateway(8)), so a job that prints nothing
/// for long keeps its stream: a client that answers the ping still gets the job's
/// output afterwards.
#[test]
fn a_quiet_job_keeps_its_stream_by_pings_every_30_s() {
    use std::io::Write;
    let stack = Stack::with_slurm();
    let _turn = ALICE_FOLLOWS.lock().unwrap_or_else(|e| e.into_inner());
    let id = job_id();
    // Quiet past the first ping, then one line.
    let (job, slurm_id) = start(&stack, &id, "sleep 34; echo after-the-ping; sleep 120");
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let (head, mut stream) = ws_connect(
        &stack,
        &format!(
            "/ucloud/jobs.provider.{provider}/websocket?usernameHint={}",
            base64url(ALICE.as_bytes())
        ),
        &format!("Authorization: Bearer {}\r\n", stack.token(&[])),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let upgraded = Instant::now();
    let init = json!({
        "call": format!("jobs.provider.{provider}.follow"),
        "streamId": "ping-test",
        "payload": {"type": "init", "job": job},
    });
    stream
        .write_all(&ws_client_frame(0x1, init.to_string().as_bytes()))
        .unwrap();

    let mut pinged = None;
    let mut text = Vec::new();
    let outcome = loop {
        let (opcode, payload) = match ws_server_frame(&mut stream) {
            Ok(frame) => frame,
            Err(e) => break format!("read: {e}"),
        };
        match opcode {
            0x9 => {
                pinged.get_or_insert(upgraded.elapsed());
                stream.write_all(&ws_client_frame(0xA, &payload)).unwrap();
            }
            0x1 => {
                let message: Value = serde_json::from_slice(&payload).unwrap();
                let got_line = message["payload"]["stdout"]
                    .as_str()
                    .is_some_and(|s| s.contains("after-the-ping"));
                text.push(message);
                if got_line {
                    break "the line".into();
                }
            }
            0x8 => break format!("closed: {payload:?}"),
            other => break format!("opcode {other}"),
        }
    };
    let _ = stream.write_all(&ws_client_frame(0x8, &1000u16.to_be_bytes()));
    scancel(&slurm_id);
    assert_eq!(outcome, "the line", "{text:#?}");
    let pinged = pinged.expect("no ping before the job's line");
    assert!(
        pinged > Duration::from_secs(25) && pinged < Duration::from_secs(35),
        "the first ping came {pinged:?} after the upgrade"
    );
}

/// A client that sends pings and never reads the pongs would make the gateway
/// queue its frames without end while it waits to write the answers. With the
/// backlog full (ucloud-gateway(8)) the gateway stops reading it, and after 5 s of
/// that closes it with 1008 and the reason, which the client finds once it reads.
#[test]
fn a_client_that_sends_without_reading_is_closed_with_1008() {
    use std::io::Write;
    let stack = Stack::with_slurm();
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let (head, mut stream) = ws_connect(
        &stack,
        &format!(
            "/ucloud/jobs.provider.{provider}/websocket?usernameHint={}",
            base64url(ALICE.as_bytes())
        ),
        &format!("Authorization: Bearer {}\r\n", stack.token(&[])),
    );
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Pings of the largest size, in batches, until the gateway takes no more (the
    // write times out) or 64 MiB went; well within the 30 s the init may take.
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let batch = ws_client_frame(0x9, &[0x55; 125]).repeat(512);
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < 64 << 20 && started.elapsed() < Duration::from_secs(15) {
        match stream.write_all(&batch) {
            Ok(()) => sent += batch.len(),
            Err(_) => break,
        }
    }
    // The gateway gives up on a backlog that stood still for 5 s.
    std::thread::sleep(Duration::from_secs(7));
    let mut pongs = 0usize;
    let close = loop {
        match ws_server_frame(&mut stream) {
            Ok((0xA, _)) => pongs += 1,
            Ok((0x8, payload)) => break payload,
            Ok((opcode, _)) => panic!("opcode {opcode} after {pongs} pongs"),
            Err(e) => panic!("no close after {pongs} pongs ({sent} bytes sent): {e}"),
        }
    };
    assert!(close.len() >= 2, "a close without a code");
    let code = u16::from_be_bytes([close[0], close[1]]);
    let reason = String::from_utf8_lossy(&close[2..]);
    assert_eq!(code, 1008, "{reason} ({pongs} pongs, {sent} bytes sent)");
    assert!(
        reason.contains("without reading"),
        "{reason} ({pongs} pongs, {sent} bytes sent)"
    );
    // Fewer pongs than pings: the gateway stopped taking them.
    assert!(
        pongs * 131 < sent,
        "{pongs} pongs for {sent} bytes of pings"
    );
}
