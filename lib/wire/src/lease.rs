//! A lease with a fencing token: which host's process may act as one of the
//! singletons (the sender, the monitor, the storage usage reporter) when several
//! hosts share the state directory.
//!
//! Every role has a directory, `<state>/leases/<role>/`. A holder's token is a file
//! there named by a strictly increasing number, 20 digits, zero-padded
//! (`00000000000000000007`), so that names sort as numbers. The file says who holds
//! it and when it was last renewed (`key=value` lines, [`Record`]).
//!
//! - Acquiring: when the highest token is stale (its renewal is older than the TTL
//!   plus the site's clock-skew allowance, it was released, or its holder was a
//!   process of this host that no longer runs) or there is none, the next number is
//!   made with `link(2)` of a fully written temporary file: atomic and exclusive on a
//!   local disk and on NFS (where `O_EXCL` is only atomic from v3 and a lost reply of
//!   a `link` is told from a loss by the link count). `EEXIST`: another won.
//! - Renewing: the holder rewrites its own token file (temporary file and `rename`)
//!   every third of the TTL.
//! - Believing: a holder acts only until its last successful renewal plus the TTL
//!   minus the skew allowance (by the monotonic clock and by the wall clock), and
//!   never once it sees a higher token: [`Lease::check`], called where the work is
//!   done, is the fencing check.
//!
//! No `flock`, no inotify: both behave differently on NFS than on a local disk. The
//! steps that decide are the server's own atomic operations (`link`, `rename`,
//! `mkdir`); what a holder believes between them is bounded by time.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Token files below the holder's own number minus this are removed by the holder.
/// A host whose view of the directory lags this many takeovers behind could reuse
/// a removed number; keeping this many makes that no real case.
pub const KEEP: u64 = 16;
/// The largest lease file read; a larger one is refused.
pub const MAX_RECORD: u64 = 4096;
/// Digits of a token file's name.
pub const TOKEN_DIGITS: usize = 20;
/// The first line of every lease file.
const MAGIC: &str = "ucloud-im lease 1";
/// A holder's temporary files older than this are someone's leftovers.
const TMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// A fencing token: the number of a lease file. Higher is newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

impl Token {
    /// The token's file name (and the name of anything fenced by it).
    pub fn name(self) -> String {
        format!("{:0width$}", self.0, width = TOKEN_DIGITS)
    }

    /// A token from a file name: exactly [`TOKEN_DIGITS`] ASCII digits.
    pub fn parse(name: &str) -> Option<Token> {
        (name.len() == TOKEN_DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
            .then(|| name.parse().ok().map(Token))
            .flatten()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How long a lease lasts and how far apart the hosts' clocks may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// A renewal is good for this long (site.conf `lease_seconds`).
    pub ttl: Duration,
    /// The most the hosts' wall clocks may differ (site.conf `clock_skew_seconds`).
    pub skew: Duration,
}

impl Timing {
    pub const DEFAULT: Timing = Timing {
        ttl: Duration::from_secs(10),
        skew: Duration::from_secs(2),
    };

    /// Refuses a skew of half the TTL or more: the holder would believe its lease
    /// for less than the renewal interval.
    pub fn new(ttl: Duration, skew: Duration) -> Result<Timing, LeaseError> {
        if ttl.is_zero() || skew * 2 >= ttl {
            return Err(LeaseError::Timing(format!(
                "the clock skew allowance ({skew:?}) must be less than half the lease time ({ttl:?})"
            )));
        }
        Ok(Timing { ttl, skew })
    }

    /// How often the holder renews and a standby tries to acquire.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How long after its last renewal the holder stops believing it holds.
    pub fn believed(&self) -> Duration {
        self.ttl.saturating_sub(self.skew)
    }

    /// How long after a holder's last renewal another may take over.
    pub fn stale_after(&self) -> Duration {
        self.ttl + self.skew
    }

    /// The longest a dead holder keeps the role unserved: its last renewal ages
    /// past the TTL and the skew allowance, then a standby's next try comes.
    pub fn takeover_bound(&self) -> Duration {
        self.stale_after() + self.renew_every()
    }
}

/// Who holds (or wants) a lease: a host name and a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
}

impl Holder {
    /// This process on this host (the kernel's node name).
    pub fn this_process() -> Result<Holder, LeaseError> {
        let host = nix::unistd::gethostname()
            .map_err(|e| LeaseError::Setup(format!("cannot read the host name: {e}")))?;
        let host = host.to_string_lossy().into_owned();
        if !is_host(&host) {
            return Err(LeaseError::Setup(format!(
                "the host name {host:?} is not printable text without spaces"
            )));
        }
        Ok(Holder {
            host,
            pid: std::process::id(),
        })
    }
}

fn is_host(host: &str) -> bool {
    (1..=255).contains(&host.len()) && host.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

/// What a lease file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub role: String,
    pub token: Token,
    pub holder: Holder,
    /// Wall-clock milliseconds since the epoch, by the holder's clock.
    pub acquired_ms: u64,
    pub renewed_ms: u64,
    /// The TTL the holder works with, in milliseconds.
    pub ttl_ms: u64,
    /// Given up by its holder: another may take over at once.
    pub released: bool,
}

impl Record {
    /// The file's text: `key=value` lines after a first line naming the format.
    pub fn to_text(&self) -> String {
        format!(
            "{MAGIC}\nrole={}\ntoken={}\nhost={}\npid={}\nacquired_ms={}\nrenewed_ms={}\nttl_ms={}\nreleased={}\n",
            self.role,
            self.token.name(),
            self.holder.host,
            self.holder.pid,
            self.acquired_ms,
            self.renewed_ms,
            self.ttl_ms,
            u8::from(self.released)
        )
    }

    /// Reads a lease file's text; anything but the exact format is refused.
    pub fn parse(text: &[u8]) -> Result<Record, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("does not start with {MAGIC:?}"));
        }
        let mut fields = std::collections::BTreeMap::new();
        for line in lines {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:.40?} is not key=value"))?;
            if fields.insert(key, value).is_some() {
                return Err(format!("{key} is given twice"));
            }
        }
        let get = |key: &str| fields.get(key).copied().ok_or_else(|| format!("no {key}"));
        let number = |key: &str| -> Result<u64, String> {
            let v = get(key)?;
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{key} is not a whole number"));
            }
            v.parse().map_err(|_| format!("{key} is out of range"))
        };
        let role = get("role")?;
        if !is_role(role) {
            return Err("role is not a role name".into());
        }
        let host = get("host")?;
        if !is_host(host) {
            return Err("host is not a host name".into());
        }
        let pid = u32::try_from(number("pid")?).map_err(|_| "pid is out of range")?;
        let token = Token::parse(get("token")?).ok_or("token is not 20 digits")?;
        let released = match get("released")? {
            "0" => false,
            "1" => true,
            _ => return Err("released is neither 0 nor 1".into()),
        };
        Ok(Record {
            role: role.to_string(),
            token,
            holder: Holder {
                host: host.to_string(),
                pid,
            },
            acquired_ms: number("acquired_ms")?,
            renewed_ms: number("renewed_ms")?,
            ttl_ms: number("ttl_ms")?,
            released,
        })
    }
}

/// Role names are directory names: `[a-z0-9-]`, 1 to 32.
pub fn is_role(role: &str) -> bool {
    (1..=32).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !role.starts_with('-')
}

/// Why the lease could not be worked with at all.
#[derive(Debug)]
pub enum LeaseError {
    /// The lease directory is missing, not ours, or open to others.
    Setup(String),
    /// A file system operation failed.
    Io(String),
    /// Bad lease_seconds or clock_skew_seconds.
    Timing(String),
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::Setup(why) | LeaseError::Io(why) | LeaseError::Timing(why) => {
                f.write_str(why)
            }
        }
    }
}

impl std::error::Error for LeaseError {}

/// Why a holder must not act (now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseLost {
    /// This process does not hold the lease.
    NotHeld,
    /// The last renewal is too old to be believed (the process or host paused, or
    /// renewals failed).
    Expired(Token),
    /// Another holder took over with a higher token.
    Superseded { mine: Token, by: Token },
    /// The lease directory could not be read: believing it held is not safe.
    Unreadable(Token, String),
}

impl fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseLost::NotHeld => f.write_str("this process does not hold the lease"),
            LeaseLost::Expired(t) => write!(
                f,
                "token {t}: its last renewal is too old to be believed (paused, or renewals failed)"
            ),
            LeaseLost::Superseded { mine, by } => {
                write!(f, "token {mine}: another holder took over with token {by}")
            }
            LeaseLost::Unreadable(t, why) => write!(f, "token {t}: {why}"),
        }
    }
}

impl std::error::Error for LeaseLost {}

/// What the highest token says: who may be holding the role now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Highest {
    None,
    /// A holder that renewed in time.
    Live(Record),
    /// A token another may supersede: stale, released, or its process gone; the
    /// text says which.
    Stale(Token, String),
}

#[derive(Clone, Copy, Debug)]
struct Held {
    token: Token,
    acquired_ms: u64,
    /// The monotonic and wall-clock times taken just before the last renewal was
    /// written (earlier than the stamp others read, so never later than theirs).
    renewed_at: Instant,
    renewed_ms: u64,
}

/// One role's lease as one process sees it.
#[derive(Debug)]
pub struct Lease {
    dir: PathBuf,
    role: String,
    holder: Holder,
    timing: Timing,
    held: Option<Held>,
}

fn io_error(what: &str, path: &Path, e: io::Error) -> LeaseError {
    LeaseError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// The number the wall clock reads, in milliseconds.
fn wall_ms() -> u64 {
    crate::now_ms()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    /// The lease of `role` under `leases` (`paths::leases_dir()`): its directory
    /// must exist, be a directory of this process's user and be writable by no one
    /// else.
    pub fn open(
        leases: &Path,
        role: &str,
        holder: Holder,
        timing: Timing,
    ) -> Result<Lease, LeaseError> {
        if !is_role(role) {
            return Err(LeaseError::Setup(format!("{role:?} is not a role name")));
        }
        let dir = leases.join(role);
        let meta = fs::symlink_metadata(&dir).map_err(|e| {
            LeaseError::Setup(format!(
                "the lease directory {} cannot be used: {e} (make it with the package's tmpfiles.d, owned by the {role}'s account, mode 0755)",
                dir.display()
            ))
        })?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.file_type().is_dir() {
            return Err(LeaseError::Setup(format!(
                "{} is not a directory (a link is not taken)",
                dir.display()
            )));
        }
        if meta.uid() != me {
            return Err(LeaseError::Setup(format!(
                "{} is owned by uid {}, not by this process's uid {me}",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(LeaseError::Setup(format!(
                "{} is writable by group or others (mode {:04o}): chmod 0755",
                dir.display(),
                meta.mode() & 0o7777
            )));
        }
        if !is_host(&holder.host) {
            return Err(LeaseError::Setup(format!(
                "{:?} is not a host name",
                holder.host
            )));
        }
        Ok(Lease {
            dir,
            role: role.to_string(),
            holder,
            timing,
            held: None,
        })
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The token this process believes it holds (without checking again).
    pub fn token(&self) -> Option<Token> {
        self.held.map(|h| h.token)
    }

    /// Every token file's number, ascending; other names are not tokens and are
    /// passed over.
    pub fn tokens(&self) -> Result<Vec<Token>, LeaseError> {
        tokens_in(&self.dir)
    }

    /// What the highest token says about the role now.
    pub fn highest(&self) -> Result<Highest, LeaseError> {
        let tokens = self.tokens()?;
        let Some(&top) = tokens.last() else {
            return Ok(Highest::None);
        };
        Ok(self.judge(top))
    }

    fn judge(&self, token: Token) -> Highest {
        let record = match read_record(&self.dir, token) {
            Ok(r) => r,
            // A file of the wrong owner, a link, junk: no holder this file can
            // vouch for. Superseding it is safe, since its number is fenced too.
            Err(why) => return Highest::Stale(token, why),
        };
        if record.token != token || record.role != self.role {
            return Highest::Stale(
                token,
                format!(
                    "the file names token {} of role {:?}, not its own",
                    record.token, record.role
                ),
            );
        }
        if record.released {
            return Highest::Stale(token, format!("released by {}", who(&record.holder)));
        }
        let now = wall_ms();
        // A holder working with a longer TTL than ours is given its own.
        let ttl = record.ttl_ms.clamp(millis(self.timing.ttl), 3_600_000);
        let stale_after = ttl + millis(self.timing.skew);
        let age = now.saturating_sub(record.renewed_ms);
        if age > stale_after {
            return Highest::Stale(
                token,
                format!("{} last renewed it {} ms ago", who(&record.holder), age),
            );
        }
        if record.renewed_ms > now.saturating_add(stale_after) {
            // Either a hostile file or clocks far apart: say so loudly. Taking over
            // is safe (the old token is fenced), waiting could be for ever.
            return Highest::Stale(
                token,
                format!(
                    "{} renewed it {} ms in this host's future: the hosts' clocks differ by more than clock_skew_seconds",
                    who(&record.holder),
                    record.renewed_ms - now
                ),
            );
        }
        if record.holder.host == self.holder.host
            && record.holder.pid != self.holder.pid
            && !process_runs(record.holder.pid)
        {
            return Highest::Stale(token, format!("{} no longer runs", who(&record.holder)));
        }
        Highest::Live(record)
    }

    /// Takes the lease when no one holds it. `Ok(Some)`: this process holds it now
    /// (or held it already and still may believe so); `Ok(None)`: someone else does.
    pub fn try_acquire(&mut self) -> Result<Option<Token>, LeaseError> {
        self.try_acquire_with(|_| Ok(true))
    }

    /// As [`Lease::try_acquire`], with `prepare(n)` run before token `n` is made:
    /// work that must be in place before any other host can learn of `n` (the
    /// sender makes the claim directory of `n` exclusively there). `Ok(false)`
    /// from it: another process is taking `n`, give up this round.
    pub fn try_acquire_with(
        &mut self,
        prepare: impl FnOnce(Token) -> io::Result<bool>,
    ) -> Result<Option<Token>, LeaseError> {
        if self.held.is_some() {
            match self.check() {
                Ok(t) => return Ok(Some(t)),
                Err(_) => self.held = None,
            }
        }
        let tokens = self.tokens()?;
        let next = match tokens.last() {
            None => Token(1),
            Some(&top) => {
                if let Highest::Live(_) = self.judge(top) {
                    return Ok(None);
                }
                Token(top.0.checked_add(1).ok_or_else(|| {
                    LeaseError::Setup(format!(
                        "{} holds the highest token there can be: remove the token files by hand",
                        self.dir.display()
                    ))
                })?)
            }
        };
        match prepare(next) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                return Err(LeaseError::Io(format!(
                    "cannot prepare token {next} of the {} lease: {e}",
                    self.role
                )))
            }
        }
        let started = Instant::now();
        let stamp = wall_ms();
        let record = Record {
            role: self.role.clone(),
            token: next,
            holder: self.holder.clone(),
            acquired_ms: stamp,
            renewed_ms: stamp,
            ttl_ms: millis(self.timing.ttl),
            released: false,
        };
        let tmp = self.write_tmp(&record)?;
        let target = self.dir.join(next.name());
        let won = match fs::hard_link(&tmp, &target) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // NFS: a retransmitted LINK whose first reply was lost answers
                // EEXIST although it was ours. The link count tells.
                same_file(&tmp, &target)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io_error("make the token file", &target, e));
            }
        };
        let _ = fs::remove_file(&tmp);
        if !won {
            return Ok(None);
        }
        sync_dir(&self.dir)?;
        // A view of the directory that lagged behind could have let an old number
        // through: only a token that is the highest counts.
        if self.tokens()?.last().is_some_and(|&top| top > next) {
            return Ok(None);
        }
        self.held = Some(Held {
            token: next,
            acquired_ms: stamp,
            renewed_at: started,
            renewed_ms: stamp,
        });
        self.prune(next);
        Ok(Some(next))
    }

    /// The fencing check, before every piece of work: `Ok(token)` while this
    /// process may act. On any loss it forgets the lease.
    pub fn check(&mut self) -> Result<Token, LeaseLost> {
        let held = self.held.ok_or(LeaseLost::NotHeld)?;
        let believed = self.timing.believed();
        // The monotonic clock misses a suspended host's sleep; the wall clock
        // catches it (and a wall clock set back is caught by the monotonic one).
        if held.renewed_at.elapsed() >= believed
            || wall_ms().saturating_sub(held.renewed_ms) >= millis(believed)
        {
            self.held = None;
            return Err(LeaseLost::Expired(held.token));
        }
        match self.tokens() {
            Ok(tokens) => match tokens.last() {
                Some(&top) if top > held.token => {
                    self.held = None;
                    Err(LeaseLost::Superseded {
                        mine: held.token,
                        by: top,
                    })
                }
                _ => Ok(held.token),
            },
            Err(e) => Err(LeaseLost::Unreadable(held.token, e.to_string())),
        }
    }

    /// Renews the lease (call every [`Timing::renew_every`]). A failed write keeps
    /// the lease until its renewal deadline passes, so one slow moment of a file
    /// server loses nothing.
    pub fn renew(&mut self) -> Result<Token, LeaseLost> {
        let token = self.check()?;
        let Some(held) = self.held else {
            return Err(LeaseLost::NotHeld);
        };
        let started = Instant::now();
        let stamp = wall_ms();
        let record = Record {
            role: self.role.clone(),
            token,
            holder: self.holder.clone(),
            acquired_ms: held.acquired_ms,
            renewed_ms: stamp,
            ttl_ms: millis(self.timing.ttl),
            released: false,
        };
        if let Err(e) = self.replace_own(&record) {
            return Err(LeaseLost::Unreadable(token, e.to_string()));
        }
        // Renewed while a successor took over: the successor stands.
        self.check()?;
        if let Some(h) = self.held.as_mut() {
            h.renewed_at = started;
            h.renewed_ms = stamp;
        }
        Ok(token)
    }

    /// Gives the lease up at once, so another may take over without waiting the
    /// TTL out: the token file says `released=1` (it is never removed, so its
    /// number is never made again).
    pub fn release(&mut self) {
        let Ok(token) = self.check() else {
            return;
        };
        let Some(held) = self.held.take() else {
            return;
        };
        let record = Record {
            role: self.role.clone(),
            token,
            holder: self.holder.clone(),
            acquired_ms: held.acquired_ms,
            renewed_ms: wall_ms(),
            ttl_ms: millis(self.timing.ttl),
            released: true,
        };
        let _ = self.replace_own(&record);
    }

    fn write_tmp(&self, record: &Record) -> Result<PathBuf, LeaseError> {
        let tmp = self.dir.join(format!(
            ".{}.{}.{}.tmp",
            record.token.name(),
            self.holder.host,
            self.holder.pid
        ));
        let _ = fs::remove_file(&tmp);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| io_error("write", &tmp, e))?;
        file.write_all(record.to_text().as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_error("write", &tmp, e)
            })?;
        Ok(tmp)
    }

    fn replace_own(&self, record: &Record) -> Result<(), LeaseError> {
        let tmp = self.write_tmp(record)?;
        let target = self.dir.join(record.token.name());
        fs::rename(&tmp, &target).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error("renew", &target, e)
        })?;
        sync_dir(&self.dir)
    }

    /// Removes token files far below `mine` and leftover temporary files; a
    /// failure here costs nothing but room.
    fn prune(&self, mine: Token) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if let Some(t) = Token::parse(name) {
                if t.0.saturating_add(KEEP) < mine.0 {
                    let _ = fs::remove_file(&path);
                }
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                let old = fs::symlink_metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > TMP_MAX_AGE);
                if old {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }
}

fn who(holder: &Holder) -> String {
    format!("{} pid {}", holder.host, holder.pid)
}

/// Whether process `pid` of this host runs (a process of another account counts).
fn process_runs(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino() && a.nlink() == 2,
        _ => false,
    }
}

fn sync_dir(dir: &Path) -> Result<(), LeaseError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

/// Every token file's number in `dir`, ascending.
pub fn tokens_in(dir: &Path) -> Result<Vec<Token>, LeaseError> {
    let mut tokens = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        if let Some(t) = entry.file_name().to_str().and_then(Token::parse) {
            tokens.push(t);
        }
    }
    tokens.sort();
    Ok(tokens)
}

/// Reads token `token`'s file in `dir`: a regular file (no link) of this process's
/// user, at most [`MAX_RECORD`] bytes, in the format of [`Record`].
pub fn read_record(dir: &Path, token: Token) -> Result<Record, String> {
    let path = dir.join(token.name());
    let mut file = File::options()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(&path)
        .map_err(|e| format!("{} cannot be opened: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not {me}: not a holder's file",
            path.display(),
            meta.uid()
        ));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_RECORD + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_RECORD {
        return Err(format!(
            "{} is larger than {MAX_RECORD} bytes",
            path.display()
        ));
    }
    Record::parse(&bytes).map_err(|why| format!("{}: {why}", path.display()))
}

/// A lease kept by a thread of its own: it renews while held, tries to acquire
/// every renewal interval while not, and says so in the log (`<program>: holding
/// the <role> lease (token N)`, `<program>: lost the <role> lease (…)`). The
/// workers ask [`Keeper::check`] before each piece of work.
#[derive(Clone)]
pub struct Keeper {
    shared: Arc<Shared>,
}

type Prepare = Box<dyn FnMut(Token) -> io::Result<bool> + Send>;

struct Shared {
    lease: Mutex<Lease>,
    prepare: Mutex<Prepare>,
    stop: AtomicBool,
    program: String,
}

impl Keeper {
    /// Starts the keeping thread; `prepare` is as in [`Lease::try_acquire_with`].
    /// The first try at acquiring is made before this returns.
    pub fn spawn(
        lease: Lease,
        program: &str,
        prepare: Option<Prepare>,
    ) -> Result<Keeper, LeaseError> {
        let keeper = Keeper {
            shared: Arc::new(Shared {
                lease: Mutex::new(lease),
                prepare: Mutex::new(prepare.unwrap_or_else(|| Box::new(|_| Ok(true)))),
                stop: AtomicBool::new(false),
                program: program.to_string(),
            }),
        };
        let mut last_note = String::new();
        keeper.tend(&mut last_note);
        let tender = keeper.clone();
        std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                let every = tender.timing().renew_every();
                let stop = &tender.shared.stop;
                while !stop.load(Ordering::SeqCst) {
                    sleep_unless(stop, every);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    tender.tend(&mut last_note);
                }
            })
            .map_err(|e| LeaseError::Setup(format!("cannot start the lease's thread: {e}")))?;
        Ok(keeper)
    }

    fn lock(&self) -> MutexGuard<'_, Lease> {
        // A panic elsewhere leaves the lease as it was: still usable.
        self.shared.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One renewal or one try at acquiring; logs changes. `last_note` keeps the
    /// last standby or error line, so a standby logs each new holder once.
    fn tend(&self, last_note: &mut String) {
        let program = &self.shared.program;
        let mut lease = self.lock();
        let role = lease.role.clone();
        if let Some(token) = lease.token() {
            match lease.renew() {
                Ok(_) => return,
                Err(LeaseLost::Unreadable(t, why)) if lease.token().is_some() => {
                    crate::log_warn!("{program}: cannot renew the {role} lease (token {t}): {why}");
                    return;
                }
                Err(lost) => {
                    crate::log_err!("{program}: lost the {role} lease (token {token}): {lost}");
                    last_note.clear();
                }
            }
        }
        let mut prepare = self
            .shared
            .prepare
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match lease.try_acquire_with(&mut *prepare) {
            Ok(Some(token)) => {
                crate::log_info!("{program}: holding the {role} lease (token {token})");
                last_note.clear();
            }
            Ok(None) => {
                let note = match lease.highest() {
                    Ok(Highest::Live(r)) => format!(
                        "{program}: standby: {} holds the {role} lease (token {})",
                        who(&r.holder),
                        r.token
                    ),
                    _ => format!("{program}: standby: another process is taking the {role} lease"),
                };
                if note != *last_note {
                    crate::log_info!("{note}");
                    *last_note = note;
                }
            }
            Err(e) => {
                let note = format!("{program}: cannot take the {role} lease: {e}");
                if note != *last_note {
                    crate::log_err!("{note}");
                    *last_note = note;
                }
            }
        }
    }

    /// The fencing check: `Ok(token)` while this process may act.
    pub fn check(&self) -> Result<Token, LeaseLost> {
        self.lock().check()
    }

    /// The token held, without checking again.
    pub fn token(&self) -> Option<Token> {
        self.lock().token()
    }

    pub fn timing(&self) -> Timing {
        self.lock().timing
    }

    /// Waits until this process holds the lease, or `timeout` passes.
    pub fn wait_held(&self, timeout: Duration) -> Option<Token> {
        let until = Instant::now() + timeout;
        let tick = (self.timing().renew_every() / 4).max(Duration::from_millis(10));
        loop {
            if let Ok(t) = self.check() {
                return Some(t);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shared.stop.load(Ordering::SeqCst) {
                return None;
            }
            std::thread::sleep(tick.min(left));
        }
    }

    /// Stops the keeping thread and gives the lease up (another may take over at
    /// once).
    pub fn release(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.lock().release();
    }

    /// Stops renewing without giving the lease up: what a host that hangs does
    /// (for tests).
    pub fn stop_renewing(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests;
