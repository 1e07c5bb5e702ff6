//! Project drives: `<project_base>/<group>`, a directory owned by root and the
//! project's group, mode 03770 (setgid, so what members make there is the
//! group's; nothing for others). Made once, whole or not at all: under a
//! temporary name, given its owner and mode while still empty and unreachable,
//! then renamed into place without replacing anything. An existing one is only
//! looked at (never through a symbolic link) and never changed: a drive that is
//! not exactly as made is refused, so that no tree is ever re-owned.
//!
//! Each drive holds `ucloud-jobs/`, made here too: root's, the project's group,
//! mode 03770 (setgid and sticky). Members add their job folders there but can
//! never rename or remove each other's (ucloud-jobscript(8) requires it so).

use crate::plan::DriveCheck;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::os::fd::OwnedFd;

/// Sticky too: members may not rename or remove what others made at its top,
/// `ucloud-jobs` among it (a job queued in Slurm finds its folder by path).
pub const MODE: u32 = 0o3770;
pub const JOBS: &str = "ucloud-jobs";
pub const JOBS_MODE: u32 = 0o3770;

/// `project_base`, which must be a directory of `owner`'s (root on a site) that
/// nobody else may write: else someone could swap the half-made drive for a
/// directory of theirs before it is given the project's group.
fn open_base(base: &str, owner: u32) -> Result<OwnedFd, String> {
    let fd = nix::fcntl::open(
        base,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open project_base {base}: {}", e.desc()))?;
    let st = fstat(&fd).map_err(|e| format!("project_base {base}: {}", e.desc()))?;
    if st.st_uid != owner || st.st_mode & 0o022 != 0 {
        return Err(format!(
            "project_base {base} must be owned by root and writable by nobody else (it is uid {} mode {:o})",
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    Ok(fd)
}

/// Makes `ucloud-jobs` in the open drive `drive` when missing: root (`owner`), the
/// project's group, mode 03770. Whether it made it; an error when something else
/// is there (left alone).
fn jobs_dir_in(drive: &OwnedFd, gid: u32, owner: u32) -> Result<bool, String> {
    match fstatat(drive, JOBS, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let ok = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
                && st.st_uid == owner
                && st.st_gid == gid
                && st.st_mode & 0o7777 == JOBS_MODE;
            match ok {
                true => Ok(false),
                false => Err(format!(
                    "{JOBS} is there but not a directory {owner}:{gid} mode {JOBS_MODE:o} (it is {}:{} mode {:o}): left alone",
                    st.st_uid,
                    st.st_gid,
                    st.st_mode & 0o7777
                )),
            }
        }
        Err(Errno::ENOENT) => {
            mkdirat(drive, JOBS, Mode::from_bits_truncate(0o700))
                .map_err(|e| format!("cannot make {JOBS}: {}", e.desc()))?;
            let fd = openat(
                drive,
                JOBS,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("cannot open {JOBS}: {}", e.desc()))?;
            fchown(&fd, Some(Uid::from_raw(owner)), Some(Gid::from_raw(gid)))
                .map_err(|e| format!("cannot chown {JOBS}: {}", e.desc()))?;
            fchmod(&fd, Mode::from_bits_truncate(JOBS_MODE))
                .map_err(|e| format!("cannot chmod {JOBS}: {}", e.desc()))?;
            Ok(true)
        }
        Err(e) => Err(format!("cannot look at {JOBS}: {}", e.desc())),
    }
}

/// [`jobs_dir_in`] for the drive `<base>/<group>` (which [`check`] found right).
pub fn ensure_jobs_dir(base: &str, group: &str, gid: u32, owner: u32) -> Result<bool, String> {
    let dir = open_base(base, owner)?;
    let drive = openat(
        &dir,
        group,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open {base}/{group}: {}", e.desc()))?;
    let st = fstat(&drive).map_err(|e| e.desc().to_string())?;
    if let DriveCheck::Wrong(why) = judge(&st, owner, gid) {
        return Err(why);
    }
    jobs_dir_in(&drive, gid, owner).map_err(|why| format!("{base}/{group}: {why}"))
}

fn judge(st: &FileStat, owner: u32, gid: u32) -> DriveCheck {
    let kind = st.st_mode & SFlag::S_IFMT.bits();
    if kind != SFlag::S_IFDIR.bits() {
        return DriveCheck::Wrong(
            "it is not a directory (a symbolic link or a file): left alone".into(),
        );
    }
    let mode = st.st_mode & 0o7777;
    if st.st_uid != owner || st.st_gid != gid || mode != MODE {
        return DriveCheck::Wrong(format!(
            "it is {}:{} mode {mode:o}, not {owner}:{gid} mode {MODE:o}: left alone, never re-owned",
            st.st_uid, st.st_gid
        ));
    }
    DriveCheck::Ok
}

/// What `<base>/<group>` is. `owner` is root's uid (0) on a site.
pub fn check(base: &str, group: &str, gid: u32, owner: u32) -> DriveCheck {
    let dir = match open_base(base, owner) {
        Ok(d) => d,
        Err(why) => return DriveCheck::Wrong(why),
    };
    match fstatat(&dir, group, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => judge(&st, owner, gid),
        Err(Errno::ENOENT) => DriveCheck::Missing,
        Err(e) => DriveCheck::Wrong(format!("cannot look at it: {}", e.desc())),
    }
}

pub fn make(base: &str, group: &str, gid: u32, owner: u32) -> Result<(), String> {
    let dir = open_base(base, owner)?;
    let tmp = format!(".{group}.new");
    // A directory a crashed run left half made holds at most an empty ucloud-jobs:
    // rmdir removes nothing else.
    if let Ok(half) = openat(
        &dir,
        tmp.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        let _ = unlinkat(&half, JOBS, UnlinkatFlags::RemoveDir);
    }
    match unlinkat(&dir, tmp.as_str(), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(format!(
                "cannot remove the leftover {base}/{tmp}: {}",
                e.desc()
            ))
        }
    }
    mkdirat(&dir, tmp.as_str(), Mode::from_bits_truncate(0o700))
        .map_err(|e| format!("cannot make {base}/{tmp}: {}", e.desc()))?;
    let made = (|| {
        let fd = openat(
            &dir,
            tmp.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open it: {}", e.desc()))?;
        // chown first: it clears the setgid bit that chmod then sets.
        fchown(&fd, Some(Uid::from_raw(owner)), Some(Gid::from_raw(gid)))
            .map_err(|e| format!("cannot chown it: {}", e.desc()))?;
        fchmod(&fd, Mode::from_bits_truncate(MODE))
            .map_err(|e| format!("cannot chmod it: {}", e.desc()))?;
        let st = fstat(&fd).map_err(|e| e.desc().to_string())?;
        if let DriveCheck::Wrong(why) = judge(&st, owner, gid) {
            return Err(why);
        }
        jobs_dir_in(&fd, gid, owner)?;
        renameat2(
            &dir,
            tmp.as_str(),
            &dir,
            group,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            Errno::EEXIST => "something appeared there meanwhile: left alone".to_string(),
            e => format!("cannot rename it into place: {}", e.desc()),
        })
    })();
    if let Err(why) = made {
        if let Ok(half) = openat(
            &dir,
            tmp.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            let _ = unlinkat(&half, JOBS, UnlinkatFlags::RemoveDir);
        }
        let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::RemoveDir);
        return Err(format!("{base}/{group}: {why}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!(
            "ucloud-project-drive-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.to_string_lossy().into_owned()
    }

    #[test]
    fn a_drive_is_made_once_and_a_wrong_one_is_refused_untouched() {
        let base = scratch("make");
        let me = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        assert_eq!(check(&base, "ucp-a", gid, me), DriveCheck::Missing);
        // A leftover of a crashed run does not stop it.
        std::fs::create_dir(format!("{base}/.ucp-a.new")).unwrap();
        make(&base, "ucp-a", gid, me).unwrap();
        assert_eq!(check(&base, "ucp-a", gid, me), DriveCheck::Ok);
        let mode = std::fs::metadata(format!("{base}/ucp-a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, MODE);
        // With its sticky jobs folder; a drive made before that gets it later, and a
        // jobs folder someone else made is left alone and refused.
        let jobs = std::fs::metadata(format!("{base}/ucp-a/{JOBS}")).unwrap();
        assert_eq!(jobs.permissions().mode() & 0o7777, JOBS_MODE);
        std::fs::remove_dir(format!("{base}/ucp-a/{JOBS}")).unwrap();
        assert_eq!(ensure_jobs_dir(&base, "ucp-a", gid, me), Ok(true));
        assert_eq!(ensure_jobs_dir(&base, "ucp-a", gid, me), Ok(false));
        std::fs::set_permissions(
            format!("{base}/ucp-a/{JOBS}"),
            std::fs::Permissions::from_mode(0o2770),
        )
        .unwrap();
        assert!(ensure_jobs_dir(&base, "ucp-a", gid, me).is_err());
        std::fs::set_permissions(
            format!("{base}/ucp-a/{JOBS}"),
            std::fs::Permissions::from_mode(JOBS_MODE),
        )
        .unwrap();
        // A project_base others may write is refused: a drive could be swapped there.
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check(&base, "ucp-a", gid, me),
            DriveCheck::Wrong(_)
        ));
        assert!(make(&base, "ucp-z", gid, me).is_err());
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Made once: a second time is refused, and the first is still there.
        std::fs::write(format!("{base}/ucp-a/data"), b"x").unwrap();
        assert!(make(&base, "ucp-a", gid, me).is_err());
        assert!(std::path::Path::new(&format!("{base}/ucp-a/data")).exists());
        // A link, a file, another mode: refused, left as they are.
        std::os::unix::fs::symlink("/etc", format!("{base}/ucp-b")).unwrap();
        assert!(matches!(
            check(&base, "ucp-b", gid, me),
            DriveCheck::Wrong(_)
        ));
        assert!(make(&base, "ucp-b", gid, me).is_err());
        assert_eq!(
            std::fs::read_link(format!("{base}/ucp-b"))
                .unwrap()
                .to_str(),
            Some("/etc")
        );
        std::fs::create_dir(format!("{base}/ucp-c")).unwrap();
        std::fs::set_permissions(
            format!("{base}/ucp-c"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        assert!(
            matches!(check(&base, "ucp-c", gid, me), DriveCheck::Wrong(w) if w.contains("mode 777"))
        );
        assert!(matches!(
            check(&base, "ucp-a", gid + 1, me),
            DriveCheck::Wrong(_)
        ));
        assert!(matches!(
            check("/nonexistent-base", "ucp-a", gid, me),
            DriveCheck::Wrong(_)
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
