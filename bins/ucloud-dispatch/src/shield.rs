//! What keeps the caller from cutting an audit record short: while the log is
//! locked and written, the real uid is root's and no signal is delivered (audit.rs
//! says why each is needed).

use crate::sys;
use nix::sys::signal::{sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{setresuid, Uid};

/// The real uid is 0 while the lock is held. The kernel lets a process signal
/// another whose real or saved uid is its own: a setuid process's real uid is its
/// caller's, so the caller could kill it between two pages of the write (cutting
/// it short) or stop it holding the lock. The caller's uid comes back on drop.
pub struct RootRealUid(u32);

/// -1 to setresuid: this one stays as it is.
const KEEP: Uid = Uid::from_raw(u32::MAX);

impl RootRealUid {
    pub fn enter(caller_uid: u32) -> nix::Result<RootRealUid> {
        // The effective uid is 0: making the real one 0 needs no capability.
        setresuid(Uid::from_raw(0), KEEP, KEEP)?;
        Ok(RootRealUid(caller_uid))
    }
}

impl Drop for RootRealUid {
    fn drop(&mut self) {
        // If this fails the process keeps real uid 0 (it is refusing, or about to
        // drop every uid anyway): it only stays out of the caller's reach.
        let _ = setresuid(Uid::from_raw(self.0), KEEP, KEEP);
    }
}

/// Every signal blocked (the dispatcher's own alarm too: it is delivered after the
/// write) and SIGXFSZ ignored, for the length of the write. SIGXFSZ is ignored
/// rather than blocked: a blocked signal stays pending, and would end the process
/// after the write instead of during it.
pub struct Quiet(SigSet);

impl Quiet {
    pub fn enter() -> nix::Result<Quiet> {
        let mut all = SigSet::all();
        all.remove(Signal::SIGXFSZ);
        let mut old = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old))?;
        let quiet = Quiet(old);
        sys::file_size_signal(SigHandler::SigIgn)?;
        Ok(quiet)
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        let _ = sys::file_size_signal(SigHandler::SigDfl);
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}
