//! ucloud-monitor against real Slurm, with the simulator as UCloud: jobs are created
//! as UCloud creates them (the simulator remembers them and sends them to jobs.create
//! through the gateway, which submits them as the owner and binds each Slurm job to
//! its UCloud job), and the updates that reach the simulator are checked. Jobs a
//! local user submits by hand, named and tagged like UCloud's, are the attacks.
//! Tests that stop the monitor or the simulator hold a lock, so they never overlap.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ucloud_im_tests::{hex, job_id, kill_and_wait, run_as, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
/// Stopping the monitor or the simulator is done by one test at a time.
static OUTAGE: Mutex<()> = Mutex::new(());

fn stack() -> Stack {
    let stack = Stack::with_slurm();
    stack.get("UCLOUD_IM_MONITOR_SOCKET");
    stack
}

/// A job `owner` submits by hand, named and tagged exactly like jobs.create's
/// (`--job-name=<UCloud id> --comment=ucloud-im`); returns the Slurm job id.
fn by_hand(user: &str, id: &str, script: &str, extra: &[&str]) -> u64 {
    let name = format!("--job-name={id}");
    let mut args = vec![
        "sbatch",
        "--parsable",
        &name,
        "--comment=ucloud-im",
        "--chdir=/tmp",
        "--output=/dev/null",
    ];
    args.extend_from_slice(extra);
    let wrap = format!("--wrap={script}");
    args.push(&wrap);
    let out = run_as(user, &args);
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The updates the simulator received for job `id`, in order.
fn updates(stack: &Stack, id: &str) -> Vec<Value> {
    let path = PathBuf::from(stack.get("UCLOUD_IM_STATE"))
        .join("updates")
        .join(format!("{}.json", hex(id)));
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

fn states(updates: &[Value]) -> Vec<String> {
    updates
        .iter()
        .filter_map(|u| u["state"].as_str().map(String::from))
        .collect()
}

const FINAL: [&str; 3] = ["SUCCESS", "FAILURE", "EXPIRED"];

/// Waits until job `id` has a final state at the simulator; returns its updates.
fn wait_final(stack: &Stack, id: &str, seconds: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let u = updates(stack, id);
        if states(&u).iter().any(|s| FINAL.contains(&s.as_str())) {
            // A repeat would come right behind: give it a moment to show.
            std::thread::sleep(Duration::from_millis(300));
            return updates(stack, id);
        }
        assert!(Instant::now() < deadline, "job {id}: no final state at the simulator after {seconds}s; updates so far: {u:?}; see the monitor's and sender's logs in {}", stack.get("UCLOUD_IM_STACK_LOGS"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The states a whole history may have: one queue, running, one final state.
fn assert_history(id: &str, u: &[Value], last: &str) {
    let s = states(u);
    let finals: Vec<&String> = s.iter().filter(|x| FINAL.contains(&x.as_str())).collect();
    assert!(
        finals.iter().all(|f| *f == last),
        "job {id}: final states {finals:?}, expected only {last}: {s:?}"
    );
    assert_eq!(
        s.first().map(String::as_str),
        Some("IN_QUEUE"),
        "job {id}: {s:?}"
    );
    assert!(
        s.contains(&"RUNNING".to_string()),
        "job {id} ran but was never RUNNING: {s:?}"
    );
    let folder = u[0]["outputFolder"].as_str().unwrap_or_default();
    assert!(
        folder.ends_with(&format!("/ucloud-jobs/{id}")) && folder.starts_with('/'),
        "job {id}: first update has outputFolder {folder:?}"
    );
    for x in u {
        assert!(
            x["status"]
                .as_str()
                .is_some_and(|t| t.starts_with("Your job")),
            "job {id}: status text {x}"
        );
    }
}

#[test]
fn a_job_goes_in_queue_running_success() {
    let stack = stack();
    let id = job_id();
    stack.create_job(BOB, &id, "sleep 1", 10, 1, None);
    let u = wait_final(&stack, &id, 30);
    assert_history(&id, &u, "SUCCESS");
    assert_eq!(states(&u), ["IN_QUEUE", "RUNNING", "SUCCESS"], "{u:?}");
    let drive = stack.drive_of(BOB);
    assert_eq!(u[0]["outputFolder"], format!("/{drive}/ucloud-jobs/{id}"));
}

#[test]
fn exit_3_ends_failure_with_the_code_in_the_text() {
    let stack = stack();
    let id = job_id();
    stack.create_job(ALICE, &id, "exit 3", 10, 1, None);
    let u = wait_final(&stack, &id, 30);
    assert_history(&id, &u, "FAILURE");
    let last = u.iter().rev().find(|x| x["state"] == "FAILURE").unwrap();
    assert!(
        last["status"].as_str().unwrap().contains("code 3"),
        "{last}"
    );
}

/// The one slow test: Slurm's limits are whole minutes and enforced about every 30 s,
/// so a 1-minute job is killed 60 to 95 s after it starts.
#[test]
fn a_job_over_its_time_limit_ends_expired() {
    let stack = stack();
    let id = job_id();
    stack.create_job(ALICE, &id, "sleep 600", 1, 1, None);
    let u = wait_final(&stack, &id, 180);
    assert_history(&id, &u, "EXPIRED");
}

#[test]
fn a_cancelled_job_ends_success_as_documented() {
    let stack = stack();
    let alice = stack.local_of(ALICE);
    let running = job_id();
    let pending = job_id();
    let a = stack.create_job(ALICE, &running, "sleep 60", 10, 1, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !states(&updates(&stack, &running)).contains(&"RUNNING".to_string()) {
        assert!(
            Instant::now() < deadline,
            "job {running} never RUNNING at the simulator"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The whole node, while the first job holds a CPU of it: it cannot start.
    let b = stack.create_job(ALICE, &pending, "true", 10, node_cpus(), None);
    for slurm in [b, a] {
        let out = run_as(&alice, &["scancel", &slurm.to_string()]);
        assert!(out.status.success());
    }
    let u = wait_final(&stack, &running, 30);
    assert_history(&running, &u, "SUCCESS");
    assert!(u.last().unwrap()["status"]
        .as_str()
        .unwrap()
        .contains("cancelled"));
    // Never started: queued, then cancelled, no RUNNING.
    let q = wait_final(&stack, &pending, 30);
    assert_eq!(states(&q), ["IN_QUEUE", "SUCCESS"], "{q:?}");
}

#[test]
fn an_extension_is_reported_as_new_time_allocation() {
    let stack = stack();
    let id = job_id();
    let slurm = stack.create_job(BOB, &id, "sleep 20", 2, 1, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !states(&updates(&stack, &id)).contains(&"RUNNING".to_string()) {
        assert!(Instant::now() < deadline, "job {id} never RUNNING");
        std::thread::sleep(Duration::from_millis(100));
    }
    // What jobs.extend asks Slurm; as root, since Slurm lets only operators raise limits.
    let out = Command::new("scontrol")
        .args(["update", &format!("JobId={slurm}"), "TimeLimit=+3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let u = updates(&stack, &id);
        if let Some(x) = u.iter().find(|x| x.get("newTimeAllocation").is_some()) {
            assert_eq!(x["newTimeAllocation"], 5 * 60_000, "{x}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no newTimeAllocation after the extension: {u:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("scancel").arg(slurm.to_string()).status();
    wait_final(&stack, &id, 30);
}

#[test]
fn alices_job_named_after_bobs_changes_nothing_for_bob() {
    let stack = stack();
    let id = job_id();
    stack.ucloud_knows(&id, BOB, None);
    // Alice's own sbatch, named and tagged like Bob's UCloud job, and quicker than his.
    by_hand(&stack.local_of(ALICE), &id, "exit 7", &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        updates(&stack, &id),
        Vec::<Value>::new(),
        "Alice's job reached Bob's UCloud job"
    );
    stack.create_job(BOB, &id, "sleep 1", 10, 1, None);
    let u = wait_final(&stack, &id, 30);
    assert_eq!(states(&u), ["IN_QUEUE", "RUNNING", "SUCCESS"], "{u:?}");
}

/// The node's CPUs (`sinfo`): a job asking for all of them waits while any other
/// job runs.
fn node_cpus() -> u64 {
    let out = Command::new("sinfo")
        .args(["-h", "-o", "%c"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("sinfo -h -o %c printed {text:?}"))
}

/// Calls to UCloud's API the simulator received that name one of `ids`, other
/// than job updates: the lookups a job costs.
fn lookups_naming(stack: &Stack, ids: &[String]) -> Vec<Value> {
    ucloud_im_tests::sim_log(stack)
        .into_iter()
        .filter(|l| {
            let path = l["path"].as_str().unwrap_or_default();
            path.starts_with("/api/") && path != "/api/jobs/control/update"
        })
        .filter(|l| {
            let text = l.to_string();
            ids.iter()
                .any(|id| text.contains(&format!("\"{id}\"")) || text.contains(&format!("={id}")))
        })
        .collect()
}

/// Jobs made to look like UCloud's: Alice submits jobs by hand,
/// named and tagged like UCloud jobs: for her own real UCloud job (failing at
/// once, to end it early as FAILURE), for Bob's, and for many jobs UCloud knows
/// but the module never submitted. None of them changes a state at UCloud, none
/// costs a call to UCloud (a monitor that asks UCloud whose job a name is makes
/// one per name, again every 30 s), the log about them stays bounded, and the
/// real jobs' own updates arrive as ever.
#[test]
fn jobs_submitted_by_hand_change_nothing_and_cost_ucloud_nothing() {
    let stack = stack();
    let alice = stack.local_of(ALICE);
    let (own, bobs) = (job_id(), job_id());
    stack.create_job(ALICE, &own, "sleep 8", 10, 1, None);
    stack.create_job(BOB, &bobs, "sleep 8", 10, 1, None);
    let strangers: Vec<String> = (0..24).map(|_| job_id()).collect();
    for id in &strangers {
        stack.ucloud_knows(id, ALICE, None);
    }
    let mut forged = Vec::new();
    for _ in 0..3 {
        forged.push(by_hand(&alice, &own, "exit 9", &[]));
        forged.push(by_hand(&alice, &bobs, "exit 9", &[]));
    }
    // Held, so that they take no CPU from the other tests, and seen by every poll.
    for id in &strangers {
        forged.push(by_hand(&alice, id, "true", &["--hold"]));
    }
    let u = wait_final(&stack, &own, 60);
    assert_eq!(
        states(&u),
        ["IN_QUEUE", "RUNNING", "SUCCESS"],
        "Alice's jobs by hand reached her own UCloud job: {u:?}"
    );
    let b = wait_final(&stack, &bobs, 60);
    assert_eq!(
        states(&b),
        ["IN_QUEUE", "RUNNING", "SUCCESS"],
        "Alice's jobs by hand reached Bob's UCloud job: {b:?}"
    );
    // Several polls (every 5 s) while the strangers wait.
    std::thread::sleep(Duration::from_secs(11));
    for id in &strangers {
        assert_eq!(
            updates(&stack, id),
            Vec::<Value>::new(),
            "a job by hand reached UCloud job {id}"
        );
    }
    let mut named = strangers.clone();
    named.extend([own.clone(), bobs.clone()]);
    let lookups = lookups_naming(&stack, &named);
    assert!(
        lookups.is_empty(),
        "{} jobs by hand cost {} calls to UCloud: {:?}",
        forged.len(),
        lookups.len(),
        lookups.first()
    );
    let log =
        fs::read_to_string(PathBuf::from(stack.get("UCLOUD_IM_STACK_LOGS")).join("monitor.log"))
            .unwrap();
    let told = log
        .lines()
        .filter(|l| {
            forged
                .iter()
                .any(|f| l.contains(&format!("Slurm job {f} ")))
        })
        .count();
    // The budget (10 lines a minute) is shared with whatever else is ignored.
    assert!(
        told <= 10,
        "{told} log lines about {} jobs by hand",
        forged.len()
    );
    let ids: Vec<String> = forged.iter().map(u64::to_string).collect();
    let mut args = vec!["scancel"];
    args.extend(ids.iter().map(String::as_str));
    let _ = run_as(&alice, &args);
}

#[test]
fn events_from_an_ordinary_user_are_refused() {
    let stack = stack();
    let notify = stack.prefix().join("usr/libexec/ucloud-im/ucloud-notify");
    let socket = stack.get("UCLOUD_IM_MONITOR_SOCKET");
    let out = Command::new("runuser")
        .current_dir("/")
        .args([
            "-u",
            &stack.local_of(ALICE),
            "--",
            "env",
            "SLURM_SCRIPT_CONTEXT=epilog_slurmctld",
            "SLURM_JOB_ID=1",
        ])
        .arg(&notify)
        .args(["--socket", &socket])
        .output()
        .unwrap();
    // ucloud-notify always exits 0 (it must never fail a Slurm hook), and says why.
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains("not Slurm's account"),
        "{err}"
    );
    // The same from Slurm's account is heard.
    let ok = Command::new("runuser")
        .current_dir("/")
        .args([
            "-u",
            "slurm",
            "--",
            "env",
            "SLURM_SCRIPT_CONTEXT=epilog_slurmctld",
            "SLURM_JOB_ID=1",
        ])
        .arg(&notify)
        .args(["--socket", &socket])
        .output()
        .unwrap();
    assert!(
        ok.status.success() && ok.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn notify_exits_0_quickly_when_no_monitor_listens() {
    let stack = stack();
    let notify = stack.prefix().join("usr/libexec/ucloud-im/ucloud-notify");
    let started = Instant::now();
    let out = Command::new(&notify)
        .env("SLURM_SCRIPT_CONTEXT", "prolog_slurmctld")
        .env("SLURM_JOB_ID", "1")
        .args(["--socket", "/nonexistent/monitor.sock"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not delivered"));
}

#[test]
fn a_killed_monitor_catches_up_with_one_final_state_each() {
    let _outage = OUTAGE.lock().unwrap_or_else(|p| p.into_inner());
    let stack = stack();
    let ids: Vec<String> = (0..4).map(|_| job_id()).collect();
    // Two end while the monitor runs, two while it is dead.
    stack.create_job(BOB, &ids[0], "true", 10, 1, None);
    stack.create_job(BOB, &ids[1], "sleep 2; exit 4", 10, 1, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while updates(&stack, &ids[0]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the monitor reported nothing for {}",
            ids[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_and_wait(stack.service_pid("monitor"));
    stack.create_job(BOB, &ids[2], "true", 10, 1, None);
    stack.create_job(BOB, &ids[3], "exit 5", 10, 1, None);
    std::thread::sleep(Duration::from_secs(3));
    stack.start_monitor();
    for (id, last) in ids.iter().zip(["SUCCESS", "FAILURE", "SUCCESS", "FAILURE"]) {
        let u = wait_final(&stack, id, 40);
        assert_history(id, &u, last);
    }
}

#[test]
fn updates_wait_for_ucloud_to_come_back() {
    let _outage = OUTAGE.lock().unwrap_or_else(|p| p.into_inner());
    let stack = stack();
    let id = job_id();
    let sim = stack.service_pid("sim");
    let argv_line = fs::read_to_string(format!("/proc/{sim}/cmdline")).unwrap();
    let argv: Vec<String> = argv_line
        .split('\0')
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    kill_and_wait(sim);
    stack.create_job(ALICE, &id, "true", 10, 1, None);
    std::thread::sleep(Duration::from_secs(3));
    assert!(updates(&stack, &id).is_empty());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    stack.start_like_the_stack("sim", &argv);
    let u = wait_final(&stack, &id, 60);
    assert_history(&id, &u, "SUCCESS");
}
