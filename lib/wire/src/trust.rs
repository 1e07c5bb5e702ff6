//! The one way a program opens a file it trusts (sudo-rs's `secure_open`,
//! OpenSSH's chroot checks): by descriptor, never following a symlink, and judged on
//! the open descriptor (type and owner), so what is checked is what is read. A
//! path is walked from `/` one component at a time, every directory on the way
//! root-owned and writable by root alone.

use crate::install::{self, FileKind};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

/// What a file is for, which says how it is opened and whom it must belong to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A directory, as an `O_PATH` handle for `openat`.
    Dir,
    /// Read: root-owned, writable by root alone (configuration, mappings, plugins).
    Read,
    /// Read: root's alone, mode 0600 or less (the transfer key).
    Secret,
    /// Opened with the caller's flags for writing (made 0600 if they create), root's
    /// alone: the audit log, a limit count. The flags come from the caller so that
    /// this module, used before the credential is verified, holds no way to write.
    Write(OFlag),
}

/// Why a trusted open failed, for the caller to turn into its own error.
#[derive(Debug)]
pub enum Untrusted {
    Missing(String),
    Symlink(String),
    Unsafe(String),
}

impl Untrusted {
    /// The message for a walk to `path`, naming `path` when the failing part is
    /// a directory on the way.
    pub fn about(&self, path: &str) -> String {
        let why = self.to_string();
        match why.starts_with(path) {
            true => why,
            false => format!("{path}: {why}"),
        }
    }
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::Missing(path) => write!(f, "{path} does not exist"),
            Untrusted::Symlink(path) => write!(f, "{path} is a symlink"),
            Untrusted::Unsafe(why) => f.write_str(why),
        }
    }
}

/// Opens `name` in the trusted directory `dir` (whose path is `dir_path`, for the
/// messages) for `how`.
pub fn open_at(
    dir: &impl AsFd,
    dir_path: &str,
    name: &str,
    how: Use,
) -> Result<(OwnedFd, FileStat), Untrusted> {
    let path = format!("{dir_path}/{name}");
    // O_NONBLOCK: a FIFO planted here must not hang the open.
    let base = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let (flags, mode) = match how {
        Use::Dir => (base | OFlag::O_PATH, 0),
        Use::Read | Use::Secret => (base | OFlag::O_RDONLY | OFlag::O_NONBLOCK, 0),
        Use::Write(flags) => (base | OFlag::O_NONBLOCK | flags, 0o600),
    };
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(mode)).map_err(|e| match e {
        Errno::ENOENT => Untrusted::Missing(path.clone()),
        Errno::ELOOP => Untrusted::Symlink(path.clone()),
        e => Untrusted::Unsafe(format!("cannot open {path}: {e}")),
    })?;
    let stat = judge(&fd, &path, how)?;
    Ok((fd, stat))
}

/// The type and owner `how` asks of the open `fd`.
pub fn judge(fd: &impl AsFd, path: &str, how: Use) -> Result<FileStat, Untrusted> {
    let stat = fstat(fd).map_err(|e| Untrusted::Unsafe(format!("{path}: {e}")))?;
    let want = match how {
        Use::Dir => FileKind::Dir,
        _ => FileKind::File,
    };
    install::check_kind(path, FileKind::from_mode(stat.st_mode), want)
        .map_err(Untrusted::Unsafe)?;
    let secret = matches!(how, Use::Secret | Use::Write(_));
    if secret && (stat.st_uid != 0 || stat.st_mode & 0o077 != 0) {
        return Err(Untrusted::Unsafe(format!(
            "{path} must be owned by root with mode 0600 (it is uid {}, mode {:04o})",
            stat.st_uid,
            stat.st_mode & 0o7777
        )));
    }
    install::check_owner(path, stat.st_uid, stat.st_mode).map_err(Untrusted::Unsafe)?;
    Ok(stat)
}

/// Opens an absolute path for `how`, walking from `/` without following a symlink
/// anywhere and judging every directory on the way, each time: for a program that
/// runs long, where a directory may change between opens.
pub fn open(path: &str, how: Use) -> Result<OwnedFd, Untrusted> {
    walk(path, how, false)
}

/// [`open`] for a program that runs once per request (the dispatcher): the
/// directories on the way are judged once per run and kept until [`forget_judged`].
pub fn open_kept(path: &str, how: Use) -> Result<OwnedFd, Untrusted> {
    walk(path, how, true)
}

thread_local! {
    /// The directories this run has judged, by path (`/` as ""): a walk passes
    /// through them without opening and judging them again. Each is root's and
    /// writable by root alone, so only root could change it meanwhile, as with the
    /// mapping and plugin directories, which are held from before the request comes.
    static JUDGED: RefCell<BTreeMap<String, Rc<OwnedFd>>> = const { RefCell::new(BTreeMap::new()) };
}

fn walk(path: &str, how: Use, keep: bool) -> Result<OwnedFd, Untrusted> {
    let parts = install::components(path).map_err(Untrusted::Unsafe)?;
    let (last, dirs) = (parts.split_last()).ok_or(Untrusted::Unsafe("/ is not a file".into()))?;
    let mut current = judged(keep, "", || {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open("/", flags, Mode::empty())
            .map_err(|e| Untrusted::Unsafe(format!("cannot open /: {e}")))?;
        judge(&root, "/", Use::Dir).map(|_| root)
    })?;
    let mut walked = String::new();
    for part in dirs {
        let parent = walked.clone();
        walked = format!("{parent}/{part}");
        current = judged(keep, &walked, || {
            Ok(open_at(&*current, &parent, part, Use::Dir)?.0)
        })?;
    }
    // The last part is opened and judged for `how` on every walk.
    Ok(open_at(&*current, &walked, last, how)?.0)
}

/// Closes the directories the walks kept (before the plugin's fds are placed).
pub fn forget_judged() {
    JUDGED.with_borrow_mut(BTreeMap::clear);
}

/// The directory `walked`, opened and judged by `open`; when `keep`, only the first
/// time in this run.
fn judged(
    keep: bool,
    walked: &str,
    open: impl FnOnce() -> Result<OwnedFd, Untrusted>,
) -> Result<Rc<OwnedFd>, Untrusted> {
    if !keep {
        return Ok(Rc::new(open()?));
    }
    if let Some(dir) = JUDGED.with_borrow(|judged| judged.get(walked).cloned()) {
        return Ok(dir);
    }
    let dir = Rc::new(open()?);
    JUDGED.with_borrow_mut(|judged| judged.insert(walked.to_string(), Rc::clone(&dir)));
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_below_judged_directories_still_judges_what_it_opens() {
        assert!(open_kept("/proc/cpuinfo", Use::Read).is_ok());
        assert!(JUDGED.with_borrow(|judged| judged.contains_key("/proc")));
        // Only directories on the way are kept; the last part is judged each time.
        let e = open_kept("/proc/self/status", Use::Read).unwrap_err();
        assert!(e.to_string().contains("/proc/self is a symlink"), "{e}");
        assert!(open_kept("/proc/cpuinfo", Use::Dir).is_err());
        assert!(open_kept("/etc/passwd", Use::Read).is_ok());
        assert!(open_kept("/etc/passwd", Use::Secret).is_err());
        assert!(open_kept("/etc/passwd", Use::Dir).is_err());
        assert!(!JUDGED.with_borrow(|judged| judged.contains_key("/etc/passwd")));
        assert!(open_kept("/tmp", Use::Dir).is_err());
        assert!(open_kept("/", Use::Read).is_err());
        // Closed before the plugin's fixed fds are placed, where one could sit.
        forget_judged();
        assert!(JUDGED.with_borrow(BTreeMap::is_empty));
    }

    #[test]
    fn a_walk_that_keeps_nothing_keeps_nothing() {
        assert!(open("/usr/bin", Use::Dir).is_ok());
        assert!(JUDGED.with_borrow(BTreeMap::is_empty));
        let e = open("/tmp", Use::Dir).unwrap_err();
        assert!(e.about("/tmp").contains("chmod go-w"), "{e}");
        let missing = open("/no-such-dir/x", Use::Read).unwrap_err();
        assert!(matches!(&missing, Untrusted::Missing(p) if p == "/no-such-dir"));
        assert_eq!(
            missing.about("/no-such-dir/x"),
            "/no-such-dir/x: /no-such-dir does not exist"
        );
    }

    #[test]
    fn files_below_a_directory_are_judged_on_the_descriptor() {
        let etc = open("/etc", Use::Dir).unwrap();
        assert!(open_at(&etc, "/etc", "passwd", Use::Read).is_ok());
        assert!(matches!(
            open_at(&etc, "/etc", "no-such-file", Use::Read),
            Err(Untrusted::Missing(p)) if p == "/etc/no-such-file"
        ));
        assert!(matches!(
            open_at(&etc, "/etc", "passwd", Use::Dir),
            Err(Untrusted::Unsafe(_))
        ));
        assert!(matches!(
            open_at(&etc, "/etc", "ssl", Use::Read),
            Err(Untrusted::Unsafe(_))
        ));
    }
}
