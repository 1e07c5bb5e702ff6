//! Reads the one envelope from fd 3, to EOF, at most MAX_ENVELOPE bytes. The
//! dispatcher reads nothing else from its caller: fd 0 belongs to the plugin.
//!
//! The gateway may start a dispatcher before its request exists (a spare, see
//! ucloud-gateway(8)): the wait for the envelope's first byte is therefore not
//! bounded by the alarm of sanitize.rs, which restarts once the caller has spoken,
//! but by FIRST_BYTE_WAIT. fd 3 closed without a byte is no request at all.

use crate::error::Error;
use crate::sanitize::DECIDE_TIMEOUT_SECS;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::alarm;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};
use ucloud_wire::envelope::{Envelope, MAX_ENVELOPE};

/// How long a dispatcher waits for its envelope to begin. The gateway lets a spare
/// go long before (ucloud-gateway(8): at 30 s of age, or about 160 s at the most
/// when a request's head and body are slow).
pub const FIRST_BYTE_WAIT: Duration = Duration::from_secs(300);

/// `channel` is fd 3 as taken right after sanitizing (`None`: it was not open).
/// `Ok(None)`: fd 3 was closed before its first byte, so nothing was asked.
pub fn read(channel: Option<OwnedFd>) -> Result<Option<Envelope>, Error> {
    let fd = channel.ok_or_else(|| {
        Error::Usage(
            "fd 3 is not open: the envelope must come on fd 3 (see ucloud-dispatch(8))".into(),
        )
    })?;
    wait_for_first_byte(&fd)?;
    let bytes = ucloud_wire::read_capped(File::from(fd), MAX_ENVELOPE as u64)
        .map_err(|e| Error::BadEnvelope(format!("the envelope on fd 3 {e}")))?;
    // The File (and fd 3) is closed here: the request memfd takes its number later.
    if bytes.is_empty() {
        return Ok(None);
    }
    Envelope::decode(&bytes)
        .map(Some)
        .map_err(|e| Error::BadEnvelope(e.to_string()))
}

/// Waits until fd 3 is readable (data or EOF), with the alarm paused meanwhile.
fn wait_for_first_byte(fd: &OwnedFd) -> Result<(), Error> {
    alarm::cancel();
    let began = readable_within(fd, FIRST_BYTE_WAIT)
        .map_err(|e| Error::BadEnvelope(format!("cannot wait for the envelope on fd 3: {e}")))?;
    if !began {
        let wait = FIRST_BYTE_WAIT.as_secs();
        return Err(Error::Usage(format!(
            "no envelope began on fd 3 within {wait} s"
        )));
    }
    alarm::set(DECIDE_TIMEOUT_SECS);
    Ok(())
}

/// Whether `fd` turns readable (data or EOF) within `limit`.
fn readable_within(fd: &OwnedFd, limit: Duration) -> Result<bool, Errno> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn readable_when_data_or_eof_arrives_and_not_before() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let quiet = Instant::now();
        assert_eq!(
            readable_within(&read, Duration::from_millis(150)),
            Ok(false)
        );
        assert!(
            quiet.elapsed() >= Duration::from_millis(100),
            "{:?}",
            quiet.elapsed()
        );
        let mut write = File::from(write);
        write.write_all(b"{").unwrap();
        assert_eq!(readable_within(&read, Duration::from_secs(5)), Ok(true));
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(write);
        assert_eq!(readable_within(&read, Duration::from_secs(5)), Ok(true));
    }
}
