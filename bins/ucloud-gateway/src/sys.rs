//! The few operations that need `unsafe`: taking ownership of the descriptors an
//! inetd-style start handed us (stdin, stdout), moving the connection off fd 3,
//! and placing the envelope pipe on fd 3 of the dispatcher.

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};

/// The connection's descriptors: `(read, write)`.
pub enum Inherited {
    /// inetd style: the connection is fd 0 (read) and fd 1 (write).
    Inetd(OwnedFd, OwnedFd),
    /// Passed by the service manager (a socket unit with Accept=yes).
    Listen(OwnedFd),
}

/// First fd above the ones the dispatcher's child will see (0..=3), so that the
/// connection never sits where the envelope pipe must go.
const SAFE_FD: RawFd = 10;

/// Takes ownership of the connection descriptors: `passed`, the service manager's,
/// or else stdin and stdout. Called once, at the start of `main`, before anything
/// else opens a descriptor.
pub fn take_connection(passed: Option<OwnedFd>) -> nix::Result<Inherited> {
    if let Some(fd3) = passed {
        // Move it off fd 3: fd 3 is where the envelope goes for the dispatcher, and
        // the connection must never leak into a plugin.
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

/// Spawns `cmd` with `envelope` (a pipe's read end, close-on-exec) as its fd 3.
///
/// The pipe is placed on fd 3 of the gateway itself, without close-on-exec, for the
/// moment of the spawn, and closed again at once. No `pre_exec` hook is needed, so
/// the standard library can use `posix_spawn` (a vfork-style clone) instead of a
/// full fork: the cheaper start matters on the hot path of every request. Nothing
/// else can leak through fd 3 meanwhile: every other descriptor of the gateway is
/// close-on-exec, the connection was moved above fd 3 at start, and no other thread
/// of the gateway starts processes.
pub fn spawn_with_fd3(cmd: &mut Command, envelope: &OwnedFd) -> std::io::Result<Child> {
    let raw = envelope.as_raw_fd();
    if raw == 3 {
        // dup2 onto itself would keep close-on-exec set.
        fcntl(envelope, FcntlArg::F_SETFD(FdFlag::empty()))?;
        let child = cmd.spawn();
        fcntl(envelope, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
        return child;
    }
    // SAFETY: `raw` is an open descriptor owned by `envelope` for the whole call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    // SAFETY: fd 3 is free in the gateway (see above); dup2 gives us a new descriptor
    // we own and close right after the spawn, whatever the spawn's outcome.
    let on_fd3 = unsafe { nix::unistd::dup2_raw(borrowed, 3) }?;
    let child = cmd.spawn();
    drop(on_fd3);
    child
}
