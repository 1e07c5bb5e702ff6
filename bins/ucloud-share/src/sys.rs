//! The one place ucloud-share needs `unsafe`: the xattr calls nix does not wrap
//! (the ACLs are read and written through a descriptor, never a path), and
//! fork(2), _exit(2) and the descriptor shuffling of the child that runs as the
//! sharer. Nothing here interprets what the kernel returns; acl.rs does.

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// XATTR_SIZE_MAX of linux/limits.h: no attribute value is longer.
const XATTR_SIZE_MAX: usize = 65536;

/// The value of the attribute `name` of the open file `fd`; None when it has
/// none (ENODATA).
pub fn fgetxattr(fd: impl AsFd, name: &CStr) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; XATTR_SIZE_MAX];
    // SAFETY: `name` is NUL-terminated; `buf` is XATTR_SIZE_MAX writable bytes
    // that outlive the call, and the kernel writes at most the size it is given.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_fd().as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
        )
    };
    match Errno::result(n) {
        Ok(n) => {
            buf.truncate(n as usize);
            Ok(Some(buf))
        }
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the attribute `name` of the open file `fd` to `value`.
pub fn fsetxattr(fd: impl AsFd, name: &CStr, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: `name` is NUL-terminated; `value` is `value.len()` readable bytes
    // for the whole call, which the kernel copies and keeps no pointer to.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast::<libc::c_void>(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

pub enum Forked {
    Child,
    Parent(Pid),
}

/// fork(2). ucloud-share starts no thread, so the child is a whole copy of a
/// single-threaded program and may run any code until it calls [`exit`].
pub fn fork() -> Result<Forked, Errno> {
    // SAFETY: the hazard of fork is a lock held by another thread at the moment
    // of the fork, which stays held for ever in the child. ucloud-share is
    // single-threaded. Its unit tests are not (libtest runs tests on threads), but
    // their children touch no lock but malloc's, which glibc's fork takes and
    // releases around the fork.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// _exit(2): the child ends without running the parent's exit handlers or
/// destructors, and without unwinding into the caller's stack.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit takes a plain integer and never returns; it touches no memory
    // of this process.
    unsafe { libc::_exit(code) }
}

/// A duplicate of `fd` numbered `min` or above (F_DUPFD_CLOEXEC).
pub fn dup_at_least(fd: impl AsFd, min: RawFd) -> Result<OwnedFd, Errno> {
    let new = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Closes every descriptor from 3 up but those in `keep`: close_range(2) over
/// the gaps, or on a kernel without it (before 5.9) each descriptor
/// /proc/self/fd lists. For the forked child only, which must not go on using
/// any object that owned a descriptor closed here.
pub fn close_all_but(keep: &[RawFd]) -> Result<(), Errno> {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= 3).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut gaps = Vec::with_capacity(keep.len() + 1);
    let mut first: u32 = 3;
    for &fd in &keep {
        let fd = fd as u32;
        if fd > first {
            gaps.push((first, fd - 1));
        }
        first = fd + 1;
    }
    gaps.push((first, u32::MAX));
    for (first, last) in gaps {
        // SAFETY: close_range takes two integers and a flag word and touches no
        // memory of this process; what it closes the caller no longer uses.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        match Errno::result(r) {
            Ok(_) => {}
            Err(Errno::ENOSYS) => return close_listed(&keep),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn close_listed(keep: &[RawFd]) -> Result<(), Errno> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in listed {
        if fd >= 3 && !keep.contains(&fd) {
            // SAFETY: close takes an integer; the listing's own descriptor is
            // closed already (EBADF, ignored), and the caller uses none of these.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}
