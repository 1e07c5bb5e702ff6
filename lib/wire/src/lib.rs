//! Contracts shared by the programs of ucloud-im: where files live, the site
//! configuration, the envelope the gateway hands the dispatcher, validated names,
//! the UCloud token checks and UCloud's error body, the rules a trusted file of the
//! installation follows, how a record goes into the audit log, the services'
//! log lines, and how munge(1) and unmunge(1) are run for the Slurm events that
//! cross hosts.
//!
//! The dispatcher links this crate, so it stays small and free of I/O beyond
//! reading a file the caller names and appending to the audit log it opened (and
//! the services' log lines, which the
//! dispatcher does not write: its stderr is its answer to the gateway).
#![forbid(unsafe_code)]

pub mod account;
pub mod answer;
pub mod apm;
pub mod audit;
pub mod binding;
pub mod calls;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod error;
pub mod inbox;
pub mod install;
pub mod lease;
pub mod limit;
pub mod log;
pub mod munge;
pub mod names;
pub mod outbox;
pub mod paths;
pub mod products;
pub mod record;
pub mod sshkeys;
pub mod token;
pub mod transfer;
pub mod trust;
pub mod usage;

/// Milliseconds since the epoch, UCloud's timestamp unit.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Fills `bytes` from the kernel's random source (transfer-token ids, connection
/// tickets, Slurm output delimiters).
pub fn random_bytes(bytes: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(bytes)
}

/// `n` random bytes as `2n` lowercase hex digits.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    random_bytes(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why [`read_capped`] failed; it reads after a name ("site.conf is larger than…").
#[derive(Debug)]
pub enum Capped {
    Io(std::io::Error),
    TooLarge(u64),
}

impl std::fmt::Display for Capped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capped::Io(e) => write!(f, "cannot be read: {e}"),
            Capped::TooLarge(cap) => write!(f, "is larger than {cap} bytes"),
        }
    }
}

/// All of `reader`, when it holds at most `cap` bytes. Reading stops one byte past
/// the cap (which tells "too large" from "exactly at the cap"), so an input larger
/// than it costs no more memory than that.
pub fn read_capped(reader: impl std::io::Read, cap: u64) -> Result<Vec<u8>, Capped> {
    use std::io::Read;
    let mut bytes = Vec::new();
    (reader.take(cap + 1).read_to_end(&mut bytes)).map_err(Capped::Io)?;
    match bytes.len() as u64 > cap {
        true => Err(Capped::TooLarge(cap)),
        false => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capped_takes_up_to_the_cap_and_refuses_one_byte_more() {
        assert_eq!(read_capped(&b"four"[..], 4).unwrap(), b"four");
        assert_eq!(read_capped(&b""[..], 0).unwrap(), b"");
        let refused = read_capped(&b"fives"[..], 4).unwrap_err();
        assert!(matches!(refused, Capped::TooLarge(4)));
        assert_eq!(refused.to_string(), "is larger than 4 bytes");
        // An endless input costs cap + 1 bytes, not all of it.
        assert!(matches!(
            read_capped(std::io::repeat(b'x'), 1 << 20),
            Err(Capped::TooLarge(_))
        ));
    }

    #[test]
    fn random_hex_is_fresh_and_hex() {
        let (a, b) = (random_hex(16).unwrap(), random_hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
