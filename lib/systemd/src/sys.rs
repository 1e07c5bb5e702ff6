//! The one operation that needs `unsafe`: owning a descriptor by its number, as the
//! service manager hands it over.

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Owns `fd`, which the service manager passed to this process (the caller read
/// its variables), and makes it close-on-exec, as sd_listen_fds(3) does. Hands out
/// one descriptor once in the life of the process: `None` after that.
pub fn take_passed(fd: RawFd) -> Option<nix::Result<OwnedFd>> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: F_GETFD only reads the flags of whatever descriptor the number names
    // and changes nothing; for a number that names none it fails with EBADF.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Some(Err(nix::errno::Errno::last()));
    }
    // SAFETY: `fd` is open (checked above) and the service manager passed it to this
    // process, whose id its variables name (checked by the caller); TAKEN makes this
    // the one OwnedFd ever made here, and the programs take it first thing in main,
    // before any other part of them could own or close that number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Some(fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(|_| owned))
}
