//! The one error type of ucloud-lb: every message says what to fix.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// A line of the configuration file is wrong (`line` 0: the file as a whole).
    Config {
        file: PathBuf,
        line: usize,
        why: String,
    },
    /// Certificates or keys that do not make a TLS configuration.
    Tls(String),
    /// The listening socket (inherited or bound) is unusable.
    Listen(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { file, line: 0, why } => write!(f, "{}: {why}", file.display()),
            Error::Config { file, line, why } => {
                write!(f, "{} line {line}: {why}", file.display())
            }
            Error::Tls(why) => write!(f, "TLS: {why}"),
            Error::Listen(why) => write!(f, "listening socket: {why}"),
        }
    }
}

impl std::error::Error for Error {}
