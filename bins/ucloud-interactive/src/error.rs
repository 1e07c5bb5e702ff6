//! The one error type of the terminal plugin: each refusal is one failure line on
//! stderr (status, errorCode, why; ucloud-im-plugins(7)), which the gateway sends
//! to the browser as the stream's final response.

use std::fmt;
use ucloud_wire::error::Failure;

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// The request or the session identifier is not what the dispatcher hands a
    /// jobs.shell plugin.
    BadRequest(String),
    /// The job is not the caller's to attach to.
    NotYourJob(String),
    /// The job is not running (yet, or any more).
    NotRunning(String),
    /// Slurm could not be asked.
    Slurm(String),
    /// The pseudo-terminal or the shell could not be started.
    Start(String),
    /// A web interface's cookie shown on another job's host.
    WrongApp(String),
    /// Nothing of the caller's listens where the application should.
    Unreachable(String),
    /// No such folder of the caller's.
    NotFound(String),
}

impl Error {
    fn class(&self) -> (u16, &'static str, &str) {
        match self {
            Error::BadRequest(w) => (400, "BAD_REQUEST", w),
            Error::NotYourJob(w) => (403, "NOT_YOUR_JOB", w),
            Error::NotRunning(w) => (409, "NOT_RUNNING", w),
            Error::Slurm(w) => (500, "SLURM_UNAVAILABLE", w),
            Error::Start(w) => (500, "SHELL_FAILED", w),
            Error::WrongApp(w) => (403, "WRONG_APP", w),
            Error::Unreachable(w) => (502, "APP_UNREACHABLE", w),
            Error::NotFound(w) => (404, "NOT_FOUND", w),
        }
    }

    pub fn failure(&self) -> Failure {
        let (status, code, why) = self.class();
        Failure::new(status, code, why)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class().2)
    }
}
