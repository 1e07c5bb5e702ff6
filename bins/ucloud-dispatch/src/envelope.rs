//! Reads the one envelope from fd 3, to EOF, at most MAX_ENVELOPE bytes. The
//! dispatcher reads nothing else from its caller: fd 0 belongs to the plugin.

use crate::error::Error;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use ucloud_wire::envelope::{Envelope, MAX_ENVELOPE};

/// `channel` is fd 3 as taken right after sanitizing (`None`: it was not open).
pub fn read(channel: Option<OwnedFd>) -> Result<Envelope, Error> {
    let fd = channel.ok_or_else(|| {
        Error::Usage(
            "fd 3 is not open: the envelope must come on fd 3 (see ucloud-dispatch(8))".into(),
        )
    })?;
    let mut bytes = Vec::new();
    // One byte over the cap tells "too large" from "exactly at the cap".
    File::from(fd)
        .take(MAX_ENVELOPE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::BadEnvelope(format!("cannot read the envelope from fd 3: {e}")))?;
    // The File (and fd 3) is closed here: the request memfd takes its number later.
    Envelope::decode(&bytes).map_err(|e| Error::BadEnvelope(e.to_string()))
}
