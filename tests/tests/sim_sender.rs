//! The simulator and the sender as the local stack runs them: the sender delivers
//! the stack's outbox to the stack's simulator, in order, through a simulator
//! restart; the simulator's refresh, token checks, jobs and log behave like UCloud.
//! (The simulator alone, on its own port and state, is tested in bins/ucloud-sim.)
//!
//! These tests share the stack's outbox and simulator: they hold one lock so they
//! never run at the same time, and pick new job ids so other tests' traffic cannot
//! confuse them. UCloud takes updates only for jobs it created, so each job is made
//! known to the simulator first, as UCloud's jobs.create would have made it.

use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use ucloud_im_tests::{job_id, run_as, sim_log, unique, wait_until, Stack};

const ALICE: &str = "AliceHansen#1001";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn outbox(stack: &Stack) -> PathBuf {
    stack.prefix().join("var/lib/ucloud-im/outbox")
}

/// Queues a message the way writers must (contracts.md): `tmp/`, fsync, rename.
fn enqueue(stack: &Stack, path: &str, body: &Value, reply: Option<&str>) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{:013}-{:010}-{:06}.json",
        now_ms(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut message = json!({"path": path, "body": body});
    if let Some(tag) = reply {
        message["reply"] = json!(tag);
    }
    let dir = outbox(stack);
    let tmp = dir.join("tmp").join(&name);
    let queued = dir.join("queue").join(&name);
    fs::write(&tmp, message.to_string()).unwrap();
    fs::File::open(&tmp).unwrap().sync_all().unwrap();
    fs::rename(&tmp, &queued).unwrap();
    queued
}

fn update_body(job: &str, seq: usize) -> Value {
    json!({"items": [{"id": job, "update": {"status": format!("step {seq}")}}]})
}

/// The `status` texts of the updates the simulator received for `job`, in order.
fn received_steps(stack: &Stack, job: &str) -> Vec<String> {
    sim_log(stack)
        .into_iter()
        .filter(|l| l["path"] == "/api/jobs/control/update" && l["status"] == 200)
        .filter(|l| l["body"]["items"][0]["id"] == job)
        .map(|l| {
            l["body"]["items"][0]["update"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// `ucloud-sim call` straight to the simulator (not the gateway).
fn sim_call(
    stack: &Stack,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut command = Command::new(stack.bin("ucloud-sim"));
    command
        .args([
            "call",
            "--url",
            &stack.get("UCLOUD_SIM_URL"),
            "--ca",
            &stack.get("UCLOUD_IM_CA"),
        ])
        .args(["--token", token, method, path]);
    if let Some(body) = body {
        command.arg(body);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "ucloud-sim call: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ucloud_im_tests::parse_call_output(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

fn refresh_token(stack: &Stack) -> String {
    fs::read_to_string(stack.prefix().join("etc/ucloud-im/refresh-token"))
        .unwrap()
        .trim()
        .to_string()
}

fn access_token(stack: &Stack) -> String {
    let body = json!({"items": [{"refreshToken": refresh_token(stack)}]}).to_string();
    let (status, answer) = sim_call(stack, "-", "POST", "/auth/providers/refresh", Some(&body));
    assert_eq!(status, 200, "{answer}");
    answer["responses"][0]["accessToken"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn sender_delivers_in_order_and_stores_replies() {
    let _serial = serial();
    let stack = Stack::load();
    let job = job_id();
    stack.ucloud_knows(&job, ALICE, None);
    let tag = unique("reply");
    let count = 6;
    let mut queued = Vec::new();
    for seq in 0..count {
        let reply = (seq == count - 1).then_some(tag.as_str());
        queued.push(enqueue(
            &stack,
            "/api/jobs/control/update",
            &update_body(&job, seq),
            reply,
        ));
    }
    wait_until("the sender empties our part of the queue", 30, || {
        queued.iter().all(|q| !q.exists())
    });
    let expected: Vec<String> = (0..count).map(|s| format!("step {s}")).collect();
    assert_eq!(
        received_steps(&stack, &job),
        expected,
        "delivered once each, in queue order"
    );
    let reply = outbox(&stack).join("replies").join(format!("{tag}.json"));
    let answer: Value = serde_json::from_slice(&fs::read(&reply).unwrap()).unwrap();
    // jobs/control/update answers util.Empty.
    assert_eq!(answer, json!({}));
    fs::remove_file(reply).unwrap();
    // The sender authenticated with a provider token, never with the refresh token.
    let line = sim_log(&stack)
        .into_iter()
        .rfind(|l| l["body"]["items"][0]["id"] == job.as_str())
        .unwrap();
    let auth = line["headers"]["authorization"].as_str().unwrap();
    assert!(auth.starts_with("Bearer ey"), "{auth}");
    assert!(!auth.contains(&refresh_token(&stack)));
}

#[test]
fn refused_messages_go_to_failed_and_do_not_block_the_queue() {
    let _serial = serial();
    let stack = Stack::load();
    let job = job_id();
    stack.ucloud_knows(&job, ALICE, None);
    // UCloud's core cannot decode a status that is no string (JobUpdate.status is
    // an Option[string]): 400, for a job it knows.
    let bad = enqueue(
        &stack,
        "/api/jobs/control/update",
        &json!({"items": [{"id": job, "update": {"status": 7}}]}),
        None,
    );
    let good = enqueue(
        &stack,
        "/api/jobs/control/update",
        &update_body(&job, 1),
        None,
    );
    wait_until("both messages leave the queue", 30, || {
        !bad.exists() && !good.exists()
    });
    let name = bad.file_name().unwrap().to_str().unwrap().to_string();
    let failed = outbox(&stack).join("failed");
    assert!(
        failed.join(&name).exists(),
        "the refused message is kept in failed/"
    );
    let stem = name.strip_suffix(".json").unwrap();
    let response: Value =
        serde_json::from_slice(&fs::read(failed.join(format!("{stem}.response"))).unwrap())
            .unwrap();
    assert_eq!(response["status"], 400);
    assert_eq!(response["body"]["errorCode"], "BAD_REQUEST");
    assert_eq!(received_steps(&stack, &job), vec!["step 1"]);
    fs::remove_file(failed.join(&name)).unwrap();
    fs::remove_file(failed.join(format!("{stem}.response"))).unwrap();
}

/// The stack's simulator, stopped for a test and started again exactly as it ran
/// (same command line, same log, pid file updated), even when the test fails.
struct SimOutage {
    pid_file: PathBuf,
    log_file: PathBuf,
    cmdline: Vec<String>,
    stopped: bool,
}

impl SimOutage {
    fn begin(stack: &Stack) -> SimOutage {
        let run = Path::new(&stack.get("UCLOUD_IM_STACK_LOGS"))
            .parent()
            .unwrap()
            .to_path_buf();
        let pid_file = run.join("pids/sim.pid");
        let pid: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect();
        assert!(
            cmdline[0].ends_with("ucloud-sim") && cmdline[1] == "serve",
            "{cmdline:?}"
        );
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_until("the simulator stops", 10, || {
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid)
        });
        SimOutage {
            pid_file,
            log_file: Path::new(&stack.get("UCLOUD_IM_STACK_LOGS")).join("sim.log"),
            cmdline,
            stopped: true,
        }
    }

    fn end(&mut self, stack: &Stack) {
        if !self.stopped {
            return;
        }
        self.stopped = false;
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log_file)
            .unwrap();
        let child = Command::new("setsid")
            .args(&self.cmdline)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        fs::write(&self.pid_file, format!("{}\n", child.id())).unwrap();
        // Not waited for: the simulator outlives the test, like the stack's.
        std::mem::forget(child);
        let url = stack.get("UCLOUD_SIM_URL");
        let address = url.trim_start_matches("https://").to_string();
        wait_until("the simulator listens again", 10, || {
            std::net::TcpStream::connect(&address).is_ok()
        });
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for SimOutage {
    fn drop(&mut self) {
        if self.stopped {
            let stack = Stack::load();
            self.end(&stack);
        }
    }
}

#[test]
fn nothing_is_lost_while_the_simulator_is_down() {
    let _serial = serial();
    let stack = Stack::load();
    let token = access_token(&stack);
    // A drive the stack registered, to check the simulator's state survives.
    let state: Value = serde_json::from_slice(
        &fs::read(Path::new(&stack.get("UCLOUD_IM_STATE")).join("drives.json")).unwrap(),
    )
    .unwrap();
    let drive = state["drives"]
        .as_object()
        .unwrap()
        .values()
        .find(|d| {
            d["providerGeneratedId"]
                .as_str()
                .is_some_and(|g| !g.is_empty())
        })
        .cloned()
        .unwrap_or_else(|| panic!("the stack registered no drive with a provider id: {state}"));

    let job = job_id();
    stack.ucloud_knows(&job, ALICE, None);
    let mut outage = SimOutage::begin(&stack);
    let queued: Vec<PathBuf> = (0..4)
        .map(|seq| {
            enqueue(
                &stack,
                "/api/jobs/control/update",
                &update_body(&job, seq),
                None,
            )
        })
        .collect();
    // UCloud is down: the sender must keep every message, in the queue or (the
    // one it keeps trying) claimed under its lease's token (ucloud-sender(8), HOSTS).
    std::thread::sleep(Duration::from_secs(3));
    let claimed = queued[0]
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("claimed");
    let kept = |q: &PathBuf| {
        let name = q.file_name().unwrap();
        q.exists()
            || fs::read_dir(&claimed)
                .map(|dirs| dirs.flatten().any(|d| d.path().join(name).exists()))
                .unwrap_or(false)
    };
    assert!(
        queued.iter().all(kept),
        "a message was lost while UCloud was down"
    );
    outage.end(&stack);
    wait_until("the sender delivers after the restart", 45, || {
        queued.iter().all(|q| !kept(q))
    });
    let expected: Vec<String> = (0..4).map(|s| format!("step {s}")).collect();
    assert_eq!(received_steps(&stack, &job), expected);

    // The restarted simulator kept its state: same refresh token, and the drive's
    // provider id still reserved, so registering it again is UCloud's 409.
    assert_eq!(access_token(&stack).split('.').count(), 3);
    let body = json!({"items": [{
        "spec": {"title": drive["specification"]["title"], "product": drive["specification"]["product"]},
        "providerGeneratedId": drive["providerGeneratedId"],
        "createdBy": drive["owner"]["createdBy"],
        "project": drive["owner"]["project"],
    }]});
    let (status, answer) = sim_call(
        &stack,
        &token,
        "POST",
        "/api/files/collections/control/register",
        Some(&body.to_string()),
    );
    assert_eq!(
        (status, &answer["errorCode"]),
        (409, &json!("CONFLICT")),
        "{answer}"
    );
}

#[test]
fn simulator_speaks_uclouds_provider_api() {
    let _serial = serial();
    let stack = Stack::load();
    let token = access_token(&stack);
    let job = job_id();
    // An update for a job UCloud never created is refused, and recorded nowhere.
    let (status, answer) = sim_call(
        &stack,
        &token,
        "POST",
        "/api/jobs/control/update",
        Some(&update_body(&job, 0).to_string()),
    );
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["errorCode"], "NOT_FOUND", "{answer}");
    stack.ucloud_knows(&job, ALICE, None);
    let (status, answer) = sim_call(
        &stack,
        &token,
        "POST",
        "/api/jobs/control/update",
        Some(&update_body(&job, 0).to_string()),
    );
    assert_eq!((status, answer), (200, json!({})));

    let (status, answer) = sim_call(
        &stack,
        "-",
        "POST",
        "/auth/providers/refresh",
        Some(r#"{"items":[{"refreshToken":"not-the-token"}]}"#),
    );
    assert_eq!(status, 401);
    assert!(answer["why"].is_string() && answer["errorCode"].is_string());

    // UCloud's own bearer token is signed by the same key, but is no provider token.
    let ucloud = stack.token(&[]);
    let before = sim_log(&stack).len();
    for bad in [None, Some(ucloud.as_str()), Some("forged.token.here")] {
        let mut command = Command::new(stack.bin("ucloud-sim"));
        command.args([
            "call",
            "--url",
            &stack.get("UCLOUD_SIM_URL"),
            "--ca",
            &stack.get("UCLOUD_IM_CA"),
        ]);
        command.args([
            "--token",
            bad.unwrap_or(""),
            "GET",
            &format!("/api/jobs/control/retrieve?id={job}"),
        ]);
        let out: Output = command.output().unwrap();
        let (status, answer) =
            ucloud_im_tests::parse_call_output(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(status, 401, "{bad:?}: {answer}");
    }
    let log = sim_log(&stack);
    let refused: Vec<&Value> = log[before..]
        .iter()
        .filter(|l| l["path"] == "/api/jobs/control/retrieve" && l["query"] == format!("id={job}"))
        .collect();
    assert_eq!(refused.len(), 3, "each refused call is logged once");
    assert!(refused
        .iter()
        .all(|l| l["status"] == 401 && l["method"] == "GET"));

    let (status, got) = sim_call(
        &stack,
        &token,
        "GET",
        &format!("/api/jobs/control/retrieve?id={job}"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(got["owner"]["createdBy"], ALICE);
    let steps: Vec<&Value> = got["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| &u["status"])
        .collect();
    assert_eq!(
        steps,
        [&json!("step 0")],
        "the update accepted before is part of the job, the refused one is not: {got}"
    );

    for line in sim_log(&stack) {
        for key in ["method", "path", "status", "headers"] {
            assert!(line.get(key).is_some(), "log line without {key}: {line}");
        }
        assert!(line["headers"].is_object());
    }
}

#[test]
fn sender_refuses_root_and_a_readable_refresh_token() {
    let _serial = serial();
    let stack = Stack::load();
    let sender = stack.bin("ucloud-sender");
    let out = Command::new(&sender).arg("--once").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let user = stack.get("UCLOUD_IM_SENDER_USER");
    let token_file = stack.prefix().join("etc/ucloud-im/refresh-token");
    let mode = fs::metadata(&token_file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o440, "the stack installs the refresh token 0440");
    struct Restore<'a>(&'a Path);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            fs::set_permissions(self.0, fs::Permissions::from_mode(0o440)).unwrap();
        }
    }
    let _restore = Restore(&token_file);
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o444)).unwrap();
    let out = run_as(&user, &[sender.to_str().unwrap(), "--once"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by everyone"));
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o460)).unwrap();
    let out = run_as(&user, &[sender.to_str().unwrap(), "--once"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable"));
}
