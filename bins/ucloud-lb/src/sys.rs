//! The one operation that needs `unsafe`: taking the listening socket the service
//! manager passed as fd 3.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};

/// The socket the service manager passed, when `LISTEN_FDS`/`LISTEN_PID` say there is
/// one for this process. More than one is refused: the unit declares a single
/// `ListenStream=`.
pub fn inherited_listener() -> Result<Option<TcpListener>, String> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    if std::env::var("LISTEN_PID").ok() != Some(std::process::id().to_string()) {
        return Ok(None);
    }
    // Children (none today) must not believe the socket is theirs.
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    if count != "1" {
        return Err(format!(
            "LISTEN_FDS={count}: exactly one listening socket is supported"
        ));
    }
    // SAFETY: LISTEN_FDS=1 with LISTEN_PID equal to our pid means the service manager
    // opened fd 3 for this process; this runs once, first thing in main, so nothing
    // else owns fd 3 yet.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("fd 3: {e}"))?;
    match nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn) {
        Ok(true) => Ok(Some(TcpListener::from(fd))),
        Ok(false) => Err("fd 3 is a socket that does not listen (Accept=no is needed)".into()),
        Err(e) => Err(format!("fd 3 is no listening socket: {e}")),
    }
}
