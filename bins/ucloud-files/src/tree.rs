//! Opening a directory below a drive's base and reading it, without ever following a
//! symbolic link below the base: each component is opened with `openat` and
//! `O_NOFOLLOW` relative to the one before, so a link planted in the user's tree (or
//! swapped in during the walk) cannot lead out of it. A link is listed as a link,
//! never entered. The plugin runs as the user, so the kernel's permission checks
//! are the user's own.

use crate::error::Error;
use nix::dir::Dir;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use std::os::fd::{AsFd, OwnedFd};

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// Opens `base/components...` as a directory. `shown(i)` is the UCloud path of the
/// first `i` components, for messages.
pub fn open_below(
    base: &str,
    components: &[&str],
    shown: impl Fn(usize) -> String,
) -> Result<OwnedFd, Error> {
    let mut fd = open(base, dir_flags(), Mode::empty()).map_err(|e| match e {
        nix::errno::Errno::ENOENT => Error::NotFound(format!(
            "the home directory behind {} does not exist on this provider",
            shown(0)
        )),
        e => Error::from_errno(e, &shown(0)),
    })?;
    for (i, name) in components.iter().enumerate() {
        fd = match openat(&fd, *name, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            // O_NOFOLLOW with O_DIRECTORY reports a link as ENOTDIR: say which it is.
            Err(nix::errno::Errno::ENOTDIR) if is_link(&fd, name) => {
                return Err(Error::from_errno(nix::errno::Errno::ELOOP, &shown(i + 1)))
            }
            Err(e) => return Err(Error::from_errno(e, &shown(i + 1))),
        };
    }
    Ok(fd)
}

fn is_link(dir: &OwnedFd, name: &str) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| Kind::of(&st) == Kind::Link)
}

/// The names in a directory, `.` and `..` left out. Names that are not UTF-8 cannot
/// be written as UCloud paths (JSON strings) and are left out too.
pub struct Listing {
    pub dir: Dir,
    pub names: Vec<String>,
}

pub fn list(fd: OwnedFd, shown: &str) -> Result<Listing, Error> {
    let mut dir = Dir::from_fd(fd).map_err(|e| Error::from_errno(e, shown))?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| Error::from_errno(e, shown))?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if let Ok(name) = std::str::from_utf8(bytes) {
            names.push(name.to_owned());
        }
    }
    Ok(Listing { dir, names })
}

/// `lstat` of one entry, relative to its directory. `None` when it vanished since
/// the directory was read.
pub fn stat(dir: &impl AsFd, name: &str, shown: &str) -> Result<Option<FileStat>, Error> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::from_errno(e, shown)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Link,
}

impl Kind {
    pub fn of(st: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Directory,
            SFlag::S_IFLNK => Kind::Link,
            // Devices, sockets and pipes are shown as files; reading them is the
            // business of later calls, which check again.
            _ => Kind::File,
        }
    }

    /// UCloud's `FileType`.
    pub fn ucloud(self) -> &'static str {
        match self {
            Kind::File => "FILE",
            Kind::Directory => "DIRECTORY",
            Kind::Link => "SOFT_LINK",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_below_the_base_are_never_followed() {
        let base = std::env::temp_dir().join(format!(
            "files-tree-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        std::fs::create_dir_all(base.join("real/sub")).unwrap();
        std::fs::write(base.join("real/file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("out")).unwrap();
        std::os::unix::fs::symlink("real", base.join("in")).unwrap();
        let base_s = base.to_str().unwrap();
        let shown = |i: usize| format!("/17 ({i})");
        assert!(open_below(base_s, &["real", "sub"], shown).is_ok());
        for (path, want) in [
            (vec!["out"], "symbolic link"),
            (vec!["in", "sub"], "symbolic link"),
            (vec!["real", "file"], "not a directory"),
            (vec!["nope"], "does not exist"),
        ] {
            let err = open_below(base_s, &path, shown).unwrap_err();
            assert!(err.to_string().contains(want), "{path:?}: {err}");
        }
        let listing = list(open_below(base_s, &[], shown).unwrap(), "/17").unwrap();
        let mut names = listing.names.clone();
        names.sort();
        assert_eq!(names, ["in", "out", "real"]);
        let st = stat(&listing.dir, "out", "/17/out").unwrap().unwrap();
        assert_eq!(Kind::of(&st), Kind::Link);
        std::fs::remove_dir_all(base).unwrap();
    }
}
