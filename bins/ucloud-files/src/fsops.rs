//! File system primitives on `(directory fd, name)` pairs: recursive copy and
//! remove that never follow a link, no-replace renames, and the journal that makes
//! a bulk request one transaction as far as the file system allows.
//!
//! How a bulk request stays whole: every change is recorded as a step that can be
//! undone (a created entry is removed again, a moved one moved back). What cannot
//! be undone, the removal of data, is put off until every item succeeded: a
//! replaced entry is first renamed aside (`.ucloud-im-replaced-*`), a deleted one
//! into the drive's trash (`Trash/.ucloud-im-deleting-*`), and only the commit
//! removes them. A failure rolls the steps back in reverse order.

use crate::conflict::{self, Policy};
use crate::error::Error;
use crate::tree::{self, Kind};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat2, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, FileStat, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};
use std::os::fd::{AsFd, OwnedFd};

/// Prefix of the names this plugin gives its own transient entries. They are
/// hidden, and their names say what they are if an interrupted call leaves one.
pub const TRANSIENT: &str = ".ucloud-im-";

pub fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW
}

pub fn lstat(dir: &impl AsFd, name: &str, shown: &str) -> Result<FileStat, Error> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| Error::from_errno(e, shown))
}

pub fn open_subdir(dir: &impl AsFd, name: &str, shown: &str) -> Result<OwnedFd, Error> {
    openat(dir, name, dir_flags(), Mode::empty()).map_err(|e| match e {
        Errno::ENOTDIR if is_link(dir, name) => Error::from_errno(Errno::ELOOP, shown),
        e => Error::from_errno(e, shown),
    })
}

fn is_link(dir: &impl AsFd, name: &str) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| Kind::of(&st) == Kind::Link)
}

pub fn dup(fd: &OwnedFd) -> Result<OwnedFd, Error> {
    fd.try_clone()
        .map_err(|e| Error::Internal(format!("cannot duplicate a descriptor: {e}")))
}

/// A transient name unique to this process: `.ucloud-im-<what>-<pid>-<n>-<name>`,
/// cut to fit NAME_MAX.
pub fn transient(what: &str, name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut s = format!("{TRANSIENT}{what}-{}-{n}-", std::process::id());
    for c in name.chars() {
        if s.len() + c.len_utf8() > crate::path::MAX_NAME {
            break;
        }
        s.push(c);
    }
    s
}

/// `rename` that never replaces: EEXIST if `to` exists.
pub fn rename_noreplace(
    from_dir: &impl AsFd,
    from: &str,
    to_dir: &impl AsFd,
    to: &str,
) -> Result<(), Errno> {
    renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE)
}

/// Removes `name` in `dir` and everything below it, without following links.
/// An entry that is already gone counts as removed.
pub fn remove_tree(dir: &impl AsFd, name: &str, shown: &str) -> Result<(), Error> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::from_errno(e, shown)),
    };
    if Kind::of(&st) == Kind::Directory {
        let sub = open_subdir(dir, name, shown)?;
        let mut d = Dir::from_fd(dup(&sub)?).map_err(|e| Error::from_errno(e, shown))?;
        let mut names = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(|e| Error::from_errno(e, shown))?;
            let b = entry.file_name().to_bytes();
            if b != b"." && b != b".." {
                names.push(entry.file_name().to_owned());
            }
        }
        for child in names {
            let child_shown = format!("{shown}/{}", child.to_string_lossy());
            remove_entry(&sub, &child, &child_shown)?;
        }
        match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::from_errno(e, shown)),
        }
    } else {
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::from_errno(e, shown)),
        }
    }
}

/// Like `remove_tree` for a name that may not be UTF-8 (found inside a tree).
fn remove_entry(dir: &OwnedFd, name: &std::ffi::CStr, shown: &str) -> Result<(), Error> {
    match name.to_str() {
        Ok(n) => remove_tree(dir, n, shown),
        Err(_) => {
            let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Error::from_errno(e, shown))?;
            if Kind::of(&st) == Kind::Directory {
                return Err(Error::BadRequest(format!(
                    "{shown} holds a directory whose name is not UTF-8; remove it on the system itself"
                )));
            }
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(|e| Error::from_errno(e, shown))
        }
    }
}

/// Copies `src_dir/src` to `dst_dir/dst` (which must not exist), recursively.
/// Links are copied as links, never followed; modes (without set-id bits) and
/// modification times are kept. Devices, sockets and pipes are refused.
pub fn copy_tree(
    src_dir: &impl AsFd,
    src: &str,
    dst_dir: &impl AsFd,
    dst: &str,
    shown: &str,
) -> Result<(), Error> {
    let st = lstat(src_dir, src, shown)?;
    let mode = Mode::from_bits_truncate((st.st_mode & 0o777) as _);
    let times = [
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    ];
    match tree::Kind::of(&st) {
        Kind::Directory => {
            let from = open_subdir(src_dir, src, shown)?;
            mkdirat(dst_dir, dst, crate::drive::NEW_DIR)
                .map_err(|e| Error::from_errno(e, shown))?;
            let to = open_subdir(dst_dir, dst, shown)?;
            let listing = tree::list(dup(&from)?, shown)?;
            for name in listing.names {
                copy_tree(&from, &name, &to, &name, &format!("{shown}/{name}"))?;
            }
            fchmod(&to, mode).map_err(|e| Error::from_errno(e, shown))?;
            futimens(&to, &times[0], &times[1]).map_err(|e| Error::from_errno(e, shown))?;
        }
        Kind::Link => {
            let target = readlinkat(src_dir, src).map_err(|e| Error::from_errno(e, shown))?;
            symlinkat(target.as_os_str(), dst_dir, dst).map_err(|e| Error::from_errno(e, shown))?;
        }
        Kind::File => {
            if st.st_mode & nix::sys::stat::SFlag::S_IFMT.bits()
                != nix::sys::stat::SFlag::S_IFREG.bits()
            {
                return Err(Error::BadRequest(format!(
                    "{shown} is a device, socket or pipe, which cannot be copied"
                )));
            }
            let from = openat(
                src_dir,
                src,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::from_errno(e, shown))?;
            let to = openat(
                dst_dir,
                dst,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                crate::drive::NEW_FILE,
            )
            .map_err(|e| Error::from_errno(e, shown))?;
            let mut from = std::fs::File::from(from);
            let mut to = std::fs::File::from(to);
            // std uses copy_file_range here: no bytes pass through this process.
            std::io::copy(&mut from, &mut to).map_err(|e| {
                Error::from_errno(
                    Errno::from_raw(e.raw_os_error().unwrap_or(libc_eio())),
                    shown,
                )
            })?;
            fchmod(&to, mode).map_err(|e| Error::from_errno(e, shown))?;
            futimens(&to, &times[0], &times[1]).map_err(|e| Error::from_errno(e, shown))?;
        }
    }
    Ok(())
}

fn libc_eio() -> i32 {
    Errno::EIO as i32
}

/// One undoable change.
enum Step {
    /// An entry this request made: undo removes it.
    Created { dir: OwnedFd, name: String },
    /// An entry moved: undo moves it back.
    Moved {
        from_dir: OwnedFd,
        from: String,
        to_dir: OwnedFd,
        to: String,
    },
    /// An entry renamed aside in its directory, to be removed at commit (a replaced
    /// or deleted entry): undo renames it back.
    Aside {
        dir: OwnedFd,
        name: String,
        aside: String,
    },
    /// An entry to remove at commit only (the source of a cross-device move).
    RemoveAtCommit { dir: OwnedFd, name: String },
}

#[derive(Default)]
pub struct Journal {
    steps: Vec<Step>,
}

impl Journal {
    pub fn created(&mut self, dir: &OwnedFd, name: &str) -> Result<(), Error> {
        self.steps.push(Step::Created {
            dir: dup(dir)?,
            name: name.into(),
        });
        Ok(())
    }

    pub fn moved(
        &mut self,
        from_dir: &OwnedFd,
        from: &str,
        to_dir: &OwnedFd,
        to: &str,
    ) -> Result<(), Error> {
        self.steps.push(Step::Moved {
            from_dir: dup(from_dir)?,
            from: from.into(),
            to_dir: dup(to_dir)?,
            to: to.into(),
        });
        Ok(())
    }

    pub fn remove_at_commit(&mut self, dir: &OwnedFd, name: &str) -> Result<(), Error> {
        self.steps.push(Step::RemoveAtCommit {
            dir: dup(dir)?,
            name: name.into(),
        });
        Ok(())
    }

    /// Renames `dir/name` aside, to be removed at commit or put back on rollback.
    pub fn set_aside(&mut self, dir: &OwnedFd, name: &str, shown: &str) -> Result<(), Error> {
        let aside = transient("replaced", name);
        rename_noreplace(dir, name, dir, &aside).map_err(|e| Error::from_errno(e, shown))?;
        self.steps.push(Step::Aside {
            dir: dup(dir)?,
            name: name.into(),
            aside,
        });
        Ok(())
    }

    /// Undoes every step, newest first. Returns what could not be undone.
    pub fn rollback(self) -> Vec<String> {
        let mut problems = Vec::new();
        for step in self.steps.into_iter().rev() {
            let result = match &step {
                Step::Created { dir, name } => {
                    remove_tree(dir, name, name).map_err(|e| e.to_string())
                }
                Step::Moved {
                    from_dir,
                    from,
                    to_dir,
                    to,
                } => rename_noreplace(to_dir, to, from_dir, from)
                    .map_err(|e| format!("cannot move {to} back to {from}: {}", e.desc())),
                Step::Aside { dir, name, aside } => rename_noreplace(dir, aside, dir, name)
                    .map_err(|e| format!("cannot put {name} back: {}", e.desc())),
                Step::RemoveAtCommit { .. } => Ok(()),
            };
            if let Err(p) = result {
                problems.push(p);
            }
        }
        problems
    }

    /// Removes what was set aside. Runs after every item succeeded; a failure here
    /// leaves a hidden `.ucloud-im-*` entry, never a half-done visible tree.
    pub fn commit(self) -> Result<(), Error> {
        for step in self.steps {
            match step {
                Step::Aside { dir, aside, .. } => remove_tree(&dir, &aside, &aside)?,
                Step::RemoveAtCommit { dir, name } => remove_tree(&dir, &name, &name)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Moves `src_dir/src` to the name `want` in `dst_dir` by rename, obeying `policy`
/// for files and for folders without merging (the caller merges). Returns the name
/// it got. `EXDEV` is returned as is, for the caller to copy instead.
pub fn place(
    journal: &mut Journal,
    src_dir: &OwnedFd,
    src: &str,
    dst_dir: &OwnedFd,
    want: &str,
    policy: Policy,
    shown: &str,
) -> Result<String, PlaceError> {
    loop {
        let name = match policy {
            Policy::Reject | Policy::Replace => want.to_string(),
            Policy::Rename | Policy::MergeRename => conflict::free_name(dst_dir, want)?,
        };
        if policy == Policy::Replace && conflict::exists(dst_dir, &name) {
            journal.set_aside(dst_dir, &name, shown)?;
        }
        match rename_noreplace(src_dir, src, dst_dir, &name) {
            Ok(()) => return Ok(name),
            // Someone took the free name in the meantime: look again.
            Err(Errno::EEXIST) if matches!(policy, Policy::Rename | Policy::MergeRename) => {
                continue
            }
            Err(Errno::EEXIST) => {
                return Err(PlaceError::Other(Error::Conflict(format!(
                    "{shown} already exists (conflictPolicy {})",
                    policy.name()
                ))))
            }
            Err(Errno::EXDEV) => return Err(PlaceError::CrossDevice),
            Err(e) => return Err(PlaceError::Other(Error::from_errno(e, shown))),
        }
    }
}

pub enum PlaceError {
    CrossDevice,
    Other(Error),
}

impl From<Error> for PlaceError {
    fn from(e: Error) -> Self {
        PlaceError::Other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "files-fsops-{tag}-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn open(p: &std::path::Path) -> OwnedFd {
        std::fs::File::open(p).unwrap().into()
    }

    #[test]
    fn copy_and_remove_trees_without_following_links() {
        let base = scratch("copy");
        std::fs::create_dir_all(base.join("src/sub")).unwrap();
        std::fs::write(base.join("src/sub/f"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("src/link")).unwrap();
        let d = open(&base);
        copy_tree(&d, "src", &d, "dst", "/1/src").unwrap();
        assert_eq!(std::fs::read(base.join("dst/sub/f")).unwrap(), b"hello");
        let link = std::fs::read_link(base.join("dst/link")).unwrap();
        assert_eq!(link, std::path::Path::new("/etc/passwd"));
        remove_tree(&d, "dst", "/1/dst").unwrap();
        assert!(!base.join("dst").exists());
        assert!(
            std::path::Path::new("/etc/passwd").exists(),
            "the link's target stays"
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn rollback_undoes_in_reverse_and_commit_removes_the_set_aside() {
        let base = scratch("journal");
        std::fs::write(base.join("old"), "old").unwrap();
        std::fs::write(base.join("new"), "new").unwrap();
        let d = open(&base);
        let mut j = Journal::default();
        let got = place(&mut j, &d, "new", &d, "old", Policy::Replace, "/1/old")
            .ok()
            .unwrap();
        assert_eq!(got, "old");
        j.moved(&d, "new", &d, &got).unwrap();
        assert_eq!(std::fs::read(base.join("old")).unwrap(), b"new");
        assert!(j.rollback().is_empty());
        assert_eq!(std::fs::read(base.join("old")).unwrap(), b"old");
        assert_eq!(std::fs::read(base.join("new")).unwrap(), b"new");

        let mut j = Journal::default();
        place(&mut j, &d, "new", &d, "old", Policy::Replace, "/1/old")
            .ok()
            .unwrap();
        j.commit().unwrap();
        let names: Vec<_> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["old"]);
        assert_eq!(std::fs::read(base.join("old")).unwrap(), b"new");

        std::fs::write(base.join("x"), "x").unwrap();
        let mut j = Journal::default();
        assert!(matches!(
            place(&mut j, &d, "x", &d, "old", Policy::Reject, "/1/old"),
            Err(PlaceError::Other(Error::Conflict(_)))
        ));
        let got = place(&mut j, &d, "x", &d, "old", Policy::Rename, "/1/old")
            .ok()
            .unwrap();
        assert_eq!(got, "old(1)");
        std::fs::remove_dir_all(base).unwrap();
    }
}
