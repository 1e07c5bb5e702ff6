//! One JSON line per decision of the registry, appended to the same root-owned audit
//! log as the dispatcher's and in the same shape (`time`, `program`, `pid`,
//! `callerUid`, `decision` allowed|refused, `reason`), plus the `action`. A change is
//! made only after its record is written; syslog is best effort.

use crate::error::Error;
use nix::fcntl::OFlag;
use serde_json::{json, Value};
use std::fs::File;
use ucloud_wire::audit;
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
    /// Whether the directories above the log are judged too (always, but for a
    /// test's scratch directory under the world-writable temporary directory).
    walk: bool,
}

impl Audit {
    pub fn site() -> Audit {
        Audit {
            path: ucloud_wire::paths::audit_log(),
            walk: true,
        }
    }

    #[cfg(test)]
    pub fn at(path: &std::path::Path) -> Audit {
        Audit {
            path: path.to_string_lossy().into_owned(),
            walk: false,
        }
    }

    pub fn allowed(&self, record: &Record) -> Result<(), Error> {
        self.write(&record.line(None), true)
    }

    /// A refusal is recorded best effort: the refusal stands either way.
    pub fn refused(&self, record: &Record, reason: &Error) {
        if let Err(e) = self.write(&record.line(Some(&reason.to_string())), false) {
            ucloud_wire::log_err!("ucloud-registry: {e}");
        }
    }

    fn write(&self, line: &str, allowed: bool) -> Result<(), Error> {
        let fail =
            |why: String| Error::Audit(format!("cannot write the audit log {}: {why}", self.path));
        let file = self.open().map_err(|u| fail(u.about(&self.path)))?;
        // The dispatcher's lock, and its rules under it: whole records only.
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| fail(format!("cannot lock it: {e}")))?;
        audit::cut_partial_record(&file).map_err(fail)?;
        audit::write_whole(&file, format!("{line}\n").as_bytes()).map_err(fail)?;
        audit::syslog("ucloud-registry", line, allowed);
        Ok(())
    }

    /// The log opened the dispatcher's way ([`trust`]): never through a link, root's
    /// alone, judged on the open descriptor.
    fn open(&self) -> Result<File, Untrusted> {
        // Read as well as append: a partial record at the end is looked for and cut.
        let how = Use::Write(OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT);
        if self.walk {
            return trust::open(&self.path, how).map(File::from);
        }
        let path = std::path::Path::new(&self.path);
        let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap());
        let dir_path = dir.to_string_lossy();
        let dir = File::open(dir).map_err(|e| Untrusted::Unsafe(format!("{dir_path}: {e}")))?;
        let (fd, _) = trust::open_at(&dir, &dir_path, &name.to_string_lossy(), how)?;
        Ok(File::from(fd))
    }
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
}
