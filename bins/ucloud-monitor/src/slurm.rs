//! Asking Slurm about jobs: one `squeue` for every job slurmctld still holds (the
//! poll), `squeue -j` for one job (an event), `sacct` for jobs slurmctld has
//! forgotten (a restart after a long stop). Every field a user controls (name,
//! comment) comes last, so a crafted name cannot shift the fields Slurm controls.

use crate::jobstate::Exit;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tag jobs.create gives every job it submits (`--comment`).
pub const TAG: &str = "ucloud-im";
/// Slurm's clients retry for about 10 s while the controller is away: give up after.
const TIMEOUT: Duration = Duration::from_secs(15);
const SQUEUE_FORMAT: &str =
    "JobID:|,UserName:|,State:|,TimeLimit:|,BatchHost:|,exit_code:|,Name:|,Comment:";
const SACCT_FIELDS: &str = "JobIDRaw,User,State,ExitCode,TimelimitRaw,NodeList,JobName,Comment";

/// One Slurm job as one look saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub slurm_id: u64,
    /// The job name: the UCloud job id, if this is one of ours.
    pub name: String,
    /// The local account the job runs as.
    pub user: String,
    /// Slurm's state, e.g. `RUNNING`, `CANCELLED by 0`.
    pub state: String,
    pub exit: Exit,
    /// Minutes; `None` when unlimited or unknown.
    pub time_limit: Option<u64>,
    /// Whether the job ever got a node: a job that did not never ran.
    pub started: bool,
}

/// Runs a Slurm client, capturing stdout, killing it after [`TIMEOUT`].
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // The output of a few hundred jobs fits a pipe only barely: read while waiting.
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{program} did not answer in {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        return Err(format!("{program} failed ({status}): {}", err.trim()));
    }
    Ok(out)
}

/// `D-HH:MM:SS`, `HH:MM:SS`, `MM:SS` (squeue's TimeLimit) in minutes, rounded up.
fn limit_minutes(text: &str) -> Option<u64> {
    let (days, rest) = match text.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, text),
    };
    let parts: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let seconds = match parts[..] {
        [h, m, s] => h * 3600 + m * 60 + s,
        [m, s] => m * 60 + s,
        [m] => m * 60,
        _ => return None,
    };
    Some(days * 1440 + seconds.div_ceil(60))
}

/// Splits a row of 8 fields whose last two (name, comment) a user controls: a `|`
/// in either makes the row unreadable, and it is dropped.
fn fields(line: &str) -> Option<[&str; 8]> {
    let parts: Vec<&str> = line.splitn(8, '|').collect();
    let row: [&str; 8] = parts.try_into().ok()?;
    (!row[7].contains('|')).then_some(row)
}

/// A row of `squeue -O` with [`SQUEUE_FORMAT`]; `None` for a row not tagged [`TAG`].
pub fn parse_squeue_row(line: &str) -> Option<Observation> {
    let [id, user, state, limit, host, exit, name, comment] = fields(line.trim_end())?;
    if comment.trim() != TAG {
        return None;
    }
    Some(Observation {
        slurm_id: id.trim().parse().ok()?,
        name: name.to_string(),
        user: user.trim().to_string(),
        state: state.trim().to_string(),
        exit: Exit::from_wait_status(exit).unwrap_or_default(),
        time_limit: limit_minutes(limit.trim()),
        started: !matches!(host.trim(), "" | "n/a" | "(null)"),
    })
}

/// A row of `sacct -X -P -n -o` [`SACCT_FIELDS`].
pub fn parse_sacct_row(line: &str) -> Option<Observation> {
    let [id, user, state, exit, limit, nodes, name, comment] = fields(line.trim_end())?;
    if comment.trim() != TAG {
        return None;
    }
    Some(Observation {
        slurm_id: id.trim().parse().ok()?,
        name: name.to_string(),
        user: user.trim().to_string(),
        state: state.trim().to_string(),
        exit: Exit::from_pair(exit).unwrap_or_default(),
        time_limit: limit.trim().parse().ok(),
        started: !matches!(nodes.trim(), "" | "None assigned"),
    })
}

/// Every tagged job slurmctld holds (pending, running, and finished ones for
/// `MinJobAge`): the poll's one Slurm call.
pub fn squeue_all() -> Result<Vec<Observation>, String> {
    let out = run("squeue", &["-a", "-h", "-t", "all", "-O", SQUEUE_FORMAT])?;
    Ok(out.lines().filter_map(parse_squeue_row).collect())
}

/// One job, straight from slurmctld (the event path). `Ok(None)`: not tagged, or
/// slurmctld no longer knows it.
pub fn squeue_one(slurm_id: u64) -> Result<Option<Observation>, String> {
    let id = slurm_id.to_string();
    let out = run(
        "squeue",
        &["-a", "-h", "-t", "all", "-j", &id, "-O", SQUEUE_FORMAT],
    )
    .or_else(|e| {
        // squeue fails for an id slurmctld purged: that is "not known", not an error.
        if e.contains("Invalid job id") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(out
        .lines()
        .filter_map(parse_squeue_row)
        .find(|o| o.slurm_id == slurm_id))
}

/// From the accounting database: the given jobs, or (ids empty) every tagged job
/// active since `since` (`YYYY-MM-DDTHH:MM:SS`).
pub fn sacct(ids: &[u64], since: &str) -> Result<Vec<Observation>, String> {
    let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let mut args = vec!["-X", "-P", "-n", "-a", "-o", SACCT_FIELDS];
    if ids.is_empty() {
        args.extend(["-S", since]);
    } else {
        args.extend(["-j", &list]);
    }
    let out = run("sacct", &args)?;
    Ok(out.lines().filter_map(parse_sacct_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_rows_parse() {
        let o =
            parse_squeue_row("498|ucim-alice|FAILED|1-00:00:00|vm|768|job-7|ucloud-im\n").unwrap();
        assert_eq!(o.slurm_id, 498);
        assert_eq!(o.user, "ucim-alice");
        assert_eq!(o.name, "job-7");
        assert_eq!(o.exit.code, 3);
        assert_eq!(o.time_limit, Some(1440));
        assert!(o.started);
        let pending = parse_squeue_row("501|bob|PENDING|1:00|n/a|0|j|ucloud-im").unwrap();
        assert!(!pending.started);
        assert_eq!(pending.time_limit, Some(1));
    }

    #[test]
    fn untagged_or_crafted_rows_are_dropped() {
        assert!(parse_squeue_row("1|a|RUNNING|1:00|vm|0|j|(null)").is_none());
        // A name carrying a `|` cannot pass for a tagged job of someone else.
        assert!(parse_squeue_row("1|a|RUNNING|1:00|vm|0|j|ucloud-im|ucloud-im").is_none());
        assert!(parse_squeue_row("1|a|RUNNING").is_none());
        assert!(parse_squeue_row("x|a|RUNNING|1:00|vm|0|j|ucloud-im").is_none());
    }

    #[test]
    fn sacct_rows_parse() {
        let o = parse_sacct_row("499|ucim-alice|CANCELLED by 0|0:0|1440|vm|j|ucloud-im").unwrap();
        assert_eq!(o.state, "CANCELLED by 0");
        assert!(o.started);
        let never =
            parse_sacct_row("5|u|CANCELLED by 0|0:0|Partition_Limit|None assigned|j|ucloud-im")
                .unwrap();
        assert!(!never.started);
        assert_eq!(never.time_limit, None);
    }

    #[test]
    fn limits_are_minutes() {
        assert_eq!(limit_minutes("1-00:00:00"), Some(1440));
        assert_eq!(limit_minutes("1:00:00"), Some(60));
        assert_eq!(limit_minutes("2:00"), Some(2));
        assert_eq!(limit_minutes("0:30"), Some(1));
        assert_eq!(limit_minutes("UNLIMITED"), None);
    }
}
