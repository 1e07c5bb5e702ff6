//! Why the simulator stops: the one error type of its commands, and the exit
//! status each kind gives.

use std::fmt;

/// Why the simulator stopped.
#[derive(Debug)]
pub enum SimError {
    /// The command line is wrong (exit 64).
    Usage(String),
    /// Files, keys, state or the listening socket are not usable (exit 78).
    Setup(String),
    /// `call` got no HTTP answer (exit 1).
    Call(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Usage(why) => write!(f, "{why} (see ucloud-sim --help)"),
            SimError::Setup(why) | SimError::Call(why) => f.write_str(why),
        }
    }
}

impl SimError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SimError::Usage(_) => 64,
            SimError::Setup(_) => 78,
            SimError::Call(_) => 1,
        }
    }
}
