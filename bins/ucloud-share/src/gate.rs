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
//! without following a symlink, crossing no mount inside her own directories
//! and none of a filesystem a user may serve (path.rs), and mounts only the very
//! directory the sharer's own walk saw (device and inode) if she still owns it.
//! The mount is made and removed through descriptors (`/proc/self/fd/N`), never
//! by resolving the paths again; it does not take the folder's submounts (no
//! MS_REC) nor later ones (private), and it is nosuid and nodev, keeping the
//! folder's own read-only and noexec flags. A read share's mount is read-only
//! too, whatever the ACLs say (a file of the sharer's that is writable by
//! "other" stays unwritable through the gate). A change of permission remounts
//! the mount in place, so that what the recipient holds open in it changes too.
//!
//! An unmount is a plain one first; only a mount still in use (a process of the
//! recipient's holds a file or its working directory in it) is detached, which
//! takes it out of every path but leaves what is open open, and is reported.

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
    /// From `unmount`: the gate is gone, but its mount was in use (a process
    /// still holds a file or its working directory in it) and was detached: it
    /// is reachable by no path, and goes when the last holder lets go.
    Busy,
}

/// Where the recipient reaches the folder of the share whose gate is `gate`.
pub fn mount_point(gate: &Path) -> PathBuf {
    gate.join(MOUNTED)
}

/// `mount_with`, read-write (as the folder's own mount allows).
pub fn mount(
    folder: &str,
    sharer_uid: u32,
    recipient_uid: u32,
    expect: (u64, u64),
    gate: &Path,
) -> Result<Outcome, Error> {
    mount_with(folder, sharer_uid, recipient_uid, expect, gate, false)
}

/// Mounts `folder` at `mount_point(gate)` for `recipient_uid`, read-only if
/// `read_only` (a read share), if `folder` is still the directory `expect`
/// (device, inode) and owned by `sharer_uid`. An existing correct mount is left
/// alone (`Unchanged`); one of the folder with other flags is remounted in
/// place; a wrong one is unmounted first.
pub fn mount_with(
    folder: &str,
    sharer_uid: u32,
    recipient_uid: u32,
    expect: (u64, u64),
    gate: &Path,
    read_only: bool,
) -> Result<Outcome, Error> {
    if sharer_uid == 0 || [0, u32::MAX, sharer_uid].contains(&recipient_uid) {
        return Err(Error::Refused(format!(
            "no gate from uid {sharer_uid} to uid {recipient_uid}"
        )));
    }
    let (dir, name) = gate_dir(gate)?;
    let source = path::open_dir_as_root(Path::new(folder), sharer_uid)?;
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
    let want = Want {
        folder: fstatvfs(&source)
            .map_err(|e| Error::sys(folder, e))?
            .flags(),
        read_only,
    };
    let share = share_dir(&dir, &name, recipient_uid, gate)?;
    let target = mount_point(gate);
    let at = |e| Error::sys(target.display(), e);
    if let Ok(point) = open_point(&share) {
        let st = fstat(&point).map_err(at)?;
        if (st.st_dev, st.st_ino) == expect {
            if want.met_by(&point) {
                return Ok(Outcome::Unchanged);
            }
            // The folder, with the flags of another permission.
            let remounted = nix::mount::mount(
                None::<&str>,
                proc_fd(&point).as_str(),
                None::<&str>,
                want.remount_flags(),
                None::<&str>,
            );
            if remounted.is_ok() && want.met_by(&point) {
                return Ok(Outcome::Changed);
            }
        }
    }
    unmount_all(&share, &target)?;
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
        want.remount_flags(),
        none,
    )
    .and_then(|()| {
        let private = MsFlags::MS_PRIVATE;
        nix::mount::mount(none, proc_fd(&root).as_str(), none, private, none)
    });
    let fresh = open_point(&share).map_err(at)?;
    let st = fstat(&fresh).map_err(at)?;
    if remounted.is_err() || (st.st_dev, st.st_ino) != expect || !want.met_by(&fresh) {
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

/// Unmounts the gate's mount (all of them, if stacked) and removes the gate:
/// `Busy` when a mount was in use and had to be detached. A gate that is not
/// there or not mounted is fine.
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
    let (mut outcome, busy) = match unmount_all(&share, &mount_point(gate))? {
        (true, busy) => (Outcome::Changed, busy),
        (false, busy) => (Outcome::Unchanged, busy),
    };
    for (parent, name) in [(&share, Path::new(MOUNTED)), (&dir, name.as_path())] {
        match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
            Ok(()) => outcome = Outcome::Changed,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(at(e)),
        }
    }
    Ok(if busy { Outcome::Busy } else { outcome })
}

/// Unmounts every mount stacked on the share's mount point, each with a plain
/// unmount, or detached where that fails because it is in use: whether there
/// was one, and whether one was in use. The mount point is named through the
/// share's directory: a descriptor of the mount itself would keep it in use.
fn unmount_all(share: &OwnedFd, target: &Path) -> Result<(bool, bool), Error> {
    let at = |e| Error::sys(target.display(), e);
    let point = format!("{}/{MOUNTED}", proc_fd(share));
    let plain = MntFlags::UMOUNT_NOFOLLOW;
    let mut busy = false;
    for n in 0..MAX_STACKED {
        match nix::mount::umount2(point.as_str(), plain) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                busy = true;
                nix::mount::umount2(point.as_str(), plain | MntFlags::MNT_DETACH).map_err(at)?
            }
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok((n > 0, busy)),
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

/// The flags a share's mount must have.
struct Want {
    /// The flags of the folder's own mount.
    folder: FsFlags,
    /// A read share.
    read_only: bool,
}

impl Want {
    fn read_only(&self) -> bool {
        self.read_only || self.folder.contains(FsFlags::ST_RDONLY)
    }

    /// The remount's flags: nosuid and nodev, read-only for a read share, and
    /// the folder's own mount's read-only, noexec and atime flags, so that the
    /// gate makes nothing writable or executable that was not.
    fn remount_flags(&self) -> MsFlags {
        let carried = [
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ]
        .into_iter()
        .filter(|(st, _)| self.folder.contains(*st))
        .fold(
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            |acc, (_, ms)| acc | ms,
        );
        match self.read_only() {
            true => carried | MsFlags::MS_RDONLY,
            false => carried,
        }
    }

    /// Whether the mount at `point` is nosuid, nodev, noexec where the folder's
    /// mount is, and read-only exactly when it should be: a write share's gate
    /// on a writable folder must not stay read-only either.
    fn met_by(&self, point: &OwnedFd) -> bool {
        let need = FsFlags::ST_NOSUID | FsFlags::ST_NODEV | (self.folder & FsFlags::ST_NOEXEC);
        fstatvfs(point).is_ok_and(|s| {
            s.flags().contains(need) && s.flags().contains(FsFlags::ST_RDONLY) == self.read_only()
        })
    }
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
        // Read-only where it lives (a mount the site made, above Alice's own
        // directories): a bind of it must not be writable.
        let homes = g.tree.root.join("home");
        let ok = Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(&homes)
            .arg(&homes)
            .status()
            .unwrap();
        assert!(ok.success());
        Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&homes)
            .status()
            .unwrap();
        let expect_now = id(&g.tree.folder);
        assert_eq!(
            mount(folder, ALICE, BOB, expect_now, &g.gate).unwrap(),
            Outcome::Changed
        );
        assert_eq!(id(&point), expect_now);
        assert!(fs::write(point.join("new"), "x").is_err(), "writable");
        // A write share cannot make it writable either, and asks for no change.
        assert_eq!(
            mount_with(folder, ALICE, BOB, expect_now, &g.gate, false).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Changed);
        assert!(!mounted(&point));
    }

    fn writes(dir: &fs::File, name: &str) -> bool {
        fs::write(via(dir, name), "x").is_ok()
    }

    fn options(point: &Path) -> String {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == point.to_str())
            .unwrap();
        line.split(' ').nth(5).unwrap().to_string()
    }

    #[test]
    fn a_read_share_is_read_only_and_a_change_of_permission_remounts_in_place() {
        let g = setup("readonly");
        let folder = g.tree.folder_str();
        let point = mount_point(&g.gate);
        let ro = |read_only| mount_with(folder, ALICE, BOB, g.expect, &g.gate, read_only);
        assert_eq!(ro(true).unwrap(), Outcome::Changed);
        assert!(options(&point).starts_with("ro,"), "{}", options(&point));
        // Root could write there, and so could Bob where "other" may: not
        // through a read share's gate.
        own(&g.tree.folder.join("a.txt"), ALICE, 0o666);
        assert!(fs::write(point.join("a.txt"), "x").is_err(), "root writes");
        as_user(BOB, || {
            expect(fs::write(point.join("a.txt"), "x").is_err(), "Bob writes")
        })
        .unwrap();
        assert_eq!(ro(true).unwrap(), Outcome::Unchanged);
        // Upgraded to an edit share: what is held open in the gate changes too.
        let held = fs::File::open(&point).unwrap();
        assert!(!writes(&held, "new1"));
        assert_eq!(ro(false).unwrap(), Outcome::Changed);
        assert!(options(&point).starts_with("rw,"), "{}", options(&point));
        assert!(writes(&held, "new2"), "not writable after the upgrade");
        assert_eq!(ro(false).unwrap(), Outcome::Unchanged);
        // And back: the downgrade reaches the holder as well.
        assert_eq!(ro(true).unwrap(), Outcome::Changed);
        assert!(!writes(&held, "new3"), "writable after the downgrade");
        // Remounted, not stacked: one mount.
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let n = info
            .lines()
            .filter(|l| l.split(' ').nth(4) == point.to_str())
            .count();
        assert_eq!(n, 1, "{info}");
        drop(held);
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Changed);
    }

    #[test]
    fn an_unmount_in_use_is_detached_and_says_so() {
        let g = setup("busy");
        let folder = g.tree.folder_str();
        let point = mount_point(&g.gate);
        mount(folder, ALICE, BOB, g.expect, &g.gate).unwrap();
        let held = fs::File::open(point.join("a.txt")).unwrap();
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Busy);
        assert!(!mounted(&point));
        assert!(!g.gate.exists());
        // What was open stays open; the mount goes when it is let go.
        use std::io::Read;
        let mut text = String::new();
        (&held).read_to_string(&mut text).unwrap();
        assert_eq!(text, "a");
        drop(held);
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Unchanged);
        // Not in use: a plain unmount.
        mount(folder, ALICE, BOB, g.expect, &g.gate).unwrap();
        assert_eq!(unmount(&g.gate).unwrap(), Outcome::Changed);
    }

    #[test]
    fn no_mount_a_user_may_make_is_crossed() {
        let g = setup("usermount");
        let refused = |r: Result<Outcome, Error>, want: &str| match r {
            Err(Error::Refused(why)) => assert!(why.contains(want), "{why} / {want}"),
            other => panic!("{want}: {other:?}"),
        };
        // A mount inside Alice's own directories, whatever its type.
        let m = g.tree.home.join("m");
        mkdir(&m, ALICE, 0o755);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "ucloud-share-test"])
            .arg(&m)
            .status()
            .unwrap();
        assert!(ok.success());
        let inner = m.join("F");
        mkdir(&inner, ALICE, 0o755);
        let inner_str = inner.to_str().unwrap().to_string();
        refused(
            mount(&inner_str, ALICE, BOB, id(&inner), &g.gate),
            "a mount inside a directory of uid 60001's",
        );
        // A FUSE filesystem even where the site's directories are: its daemon
        // (here none: the connection is cut) is never asked a thing.
        let fz = g.tree.root.join("home/fz");
        mkdir(&fz, ALICE, 0o755);
        let dev = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap();
        use std::os::fd::AsRawFd;
        let data = format!(
            "fd={},rootmode=40000,user_id={ALICE},group_id={ALICE},allow_other",
            dev.as_raw_fd()
        );
        nix::mount::mount(
            Some("ucloud-share-test"),
            &fz,
            Some("fuse.test"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .unwrap();
        drop(dev);
        let under = fz.join("F").to_str().unwrap().to_string();
        refused(
            mount(&under, ALICE, BOB, g.expect, &g.gate),
            "on a fuse.test filesystem",
        );
        refused(
            mount(fz.to_str().unwrap(), ALICE, BOB, g.expect, &g.gate),
            "on a fuse.test filesystem",
        );
        // A mount the site made above her directories is fine (the tests' own
        // tree may be one): the folder mounts.
        assert_eq!(
            mount(g.tree.folder_str(), ALICE, BOB, g.expect, &g.gate).unwrap(),
            Outcome::Changed
        );
        unmount(&g.gate).unwrap();
        let _ = nix::mount::umount2(&fz, MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
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
