//! The few operations that need `unsafe`: taking ownership of the descriptors the
//! service manager (or inetd) handed us, and placing the envelope pipe on fd 3 in
//! the child between fork and exec.

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The connection's descriptors: `(read, write)`.
pub enum Inherited {
    /// inetd style: the connection is fd 0 (read) and fd 1 (write).
    Inetd(OwnedFd, OwnedFd),
    /// `LISTEN_FDS=1`: the connection is fd 3.
    Listen(OwnedFd),
}

/// First fd above the ones the dispatcher's child will see (0..=3), so that the
/// connection never sits where the envelope pipe must go.
const SAFE_FD: RawFd = 10;

/// Takes ownership of the connection descriptors. Called once, at the start of
/// `main`, before anything else opens a descriptor.
pub fn take_connection(listen_fds: bool) -> nix::Result<Inherited> {
    if listen_fds {
        // SAFETY: with LISTEN_FDS=1 and LISTEN_PID = our pid the service manager
        // guarantees fd 3 is open and ours; nothing else in this process owns it yet
        // (this runs first in main).
        let fd3 = unsafe { OwnedFd::from_raw_fd(3) };
        // Move it off fd 3 with close-on-exec: fd 3 is where the envelope goes for the
        // dispatcher, and the connection must never leak into a plugin.
        let moved = move_high(&fd3)?;
        drop(fd3);
        Ok(Inherited::Listen(moved))
    } else {
        // SAFETY: fds 0 and 1 are open for the life of the process (inetd contract);
        // std's stdin/stdout handles are never used by this program, so these
        // OwnedFds are the only owners. They need no close-on-exec: the dispatcher
        // gets pipes on 0, 1 and 2 in their place.
        let (fd0, fd1) = unsafe { (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1)) };
        Ok(Inherited::Inetd(fd0, fd1))
    }
}

fn move_high(fd: &OwnedFd) -> nix::Result<OwnedFd> {
    let new = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(SAFE_FD))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Makes the child see `envelope` (a pipe's read end, close-on-exec in the parent)
/// as fd 3 without close-on-exec.
pub fn envelope_on_fd3(cmd: &mut Command, envelope: &OwnedFd) {
    let raw = envelope.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // dup2 and fcntl, which are async-signal-safe; it allocates nothing and touches
    // no lock. `raw` stays open in the parent until after spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            if raw == 3 {
                // dup2 onto itself would keep close-on-exec set.
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            } else {
                let new = nix::unistd::dup2_raw(fd, 3)?;
                // fd 3 must survive into exec: do not let the OwnedFd close it.
                std::mem::forget(new);
            }
            Ok(())
        });
    }
}
