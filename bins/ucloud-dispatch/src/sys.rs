//! Every `unsafe` block of the dispatcher lives here: raw file descriptor numbers
//! the contract fixes (0..=4), and libc calls nix has no safe wrapper for. Each block
//! says why it is sound. The rest of the crate denies unsafe code, but for the
//! entry point's `#[no_mangle]` in main.rs.

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::Signal;
use nix::sys::signal::{
    sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow,
};
use std::ffi::CStr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

/// Whether `fd` is an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid argument
    // (a closed or invalid fd gives EBADF).
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Closes every descriptor from `first` up, whatever the caller left open.
pub fn close_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range takes plain integers and only closes descriptors; no Rust
    // object owns an fd >= `first` at this point (called before anything is opened).
    Errno::result(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) }).map(drop)
}

/// Every signal back to its default action and none blocked: a caller may not make
/// the dispatcher (or, through exec, the plugin) ignore SIGALRM, SIGTERM or SIGPIPE.
pub fn reset_signals() -> nix::Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler of ours, so no code runs in signal
        // context; the process is single-threaded here.
        unsafe { sigaction(signal, &default) }?;
    }
    for signal in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        // SAFETY: as above, for the real-time signals nix's Signal does not list;
        // libc::signal with SIG_DFL installs no handler.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Disarms ITIMER_VIRTUAL and ITIMER_PROF, which survive exec. ITIMER_REAL is the
/// alarm, re-armed by the pipeline itself.
pub fn clear_interval_timers() -> nix::Result<()> {
    let never = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let zero = libc::itimerval {
        it_interval: never,
        it_value: never,
    };
    for which in [libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        // SAFETY: `zero` is a valid itimerval that outlives the call, and a null
        // old-value pointer is allowed.
        let rc = unsafe { libc::setitimer(which, &zero, std::ptr::null_mut()) };
        Errno::result(rc)?;
    }
    Ok(())
}

/// Takes ownership of the envelope channel, fd 3. Must run before the process
/// opens anything: a closed fd 3 would otherwise be reused by the next open.
pub fn take_envelope_fd() -> Option<OwnedFd> {
    const ENVELOPE_FD: RawFd = 3;
    if !fd_is_open(ENVELOPE_FD) {
        return None;
    }
    // SAFETY: fd 3 is open (checked above) and nothing in this process owns it: std
    // never touches it, this runs once, right after sanitizing and before any open.
    Some(unsafe { OwnedFd::from_raw_fd(ENVELOPE_FD) })
}

/// Gives `fd` a new number >= `min` (close-on-exec), closing the old one, so that
/// the fixed numbers below `min` are free for [`place_fd`].
pub fn renumber(fd: OwnedFd, min: RawFd) -> nix::Result<OwnedFd> {
    let new = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor nobody else owns; `fd` stays
    // owned by its OwnedFd and is closed when it drops at the end of this function.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Moves `fd` to the number `target` (without close-on-exec, so it survives exec)
/// and returns the owner of the new number. The caller guarantees that nothing owns
/// `target`: exec.rs first renumbers everything it holds above the fixed numbers.
pub fn place_fd(fd: OwnedFd, target: RawFd) -> std::io::Result<OwnedFd> {
    let raw = fd.into_raw_fd();
    assert_ne!(
        raw, target,
        "place_fd: renumber the fd above the fixed numbers first"
    );
    // SAFETY: `raw` is owned (from into_raw_fd) and closed here exactly once; dup2
    // makes `target` a copy without FD_CLOEXEC; `target` is owned by no Rust object
    // (the caller's precondition), so handing it to a new OwnedFd is its only owner.
    unsafe {
        let rc = libc::dup2(raw, target);
        let err = std::io::Error::last_os_error();
        libc::close(raw);
        if rc == -1 {
            return Err(err);
        }
        Ok(OwnedFd::from_raw_fd(target))
    }
}

extern "C" {
    /// glibc's override of one nsswitch.conf line for this process (<nss.h>).
    fn __nss_configure_lookup(
        dbname: *const libc::c_char,
        service_line: *const libc::c_char,
    ) -> libc::c_int;
}

/// Makes this process's lookups in `database` use `services` instead of the line in
/// nsswitch.conf. Must run before the first lookup in that database.
pub fn nss_configure_lookup(database: &CStr, services: &CStr) -> nix::Result<()> {
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; glibc
    // parses the line into its own storage and keeps neither pointer. The process is
    // single-threaded, so no lookup runs concurrently with the change.
    Errno::result(unsafe { __nss_configure_lookup(database.as_ptr(), services.as_ptr()) }).map(drop)
}

/// SIGXFSZ ignored (`SigIgn`) or back to its default action (`SigDfl`). While it
/// is ignored, a write past the file-size limit fails with EFBIG instead of ending
/// the process before it can say why.
pub fn file_size_signal(handler: SigHandler) -> nix::Result<()> {
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN and SIG_DFL install no handler of ours, so no code runs in
    // signal context; the process is single-threaded here.
    unsafe { sigaction(Signal::SIGXFSZ, &action) }.map(|_| ())
}
