//! Usage reports through the stack, with real Slurm and the simulator applying
//! them by UCloud's core's rule: a job's final total arrives for the right owner
//! (user or project) and category and equals what `sacct` says it used; killing
//! the monitor and the sender in the middle of a report charges neither twice nor
//! not at all. Also the attack on the parser they share with the monitor: a job
//! name with a newline and a forged row. The tests here stop services, so they
//! hold one lock and never overlap.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ucloud_im_tests::{job_id, kill_and_wait, run_as, signal, wait_until, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The stack's compute product and its category, from the installed table.
fn product(stack: &Stack) -> (String, String) {
    let id = stack.get("UCLOUD_IM_JOB_PRODUCT");
    let table: Value = serde_json::from_slice(
        &fs::read(stack.prefix().join("etc/ucloud-im/products/jobs.json")).unwrap(),
    )
    .unwrap();
    let category = table["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .and_then(|p| p["category"].as_str())
        .unwrap()
        .to_string();
    let frequency = table["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == category.as_str())
        .and_then(|c| c["accountingFrequency"].as_str())
        .unwrap();
    assert_eq!(
        frequency, "PERIODIC_MINUTE",
        "these tests count core-minutes"
    );
    (id, category)
}

/// A job submitted by hand, tagged like jobs.create's; returns the Slurm job id.
fn by_hand(user: &str, name: &str, script: &str, extra: &[&str]) -> u64 {
    let name = format!("--job-name={name}");
    let wrap = format!("--wrap={script}");
    let mut args = vec![
        "sbatch",
        "--parsable",
        &name,
        "--comment=ucloud-im",
        "--chdir=/tmp",
        "--output=/dev/null",
    ];
    args.extend_from_slice(extra);
    args.push(&wrap);
    let out = run_as(user, &args);
    assert!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Core-minutes of a finished job by `sacct`: allocated CPUs times elapsed seconds,
/// once the accounting database has the job's end.
fn sacct_minutes(slurm_id: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("sacct")
            .args(["-X", "-n", "-P", "-a", "-j", &slurm_id.to_string()])
            .args(["-o", "AllocCPUS,ElapsedRaw,State"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let fields: Vec<&str> = text.trim().split('|').collect();
        if let [cpus, elapsed, state] = fields[..] {
            if state == "COMPLETED" {
                return cpus.parse::<u64>().unwrap() * elapsed.parse::<u64>().unwrap() / 60;
            }
        }
        assert!(
            Instant::now() < deadline,
            "sacct shows no end of job {slurm_id}: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until UCloud's usage of `owner` under `scope` is `total`.
fn wait_charged(stack: &Stack, owner: &str, category: &str, scope: &str, total: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now, wallet) = stack.charged(owner, category, scope);
        if now == Some(total) {
            return wallet;
        }
        assert!(
            Instant::now() < deadline,
            "{owner} {scope}: charged {now:?}, sacct says {total}; see the monitor's and sender's logs in {}",
            stack.get("UCLOUD_IM_STACK_LOGS")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn outbox_usage(stack: &Stack) -> PathBuf {
    stack.prefix().join("var/lib/ucloud-im/outbox/usage")
}

#[test]
fn a_finished_jobs_usage_arrives_for_its_owner_and_matches_sacct() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stack = Stack::with_slurm();
    let (_, category) = product(&stack);
    // One job in a project (the project pays), one of Alice's own (she pays).
    let project = stack.project_with(&[(ALICE, "PI")], 1_000_000);
    let in_project = job_id();
    let own = job_id();
    let (_, alice_before) = stack.charged(ALICE, &category, "");
    let a = stack.create_job(ALICE, &in_project, "sleep 16", 10, 8, Some(&project));
    let b = stack.create_job(ALICE, &own, "sleep 8", 10, 8, None);
    let (total_a, total_b) = (sacct_minutes_after(a), sacct_minutes_after(b));
    assert!(total_a >= 2 && total_b >= 1, "{total_a} {total_b}");
    let wallet = wait_charged(
        &stack,
        &project,
        &category,
        &format!("job-{in_project}"),
        total_a,
    );
    assert_eq!(wallet, total_a, "the project's wallet holds this job alone");
    wait_charged(&stack, ALICE, &category, &format!("job-{own}"), total_b);
    let (none, _) = stack.charged(ALICE, &category, &format!("job-{in_project}"));
    assert_eq!(none, None, "a project's job is charged to Alice");
    let (_, alice_after) = stack.charged(ALICE, &category, "");
    assert!(alice_after >= alice_before + total_b);
}

/// Waits for the job to end in Slurm, then asks sacct.
fn sacct_minutes_after(slurm_id: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Command::new("squeue")
        .args([
            "-h",
            "-j",
            &slurm_id.to_string(),
            "-t",
            "PD,R,CG",
            "-o",
            "%i",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "job {slurm_id} does not end");
        std::thread::sleep(Duration::from_millis(200));
    }
    sacct_minutes(slurm_id)
}

/// The report files of one project in `outbox/usage/`.
fn reports_of(stack: &Stack, project: &str) -> Vec<PathBuf> {
    fs::read_dir(outbox_usage(stack))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["owner"]["projectId"] == project)
        })
        .collect()
}

#[test]
fn killing_the_monitor_and_the_sender_mid_report_charges_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stack = Stack::with_slurm();
    let (_, category) = product(&stack);
    let project = stack.project_with(&[(BOB, "PI")], 1_000_000);
    let id = job_id();
    let slurm_id = stack.create_job(BOB, &id, "sleep 70", 10, 8, Some(&project));
    let scope = format!("job-{id}");
    // A first running total reaches UCloud (the monitor knows the job's owner).
    wait_until("a first running total at UCloud", 40, || {
        stack.charged(&project, &category, &scope).0.is_some()
    });

    // The sender dies: the monitor's next running totals wait in outbox/usage/.
    kill_and_wait(stack.service_pid("sender"));
    wait_until("a running total in outbox/usage/", 30, || {
        !reports_of(&stack, &project).is_empty()
    });
    // The monitor dies too, and comes back while the job still runs.
    kill_and_wait(stack.service_pid("monitor"));
    stack.start_monitor();
    stack.start_sender();
    wait_until("the waiting total delivered", 30, || {
        reports_of(&stack, &project).is_empty()
    });

    // UCloud stops answering: the sender claims the next total and sends it, and is
    // killed while it waits for the answer, which UCloud may give after all.
    let sim = stack.service_pid("sim");
    signal(sim, "-STOP");
    let claimed = std::panic::catch_unwind(|| {
        wait_until("the sender's claim on the next total", 30, || {
            reports_of(&stack, &project)
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == "sending"))
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    kill_and_wait(stack.service_pid("sender"));
    signal(sim, "-CONT");
    stack.start_sender();
    assert!(
        claimed.is_ok(),
        "the sender claimed no report while UCloud was stopped"
    );

    let total = sacct_minutes_after(slurm_id);
    assert!(total >= 9, "{total}");
    let wallet = wait_charged(&stack, &project, &category, &scope, total);
    assert_eq!(
        wallet, total,
        "the project was charged {wallet} for a job of {total}"
    );
    // Still so once everything left has gone out.
    wait_until("an empty outbox/usage/ for the project", 30, || {
        reports_of(&stack, &project).is_empty()
    });
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        stack.charged(&project, &category, &scope),
        (Some(total), total)
    );
}

/// The attack on the parser: Alice holds a job
/// whose name carries a newline and a second row in Slurm's old output format,
/// naming Bob's account and Bob's UCloud job. A monitor that reads Slurm line by
/// line reports IN_QUEUE, RUNNING and SUCCESS for Bob's job, which never ran.
#[test]
fn a_newline_in_a_job_name_forges_no_row() {
    let stack = Stack::with_slurm();
    let id = job_id();
    stack.ucloud_knows(&id, BOB, None);
    let bob = stack.local_of(BOB);
    let forged = format!("x\n999999|{bob}|COMPLETED|1:00|vm|0|{id}");
    let slurm_id = by_hand(&stack.local_of(ALICE), &forged, "true", &["--hold"]);
    // More than one poll (every 5 s in the stack).
    std::thread::sleep(Duration::from_secs(7));
    let _ = run_as(&stack.local_of(ALICE), &["scancel", &slurm_id.to_string()]);
    std::thread::sleep(Duration::from_secs(2));
    let log = ucloud_im_tests::sim_log(&stack);
    let reached: Vec<&Value> = log
        .iter()
        .filter(|l| l["path"] == "/api/jobs/control/update")
        .filter(|l| {
            l["body"]["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["id"] == id.as_str()))
        })
        .collect();
    assert!(
        reached.is_empty(),
        "a forged row in Alice's job name reached Bob's UCloud job: {reached:?}"
    );
}
