//! The one operation that needs `unsafe`: taking the event socket the service
//! manager passed as fd 3 (`ucloud-monitor.socket`, `Accept=no`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

/// The listening socket of `LISTEN_FDS`/`LISTEN_PID`, when they name this process.
pub fn inherited_listener() -> Result<Option<UnixListener>, String> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    if std::env::var("LISTEN_PID").ok() != Some(std::process::id().to_string()) {
        return Ok(None);
    }
    // The Slurm clients the monitor runs must not believe the socket is theirs.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    if count != "1" {
        return Err(format!(
            "LISTEN_FDS={count}: exactly one listening socket (the event socket) is supported"
        ));
    }
    // SAFETY: LISTEN_FDS=1 with LISTEN_PID equal to our pid means the service manager
    // opened fd 3 for this process; this runs once, first thing in main, before
    // anything else could own fd 3.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("fd 3: {e}"))?;
    match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn) {
        Ok(true) => Ok(Some(UnixListener::from(fd))),
        Ok(false) => Err("fd 3 is a socket that does not listen (the unit needs Accept=no)".into()),
        Err(e) => Err(format!("fd 3 is no listening socket: {e}")),
    }
}
