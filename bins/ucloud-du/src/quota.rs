//! A drive's usage from its filesystem's own accounting, where it has one: the
//! level-0 qgroup of a btrfs subvolume, or the project quota of an XFS or ext4
//! project tree. Read only while the program holds CAP_SYS_ADMIN, before it drops
//! it for good; every drive this finds no quota for is walked afterwards, and the
//! reason it was not read from a quota goes into the audit record.
//!
//! What the kernel writes back is parsed as untrusted bytes: every length and
//! count is checked against the buffer before anything is read through it.

use crate::sys::{self, BtrfsArg, BTRFS_ARG_SIZE};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode};
use nix::sys::statfs::fstatfs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// `BTRFS_SUPER_MAGIC` of linux/magic.h.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// Every subvolume's root directory has this inode number.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;
/// The quota tree's id.
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_QGROUP_STATUS_KEY: u32 = 240;
const BTRFS_QGROUP_INFO_KEY: u32 = 242;
const BTRFS_QGROUP_STATUS_VERSION: u64 = 1;
const BTRFS_QGROUP_STATUS_FLAG_ON: u64 = 1 << 0;
const BTRFS_QGROUP_STATUS_FLAG_RESCAN: u64 = 1 << 1;
const BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
/// `FS_XFLAG_PROJINHERIT`: new entries take the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// `struct btrfs_ioctl_search_key` is 104 bytes; the items follow it.
const SEARCH_KEY_SIZE: usize = 104;
/// `struct btrfs_ioctl_search_header`: transid, objectid, offset (u64), type, len (u32).
const SEARCH_HEADER_SIZE: usize = 32;

/// Where a drive's total came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The referenced bytes of the level-0 qgroup of this btrfs subvolume.
    BtrfsQgroup(u64),
    /// The space of this project id (XFS, ext4 project quota).
    Project(u32),
}

impl Source {
    /// As the audit record names it.
    pub fn name(self) -> String {
        match self {
            Source::BtrfsQgroup(id) => format!("btrfs qgroup 0/{id}"),
            Source::Project(id) => format!("project {id}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub bytes: u64,
    pub source: Source,
    /// The device of the drive's base: with the source, what makes two drives
    /// the same quota.
    pub dev: u64,
}

/// The drive's quota, or why it has none that may stand for it (then it is walked).
pub fn read(base: &Path) -> Result<Quota, String> {
    let dir = openat(
        AT_FDCWD,
        base,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the base: {}", e.desc()))?;
    let st = fstat(&dir).map_err(|e| format!("cannot stat the base: {}", e.desc()))?;
    let fs = fstatfs(&dir).map_err(|e| format!("cannot statfs the base: {}", e.desc()))?;
    let source = if fs.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC {
        if st.st_ino != BTRFS_FIRST_FREE_OBJECTID {
            return Err("btrfs, but the base is not the root of a subvolume".into());
        }
        btrfs(dir.as_fd())?
    } else {
        project(dir.as_fd())?
    };
    Ok(Quota {
        bytes: source.0,
        source: source.1,
        dev: st.st_dev,
    })
}

fn btrfs(dir: BorrowedFd) -> Result<(u64, Source), String> {
    let mut arg = BtrfsArg([0; BTRFS_ARG_SIZE]);
    put(&mut arg.0, 0, 0); // treeid 0: the one `dir` is on
    put(&mut arg.0, 8, BTRFS_FIRST_FREE_OBJECTID);
    sys::btrfs_ino_lookup(dir, &mut arg)
        .map_err(|e| format!("BTRFS_IOC_INO_LOOKUP: {}", e.desc()))?;
    let subvolume = u64::from_ne_bytes(arg.0[0..8].try_into().expect("8 bytes"));
    if subvolume != 5 && subvolume < BTRFS_FIRST_FREE_OBJECTID {
        return Err(format!("btrfs gave {subvolume} as the subvolume id"));
    }

    let status = search(dir, BTRFS_QGROUP_STATUS_KEY, 0)?;
    let status = status
        .iter()
        .find(|i| i.objectid == 0 && i.kind == BTRFS_QGROUP_STATUS_KEY)
        .ok_or("qgroups are not enabled on this filesystem")?;
    status_usable(&status.data)?;

    // A level-0 qgroup's id is its subvolume's id.
    let info = search(dir, BTRFS_QGROUP_INFO_KEY, subvolume)?;
    let info = info
        .iter()
        .find(|i| i.objectid == 0 && i.kind == BTRFS_QGROUP_INFO_KEY && i.offset == subvolume)
        .ok_or_else(|| format!("subvolume {subvolume} has no qgroup"))?;
    Ok((referenced(&info.data)?, Source::BtrfsQgroup(subvolume)))
}

fn put(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// The items of the quota tree with key (0, `kind`, `offset`).
fn search(dir: BorrowedFd, kind: u32, offset: u64) -> Result<Vec<Item>, String> {
    let mut arg = BtrfsArg([0; BTRFS_ARG_SIZE]);
    let b = &mut arg.0;
    put(b, 0, BTRFS_QUOTA_TREE_OBJECTID);
    put(b, 8, 0); // objectid 0..0
    put(b, 16, 0);
    put(b, 24, offset);
    put(b, 32, offset);
    put(b, 40, 0); // any transaction
    put(b, 48, u64::MAX);
    b[56..60].copy_from_slice(&kind.to_ne_bytes());
    b[60..64].copy_from_slice(&kind.to_ne_bytes());
    b[64..68].copy_from_slice(&1u32.to_ne_bytes());
    match sys::btrfs_tree_search(dir, &mut arg) {
        Ok(()) => items(&arg.0),
        // No quota tree at all.
        Err(Errno::ENOENT) => Err("qgroups are not enabled on this filesystem".into()),
        Err(Errno::EPERM) => Err("reading the quota tree needs CAP_SYS_ADMIN".into()),
        Err(e) => Err(format!("BTRFS_IOC_TREE_SEARCH: {}", e.desc())),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Item {
    objectid: u64,
    offset: u64,
    kind: u32,
    data: Vec<u8>,
}

/// The items BTRFS_IOC_TREE_SEARCH wrote after its key: `nr_items` (in the key)
/// headers, each followed by `len` bytes. Nothing is trusted: a count or length
/// that runs past the buffer is an error, not a read.
fn items(arg: &[u8]) -> Result<Vec<Item>, String> {
    let bad = |why: &str| Err(format!("BTRFS_IOC_TREE_SEARCH answered {why}"));
    if arg.len() < SEARCH_KEY_SIZE {
        return bad("a short buffer");
    }
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().expect("8"));
    let count = u32_at(arg, 64) as usize;
    let buf = &arg[SEARCH_KEY_SIZE..];
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        let Some(header) = buf.get(at..at.saturating_add(SEARCH_HEADER_SIZE)) else {
            return bad("more items than its buffer holds");
        };
        let len = u32_at(header, 28) as usize;
        let start = at + SEARCH_HEADER_SIZE;
        let Some(data) = start.checked_add(len).and_then(|end| buf.get(start..end)) else {
            return bad("an item longer than its buffer");
        };
        out.push(Item {
            objectid: u64_at(header, 8),
            offset: u64_at(header, 16),
            kind: u32_at(header, 24),
            data: data.to_vec(),
        });
        at = start + len;
    }
    Ok(out)
}

fn le64(data: &[u8], at: usize) -> Option<u64> {
    data.get(at..at.checked_add(8)?)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// `struct btrfs_qgroup_status_item` (little-endian, on disk): version,
/// generation, flags, rescan. The numbers are only the usage when quotas are on
/// and consistent.
fn status_usable(data: &[u8]) -> Result<(), String> {
    let (Some(version), Some(flags)) = (le64(data, 0), le64(data, 16)) else {
        return Err(format!("a qgroup status item of {} bytes", data.len()));
    };
    if version != BTRFS_QGROUP_STATUS_VERSION {
        return Err(format!("qgroup status version {version}, not 1"));
    }
    if flags & BTRFS_QGROUP_STATUS_FLAG_ON == 0 {
        return Err("qgroups are not enabled on this filesystem".into());
    }
    if flags & BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT != 0 {
        return Err("the qgroup numbers are inconsistent (a rescan is needed)".into());
    }
    if flags & BTRFS_QGROUP_STATUS_FLAG_RESCAN != 0 {
        return Err("a qgroup rescan is under way".into());
    }
    Ok(())
}

/// `struct btrfs_qgroup_info_item`: generation, rfer, rfer_cmpr, excl,
/// excl_cmpr; the referenced bytes are the subvolume's whole usage, its extents
/// shared with others (reflinks, snapshots) included.
fn referenced(data: &[u8]) -> Result<u64, String> {
    if data.len() < 40 {
        return Err(format!("a qgroup info item of {} bytes", data.len()));
    }
    le64(data, 8).ok_or_else(|| "a qgroup info item without its size".into())
}

fn project(dir: BorrowedFd) -> Result<(u64, Source), String> {
    let (id, flags) = match sys::fsgetxattr(dir) {
        Ok(x) => x,
        Err(Errno::ENOTTY | Errno::EOPNOTSUPP | Errno::EINVAL) => {
            return Err("the filesystem has neither qgroups nor project ids".into())
        }
        Err(e) => return Err(format!("FS_IOC_FSGETXATTR: {}", e.desc())),
    };
    project_quota(id, flags, |id| {
        let mut q = sys::FsDiskQuota([0; sys::FS_DISK_QUOTA_SIZE]);
        sys::project_quota(dir, id, &mut q)?;
        disk_quota_bytes(&q.0, id).ok_or(Errno::EPROTO)
    })
}

/// `FS_DQUOT_VERSION` and `FS_PROJ_QUOTA` of linux/dqblk_xfs.h.
const FS_DQUOT_VERSION: i8 = 1;
const FS_PROJ_QUOTA: u8 = 2;

/// The bytes of a project's `struct fs_disk_quota` (native byte order, the
/// kernel's): `d_bcount`, in 512-byte basic blocks, at offset 40. None unless
/// the record is version 1, a project's, and this project's.
fn disk_quota_bytes(q: &[u8], project: u32) -> Option<u64> {
    let version = *q.first()? as i8;
    let flags = *q.get(1)?;
    let id = u32::from_ne_bytes(q.get(4..8)?.try_into().ok()?);
    let blocks = u64::from_ne_bytes(q.get(40..48)?.try_into().ok()?);
    (version == FS_DQUOT_VERSION && flags & FS_PROJ_QUOTA != 0 && id == project)
        .then(|| blocks.saturating_mul(512))
}

/// The project tree rule, and what quotactl_fd's errors mean for a site.
fn project_quota(
    id: u32,
    flags: u32,
    get: impl FnOnce(u32) -> Result<u64, Errno>,
) -> Result<(u64, Source), String> {
    if id == 0 {
        return Err("no quota: not a btrfs subvolume and no project id".into());
    }
    if flags & FS_XFLAG_PROJINHERIT == 0 {
        return Err(format!(
            "project id {id} without the inherit flag: not a project tree"
        ));
    }
    match get(id) {
        Ok(bytes) => Ok((bytes, Source::Project(id))),
        Err(Errno::ENOSYS) => Err(format!(
            "project id {id}, but this kernel has no quota support (quotactl_fd: ENOSYS)"
        )),
        Err(Errno::ESRCH) => Err(format!(
            "project id {id}, but project quotas are off on this filesystem"
        )),
        Err(Errno::ENOENT) => Err(format!("project id {id} has no quota record")),
        Err(Errno::EPERM) => Err(format!(
            "project id {id}, but reading its quota needs CAP_SYS_ADMIN"
        )),
        Err(Errno::EROFS) => Err(format!(
            "project id {id}: quotactl_fd: the kernel wants the mount writable"
        )),
        Err(Errno::EPROTO) => Err(format!(
            "project id {id}: quotactl_fd answered a record that is not this project's"
        )),
        Err(e) => Err(format!("project id {id}: quotactl_fd: {}", e.desc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A search answer as the kernel lays it out: `nr_items` in the key, then
    /// header + data for each `(objectid, type, offset, data)`.
    fn answer(count: u32, items: &[(u64, u32, u64, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; BTRFS_ARG_SIZE];
        b[64..68].copy_from_slice(&count.to_ne_bytes());
        let mut at = SEARCH_KEY_SIZE;
        for (objectid, kind, offset, data) in items {
            b[at + 8..at + 16].copy_from_slice(&objectid.to_ne_bytes());
            b[at + 16..at + 24].copy_from_slice(&offset.to_ne_bytes());
            b[at + 24..at + 28].copy_from_slice(&kind.to_ne_bytes());
            b[at + 28..at + 32].copy_from_slice(&(data.len() as u32).to_ne_bytes());
            b[at + 32..at + 32 + data.len()].copy_from_slice(data);
            at += 32 + data.len();
        }
        b
    }

    fn info(rfer: u64) -> Vec<u8> {
        let mut d = vec![0u8; 40];
        d[8..16].copy_from_slice(&rfer.to_le_bytes());
        d[24..32].copy_from_slice(&7u64.to_le_bytes());
        d
    }

    fn status(version: u64, flags: u64) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&version.to_le_bytes());
        d[16..24].copy_from_slice(&flags.to_le_bytes());
        d
    }

    #[test]
    fn search_answers_are_parsed() {
        let i = info(123_456_789);
        let b = answer(2, &[(0, 242, 257, &i), (0, 242, 258, &info(5))]);
        let got = items(&b).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].objectid, got[0].kind, got[0].offset), (0, 242, 257));
        assert_eq!(referenced(&got[0].data).unwrap(), 123_456_789);
        assert_eq!(referenced(&got[1].data).unwrap(), 5);
        assert_eq!(items(&answer(0, &[])).unwrap(), vec![]);
    }

    #[test]
    fn hostile_search_answers_are_refused_not_read_past() {
        // More items claimed than written: the empty rest parses as zero-length
        // items until the buffer ends, then the count is refused.
        assert!(items(&answer(u32::MAX, &[])).is_err());
        // An item whose length runs past the buffer, or to u32::MAX.
        for len in [
            BTRFS_ARG_SIZE as u32,
            u32::MAX,
            (BTRFS_ARG_SIZE - SEARCH_KEY_SIZE - 31) as u32,
        ] {
            let mut b = answer(1, &[(0, 242, 257, &[])]);
            b[SEARCH_KEY_SIZE + 28..SEARCH_KEY_SIZE + 32].copy_from_slice(&len.to_ne_bytes());
            assert!(items(&b).is_err(), "len {len}");
        }
        // A header that does not fit after a first item.
        let big = vec![0u8; BTRFS_ARG_SIZE - SEARCH_KEY_SIZE - 32 - 16];
        assert!(items(&answer(2, &[(0, 242, 257, &big)])).is_err());
        // A buffer shorter than the key.
        assert!(items(&[0u8; 50]).is_err());
        // Items too short for what they claim to be.
        assert!(referenced(&[0u8; 39]).is_err());
        assert!(referenced(&[]).is_err());
        assert!(status_usable(&[1, 0, 0]).is_err());
    }

    #[test]
    fn only_consistent_enabled_qgroups_are_trusted() {
        assert!(status_usable(&status(1, BTRFS_QGROUP_STATUS_FLAG_ON)).is_ok());
        // Simple quotas (a later flag) count the same way.
        assert!(status_usable(&status(1, BTRFS_QGROUP_STATUS_FLAG_ON | 1 << 3)).is_ok());
        for (version, flags, why) in [
            (1, 0, "not enabled"),
            (
                1,
                BTRFS_QGROUP_STATUS_FLAG_ON | BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT,
                "inconsistent",
            ),
            (
                1,
                BTRFS_QGROUP_STATUS_FLAG_ON | BTRFS_QGROUP_STATUS_FLAG_RESCAN,
                "rescan",
            ),
            (2, BTRFS_QGROUP_STATUS_FLAG_ON, "version 2"),
        ] {
            let err = status_usable(&status(version, flags)).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn project_trees_need_an_id_the_inherit_flag_and_a_kernel_that_answers() {
        let never = |_| -> Result<u64, Errno> { panic!("asked the kernel for no project") };
        assert!(project_quota(0, FS_XFLAG_PROJINHERIT, never)
            .unwrap_err()
            .contains("no project id"));
        assert!(project_quota(42, 0, never)
            .unwrap_err()
            .contains("without the inherit flag"));
        assert_eq!(
            project_quota(42, FS_XFLAG_PROJINHERIT, |id| Ok(u64::from(id) * 1000)),
            Ok((42_000, Source::Project(42)))
        );
        for (errno, why) in [
            (Errno::ENOSYS, "no quota support"),
            (Errno::ESRCH, "project quotas are off"),
            (Errno::ENOENT, "no quota record"),
            (Errno::EPERM, "CAP_SYS_ADMIN"),
            (Errno::EROFS, "writable"),
            (Errno::EPROTO, "not this project's"),
            (Errno::EIO, "quotactl_fd"),
        ] {
            let err = project_quota(42, FS_XFLAG_PROJINHERIT, |_| Err(errno)).unwrap_err();
            assert!(err.contains(why) && err.contains("42"), "{errno}: {err}");
        }
    }

    fn disk_quota(version: i8, flags: u8, id: u32, blocks: u64) -> Vec<u8> {
        let mut q = vec![0u8; sys::FS_DISK_QUOTA_SIZE];
        q[0] = version as u8;
        q[1] = flags;
        q[4..8].copy_from_slice(&id.to_ne_bytes());
        q[40..48].copy_from_slice(&blocks.to_ne_bytes());
        q
    }

    #[test]
    fn project_records_are_read_only_when_they_are_this_projects() {
        assert_eq!(disk_quota_bytes(&disk_quota(1, 2, 42, 10), 42), Some(5120));
        assert_eq!(
            disk_quota_bytes(&disk_quota(1, 2, 42, u64::MAX), 42),
            Some(u64::MAX)
        );
        for (q, why) in [
            (disk_quota(2, 2, 42, 10), "another version"),
            (disk_quota(1, 1, 42, 10), "a user's record"),
            (disk_quota(1, 2, 43, 10), "another project"),
            (disk_quota(1, 2, 42, 10)[..47].to_vec(), "short"),
            (Vec::new(), "empty"),
        ] {
            assert_eq!(disk_quota_bytes(&q, 42), None, "{why}");
        }
    }

    /// A filesystem image on a loop device, mounted; unmounted and detached however
    /// the test ends.
    struct Mounted {
        dir: std::path::PathBuf,
        loopdev: String,
    }

    fn sh(args: &[&str]) -> String {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    impl Mounted {
        fn btrfs(name: &str) -> Mounted {
            Mounted::new(name, "mkfs.btrfs", 512 << 20)
        }

        /// A fresh filesystem made by `mkfs` on a loop device of `bytes`, mounted.
        fn new(name: &str, mkfs: &str, bytes: u64) -> Mounted {
            let dir = std::env::temp_dir().join(format!("ucloud-du-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let image = dir.with_extension("img");
            std::fs::File::create(&image)
                .unwrap()
                .set_len(bytes)
                .unwrap();
            let loopdev = sh(&["losetup", "--find", "--show", image.to_str().unwrap()])
                .trim()
                .to_string();
            std::fs::remove_file(&image).unwrap();
            let fs = Mounted { dir, loopdev };
            sh(&[mkfs, "-q", &fs.loopdev]);
            sh(&["mount", &fs.loopdev, fs.dir.to_str().unwrap()]);
            fs
        }

        fn path(&self, rel: &str) -> String {
            self.dir.join(rel).to_str().unwrap().to_string()
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.dir).status();
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.loopdev])
                .status();
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    /// A real subvolume with qgroups: the level-0 qgroup's referenced bytes, as
    /// `btrfs qgroup show` prints them; a reflinked copy is counted once, where a
    /// walk counts it twice.
    #[test]
    fn a_btrfs_subvolume_reads_its_qgroup() {
        let fs = Mounted::btrfs("btrfs");
        // Before qgroups: a subvolume, but nothing to read.
        sh(&["btrfs", "-q", "subvolume", "create", &fs.path("drive")]);
        let err = read(Path::new(&fs.path("drive"))).unwrap_err();
        assert!(err.contains("not enabled"), "{err}");
        sh(&["btrfs", "quota", "enable", &fs.path("")]);
        sh(&[
            "dd",
            "if=/dev/urandom",
            &format!("of={}", fs.path("drive/data")),
            "bs=1M",
            "count=8",
            "status=none",
        ]);
        sh(&[
            "cp",
            "--reflink=always",
            &fs.path("drive/data"),
            &fs.path("drive/copy"),
        ]);
        std::fs::create_dir(fs.path("drive/plain")).unwrap();
        sh(&["btrfs", "filesystem", "sync", &fs.path("")]);
        let id: u64 = sh(&["btrfs", "inspect-internal", "rootid", &fs.path("drive")])
            .trim()
            .parse()
            .unwrap();
        let shown = sh(&["btrfs", "qgroup", "show", "--raw", "-r", &fs.path("")]);
        let rfer: u64 = shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("0/{id}")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no qgroup 0/{id} in {shown}"))
            .parse()
            .unwrap();
        let q = read(Path::new(&fs.path("drive"))).unwrap();
        assert_eq!(q.source, Source::BtrfsQgroup(id));
        assert_eq!(q.bytes, rfer);
        assert!(
            (8 << 20..12 << 20).contains(&q.bytes),
            "{q:?}: the copy is shared"
        );
        // Not a subvolume root, or not a subvolume at all: walked.
        let err = read(Path::new(&fs.path("drive/plain"))).unwrap_err();
        assert!(err.contains("not the root of a subvolume"), "{err}");
        // The top-level subvolume (5) is a subvolume root too.
        let top = read(Path::new(&fs.path(""))).unwrap();
        assert_eq!(top.source, Source::BtrfsQgroup(5));
        // Without CAP_SYS_ADMIN the quota tree stays closed: walked, and why.
        let path = fs.path("drive");
        let err = std::thread::spawn(move || {
            caps::drop(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_ADMIN,
            )
            .unwrap();
            read(Path::new(&path)).unwrap_err()
        })
        .join()
        .unwrap();
        assert!(err.contains("needs CAP_SYS_ADMIN"), "{err}");
    }

    /// An XFS project tree (project id and inherit flag set as xfs_quota's
    /// `project -s` sets them): found, and quotactl_fd asked. Where the kernel has
    /// no quota support, or the filesystem is mounted without prjquota, that is
    /// a reason to walk, never a number.
    #[test]
    fn an_xfs_project_tree_is_found_and_asked_about() {
        let fs = Mounted::new("xfs", "mkfs.xfs", 320 << 20);
        std::fs::create_dir(fs.path("drive")).unwrap();
        let err = read(Path::new(&fs.path("drive"))).unwrap_err();
        assert!(err.contains("no project id"), "{err}");
        sh(&["xfs_io", "-c", "chproj 4242", &fs.path("drive")]);
        let err = read(Path::new(&fs.path("drive"))).unwrap_err();
        assert!(err.contains("without the inherit flag"), "{err}");
        sh(&["xfs_io", "-c", "chattr +P", &fs.path("drive")]);
        let err = read(Path::new(&fs.path("drive"))).unwrap_err();
        assert!(
            err.contains("project id 4242, but this kernel has no quota support")
                || err.contains("project id 4242, but project quotas are off"),
            "{err}"
        );
    }

    /// What this machine's own filesystem answers: a plain directory has project
    /// id 0 (or no project ids at all), so it is walked, and says why.
    #[test]
    fn a_plain_directory_has_no_quota_and_says_why() {
        let dir = std::env::temp_dir().join(format!("ucloud-du-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = read(&dir).unwrap_err();
        assert!(
            err.contains("no project id")
                || err.contains("neither qgroups nor project ids")
                || err.contains("not the root of a subvolume"),
            "{err}"
        );
        std::fs::remove_dir(&dir).unwrap();
        assert!(read(&dir).unwrap_err().contains("cannot open the base"));
    }

    /// quotactl_fd itself, on this machine's root filesystem: whatever the kernel
    /// says (no quota support, quotas off, no record), it is an error the drive
    /// falls back from, never a number.
    #[test]
    fn quotactl_fd_on_a_filesystem_without_project_quotas_is_an_error() {
        let root = openat(
            AT_FDCWD,
            "/",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut q = sys::FsDiskQuota([0; sys::FS_DISK_QUOTA_SIZE]);
        let got = sys::project_quota(root.as_fd(), 4242, &mut q);
        assert!(
            matches!(
                got,
                Err(Errno::ENOSYS | Errno::ESRCH | Errno::ENOENT | Errno::EINVAL)
            ),
            "{got:?}"
        );
    }
}
