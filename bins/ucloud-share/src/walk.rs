//! The recipient's ACL entries on a shared folder, set or removed by the sharer
//! herself: this runs in a child that has dropped to her uid, gid and groups
//! (privilege.rs), so it can change only what she owns and could change herself.
//!
//! The tree is hers to shape while the walk runs, so it is read as hostile: the
//! folder is opened component by component without following a symlink; below
//! it every entry is reached with openat(parent, name, O_NOFOLLOW) and checked
//! again on its descriptor (type, device, inode, owner) before anything is
//! written; symlinks, FIFOs, devices and sockets are skipped, never opened; only
//! the sharer's own entries are changed; mount points are not crossed.
//!
//! Directories of other owners are not entered, with one exception. In an edit
//! share the recipient can make directories of his own in the folder and move
//! the sharer's files into them, where they keep his entry. So a revoke, and a
//! read grant (which may be the downgrade of an edit share), also enter the
//! directories the recipient owns (his uid only, never a third owner's) to reach
//! the sharer's entries inside; they leave his own entries alone.
//!
//! Everything is bounded. A grant looks at no more than `Limits::entries`
//! entries and `Limits::depth` levels, and hitting a bound is an error that says
//! how far it got. A revoke must not be held up by a large tree or by one bad
//! entry: it counts only the entries it changes toward `entries` (so each run
//! gets further than the last), passes over a level deeper than `depth`, and
//! counts an entry it cannot change as skipped (and as an error) and goes on.
//! In the recipient's directories, which he can fill at will, the entries looked
//! at have a budget of their own (`entries` again), past which the rest of them
//! is skipped, and an entry that fails is passed over on a grant too. The time
//! is bounded by the parent, which kills this child at its deadline.
//!
//! A revoke removes the recipient's named entries from both ACLs. It leaves the
//! sharer's own default entry (`user:<sharer>:rwx`, which a grant adds so that
//! what the recipient creates stays reachable by her): it gives her nothing
//! beyond her own tree, and another share of the same tree may still need it.
//! The copies of that entry on what she created meanwhile go (on her own
//! entries a named entry for her is dead weight: the owner entry decides).

use crate::acl::{self, Acl, R, W, X};
use crate::answer::{Error, Report};
use crate::{path, sys};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// On a grant, entries looked at, the folder included; on a revoke,
    /// entries changed. Also the budget of entries looked at in the recipient's
    /// own directories.
    pub entries: u64,
    /// Directory levels entered below the folder. The walk holds one descriptor
    /// per level: keep it well below the child's RLIMIT_NOFILE (privilege.rs).
    pub depth: usize,
}

#[derive(Clone, Copy)]
enum Change {
    Grant { recipient: u32, write: bool },
    Revoke { recipient: u32 },
}

impl Change {
    fn recipient(self) -> u32 {
        match self {
            Change::Grant { recipient, .. } | Change::Revoke { recipient } => recipient,
        }
    }

    fn revoke(self) -> bool {
        matches!(self, Change::Revoke { .. })
    }

    /// Whether the recipient's own directories are entered: not on an edit
    /// grant, where the sharer's entries in them already have his entry.
    fn enters_recipients(self) -> bool {
        !matches!(self, Change::Grant { write: true, .. })
    }
}

/// Gives `recipient` read (`write`: read and write) access to the folder and
/// everything in it the running uid owns, now and (default ACLs) later.
pub fn grant(folder: &str, recipient: u32, write: bool, limits: Limits) -> Result<Report, Error> {
    walk(folder, Change::Grant { recipient, write }, limits)
}

/// Removes the named entries of `recipient` from the folder and everything in
/// it the running uid owns.
pub fn revoke(folder: &str, recipient: u32, limits: Limits) -> Result<Report, Error> {
    walk(folder, Change::Revoke { recipient }, limits)
}

/// A subdirectory listed and not yet entered.
struct Sub {
    name: CString,
    /// The inode it was listed with.
    ino: u64,
    /// The sharer, or the recipient.
    owner: u32,
}

struct Level {
    fd: OwnedFd,
    path: PathBuf,
    pending: Vec<Sub>,
    /// In a directory of the recipient's, or below one.
    foreign: bool,
}

struct Walker {
    change: Change,
    limits: Limits,
    me: u32,
    dev: u64,
    /// Entries looked at outside the recipient's directories (counted on a grant).
    seen: u64,
    /// Entries whose ACLs were written (counted on a revoke).
    changed: u64,
    /// Entries looked at in the recipient's directories.
    foreign: u64,
    report: Report,
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

fn walk(folder: &str, change: Change, limits: Limits) -> Result<Report, Error> {
    let me = nix::unistd::geteuid().as_raw();
    let recipient = change.recipient();
    if me == 0 {
        return Err(Error::Refused(
            "the walk runs as the sharer, never as root".into(),
        ));
    }
    if recipient == 0 || recipient == u32::MAX || recipient == me {
        return Err(Error::Refused(format!(
            "uid {recipient} cannot be the recipient of uid {me}'s share"
        )));
    }
    let path = PathBuf::from(folder);
    let fd = path::open_dir(&path, OFlag::O_RDONLY)?;
    let st = fstat(&fd).map_err(|e| Error::sys(folder, e))?;
    if st.st_uid != me {
        return Err(Error::Refused(format!(
            "{folder} is owned by uid {}, not by the sharer (uid {me})",
            st.st_uid
        )));
    }
    let mut w = Walker {
        change,
        limits,
        me,
        dev: st.st_dev,
        seen: 0,
        changed: 0,
        foreign: 0,
        report: Report {
            folder_dev: st.st_dev,
            folder_ino: st.st_ino,
            ..Report::default()
        },
    };
    w.look(false)?;
    w.dir(&fd, &st, &path, false)?;
    let pending = w.list(&fd, &path, false)?;
    let mut levels = vec![Level {
        fd,
        path,
        pending,
        foreign: false,
    }];
    while let Some(top) = levels.last_mut() {
        let Some(sub) = top.pending.pop() else {
            levels.pop();
            continue;
        };
        let path = top.path.join(OsStr::from_bytes(sub.name.as_bytes()));
        let foreign = top.foreign || sub.owner != w.me;
        if levels.len() > w.limits.depth {
            match w.tolerant(foreign) {
                true => {
                    w.report.skipped += 1;
                    continue;
                }
                false => return Err(w.limit("depth")),
            }
        }
        if foreign && w.foreign >= w.limits.entries {
            w.report.skipped += 1;
            continue;
        }
        let parent = &levels.last().expect("just looked at").fd;
        if let Some(fd) = w.enter(parent, &sub, &path, foreign)? {
            let pending = w.list(&fd, &path, foreign)?;
            levels.push(Level {
                fd,
                path,
                pending,
                foreign,
            });
        }
    }
    Ok(w.report)
}

impl Walker {
    fn limit(&self, which: &str) -> Error {
        Error::Limit {
            limit: which.into(),
            report: self.report,
        }
    }

    /// Whether an entry that fails is passed over rather than the walk ended.
    fn tolerant(&self, foreign: bool) -> bool {
        self.change.revoke() || foreign
    }

    /// Ends the walk with `e`, or counts it and goes on (see `tolerant`). A
    /// limit or a timeout always ends it.
    fn failed(&mut self, foreign: bool, e: Error) -> Result<(), Error> {
        match e {
            Error::Failed(_) | Error::Refused(_) if self.tolerant(foreign) => {
                self.report.skipped += 1;
                self.report.errors += 1;
                Ok(())
            }
            e => Err(e),
        }
    }

    /// Accounts for one entry looked at: an error at a grant's entries limit;
    /// false once the recipient's directories have used up their budget.
    fn look(&mut self, foreign: bool) -> Result<bool, Error> {
        if foreign {
            self.foreign += 1;
            return Ok(self.foreign <= self.limits.entries);
        }
        if self.change.revoke() {
            return Ok(true);
        }
        self.seen += 1;
        match self.seen > self.limits.entries {
            true => Err(self.limit("entries")),
            false => Ok(true),
        }
    }

    /// Accounts for one entry written: an error at a revoke's entries limit.
    fn wrote(&mut self) -> Result<(), Error> {
        self.changed += 1;
        match self.change.revoke() && self.changed > self.limits.entries {
            true => Err(self.limit("entries")),
            false => Ok(()),
        }
    }

    /// Brings the ACLs of every regular file of the directory `fd` to the wanted
    /// state and returns its subdirectories to enter.
    fn list(&mut self, fd: &OwnedFd, path: &Path, foreign: bool) -> Result<Vec<Sub>, Error> {
        // The listing gets its own descriptor: `fd` stays free for the *at calls.
        let mut dir = match nix::unistd::dup(fd).and_then(Dir::from_fd) {
            Ok(dir) => dir,
            Err(e) => {
                self.failed(foreign, Error::sys(path.display(), e))?;
                return Ok(Vec::new());
            }
        };
        let recipient = self.change.recipient();
        let mut subdirs = Vec::new();
        for entry in dir.iter() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.failed(foreign, Error::sys(path.display(), e))?;
                    break;
                }
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if !self.look(foreign)? {
                // The recipient's budget is spent: the rest of his is left.
                self.report.skipped += 1;
                break;
            }
            let st = match fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_dev == self.dev => st,
                // Gone, in a directory she can list but not search, or a mount.
                Ok(_) | Err(Errno::ENOENT | Errno::EACCES) => {
                    self.report.skipped += 1;
                    continue;
                }
                Err(e) => {
                    self.failed(foreign, Error::sys(at(path, name).display(), e))?;
                    continue;
                }
            };
            let owner = st.st_uid;
            match kind(&st) {
                SFlag::S_IFDIR if owner == self.me => subdirs.push(Sub {
                    name: name.to_owned(),
                    ino: st.st_ino,
                    owner,
                }),
                SFlag::S_IFDIR if owner == recipient && self.change.enters_recipients() => subdirs
                    .push(Sub {
                        name: name.to_owned(),
                        ino: st.st_ino,
                        owner,
                    }),
                SFlag::S_IFREG if owner == self.me => {
                    self.file(fd, name, st.st_ino, &at(path, name), foreign)?
                }
                _ => self.report.skipped += 1,
            }
        }
        Ok(subdirs)
    }

    /// Opens `name` in `parent` with `flags` and checks on the descriptor that it
    /// is still the entry that was listed (not swapped since: type, inode, owner,
    /// device). None when it is not, or cannot be opened: it is skipped.
    fn open(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        flags: OFlag,
        want: (SFlag, u64, u32),
        path: &Path,
    ) -> Result<Option<(OwnedFd, FileStat)>, Error> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        match openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => {
                if let Ok(st) = fstat(&fd) {
                    if st.st_dev == self.dev && (kind(&st), st.st_ino, st.st_uid) == want {
                        return Ok(Some((fd, st)));
                    }
                }
            }
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM)) => {
                return Err(Error::sys(path.display(), e))
            }
            Err(_) => {}
        }
        self.report.skipped += 1;
        Ok(None)
    }

    fn file(
        &mut self,
        parent: &OwnedFd,
        name: &CStr,
        ino: u64,
        path: &Path,
        foreign: bool,
    ) -> Result<(), Error> {
        // O_NONBLOCK: should a FIFO be put in the file's place after the listing,
        // opening it returns at once (and the check on the descriptor skips it).
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
        let want = (SFlag::S_IFREG, ino, self.me);
        let Some((fd, st)) = self.open(parent, name, flags, want, path)? else {
            return Ok(());
        };
        match self.edit(&fd, acl::ACCESS, &st, false, path) {
            Ok(wrote) => {
                self.report.files += 1;
                if wrote {
                    self.wrote()?;
                }
                Ok(())
            }
            Err(e) => self.failed(foreign, e),
        }
    }

    /// Opens the listed subdirectory `sub` and, if it is the sharer's, brings its
    /// ACLs to the wanted state. The recipient's own are entered, not changed.
    fn enter(
        &mut self,
        parent: &OwnedFd,
        sub: &Sub,
        path: &Path,
        foreign: bool,
    ) -> Result<Option<OwnedFd>, Error> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let want = (SFlag::S_IFDIR, sub.ino, sub.owner);
        let Some((fd, st)) = self.open(parent, &sub.name, flags, want, path)? else {
            return Ok(None);
        };
        match sub.owner == self.me {
            true => self.dir(&fd, &st, path, foreign)?,
            false => self.report.skipped += 1,
        }
        Ok(Some(fd))
    }

    fn dir(
        &mut self,
        fd: &OwnedFd,
        st: &FileStat,
        path: &Path,
        foreign: bool,
    ) -> Result<(), Error> {
        // The default ACL's base comes from the mode as it was before the access
        // ACL's mask changed its group bits. One failing does not stop the other.
        let access = self.edit(fd, acl::ACCESS, st, true, path);
        let default = self.edit(fd, acl::DEFAULT, st, true, path);
        match (access, default) {
            (Ok(a), Ok(d)) => {
                self.report.dirs += 1;
                if a || d {
                    self.wrote()?;
                }
                Ok(())
            }
            (Err(e), _) | (_, Err(e)) => self.failed(foreign, e),
        }
    }

    /// Reads the ACL `attr` of `fd`, makes the change, and writes it back if it
    /// differs; whether it wrote. An entry without that ACL has nothing to
    /// revoke; on a grant its ACL starts from its mode.
    fn edit(
        &self,
        fd: &OwnedFd,
        attr: &CStr,
        st: &FileStat,
        dir: bool,
        path: &Path,
    ) -> Result<bool, Error> {
        let what = || format!("{} ({})", path.display(), attr.to_string_lossy());
        let old = sys::fgetxattr(fd, attr).map_err(|e| Error::sys(what(), e))?;
        let acl = match &old {
            Some(bytes) => {
                Acl::parse(bytes).map_err(|why| Error::Refused(format!("{}: {why}", what())))?
            }
            None if self.change.revoke() => return Ok(false),
            None => Acl::from_mode(st.st_mode),
        };
        let new = match self.change {
            Change::Grant { recipient, write } => {
                let perm = R | if write { W } else { 0 } | if dir { X } else { 0 };
                let acl = acl.with_user(recipient, perm);
                match attr == acl::DEFAULT {
                    true => acl.with_user(self.me, R | W | X),
                    false => acl,
                }
            }
            Change::Revoke { recipient } if attr == acl::DEFAULT => acl.without_user(recipient),
            // With the sharer's own entry, which her default entry put on what
            // she created meanwhile and which never decides anything on a file
            // of hers (the owner entry does).
            Change::Revoke { recipient } => acl.without_user(recipient).without_user(self.me),
        };
        let new = new.to_bytes();
        if old.as_deref() == Some(&new[..]) {
            return Ok(false);
        }
        sys::fsetxattr(fd, attr, &new).map_err(|e| Error::sys(what(), e))?;
        Ok(true)
    }
}

fn at(path: &Path, name: &CStr) -> PathBuf {
    path.join(OsStr::from_bytes(name.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn reads(path: &Path, want: &str) -> Result<(), String> {
        expect(
            read(path)? == want,
            format!("{} reads wrong", path.display()),
        )
    }

    fn writable(path: &Path) -> bool {
        fs::OpenOptions::new().append(true).open(path).is_ok()
    }

    #[test]
    fn a_read_grant_reaches_the_whole_folder_and_nothing_around_it() {
        let t = tree("read");
        let folder = t.folder_str().to_string();
        let r = as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        assert_eq!((r.dirs, r.files, r.skipped), (3, 3, 0), "{r:?}");
        let st = fs::metadata(&t.folder).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((r.folder_dev, r.folder_ino), (st.dev(), st.ino()));
        // Bob reaches the folder through a descriptor, as through the gate.
        let f = fs::File::open(&t.folder).unwrap();
        let home = fs::File::open(&t.home).unwrap();
        let direct = t.folder.join("a.txt");
        as_user_with(BOB, &[&f, &home], || {
            reads(&via(&f, "a.txt"), "a")?;
            reads(&via(&f, "sub/b.txt"), "b")?;
            reads(&via(&f, "sub/deeper/c.txt"), "c")?;
            expect(fs::read_dir(via(&f, "sub")).is_ok(), "sub lists")?;
            expect(!writable(&via(&f, "a.txt")), "a read share writes")?;
            expect(
                fs::File::create(via(&f, "new")).is_err(),
                "a read share creates",
            )?;
            // Nothing of Alice's around the folder.
            unreadable(&via(&home, ".dotfile"))?;
            unreadable(&via(&home, "sibling/s.txt"))?;
            expect(fs::read_dir(via(&home, "")).is_err(), "the home lists")?;
            unreadable(&direct)
        })
        .unwrap();
        // What Alice adds later inherits the grant.
        let later = t.folder.join("sub/later.txt");
        let newdir = t.folder.join("newdir");
        as_user(ALICE, || {
            fs::write(&later, "later").map_err(|e| e.to_string())?;
            fs::create_dir(&newdir).map_err(|e| e.to_string())?;
            fs::write(newdir.join("x.txt"), "x").map_err(|e| e.to_string())
        })
        .unwrap();
        as_user_with(BOB, &[&f], || {
            reads(&via(&f, "sub/later.txt"), "later")?;
            reads(&via(&f, "newdir/x.txt"), "x")?;
            expect(!writable(&via(&f, "sub/later.txt")), "inherited a write")
        })
        .unwrap();
        // The revoke takes it all away, and the files' ACLs are gone with Bob.
        let r = as_alice(|| revoke(&folder, BOB, WIDE)).unwrap();
        assert_eq!((r.dirs, r.files, r.skipped), (4, 5, 0), "{r:?}");
        as_user_with(BOB, &[&f], || {
            unreadable(&via(&f, "a.txt"))?;
            unreadable(&via(&f, "sub/later.txt"))?;
            expect(fs::read_dir(via(&f, "")).is_err(), "the folder lists")
        })
        .unwrap();
        assert_eq!(acl_of(&t.folder.join("a.txt"), false), None);
        assert_eq!(acl_of(&t.folder.join("sub/later.txt"), false), None);
        assert_eq!(acl_of(&t.folder, false), None);
        // The sharer's own default entry stays (see the top of this file).
        let default = acl_of(&t.folder, true).unwrap();
        assert_eq!((default.user(BOB), default.user(ALICE)), (None, Some(7)));
        // The modes are back where they were.
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).unwrap().permissions().mode() & 0o7777
        };
        assert_eq!(mode(&t.folder), 0o750);
        assert_eq!(mode(&t.folder.join("sub/b.txt")), 0o600);
        assert_eq!(mode(&t.folder.join("sub/deeper/c.txt")), 0o640);
    }

    #[test]
    fn an_edit_grant_writes_and_what_the_recipient_creates_stays_the_sharers_to_reach() {
        let t = tree("edit");
        let folder = t.folder_str().to_string();
        as_alice(|| grant(&folder, BOB, true, WIDE)).unwrap();
        let f = fs::File::open(&t.folder).unwrap();
        as_user_with(BOB, &[&f], || {
            expect(writable(&via(&f, "sub/b.txt")), "b.txt not writable")?;
            fs::write(via(&f, "bob.txt"), "bob").map_err(|e| e.to_string())?;
            fs::create_dir(via(&f, "bobdir")).map_err(|e| e.to_string())?;
            fs::write(via(&f, "bobdir/in.txt"), "in").map_err(|e| e.to_string())
        })
        .unwrap();
        let (bob_file, bob_dir) = (t.folder.join("bob.txt"), t.folder.join("bobdir"));
        as_user(ALICE, || {
            reads(&bob_file, "bob")?;
            reads(&bob_dir.join("in.txt"), "in")?;
            expect(writable(&bob_file), "Alice cannot write Bob's file")
        })
        .unwrap();
        // A second grant (a reconciliation) leaves Bob's entries alone.
        let before = acl_of(&bob_file, false);
        let r = as_alice(|| grant(&folder, BOB, true, WIDE)).unwrap();
        assert_eq!((r.dirs, r.files, r.skipped), (3, 3, 2), "{r:?}");
        assert_eq!(acl_of(&bob_file, false), before);
        as_alice(|| revoke(&folder, BOB, WIDE)).unwrap();
        as_user_with(BOB, &[&f], || {
            unreadable(&via(&f, "a.txt"))?;
            unreadable(&via(&f, "bob.txt"))
        })
        .unwrap();
    }

    #[test]
    fn what_the_recipient_moved_into_his_own_directories_is_downgraded_and_revoked() {
        let t = tree("moved");
        let folder = t.folder_str().to_string();
        as_alice(|| grant(&folder, BOB, true, WIDE)).unwrap();
        // Bob hides Alice's file and directory in directories of his own, and
        // Carol (another recipient, say) has a directory he put one in too.
        mkdir(&t.folder.join("carols"), CAROL, 0o777);
        let f = fs::File::open(&t.folder).unwrap();
        as_user_with(BOB, &[&f], || {
            let run = |r: std::io::Result<()>| r.map_err(|e| e.to_string());
            run(fs::create_dir_all(via(&f, "bobdir/nested")))?;
            run(fs::rename(
                via(&f, "sub/b.txt"),
                via(&f, "bobdir/nested/b.txt"),
            ))?;
            run(fs::rename(via(&f, "sub/deeper"), via(&f, "bobdir/deeper")))?;
            run(fs::rename(via(&f, "a.txt"), via(&f, "carols/a.txt")))
        })
        .unwrap();
        let moved = [
            t.folder.join("bobdir/nested/b.txt"),
            t.folder.join("bobdir/deeper"),
            t.folder.join("bobdir/deeper/c.txt"),
        ];
        for p in &moved {
            assert_eq!(acl_of(p, false).unwrap().user(BOB).map(|p| p & W), Some(W));
        }
        // The downgrade to a read share reaches them: Bob reads, no longer writes.
        let r = as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        assert_eq!((r.dirs, r.files, r.errors), (3, 2, 0), "{r:?}");
        for p in &moved {
            assert_eq!(acl_of(p, false).unwrap().user(BOB).map(|p| p & W), Some(0));
        }
        as_user_with(BOB, &[&f], || {
            reads(&via(&f, "bobdir/nested/b.txt"), "b")?;
            expect(!writable(&via(&f, "bobdir/nested/b.txt")), "b.txt writes")?;
            expect(
                fs::File::create(via(&f, "bobdir/deeper/new")).is_err(),
                "deeper takes new files",
            )
        })
        .unwrap();
        // The revoke takes Bob's entries from them; Bob's own directories and
        // Carol's are left as they are.
        let bobs = acl_of(&t.folder.join("bobdir"), false);
        let r = as_alice(|| revoke(&folder, BOB, WIDE)).unwrap();
        assert_eq!((r.dirs, r.files, r.errors), (3, 2, 0), "{r:?}");
        for p in &moved {
            assert_eq!(acl_of(p, false).and_then(|a| a.user(BOB)), None);
        }
        assert_eq!(acl_of(&t.folder.join("bobdir"), false), bobs);
        // Only Bob's: Carol's directory is not entered, so a.txt keeps his entry.
        let a = acl_of(&t.folder.join("carols/a.txt"), false).unwrap();
        assert_eq!(a.user(BOB), Some(R | W));
    }

    #[test]
    fn a_revoke_goes_past_an_entry_it_cannot_change_and_counts_only_changes() {
        let t = tree("stubborn");
        let folder = t.folder_str().to_string();
        as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        // An immutable file: its ACL cannot be written, even by its owner.
        let stuck = t.folder.join("sub/b.txt");
        struct Mutable<'a>(&'a Path);
        impl Drop for Mutable<'_> {
            fn drop(&mut self) {
                let _ = Command::new("chattr").arg("-i").arg(self.0).status();
            }
        }
        let guard = Mutable(&stuck);
        let ok = Command::new("chattr").arg("+i").arg(&stuck).status();
        assert!(ok.unwrap().success(), "chattr +i");
        let r = as_alice(|| revoke(&folder, BOB, WIDE)).unwrap();
        assert_eq!(
            (r.dirs, r.files, r.errors, r.skipped),
            (3, 2, 1, 1),
            "{r:?}"
        );
        assert_eq!(acl_of(&stuck, false).unwrap().user(BOB), Some(R));
        for p in ["", "a.txt", "sub", "sub/deeper", "sub/deeper/c.txt"] {
            let p = t.folder.join(p);
            assert_eq!(acl_of(&p, false), None, "{}", p.display());
        }
        drop(guard);
        let r = as_alice(|| revoke(&folder, BOB, WIDE)).unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(acl_of(&stuck, false), None);
        // A large tree with little left to change: entries that need nothing do
        // not count, so each run gets further, and one below the limit finishes.
        let big = t.folder.join("big");
        mkdir(&big, ALICE, 0o755);
        for i in 0..50 {
            file(&big.join(i.to_string()), ALICE, 0o644, "");
        }
        as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        let few = Limits {
            entries: 20,
            ..WIDE
        };
        let mut runs = 0;
        loop {
            runs += 1;
            match as_alice(|| revoke(&folder, BOB, few)) {
                Ok(_) => break,
                Err(Error::Limit { .. }) if runs < 5 => {}
                other => panic!("run {runs}: {other:?}"),
            }
        }
        assert_eq!(runs, 3);
        assert_eq!(acl_of(&big.join("49"), false), None);
        // Too deep for the limit: the levels below are passed over, not an error.
        as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        let shallow = Limits { depth: 1, ..WIDE };
        let r = as_alice(|| revoke(&folder, BOB, shallow)).unwrap();
        assert_eq!(r.skipped, 1, "{r:?}");
        let deep = t.folder.join("sub/deeper");
        assert_eq!(acl_of(&deep, false).unwrap().user(BOB), Some(R | X));
        assert_eq!(acl_of(&t.folder.join("sub"), false), None);
    }

    #[test]
    fn a_grant_gives_nobody_but_the_recipient_what_the_sharer_closed() {
        let t = tree("closed");
        let a = t.folder.join("a.txt");
        let sub = t.folder.join("sub");
        let setfacl = |args: &[&str], p: &Path| {
            let ok = Command::new("setfacl").args(args).arg(p).status();
            assert!(ok.unwrap().success(), "setfacl {args:?}");
        };
        // Group r--, Carol rw-, then chmod 600: the mask is ---.
        setfacl(&["-m", "g::r,u:60003:rw"], &a);
        own(&a, ALICE, 0o600);
        setfacl(&["-d", "-m", "u::rwx,g::rx,o::-,u:60003:rwx,m::-"], &sub);
        let folder = t.folder_str().to_string();
        as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        use crate::acl::Tag;
        let access = acl_of(&a, false).unwrap();
        assert_eq!(access.effective(Tag::User, BOB), Some(R));
        assert_eq!(access.effective(Tag::User, CAROL), Some(0));
        assert_eq!(access.effective(Tag::GroupObj, u32::MAX), Some(0));
        let default = acl_of(&sub, true).unwrap();
        assert_eq!(default.effective(Tag::User, BOB), Some(R | X));
        assert_eq!(default.effective(Tag::User, CAROL), Some(0));
        assert_eq!(default.effective(Tag::GroupObj, u32::MAX), Some(0));
    }

    #[test]
    fn links_fifos_other_owners_and_mounts_are_left_alone() {
        let t = tree("hostile");
        let outside = t.home.join("outside");
        mkdir(&outside, ALICE, 0o700);
        file(&outside.join("secret.txt"), ALICE, 0o600, "secret");
        symlink(outside.join("secret.txt"), t.folder.join("link")).unwrap();
        symlink(&outside, t.folder.join("dirlink")).unwrap();
        symlink("..", t.folder.join("sub/up")).unwrap();
        let fifo = t.folder.join("fifo");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        own(&fifo, ALICE, 0o644);
        file(&t.folder.join("carol.txt"), CAROL, 0o644, "carol");
        mkdir(&t.folder.join("carols"), CAROL, 0o777);
        file(
            &t.folder.join("carols/alices.txt"),
            ALICE,
            0o644,
            "in carol's dir",
        );
        let mnt = t.folder.join("mnt");
        mkdir(&mnt, ALICE, 0o755);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "ucloud-share-test"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ok.success());
        own(&mnt, ALICE, 0o755);
        let folder = t.folder_str().to_string();
        let r = as_alice(|| grant(&folder, BOB, false, WIDE)).unwrap();
        // link, dirlink, up, fifo, carol.txt, carols, mnt.
        assert_eq!((r.dirs, r.files, r.skipped), (3, 3, 7), "{r:?}");
        for untouched in [
            &outside,
            &outside.join("secret.txt"),
            &t.home,
            &t.folder.join("carol.txt"),
            &t.folder.join("carols"),
            &t.folder.join("carols/alices.txt"),
            &mnt,
        ] {
            assert_eq!(acl_of(untouched, false), None, "{}", untouched.display());
            assert_eq!(acl_of(untouched, true), None, "{}", untouched.display());
        }
        Command::new("umount").arg(&mnt).status().unwrap();
    }

    #[test]
    fn limits_stop_the_walk_and_say_which_and_how_far() {
        let t = tree("limits");
        let folder = t.folder_str().to_string();
        let depth = Limits { depth: 1, ..WIDE };
        match as_alice(|| grant(&folder, BOB, false, depth)) {
            Err(Error::Limit { limit, report }) => {
                assert_eq!(limit, "depth");
                assert_eq!(report.dirs, 2, "{report:?}");
            }
            other => panic!("{other:?}"),
        }
        let entries = Limits { entries: 3, ..WIDE };
        match as_alice(|| revoke(&folder, BOB, entries)) {
            Err(e @ Error::Limit { .. }) => {
                assert!(e.to_string().starts_with("the entries limit"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_change_nothing() {
        let t = tree("refusals");
        let folder = t.folder_str().to_string();
        let refused = |r: Result<Report, Error>, want: &str| match r {
            Err(Error::Refused(why)) => assert!(why.contains(want), "{why} / {want}"),
            other => panic!("{want}: {other:?}"),
        };
        // Root never walks a sharer's tree.
        refused(grant(&folder, BOB, false, WIDE), "never as root");
        refused(
            as_alice(|| grant(&folder, ALICE, false, WIDE)),
            "cannot be the recipient",
        );
        refused(
            as_alice(|| grant(&folder, 0, false, WIDE)),
            "cannot be the recipient",
        );
        refused(
            as_alice(|| grant("home/alice/F", BOB, false, WIDE)),
            "absolute",
        );
        // A folder of someone else's, or reached through a symlink.
        let carols = t.folder.join("carols");
        mkdir(&carols, CAROL, 0o777);
        let c = carols.to_str().unwrap().to_string();
        refused(
            as_alice(|| grant(&c, BOB, false, WIDE)),
            "owned by uid 60003",
        );
        symlink(&t.folder, t.home.join("link")).unwrap();
        let l = t.home.join("link/sub").to_str().unwrap().to_string();
        refused(as_alice(|| grant(&l, BOB, false, WIDE)), "a symlink");
        for p in [&t.folder, &t.folder.join("sub"), &carols] {
            assert_eq!(acl_of(p, false), None, "{}", p.display());
            assert_eq!(acl_of(p, true), None, "{}", p.display());
        }
    }
}
