//! ucloud-notify: slurmctld runs it as PrologSlurmctld and EpilogSlurmctld (as
//! SlurmUser). It hands the event (job id, name, user, exit code) to ucloud-monitor
//! over its unix socket and exits 0, always and quickly: a prolog that fails makes
//! slurmctld requeue the job, a slow one delays it. Whatever goes wrong is one line
//! on stderr (slurmctld's log), never a non-zero exit.
#![forbid(unsafe_code)]

use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

const HELP: &str = "\
ucloud-notify: hand a Slurm job event to ucloud-monitor

usage: ucloud-notify [--socket PATH]
       ucloud-notify --help | --version

Run by slurmctld as PrologSlurmctld and EpilogSlurmctld; reads SLURM_JOB_ID,
SLURM_JOB_NAME, SLURM_JOB_USER, SLURM_JOB_EXIT_CODE2 and SLURM_SCRIPT_CONTEXT
from the environment. Always exits 0 within about a second. See ucloud-notify(8).
";

/// Each of connect, write and read gets this long; the whole run stays well under
/// a second even when the monitor hangs.
const STEP: Duration = Duration::from_millis(300);

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
    let socket: PathBuf = match args.opt_value_from_str("--socket") {
        Ok(Some(p)) => p,
        Ok(None) => default_socket(),
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
    let line = json!({
        "v": 1,
        "event": event,
        "job": env("SLURM_JOB_ID"),
        "name": env("SLURM_JOB_NAME"),
        "user": env("SLURM_JOB_USER"),
        "exit": env("SLURM_JOB_EXIT_CODE2"),
    })
    .to_string()
        + "\n";
    if let Err(why) = send(&socket, line.as_bytes()) {
        eprintln!(
            "ucloud-notify: job {}: event not delivered to {}: {why} (the monitor's poll will still see it)",
            env("SLURM_JOB_ID"),
            socket.display()
        );
    }
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
