//! One JSON line per decision (allowed or refused) appended to the root-owned audit
//! log, and the same line to syslog when `/dev/log` exists. The file write is the
//! record: if it fails, the request is refused. Syslog is best effort (machines
//! without a syslog daemon have no `/dev/log`).
//!
//! A record is written whole or not at all, whatever the caller set up:
//! - sanitize.rs lifts the file-size limit before anything can be refused, and
//!   SIGXFSZ is ignored while writing, so a limit that still holds fails the write
//!   (EFBIG) instead of ending the process;
//! - the record is one write(2) under an exclusive flock(2) on the log (the registry
//!   and ucloud-du take it too); if the write comes back short (disk full, a limit), the log is
//!   cut back to its length before the write;
//! - while the lock is held the real uid is 0 and every signal is blocked: the
//!   caller, otherwise the real uid, cannot send the fatal signal the kernel would
//!   end the write at, between two pages, nor stop the process holding the lock;
//! - a record cut short anyway (a writer killed by root or by the kernel) is cut off
//!   by the next writer, which finds the log not ending in a newline.
//!
//! Refusals of callers that were not accepted are limited per uid
//! ([`ucloud_wire::limit`]).

use crate::error::Error;
use crate::shield;
use crate::trust::{self, Use};
use nix::fcntl::{Flock, FlockArg, OFlag};
use serde_json::{json, Value};
use std::fs::File;
use ucloud_wire::audit::{cut_partial_record, write_whole};
use ucloud_wire::limit;
use ucloud_wire::paths;

/// What is known about a request so far; filled in as the pipeline learns it.
#[derive(Debug, Default)]
pub struct Record {
    pub caller_uid: u32,
    pub call: Option<String>,
    pub ucloud_user: Option<String>,
    pub local_user: Option<String>,
    pub uid: Option<u32>,
    /// What a session identifier was for (a terminal's job and rank, or folder).
    pub subject: Option<String>,
    /// The caller passed the caller check: its refusals are never limited.
    pub caller_accepted: bool,
}

impl Record {
    pub fn line(&self, outcome: Result<(), &Error>) -> String {
        let mut v = json!({
            "time": ucloud_wire::now_ms(), "program": "ucloud-dispatch",
            "pid": std::process::id(), "callerUid": self.caller_uid, "call": self.call,
            "ucloudUser": self.ucloud_user, "localUser": self.local_user, "uid": self.uid,
            "decision": "allowed",
        });
        if let Some(subject) = &self.subject {
            v["session"] = Value::String(subject.clone());
        }
        if let Err(e) = outcome {
            v["decision"] = json!("refused");
            v["status"] = json!(e.status());
            v["errorCode"] = json!(e.code());
            v["reason"] = Value::String(e.to_string());
        }
        v.to_string()
    }
}

pub fn write(record: &Record, outcome: Result<(), &Error>) -> Result<(), Error> {
    let line = record.line(outcome);
    let limited = outcome.is_err() && !record.caller_accepted;
    let path = paths::audit_log();
    let written = append(&path, record.caller_uid, &line, outcome.is_ok(), limited)
        .map_err(|why| Error::Audit(format!("cannot write the audit log {path}: {why}")))?;
    for (line, allowed) in written {
        ucloud_wire::audit::syslog("ucloud-dispatch", &line, allowed);
    }
    Ok(())
}

/// Appends what the limit lets through (the record, maybe after a summary) and
/// returns those lines, each with whether it records an allowed request.
fn append(
    path: &str,
    caller_uid: u32,
    line: &str,
    allowed: bool,
    limited: bool,
) -> Result<Vec<(String, bool)>, String> {
    let file = open_log(path)?;
    let _unsignalled = shield::RootRealUid::enter(caller_uid)
        .map_err(|e| format!("cannot set the real uid to 0: {e}"))?;
    let file = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock it: {e}"))?;
    let _quiet = shield::Quiet::enter().map_err(|e| format!("cannot block signals: {e}"))?;
    cut_partial_record(&file)?;
    let state = limited
        .then(|| limit::open_state(&paths::audit_limit_dir(), caller_uid))
        .flatten();
    let charge = limit::charge(state, ucloud_wire::now_ms());
    let mut lines = Vec::new();
    if let Some(summary) = charge.verdict.summary {
        lines.push((summary.line("ucloud-dispatch", caller_uid), false));
    }
    if charge.verdict.write {
        lines.push((line.to_string(), allowed));
    }
    let bytes: String = lines.iter().map(|(line, _)| format!("{line}\n")).collect();
    if !bytes.is_empty() {
        write_whole(&file, bytes.as_bytes())?;
    }
    charge.commit();
    Ok(lines)
}

fn open_log(path: &str) -> Result<File, String> {
    // Read as well as append: a partial record at the end is looked for and cut.
    let flags = OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT;
    trust::open(path, Use::Write(flags))
        .map(File::from)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_json_object_each() {
        let record = Record {
            caller_uid: 7,
            call: Some("files.browse".into()),
            ..Default::default()
        };
        let refused = Error::WrongCaller("only gw\n may run it".into());
        for line in [record.line(Ok(())), record.line(Err(&refused))] {
            assert!(!line.contains('\n'), "{line}");
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["callerUid"], 7);
        }
        let summary = limit::Summary {
            count: 290,
            since: 1,
        }
        .line("ucloud-dispatch", 7);
        let v: Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(
            (v["decision"].as_str(), v["suppressed"].as_u64()),
            (Some("suppressed"), Some(290))
        );
    }
}
