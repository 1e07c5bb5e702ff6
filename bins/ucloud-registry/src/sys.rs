//! The byte lock: the one call that speaks libc's `flock` record.

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
