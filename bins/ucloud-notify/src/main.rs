//! ucloud-notify: slurmctld runs it as PrologSlurmctld and EpilogSlurmctld (as
//! SlurmUser). It hands the event (job id, name, user, exit code) to ucloud-monitor
//! and exits 0, always and quickly: a prolog that fails makes slurmctld requeue the
//! job, a slow one delays it. Whatever goes wrong is one line on stderr
//! (slurmctld's log), never a non-zero exit.
//!
//! The monitor is reached over its unix socket, where the kernel says who is
//! speaking, or, when site.conf names `monitor_events` (the monitor runs on
//! another host), over TCP with a MUNGE credential of the event as the proof.
#![forbid(unsafe_code)]

use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HELP: &str = "\
ucloud-notify: hand a Slurm job event to ucloud-monitor

usage: ucloud-notify [--socket PATH]
       ucloud-notify --help | --version

Run by slurmctld as PrologSlurmctld and EpilogSlurmctld; reads SLURM_JOB_ID,
SLURM_JOB_NAME, SLURM_JOB_USER, SLURM_JOB_EXIT_CODE2 and SLURM_SCRIPT_CONTEXT
from the environment.

Where site.conf sets monitor_events = ADDR:PORT,... the event goes to each of
those monitors over TCP, as a MUNGE credential made by /usr/bin/munge (one per
address); otherwise, or with --socket, to the monitor's local unix socket
(default run/ucloud-im/monitor.sock).

Always exits 0 within about a second. See ucloud-notify(8).
";

/// Each of connect, write and read gets this long; the whole run stays well under
/// a second even when the monitor hangs.
const STEP: Duration = Duration::from_millis(300);
/// All of a TCP delivery: munge, connect, write and the answer, for every monitor
/// at once.
const BUDGET: Duration = Duration::from_millis(900);
/// munge's share of it (munged answers in milliseconds; a hung one is killed).
const MUNGE_LIMIT: Duration = Duration::from_millis(400);
/// How long the credential stays valid; the monitor takes events up to 30 s old.
const MUNGE_TTL: &str = "60";
/// The job's name is the user's text: cut, so the credential line stays small.
const MAX_NAME: usize = 256;

fn main() {
    // No panic may turn into a non-zero exit: slurmctld would requeue the job.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ucloud-notify: internal error: {info}");
        std::process::exit(0);
    }));
    let mut args = pico_args::Arguments::from_env();
    if ucloud_wire::cli::help_or_version(&mut args, "ucloud-notify", || HELP.to_string()).is_some()
    {
        return;
    }
    let socket: Option<PathBuf> = match args.opt_value_from_str("--socket") {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ucloud-notify: --socket: {e}");
            return;
        }
    };
    // A mistyped flag is said, never fatal: a failing hook would requeue the job.
    let extra = args.finish();
    if !extra.is_empty() {
        eprintln!("ucloud-notify: ignoring unknown arguments {extra:?} (see --help)");
    }
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let event = match env("SLURM_SCRIPT_CONTEXT").as_str() {
        "prolog_slurmctld" => "start",
        "epilog_slurmctld" => "end",
        other => {
            eprintln!(
                "ucloud-notify: SLURM_SCRIPT_CONTEXT={other:?}: run me as PrologSlurmctld or EpilogSlurmctld"
            );
            return;
        }
    };
    let job = env("SLURM_JOB_ID");
    let (name, user, exit) = (
        env("SLURM_JOB_NAME"),
        env("SLURM_JOB_USER"),
        env("SLURM_JOB_EXIT_CODE2"),
    );
    // An explicit --socket wins; otherwise site.conf says where the monitor is.
    let socket = match socket {
        Some(socket) => socket,
        None => match ucloud_wire::config::SiteConfig::load(&ucloud_wire::paths::site_config()) {
            Ok(site) if !site.monitor_events.is_empty() => {
                let payload = v2_payload(event, &job, &name, &user, &exit, unix_now(), &hostname());
                let deadline = Instant::now() + BUDGET;
                let munge = Path::new(ucloud_wire::munge::MUNGE);
                for (addr, result) in deliver_all(
                    &site.monitor_events,
                    &payload,
                    munge,
                    &site.monitor_user,
                    deadline,
                ) {
                    if let Err(why) = result {
                        eprintln!(
                            "ucloud-notify: job {job}: event not delivered to {addr}: {why} (the monitor's poll will still see it)"
                        );
                    }
                }
                return;
            }
            Ok(_) => default_socket(),
            Err(e) => {
                eprintln!("ucloud-notify: {e}; sending to the local socket");
                default_socket()
            }
        },
    };
    let line = json!({
        "v": 1,
        "event": event,
        "job": job,
        "name": name,
        "user": user,
        "exit": exit,
    })
    .to_string()
        + "\n";
    if let Err(why) = send(&socket, line.as_bytes()) {
        eprintln!(
            "ucloud-notify: job {job}: event not delivered to {}: {why} (the monitor's poll will still see it)",
            socket.display()
        );
    }
}

/// The event as it crosses the network (ucloud-notify(8)): v2 adds when it was
/// made and where, which the monitor checks against munge's ENCODE_TIME.
fn v2_payload(
    event: &str,
    job: &str,
    name: &str,
    user: &str,
    exit: &str,
    time: u64,
    host: &str,
) -> Vec<u8> {
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    json!({
        "v": 2,
        "event": event,
        "job": cut(job, 32),
        "name": cut(name, MAX_NAME),
        "user": cut(user, 64),
        "exit": cut(exit, 32),
        "time": time,
        "host": cut(host, 64),
    })
    .to_string()
    .into_bytes()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This host's name as the kernel has it (gethostname), for the monitor's log.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Sends the event to every monitor at once, each with a credential of its own
/// (monitors that share one munged would otherwise see the second copy as a
/// replay), and returns each one's outcome; one still busy at the deadline is
/// given up.
fn deliver_all(
    addrs: &[SocketAddr],
    payload: &[u8],
    munge: &Path,
    decoder: &str,
    deadline: Instant,
) -> Vec<(SocketAddr, Result<(), String>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    for &addr in addrs {
        let (tx, payload, munge) = (tx.clone(), payload.to_vec(), munge.to_path_buf());
        let decoder = decoder.to_string();
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = tx.send((addr, deliver(addr, &payload, &munge, &decoder, deadline)));
        });
        if let Err(e) = spawned {
            eprintln!("ucloud-notify: cannot start a thread for {addr}: {e}");
        }
    }
    drop(tx);
    let mut results = Vec::new();
    while results.len() < addrs.len() {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(50);
        match rx.recv_timeout(left) {
            Ok(result) => results.push(result),
            Err(_) => break,
        }
    }
    for &addr in addrs {
        if !results.iter().any(|(a, _)| *a == addr) {
            results.push((addr, Err("no answer in time".into())));
        }
    }
    results
}

/// One monitor: a fresh credential, then `<credential>\n` out and one line back.
/// `ok` and `standby` (a monitor that is not the active one) are both fine.
fn deliver(
    addr: SocketAddr,
    payload: &[u8],
    munge: &Path,
    decoder: &str,
    deadline: Instant,
) -> Result<(), String> {
    let left = || {
        Some(deadline.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "out of time".to_string())
    };
    let mut line = credential(munge, payload, decoder, MUNGE_LIMIT.min(left()?))?;
    line.push(b'\n');
    let mut stream = TcpStream::connect_timeout(&addr, left()?.min(STEP))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let written = stream.write_all(&line);
    stream
        .set_read_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    // One line of at most 512 bytes; the monitor closes after it.
    while answer.len() < 512 {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => answer.push(byte[0]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    match (answer.trim_end(), written) {
        ("ok" | "standby", _) => Ok(()),
        ("", Err(e)) => Err(e.to_string()),
        ("", Ok(())) => Err("no answer".into()),
        (other, _) => Err(other.chars().filter(|c| !c.is_control()).collect()),
    }
}

/// A MUNGE credential of `payload`, made by munged as this process's account
/// (Slurm's), which only `decoder` (the monitor's account) may decode: a copy
/// taken off the wire is no credential of Slurm's account that slurmctld, slurmd
/// or any other munge service would take.
fn credential(
    munge: &Path,
    payload: &[u8],
    decoder: &str,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    let args = ["-t", MUNGE_TTL, "-u", decoder];
    let done = ucloud_wire::munge::run_bounded(munge, &args, payload, limit, 16 * 1024)
        .map_err(|e| format!("{}: {e}", munge.display()))?;
    if done.code != Some(0) {
        let why = String::from_utf8_lossy(&done.stderr);
        return Err(format!(
            "{} failed: {}",
            munge.display(),
            why.trim().chars().take(200).collect::<String>()
        ));
    }
    let mut cred = done.stdout;
    while cred.last().is_some_and(|b| b.is_ascii_whitespace()) {
        cred.pop();
    }
    if !ucloud_wire::munge::looks_like_credential(&cred) {
        return Err(format!("{} wrote no credential", munge.display()));
    }
    Ok(cred)
}

fn default_socket() -> PathBuf {
    PathBuf::from(format!(
        "{}/run/ucloud-im/monitor.sock",
        ucloud_wire::paths::ROOT
    ))
}

fn send(socket: &PathBuf, line: &[u8]) -> Result<(), String> {
    // std has no connect timeout for unix sockets; a local connect does not block
    // unless the backlog is full, and then it fails at once in non-blocking mode.
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(STEP))
        .and_then(|_| stream.set_read_timeout(Some(STEP)))
        .map_err(|e| e.to_string())?;
    // A monitor that refuses the caller answers before reading the event and hangs up,
    // so the write may fail with EPIPE while its answer waits to be read: read it anyway.
    let written = stream.write_all(line);
    let mut answer = String::new();
    let _ = (&mut stream).take(512).read_to_string(&mut answer);
    match (answer.trim_end(), written) {
        ("ok", _) => Ok(()),
        ("", Err(e)) => Err(e.to_string()),
        ("", Ok(())) => Err("no answer".into()),
        (other, _) => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn fake_munge(name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("notify-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("munge");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Stands in for munge: the payload in base64 between MUNGE: and :.
    const ENCODES: &str = "printf 'MUNGE:'; base64 -w0; printf ':\\n'";

    /// A monitor that reads one line, hands it back on `lines`, and answers `answer`
    /// (none when empty).
    fn monitor(answer: &'static str) -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut line = String::new();
                let mut byte = [0u8; 1];
                while s.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                    line.push(byte[0] as char);
                }
                let _ = tx.send(line);
                if answer.is_empty() {
                    std::thread::sleep(Duration::from_secs(5));
                } else {
                    let _ = s.write_all(answer.as_bytes());
                }
            }
        });
        (addr, rx)
    }

    #[test]
    fn the_v2_payload_is_small_json_whatever_the_job_name() {
        let name = "\"}\n,\u{0}x".repeat(1000);
        let p = v2_payload("end", "42", &name, "alice", "0:0", 1_800_000_000, "ctl");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["v"], 2);
        assert_eq!(v["event"], "end");
        assert_eq!(v["job"], "42");
        assert_eq!(v["time"], 1_800_000_000u64);
        assert_eq!(v["host"], "ctl");
        assert_eq!(v["name"].as_str().unwrap().chars().count(), MAX_NAME);
        assert!(p.len() < 2048, "{}", p.len());
        assert!(!p.contains(&b'\n'));
    }

    #[test]
    fn every_monitor_gets_its_own_credential_and_answers_are_told() {
        let munge = fake_munge("ok", ENCODES);
        let (ok, ok_lines) = monitor("ok\n");
        let (standby, _) = monitor("standby\n");
        let (refuses, _) = monitor("refused: stale\n");
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let payload = v2_payload("start", "9", "J", "u", "", unix_now(), "ctl");
        let t = Instant::now();
        let results = deliver_all(
            &[ok, standby, refuses, closed],
            &payload,
            &munge,
            "ucloud-mon",
            Instant::now() + BUDGET,
        );
        assert!(t.elapsed() < BUDGET + Duration::from_millis(200));
        let of = |a: SocketAddr| results.iter().find(|(x, _)| *x == a).unwrap().1.clone();
        assert_eq!(of(ok), Ok(()));
        assert_eq!(of(standby), Ok(()));
        assert_eq!(of(refuses), Err("refused: stale".to_string()));
        assert!(of(closed).unwrap_err().contains("connect"));
        let line = ok_lines.recv().unwrap();
        let b64 = line
            .strip_prefix("MUNGE:")
            .unwrap()
            .strip_suffix(':')
            .unwrap();
        use std::process::Command;
        let decoded = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s '{b64}' | base64 -d"))
            .output()
            .unwrap()
            .stdout;
        assert_eq!(decoded, payload);
    }

    #[test]
    fn a_hung_munge_or_a_silent_monitor_costs_at_most_the_budget() {
        let payload = v2_payload("start", "9", "J", "u", "", unix_now(), "ctl");
        let (silent, _) = monitor("");
        let t = Instant::now();
        let hung = fake_munge("hung", "exec sleep 10");
        let r = deliver_all(
            &[silent],
            &payload,
            &hung,
            "ucloud-mon",
            Instant::now() + BUDGET,
        );
        assert!(r[0].1.as_ref().unwrap_err().contains("killed"), "{r:?}");
        assert!(t.elapsed() < MUNGE_LIMIT + Duration::from_millis(300));
        let t = Instant::now();
        let good = fake_munge("good", ENCODES);
        let r = deliver_all(
            &[silent],
            &payload,
            &good,
            "ucloud-mon",
            Instant::now() + BUDGET,
        );
        assert!(r[0].1.is_err(), "{r:?}");
        assert!(t.elapsed() < BUDGET + Duration::from_millis(200));
        for (name, body) in [
            (
                "fails",
                "echo 'munge: Error: Failed to access socket' >&2; exit 1",
            ),
            ("junk", "echo 'not a credential'"),
            ("empty", "true"),
        ] {
            let r = deliver_all(
                &[silent],
                &payload,
                &fake_munge(name, body),
                "ucloud-mon",
                Instant::now() + BUDGET,
            );
            assert!(r[0].1.is_err(), "{name}: {r:?}");
        }
        let missing = Path::new("/nonexistent/munge");
        let r = deliver_all(
            &[silent],
            &payload,
            missing,
            "ucloud-mon",
            Instant::now() + BUDGET,
        );
        assert!(
            r[0].1.as_ref().unwrap_err().contains("cannot start"),
            "{r:?}"
        );
    }

    /// Where munged runs: a real credential that unmunge turns back into the payload.
    #[test]
    fn a_real_credential_decodes_to_the_payload() {
        let munge = Path::new(ucloud_wire::munge::MUNGE);
        let payload = v2_payload("end", "12", "J", "u", "0:0", unix_now(), "ctl");
        // Decoded by this test's own account, the one the credential names.
        let me = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "root".into());
        let Ok(cred) = credential(munge, &payload, &me, Duration::from_secs(2)) else {
            eprintln!("munged does not run here: skipped");
            return;
        };
        let out = ucloud_wire::munge::run_bounded(
            Path::new(ucloud_wire::munge::UNMUNGE),
            &["--numeric"],
            &cred,
            Duration::from_secs(2),
            65536,
        )
        .unwrap();
        assert_eq!(out.code, Some(0));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("TTL:             60\n"), "{text}");
        assert!(text.ends_with(&format!("\n\n{}", String::from_utf8(payload).unwrap())));
    }
}
