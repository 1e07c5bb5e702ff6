//! The gate, as root: the shared folder bind-mounted where the recipient can
//! reach it without search permission on anything of the sharer's above it.
//! `..` at the root of a mount leads to the directory the mount sits in, never
//! to the folder's real parent, so the recipient sees the folder and nothing
//! around it.
//!
//! Layout, under the gate directory the installer made (root, 0711):
//! `<gate dir>/<share id>/` is root's, mode 0700 plus one ACL entry that lets the
//! recipient alone pass (`user:<recipient>:--x`); `<gate dir>/<share id>/folder`
//! is the mount. The extra level keeps everyone else out: without it, anyone
//! who guessed a share id would get the folder's "other" permissions, which the
//! sharer's closed home had made moot until then.
//!
//! Root acts on the sharer's path, so it opens it component by component
//! without following a symlink, and mounts only the very directory the
//! sharer's own walk saw (device and inode) if she still owns it. The mount is
//! made and removed through descriptors (`/proc/self/fd/N`), never by
//! resolving the paths again; it does not take the folder's submounts (no
//! MS_REC) nor later ones (private), and it is nosuid and nodev, keeping the
//! folder's own read-only and noexec flags.

use crate::acl::{self, Acl, X};
use crate::answer::Error;
use crate::{path, sys};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The name of the mount point in a share's gate.
pub const MOUNTED: &str = "folder";
/// Stacked mounts unmounted at most before giving up.
const MAX_STACKED: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
}

/// Where the recipient reaches the folder of the share whose gate is `gate`.
pub fn mount_point(gate: &Path) -> PathBuf {
    gate.join(MOUNTED)
}

/// Mounts `folder` at `mount_point(gate)` for `recipient_uid`, if `folder` is
/// still the directory `expect` (device, inode) and owned by `sharer_uid`. An
/// existing correct mount is left alone (`Unchanged`); a wrong one is unmounted
/// first.
pub fn mount(
    folder: &str,
    sharer_uid: u32,
    recipient_uid: u32,
    expect: (u64, u64),
    gate: &Path,
) -> Result<Outcome, Error> {
    if sharer_uid == 0 || [0, u32::MAX, sharer_uid].contains(&recipient_uid) {
        return Err(Error::Refused(format!(
            "no gate from uid {sharer_uid} to uid {recipient_uid}"
        )));
    }
    let (dir, name) = gate_dir(gate)?;
    let source = path::open_dir(Path::new(folder), OFlag::O_PATH)?;
    let st = fstat(&source).map_err(|e| Error::sys(folder, e))?;
    if st.st_uid != sharer_uid {
        return Err(Error::Refused(format!(
            "{folder} is owned by uid {}, not by the sharer (uid {sharer_uid})",
            st.st_uid
        )));
    }
    if (st.st_dev, st.st_ino) != expect {
        return Err(Error::Refused(format!(
            "{folder} is no longer the directory the sharer's walk saw"
        )));
    }
    let carried = fstatvfs(&source)
        .map_err(|e| Error::sys(folder, e))?
        .flags();
    let share = share_dir(&dir, &name, recipient_uid, gate)?;
    let target = mount_point(gate);
    let at = |e| Error::sys(target.display(), e);
    if let Ok(point) = open_point(&share) {
        let st = fstat(&point).map_err(at)?;
        if (st.st_dev, st.st_ino) == expect && mounted_right(&point, carried) {
            return Ok(Outcome::Unchanged);
        }
    }
    detach_all(&share, &target)?;
    let point = match open_point(&share) {
        Err(Errno::ENOENT) => mkdirat(&share, MOUNTED, Mode::from_bits_truncate(0o700))
            .and_then(|()| open_point(&share)),
        other => other,
    }
    .map_err(at)?;
    let st = fstat(&point).map_err(at)?;
    if st.st_uid != 0 || SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Err(Error::Refused(format!(
            "{}: not root's directory",
            target.display()
        )));
    }
    let none: Option<&str> = None;
    nix::mount::mount(
        Some(proc_fd(&source).as_str()),
        proc_fd(&point).as_str(),
        none,
        MsFlags::MS_BIND,
        none,
    )
    .map_err(at)?;
    // A bind mount takes its flags only from a remount, which must name the new
    // mount's root: a fresh open of the mount point crosses into it. Private: no
    // mount made later under the folder appears in the gate.
    let root = open_point(&share).map_err(at)?;
    let remounted = nix::mount::mount(
        none,
        proc_fd(&root).as_str(),
        none,
        remount_flags(carried),
        none,
    )
    .and_then(|()| {
        let private = MsFlags::MS_PRIVATE;
        nix::mount::mount(none, proc_fd(&root).as_str(), none, private, none)
    });
    let fresh = open_point(&share).map_err(at)?;
    let st = fstat(&fresh).map_err(at)?;
    if remounted.is_err() || (st.st_dev, st.st_ino) != expect || !mounted_right(&fresh, carried) {
        let _ = nix::mount::umount2(proc_fd(&fresh).as_str(), MntFlags::MNT_DETACH);
        return Err(Error::Failed(format!(
            "{}: the mount is not the folder, private, nosuid and nodev{}",
            target.display(),
            remounted
                .err()
                .map(|e| format!(" ({})", e.desc()))
                .unwrap_or_default()
        )));
    }
    Ok(Outcome::Changed)
}

/// Unmounts the gate's mount (all of them, if stacked) and removes the gate. A
/// gate that is not there or not mounted is fine.
pub fn unmount(gate: &Path) -> Result<Outcome, Error> {
    let (dir, name) = gate_dir(gate)?;
    let at = |e| Error::sys(gate.display(), e);
    let share = match openat(&dir, name.as_path(), gate_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Outcome::Unchanged),
        Err(e) => return Err(at(e)),
    };
    if fstat(&share).map_err(at)?.st_uid != 0 {
        return Err(Error::Refused(format!("{}: not root's", gate.display())));
    }
    let mut outcome = match detach_all(&share, &mount_point(gate))? {
        true => Outcome::Changed,
        false => Outcome::Unchanged,
    };
    for (parent, name) in [(&share, Path::new(MOUNTED)), (&dir, name.as_path())] {
        match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
            Ok(()) => outcome = Outcome::Changed,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(at(e)),
        }
    }
    Ok(outcome)
}

/// Detaches every mount stacked on the share's mount point; whether there was one.
fn detach_all(share: &OwnedFd, target: &Path) -> Result<bool, Error> {
    let at = |e| Error::sys(target.display(), e);
    for n in 0..MAX_STACKED {
        let point = match open_point(share) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(n > 0),
            Err(e) => return Err(at(e)),
        };
        match nix::mount::umount2(proc_fd(&point).as_str(), MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(Errno::EINVAL) => return Ok(n > 0),
            Err(e) => return Err(at(e)),
        }
    }
    Err(Error::Failed(format!(
        "{}: still mounted after {MAX_STACKED} unmounts",
        target.display()
    )))
}

fn gate_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn proc_fd(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The mount point in the share's gate, opened as what is mounted there if anything is.
fn open_point(share: &OwnedFd) -> Result<OwnedFd, Errno> {
    openat(share, MOUNTED, gate_flags(), Mode::empty())
}

/// The gate directory (root's, 0711) and the share's name in it.
fn gate_dir(gate: &Path) -> Result<(OwnedFd, PathBuf), Error> {
    let parts = path::components(gate)?;
    let name = PathBuf::from(std::ffi::OsStr::from_bytes(parts[parts.len() - 1]));
    let parent = gate
        .parent()
        .filter(|p| *p != Path::new("/"))
        .ok_or_else(|| Error::Refused(format!("{}: not in a gate directory", gate.display())))?;
    let dir = path::open_dir(parent, OFlag::O_PATH)?;
    let st = fstat(&dir).map_err(|e| Error::sys(parent.display(), e))?;
    if st.st_uid != 0 || st.st_mode & 0o7777 != 0o711 {
        return Err(Error::Refused(format!(
            "{}: the gate directory must be root's with mode 0711, not uid {} mode {:o}",
            parent.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok((dir, name))
}

/// The share's own directory in the gate: root's, passable by the recipient alone.
fn share_dir(dir: &OwnedFd, name: &Path, recipient: u32, gate: &Path) -> Result<OwnedFd, Error> {
    let at = |e| Error::sys(gate.display(), e);
    match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(at(e)),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let share = openat(dir, name, flags, Mode::empty()).map_err(at)?;
    if fstat(&share).map_err(at)?.st_uid != 0 {
        return Err(Error::Refused(format!("{}: not root's", gate.display())));
    }
    let want = Acl::from_mode(0o700).with_user(recipient, X).to_bytes();
    if sys::fgetxattr(&share, acl::ACCESS).map_err(at)?.as_deref() != Some(&want[..]) {
        sys::fsetxattr(&share, acl::ACCESS, &want).map_err(at)?;
    }
    Ok(share)
}

/// The remount's flags: nosuid and nodev, and the folder's own mount's read-only,
/// noexec and atime flags, so that the gate makes nothing writable or executable
/// that was not.
fn remount_flags(folder: FsFlags) -> MsFlags {
    [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| folder.contains(*st))
    .fold(
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        |acc, (_, ms)| acc | ms,
    )
}

/// Whether the mount at `point` is nosuid, nodev, and read-only and noexec
/// where the folder's mount is.
fn mounted_right(point: &OwnedFd, folder: FsFlags) -> bool {
    let need = FsFlags::ST_NOSUID
        | FsFlags::ST_NODEV
        | (folder & (FsFlags::ST_RDONLY | FsFlags::ST_NOEXEC));
    fstatvfs(point).is_ok_and(|s| s.flags().contains(need))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::walk::grant;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::process::Command;

    struct Gate {
        tree: Tree,
        dir: PathBuf,
        gate: PathBuf,
        expect: (u64, u64),
    }

    /// Alice's folder, granted to Bob (read), and a gate directory.
    fn setup(name: &str) -> Gate {
        let tree = tree(name);
        let folder = tree.folder_str().to_string();
        let r = as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        let dir = tree.root.join("gate");
        mkdir(&dir, 0, 0o711);
        Gate {
            gate: dir.join("share1"),
            dir,
            expect: (r.folder_dev, r.folder_ino),
            tree,
        }
    }

    fn id(p: &Path) -> (u64, u64) {
        let m = fs::metadata(p).unwrap();
        (m.dev(), m.ino())
    }

    fn mounted(p: &Path) -> bool {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
    }

    #[test]
    fn the_recipient_reaches_the_folder_and_nothing_around_it() {
        let g = setup("gate");
        // Systemd makes every mount shared: the gate must not stay a peer.
        let root = g.tree.root.to_str().unwrap();
        let sh = format!("mount --bind {root} {root} && mount --make-shared {root}");
        assert!(Command::new("sh")
            .args(["-c", &sh])
            .status()
            .unwrap()
            .success());
        let folder = g.tree.folder_str();
        let got = mount(folder, ALICE, BOB, g.expect, &g.gate).unwrap();
        assert_eq!(got, Outcome::Changed);
        let point = mount_point(&g.gate);
        assert_eq!(id(&point), g.expect);
        assert!(mounted(&point));
        // Again: nothing to do.
        assert_eq!(
            mount(folder, ALICE, BOB, g.expect, &g.gate).unwrap(),
            Outcome::Unchanged
        );
        let opts = fs::read_to_string("/proc/self/mounts").unwrap();
        let line = opts
            .lines()
            .find(|l| l.split(' ').nth(1) == point.to_str())
            .unwrap();
        assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == point.to_str())
            .unwrap();
        assert!(
            !line.contains("shared:") && !line.contains("master:"),
            "{line}"
        );
        let (gate, home) = (id(&g.gate), g.tree.home.clone());
        as_user(BOB, || {
            expect(read(&point.join("a.txt"))? == "a", "a.txt")?;
            expect(read(&point.join("sub/deeper/c.txt"))? == "c", "c.txt")?;
            // `..` at the mount's root is the share's gate, not Alice's home.
            expect(id(&point.join("..")) == gate, "`..` leaves the gate")?;
            unreadable(&point.join("../.dotfile"))?;
            unreadable(&point.join("../sibling/s.txt"))?;
            expect(fs::read_dir(&g.gate).is_err(), "the gate lists")?;
            expect(fs::read_dir(&g.dir).is_err(), "the gate directory lists")?;
            unreadable(&home.join(".dotfile"))
        })
        .unwrap();
        // Everyone else stays out, whatever the folder's "other" bits say.
        own(&g.tree.folder, ALICE, 0o755);
        as_user(CAROL, || unreadable(&point.join("a.txt"))).unwrap();
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Changed);
        assert!(!mounted(&point));
        assert!(!g.gate.exists());
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Unchanged);
        // The folder itself is still there, untouched.
        assert_eq!(read(&g.tree.folder.join("a.txt")).unwrap(), "a");
    }

    #[test]
    fn a_wrong_mount_is_replaced_and_a_read_only_folder_stays_read_only() {
        let g = setup("wrong");
        let folder = g.tree.folder_str();
        let point = mount_point(&g.gate);
        mkdir(&point, 0, 0o700);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "ucloud-share-test"])
            .arg(&point)
            .status()
            .unwrap();
        assert!(ok.success());
        // Read-only where it lives: a bind of it must not be writable.
        let ok = Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(&g.tree.folder)
            .arg(&g.tree.folder)
            .status()
            .unwrap();
        assert!(ok.success());
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&g.tree.folder)
            .status()
            .unwrap();
        let expect_now = id(&g.tree.folder);
        assert_eq!(
            mount(folder, ALICE, BOB, expect_now, &g.gate).unwrap(),
            Outcome::Changed
        );
        assert_eq!(id(&point), expect_now);
        assert!(fs::write(point.join("new"), "x").is_err(), "writable");
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Changed);
        assert!(!mounted(&point));
    }

    #[test]
    fn a_swapped_folder_or_a_wrong_gate_directory_is_refused() {
        let g = setup("swap");
        let folder = g.tree.folder_str().to_string();
        let refused = |r: Result<Outcome, Error>, want: &str| match r {
            Err(Error::Refused(why)) => assert!(why.contains(want), "{why} / {want}"),
            other => panic!("{want}: {other:?}"),
        };
        // Alice swaps her folder for another directory of hers...
        fs::rename(&g.tree.folder, g.tree.home.join("F.old")).unwrap();
        mkdir(&g.tree.folder, ALICE, 0o755);
        refused(mount(&folder, ALICE, BOB, g.expect, &g.gate), "no longer");
        // ... for a symlink to the one the walk saw...
        fs::remove_dir(&g.tree.folder).unwrap();
        symlink(g.tree.home.join("F.old"), &g.tree.folder).unwrap();
        refused(mount(&folder, ALICE, BOB, g.expect, &g.gate), "a symlink");
        // ... or for a directory of someone else's with the expected identity
        // (as a chown would leave it).
        fs::remove_file(&g.tree.folder).unwrap();
        fs::rename(g.tree.home.join("F.old"), &g.tree.folder).unwrap();
        own(&g.tree.folder, CAROL, 0o755);
        refused(
            mount(&folder, ALICE, BOB, g.expect, &g.gate),
            "owned by uid 60003",
        );
        own(&g.tree.folder, ALICE, 0o750);
        // The gate directory must be root's, 0711.
        own(&g.dir, 0, 0o755);
        refused(mount(&folder, ALICE, BOB, g.expect, &g.gate), "mode 0711");
        refused(unmount(&g.gate), "mode 0711");
        own(&g.dir, ALICE, 0o711);
        refused(mount(&folder, ALICE, BOB, g.expect, &g.gate), "root's");
        own(&g.dir, 0, 0o711);
        refused(mount(&folder, ALICE, ALICE, g.expect, &g.gate), "no gate");
        refused(
            mount(&folder, ALICE, BOB, g.expect, Path::new("/share1")),
            "gate directory",
        );
        // Nothing was made along the way.
        assert!(!g.gate.exists());
        assert_eq!(
            mount(&folder, ALICE, BOB, g.expect, &g.gate).unwrap(),
            Outcome::Changed
        );
        unmount(&g.gate).unwrap();
    }
}
