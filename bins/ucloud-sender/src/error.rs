//! Why the sender stops: the one error type of its start-up.

use std::fmt;

/// Why the sender cannot run.
#[derive(Debug)]
pub enum SendError {
    /// Bad command line (exit 64).
    Usage(String),
    /// Configuration, credentials or the outbox are not usable (exit 78).
    Setup(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Usage(why) => write!(f, "{why} (see ucloud-sender --help)"),
            SendError::Setup(why) => f.write_str(why),
        }
    }
}
