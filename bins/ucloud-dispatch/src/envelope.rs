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
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use ucloud_wire::envelope::{Envelope, MAX_ENVELOPE};

/// How long a dispatcher waits for its envelope to begin. The gateway hands a spare
/// a request only while it is younger than half of this.
pub const FIRST_BYTE_WAIT_MS: u16 = 60_000;

/// `channel` is fd 3 as taken right after sanitizing (`None`: it was not open).
/// `Ok(None)`: fd 3 was closed before its first byte, so nothing was asked.
pub fn read(channel: Option<OwnedFd>) -> Result<Option<Envelope>, Error> {
    let fd = channel.ok_or_else(|| {
        Error::Usage(
            "fd 3 is not open: the envelope must come on fd 3 (see ucloud-dispatch(8))".into(),
        )
    })?;
    wait_for_first_byte(&fd)?;
    let mut bytes = Vec::new();
    // One byte over the cap tells "too large" from "exactly at the cap".
    File::from(fd)
        .take(MAX_ENVELOPE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::BadEnvelope(format!("cannot read the envelope from fd 3: {e}")))?;
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
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(FIRST_BYTE_WAIT_MS)) {
            Ok(0) => {
                return Err(Error::Usage(format!(
                    "no envelope began on fd 3 within {} s",
                    FIRST_BYTE_WAIT_MS / 1000
                )))
            }
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(Error::BadEnvelope(format!(
                    "cannot wait for the envelope on fd 3: {e}"
                )))
            }
        }
    }
    alarm::set(DECIDE_TIMEOUT_SECS);
    Ok(())
}
