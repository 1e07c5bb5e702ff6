//! One JSON line per decision (allowed or refused) appended to the root-owned audit
//! log, and the same line to syslog when `/dev/log` exists. The file write is the
//! record: if it fails, the request is refused. Syslog is best effort (machines
//! without a syslog daemon have no `/dev/log`).

use crate::checks::{open_secure, Kind};
use crate::error::Error;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use ucloud_wire::paths;

/// What is known about a request so far; filled in as the pipeline learns it.
#[derive(Debug, Default)]
pub struct Record {
    pub caller_uid: u32,
    pub call: Option<String>,
    pub ucloud_user: Option<String>,
    pub local_user: Option<String>,
    pub uid: Option<u32>,
}

impl Record {
    pub fn line(&self, outcome: Result<(), &Error>) -> String {
        let mut v = json!({
            "time": ucloud_wire::now_ms(),
            "program": "ucloud-dispatch",
            "pid": std::process::id(),
            "callerUid": self.caller_uid,
            "call": self.call,
            "ucloudUser": self.ucloud_user,
            "localUser": self.local_user,
            "uid": self.uid,
        });
        match outcome {
            Ok(()) => v["decision"] = json!("allowed"),
            Err(e) => {
                v["decision"] = json!("refused");
                v["status"] = json!(e.status());
                v["errorCode"] = json!(e.code());
                v["reason"] = Value::String(e.to_string());
            }
        }
        v.to_string()
    }
}

pub fn write(record: &Record, outcome: Result<(), &Error>) -> Result<(), Error> {
    let line = record.line(outcome);
    append(&line)?;
    syslog(&line, outcome.is_ok());
    Ok(())
}

fn append(line: &str) -> Result<(), Error> {
    let path = paths::audit_log();
    let (dir, name) = path
        .rsplit_once('/')
        .expect("audit_log() is an absolute path");
    let fail = |why: String| Error::Audit(format!("cannot write the audit log {path}: {why}"));
    let dir = open_secure(dir, Kind::Dir).map_err(|e| fail(e.to_string()))?;
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK;
    let fd = openat(&dir, name, flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| fail(e.to_string()))?;
    let stat = fstat(&fd).map_err(|e| fail(e.to_string()))?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(fail("not a regular file".into()));
    }
    if stat.st_uid != 0 || stat.st_mode & 0o077 != 0 {
        return Err(fail(format!(
            "must be owned by root with mode 0600 (it is uid {}, mode {:04o})",
            stat.st_uid,
            stat.st_mode & 0o7777
        )));
    }
    // One write with O_APPEND: a line is never interleaved with another dispatcher's,
    // and a short write (disk full) is a failed record, not half a line.
    let mut file = File::from(fd);
    let bytes = format!("{line}\n");
    match file.write(bytes.as_bytes()) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(fail(format!(
            "only {n} of {} bytes were written",
            bytes.len()
        ))),
        Err(e) => Err(fail(e.to_string())),
    }
}

fn syslog(line: &str, allowed: bool) {
    // authpriv (10) with notice (5) for allowed, warning (4) for refused.
    let priority = 10 * 8 + if allowed { 5 } else { 4 };
    let message = format!(
        "<{priority}>ucloud-dispatch[{}]: {line}",
        std::process::id()
    );
    if let Ok(socket) = UnixDatagram::unbound() {
        let _ = socket.send_to(message.as_bytes(), "/dev/log");
    }
}
