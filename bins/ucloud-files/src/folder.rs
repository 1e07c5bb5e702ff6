//! Folder uploads: `files.createUpload` items of type FOLDER, and their data channel,
//! the WEBSOCKET_V2 protocol of UCloud's web client (its `Files/Uploader.tsx`, and
//! the server half in UCloud's own module, `im2/pkg/controller/upload`).
//!
//! The client's messages are binary: a one-byte opcode, then big-endian fields.
//!
//! | opcode | client → server                                   | server → client  |
//! |--------|---------------------------------------------------|------------------|
//! | 0 OK   |                                                   | `u32 id`: send it|
//! | 2 CHUNK| `u32 id`, then the rest of the message is data    |                  |
//! | 3 SKIP | `u32 id`: the client cannot read that file        | `u32 id`: have it|
//! | 4 LIST | entries to the end of the message: `u32 id, u64 size, u64 modifiedAt (ms), u32 length, UTF-8 path` | |
//! | 5 DONE |                                                   | `u32 count` of files dealt with |
//! | 6 CLOSE| the client is finished                            |                  |
//!
//! OK, SKIP and DONE may repeat in one message, each with its opcode; a listing
//! takes its whole message (opcode once). The gateway relays the messages over the
//! plugin's stdin and stdout, each as `u32 length` (big-endian) and the bytes; see
//! ucloud-files(8).
//!
//! The folder's own conflict policy is applied by `create`, which claims the folder
//! (made, merged into, or a free name under RENAME) so that every connection of the
//! upload writes into the same one. A file of the tree is announced in a listing;
//! one that exists with the announced size and a modification time within a minute
//! of the announced one is answered SKIP (UCloud's rule, which is what lets the
//! web client resume: a new connection announces the tree again and sends only
//! what is missing). Every other one is answered OK, and its data goes into a
//! hidden partial file next to the target. A file whose bytes are all there joins
//! a batch; a batch is made durable and then named: the drive's file system is
//! synced (`syncfs`), each partial file is renamed to its name (an existing file
//! is replaced atomically, or under MERGE_RENAME the new one takes a free name),
//! the file system is synced again, and only then the DONE count grows. A batch
//! ends at BATCH files or BATCH_BYTES, or as soon as the client has nothing more
//! in flight.
//!
//! Refused, with the connection closed and the stream's unfinished work removed
//! (its partial files, the directories it made that stayed empty): a path that is
//! empty, absolute, or has an empty, `.`, `..`, over-long or NUL-holding component
//! or a name this plugin uses for its own partial files; an id or a path announced
//! twice; a file deeper than `folder_upload_max_depth` folders, a folder with more
//! than `folder_upload_max_width` entries, more than `folder_upload_max_files`
//! files (site.conf); data past the announced size; data for a file never
//! announced or answered SKIP; an unknown opcode or a message cut short. A stream
//! that ends with files short of their size (a break, or a size that lied) keeps
//! the files it finished and removes the rest: that is the resume point.

use crate::conflict::{self, Policy};
use crate::error::Error;
use crate::fsops;
use crate::resolve::{self, Ctx};
use crate::session;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, futimens, mkdirat, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fsync, syncfs, unlinkat, UnlinkatFlags};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

pub const OK: u8 = 0;
pub const CHUNK: u8 = 2;
pub const SKIP: u8 = 3;
pub const LISTING: u8 = 4;
pub const COMPLETED: u8 = 5;
pub const CLOSE: u8 = 6;

/// Files per durable batch: under the web client's 256 files in flight, so that
/// it never waits for a count that waits for it.
const BATCH: usize = 192;
/// Bytes per durable batch.
const BATCH_BYTES: u64 = 64 << 20;
/// The largest message the gateway passes (a chunk is 16 MB in the web client).
const MAX_MESSAGE: usize = 64 << 20;
/// How long a batch waits for more of the client's files before it is synced.
const GATHER_MS: u8 = 3;
/// Directory descriptors kept open between files.
const DIR_CACHE: usize = 512;
/// Modification times this close count as the same (UCloud's rule).
const SAME_TIME_MS: i64 = 60_000;

/// The site's limits on one upload's tree (site.conf; the gateway passes them in
/// the request as `folderLimits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub depth: usize,
    pub width: usize,
    pub files: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        depth: 32,
        width: 10_000,
        files: 1_000_000,
    };

    fn of(request: &Value) -> Limits {
        let l = request.get("folderLimits");
        let get = |k: &str, d: usize| {
            l.and_then(|l| l.get(k))
                .and_then(Value::as_u64)
                .map_or(d, |n| n as usize)
        };
        Limits {
            depth: get("depth", Limits::DEFAULT.depth),
            width: get("width", Limits::DEFAULT.width),
            files: get("files", Limits::DEFAULT.files),
        }
    }
}

// --- files.createUpload ------------------------------------------------------

/// A FOLDER item of `files.createUpload`: claims the folder under the policy and
/// returns the session item and the answer (WEBSOCKET_V2, whatever the client
/// offered: the web client uploads folders over nothing else).
pub fn create_item(
    ctx: &Ctx,
    item: &Value,
    n: usize,
    token: &session::Token,
    what: &str,
) -> Result<(Value, Value), Error> {
    let id = resolve::text(item, "id", what)?;
    let policy = Policy::of(item)?;
    let loc = ctx.resolve(id)?;
    let (dir, want) = loc.open_parent()?;
    let (name, made) = claim(&dir, want, policy, &loc.shown())?;
    let path = loc
        .parent()
        .map(|p| p.child(&name).shown())
        .unwrap_or_default();
    let endpoint = session::endpoint(
        "upload",
        &format!("item={n}&protocol=WEBSOCKET_V2&token={}", token.raw),
    )?;
    Ok((
        json!({"path": path, "type": "FOLDER", "conflictPolicy": policy.name(), "made": made}),
        json!({"endpoint": wss(&endpoint),
            "protocol": "WEBSOCKET_V2", "token": token.raw}),
    ))
}

/// The link as a WebSocket URL (`https` becomes `wss`, `http` becomes `ws`).
fn wss(url: &str) -> String {
    match url.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some(("http", rest)) => format!("ws://{rest}"),
        _ => url.to_string(),
    }
}

/// Makes the folder, or finds the one to merge into: REJECT refuses an existing
/// name, RENAME takes a free one, REPLACE and MERGE_RENAME merge into an existing
/// folder (files inside follow the policy). Returns the name and whether it was made.
fn claim(dir: &OwnedFd, want: &str, policy: Policy, shown: &str) -> Result<(String, bool), Error> {
    loop {
        let name = match policy {
            Policy::Rename => conflict::free_name(dir, want)?,
            _ => want.to_string(),
        };
        match mkdirat(dir, name.as_str(), crate::drive::NEW_DIR) {
            Ok(()) => {
                fsync(dir).map_err(|e| Error::from_errno(e, shown))?;
                return Ok((name, true));
            }
            Err(Errno::EEXIST) if policy == Policy::Rename => continue,
            Err(Errno::EEXIST) if policy == Policy::Reject => {
                return Err(Error::Conflict(format!(
                    "{shown} already exists (conflictPolicy REJECT)"
                )))
            }
            Err(Errno::EEXIST) => {
                let st = fsops::lstat(dir, &name, shown)?;
                if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFDIR.bits() {
                    return Err(Error::Conflict(format!(
                        "{shown} exists and is not a folder; a folder cannot be merged into it"
                    )));
                }
                return Ok((name, false));
            }
            Err(e) => return Err(Error::from_errno(e, shown)),
        }
    }
}

// --- the protocol ------------------------------------------------------------

/// A file as the client announces it.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: u32,
    pub size: u64,
    pub modified: i64,
    pub path: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Listing(Vec<Entry>),
    Chunk(u32, &'a [u8]),
    Skip(u32),
    Close,
}

fn refuse(why: impl Into<String>) -> Error {
    Error::BadRequest(why.into())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(refuse(format!("the message is cut short in {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
}

/// One client message: what it says, in order.
pub fn parse(message: &[u8]) -> Result<Vec<Message<'_>>, Error> {
    let mut c = Cursor(message);
    let mut out = Vec::new();
    while !c.0.is_empty() {
        match c.take(1, "the opcode")?[0] {
            LISTING => {
                let mut entries = Vec::new();
                while !c.0.is_empty() {
                    let id = c.u32("a listing's file id")?;
                    let size = c.u64("a listing's size")?;
                    let modified = c.u64("a listing's modification time")? as i64;
                    let len = c.u32("a listing's path length")? as usize;
                    let path = c.take(len, "a listing's path")?;
                    let path = std::str::from_utf8(path)
                        .map_err(|_| refuse(format!("file {id}: the path is not UTF-8")))?;
                    entries.push(Entry {
                        id,
                        size,
                        modified,
                        path: path.to_string(),
                    });
                }
                out.push(Message::Listing(entries));
            }
            CHUNK => {
                let id = c.u32("a chunk's file id")?;
                out.push(Message::Chunk(id, c.0));
                c.0 = &[];
            }
            SKIP => out.push(Message::Skip(c.u32("a skip's file id")?)),
            CLOSE => out.push(Message::Close),
            op => {
                return Err(refuse(format!(
                    "opcode {op} is not one a client sends (2 chunk, 3 skip, 4 listing, 6 close)"
                )))
            }
        }
    }
    Ok(out)
}

/// A listing's path, relative to the folder: its components, each a plain name.
/// Nothing is normalised: whatever could mean something else on disk is refused.
pub fn components<'a>(path: &'a str, limits: &Limits) -> Result<Vec<&'a str>, Error> {
    // The reason first: a WebSocket close reason holds 123 bytes.
    let bad = |why: &str| Error::BadPath(format!("{why}: {:?}", short(path)));
    if path.is_empty() {
        return Err(bad("an empty path"));
    }
    if path.len() > crate::path::MAX_PATH {
        return Err(bad("longer than 4096 bytes"));
    }
    if path.contains('\0') {
        return Err(bad("holds a NUL byte"));
    }
    if path.starts_with('/') {
        return Err(bad("an absolute path; paths are relative to the folder"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err(bad("an empty name (a / too many)")),
            "." | ".." => return Err(bad("a . or .. component")),
            p if p.len() > crate::path::MAX_NAME => return Err(bad("a name over 255 bytes")),
            p if p.starts_with(fsops::TRANSIENT) => {
                return Err(bad("a name this provider keeps for its partial files"))
            }
            _ => {}
        }
    }
    if parts.len() - 1 > limits.depth {
        return Err(bad(&format!(
            "{} folders deep, more than this site's {} (folder_upload_max_depth)",
            parts.len() - 1,
            limits.depth
        )));
    }
    Ok(parts)
}

fn short(s: &str) -> String {
    let mut t: String = s.chars().take(80).collect();
    if t.len() < s.len() {
        t.push_str("...");
    }
    t
}

// --- the data channel --------------------------------------------------------

enum State {
    /// Answered OK, no data yet.
    Announced,
    /// Data arriving in the partial file.
    Open(std::fs::File, String),
    /// All bytes there, waiting for its batch.
    Complete(std::fs::File, String),
    /// Named and durable, or skipped: dealt with.
    Done,
}

struct FileUp {
    dir: String,
    name: String,
    size: u64,
    modified: i64,
    got: u64,
    state: State,
}

struct Upload {
    root: OwnedFd,
    shown: String,
    policy: Policy,
    limits: Limits,
    /// Open directories by their path in the folder ("" is the folder).
    dirs: HashMap<String, OwnedFd>,
    /// Directories this connection made, parents first.
    made: Vec<String>,
    files: HashMap<u32, FileUp>,
    paths: HashSet<String>,
    /// Names in each directory of the tree as announced (the width).
    children: HashMap<String, HashSet<String>>,
    pending: Vec<u32>,
    pending_bytes: u64,
    /// Files dealt with (named or skipped): the DONE count.
    processed: u32,
    replies: Vec<u8>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Upload {
    fn shown_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.shown)
    }

    /// The directory `rel` of the tree, made (0700, as the user) when `create` is
    /// set; `None` when it does not exist and may not be made.
    fn dir(&mut self, rel: &str, create: bool) -> Result<Option<&OwnedFd>, Error> {
        if !self.dirs.contains_key(rel) {
            let (parent, name) = match rel.rsplit_once('/') {
                Some((p, n)) => (p.to_string(), n.to_string()),
                None => (String::new(), rel.to_string()),
            };
            let fd = if rel.is_empty() {
                fsops::dup(&self.root)?
            } else {
                let shown = self.shown_of(rel);
                let Some(up) = self.dir(&parent, create)? else {
                    return Ok(None);
                };
                let up = fsops::dup(up)?;
                match fsops::open_subdir(&up, &name, &shown) {
                    Ok(fd) => fd,
                    Err(Error::NotFound(_)) if create => {
                        match mkdirat(&up, name.as_str(), crate::drive::NEW_DIR) {
                            Ok(()) => self.made.push(rel.to_string()),
                            Err(Errno::EEXIST) => {}
                            Err(e) => return Err(Error::from_errno(e, &shown)),
                        }
                        fsops::open_subdir(&up, &name, &shown)?
                    }
                    Err(Error::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
            };
            if self.dirs.len() >= DIR_CACHE {
                self.dirs.clear();
            }
            self.dirs.insert(rel.to_string(), fd);
        }
        Ok(self.dirs.get(rel))
    }

    fn reply(&mut self, op: u8, n: u32) {
        self.replies.push(op);
        self.replies.extend_from_slice(&n.to_be_bytes());
    }

    /// A listing: checked whole before any of it is answered.
    fn listing(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        let limits = self.limits;
        for e in &entries {
            if self.files.len() >= limits.files {
                return Err(refuse(format!(
                    "more than this site's {} files in one upload (folder_upload_max_files)",
                    limits.files
                )));
            }
            let parts = components(&e.path, &limits)?;
            if !self.paths.insert(e.path.clone()) {
                return Err(Error::BadPath(format!(
                    "a path announced twice: {:?}",
                    short(&e.path)
                )));
            }
            let mut dir = String::new();
            for part in &parts {
                let names = self.children.entry(dir.clone()).or_default();
                if names.insert(part.to_string()) && names.len() > limits.width {
                    return Err(Error::BadPath(format!(
                        "more than this site's {} entries in one folder (folder_upload_max_width): {:?}",
                        limits.width,
                        short(&join(&dir, "")),
                    )));
                }
                dir = join(&dir, part);
            }
            let (dir, name) = match e.path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), e.path.clone()),
            };
            let up = FileUp {
                dir,
                name,
                size: e.size,
                modified: e.modified,
                got: 0,
                state: State::Announced,
            };
            if self.files.insert(e.id, up).is_some() {
                return Err(refuse(format!("file id {} is announced twice", e.id)));
            }
        }
        let before = self.processed;
        for e in &entries {
            if self.have(e.id)? {
                self.files.get_mut(&e.id).expect("announced").state = State::Done;
                self.processed += 1;
                self.reply(SKIP, e.id);
            } else {
                self.reply(OK, e.id);
            }
        }
        if self.processed != before {
            self.reply(COMPLETED, self.processed);
        }
        Ok(())
    }

    /// Whether the file is there already: a regular file of the announced size and
    /// (within a minute) modification time.
    fn have(&mut self, id: u32) -> Result<bool, Error> {
        let f = &self.files[&id];
        let (dir, name, size, modified) = (f.dir.clone(), f.name.clone(), f.size, f.modified);
        let Some(d) = self.dir(&dir, false)? else {
            return Ok(false);
        };
        let Ok(st) = fstatat(d, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return Ok(false);
        };
        let mtime = st.st_mtime.saturating_mul(1000) + st.st_mtime_nsec / 1_000_000;
        Ok(st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits()
            && st.st_size as u64 == size
            && (mtime - modified).abs() < SAME_TIME_MS)
    }

    fn chunk(&mut self, id: u32, data: &[u8]) -> Result<(), Error> {
        let Some(f) = self.files.get(&id) else {
            return Err(refuse(format!(
                "data for file id {id}, which was never announced"
            )));
        };
        let rel = join(&f.dir, &f.name);
        let shown = self.shown_of(&rel);
        if matches!(f.state, State::Done | State::Complete(..)) {
            return Err(refuse(format!(
                "data after the file was complete or skipped ({} bytes announced): {shown}",
                f.size
            )));
        }
        if f.got + data.len() as u64 > f.size {
            return Err(refuse(format!(
                "more data than the {} bytes announced: {shown}",
                f.size
            )));
        }
        if matches!(f.state, State::Announced) {
            let dir = f.dir.clone();
            let partial = fsops::transient("part", &f.name);
            let d = self.dir(&dir, true)?.expect("made when missing");
            let fd = openat(
                d,
                partial.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                crate::drive::NEW_FILE,
            )
            .map_err(|e| Error::from_errno(e, &shown))?;
            self.files.get_mut(&id).expect("announced").state =
                State::Open(std::fs::File::from(fd), partial);
        }
        let f = self.files.get_mut(&id).expect("announced");
        let State::Open(file, _) = &f.state else {
            unreachable!("opened above")
        };
        file.write_all_at(data, f.got).map_err(|e| {
            Error::from_errno(Errno::from_raw(e.raw_os_error().unwrap_or(5)), &shown)
        })?;
        f.got += data.len() as u64;
        if f.got == f.size {
            let State::Open(file, partial) = std::mem::replace(&mut f.state, State::Done) else {
                unreachable!("open")
            };
            f.state = State::Complete(file, partial);
            self.pending_bytes += f.size;
            self.pending.push(id);
        }
        Ok(())
    }

    /// The client could not read a file: what came of it goes, and it counts as
    /// dealt with.
    fn skip(&mut self, id: u32) -> Result<(), Error> {
        let Some(f) = self.files.get_mut(&id) else {
            return Err(refuse(format!(
                "a skip of file id {id}, which was never announced"
            )));
        };
        match std::mem::replace(&mut f.state, State::Done) {
            State::Done => return Ok(()),
            State::Open(_, partial) | State::Complete(_, partial) => {
                let dir = f.dir.clone();
                self.pending.retain(|p| *p != id);
                if let Some(d) = self.dir(&dir, false)? {
                    let _ = unlinkat(d, partial.as_str(), UnlinkatFlags::NoRemoveDir);
                }
            }
            State::Announced => {}
        }
        self.processed += 1;
        self.reply(COMPLETED, self.processed);
        Ok(())
    }

    /// Makes the batch durable and names its files: the data first, then the
    /// renames, then the names. Each step is one `syncfs` of the drive's file
    /// system (what `sync` does, for that file system alone): one journal commit
    /// for the whole batch, where a sync per file would cost one each.
    fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        for id in &batch {
            let f = &self.files[id];
            if let (State::Complete(file, _), Some(t)) = (&f.state, mtime(f.modified)) {
                let _ = futimens(file, &t, &t);
            }
        }
        syncfs(&self.root).map_err(|e| Error::from_errno(e, &self.shown))?;
        for id in &batch {
            let f = self.files.get_mut(id).expect("pending");
            let State::Complete(_, partial) = std::mem::replace(&mut f.state, State::Done) else {
                continue;
            };
            let (dir, name) = (f.dir.clone(), f.name.clone());
            let shown = self.shown_of(&join(&dir, &name));
            let d = fsops::dup(self.dir(&dir, true)?.expect("made"))?;
            let merge = self.policy == Policy::MergeRename;
            if let Err(e) = place(&d, &partial, &name, merge, &shown) {
                let _ = unlinkat(&d, partial.as_str(), UnlinkatFlags::NoRemoveDir);
                return Err(e);
            }
        }
        syncfs(&self.root).map_err(|e| Error::from_errno(e, &self.shown))?;
        self.processed += batch.len() as u32;
        self.reply(COMPLETED, self.processed);
        Ok(())
    }

    /// Removes what this connection left unfinished: partial files, then the
    /// directories it made that are empty. Returns the files cut short.
    fn clean_up(&mut self) -> Vec<String> {
        let mut short = Vec::new();
        let ids: Vec<u32> = self.files.keys().copied().collect();
        for id in ids {
            let f = self.files.get_mut(&id).expect("listed");
            let rel = join(&f.dir, &f.name);
            match std::mem::replace(&mut f.state, State::Done) {
                State::Open(_, partial) | State::Complete(_, partial) => {
                    short.push(format!("{rel} ({} of {} bytes)", f.got, f.size));
                    let dir = f.dir.clone();
                    if let Ok(Some(d)) = self.dir(&dir, false) {
                        let _ = unlinkat(d, partial.as_str(), UnlinkatFlags::NoRemoveDir);
                    }
                }
                State::Announced => {}
                State::Done => {}
            }
        }
        let made = std::mem::take(&mut self.made);
        self.dirs.clear();
        for rel in made.iter().rev() {
            let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
            if let Ok(Some(d)) = self.dir(parent, false) {
                let _ = unlinkat(d, name, UnlinkatFlags::RemoveDir);
            }
        }
        short.sort();
        short
    }
}

/// Renames the finished partial file to `name`: a file there is replaced in one
/// atomic rename (under MERGE_RENAME the new file takes a free name instead);
/// anything else there (a folder, a link) is never replaced, the file takes a
/// free name.
fn place(dir: &OwnedFd, partial: &str, name: &str, merge: bool, shown: &str) -> Result<(), Error> {
    loop {
        let want = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => name.to_string(),
            Ok(st) if !merge && st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits() => {
                return renameat(dir, partial, dir, name).map_err(|e| Error::from_errno(e, shown))
            }
            Ok(_) => conflict::free_name(dir, name)?,
            Err(e) => return Err(Error::from_errno(e, shown)),
        };
        match fsops::rename_noreplace(dir, partial, dir, &want) {
            Ok(()) => return Ok(()),
            // Made meanwhile: look again.
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(Error::from_errno(e, shown)),
        }
    }
}

fn mtime(ms: i64) -> Option<TimeSpec> {
    // Anything before 1970 or past the year 9999 is no real modification time.
    (0..253_402_300_800_000)
        .contains(&ms)
        .then(|| TimeSpec::new(ms / 1000, (ms % 1000) * 1_000_000))
}

/// Reads the gateway's frames from stdin.
struct Input<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
}

impl<R: Read + AsFd> Input<R> {
    /// Whether a frame can be read within `ms` milliseconds.
    fn ready(&self, ms: u8) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let mut fds = [PollFd::new(
            self.reader.get_ref().as_fd(),
            PollFlags::POLLIN,
        )];
        !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(0))
    }

    /// The next message; `None` at the end of the stream.
    fn next(&mut self) -> Result<Option<&[u8]>, Error> {
        let gone = |e: std::io::Error| Error::Internal(format!("reading the upload: {e}"));
        if self.reader.fill_buf().map_err(gone)?.is_empty() {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(gone)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(refuse(format!(
                "a message of {len} bytes; at most {MAX_MESSAGE}"
            )));
        }
        self.buf.resize(len, 0);
        self.reader.read_exact(&mut self.buf).map_err(gone)?;
        Ok(Some(&self.buf))
    }
}

fn send(out: &mut impl Write, message: &[u8]) -> Result<(), Error> {
    out.write_all(&(message.len() as u32).to_be_bytes())
        .and_then(|()| out.write_all(message))
        .and_then(|()| out.flush())
        .map_err(|e| Error::Internal(format!("the gateway stopped reading: {e}")))
}

/// The data channel of a FOLDER item (`files.upload` with protocol WEBSOCKET_V2).
pub fn serve(ctx: &Ctx, request: &Value) -> Result<(), Error> {
    let token = session::token("files.upload", &ctx.user)?;
    let session = session::read(&token)?;
    let (_, item) = session::item(&session, request)?;
    if item.get("type").and_then(Value::as_str) != Some("FOLDER") {
        return Err(refuse(
            "this upload link is for a file: use WEBSOCKET_V1 or CHUNKED, not WEBSOCKET_V2",
        ));
    }
    let id = resolve::text(item, "path", "the transfer session")?;
    let policy = Policy::of(item)?;
    let loc = ctx.resolve(id)?;
    let shown = loc.shown();
    let (parent, name) = loc.open_parent()?;
    // A folder removed since (or by a refused stream) is made again: the link claims it.
    let root = match fsops::open_subdir(&parent, name, &shown) {
        Ok(fd) => fd,
        Err(Error::NotFound(_)) => {
            match mkdirat(&parent, name, crate::drive::NEW_DIR) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::from_errno(e, &shown)),
            }
            fsops::open_subdir(&parent, name, &shown)?
        }
        Err(e) => return Err(e),
    };
    let mut up = Upload {
        root,
        shown,
        policy,
        limits: Limits::of(request),
        dirs: HashMap::new(),
        made: Vec::new(),
        files: HashMap::new(),
        paths: HashSet::new(),
        children: HashMap::new(),
        pending: Vec::new(),
        pending_bytes: 0,
        processed: 0,
        replies: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    // The session is found: the gateway may accept the WebSocket now.
    out.write_all(b"ready\n")
        .and_then(|()| out.flush())
        .map_err(|e| Error::Internal(format!("the gateway stopped reading: {e}")))?;
    let mut input = Input {
        reader: BufReader::with_capacity(1 << 20, std::io::stdin()),
        buf: Vec::new(),
    };
    let result = run(&mut up, &mut input, &mut out);
    let short = up.clean_up();
    if made_and_empty(item, &parent, name) {
        let _ = unlinkat(&parent, name, UnlinkatFlags::RemoveDir);
    }
    result?;
    if !short.is_empty() {
        return Err(refuse(format!(
            "{} file(s) ended short of their size and were removed (upload again to resume): {}",
            short.len(),
            short.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// Whether the folder was made by this upload and nothing came into it.
fn made_and_empty(item: &Value, parent: &OwnedFd, name: &str) -> bool {
    item.get("made").and_then(Value::as_bool) == Some(true)
        && fsops::open_subdir(parent, name, name)
            .and_then(|fd| crate::tree::list(fd, name))
            .is_ok_and(|l| l.names.is_empty())
}

fn run<R: Read + AsFd>(
    up: &mut Upload,
    input: &mut Input<R>,
    out: &mut impl Write,
) -> Result<(), Error> {
    loop {
        // Before waiting for the client: the batch is made durable when nothing more
        // comes for a moment (the client's window of files is spent, or the
        // stream paused), so that a client waiting for its count gets it, while
        // the pieces of one window still make one batch.
        if !up.pending.is_empty() && !input.ready(GATHER_MS) {
            up.flush()?;
        }
        if !up.replies.is_empty() {
            send(out, &std::mem::take(&mut up.replies))?;
        }
        let Some(message) = input.next()? else {
            return up.flush();
        };
        for m in parse(message)? {
            match m {
                Message::Listing(entries) => up.listing(entries)?,
                Message::Chunk(id, data) => up.chunk(id, data)?,
                Message::Skip(id) => up.skip(id)?,
                Message::Close => {
                    up.flush()?;
                    if !up.replies.is_empty() {
                        send(out, &std::mem::take(&mut up.replies))?;
                    }
                    return Ok(());
                }
            }
        }
        if up.pending.len() >= BATCH || up.pending_bytes >= BATCH_BYTES {
            up.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(entries: &[(u32, u64, &str)]) -> Vec<u8> {
        let mut m = vec![LISTING];
        for (id, size, path) in entries {
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
            m.extend_from_slice(&(path.len() as u32).to_be_bytes());
            m.extend_from_slice(path.as_bytes());
        }
        m
    }

    #[test]
    fn messages_parse_as_the_web_client_writes_them() {
        let m = listing(&[(0, 5, "a.txt"), (1, 0, "sub/b")]);
        let got = parse(&m).unwrap();
        assert_eq!(
            got,
            vec![Message::Listing(vec![
                Entry {
                    id: 0,
                    size: 5,
                    modified: 1_700_000_000_000,
                    path: "a.txt".into()
                },
                Entry {
                    id: 1,
                    size: 0,
                    modified: 1_700_000_000_000,
                    path: "sub/b".into()
                },
            ])]
        );
        assert_eq!(
            parse(&[CHUNK, 0, 0, 0, 7, b'h', b'i']).unwrap(),
            vec![Message::Chunk(7, b"hi")]
        );
        assert_eq!(
            parse(&[CHUNK, 0, 0, 0, 7]).unwrap(),
            vec![Message::Chunk(7, b"")]
        );
        assert_eq!(
            parse(&[SKIP, 0, 0, 0, 1, SKIP, 0, 0, 0, 2, CLOSE]).unwrap(),
            vec![Message::Skip(1), Message::Skip(2), Message::Close]
        );
    }

    #[test]
    fn broken_messages_are_refused() {
        let mut cut = listing(&[(0, 5, "a.txt")]);
        cut.pop();
        for bad in [
            cut,
            vec![CHUNK, 0, 0],
            vec![SKIP, 0],
            vec![OK, 0, 0, 0, 0],
            vec![COMPLETED, 0, 0, 0, 0],
            vec![1],
            vec![99],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
        let mut not_utf8 = listing(&[(0, 5, "ab")]);
        *not_utf8.last_mut().unwrap() = 0xff;
        assert!(parse(&not_utf8).is_err());
    }

    #[test]
    fn paths_stay_inside_the_folder() {
        let l = Limits::DEFAULT;
        assert_eq!(components("a/b/c.txt", &l).unwrap(), ["a", "b", "c.txt"]);
        assert_eq!(components("..x/.y", &l).unwrap(), ["..x", ".y"]);
        let long = "x".repeat(256);
        let hidden = format!("{}part-1-2-x", fsops::TRANSIENT);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\0b",
            long.as_str(),
            hidden.as_str(),
        ] {
            assert!(components(bad, &l).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn depth_is_limited() {
        let l = Limits {
            depth: 2,
            width: 10,
            files: 10,
        };
        assert!(components("a/b/c", &l).is_ok());
        assert!(components("a/b/c/d", &l).is_err());
    }

    #[test]
    fn a_finished_file_replaces_a_file_and_never_a_folder() {
        let top = std::env::temp_dir().join(format!("ucloud-files-place-{}", std::process::id()));
        std::fs::create_dir(&top).unwrap();
        let dir: OwnedFd = std::fs::File::open(&top).unwrap().into();
        let part = |data: &str| {
            std::fs::write(top.join(".part"), data).unwrap();
            ".part"
        };
        std::fs::write(top.join("a"), "old").unwrap();
        place(&dir, part("new"), "a", false, "a").unwrap();
        assert_eq!(std::fs::read_to_string(top.join("a")).unwrap(), "new");
        place(&dir, part("merged"), "a", true, "a").unwrap();
        assert_eq!(std::fs::read_to_string(top.join("a")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(top.join("a(1)")).unwrap(), "merged");
        std::fs::create_dir(top.join("d")).unwrap();
        place(&dir, part("file"), "d", false, "d").unwrap();
        assert!(top.join("d").is_dir());
        assert_eq!(std::fs::read_to_string(top.join("d(1)")).unwrap(), "file");
        place(&dir, part("fresh"), "n", false, "n").unwrap();
        assert_eq!(std::fs::read_to_string(top.join("n")).unwrap(), "fresh");
        assert!(!top.join(".part").exists());
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn modification_times_are_sane_or_left_alone() {
        assert_eq!(mtime(1_500), Some(TimeSpec::new(1, 500_000_000)));
        assert_eq!(mtime(-1), None);
        assert_eq!(mtime(i64::MAX), None);
    }

    #[test]
    fn limits_come_from_the_request() {
        assert_eq!(Limits::of(&json!({})), Limits::DEFAULT);
        let l = Limits::of(&json!({"folderLimits": {"depth": 3, "width": 4, "files": 5}}));
        assert_eq!(
            l,
            Limits {
                depth: 3,
                width: 4,
                files: 5
            }
        );
    }
}
