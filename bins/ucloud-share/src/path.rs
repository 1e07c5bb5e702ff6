//! Opening a directory named by an absolute path one component at a time from
//! `/`, with O_NOFOLLOW on each: a symlink anywhere on the way is refused rather
//! than followed, so a sharer cannot point the walk or the gate elsewhere by
//! swapping a component of her path for a link. Everything after the open uses
//! the descriptor, never the path again.
//!
//! Root, opening a sharer's path (`open_dir_as_root`), must also not ask a
//! filesystem the sharer serves herself anything: a FUSE daemon of hers (or an
//! SMB server, which mount.cifs lets a user mount where it is installed setuid)
//! can lie about owners and inodes, or never answer. A user can mount only on a
//! directory she owns, so the rule is: no mount is crossed below the first
//! directory on the path that the sharer owns, and no component is on a FUSE or
//! SMB filesystem anywhere. Mounts the site made above her own directories (an
//! NFS home at /home/alice, say) pass. Each component's mount is found before
//! anything is looked up in it or asked of it: its mount id from
//! /proc/self/fdinfo and its type from /proc/self/mountinfo, both answered by
//! the kernel alone. (fstatfs or statx would ask the filesystem.)

use crate::answer::Error;
use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fstat, Mode};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

/// Opens the directory `path` with O_PATH as `open_dir` does, for root on a path
/// the user `owner` shapes: refused where it crosses a mount below her first
/// own directory, or passes a FUSE or SMB filesystem (see the top of the file).
pub fn open_dir_as_root(path: &Path, owner: u32) -> Result<OwnedFd, Error> {
    let parts = components(path)?;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = open("/", flags, Mode::empty()).map_err(|e| Error::sys("/", e))?;
    let mut mount = mount_id(&fd, Path::new("/"))?;
    let mut hers = false;
    let mut so_far = PathBuf::from("/");
    for name in parts {
        so_far.push(std::ffi::OsStr::from_bytes(name));
        let next = openat(&fd, name, flags, Mode::empty()).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => Error::Refused(format!(
                "{}: a symlink or not a directory",
                so_far.display()
            )),
            e => Error::sys(so_far.display(), e),
        })?;
        let here = mount_id(&next, &so_far)?;
        if here != mount {
            if hers {
                return Err(Error::Refused(format!(
                    "{}: a mount inside a directory of uid {owner}'s",
                    so_far.display()
                )));
            }
            let info = read_proc("/proc/self/mountinfo")?;
            match fs_type(&info, here) {
                Some(t) if user_served(t) => {
                    return Err(Error::Refused(format!(
                        "{}: on a {t} filesystem, which a user may serve",
                        so_far.display()
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(Error::Refused(format!(
                        "{}: on a mount not in the mount table",
                        so_far.display()
                    )))
                }
            }
            mount = here;
        }
        hers |= fstat(&next)
            .map_err(|e| Error::sys(so_far.display(), e))?
            .st_uid
            == owner;
        fd = next;
    }
    Ok(fd)
}

/// The filesystem types whose server a user may run and mount herself.
fn user_served(fs_type: &str) -> bool {
    matches!(fs_type, "fuse" | "fuseblk" | "cifs" | "smb3" | "smbfs")
        || fs_type.starts_with("fuse.")
}

fn read_proc(file: &str) -> Result<String, Error> {
    std::fs::read_to_string(file).map_err(|e| Error::Failed(format!("{file}: {e}")))
}

/// The id of the mount `fd` is on.
fn mount_id(fd: &OwnedFd, path: &Path) -> Result<u64, Error> {
    let info = read_proc(&format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    fdinfo_mount(&info)
        .ok_or_else(|| Error::Failed(format!("{}: no mount id in its fdinfo", path.display())))
}

/// The `mnt_id:` of a /proc/<pid>/fdinfo/<fd> text.
fn fdinfo_mount(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()
}

/// The filesystem type of the mount `id` in a /proc/<pid>/mountinfo text: the
/// field after the lone `-` that ends a line's optional fields. The kernel
/// escapes blanks in paths, so fields never hold one.
fn fs_type(mountinfo: &str, id: u64) -> Option<&str> {
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').next().and_then(|f| f.parse::<u64>().ok()) == Some(id))?;
    let mut fields = line.split(' ').skip(6).skip_while(|f| *f != "-");
    fields.next()?;
    fields.next().filter(|t| !t.is_empty())
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
    fn the_mount_table_is_read_strictly() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
5 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw
50 22 0:45 / /home/alice/fz rw,nosuid,nodev shared:9 master:3 - fuse.sshfs a@h:/ rw,user_id=60001
51 22 0:46 / /home/a\\040-\\040ext4 rw - fuse /dev/fuse rw
52 22 0:47 / /x rw shared:1 -
53 22 0:48 / /y rw shared:1 ext4 /dev/vdb rw
x 22 0:49 / /z rw - ext4 /dev/vdc rw
54 22 0:50 / /- rw -  /dev/vdd rw
";
        assert_eq!(fs_type(info, 22), Some("ext4"));
        assert_eq!(fs_type(info, 5), Some("devtmpfs"));
        assert_eq!(fs_type(info, 50), Some("fuse.sshfs"));
        assert_eq!(fs_type(info, 51), Some("fuse"));
        for missing in [52, 53, 54, 2, 0, u64::MAX] {
            assert_eq!(fs_type(info, missing), None, "{missing}");
        }
        assert_eq!(fs_type("", 22), None);
        assert_eq!(fs_type("22", 22), None);
        for t in ["fuse", "fuseblk", "fuse.sshfs", "cifs", "smb3"] {
            assert!(user_served(t), "{t}");
        }
        for t in ["ext4", "nfs4", "tmpfs", "xfs", "fusectl", ""] {
            assert!(!user_served(t), "{t}");
        }
        let fdinfo = "pos:\t0\nflags:\t02100000\nmnt_id:\t24\nino:\t3\n";
        assert_eq!(fdinfo_mount(fdinfo), Some(24));
        for bad in [
            "",
            "pos:\t0\n",
            "mnt_id:\tx\n",
            "mnt_id:\t-1\n",
            "mnt_id:\n",
        ] {
            assert_eq!(fdinfo_mount(bad), None, "{bad:?}");
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
