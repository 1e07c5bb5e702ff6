//! Asking Slurm about jobs: one `squeue` for every job slurmctld still holds (the
//! poll), `squeue -j` for one job (an event), `sacct` for jobs slurmctld has
//! forgotten (a restart after a long stop). The monitor's poll, its event path and
//! the usage reporter all read Slurm through [`parse_table`].
//!
//! Slurm prints a job's name and comment raw: a local user can put a newline and
//! any separator into them, and so forge whole rows (another user, another UCloud
//! job) in any output read line by line. So every field, the last one included,
//! ends with a delimiter made of 128 random bits drawn for each call, which no job
//! submitted before the call can contain; a row therefore ends exactly at
//! "delimiter, newline", and every row must have exactly the expected number of
//! fields, or the whole answer is refused. squeue gets its format, and with it
//! the delimiter, through its environment (`SQUEUE_FORMAT2`), which other local
//! users cannot read, unlike a command line. sacct takes a delimiter only on its
//! command line, so its rows hold only fields Slurm controls; the names and
//! comments it knows come from `sacct --json`, whose strings are escaped. The
//! Slurm user is a field Slurm prints, never read from the text around a name.

use crate::jobstate::Exit;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tag jobs.create gives every job it submits (`--comment`).
pub const TAG: &str = "ucloud-im";
/// Slurm's clients retry for about 10 s while the controller is away: give up after.
const TIMEOUT: Duration = Duration::from_secs(15);
/// squeue's fields (`-O`), in the order [`Observation::from_squeue`] reads them.
const SQUEUE_FIELDS: [&str; 11] = [
    "JobID",
    "UserName",
    "State",
    "TimeLimit",
    "BatchHost",
    "exit_code",
    "NumCPUs",
    "tres-alloc",
    "TimeUsed",
    "Name",
    "Comment",
];
/// sacct's fields (`-o`), in the order [`Observation::from_sacct`] reads them:
/// none a user controls.
const SACCT_FIELDS: [&str; 9] = [
    "JobIDRaw",
    "User",
    "State",
    "ExitCode",
    "TimelimitRaw",
    "NodeList",
    "AllocCPUS",
    "AllocTRES",
    "ElapsedRaw",
];

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
    /// CPUs the job holds (or held); what a pending job asks for.
    pub cpus: u64,
    /// GPUs the job holds (or held), from its allocated TRES.
    pub gpus: u64,
    /// Seconds the job has run so far (all of them once it ended).
    pub elapsed: u64,
}

/// A delimiter no job name can contain: `~` and 32 hex digits from the kernel's
/// random source, drawn for each call.
pub struct Delimiter(String);

impl Delimiter {
    pub fn new() -> Result<Delimiter, String> {
        let hex = ucloud_wire::random_hex(16)
            .map_err(|e| format!("cannot read /dev/urandom for a delimiter: {e}"))?;
        Ok(Delimiter(format!("~{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Splits Slurm's answer into rows of exactly `fields` fields, each field ended by
/// `delimiter` and each row by `delimiter` and a newline. Anything else (a row
/// with another field count, text after the last row) refuses the whole answer:
/// with a delimiter nobody could know in advance, only a Slurm that prints
/// something else than asked gets here, and half an answer is no answer.
pub fn parse_table<'a>(
    out: &'a str,
    delimiter: &str,
    fields: usize,
) -> Result<Vec<Vec<&'a str>>, String> {
    let end = format!("{delimiter}\n");
    let mut rows = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let Some(at) = rest.find(&end) else {
            return Err(format!(
                "Slurm's answer ends in an unfinished row ({} bytes after the last one)",
                rest.len()
            ));
        };
        let row: Vec<&str> = rest[..at].split(delimiter).collect();
        if row.len() != fields {
            return Err(format!(
                "a row of Slurm's answer has {} fields, not {fields}",
                row.len()
            ));
        }
        rows.push(row);
        rest = &rest[at + end.len()..];
    }
    Ok(rows)
}

/// Runs a Slurm client, capturing stdout, killing it after [`TIMEOUT`].
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // The output of a few hundred jobs fits a pipe only barely: read while waiting.
    // A refused thread (the unit's TasksMax) is an error, never a panic.
    let spawned = std::thread::Builder::new().spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let reader = match spawned {
        Ok(reader) => reader,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot read {program}'s output: {e}"));
        }
    };
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

/// `D-HH:MM:SS`, `HH:MM:SS`, `MM:SS`, `MM` (squeue's TimeLimit and TimeUsed) in
/// seconds.
fn duration_secs(text: &str) -> Option<u64> {
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
    Some(days * 86400 + seconds)
}

/// squeue's TimeLimit in minutes, rounded up.
fn limit_minutes(text: &str) -> Option<u64> {
    duration_secs(text).map(|s| s.div_ceil(60))
}

/// GPUs in a TRES list (`cpu=2,mem=1G,node=1,gres/gpu=2,gres/gpu:a100=2`): the
/// untyped count when Slurm gives one, else the sum of the typed ones.
fn gpus_of(tres: &str) -> u64 {
    let mut typed = 0;
    for (key, value) in tres.split(',').filter_map(|kv| kv.split_once('=')) {
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        if key == "gres/gpu" {
            return n;
        }
        if key.starts_with("gres/gpu:") {
            typed += n;
        }
    }
    typed
}

impl Observation {
    /// A row of squeue with [`SQUEUE_FIELDS`]; `None` for a job not tagged [`TAG`].
    fn from_squeue(row: &[&str]) -> Option<Observation> {
        let [id, user, state, limit, host, exit, cpus, tres, used, name, comment] = row else {
            return None;
        };
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
            cpus: cpus.trim().parse().unwrap_or(0),
            gpus: gpus_of(tres.trim()),
            elapsed: duration_secs(used.trim()).unwrap_or(0),
        })
    }

    /// A row of `sacct -X` with [`SACCT_FIELDS`], and the job's name, if tagged
    /// [`TAG`]; `None` for a job with no such name.
    fn from_sacct(row: &[&str], names: &HashMap<u64, String>) -> Option<Observation> {
        let [id, user, state, exit, limit, nodes, cpus, tres, elapsed] = row else {
            return None;
        };
        let slurm_id = id.trim().parse().ok()?;
        Some(Observation {
            slurm_id,
            name: names.get(&slurm_id)?.clone(),
            user: user.trim().to_string(),
            state: state.trim().to_string(),
            exit: Exit::from_pair(exit).unwrap_or_default(),
            time_limit: limit.trim().parse().ok(),
            started: !matches!(nodes.trim(), "" | "None assigned"),
            cpus: cpus.trim().parse().unwrap_or(0),
            gpus: gpus_of(tres.trim()),
            elapsed: elapsed.trim().parse().unwrap_or(0),
        })
    }
}

/// squeue's `-O` format (given as `SQUEUE_FORMAT2`): every field ended by the
/// delimiter.
fn squeue_format(delimiter: &Delimiter) -> String {
    SQUEUE_FIELDS
        .iter()
        .map(|f| format!("{f}:{}", delimiter.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads squeue's answer, run with [`squeue_format`].
pub fn read_squeue(out: &str, delimiter: &Delimiter) -> Result<Vec<Observation>, String> {
    Ok(parse_table(out, delimiter.as_str(), SQUEUE_FIELDS.len())?
        .iter()
        .filter_map(|row| Observation::from_squeue(row))
        .collect())
}

/// Reads sacct's answer, run with `-p --delimiter` and [`SACCT_FIELDS`]; only the
/// jobs `names` names (the tagged ones) are kept.
pub fn read_sacct(
    out: &str,
    delimiter: &Delimiter,
    names: &HashMap<u64, String>,
) -> Result<Vec<Observation>, String> {
    Ok(parse_table(out, delimiter.as_str(), SACCT_FIELDS.len())?
        .iter()
        .filter_map(|row| Observation::from_sacct(row, names))
        .collect())
}

/// The names of the jobs tagged [`TAG`] in `sacct --json`'s answer, by Slurm id.
pub fn read_sacct_names(json: &str) -> Result<HashMap<u64, String>, String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("sacct --json is not JSON: {e}"))?;
    let jobs = v["jobs"]
        .as_array()
        .ok_or("sacct --json's answer has no \"jobs\" list")?;
    Ok(jobs
        .iter()
        .filter(|j| j["comment"]["job"].as_str() == Some(TAG))
        .filter_map(|j| Some((j["job_id"].as_u64()?, j["name"].as_str()?.to_string())))
        .collect())
}

/// Every tagged job slurmctld holds (pending, running, and finished ones for
/// `MinJobAge`): the poll's one Slurm call.
pub fn squeue_all() -> Result<Vec<Observation>, String> {
    let delimiter = Delimiter::new()?;
    let format = squeue_format(&delimiter);
    let out = run(
        "squeue",
        &["-a", "-h", "-t", "all"],
        &[("SQUEUE_FORMAT2", &format)],
    )?;
    read_squeue(&out, &delimiter)
}

/// One job, straight from slurmctld (the event path). `Ok(None)`: not tagged, or
/// slurmctld no longer knows it.
pub fn squeue_one(slurm_id: u64) -> Result<Option<Observation>, String> {
    let delimiter = Delimiter::new()?;
    let format = squeue_format(&delimiter);
    let id = slurm_id.to_string();
    let out = run(
        "squeue",
        &["-a", "-h", "-t", "all", "-j", &id],
        &[("SQUEUE_FORMAT2", &format)],
    )
    .or_else(|e| {
        // squeue fails for an id slurmctld purged: that is "not known", not an error.
        if e.contains("Invalid job id") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(read_squeue(&out, &delimiter)?
        .into_iter()
        .find(|o| o.slurm_id == slurm_id))
}

/// From the accounting database: the given jobs, whose names the caller knows
/// (the monitor tracks them), or (`known` empty) every tagged job active since
/// `since` (`now-SECONDS`), whose names come from `sacct --json`.
pub fn sacct(known: &HashMap<u64, String>, since: &str) -> Result<Vec<Observation>, String> {
    let delimiter = Delimiter::new()?;
    let list = known
        .keys()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let fields = SACCT_FIELDS.join(",");
    let delimiter_arg = format!("--delimiter={}", delimiter.as_str());
    let mut args = vec!["-X", "-p", "-n", "-a", &delimiter_arg, "-o", &fields];
    let select = if known.is_empty() {
        ["-S", since]
    } else {
        ["-j", list.as_str()]
    };
    args.extend(select);
    let out = run("sacct", &args, &[])?;
    if !known.is_empty() {
        return read_sacct(&out, &delimiter, known);
    }
    let json = run("sacct", &["-X", "-a", "--json", "-S", since], &[])?;
    read_sacct(&out, &delimiter, &read_sacct_names(&json)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A row as Slurm prints it: every field followed by the delimiter, then a newline.
    fn row(d: &Delimiter, fields: &[&str]) -> String {
        let mut s: String = fields
            .iter()
            .map(|f| format!("{f}{}", d.as_str()))
            .collect();
        s.push('\n');
        s
    }

    fn squeue_row(d: &Delimiter, id: &str, user: &str, state: &str, name: &str) -> String {
        row(
            d,
            &[
                id,
                user,
                state,
                "1-00:00:00",
                "vm",
                "768",
                "2",
                "cpu=2,node=1,billing=2,gres/gpu=1",
                "1:02:03",
                name,
                TAG,
            ],
        )
    }

    #[test]
    fn squeue_rows_parse() {
        let d = Delimiter::new().unwrap();
        let out = squeue_row(&d, "498", "ucim-alice", "FAILED", "job-7")
            + &row(
                &d,
                &[
                    "501", "bob", "PENDING", "1:00", "n/a", "0", "1", "", "0:00", "j", TAG,
                ],
            );
        let looks = read_squeue(&out, &d).unwrap();
        let o = &looks[0];
        assert_eq!(o.slurm_id, 498);
        assert_eq!(o.user, "ucim-alice");
        assert_eq!(o.name, "job-7");
        assert_eq!(o.exit.code, 3);
        assert_eq!(o.time_limit, Some(1440));
        assert!(o.started);
        assert_eq!((o.cpus, o.gpus, o.elapsed), (2, 1, 3723));
        assert!(!looks[1].started);
        assert_eq!(looks[1].time_limit, Some(1));
        assert_eq!(looks[1].elapsed, 0);
        assert!(read_squeue("", &d).unwrap().is_empty());
    }

    /// The attack of a local user: a job name with a newline and a forged second
    /// row, naming another account and another user's UCloud job, in the old
    /// separator and in one that guesses at the delimiter's form.
    #[test]
    fn a_job_name_cannot_forge_a_row() {
        let d = Delimiter::new().unwrap();
        for forged in [
            "x\n777|ucim-bob|COMPLETED|1:00|vm|0|1|cpu=1|0:05|4711|ucloud-im",
            "x|ucloud-im|\n777|ucim-bob|COMPLETED|1:00|vm|0|1|cpu=1|0:05|4711",
            "x~0\n777~0ucim-bob~0COMPLETED~0~0~0~0~0~0~04711~0ucloud-im~0\n",
        ] {
            let out = squeue_row(&d, "12", "ucim-alice", "PENDING", forged);
            let looks = read_squeue(&out, &d).unwrap();
            assert_eq!(looks.len(), 1, "{forged:?}");
            assert_eq!(looks[0].slurm_id, 12);
            assert_eq!(looks[0].user, "ucim-alice");
            assert_eq!(looks[0].name, forged);
        }
        // sacct's rows hold no name; its names come escaped in JSON.
        let json = json!({"jobs": [
            {"job_id": 12, "name": "x\n777|ucim-bob|COMPLETED|0:0|60|vm|1|cpu=1|5|4711|ucloud-im",
             "user": null, "comment": {"job": TAG}},
            {"job_id": 13, "name": "4711", "comment": {"job": "other"}},
        ]});
        let names = read_sacct_names(&json.to_string()).unwrap();
        assert_eq!(names.len(), 1, "untagged jobs are left out");
        let out = row(
            &d,
            &[
                "12",
                "ucim-alice",
                "PENDING",
                "0:0",
                "60",
                "None assigned",
                "0",
                "",
                "0",
            ],
        ) + &row(
            &d,
            &[
                "13",
                "ucim-bob",
                "COMPLETED",
                "0:0",
                "60",
                "vm",
                "1",
                "cpu=1",
                "5",
            ],
        );
        let looks = read_sacct(&out, &d, &names).unwrap();
        assert_eq!(looks.len(), 1);
        assert_eq!(looks[0].user, "ucim-alice");
        assert!(looks[0].name.starts_with("x\n777"));
        assert!(read_sacct_names("[").is_err());
        assert!(read_sacct_names("{}").is_err());
    }

    #[test]
    fn answers_of_another_shape_are_refused_whole() {
        let d = Delimiter::new().unwrap();
        let good = squeue_row(&d, "1", "a", "RUNNING", "j");
        // One field too many or too few, a row cut short, another delimiter.
        let extra = good.replacen(d.as_str(), &format!("{0}x{0}", d.as_str()), 1);
        let short = good.replacen(&format!("a{}", d.as_str()), "", 1);
        for bad in [
            extra,
            short,
            good[..good.len() - 1].to_string(),
            good.clone() + "trailing",
            "1|a|RUNNING|1:00|vm|0|1|cpu=1|0:01|j|ucloud-im|\n".to_string(),
        ] {
            assert!(read_squeue(&bad, &d).is_err(), "{bad:?}");
        }
        let other = Delimiter::new().unwrap();
        assert!(read_squeue(&good, &other).is_err());
    }

    #[test]
    fn untagged_rows_and_bad_ids_are_dropped() {
        let d = Delimiter::new().unwrap();
        let untagged = row(
            &d,
            &[
                "1", "a", "RUNNING", "1:00", "vm", "0", "1", "", "0:01", "j", "(null)",
            ],
        );
        assert!(read_squeue(&untagged, &d).unwrap().is_empty());
        let bad_id = squeue_row(&d, "x", "a", "RUNNING", "j");
        assert!(read_squeue(&bad_id, &d).unwrap().is_empty());
    }

    #[test]
    fn delimiters_differ_per_call() {
        let (a, b) = (Delimiter::new().unwrap(), Delimiter::new().unwrap());
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str().len(), 33);
    }

    #[test]
    fn sacct_rows_parse() {
        let d = Delimiter::new().unwrap();
        let out = row(
            &d,
            &[
                "499",
                "ucim-alice",
                "CANCELLED by 0",
                "0:0",
                "1440",
                "vm",
                "4",
                "billing=4,cpu=4,gres/gpu:a100=2,node=1",
                "61",
            ],
        ) + &row(
            &d,
            &[
                "5",
                "u",
                "CANCELLED by 0",
                "0:0",
                "Partition_Limit",
                "None assigned",
                "0",
                "",
                "0",
            ],
        );
        let names: HashMap<u64, String> = [(499, "j".to_string()), (5, "k".to_string())].into();
        let looks = read_sacct(&out, &d, &names).unwrap();
        assert_eq!(looks[0].state, "CANCELLED by 0");
        assert_eq!(looks[0].name, "j");
        assert!(looks[0].started);
        assert_eq!((looks[0].cpus, looks[0].gpus, looks[0].elapsed), (4, 2, 61));
        assert!(!looks[1].started);
        assert_eq!(looks[1].time_limit, None);
    }

    #[test]
    fn limits_and_durations() {
        assert_eq!(limit_minutes("1-00:00:00"), Some(1440));
        assert_eq!(limit_minutes("1:00:00"), Some(60));
        assert_eq!(limit_minutes("2:00"), Some(2));
        assert_eq!(limit_minutes("0:30"), Some(1));
        assert_eq!(limit_minutes("UNLIMITED"), None);
        assert_eq!(duration_secs("1-01:00:05"), Some(90005));
        assert_eq!(duration_secs("0:07"), Some(7));
        assert_eq!(gpus_of("cpu=1,node=1"), 0);
    }
}
