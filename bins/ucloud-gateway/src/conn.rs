//! The client connection: a readable and a writable descriptor (the same socket,
//! or inetd's fd 0 and fd 1), with read deadlines enforced by `poll` so they hold
//! on sockets and pipes alike, and a send timeout on sockets so a client that
//! stops reading cannot pin the process forever.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::stat::{fstat, SFlag};
use nix::sys::time::TimeVal;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// The reading half; `deadline` bounds every read until it is changed.
pub struct ClientIn {
    file: File,
    pub deadline: Option<Instant>,
}

/// The writing half.
pub struct ClientOut {
    file: File,
}

pub fn split(
    read: OwnedFd,
    write: Option<OwnedFd>,
    send_timeout: Duration,
) -> io::Result<(ClientIn, ClientOut)> {
    let write = match write {
        Some(w) => w,
        None => read.try_clone()?,
    };
    for fd in [&read, &write] {
        if is_socket(fd) {
            let tv = TimeVal::new(send_timeout.as_secs() as _, 0);
            setsockopt(fd, sockopt::SendTimeout, &tv).map_err(io::Error::from)?;
        }
    }
    Ok((
        ClientIn {
            file: File::from(read),
            deadline: None,
        },
        ClientOut {
            file: File::from(write),
        },
    ))
}

fn is_socket(fd: &OwnedFd) -> bool {
    fstat(fd).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFSOCK
    })
}

impl ClientIn {
    /// Waits until the client sends something or `timeout` passes; `Ok(false)` on timeout.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        wait(&self.file, timeout)
    }
}

fn wait(file: &File, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => return Ok(false),
            // Readable, hang-up or error: the read will tell which.
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Read for ClientIn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait(&self.file, left)? {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow"));
            }
        }
        self.file.read(buf)
    }
}

impl Write for ClientOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
