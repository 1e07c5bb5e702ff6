//! The one place the registry needs `unsafe`: taking the connection systemd passes
//! as fd 3 (`LISTEN_FDS`). Everything else goes through safe wrappers; the byte
//! lock is here only because it speaks libc's `flock` record.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first fd of the `LISTEN_FDS` protocol.
const LISTEN_FDS_START: i32 = 3;

static TAKEN: AtomicBool = AtomicBool::new(false);

/// The fd systemd passed when `LISTEN_PID` is this process and `LISTEN_FDS` is 1;
/// `None` otherwise. Hands the fd out once; the variables are removed so that no
/// child process believes the fd is its own.
pub fn listen_fd() -> Option<OwnedFd> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let one = std::env::var("LISTEN_FDS").ok().as_deref() == Some("1");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if !ours || !one {
        return None;
    }
    // Asked through /proc rather than the fd itself: an fd number may only be
    // wrapped once it is known to be open.
    let target = std::fs::read_link(format!("/proc/self/fd/{LISTEN_FDS_START}")).ok()?;
    if !target.to_string_lossy().starts_with("socket:") || TAKEN.swap(true, Ordering::SeqCst) {
        return None;
    }
    // SAFETY: systemd's socket activation protocol gives this process fd 3 when
    // LISTEN_PID is our pid and LISTEN_FDS is 1, both checked above; /proc just
    // showed fd 3 is an open socket; TAKEN makes sure only one OwnedFd ever owns it,
    // and nothing else in this program opens or closes fd 3 by number.
    Some(unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) })
}

/// Takes a write lock on byte `offset` of `file` without waiting: `Ok(false)` when
/// another open file description holds it. Open-file-description locks (not POSIX
/// record locks), so two opens in one process conflict too and a lock lives
/// exactly as long as the descriptor.
pub fn lock_byte(file: &std::fs::File, offset: i64) -> nix::Result<bool> {
    use nix::fcntl::{fcntl, FcntlArg};
    use nix::libc;
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: offset,
        l_len: 1,
        l_pid: 0,
    };
    match fcntl(file, FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_byte_is_held_by_one_open_at_a_time_and_freed_with_it() {
        let path = std::env::temp_dir().join(format!("registry-lock-{}", std::process::id()));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let (a, b) = (open(), open());
        assert!(super::lock_byte(&a, 7).unwrap());
        assert!(!super::lock_byte(&b, 7).unwrap());
        assert!(super::lock_byte(&b, 8).unwrap());
        drop(a);
        assert!(super::lock_byte(&b, 7).unwrap());
        let _ = std::fs::remove_file(&path);
    }
}
