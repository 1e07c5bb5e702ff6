//! The file calls that change a drive: createFolder, move, copy, trash, emptyTrash,
//! delete, and retrieve (stat). Bulk requests are one transaction: items run in
//! order, each change is journalled (fsops.rs), and when an item fails every earlier
//! item is undone and the call fails with the failing item's reason.

use crate::conflict::{self, Policy};
use crate::error::Error;
use crate::fsops::{self, Journal, PlaceError};
use crate::resolve::{self, Ctx, Loc};
use crate::tree::Kind;
use nix::errno::Errno;
use nix::sys::stat::mkdirat;
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::OwnedFd;

/// The folder at a drive's root that holds trashed entries.
pub const TRASH: &str = "Trash";
/// Inside the trash: one JSON file per trashed entry, saying where it came from.
pub const TRASH_INFO: &str = ".info";

/// Runs `item` for each entry of a bulk request under one journal.
fn bulk(
    request: &Value,
    mut item: impl FnMut(usize, &Value, &mut Journal) -> Result<Value, Error>,
) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    let mut journal = Journal::default();
    let mut responses = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        match item(i, it, &mut journal) {
            Ok(v) => responses.push(v),
            Err(e) => {
                let problems = journal.rollback();
                return Err(with_item(e, i, items.len(), &problems));
            }
        }
    }
    journal.commit()?;
    Ok(json!({ "responses": responses }))
}

/// Says which item failed and what became of the others.
fn with_item(e: Error, i: usize, n: usize, problems: &[String]) -> Error {
    let tail = if n == 1 {
        String::new()
    } else if problems.is_empty() {
        format!(" (item {} of {n}; the items before it were undone)", i + 1)
    } else {
        format!(
            " (item {} of {n}; undoing the items before it failed: {})",
            i + 1,
            problems.join("; ")
        )
    };
    let add = |m: String| format!("{m}{tail}");
    match e {
        Error::BadRequest(m) => Error::BadRequest(add(m)),
        Error::BadPath(m) => Error::BadPath(add(m)),
        Error::NotFound(m) => Error::NotFound(add(m)),
        Error::PermissionDenied(m) => Error::PermissionDenied(add(m)),
        Error::NotADirectory(m) => Error::NotADirectory(add(m)),
        Error::Conflict(m) => Error::Conflict(add(m)),
        Error::Unsafe(m) => Error::Unsafe(add(m)),
        Error::BadOffset(m) => Error::BadOffset(add(m)),
        Error::RangeNotSatisfiable(m) => Error::RangeNotSatisfiable(add(m)),
        Error::DiskFull(m) => Error::DiskFull(add(m)),
        Error::Unsupported(m) => Error::Unsupported(add(m)),
        Error::Misconfigured(m) => Error::Misconfigured(add(m)),
        Error::Internal(m) => Error::Internal(add(m)),
    }
}

/// One item of the answer: Go's `BulkResponse[util.Empty]` (orchestrators/files.go,
/// FilesProviderCreateFolder, Move, Copy, Trash, EmptyTrash, Delete) takes an empty
/// object; where the item landed (a RENAME's new name) is UCloud's to browse.
fn done() -> Value {
    json!({})
}

fn what(i: usize) -> String {
    format!("item {}", i + 1)
}

pub fn create_folder(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    bulk(request, |i, item, journal| {
        let loc = ctx.resolve(resolve::text(item, "id", &what(i))?)?;
        let policy = Policy::of(item)?;
        let shown = loc.shown();
        let (dir, want) = loc.open_parent()?;
        if conflict::exists(&dir, want) {
            let is_dir =
                fsops::lstat(&dir, want, &shown).map(|st| Kind::of(&st) == Kind::Directory)?;
            match policy {
                Policy::Reject => {
                    return Err(Error::Conflict(format!(
                        "{shown} already exists (conflictPolicy REJECT)"
                    )))
                }
                // The folder the caller wants is there already.
                Policy::Replace | Policy::MergeRename if is_dir => return Ok(done()),
                Policy::Replace => journal.set_aside(&dir, want, &shown)?,
                Policy::Rename | Policy::MergeRename => {}
            }
        }
        loop {
            let name = conflict::free_name(&dir, want)?;
            match mkdirat(&dir, name.as_str(), crate::drive::NEW_DIR) {
                Ok(()) => {
                    journal.created(&dir, &name)?;
                    return Ok(done());
                }
                Err(Errno::EEXIST) if policy != Policy::Reject => continue,
                Err(e) => return Err(Error::from_errno(e, &shown)),
            }
        }
    })
}

/// One side of a move or copy: the request's `oldId`/`newId`.
fn pair(ctx: &Ctx, item: &Value, i: usize) -> Result<(Loc, Loc, Policy), Error> {
    let from = ctx.resolve(resolve::text(item, "oldId", &what(i))?)?;
    let to = ctx.resolve(resolve::text(item, "newId", &what(i))?)?;
    let policy = Policy::of(item)?;
    if from.contains(&to) {
        return Err(Error::BadRequest(format!(
            "{} cannot go to {}: that is the same path or inside it",
            from.shown(),
            to.shown()
        )));
    }
    Ok((from, to, policy))
}

pub fn move_files(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    bulk(request, |i, item, journal| {
        let (from, to, policy) = pair(ctx, item, i)?;
        let (src_dir, src) = from.open_parent()?;
        let (dst_dir, want) = to.open_parent()?;
        let shown = to.shown();
        let st = fsops::lstat(&src_dir, src, &from.shown())?;
        let is_dir = Kind::of(&st) == Kind::Directory;
        if policy == Policy::MergeRename && is_dir && is_existing_dir(&dst_dir, want) {
            merge(journal, &src_dir, src, &dst_dir, want, &shown, Merge::Move)?;
            return Ok(done());
        }
        match fsops::place(journal, &src_dir, src, &dst_dir, want, policy, &shown) {
            Ok(name) => {
                journal.moved(&src_dir, src, &dst_dir, &name)?;
                Ok(done())
            }
            // Another file system (another drive): copy, and remove the source only
            // once every item succeeded.
            Err(PlaceError::CrossDevice) => {
                copy_in(
                    journal,
                    &src_dir,
                    src,
                    &dst_dir,
                    want,
                    policy,
                    &from.shown(),
                    &shown,
                )?;
                journal.remove_at_commit(&src_dir, src)?;
                Ok(done())
            }
            Err(PlaceError::Other(e)) => Err(e),
        }
    })
}

fn is_existing_dir(dir: &OwnedFd, name: &str) -> bool {
    fsops::lstat(dir, name, name).is_ok_and(|st| Kind::of(&st) == Kind::Directory)
}

/// How a merge brings entries in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Merge {
    Move,
    Copy,
}

/// MERGE_RENAME of a folder onto a folder: each entry goes in (moved or copied),
/// clashing files get a free name, clashing folders merge. A source folder moved
/// from, emptied, is removed at commit.
fn merge(
    journal: &mut Journal,
    src_dir: &OwnedFd,
    src: &str,
    dst_dir: &OwnedFd,
    dst: &str,
    shown: &str,
    how: Merge,
) -> Result<(), Error> {
    let from = fsops::open_subdir(src_dir, src, shown)?;
    let to = fsops::open_subdir(dst_dir, dst, shown)?;
    let names = crate::tree::list(fsops::dup(&from)?, shown)?.names;
    for name in names {
        let child_shown = format!("{shown}/{name}");
        if is_existing_dir(&from, &name) && is_existing_dir(&to, &name) {
            merge(journal, &from, &name, &to, &name, &child_shown, how)?;
        } else if how == Merge::Move {
            move_in(journal, &from, &name, &to, &child_shown)?;
        } else {
            copy_in(
                journal,
                &from,
                &name,
                &to,
                &name,
                Policy::Rename,
                &child_shown,
                &child_shown,
            )?;
        }
    }
    match how {
        Merge::Move => journal.remove_at_commit(src_dir, src),
        Merge::Copy => Ok(()),
    }
}

/// Moves one entry into a folder being merged into, under a free name; across
/// devices it is copied, and the original removed at commit.
fn move_in(
    journal: &mut Journal,
    from: &OwnedFd,
    name: &str,
    to: &OwnedFd,
    shown: &str,
) -> Result<(), Error> {
    match fsops::place(journal, from, name, to, name, Policy::Rename, shown) {
        Ok(got) => journal.moved(from, name, to, &got),
        Err(PlaceError::CrossDevice) => {
            copy_in(journal, from, name, to, name, Policy::Rename, shown, shown)?;
            journal.remove_at_commit(from, name)
        }
        Err(PlaceError::Other(e)) => Err(e),
    }
}

/// Copies into a hidden staging name next to the target, then renames it into
/// place: a copy that is cut short (the call's time limit) leaves a
/// `.ucloud-im-copy-*` entry, never a half-copied tree under the wanted name.
#[allow(clippy::too_many_arguments)]
fn copy_in(
    journal: &mut Journal,
    src_dir: &OwnedFd,
    src: &str,
    dst_dir: &OwnedFd,
    want: &str,
    policy: Policy,
    src_shown: &str,
    shown: &str,
) -> Result<String, Error> {
    let staging = fsops::transient("copy", want);
    if let Err(e) = fsops::copy_tree(src_dir, src, dst_dir, &staging, src_shown) {
        let _ = fsops::remove_tree(dst_dir, &staging, &staging);
        return Err(e);
    }
    match fsops::place(journal, dst_dir, &staging, dst_dir, want, policy, shown) {
        Ok(name) => {
            journal.created(dst_dir, &name)?;
            Ok(name)
        }
        Err(e) => {
            let _ = fsops::remove_tree(dst_dir, &staging, &staging);
            Err(match e {
                PlaceError::Other(e) => e,
                PlaceError::CrossDevice => Error::Internal("staging copy crossed a device".into()),
            })
        }
    }
}

pub fn copy_files(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    bulk(request, |i, item, journal| {
        let (from, to, policy) = pair(ctx, item, i)?;
        let (src_dir, src) = from.open_parent()?;
        let (dst_dir, want) = to.open_parent()?;
        let st = fsops::lstat(&src_dir, src, &from.shown())?;
        if policy == Policy::MergeRename
            && Kind::of(&st) == Kind::Directory
            && is_existing_dir(&dst_dir, want)
        {
            merge(
                journal,
                &src_dir,
                src,
                &dst_dir,
                want,
                &to.shown(),
                Merge::Copy,
            )?;
            return Ok(done());
        }
        copy_in(
            journal,
            &src_dir,
            src,
            &dst_dir,
            want,
            policy,
            &from.shown(),
            &to.shown(),
        )?;
        Ok(done())
    })
}

/// The drive's trash folder, made on first use.
fn open_trash(loc: &Loc) -> Result<(OwnedFd, OwnedFd), Error> {
    let root = loc.open_root()?;
    let shown = format!("/{}/{TRASH}", loc.drive.id);
    match mkdirat(&root, TRASH, crate::drive::NEW_DIR) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(Error::from_errno(e, &shown)),
    }
    let trash = fsops::open_subdir(&root, TRASH, &shown)?;
    match mkdirat(&trash, TRASH_INFO, crate::drive::NEW_DIR) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(Error::from_errno(e, &shown)),
    }
    let info = fsops::open_subdir(&trash, TRASH_INFO, &shown)?;
    Ok((trash, info))
}

fn in_trash(loc: &Loc) -> bool {
    loc.components.first().map(String::as_str) == Some(TRASH)
}

pub fn trash(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    bulk(request, |i, item, journal| {
        let loc = ctx.resolve(resolve::text(item, "id", &what(i))?)?;
        if in_trash(&loc) {
            return Err(Error::BadRequest(format!(
                "{} is in the trash already; delete it, or empty the trash",
                loc.shown()
            )));
        }
        let (dir, name) = loc.open_parent()?;
        fsops::lstat(&dir, name, &loc.shown())?;
        let (trash, info) = open_trash(&loc)?;
        let shown = format!("/{}/{TRASH}/{name}", loc.drive.id);
        let got = match fsops::place(journal, &dir, name, &trash, name, Policy::Rename, &shown) {
            Ok(got) => got,
            Err(PlaceError::CrossDevice) => {
                return Err(Error::BadRequest(format!(
                    "{} is on another file system than the drive's trash; delete it instead",
                    loc.shown()
                )))
            }
            Err(PlaceError::Other(e)) => return Err(e),
        };
        journal.moved(&dir, name, &trash, &got)?;
        let note = json!({"path": loc.shown(), "trashedAt": ucloud_wire::now_ms()});
        write_info(&info, &format!("{got}.json"), &note)?;
        journal.created(&info, &format!("{got}.json"))?;
        Ok(done())
    })
}

fn write_info(dir: &OwnedFd, name: &str, note: &Value) -> Result<(), Error> {
    use nix::fcntl::{openat, OFlag};
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        crate::drive::NEW_FILE,
    )
    .map_err(|e| Error::from_errno(e, name))?;
    std::fs::File::from(fd)
        .write_all(format!("{note}\n").as_bytes())
        .map_err(|e| Error::Internal(format!("cannot write the trash note {name}: {e}")))
}

/// Empties the trash named by each item (`/<drive>/Trash`). Not undoable: what was
/// removed before a failure stays removed (it was in the trash, nothing else is
/// touched).
pub fn empty_trash(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    let mut responses = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let loc = ctx.resolve(resolve::text(item, "id", &what(i))?)?;
        if loc.components.len() != 1 || !in_trash(&loc) {
            return Err(Error::BadRequest(format!(
                "{} is not a trash folder (the trash is /{}/{TRASH})",
                loc.shown(),
                loc.drive.id
            )));
        }
        let root = loc.open_root()?;
        let trash = match fsops::open_subdir(&root, TRASH, &loc.shown()) {
            Ok(fd) => fd,
            Err(Error::NotFound(_)) => {
                responses.push(done());
                continue;
            }
            Err(e) => return Err(e),
        };
        for name in crate::tree::list(fsops::dup(&trash)?, &loc.shown())?.names {
            fsops::remove_tree(&trash, &name, &format!("{}/{name}", loc.shown()))?;
        }
        responses.push(done());
    }
    Ok(json!({ "responses": responses }))
}

/// Deletes for good. First every item is renamed into the drive's trash under a
/// hidden `.ucloud-im-deleting-*` name (undoable); only when all items got there is
/// anything removed. A removal cut short leaves that hidden entry in the trash,
/// which emptyTrash clears.
pub fn delete(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    bulk(request, |i, item, journal| {
        let loc = ctx.resolve(resolve::text(item, "id", &what(i))?)?;
        let (dir, name) = loc.open_parent()?;
        let shown = loc.shown();
        fsops::lstat(&dir, name, &shown)?;
        if loc.components.len() == 1 && in_trash(&loc) {
            return Err(Error::BadRequest(format!(
                "{shown} is the trash folder; empty it with emptyTrash"
            )));
        }
        let (trash, _) = open_trash(&loc)?;
        let doomed = fsops::transient("deleting", name);
        match fsops::rename_noreplace(&dir, name, &trash, &doomed) {
            Ok(()) => {
                journal.moved(&dir, name, &trash, &doomed)?;
                journal.remove_at_commit(&trash, &doomed)?;
            }
            // A mount point inside the drive: remove in place, at commit.
            Err(Errno::EXDEV) => journal.remove_at_commit(&dir, name)?,
            Err(e) => return Err(Error::from_errno(e, &shown)),
        }
        Ok(json!({}))
    })
}

/// `files.retrieve`: one ProviderFile.
pub fn retrieve(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let r = request
        .get("retrieve")
        .or_else(|| request.get("Retrieve"))
        .ok_or_else(|| Error::BadRequest("the request has no \"retrieve\" object".into()))?;
    let loc = ctx.resolve(resolve::text(r, "id", "retrieve")?)?;
    let shown = loc.shown();
    match loc.open_parent() {
        Ok((dir, name)) => {
            let st = fsops::lstat(&dir, name, &shown)?;
            Ok(crate::browse::provider_file_at(&shown, &st))
        }
        Err(Error::BadRequest(_)) => {
            let root = loc.open_root()?;
            let st = nix::sys::stat::fstat(&root).map_err(|e| Error::from_errno(e, &shown))?;
            Ok(crate::browse::provider_file_at(&shown, &st))
        }
        Err(e) => Err(e),
    }
}
