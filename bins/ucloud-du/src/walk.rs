//! The walk of one drive: the allocated bytes (`st_blocks` × 512, as `du` counts
//! them) of every entry below the drive's base, on the base's filesystem only.
//!
//! A drive is its user's to shape, so the tree is hostile: symlinks are never
//! followed (`lstat` semantics everywhere, `O_NOFOLLOW` on every open), mount
//! points are never crossed (an entry on another device is neither counted nor
//! entered), an entry that vanishes between the directory listing and its `lstat`
//! is simply gone, a hard-linked file counts once, and three limits bound the
//! work: entries, wall-clock time and depth. Whenever one is hit, or a directory
//! cannot be read, the result says so: its total is then only a lower bound.
//!
//! One open descriptor per level of the current path, a directory's subdirectory
//! names while they wait, and the hard-link set: the memory is bounded by the entry
//! limit, the descriptors by the depth limit.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Entries (files, directories, links... the base included) counted at most.
    pub files: u64,
    /// Wall-clock time for the whole drive.
    pub time: Duration,
    /// Levels below the base entered at most.
    pub depth: usize,
}

/// Why a total is only a lower bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncated {
    Files,
    Time,
    Depth,
    /// A directory could not be listed (without CAP_DAC_READ_SEARCH, or an I/O error).
    Unreadable,
}

impl Truncated {
    pub fn as_str(self) -> &'static str {
        match self {
            Truncated::Files => "file limit",
            Truncated::Time => "time limit",
            Truncated::Depth => "depth limit",
            Truncated::Unreadable => "unreadable directory",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Allocated bytes of everything counted.
    pub bytes: u64,
    /// Entries counted, the base included.
    pub entries: u64,
    /// Entries listed but gone before they could be looked at.
    pub vanished: u64,
    /// Directories that could not be listed.
    pub unreadable: u64,
    /// Entries on another filesystem (mount points), neither counted nor entered.
    pub other_fs: u64,
    /// The first limit hit, if any: then `bytes` is a lower bound.
    pub truncated: Option<Truncated>,
    pub elapsed: Duration,
}

/// Why the base itself could not be measured (nothing is reported for it).
#[derive(Debug)]
pub struct BaseError(pub String);

const BLOCK: u64 = 512;
/// How many entries between two looks at the clock (a power of two).
const CLOCK_EVERY: u64 = 256;

struct Level {
    fd: OwnedFd,
    /// Subdirectories of this level not yet entered.
    pending: Vec<CString>,
}

struct Walker {
    limits: Limits,
    started: Instant,
    dev: u64,
    links: HashSet<(u64, u64)>,
    walk: Walk,
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

impl Walker {
    fn stop(&mut self, why: Truncated) {
        self.walk.truncated.get_or_insert(why);
    }

    fn stopped(&self) -> bool {
        matches!(
            self.walk.truncated,
            Some(Truncated::Files | Truncated::Time)
        )
    }

    /// Counts one entry; false once a limit says to stop.
    fn count(&mut self, st: &FileStat) -> bool {
        if self.walk.entries >= self.limits.files {
            self.stop(Truncated::Files);
            return false;
        }
        self.walk.entries += 1;
        if self.walk.entries & (CLOCK_EVERY - 1) == 0 && self.started.elapsed() > self.limits.time {
            self.stop(Truncated::Time);
            return false;
        }
        // A file with several names is one file: count it at its first name.
        if !is_dir(st) && st.st_nlink > 1 && !self.links.insert((st.st_dev, st.st_ino)) {
            return true;
        }
        self.walk.bytes = self
            .walk
            .bytes
            .saturating_add((st.st_blocks.max(0) as u64).saturating_mul(BLOCK));
        true
    }

    /// Lists the directory `fd`, counts each entry and returns the names of its
    /// subdirectories on this filesystem.
    fn list(&mut self, fd: &OwnedFd) -> Vec<CString> {
        let mut subdirs = Vec::new();
        // The listing gets its own descriptor: `fd` stays free for the *at calls.
        let mut dir = match fd
            .try_clone()
            .map_err(|_| Errno::EMFILE)
            .and_then(Dir::from_fd)
        {
            Ok(dir) => dir,
            Err(_) => {
                self.walk.unreadable += 1;
                self.stop(Truncated::Unreadable);
                return subdirs;
            }
        };
        for entry in dir.iter() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(_) => {
                    self.walk.unreadable += 1;
                    self.stop(Truncated::Unreadable);
                    break;
                }
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            #[cfg(test)]
            tests::hook(name);
            let st = match fstatat(fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => {
                    self.walk.vanished += 1;
                    continue;
                }
                Err(_) => {
                    self.walk.unreadable += 1;
                    self.stop(Truncated::Unreadable);
                    continue;
                }
            };
            if st.st_dev != self.dev {
                self.walk.other_fs += 1;
                continue;
            }
            if !self.count(&st) {
                break;
            }
            if is_dir(&st) {
                subdirs.push(name.to_owned());
            }
        }
        subdirs
    }

    /// Opens the subdirectory `name` of `parent`: None when it is gone, no longer
    /// a directory (a symlink put in its place), or on another filesystem by now.
    fn enter(&mut self, parent: &OwnedFd, name: &CString) -> Option<OwnedFd> {
        match openat(parent, name.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => match fstat(&fd) {
                Ok(st) if st.st_dev == self.dev && is_dir(&st) => Some(fd),
                _ => {
                    self.walk.vanished += 1;
                    None
                }
            },
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                self.walk.vanished += 1;
                None
            }
            Err(_) => {
                self.walk.unreadable += 1;
                self.stop(Truncated::Unreadable);
                None
            }
        }
    }
}

/// Measures the tree at `base`, which must be a directory and not a symlink.
pub fn walk(base: &Path, limits: Limits) -> Result<Walk, BaseError> {
    let started = Instant::now();
    let c = CString::new(base.as_os_str().as_bytes())
        .map_err(|_| BaseError(format!("{} holds a NUL byte", base.display())))?;
    let fd = openat(AT_FDCWD, c.as_c_str(), dir_flags(), Mode::empty()).map_err(|e| {
        BaseError(format!(
            "cannot open {} as a directory without following a symlink: {}",
            base.display(),
            e.desc()
        ))
    })?;
    let st = fstat(&fd).map_err(|e| BaseError(format!("{}: {}", base.display(), e.desc())))?;
    let mut w = Walker {
        limits,
        started,
        dev: st.st_dev,
        links: HashSet::new(),
        walk: Walk::default(),
    };
    w.count(&st);
    let pending = w.list(&fd);
    let mut levels = vec![Level { fd, pending }];
    while !w.stopped() {
        let Some(top) = levels.last_mut() else { break };
        let Some(name) = top.pending.pop() else {
            levels.pop();
            continue;
        };
        if levels.len() > w.limits.depth {
            // Counted, not entered: what lies below is not.
            w.stop(Truncated::Depth);
            continue;
        }
        let parent = &levels.last().expect("just looked at").fd;
        let Some(fd) = w.enter(parent, &name) else {
            continue;
        };
        let pending = w.list(&fd);
        levels.push(Level { fd, pending });
    }
    if w.started.elapsed() > w.limits.time {
        w.stop(Truncated::Time);
    }
    w.walk.elapsed = w.started.elapsed();
    Ok(w.walk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;
    use std::process::Command;

    type Hook = Box<dyn FnMut(&std::ffi::CStr)>;

    thread_local! {
        /// Called with each entry's name between the listing and its lstat.
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    pub(super) fn hook(name: &std::ffi::CStr) {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(name)
            }
        });
    }

    const WIDE: Limits = Limits {
        files: 1_000_000,
        time: Duration::from_secs(60),
        depth: 1000,
    };

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ucloud-du-{test}-{}", std::process::id()));
        if dir.exists() {
            let _ = Command::new("chmod")
                .args(["-R", "u+rwx"])
                .arg(&dir)
                .status();
        }
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `du`'s answer: allocated bytes, this filesystem, hard links once.
    fn du(path: &Path) -> u64 {
        let out = Command::new("du")
            .args(["-sx", "--block-size=1"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn write(path: &Path, bytes: usize) {
        fs::write(path, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn counts_what_du_counts() {
        let dir = scratch("du");
        fs::create_dir_all(dir.join("a/b/c")).unwrap();
        write(&dir.join("a/one"), 100_000);
        write(&dir.join("a/b/c/two"), 5000);
        write(&dir.join("empty"), 0);
        fs::hard_link(dir.join("a/one"), dir.join("a/b/same")).unwrap();
        // Sparse: 1 GiB long, nothing allocated.
        let f = fs::File::create(dir.join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        symlink("a/one", dir.join("link")).unwrap();
        let w = walk(&dir, WIDE).unwrap();
        assert_eq!(w.truncated, None);
        assert_eq!(w.bytes, du(&dir));
        assert_eq!(w.entries, 10, "{w:?}");
        assert!(
            w.bytes < 1 << 20,
            "a sparse file costs what it allocates: {w:?}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlink_loops_fifos_and_links_out_are_not_followed() {
        let dir = scratch("loop");
        fs::create_dir(dir.join("d")).unwrap();
        symlink("..", dir.join("d/up")).unwrap();
        symlink(&dir, dir.join("d/self")).unwrap();
        symlink("/", dir.join("root")).unwrap();
        symlink("loop", dir.join("loop")).unwrap();
        let fifo = dir.join("fifo");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // A socket-like special file too: nothing here may be opened or waited on.
        assert!(Command::new("mknod")
            .args([dir.join("null").to_str().unwrap(), "c", "1", "3"])
            .status()
            .unwrap()
            .success());
        let w = walk(&dir, WIDE).unwrap();
        assert_eq!(w.truncated, None);
        assert_eq!(w.entries, 8, "{w:?}");
        assert_eq!(w.bytes, du(&dir));
        // The base itself may not be a symlink either.
        let err = walk(&dir.join("root"), WIDE).unwrap_err();
        assert!(err.0.contains("without following a symlink"), "{}", err.0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unreadable_directory_makes_a_lower_bound_that_says_so() {
        let dir = scratch("unreadable");
        fs::create_dir_all(dir.join("closed/inner")).unwrap();
        write(&dir.join("closed/inner/data"), 50_000);
        write(&dir.join("open"), 1000);
        fs::set_permissions(dir.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
        // What a walker without CAP_DAC_READ_SEARCH sees: capabilities are per thread,
        // so this test thread drops its own and no other.
        let full = walk(&dir, WIDE).unwrap();
        assert_eq!(full.truncated, None, "with the capability: {full:?}");
        let thread_dir = dir.clone();
        let partial = std::thread::spawn(move || {
            for cap in [
                caps::Capability::CAP_DAC_OVERRIDE,
                caps::Capability::CAP_DAC_READ_SEARCH,
            ] {
                caps::drop(None, caps::CapSet::Effective, cap).unwrap();
            }
            walk(&thread_dir, WIDE).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(
            partial.truncated,
            Some(Truncated::Unreadable),
            "{partial:?}"
        );
        assert_eq!(partial.unreadable, 1);
        assert!(partial.bytes < full.bytes, "{partial:?} {full:?}");
        fs::set_permissions(dir.join("closed"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn entries_that_vanish_or_turn_into_links_mid_walk_are_gone_not_errors() {
        let dir = scratch("vanish");
        fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        write(&dir.join("sub/deeper/x"), 10_000);
        write(&dir.join("gone"), 10_000);
        write(&dir.join("kept"), 10_000);
        let d = dir.clone();
        HOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |name: &std::ffi::CStr| {
                match name.to_bytes() {
                    // Listed, then removed before its lstat.
                    b"gone" => fs::remove_file(d.join("gone")).unwrap(),
                    // Listed as a directory, then swapped for a symlink to / before it is entered.
                    b"kept" => {
                        fs::rename(d.join("sub"), d.join("moved")).unwrap();
                        symlink("/", d.join("sub")).unwrap();
                    }
                    _ => {}
                }
            }))
        });
        let w = walk(&dir, WIDE).unwrap();
        HOOK.with(|h| *h.borrow_mut() = None);
        assert_eq!(w.truncated, None, "{w:?}");
        assert!(w.vanished >= 1, "{w:?}");
        // Never more than what was there, never anything from /.
        assert!(w.bytes <= du(&dir) + 100_000, "{w:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn limits_truncate_and_say_which() {
        let dir = scratch("limits");
        let mut deep = dir.join("deep");
        for _ in 0..50 {
            deep = deep.join("d");
        }
        fs::create_dir_all(&deep).unwrap();
        write(&deep.join("bottom"), 100_000);
        for i in 0..300 {
            write(&dir.join(format!("f{i}")), 10);
        }
        let full = walk(&dir, WIDE).unwrap();
        assert_eq!(full.truncated, None);

        let files = walk(&dir, Limits { files: 100, ..WIDE }).unwrap();
        assert_eq!(files.truncated, Some(Truncated::Files));
        assert_eq!(files.entries, 100);
        assert!(files.bytes < full.bytes);

        let depth = walk(&dir, Limits { depth: 10, ..WIDE }).unwrap();
        assert_eq!(depth.truncated, Some(Truncated::Depth));
        assert!(
            depth.bytes < full.bytes,
            "the bottom file is below the limit"
        );

        let time = walk(
            &dir,
            Limits {
                time: Duration::ZERO,
                ..WIDE
            },
        )
        .unwrap();
        assert_eq!(time.truncated, Some(Truncated::Time));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_deep_tree_costs_one_descriptor_per_level_not_a_crash() {
        let dir = scratch("deepest");
        // Deeper than PATH_MAX allows as one path: made one level at a time.
        let mut fd = openat(AT_FDCWD, &dir, dir_flags(), Mode::empty()).unwrap();
        for _ in 0..3000 {
            nix::sys::stat::mkdirat(&fd, "dddddddd", Mode::from_bits_truncate(0o755)).unwrap();
            fd = openat(&fd, "dddddddd", dir_flags(), Mode::empty()).unwrap();
        }
        drop(fd);
        let w = walk(&dir, Limits { depth: 500, ..WIDE }).unwrap();
        assert_eq!(w.truncated, Some(Truncated::Depth));
        assert_eq!(w.entries, 502, "{w:?}");
        // rm -rf copes with any depth.
        assert!(Command::new("rm")
            .arg("-rf")
            .arg(&dir)
            .status()
            .unwrap()
            .success());
    }
}
