//! ucloud-du: the storage usage of every registered drive, reported to UCloud.
//! Where a site grants it CAP_SYS_ADMIN, first reads the quota of every drive that
//! is a quota root (a btrfs subvolume with qgroups, an XFS or ext4 project tree),
//! then drops that capability for good and proves it. Walks every other drive with
//! CAP_DAC_READ_SEARCH as its only privilege (lstat only, never following a
//! symlink or crossing a mount point, within a file, time and depth limit), turns
//! the bytes into the drive category's unit, and writes one absolute total per
//! drive into the outbox's `usage/` (ucloud-sender delivers it). One audit record
//! per run, on stdout, which the service unit appends to the audit log. Holds no
//! UCloud credential.
#![deny(unsafe_code)]

mod charge;
mod drives;
mod privilege;
mod quota;
#[allow(unsafe_code)]
mod sys;
mod walk;

use charge::{Rule, State};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use ucloud_wire::products::{Kind, Table};
use ucloud_wire::usage::{self, Report};
use walk::Limits;

const HELP: &str = "\
ucloud-du: report the storage usage of every registered drive to UCloud

usage: ucloud-du [--drive ID]... [--walk-only] [--max-files N] [--max-seconds S]
                 [--max-depth D]
       ucloud-du --measure DIR [--max-files N] [--max-seconds S] [--max-depth D]

  --drive ID        measure only this drive of the drive table (repeatable)
  --walk-only       walk every drive, read no quota (CAP_SYS_ADMIN, if held, is
                    dropped before anything else)
  --max-files N     count at most N entries per drive (default 10000000)
  --max-seconds S   spend at most S seconds of wall-clock time per drive (default 1800)
  --max-depth D     enter at most D levels below a drive's base (default 4096)
  --measure DIR     measure DIR only, as a drive (its quota with CAP_SYS_ADMIN,
                    else its walk), and print the result as JSON: nothing is
                    reported, no state or audit record is written
  -h, --help        this text
  -V, --version     the version

With CAP_SYS_ADMIN (a site's unit drop-in grants it), first reads the quota of
each drive that is a quota root (btrfs subvolume with qgroups: its level-0
qgroup's referenced bytes; XFS/ext4 project tree: its project's space), then drops
CAP_SYS_ADMIN from every set and checks that it is gone before walking the rest.
The walk counts the allocated bytes (as du) below a drive's base, on its
filesystem only, without following symlinks. A drive that hits a limit is reported
at no less than its last total and the audit record says which limit. Writes one
total per drive to var/lib/ucloud-im/outbox/usage/ (ucloud-sender delivers it),
keeps each drive's state in var/lib/ucloud-im/du/, and prints one audit record (a
JSON line) on stdout, naming each drive's source. Runs as its own account with
CAP_DAC_READ_SEARCH (and, for quotas only, CAP_SYS_ADMIN), never as root.
See ucloud-du(8).
";

struct Options {
    limits: Limits,
    drives: Vec<String>,
    measure: Option<PathBuf>,
    walk_only: bool,
}

fn options() -> Result<Options, String> {
    let mut args = pico_args::Arguments::from_env();
    let walk_only = args.contains("--walk-only");
    let num = |args: &mut pico_args::Arguments, key: &'static str, default: u64| {
        args.opt_value_from_str::<_, u64>(key)
            .map(|v| v.unwrap_or(default))
            .map_err(|e| format!("{key}: {e}"))
    };
    let files = num(&mut args, "--max-files", 10_000_000)?;
    let seconds = num(&mut args, "--max-seconds", 1800)?;
    let depth = num(&mut args, "--max-depth", 4096)?;
    if files == 0 || seconds == 0 || depth == 0 {
        return Err("the limits must be above 0".into());
    }
    let drives = args
        .values_from_str::<_, String>("--drive")
        .map_err(|e| format!("--drive: {e}"))?;
    let measure = args
        .opt_value_from_os_str("--measure", |s| Ok::<_, String>(PathBuf::from(s)))
        .map_err(|e| format!("--measure: {e}"))?;
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected arguments {rest:?}"));
    }
    if measure.is_some() && !drives.is_empty() {
        return Err("--measure and --drive do not go together".into());
    }
    Ok(Options {
        limits: Limits {
            files,
            time: Duration::from_secs(seconds),
            depth: depth as usize,
        },
        drives,
        measure,
        walk_only,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if argv.iter().any(|a| a == "-V" || a == "--version") {
        println!("ucloud-du {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut options = match options() {
        Ok(o) => o,
        Err(why) => {
            eprintln!("ucloud-du: {why} (see ucloud-du --help)");
            return ExitCode::from(64);
        }
    };
    options.limits.depth = options.limits.depth.min(descriptors().saturating_sub(32));
    let result = match &options.measure {
        Some(dir) => measure(dir, &options),
        None => report(&options),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err((code, why)) => {
            eprintln!("ucloud-du: {why}");
            ExitCode::from(code)
        }
    }
}

/// The walk keeps one descriptor per level: as many as the hard limit allows.
fn descriptors() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard as usize
            } else {
                soft as usize
            }
        }
        Err(_) => 1024,
    }
}

fn walk_json(w: &walk::Walk) -> Value {
    json!({
        "bytes": w.bytes,
        "entries": w.entries,
        "vanished": w.vanished,
        "unreadable": w.unreadable,
        "otherFs": w.other_fs,
        "truncated": w.truncated.map(walk::Truncated::as_str),
        "seconds": w.elapsed.as_secs_f64(),
    })
}

/// One directory as a drive would be measured: its quota (with CAP_SYS_ADMIN),
/// else its walk, after the same drop.
fn measure(dir: &Path, options: &Options) -> Result<u8, (u8, String)> {
    let started = std::time::Instant::now();
    let quota = if options.walk_only {
        Err("--walk-only".to_string())
    } else if privilege::quota_capable() {
        quota::read(dir)
    } else {
        Err("no CAP_SYS_ADMIN: quotas are not read".to_string())
    };
    privilege::drop_admin().map_err(|why| (71, format!("refusing to walk: {why}")))?;
    let out = match quota {
        Ok(q) => json!({"source": q.source.name(), "bytes": q.bytes, "truncated": null,
                        "seconds": started.elapsed().as_secs_f64()}),
        Err(why) => {
            let w = walk::walk(dir, options.limits).map_err(|e| (66, e.0))?;
            let mut out = walk_json(&w);
            out["source"] = json!("walk");
            out["walkReason"] = json!(why);
            out
        }
    };
    println!("{out}");
    Ok(0)
}

/// Whether CAP_DAC_READ_SEARCH is in this thread's effective set (bit 2 of CapEff).
fn can_read_everything() -> bool {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 2) != 0)
}

fn report(options: &Options) -> Result<u8, (u8, String)> {
    if nix::unistd::geteuid().is_root() {
        return Err((
            77,
            "refusing to run as root: run as the ucloud-du account with CAP_DAC_READ_SEARCH (see ucloud-du(8))".into(),
        ));
    }
    let setup = |why: String| (78, why);
    let config = ucloud_wire::config::SiteConfig::load(&ucloud_wire::paths::site_config())
        .map_err(|e| setup(e.to_string()))?;
    let etc = PathBuf::from(ucloud_wire::paths::etc_dir());
    let table = Table::load(&etc).map_err(setup)?;
    let state_dir = PathBuf::from(ucloud_wire::paths::state_dir()).join("du");
    let outbox = PathBuf::from(ucloud_wire::paths::outbox_dir());
    let table_dir = PathBuf::from(ucloud_wire::paths::drives_dir());
    let mut entries = drives::table(&table_dir).map_err(setup)?;
    // The quota phase: the only part that may use CAP_SYS_ADMIN.
    // Every drive of the table, even with --drive: a quota that two drives share
    // is neither's alone, and the other one may not be measured in this run.
    let quota_capable = !options.walk_only && privilege::quota_capable();
    let quotas: Vec<Result<quota::Quota, String>> = entries
        .iter()
        .map(|(_, drive)| match drive {
            Ok(_) if options.walk_only => Err("--walk-only".into()),
            Ok(_) if !quota_capable => Err("no CAP_SYS_ADMIN: quotas are not read".into()),
            Ok(d) => quota::read(&d.base),
            Err(_) => Err("not a drive".into()),
        })
        .collect();
    let mut quotas = unshared(&entries, quotas);
    // Nothing below runs with CAP_SYS_ADMIN, and the walk does not start unless
    // that is proven.
    let dropped = privilege::drop_admin()
        .map_err(|why| (71, format!("refusing to walk the drives: {why}")))?;
    if !options.drives.is_empty() {
        if let Some(missing) = options
            .drives
            .iter()
            .find(|id| !entries.iter().any(|(name, _)| name == *id))
        {
            return Err((66, format!("no drive {missing} in {}", table_dir.display())));
        }
        let keep: Vec<bool> = entries
            .iter()
            .map(|(name, _)| options.drives.contains(name))
            .collect();
        let mut keep_quota = keep.iter();
        quotas.retain(|_| *keep_quota.next().expect("one per entry"));
        let mut keep_entry = keep.iter();
        entries.retain(|_| *keep_entry.next().expect("one per entry"));
    }
    let capable = can_read_everything();
    if !capable {
        eprintln!(
            "ucloud-du: warning: no CAP_DAC_READ_SEARCH: directories the owner closed cannot be listed and their drives are reported as lower bounds"
        );
    }
    let mut records = Vec::new();
    let mut failed = 0;
    for ((name, drive), quota) in entries.into_iter().zip(quotas) {
        if let (true, Ok(_), Err(why)) = (quota_capable, &drive, &quota) {
            eprintln!("ucloud-du: drive {name}: no quota to read, walked: {why}");
        }
        let record = match drive.and_then(|d| {
            one(
                &d,
                quota,
                options,
                &config.provider,
                &table,
                &state_dir,
                &outbox,
            )
        }) {
            Ok(record) => record,
            Err(why) => {
                failed += 1;
                eprintln!("ucloud-du: drive {name}: {why}");
                json!({"drive": name, "reported": false, "reason": why})
            }
        };
        records.push(record);
    }
    let line = json!({
        "time": ucloud_wire::now_ms(),
        "program": "ucloud-du",
        "pid": std::process::id(),
        "callerUid": nix::unistd::getuid().as_raw(),
        "action": "measure",
        "decision": "allowed",
        "capability": capable,
        "sysAdmin": dropped.to_json(),
        "limits": {"files": options.limits.files, "seconds": options.limits.time.as_secs(),
                   "depth": options.limits.depth},
        "drives": records,
    });
    // The lock every writer of the audit log takes: the dispatcher cuts off a record
    // whose writer died half-way, which is safe only while nobody else is writing.
    // Not a file (a pipe, a terminal): nobody to wait for.
    let _locked = std::os::fd::AsFd::as_fd(&std::io::stdout())
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusive).ok());
    // One write: appended whole to the audit log the unit opened for us.
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| (74, format!("cannot write the audit record: {e}")))?;
    Ok(if failed == 0 { 0 } else { 75 })
}

/// Measures and reports one drive; its audit entry, or why nothing was reported.
fn one(
    drive: &drives::Drive,
    quota: Result<quota::Quota, String>,
    options: &Options,
    provider: &str,
    table: &Table,
    state_dir: &Path,
    outbox: &Path,
) -> Result<Value, String> {
    let category = table
        .category(&drive.category)
        .filter(|c| c.kind == Kind::Storage)
        .ok_or_else(|| {
            format!(
                "its category {:?} is not a storage category of the product table",
                drive.category
            )
        })?;
    let rule =
        Rule::of(&category.terms).map_err(|why| format!("category {:?}: {why}", drive.category))?;
    let mut record = match quota {
        Ok(q) => {
            json!({"source": q.source.name(), "bytes": q.bytes, "truncated": null})
        }
        Err(why) => {
            let walked = walk::walk(&drive.base, options.limits).map_err(|e| e.0)?;
            let mut r = walk_json(&walked);
            r["source"] = json!("walk");
            r["walkReason"] = json!(why);
            r
        }
    };
    let bytes = record["bytes"].as_u64().expect("bytes are set above");
    let truncated = !record["truncated"].is_null();
    let old = State::load(state_dir, &drive.id)?;
    let (total, state) = charge::charge(rule, &old, bytes, truncated, ucloud_wire::now_ms());
    // The state first: a crash before the report leaves a total the next run
    // reports again; never a total that was reported and then forgotten.
    state.save(state_dir, &drive.id)?;
    let report = Report {
        owner: drive.owner.clone(),
        category: drive.category.clone(),
        provider: provider.to_string(),
        scope: drive.scope(provider),
        usage: total,
    };
    usage::put(outbox, &report)
        .map_err(|e| format!("cannot write its report to {}: {e}", outbox.display()))?;
    record["drive"] = json!(drive.id);
    record["ucloudUser"] = json!(drive.ucloud);
    record["localUser"] = json!(drive.local);
    record["owner"] = drive.owner.to_json();
    record["base"] = json!(drive.base.to_string_lossy());
    record["category"] = json!(drive.category);
    record["scope"] = json!(report.scope);
    record["charged"] = json!(state.bytes);
    record["usage"] = json!(total);
    record["reported"] = json!(true);
    Ok(record)
}

/// A quota that two drives of this run share (one project id, one subvolume) is
/// neither drive's alone: both are walked instead, and say why.
fn unshared(
    entries: &[drives::Entry],
    quotas: Vec<Result<quota::Quota, String>>,
) -> Vec<Result<quota::Quota, String>> {
    let key = |q: &Result<quota::Quota, String>| q.as_ref().ok().map(|q| (q.dev, q.source));
    let keys: Vec<_> = quotas.iter().map(key).collect();
    quotas
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let shared = keys[i].and_then(|k| {
                keys.iter()
                    .enumerate()
                    .find(|&(j, other)| j != i && *other == Some(k))
                    .map(|(j, _)| &entries[j].0)
            });
            match (q, shared) {
                (Ok(q), Some(other)) => {
                    Err(format!("its {} also covers drive {other}", q.source.name()))
                }
                (q, _) => q,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quota::{Quota, Source};

    #[test]
    fn a_quota_two_drives_share_is_neither_drives_and_both_are_walked() {
        let entries: Vec<drives::Entry> = ["1", "2", "3", "4"]
            .iter()
            .map(|id| (id.to_string(), Err("unused".to_string())))
            .collect();
        let q = |dev, source| {
            Ok(Quota {
                bytes: 10,
                source,
                dev,
            })
        };
        let got = unshared(
            &entries,
            vec![
                q(1, Source::Project(7)),
                q(1, Source::Project(7)),
                // The same id on another filesystem is another quota.
                q(2, Source::Project(7)),
                Err("walked anyway".into()),
            ],
        );
        assert_eq!(got[0], Err("its project 7 also covers drive 2".to_string()));
        assert_eq!(got[1], Err("its project 7 also covers drive 1".to_string()));
        assert_eq!(got[2], q(2, Source::Project(7)));
        assert_eq!(got[3], Err("walked anyway".to_string()));
    }
}
