//! The monitor's one error type. Every message says what to fix.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Bad command line (exit 64).
    Usage(String),
    /// The installation is not usable: account, directories, socket (exit 78).
    Setup(String),
    /// A file of the monitor's own state could not be read or written (exit 74).
    State(String),
    /// This host no longer holds the monitor lease: nothing may be written (the
    /// loop goes back to standby; never an exit).
    LeaseLost(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(why) => write!(f, "{why} (see ucloud-monitor --help)"),
            Error::Setup(why) | Error::State(why) => f.write_str(why),
            Error::LeaseLost(why) => write!(f, "the monitor lease is lost: {why}"),
        }
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 64,
            Error::Setup(_) => 78,
            Error::State(_) => 74,
            Error::LeaseLost(_) => 75,
        }
    }

    /// For `map_err`: a state file error naming the file.
    pub fn state(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
        move |e| Error::State(format!("{}: {e}", path.display()))
    }
}
