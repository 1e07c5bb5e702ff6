//! What a share step answers: the report of a walk, or the one error of every
//! step. Both cross a pipe from the sharer's child to the root parent, so both
//! have a JSON form, which the parent reads as untrusted input (the sharer can
//! kill the child, not forge its memory, but the parent need not rely on that).

use nix::errno::Errno;
use serde_json::{json, Value};
use std::fmt;

/// What a walk did (so far, when it stopped at a limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Directories whose ACLs were brought to the wanted state, the folder included.
    pub dirs: u64,
    /// Regular files whose ACL was brought to the wanted state.
    pub files: u64,
    /// Entries left alone: other owners, symlinks and special files, other
    /// filesystems, entries that vanished or could not be opened, levels past
    /// the depth limit of a revoke, and the `errors`.
    pub skipped: u64,
    /// Of the skipped, the entries a revoke (or a walk in the recipient's own
    /// directories) could not change because a call failed or their ACL was
    /// refused, and passed over. A revoke with errors left entries of the
    /// recipient's in place.
    pub errors: u64,
    /// The folder the walk saw: the gate mounts this inode and no other.
    pub folder_dev: u64,
    pub folder_ino: u64,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({"dirs": self.dirs, "files": self.files, "skipped": self.skipped,
               "errors": self.errors, "folderDev": self.folder_dev,
               "folderIno": self.folder_ino})
    }

    pub fn from_json(v: &Value) -> Option<Report> {
        let n = |key: &str| v.get(key)?.as_u64();
        Some(Report {
            dirs: n("dirs")?,
            files: n("files")?,
            skipped: n("skipped")?,
            errors: n("errors")?,
            folder_dev: n("folderDev")?,
            folder_ino: n("folderIno")?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The request or what the filesystem shows is not acceptable: not owned by
    /// the sharer, a symlink, a swapped folder, a hostile ACL. Refused before any
    /// change to the entry in question.
    Refused(String),
    /// A system call failed where it should not have.
    Failed(String),
    /// A walk limit ("entries" or "depth") was hit; the report says how far the
    /// walk got, and what it had done stays done.
    Limit { limit: String, report: Report },
    /// The sharer's child did not answer before the deadline and was killed.
    Timeout(String),
}

impl Error {
    /// A failed system call on `what`.
    pub fn sys(what: impl fmt::Display, errno: Errno) -> Error {
        Error::Failed(format!("{what}: {}", errno.desc()))
    }

    pub fn to_json(&self) -> Value {
        match self {
            Error::Refused(why) => json!({"refused": why}),
            Error::Failed(why) => json!({"failed": why}),
            Error::Limit { limit, report } => json!({"limit": limit, "report": report.to_json()}),
            Error::Timeout(why) => json!({"timeout": why}),
        }
    }

    /// None for anything that is not exactly one of the forms `to_json` writes.
    pub fn from_json(v: &Value) -> Option<Error> {
        let obj = v.as_object()?;
        let text = |key: &str| obj.get(key)?.as_str().map(str::to_string);
        match obj.len() {
            1 => None
                .or_else(|| text("refused").map(Error::Refused))
                .or_else(|| text("failed").map(Error::Failed))
                .or_else(|| text("timeout").map(Error::Timeout)),
            2 => Some(Error::Limit {
                limit: text("limit")?,
                report: Report::from_json(obj.get("report")?)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Refused(why) => write!(f, "refused: {why}"),
            Error::Failed(why) => write!(f, "failed: {why}"),
            Error::Limit { limit, report } => write!(
                f,
                "the {limit} limit was hit after {} directories and {} files ({} errors)",
                report.dirs, report.files, report.errors
            ),
            Error::Timeout(why) => write!(f, "timed out: {why}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_survives_the_pipe_and_nothing_else_is_taken() {
        let report = Report {
            dirs: 1,
            files: 2,
            skipped: 3,
            errors: 6,
            folder_dev: 4,
            folder_ino: 5,
        };
        for e in [
            Error::Refused("a".into()),
            Error::Failed("b".into()),
            Error::Timeout("c".into()),
            Error::Limit {
                limit: "depth".into(),
                report,
            },
        ] {
            assert_eq!(Error::from_json(&e.to_json()), Some(e));
        }
        for bad in [
            json!(null),
            json!("refused"),
            json!({}),
            json!({"refused": 1}),
            json!({"other": "x"}),
            json!({"refused": "a", "failed": "b"}),
            json!({"limit": "depth", "report": {"dirs": -1}}),
            json!({"limit": "depth", "x": {}}),
        ] {
            assert_eq!(Error::from_json(&bad), None, "{bad}");
        }
    }
}
