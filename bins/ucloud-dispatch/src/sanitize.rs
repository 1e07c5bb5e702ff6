//! Makes the process itself known-good before it reads anything: everything here
//! changes only the dispatcher's own state (no file written, nothing sent), so it
//! may run before the token is verified.

use crate::error::Error;
use crate::sys;
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{alarm, chdir, getpid, getsid, setsid};

/// Wall-clock limit for the dispatcher's own work before the plugin starts (the
/// wait for the envelope is bounded separately, envelope.rs).
pub const DECIDE_TIMEOUT_SECS: u32 = 30;

pub fn process() -> Result<(), Error> {
    // First: every refusal from here on is audited, and the caller's file-size limit
    // must not be the one that record is written under.
    limits()?;
    environment()?;
    descriptors()?;
    sys::reset_signals().map_err(|e| Error::Internal(format!("cannot reset signals: {e}")))?;
    // A caller's profiling timers would survive exec and could kill this root process
    // (and later the plugin) at a moment of the caller's choosing.
    sys::clear_interval_timers()
        .map_err(|e| Error::Internal(format!("cannot clear the interval timers: {e}")))?;
    // A root process must never be kept waiting forever: envelope.rs restarts the
    // alarm once the envelope begins, exec.rs re-arms it with the call's own limit.
    alarm::set(DECIDE_TIMEOUT_SECS);
    umask(Mode::from_bits_truncate(0o077));
    chdir("/").map_err(|e| Error::Internal(format!("cannot chdir to /: {e}")))?;
    session()
}

/// Nothing of the caller's environment is used or passed on: the plugin's is built
/// from nothing in exec.rs. Emptying ours also keeps libc's NSS and locale code
/// from reading anything the caller chose. The crypto library reads `OPENSSL_ia32cap`
/// (and its kin) when the program is loaded, before this runs: a caller who sets one
/// could steer its choice of CPU code paths, so such a run is refused.
fn environment() -> Result<(), Error> {
    let steered = std::env::vars_os().any(|(key, _)| {
        let key = key.to_string_lossy();
        key.starts_with("OPENSSL_") && key.ends_with("cap")
    });
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    if steered {
        return Err(Error::Usage(
            "an OPENSSL_*cap variable is set: it steers the crypto library before ucloud-dispatch starts; unset it".into(),
        ));
    }
    Ok(())
}

/// fds 0..=2 must be open (they become the plugin's), 3 is the envelope, and
/// nothing else may survive: a secret the caller opened must not reach the plugin.
fn descriptors() -> Result<(), Error> {
    for fd in 0..=2 {
        if !sys::fd_is_open(fd) {
            return Err(Error::Usage(format!(
                "fd {fd} is not open: ucloud-dispatch needs fds 0, 1 and 2 (they become the plugin's)"
            )));
        }
    }
    sys::close_from(4).map_err(|e| Error::Internal(format!("cannot close inherited fds: {e}")))
}

/// A new session drops the controlling terminal, so a plugin cannot push input
/// into the caller's terminal (TIOCSTI).
fn session() -> Result<(), Error> {
    match setsid() {
        Ok(_) => Ok(()),
        // Already a session leader: it has a session of its own to keep.
        Err(_) if getsid(None).ok() == Some(getpid()) => Ok(()),
        Err(e) => Err(Error::Usage(format!(
            "cannot start a new session ({e}): do not run ucloud-dispatch as a process group leader"
        ))),
    }
}

/// No core dumps of a root process. The file-size limit is lifted altogether when
/// the kernel lets it (as sudo does for its own work: CAP_SYS_RESOURCE, which a
/// bounding set may lack), so that no limit of the caller's can cut or stop an audit
/// record; every other soft limit is raised to its hard one (the plugin inherits
/// them). A hard file-size limit that stays finite is refused: it would cut the
/// plugin's writes short. Its refusal is still recorded whole or not at all
/// (audit.rs), under soft = hard.
fn limits() -> Result<(), Error> {
    let set = |resource, soft, hard| {
        setrlimit(resource, soft, hard)
            .map_err(|e| Error::Internal(format!("cannot set {resource:?}: {e}")))
    };
    set(Resource::RLIMIT_CORE, 0, 0)?;
    // EPERM without CAP_SYS_RESOURCE: the loop below then raises the soft one.
    let _ = setrlimit(Resource::RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY);
    for resource in [
        Resource::RLIMIT_FSIZE,
        Resource::RLIMIT_NOFILE,
        Resource::RLIMIT_CPU,
        Resource::RLIMIT_AS,
        Resource::RLIMIT_DATA,
        Resource::RLIMIT_STACK,
        Resource::RLIMIT_NPROC,
        Resource::RLIMIT_MEMLOCK,
        Resource::RLIMIT_SIGPENDING,
    ] {
        let (_, hard) = getrlimit(resource)
            .map_err(|e| Error::Internal(format!("cannot read {resource:?}: {e}")))?;
        set(resource, hard, hard)?;
    }
    let (_, fsize) = getrlimit(Resource::RLIMIT_FSIZE)
        .map_err(|e| Error::Internal(format!("cannot read RLIMIT_FSIZE: {e}")))?;
    if fsize != RLIM_INFINITY {
        return Err(Error::Usage(format!(
            "the hard file-size limit is {fsize} bytes and cannot be raised (no CAP_SYS_RESOURCE): ucloud-dispatch needs it unlimited (ulimit -H -f unlimited)"
        )));
    }
    Ok(())
}
