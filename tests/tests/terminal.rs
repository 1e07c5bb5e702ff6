//! A terminal in a running job, opened the way UCloud opens one: `ucloud-sim shell`
//! plays the core (the product's support, `jobs/interactiveSession` as the user)
//! and then the browser (the WebSocket with the session identifier and no token),
//! through the balancer; the gateway starts the jobs.shell plugin as the mapped
//! user through the setuid dispatcher, and the plugin runs `srun --pty` inside the
//! job on real Slurm.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use ucloud_im_tests::{job_id, wait_until, ScratchDir, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

/// Alice's job `id` sleeping for minutes, running in Slurm; its Job and Slurm id.
fn running_job(stack: &Stack, id: &str) -> (Value, u64) {
    let slurm_id = stack.create_job(ALICE, id, "sleep 600", 15, 1, None);
    wait_until("the job to run", 60, || slurm_state(slurm_id) == "RUNNING");
    (stack.shell_job(ALICE, id, "sleep 600", 15), slurm_id)
}

fn slurm_state(slurm_id: u64) -> String {
    let out = Command::new("squeue")
        .args(["-h", "-j", &slurm_id.to_string(), "-o", "%T"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn scancel(slurm_id: u64) {
    let _ = Command::new("scancel").arg(slurm_id.to_string()).status();
}

/// A running `ucloud-sim shell`: lines typed into it, its JSON lines read back.
struct Terminal {
    child: Child,
    keys: Option<ChildStdin>,
    lines: Receiver<Value>,
    seen: Vec<Value>,
}

impl Terminal {
    /// A terminal in `job` (`Value::Null`: in the folder `extra` names).
    fn open(stack: &Stack, user: &str, job: &Value, extra: &[&str]) -> Terminal {
        let mut command = Command::new(stack.bin("ucloud-sim"));
        command
            .arg("shell")
            .args(["--url", &stack.get("UCLOUD_IM_LB_URL")])
            .args(["--ca", &stack.get("UCLOUD_IM_CA")])
            .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
            .args(["--state", &stack.get("UCLOUD_IM_STATE")])
            .args(["--user", user])
            .args(extra)
            .args((!job.is_null()).then(|| job.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("cannot run ucloud-sim shell");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Terminal {
            keys: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        let keys = self.keys.as_mut().expect("still typing");
        writeln!(keys, "{line}").expect("ucloud-sim shell's stdin");
    }

    /// Waits until a line passes `done`; panics with all lines seen if none does.
    fn expect(&mut self, what: &str, secs: u64, done: impl Fn(&[Value]) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !done(&self.seen) {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!("{what}: not within {secs} s; seen: {:#?}", self.seen),
            }
        }
    }

    /// Closes stdin (the browser leaves); waits for the program's end.
    fn leave(mut self) -> Vec<Value> {
        drop(self.keys.take());
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.seen.extend(self.lines.try_iter());
        self.seen
    }
}

fn screen(lines: &[Value]) -> String {
    lines
        .iter()
        .filter(|l| l["type"] == "message")
        .filter_map(|l| l["payload"]["data"].as_str())
        .collect()
}

/// Processes of `local` whose command line is exactly `command`.
fn processes(local: &str, command: &str) -> usize {
    let out = Command::new("pgrep")
        .args(["-u", local, "-x", "-f", command])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_terminal_in_a_running_job_is_the_owners_shell_in_the_job() {
    let stack = Stack::with_slurm();
    let id = job_id();
    let (job, slurm_id) = running_job(&stack, &id);
    let local = stack.local_of(ALICE);
    let mut term = Terminal::open(&stack, ALICE, &job, &["--cols", "91", "--rows", "33"]);
    term.expect("the session", 30, |l| {
        l.iter().any(|v| v["session"]["type"] == "shell")
    });
    let session = term.seen[0]["session"].clone();
    assert_eq!(session["jobId"], id.as_str(), "{session}");
    // The job's environment and the owner's account, in the job's allocation.
    term.type_line("echo \"J=$SLURM_JOB_ID U=$(id -un)\"");
    let expected = format!("J={slurm_id} U={local}");
    term.expect("the job's id and the owner", 60, |l| {
        screen(l).contains(&expected)
    });
    // The size the browser asked for, then a resize.
    term.type_line("stty size");
    term.expect("the first size", 20, |l| screen(l).contains("33 91"));
    term.type_line(r#"{"type":"resize","cols":132,"rows":50}"#);
    term.type_line("stty size");
    term.expect("the new size", 20, |l| screen(l).contains("50 132"));
    // Every key message was answered, so that the web client's call settles.
    let settled = term
        .seen
        .iter()
        .filter(|v| v["type"] == "response" && v["status"] == 200 && v["streamId"] != "0")
        .count();
    assert!(settled >= 4, "{:#?}", term.seen);
    // Leaving ends the shell, not the job.
    term.type_line("exec sleep 4242");
    wait_until("the shell to become sleep 4242", 20, || {
        processes(&local, "sleep 4242") == 1
    });
    let seen = term.leave();
    wait_until("the shell to end with the connection", 20, || {
        processes(&local, "sleep 4242") == 0
    });
    assert_eq!(slurm_state(slurm_id), "RUNNING", "{seen:#?}");
    // The audit log names the session's job and rank.
    let audited = stack.audit_lines().iter().any(|l| {
        l.contains("\"call\":\"jobs.shell\"")
            && l.contains("\"decision\":\"allowed\"")
            && l.contains(&format!("\"session\":\"job/{id}/0\""))
    });
    assert!(audited, "no audit record of the shell");
    scancel(slurm_id);
}

#[test]
fn another_users_job_and_a_used_identifier_are_refused() {
    let stack = Stack::with_slurm();
    let id = job_id();
    let (job, slurm_id) = running_job(&stack, &id);
    // Bob, sent by UCloud as the actor on Alice's job (a project member would
    // be), gets no identifier: Slurm would not let him attach.
    let bob = Terminal::open(&stack, BOB, &job, &[]).leave();
    let refusal = bob.iter().find(|v| v.get("refused").is_some());
    let refusal = refusal.unwrap_or_else(|| panic!("Bob was not refused: {bob:#?}"));
    assert_eq!(refusal["refused"], 403, "{refusal}");
    assert!(
        refusal["why"]
            .as_str()
            .unwrap_or_default()
            .contains("only a job's owner"),
        "{refusal}"
    );
    assert!(bob.iter().all(|v| v.get("session").is_none()), "{bob:#?}");
    // Alice's identifier works once.
    let mut first = Terminal::open(&stack, ALICE, &job, &[]);
    first.expect("the session", 30, |l| {
        l.iter().any(|v| v["session"].is_object())
    });
    let identifier = first.seen[0]["session"]["sessionIdentifier"]
        .as_str()
        .expect("an identifier")
        .to_string();
    first.type_line("echo one-$((40+2))");
    first.expect("the first shell", 60, |l| screen(l).contains("one-42"));
    let _ = first.leave();
    let again = Terminal::open(&stack, ALICE, &job, &["--session", &identifier]).leave();
    let refused = again
        .iter()
        .find(|v| v["type"] == "response" && v["status"] == 401);
    let refused = refused.unwrap_or_else(|| panic!("a reused identifier worked: {again:#?}"));
    assert!(
        refused["payload"]["why"]
            .as_str()
            .unwrap_or_default()
            .contains("used already"),
        "{refused}"
    );
    assert!(screen(&again).is_empty(), "{again:#?}");
    let audited = stack.audit_lines().iter().any(|l| {
        l.contains("\"call\":\"jobs.shell\"")
            && l.contains("\"decision\":\"refused\"")
            && l.contains("used already")
    });
    assert!(audited, "the reuse was not audited");
    // Something that is no identifier does not even start a dispatcher.
    let garbage = Terminal::open(&stack, ALICE, &job, &["--session", "not-a-token"]).leave();
    assert!(garbage.iter().any(|v| v["http"] == 401), "{garbage:#?}");
    scancel(slurm_id);
}

#[test]
fn a_terminal_in_a_folder_is_the_owners_login_shell_there() {
    let stack = Stack::load();
    let local = stack.local_of(ALICE);
    let scratch = ScratchDir::new(&local, "term-folder");
    let folder = format!("/{}/{}", stack.drive_of(ALICE), scratch.dir);
    let mut term = Terminal::open(&stack, ALICE, &Value::Null, &["--folder", &folder]);
    term.expect("the session", 30, |l| {
        l.iter().any(|v| v["session"]["type"] == "shell")
    });
    term.type_line("echo \"D=$(pwd) U=$(id -un)\"");
    let expected = format!("D={} U={local}", scratch.local("").trim_end_matches('/'));
    term.expect("the folder and the owner", 30, |l| {
        screen(l).contains(&expected)
    });
    term.type_line("exit");
    let seen = term.leave();
    let ended = seen
        .iter()
        .any(|v| v["type"] == "response" && v["streamId"] == "0" && v["status"] == 200);
    assert!(ended, "the shell's exit ends the stream: {seen:#?}");
    // Bob may not open Alice's folder (the core refuses: no EDIT on her drive);
    // a path with .. and a folder that is not there are refused by the provider.
    let bob = Terminal::open(&stack, BOB, &Value::Null, &["--folder", &folder]).leave();
    assert!(bob.iter().any(|v| v["refused"] == 403), "{bob:#?}");
    for (bad, status) in [
        (format!("{folder}/../.."), 400),
        (format!("{folder}/none"), 404),
    ] {
        let seen = Terminal::open(&stack, ALICE, &Value::Null, &["--folder", &bad]).leave();
        assert!(
            seen.iter().any(|v| v["refused"] == status),
            "{bad}: {seen:#?}"
        );
    }
}
