//! The one place ucloud-du needs `unsafe`: the btrfs ioctls that read a
//! subvolume's id and the quota tree, the ioctl that reads a directory's project
//! id, and quotactl_fd(2), which no safe wrapper offers. Each takes a directory
//! the caller opened and a buffer of the exact size the kernel's header gives;
//! nothing here interprets what the kernel wrote (quota.rs does, with bounds
//! checks), and nothing here writes to a filesystem.

use nix::errno::Errno;
use nix::libc;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOC(dir, type, nr, size)` of the kernel's asm-generic/ioctl.h.
const fn ioc(dir: u32, kind: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((kind as u32) << 8) | nr as u32
}
const IOC_READ: u32 = 2;
const IOC_READ_WRITE: u32 = 3;

/// Both btrfs ioctls used here take a 4096-byte argument.
pub const BTRFS_ARG_SIZE: usize = 4096;
const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_IOC_TREE_SEARCH`: `_IOWR(0x94, 17, struct btrfs_ioctl_search_args)`.
const BTRFS_IOC_TREE_SEARCH: u32 = ioc(IOC_READ_WRITE, BTRFS_IOCTL_MAGIC, 17, BTRFS_ARG_SIZE);
/// `BTRFS_IOC_INO_LOOKUP`: `_IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)`.
const BTRFS_IOC_INO_LOOKUP: u32 = ioc(IOC_READ_WRITE, BTRFS_IOCTL_MAGIC, 18, BTRFS_ARG_SIZE);

/// `struct fsxattr` of linux/fs.h: five u32 and 8 bytes of padding.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}
/// `FS_IOC_FSGETXATTR`: `_IOR('X', 31, struct fsxattr)`.
const FS_IOC_FSGETXATTR: u32 = ioc(IOC_READ, b'X', 31, std::mem::size_of::<FsXattr>());

/// The argument of both btrfs ioctls: 4096 bytes, aligned for the u64 fields at
/// its start.
#[repr(C, align(8))]
pub struct BtrfsArg(pub [u8; BTRFS_ARG_SIZE]);

fn btrfs_ioctl(dir: BorrowedFd, request: u32, arg: &mut BtrfsArg) -> Result<(), Errno> {
    // SAFETY: both requests given here are _IOWR with a size of 4096 bytes, and
    // `arg` is exactly 4096 writable bytes that live across the call (the kernel
    // copies in and out, keeping no pointer); `dir` is an open descriptor.
    let r = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            request as libc::Ioctl,
            arg.0.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    Errno::result(r).map(drop)
}

/// `BTRFS_IOC_INO_LOOKUP` with `treeid` 0 for the subvolume root `objectid` 256:
/// the kernel fills in the id of the subvolume `dir` is on. It needs no privilege
/// for that objectid.
pub fn btrfs_ino_lookup(dir: BorrowedFd, arg: &mut BtrfsArg) -> Result<(), Errno> {
    btrfs_ioctl(dir, BTRFS_IOC_INO_LOOKUP, arg)
}

/// `BTRFS_IOC_TREE_SEARCH`: the key at the start of `arg` in, the items found
/// after it out. Needs CAP_SYS_ADMIN.
pub fn btrfs_tree_search(dir: BorrowedFd, arg: &mut BtrfsArg) -> Result<(), Errno> {
    btrfs_ioctl(dir, BTRFS_IOC_TREE_SEARCH, arg)
}

/// The project id and flags (`FS_XFLAG_*`) of the inode `dir` is.
pub fn fsgetxattr(dir: BorrowedFd) -> Result<(u32, u32), Errno> {
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR is _IOR with the size of `struct fsxattr`, which
    // FsXattr is field for field (repr(C)); `x` is writable for the whole call and
    // the kernel keeps no pointer to it.
    let r = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            FS_IOC_FSGETXATTR as libc::Ioctl,
            std::ptr::from_mut(&mut x).cast::<libc::c_void>(),
        )
    };
    Errno::result(r).map(|_| (x.projid, x.xflags))
}

/// The quota type of project quotas (linux/quota.h), not in libc.
const PRJQUOTA: libc::c_int = 2;
/// `Q_XGETQUOTA` (linux/dqblk_xfs.h): `XQM_CMD(3)`. Not Q_GETQUOTA: the kernel
/// takes that one as a write (it wants the mount writable, EROFS otherwise), and
/// the unit sees every drive read-only.
const Q_XGETQUOTA: libc::c_int = (b'X' as libc::c_int) << 8 | 3;
/// `sizeof(struct fs_disk_quota)`.
pub const FS_DISK_QUOTA_SIZE: usize = 112;

/// `struct fs_disk_quota` as bytes, aligned for its u64 fields.
#[repr(C, align(8))]
pub struct FsDiskQuota(pub [u8; FS_DISK_QUOTA_SIZE]);

/// `quotactl_fd(fd, QCMD(Q_XGETQUOTA, PRJQUOTA), id, &fs_disk_quota)` on the
/// filesystem of `dir`: the project's quota record, for quota.rs to read. Linux
/// 5.14 and later, on a kernel built with quota support for that filesystem
/// (else ENOSYS). Needs CAP_SYS_ADMIN for a project id.
pub fn project_quota(dir: BorrowedFd, project: u32, out: &mut FsDiskQuota) -> Result<(), Errno> {
    // SAFETY: quotactl_fd's fourth argument for Q_XGETQUOTA points to a
    // `struct fs_disk_quota` (112 bytes in the uapi header), which `out` is in
    // size and alignment; it is writable for the whole call and the kernel keeps
    // no pointer to it. The other arguments are plain integers; `dir` is an open
    // descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            dir.as_raw_fd(),
            libc::QCMD(Q_XGETQUOTA, PRJQUOTA) as libc::c_uint,
            project as libc::c_uint,
            out.0.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        // As linux/btrfs.h and linux/fs.h expand them on x86_64 and aarch64.
        assert_eq!(BTRFS_IOC_TREE_SEARCH, 0xd000_9411);
        assert_eq!(BTRFS_IOC_INO_LOOKUP, 0xd000_9412);
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(Q_XGETQUOTA, 0x5803);
        assert_eq!(libc::QCMD(Q_XGETQUOTA, PRJQUOTA), 0x0058_0302);
    }
}
