//! The plugin's one error type. Each variant is one UCloud status and error code;
//! the `why` reaches the UCloud user, so it names the path and what to do. Only the
//! UCloud path is ever shown, never the local directory behind it.

use std::fmt;
use ucloud_wire::error::Failure;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is not what the call expects.
    BadRequest(String),
    /// The path is not one this plugin resolves (`..`, NUL, `//`, too long, a link).
    BadPath(String),
    NotFound(String),
    PermissionDenied(String),
    NotADirectory(String),
    /// The name is taken and the conflict policy says not to touch it.
    Conflict(String),
    /// A transfer offset or range that does not fit what is on disk.
    BadOffset(String),
    RangeNotSatisfiable(String),
    /// ENOSPC or EDQUOT: nothing half-written was kept.
    DiskFull(String),
    /// A file of the user's this plugin will not write as it is (a symbolic link
    /// where a file belongs, a block edited out of shape); nothing was changed.
    Unsafe(String),
    /// The call name in `UCLOUD_CALL` is not one this binary serves.
    Unsupported(String),
    /// The installation is wrong (environment, drive table); not the user's fault.
    Misconfigured(String),
    Internal(String),
}

impl Error {
    pub fn failure(&self) -> Failure {
        let (status, code) = match self {
            Error::BadRequest(_) => (400, "BAD_REQUEST"),
            Error::BadPath(_) => (400, "BAD_PATH"),
            Error::NotADirectory(_) => (400, "NOT_A_DIRECTORY"),
            Error::Conflict(_) => (409, "ALREADY_EXISTS"),
            Error::Unsafe(_) => (409, "UNSAFE_FILE"),
            Error::BadOffset(_) => (409, "BAD_OFFSET"),
            Error::RangeNotSatisfiable(_) => (416, "RANGE_NOT_SATISFIABLE"),
            Error::DiskFull(_) => (507, "DISK_FULL"),
            Error::PermissionDenied(_) => (403, "PERMISSION_DENIED"),
            Error::NotFound(_) => (404, "NOT_FOUND"),
            Error::Unsupported(_) => (404, "NOT_SUPPORTED"),
            Error::Misconfigured(_) => (500, "MISCONFIGURED"),
            Error::Internal(_) => (500, "INTERNAL_ERROR"),
        };
        Failure::new(status, code, self.to_string())
    }

    /// What a failed system call on `ucloud_path` means to the user.
    pub fn from_errno(e: nix::errno::Errno, ucloud_path: &str) -> Error {
        use nix::errno::Errno::*;
        match e {
            ENOENT => Error::NotFound(format!("{ucloud_path} does not exist")),
            EACCES | EPERM => {
                Error::PermissionDenied(format!("you have no permission to open {ucloud_path}"))
            }
            ELOOP => Error::BadPath(format!(
                "{ucloud_path} is or passes through a symbolic link; links are not followed"
            )),
            ENOTDIR => Error::NotADirectory(format!("{ucloud_path} is not a directory")),
            ENAMETOOLONG => Error::BadPath(format!("{ucloud_path} is too long")),
            EEXIST | ENOTEMPTY => Error::Conflict(format!("{ucloud_path} already exists")),
            ENOSPC | EDQUOT => Error::DiskFull(format!(
                "no space left for {ucloud_path} (disk or quota full); nothing half-written was kept"
            )),
            EROFS => Error::PermissionDenied(format!("{ucloud_path} is on a read-only file system")),
            EISDIR => Error::BadRequest(format!("{ucloud_path} is a directory")),
            other => Error::Internal(format!("{ucloud_path}: {}", other.desc())),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRequest(m)
            | Error::BadPath(m)
            | Error::NotFound(m)
            | Error::PermissionDenied(m)
            | Error::NotADirectory(m)
            | Error::Conflict(m)
            | Error::Unsafe(m)
            | Error::BadOffset(m)
            | Error::RangeNotSatisfiable(m)
            | Error::DiskFull(m)
            | Error::Unsupported(m)
            | Error::Misconfigured(m)
            | Error::Internal(m) => f.write_str(m),
        }
    }
}
