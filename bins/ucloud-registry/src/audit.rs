//! One JSON line per decision of the registry, appended to the same root-owned audit
//! log as the dispatcher's and in the same shape (`time`, `program`, `pid`,
//! `callerUid`, `decision` allowed|refused, `reason`), plus the `action`. A change is
//! made only after its record is written; syslog is best effort.
//!
//! Refusals of a person's account are limited per uid as the dispatcher's refusals
//! of callers it does not accept ([`ucloud_wire::limit`]): anyone with an account
//! can repeat `connect` with a made-up ticket, and each refusal would otherwise add
//! a record. Root's and the service account's are all written: root's are the
//! administrator's own, and the service account's requests come from the network,
//! one per UCloud request, as the dispatcher's gateway's do.

use crate::error::Error;
use nix::fcntl::OFlag;
use serde_json::{json, Value};
use std::fs::File;
use ucloud_wire::audit;
use ucloud_wire::limit;
use ucloud_wire::trust::{self, Untrusted, Use};

#[derive(Debug, Default, Clone)]
pub struct Record {
    pub action: &'static str,
    pub ucloud_user: Option<String>,
    pub local_user: Option<String>,
    pub uid: Option<u32>,
    /// The uid that asked, when it is not this process's own: the peer of the
    /// registry socket, as the kernel reports it.
    pub caller: Option<u32>,
}

impl Record {
    pub fn line(&self, refused: Option<&str>) -> String {
        let mut v = json!({
            "time": ucloud_wire::now_ms(),
            "program": "ucloud-registry",
            "pid": std::process::id(),
            "callerUid": self.caller.unwrap_or_else(|| nix::unistd::getuid().as_raw()),
            "action": self.action,
            "ucloudUser": self.ucloud_user,
            "localUser": self.local_user,
            "uid": self.uid,
            "decision": if refused.is_some() { "refused" } else { "allowed" },
        });
        if let Some(reason) = refused {
            v["reason"] = Value::String(reason.to_string());
        }
        v.to_string()
    }
}

pub struct Audit {
    path: String,
    /// The directory of the per-uid counts of refusals.
    limit_dir: String,
    /// The caller is a person's account: its refusals are limited.
    pub person: bool,
    /// Whether the directories above the log are judged too (always, but for a
    /// test's scratch directory under the world-writable temporary directory).
    walk: bool,
}

impl Audit {
    pub fn site() -> Audit {
        Audit {
            path: ucloud_wire::paths::audit_log(),
            limit_dir: ucloud_wire::paths::audit_limit_dir(),
            person: false,
            walk: true,
        }
    }

    #[cfg(test)]
    pub fn at(path: &std::path::Path) -> Audit {
        let dir = path.parent().unwrap().join("audit-limit");
        Audit {
            path: path.to_string_lossy().into_owned(),
            limit_dir: dir.to_string_lossy().into_owned(),
            person: false,
            walk: false,
        }
    }

    pub fn allowed(&self, record: &Record) -> Result<(), Error> {
        self.write(&record.line(None), true, None)
    }

    /// An allowed action with what it handed over (`note`'s keys join the record).
    pub fn allowed_noting(&self, record: &Record, note: Value) -> Result<(), Error> {
        let mut line: Value = serde_json::from_str(&record.line(None))
            .map_err(|e| Error::Audit(format!("cannot make the audit record: {e}")))?;
        if let (Value::Object(line), Value::Object(note)) = (&mut line, note) {
            for (k, v) in note {
                line.entry(k).or_insert(v);
            }
        }
        self.write(&line.to_string(), true, None)
    }

    /// A refusal is recorded best effort: the refusal stands either way.
    pub fn refused(&self, record: &Record, reason: &Error) {
        let limited = record.caller.filter(|_| self.person);
        if let Err(e) = self.write(&record.line(Some(&reason.to_string())), false, limited) {
            ucloud_wire::log_err!("ucloud-registry: {e}");
        }
    }

    /// Writes `line`, or counts it when it refuses `limited`, a person's uid, too
    /// often; then the first line after the window is a summary of those counted.
    fn write(&self, line: &str, allowed: bool, limited: Option<u32>) -> Result<(), Error> {
        let fail =
            |why: String| Error::Audit(format!("cannot write the audit log {}: {why}", self.path));
        let file = self
            .open(&self.path, audit_use())
            .map_err(|u| fail(u.about(&self.path)))?;
        // The dispatcher's lock, and its rules under it: whole records only.
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| fail(format!("cannot lock it: {e}")))?;
        audit::cut_partial_record(&file).map_err(fail)?;
        let state = limited.and_then(|uid| {
            let path = format!("{}/{uid}", self.limit_dir);
            self.open(&path, limit::STATE_USE).ok()
        });
        let charge = limit::charge(state, ucloud_wire::now_ms());
        let mut lines = Vec::new();
        if let (Some(summary), Some(uid)) = (charge.verdict.summary, limited) {
            lines.push((summary.line("ucloud-registry", uid), false));
        }
        if charge.verdict.write {
            lines.push((line.to_string(), allowed));
        }
        let bytes: String = lines.iter().map(|(line, _)| format!("{line}\n")).collect();
        if !bytes.is_empty() {
            audit::write_whole(&file, bytes.as_bytes()).map_err(fail)?;
        }
        charge.commit();
        for (line, allowed) in lines {
            audit::syslog("ucloud-registry", &line, allowed);
        }
        Ok(())
    }

    /// The log or a count opened the dispatcher's way ([`trust`]): never through a
    /// link, root's alone, judged on the open descriptor.
    fn open(&self, path: &str, how: Use) -> Result<File, Untrusted> {
        if self.walk {
            return trust::open(path, how).map(File::from);
        }
        let path = std::path::Path::new(path);
        let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap());
        let dir_path = dir.to_string_lossy();
        let dir = File::open(dir).map_err(|e| Untrusted::Unsafe(format!("{dir_path}: {e}")))?;
        let (fd, _) = trust::open_at(&dir, &dir_path, &name.to_string_lossy(), how)?;
        Ok(File::from(fd))
    }
}

/// Read as well as append: a partial record at the end is looked for and cut.
fn audit_use() -> Use {
    Use::Write(OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_what_was_decided() {
        let r = Record {
            action: "add",
            ucloud_user: Some("A#1".into()),
            local_user: Some("alice".into()),
            uid: Some(1001),
            caller: None,
        };
        let allowed: Value = serde_json::from_str(&r.line(None)).unwrap();
        assert_eq!(allowed["decision"], "allowed");
        assert_eq!(allowed["program"], "ucloud-registry");
        assert_eq!(allowed["action"], "add");
        assert!(allowed.get("reason").is_none());
        let refused: Value = serde_json::from_str(&r.line(Some("no"))).unwrap();
        assert_eq!(
            (refused["decision"].as_str(), refused["reason"].as_str()),
            (Some("refused"), Some("no"))
        );
    }

    /// The dispatcher's rule holds for the registry's records too: a record a killed
    /// writer left unfinished is cut off, not glued to the next.
    #[test]
    fn a_partial_record_is_cut_before_the_next() {
        let path = std::env::temp_dir().join(format!("registry-partial-{}", std::process::id()));
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Audit::at(&path).allowed(&Record::default()).unwrap();
        let log = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert_eq!(lines[0], "{\"a\":1}");
        let record: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(record["program"], "ucloud-registry");
    }

    #[test]
    fn an_unsafe_log_is_an_error() {
        let path = std::env::temp_dir().join(format!("registry-audit-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = Audit::at(&path).allowed(&Record::default()).unwrap_err();
        assert!(matches!(err, Error::Audit(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_file(path).unwrap();
    }

    /// The attack: a person repeats a refused `connect`. The log takes at most a
    /// burst and a summary per window, and every refusal is written or counted.
    #[test]
    fn a_persons_repeated_refusals_are_limited_and_counted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("registry-limit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("audit-limit")).unwrap();
        let mode = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(dir.join("audit-limit"), mode).unwrap();
        let path = dir.join("audit.log");
        let mut audit = Audit::at(&path);
        audit.person = true;
        let record = Record {
            action: "connect",
            caller: Some(4242),
            ..Default::default()
        };
        let why = Error::Refused("no such ticket".into());
        for _ in 0..300 {
            audit.refused(&record, &why);
        }
        let log = std::fs::read_to_string(&path).unwrap();
        assert_eq!(log.lines().count(), limit::BURST as usize, "{log}");
        let count = std::fs::read_to_string(dir.join("audit-limit/4242")).unwrap();
        let fields: Vec<u64> = count
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(fields[1] + fields[2], 300, "{count}");
        // Root's refusals are all written.
        audit.person = false;
        let root = Record {
            caller: Some(0),
            ..record
        };
        for _ in 0..20 {
            audit.refused(&root, &why);
        }
        let log = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(log.lines().count(), limit::BURST as usize + 20);
    }
}
