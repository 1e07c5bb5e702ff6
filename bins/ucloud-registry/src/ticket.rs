//! Connection tickets: the one-time proof that a person holds a UCloud session for a
//! UCloud user. The service account asks for one when UCloud calls
//! `integration/connect`; the person redeems it on the login node with
//! `ucloud-connect`, where the kernel vouches for the local account.
//!
//! A ticket is 32 bytes from the kernel's random source, base64url without padding
//! (43 characters). It lives in `tickets/<ticket>` (root 0600 in a root 0700
//! directory) for [`TTL_MS`]. Looking at it ([`Tickets::peek`]) changes nothing: the
//! person is shown which UCloud user it is for before anything is connected, and a
//! refusal because of the account that presented it (root, a system account) leaves
//! it for the right account. It is spent ([`Tickets::spend`]) when it connects.

use crate::error::Error;
use crate::store::{read_json, Lock};
use base64::Engine;
use serde_json::{json, Value};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use ucloud_wire::names::UcloudName;

/// How long a ticket can be redeemed: long enough to log in and paste a command.
pub const TTL_MS: u64 = 10 * 60 * 1000;
/// Random bytes in a ticket.
const TICKET_BYTES: usize = 32;
/// The length of a ticket's text: base64url of [`TICKET_BYTES`] without padding.
pub const TICKET_LEN: usize = (TICKET_BYTES * 4).div_ceil(3);
/// Outstanding tickets beyond this are refused: the service account is trusted, but
/// a loop in it must not fill the disk.
const MAX_OUTSTANDING: usize = 10_000;

/// The text of a ticket, checked to be one we could have made: 43 characters of
/// `A-Z a-z 0-9 - _`, so it is also a safe file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket(String);

/// A ticket that was in the store when it was taken out of it.
#[derive(Debug)]
pub struct Taken {
    pub ucloud: UcloudName,
    pub expires: u64,
}

impl Ticket {
    pub fn parse(text: &str) -> Result<Ticket, Error> {
        let ok = text.len() == TICKET_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::Refused(format!(
                "this is not a connection ticket (expected {TICKET_LEN} characters of A-Z a-z 0-9 - _): \
                 copy the whole command from the page UCloud opened, or press Connect in UCloud again"
            )));
        }
        Ok(Ticket(text.to_string()))
    }

    /// A new ticket from the kernel's random source. Never one that starts with `-`:
    /// pasted after `ucloud-connect` it would read as an option (costs < 0.03 bits).
    pub fn fresh() -> Result<Ticket, Error> {
        loop {
            let mut bytes = [0u8; TICKET_BYTES];
            ucloud_wire::random_bytes(&mut bytes)
                .map_err(Error::io("cannot read random bytes from /dev/urandom"))?;
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !text.starts_with('-') {
                return Ok(Ticket(text));
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub struct Tickets {
    dir: PathBuf,
}

impl Tickets {
    pub fn site() -> Tickets {
        Tickets {
            dir: Path::new(&ucloud_wire::paths::state_dir()).join("tickets"),
        }
    }

    #[cfg(test)]
    pub fn at(dir: &Path) -> Tickets {
        Tickets { dir: dir.into() }
    }

    pub fn prepare(&self) -> Result<(), Error> {
        crate::store::ensure_dir(&self.dir, 0o700, 0o077)
    }

    /// Stores a new ticket for `name`, valid until `now + TTL_MS`, after clearing the
    /// expired ones.
    pub fn mint(&self, _: &Lock, name: &UcloudName, now: u64) -> Result<Ticket, Error> {
        let outstanding = self.sweep(now)?;
        if outstanding >= MAX_OUTSTANDING {
            return Err(Error::Refused(format!(
                "{outstanding} connection tickets are outstanding; refusing more until they expire"
            )));
        }
        let ticket = Ticket::fresh()?;
        let path = self.dir.join(ticket.as_str());
        let value = json!({"ucloud": name.as_str(), "created": now, "expires": now + TTL_MS});
        let fail = Error::io(format!("cannot write the ticket file {}", path.display()));
        // create_new: 256 random bits never collide, and if they did we would not
        // overwrite another person's ticket.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(fail)?;
        let written = (|| {
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(format!("{value}\n").as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(Error::io(format!(
                "cannot write the ticket file {}",
                path.display()
            ))(e));
        }
        Ok(ticket)
    }

    /// What `ticket` is for, leaving it in the store. An expired ticket is deleted
    /// and returned, so that the caller can say why it is refused.
    pub fn peek(&self, _: &Lock, ticket: &Ticket) -> Result<Option<Taken>, Error> {
        let path = self.dir.join(ticket.as_str());
        let Some(value) = read_json(&path)? else {
            return Ok(None);
        };
        let taken =
            parse(&value).map_err(|why| Error::Config(format!("{}: {why}", path.display())))?;
        if taken.expires <= ucloud_wire::now_ms() {
            fs::remove_file(&path)
                .map_err(Error::io(format!("cannot remove {}", path.display())))?;
        }
        Ok(Some(taken))
    }

    /// Removes `ticket` from the store: it cannot be used again.
    pub fn spend(&self, _: &Lock, ticket: &Ticket) -> Result<(), Error> {
        let path = self.dir.join(ticket.as_str());
        fs::remove_file(&path).map_err(Error::io(format!("cannot remove {}", path.display())))
    }

    /// Deletes expired tickets and returns how many valid ones remain.
    fn sweep(&self, now: u64) -> Result<usize, Error> {
        let mut left = 0;
        let entries = fs::read_dir(&self.dir)
            .map_err(Error::io(format!("cannot list {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let expired = match read_json(&path) {
                Ok(Some(v)) => parse(&v).map_or(true, |t| t.expires <= now),
                Ok(None) => continue,
                Err(_) => true,
            };
            if expired {
                let _ = fs::remove_file(&path);
            } else {
                left += 1;
            }
        }
        Ok(left)
    }
}

fn parse(v: &Value) -> Result<Taken, String> {
    let name = v
        .get("ucloud")
        .and_then(Value::as_str)
        .ok_or("has no \"ucloud\"")?;
    let expires = v
        .get("expires")
        .and_then(Value::as_u64)
        .ok_or("has no \"expires\"")?;
    Ok(Taken {
        ucloud: UcloudName::new(name).map_err(|e| e.to_string())?,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_long_random_and_url_safe() {
        let a = Ticket::fresh().unwrap();
        let b = Ticket::fresh().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), TICKET_LEN);
        assert_eq!(Ticket::parse(a.as_str()).unwrap(), a);
        for _ in 0..500 {
            assert!(!Ticket::fresh().unwrap().as_str().starts_with('-'));
        }
    }

    #[test]
    fn altered_tickets_are_not_tickets() {
        let good = Ticket::fresh().unwrap();
        let long = format!("{}x", good.as_str());
        let short = &good.as_str()[1..];
        let slash = format!("/{}", &good.as_str()[1..]);
        let dots = format!("..{}", &good.as_str()[2..]);
        let space = format!("{} ", &good.as_str()[1..]);
        for bad in ["", long.as_str(), short, &slash, &dots, &space] {
            assert!(Ticket::parse(bad).is_err(), "{bad:?}");
        }
    }
}
