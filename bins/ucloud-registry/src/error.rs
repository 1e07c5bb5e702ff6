//! The one error type of the registry. Each variant maps to one exit status
//! (64 usage, 77 refused, 75 busy, 78 unsafe or misconfigured installation, 70 internal, the
//! same scheme as ucloud-dispatch) and carries a message that says what to change.

use std::fmt;

pub const EXIT_USAGE: u8 = 64;
pub const EXIT_REFUSED: u8 = 77;
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_INTERNAL: u8 = 70;
pub const EXIT_BUSY: u8 = 75;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Usage(String),
    NotRoot {
        euid: u32,
    },
    /// The request is understood and refused: bad name, unsuitable account, already
    /// mapped, not mapped.
    Refused(String),
    /// Too many requests of one account at once: nothing was done, try again.
    Busy(String),
    /// Config, ownership or modes of the installation are wrong.
    Config(String),
    /// The audit record could not be written, so nothing was changed.
    Audit(String),
    Io(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::NotRoot { .. } | Error::Refused(_) => EXIT_REFUSED,
            Error::Config(_) => EXIT_CONFIG,
            Error::Busy(_) => EXIT_BUSY,
            Error::Audit(_) | Error::Io(_) => EXIT_INTERNAL,
        }
    }

    /// Wraps an I/O failure with what was being done, e.g. `io("writing x")`.
    pub fn io(what: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
        move |e| Error::Io(format!("{what}: {e}"))
    }

    pub fn errno(what: impl fmt::Display) -> impl FnOnce(nix::errno::Errno) -> Error {
        move |e| Error::Io(format!("{what}: {}", e.desc()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m} (try --help)"),
            Error::NotRoot { euid } => write!(
                f,
                "ucloud-registry changes root-owned data and must run as root (euid is {euid}); run it with sudo"
            ),
            Error::Refused(m) | Error::Busy(m) | Error::Config(m) | Error::Io(m) => f.write_str(m),
            Error::Audit(m) => write!(f, "{m}; nothing was changed"),
        }
    }
}

impl std::error::Error for Error {}
