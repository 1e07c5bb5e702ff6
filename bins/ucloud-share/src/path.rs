//! Opening a directory named by an absolute path one component at a time from
//! `/`, with O_NOFOLLOW on each: a symlink anywhere on the way is refused rather
//! than followed, so a sharer cannot point the walk or the gate elsewhere by
//! swapping a component of her path for a link. Everything after the open uses
//! the descriptor, never the path again.

use crate::answer::Error;
use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::Mode;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The components of an absolute, normal path: no empty, `.` or `..` component,
/// no NUL, not `/` itself.
pub fn components(path: &Path) -> Result<Vec<&[u8]>, Error> {
    let bytes = path.as_os_str().as_bytes();
    let refuse = |why: &str| Error::Refused(format!("{}: {why}", path.display()));
    let rest = bytes
        .strip_prefix(b"/")
        .ok_or_else(|| refuse("not an absolute path"))?;
    if rest.is_empty() {
        return Err(refuse("the root directory"));
    }
    if bytes.contains(&0) {
        return Err(refuse("holds a NUL byte"));
    }
    let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
    if parts.iter().any(|p| matches!(*p, b"" | b"." | b"..")) {
        return Err(refuse("not a normal path (an empty, . or .. component)"));
    }
    Ok(parts)
}

/// Opens the directory `path`: every component but the last with O_PATH (search
/// permission is enough to pass), the last with `last` (O_PATH, or O_RDONLY when
/// its attributes are to be read and written).
pub fn open_dir(path: &Path, last: OFlag) -> Result<OwnedFd, Error> {
    let parts = components(path)?;
    let fixed = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = open("/", OFlag::O_PATH | fixed, Mode::empty()).map_err(|e| Error::sys("/", e))?;
    let mut so_far = std::path::PathBuf::from("/");
    for (i, name) in parts.iter().enumerate() {
        so_far.push(std::ffi::OsStr::from_bytes(name));
        let flags = if i + 1 == parts.len() {
            last
        } else {
            OFlag::O_PATH
        };
        fd = openat(&fd, *name, flags | fixed, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => Error::Refused(format!(
                "{}: a symlink or not a directory",
                so_far.display()
            )),
            e => Error::sys(so_far.display(), e),
        })?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_normal_absolute_paths_are_taken() {
        assert_eq!(
            components(Path::new("/home/alice/x")).unwrap(),
            [&b"home"[..], b"alice", b"x"]
        );
        for bad in [
            "",
            "/",
            "home/alice",
            "/home//alice",
            "/home/alice/",
            "/home/./alice",
            "/home/../etc",
            "/home/a\0b",
        ] {
            assert!(
                matches!(components(Path::new(bad)), Err(Error::Refused(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_symlink_anywhere_on_the_way_is_refused() {
        let dir = std::env::temp_dir().join(format!("ucloud-share-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real/inner")).unwrap();
        symlink(dir.join("real"), dir.join("link")).unwrap();
        std::fs::write(dir.join("file"), b"").unwrap();
        assert!(open_dir(&dir.join("real/inner"), OFlag::O_RDONLY).is_ok());
        for bad in ["link", "link/inner", "file"] {
            match open_dir(&dir.join(bad), OFlag::O_PATH) {
                Err(Error::Refused(why)) => assert!(why.contains("a symlink"), "{why}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match open_dir(&dir.join("link/inner"), OFlag::O_PATH) {
            Err(Error::Refused(why)) => assert!(
                why.ends_with("/link: a symlink or not a directory"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
