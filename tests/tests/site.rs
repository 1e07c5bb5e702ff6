//! The site of hosts (`scripts/stack up --hosts`): a controller, two compute hosts, two
//! login hosts behind the edge balancer, each host its own network namespace. Slurm's
//! events cross from the controller to the login hosts with a munge credential, one
//! sender and one monitor act at a time (a lease), and a login host can fail without
//! UCloud noticing.
//!
//! These tests need the site, not the one-machine stack: they are ignored in the
//! ordinary run, and scripts/test runs them last (`--ignored`), after
//! `scripts/stack up --hosts`. They take hosts down, so they run one at a time and
//! bring every host back before they end.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ucloud_im_tests::{hex, job_id, sim_log, wait_until, within, Site, Stack};

const NEEDS_SITE: &str = "needs scripts/stack up --hosts; scripts/test runs it last";

/// One test at a time: they take hosts down.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn alice(stack: &Stack) -> (String, String) {
    stack.users()[0].clone()
}

/// The updates the simulator holds for job `id`, in order.
fn updates(stack: &Stack, id: &str) -> Vec<Value> {
    let path = PathBuf::from(stack.get("UCLOUD_IM_STATE"))
        .join("updates")
        .join(format!("{}.json", hex(id)));
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn states(stack: &Stack, id: &str) -> Vec<String> {
    updates(stack, id)
        .iter()
        .filter_map(|u| u["state"].as_str().map(String::from))
        .collect()
}

/// Makes every host reachable again and waits until the edge has both login hosts;
/// a login host whose services a failed test left dead is started again.
fn all_hosts_back(site: &Site) {
    for host in &site.hosts {
        site.link(host, true);
    }
    if !within(5, || site.backend_up("login1") && site.backend_up("login2")) {
        for host in ["login1", "login2"] {
            if !site.backend_up(host) {
                site.restart_host(host);
            }
        }
    }
    wait_until("both login hosts up at the edge", 30, || {
        site.backend_up("login1") && site.backend_up("login2")
    });
}

/// A process stopped with SIGSTOP, continued however the test ends.
struct Stopped(i32);

impl Stopped {
    fn new(pid: i32) -> Stopped {
        signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Takes a login host's link down and waits until the edge has taken it out.
fn cut_off(site: &Site, host: &str) {
    site.link(host, false);
    wait_until(&format!("the edge to take {host} out"), 15, || {
        !site.backend_up(host)
    });
}

/// Each host is its own: hostname, address, run/ in the prefix; slurmctld runs on
/// the controller and jobs run on the compute hosts.
#[test]
#[ignore = "needs scripts/stack up --hosts; scripts/test runs it last"]
fn each_host_is_a_host_of_its_own() {
    let _one = one_at_a_time();
    let site = Site::load();
    assert_eq!(
        site.hosts,
        ["ctl", "c1", "c2", "login1", "login2", "edge"],
        "{NEEDS_SITE}"
    );
    let mut addresses = Vec::new();
    for host in &site.hosts {
        assert_eq!(site.sh_ok(host, "hostname").trim(), host);
        let addr = site.addr(host);
        let shown = site.sh_ok(host, "ip -4 -o addr show dev eth0");
        assert!(shown.contains(&format!("{addr}/")), "{host}: {shown}");
        addresses.push(addr);
    }
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), site.hosts.len(), "{addresses:?}");

    // run/ is each host's own: a file made there on login1 is not on login2.
    let run = site.stack.prefix().join("run/ucloud-im");
    let marker = run.join(format!("site-test-{}", std::process::id()));
    site.sh_ok("login1", &format!("touch {}", marker.display()));
    let seen = site.sh("login2", &format!("test -e {}", marker.display()));
    site.sh_ok("login1", &format!("rm -f {}", marker.display()));
    assert!(!seen.status.success(), "login2 sees login1's run/");

    // The controller is on ctl's network: every host reaches it there.
    let ctl = site.addr("ctl");
    let conf = std::fs::read_to_string("/etc/slurm/slurm.conf").unwrap();
    assert!(
        conf.contains(&format!("SlurmctldHost=ctl({ctl})")),
        "{conf}"
    );
    let nodes = site.sh_ok("login1", "sinfo -h -N -o '%N %T' | sort -u");
    assert!(
        nodes.contains("c1 ") && nodes.contains("c2 "),
        "the nodes: {nodes}"
    );

    // A job submitted on a login host runs on a compute host.
    let (_, local) = alice(&site.stack);
    let out = site.sh_ok(
        "login1",
        &format!(
            "runuser -u {local} -- sbatch --parsable --wait -o /dev/null --wrap 'hostname > /tmp/site-where-$SLURM_JOB_ID'"
        ),
    );
    let slurm_id = out.trim();
    let file = format!("/tmp/site-where-{slurm_id}");
    let ran_on = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    assert!(
        ran_on.trim() == "c1" || ran_on.trim() == "c2",
        "job {slurm_id} ran on {ran_on:?}"
    );
}

/// The time, in ms since the epoch, the simulator received the update of job `id` to
/// `state`.
fn update_received(stack: &Stack, id: &str, state: &str) -> Option<u128> {
    sim_log(stack).iter().find_map(|line| {
        let body = line["body"].to_string();
        (line["path"] == "/api/jobs/control/update"
            && body.contains(&format!("\"{id}\""))
            && body.contains(&format!("\"{state}\"")))
        .then(|| line["time"].as_u64().map(u128::from))
        .flatten()
    })
}

/// A job's end, seen by slurmctld on the controller, reaches UCloud through the
/// monitor on a login host in under a second. The monitors poll Slurm every 30 s
/// here, so only the controller's event can be that quick.
#[test]
#[ignore = "needs scripts/stack up --hosts; scripts/test runs it last"]
fn a_controller_event_reaches_ucloud_within_a_second() {
    let _one = one_at_a_time();
    let site = Site::load();
    all_hosts_back(&site);
    let stack = &site.stack;
    let (ucloud, _) = alice(stack);
    let id = job_id();
    let stamp = format!("/tmp/site-end-{id}");
    // The job's last act: the time it ends, in ns.
    let script = format!("sleep 2; date +%s%N > {stamp}");
    stack.ucloud_knows(&id, &ucloud, None);
    stack.create_job(&ucloud, &id, &script, 5, 1, None);
    wait_until(&format!("job {id} to succeed at the simulator"), 60, || {
        states(stack, &id).iter().any(|s| s == "SUCCESS")
    });
    let ended_ms = std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|t| t.trim().parse::<u128>().ok())
        .map(|ns| ns / 1_000_000)
        .unwrap_or_else(|| panic!("job {id} left no time in {stamp}"));
    let _ = std::fs::remove_file(&stamp);
    let received = update_received(stack, &id, "SUCCESS")
        .unwrap_or_else(|| panic!("the simulator's log has no SUCCESS update of {id}"));
    let delay = received.saturating_sub(ended_ms);
    assert!(
        delay < 1000,
        "job {id} ended at {ended_ms} ms, UCloud heard at {received} ms: {delay} ms"
    );
    eprintln!("job end to UCloud across hosts: {delay} ms");
}

/// What a host sends a monitor's event port, and the one line it answers.
fn send_event(site: &Site, from: &str, user: &str, to: &str, line: &str) -> String {
    let addr = site.addr(to);
    let port = site.stack.get("UCLOUD_IM_SITE_EVENTS_PORT");
    let out = site
        .on(
            from,
            &[
                "runuser",
                "-u",
                user,
                "--",
                "bash",
                "-c",
                r#"exec 3<>"/dev/tcp/$1/$2" && printf '%s\n' "$3" >&3 && timeout 5 head -n 1 <&3"#,
                "send",
                &addr,
                &port,
                line,
            ],
        )
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A munge credential for `payload`, made on `host` as `user`.
fn credential(site: &Site, host: &str, user: &str, payload: &str) -> String {
    let out = site
        .on(host, &["runuser", "-u", user, "--", "munge", "-s", payload])
        .output()
        .expect("munge");
    assert!(
        out.status.success(),
        "munge as {user} on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn payload(job: &str, event: &str, time: u64) -> String {
    json!({"v": 2, "event": event, "job": job, "name": "site", "user": "x",
           "exit": "0:0", "time": time, "host": "ctl"})
    .to_string()
}

/// Only Slurm's own account, with a fresh credential made with the site's munge key,
/// is heard; everything else is refused, from any host and any account.
#[test]
#[ignore = "needs scripts/stack up --hosts; scripts/test runs it last"]
fn forged_events_are_refused_from_every_host() {
    let _one = one_at_a_time();
    let site = Site::load();
    all_hosts_back(&site);
    let (_, local) = alice(&site.stack);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let refused = |answer: &str, what: &str| {
        assert!(
            answer.starts_with("refused"),
            "{what} was not refused: {answer:?}"
        );
    };
    for to in ["login1", "login2"] {
        // The old local line, without a credential, even from Slurm's account.
        let plain = r#"{"v":1,"event":"end","job":"1"}"#;
        refused(
            &send_event(&site, "login1", "slurm", to, plain),
            "a line without a credential",
        );
        // A real credential, of root on a compute host and of a user on a login host.
        for (host, user) in [("c1", "root"), ("login2", local.as_str()), ("c2", "nobody")] {
            let cred = credential(&site, host, user, &payload("1", "end", now));
            refused(
                &send_event(&site, host, user, to, &cred),
                &format!("{user}'s credential from {host}"),
            );
        }
        // Slurm's own account, but with a credential changed after munge made it
        // (what someone without the key can do to a credential they saw).
        let real = credential(&site, "ctl", "slurm", &payload("1", "end", now));
        let mut bytes = real.into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        refused(
            &send_event(&site, "c1", "root", to, &altered),
            "an altered credential",
        );
        // Slurm's account, but a stale event.
        let stale = credential(&site, "ctl", "slurm", &payload("1", "end", now - 600));
        refused(
            &send_event(&site, "ctl", "slurm", to, &stale),
            "an event ten minutes old",
        );
    }
    // A genuine event is heard once; the same credential again, from another host,
    // is a replay.
    let genuine = credential(&site, "ctl", "slurm", &payload("1", "end", now));
    let first = send_event(&site, "ctl", "slurm", "login1", &genuine);
    assert_eq!(first, "ok", "the genuine event");
    for from in ["ctl", "c1", "login2"] {
        refused(
            &send_event(&site, from, "root", "login1", &genuine),
            &format!("the same credential again from {from}"),
        );
    }
}

/// One login host's link goes down under load: no request that had not reached it
/// fails (a request in flight on it at that moment may), and every request after the
/// edge took it out succeeds on the other.
#[test]
#[ignore = "needs scripts/stack up --hosts; scripts/test runs it last"]
fn a_login_host_down_under_load_loses_no_request() {
    let _one = one_at_a_time();
    let site = Arc::new(Site::load());
    all_hosts_back(&site);
    const CLIENTS: usize = 4;
    let url = format!("{}/ucloud-im/health", site.stack.get("UCLOUD_IM_LB_URL"));
    let ca = site.stack.get("UCLOUD_IM_CA");
    let stop = Arc::new(AtomicBool::new(false));
    // (started, ended, ok), in ms since the epoch.
    let results = Arc::new(Mutex::new(Vec::<(u128, u128, bool, String)>::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, ca, stop, results) = (url.clone(), ca.clone(), stop.clone(), results.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = now_ms();
                    let out = Command::new("curl")
                        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                        .args(["--max-time", "20", "--cacert", &ca, &url])
                        .output()
                        .expect("curl");
                    let code = String::from_utf8_lossy(&out.stdout).to_string();
                    let why = format!("{code} {}", String::from_utf8_lossy(&out.stderr).trim());
                    results
                        .lock()
                        .unwrap()
                        .push((started, now_ms(), code == "200", why));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = now_ms();
    let processes = site.kill_host("login2");
    let out_at = Instant::now();
    wait_until("the edge to take login2 out", 15, || {
        !site.backend_up("login2")
    });
    let detected_at = now_ms();
    let detection = out_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    site.restart_host("login2");
    all_hosts_back(&site);

    let results = results.lock().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !r.2).collect();
    let before = results.iter().filter(|r| r.0 < killed_at).count();
    let after = results.iter().filter(|r| r.0 >= detected_at).count();
    eprintln!(
        "{} requests ({before} before the kill, {after} after the edge took login2 out in {detection:?}), {} failed; {processes} processes killed",
        results.len(),
        failed.len()
    );
    assert!(
        before > 10 && after > 10,
        "too little load to tell: {}",
        results.len()
    );
    // Only a request in flight when the host died may fail: at most one per client.
    assert!(
        failed.len() <= CLIENTS,
        "{} requests failed: {failed:?}",
        failed.len()
    );
    for f in &failed {
        assert!(
            f.0 < killed_at,
            "a request begun after login2 died failed: {f:?}"
        );
    }
}

/// A chunked upload begun through one login host ends through the other, a job
/// started through one is stopped through the other, and both hosts see the same
/// mappings and drives.
#[test]
#[ignore = "needs scripts/stack up --hosts; scripts/test runs it last"]
fn uploads_and_jobs_go_on_through_the_other_login_host() {
    let _one = one_at_a_time();
    let site = Site::load();
    all_hosts_back(&site);
    let stack = &site.stack;
    let (ucloud, local) = alice(stack);
    let provider = stack.get("UCLOUD_IM_PROVIDER");

    // login2 out: the upload begins on login1.
    cut_off(&site, "login2");
    let file = format!("/{}/site-upload-{}", stack.drive_of(&ucloud), job_id());
    let request = json!({"items": [{"id": file, "type": "FILE",
        "supportedProtocols": ["CHUNKED"], "conflictPolicy": "REJECT"}]});
    let (status, body) = stack.call(
        Some(&ucloud),
        "POST",
        &format!("/ucloud/{provider}/files/upload"),
        Some(&request.to_string()),
    );
    assert_eq!(status, 200, "createUpload: {body}");
    let endpoint = body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let token = body["responses"][0]["token"].as_str().unwrap().to_string();
    let (first, second) = ("a".repeat(40_000), "b".repeat(25_000));
    let total = (first.len() + second.len()).to_string();
    let chunk = |offset: usize, data: &str| {
        stack.follow_link(
            &endpoint,
            &[
                "-X",
                "POST",
                "-H",
                &format!("Chunked-Upload-Token: {token}"),
                "-H",
                &format!("Chunked-Upload-Offset: {offset}"),
                "-H",
                &format!("Chunked-Upload-Total-Size: {total}"),
                "--data-binary",
                data,
            ],
        )
    };
    let answer = chunk(0, &first);
    assert_eq!(answer.status, 200, "first chunk: {}", answer.text());

    // Then login1 out and login2 back: the upload ends on login2.
    site.link("login2", true);
    wait_until("the edge to take login2 back", 30, || {
        site.backend_up("login2")
    });
    cut_off(&site, "login1");
    let answer = chunk(first.len(), &second);
    assert_eq!(answer.status, 200, "second chunk: {}", answer.text());
    let home_path = file.splitn(3, '/').nth(2).unwrap().to_string();
    let on_disk =
        std::fs::read_to_string(PathBuf::from(ucloud_im_tests::home_of(&local)).join(&home_path))
            .unwrap_or_default();
    assert_eq!(on_disk, format!("{first}{second}"), "the uploaded file");

    // A job started through login2, stopped through login1.
    let id = job_id();
    stack.ucloud_knows(&id, &ucloud, None);
    let slurm_id = stack.create_job(&ucloud, &id, "sleep 300", 10, 1, None);
    wait_until(&format!("Slurm job {slurm_id} running"), 30, || {
        site.sh_ok("login2", &format!("squeue -h -j {slurm_id} -o %T"))
            .trim()
            == "RUNNING"
    });
    site.link("login1", true);
    wait_until("the edge to take login1 back", 30, || {
        site.backend_up("login1")
    });
    cut_off(&site, "login2");
    let request = json!({"items": [{"id": id}]}).to_string();
    let (status, body) = stack.call(
        Some(&ucloud),
        "POST",
        &format!("/ucloud/{provider}/jobs/terminate"),
        Some(&request),
    );
    assert_eq!(status, 200, "terminate through login1: {body}");
    wait_until(&format!("Slurm job {slurm_id} cancelled"), 30, || {
        let state = site.sh_ok(
            "login1",
            &format!("sacct -n -X -P -j {slurm_id} -o State | head -n 1"),
        );
        state.trim().starts_with("CANCELLED")
    });
    all_hosts_back(&site);

    // One mapping store and one drive table: both login hosts' registries say so.
    let registry = stack.bin("ucloud-registry");
    let list = |host: &str| site.sh_ok(host, &format!("{} list", registry.display()));
    assert_eq!(list("login1"), list("login2"));
}

/// The lease files of `role`: the highest token's holder (host, pid), unless released.
fn holder(site: &Site, role: &str) -> Option<(String, i32)> {
    let dir = site
        .stack
        .prefix()
        .join("var/lib/ucloud-im/leases")
        .join(role);
    let mut tokens: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    tokens.sort();
    let text = std::fs::read_to_string(dir.join(tokens.last()?)).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(String::from)
    };
    if field("released").as_deref() == Some("1") {
        return None;
    }
    Some((field("host")?, field("pid")?.parse().ok()?))
}

/// Each state of job `id` reached UCloud once, and the job ended well.
fn each_state_once(stack: &Stack, id: &str) {
    let seen = states(stack, id);
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(seen, unique, "job {id}: a state sent twice");
    assert!(seen.iter().any(|s| s == "SUCCESS"), "job {id}: {seen:?}");
}

/// The host of the sender's lease dies: the other login host's sender takes over and
/// delivers what is queued, once. A sender that was paused past its lease and wakes
/// up does not act again.
#[test]
#[ignore = "needs scripts/stack up --hosts; scripts/test runs it last"]
fn the_sender_moves_when_its_host_dies_and_a_paused_one_stays_out() {
    let _one = one_at_a_time();
    let site = Site::load();
    all_hosts_back(&site);
    let stack = &site.stack;
    let (ucloud, _) = alice(stack);
    let mut first = None;
    wait_until("a sender to hold the lease", 30, || {
        first = holder(&site, "sender");
        first.is_some()
    });
    let (victim, _) = first.unwrap();
    let other = if victim == "login1" {
        "login2"
    } else {
        "login1"
    };

    // The holder's host dies with its link; a job made meanwhile is reported (by
    // whichever monitor holds that lease) and delivered by the other host's sender.
    let killed = Instant::now();
    site.kill_host(&victim);
    let id = job_id();
    stack.ucloud_knows(&id, &ucloud, None);
    stack.create_job(&ucloud, &id, "sleep 1", 5, 1, None);
    wait_until(&format!("job {id} to succeed at UCloud"), 90, || {
        states(stack, &id).iter().any(|s| s == "SUCCESS")
    });
    let moved = holder(&site, "sender").map(|h| h.0);
    assert_eq!(moved.as_deref(), Some(other), "the sender's lease");
    eprintln!(
        "sender and monitor failed over and delivered within {:?}",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(2));
    each_state_once(stack, &id);
    let queue = stack.prefix().join("var/lib/ucloud-im/outbox/queue");
    wait_until("the outbox to be empty", 30, || {
        std::fs::read_dir(&queue)
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    });

    // The host comes back; its sender waits, the lease stays where it is.
    site.restart_host(&victim);
    all_hosts_back(&site);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holder(&site, "sender").map(|h| h.0).as_deref(), Some(other));

    // The holder pauses (SIGSTOP) past its lease; the other host takes over.
    let (_, paused) = holder(&site, "sender").unwrap();
    let stopped = Stopped::new(paused);
    let taken = within(60, || {
        holder(&site, "sender").is_some_and(|(h, _)| h == victim)
    });
    assert!(
        taken,
        "the sender's lease did not move off the paused sender {paused}"
    );
    let id = job_id();
    stack.ucloud_knows(&id, &ucloud, None);
    stack.create_job(&ucloud, &id, "sleep 1", 5, 1, None);
    wait_until(&format!("job {id} to succeed at UCloud"), 90, || {
        states(stack, &id).iter().any(|s| s == "SUCCESS")
    });
    // Woken up, the old holder sees the higher token and stays out.
    drop(stopped);
    std::thread::sleep(Duration::from_secs(5));
    each_state_once(stack, &id);
    assert_eq!(
        holder(&site, "sender").map(|h| h.0).as_deref(),
        Some(victim.as_str()),
        "the lease after the paused sender woke"
    );
}
