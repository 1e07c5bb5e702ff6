//! The operations that need `unsafe`: making the pseudo-terminal the shell's
//! controlling terminal, and setting its size.

use nix::libc;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The child starts a session of its own, with the pseudo-terminal on its stdin as
/// its controlling terminal: the shell's job control works, and closing the
/// terminal hangs up the whole session.
pub fn on_own_terminal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, ioctl); it touches no memory of the
    // parent's that another thread could hold locked.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets the terminal's size; the kernel then signals the session's foreground
/// (SIGWINCH), and srun passes the new size on to the remote side.
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> std::io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at a
    // live local for the whole call; `master` is an open descriptor we own.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
