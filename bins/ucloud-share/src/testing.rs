//! What the root tests share: a sharer's home with a folder in it, owned by a
//! test uid (no account needed), on a filesystem with POSIX ACLs, and a way to
//! check what another uid can do there.

use crate::answer::Error;
use crate::answer::Report;
use crate::privilege::{as_sharer, as_sharer_keeping};
use crate::walk::Limits;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const ALICE: u32 = 60001;
pub const BOB: u32 = 60002;
pub const CAROL: u32 = 60003;

pub const WIDE: Limits = Limits {
    entries: 100_000,
    depth: 100,
};

pub struct Tree {
    pub root: PathBuf,
    /// Alice's home, 0700, with `.dotfile` (0644) and `sibling/` (0755) beside F.
    pub home: PathBuf,
    /// The shared folder, 0750 (so that only an ACL entry lets another uid in):
    /// `a.txt` (0644), `sub/b.txt` (0600), `sub/deeper/c.txt` (0640).
    pub folder: PathBuf,
}

impl Tree {
    pub fn folder_str(&self) -> &str {
        self.folder.to_str().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Whatever a failed test left mounted below the root goes first.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l",
                self.root.display()
            ))
            .status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

pub fn mkdir(path: &Path, uid: u32, mode: u32) {
    fs::create_dir_all(path).unwrap();
    own(path, uid, mode);
}

pub fn file(path: &Path, uid: u32, mode: u32, text: &str) {
    fs::write(path, text).unwrap();
    own(path, uid, mode);
}

pub fn own(path: &Path, uid: u32, mode: u32) {
    chown(path, Some(uid), Some(uid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A fresh tree for the test `name`: under /tmp if its filesystem takes POSIX
/// ACLs, else on a tmpfs mounted there.
pub fn tree(name: &str) -> Tree {
    let root = std::env::temp_dir().join(format!("ucloud-share-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    mkdir(&root, 0, 0o755);
    let acl_ok = Command::new("setfacl")
        .args(["-m", "u:60001:r"])
        .arg(&root)
        .status()
        .is_ok_and(|s| s.success());
    if !acl_ok {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "ucloud-share-test"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success(), "no ACL-capable filesystem for the tests");
    }
    let _ = Command::new("setfacl").arg("-b").arg(&root).status();
    let tree = Tree {
        home: root.join("home/alice"),
        folder: root.join("home/alice/F"),
        root,
    };
    mkdir(&tree.root.join("home"), 0, 0o755);
    mkdir(&tree.home, ALICE, 0o700);
    file(&tree.home.join(".dotfile"), ALICE, 0o644, "private");
    mkdir(&tree.home.join("sibling"), ALICE, 0o755);
    file(&tree.home.join("sibling/s.txt"), ALICE, 0o644, "sibling");
    mkdir(&tree.folder, ALICE, 0o750);
    file(&tree.folder.join("a.txt"), ALICE, 0o644, "a");
    mkdir(&tree.folder.join("sub/deeper"), ALICE, 0o755);
    own(&tree.folder.join("sub"), ALICE, 0o755);
    file(&tree.folder.join("sub/b.txt"), ALICE, 0o600, "b");
    file(&tree.folder.join("sub/deeper/c.txt"), ALICE, 0o640, "c");
    tree
}

/// Runs `checks` as `uid` (its gid the same number) in a child; its verdict.
pub fn as_user(uid: u32, checks: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    as_user_with(uid, &[], checks)
}

/// `as_user`, with the descriptors of `keep` open in the child (for `via`).
pub fn as_user_with(
    uid: u32,
    keep: &[&fs::File],
    checks: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + Duration::from_secs(30);
    let keep: Vec<_> = keep.iter().map(|f| f.as_raw_fd()).collect();
    as_sharer_keeping(uid, uid, deadline, &keep, || {
        checks().map(|()| Report::default()).map_err(Error::Refused)
    })
    .map(drop)
    .map_err(|e| e.to_string())
}

/// Runs a walk as Alice.
pub fn as_alice(f: impl FnOnce() -> Result<Report, Error>) -> Result<Report, Error> {
    as_sharer(ALICE, ALICE, Instant::now() + Duration::from_secs(30), f)
}

/// Ok with the contents when `path` reads, Err with the errno's name otherwise.
pub fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A check that `path` cannot be read (permission denied or not there).
pub fn unreadable(path: &Path) -> Result<(), String> {
    match fs::read(path) {
        Ok(_) => Err(format!("{} is readable", path.display())),
        Err(_) => Ok(()),
    }
}

/// The access (or default) ACL of `path`, not followed if a symlink; None
/// when it has none.
pub fn acl_of(path: &Path, default: bool) -> Option<crate::acl::Acl> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .unwrap();
    let attr = if default {
        crate::acl::DEFAULT
    } else {
        crate::acl::ACCESS
    };
    let bytes = crate::sys::fgetxattr(&f, attr).unwrap()?;
    Some(crate::acl::Acl::parse(&bytes).unwrap())
}

/// Err(what) unless `ok`.
pub fn expect(ok: bool, what: impl std::fmt::Display) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

/// `rel` below the directory `fd` names, reached through the descriptor (as
/// the recipient reaches a folder through the gate, without passing its parents).
pub fn via(fd: &fs::File, rel: &str) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}/{rel}", fd.as_raw_fd()))
}
