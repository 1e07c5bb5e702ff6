//! Contracts shared by the programs of ucloud-im: where files live, the site
//! configuration, the envelope the gateway hands the dispatcher, validated names,
//! the UCloud token checks and UCloud's error body, the rules a trusted file of the
//! installation follows, how a record goes into the audit log, and the services'
//! log lines.
//!
//! The dispatcher links this crate, so it stays small and free of I/O beyond
//! reading a file the caller names and appending to the audit log it opened (and
//! the services' log lines, which the
//! dispatcher does not write: its stderr is its answer to the gateway).
#![forbid(unsafe_code)]

pub mod account;
pub mod answer;
pub mod audit;
pub mod binding;
pub mod calls;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod error;
pub mod install;
pub mod limit;
pub mod log;
pub mod names;
pub mod outbox;
pub mod paths;
pub mod products;
pub mod record;
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
