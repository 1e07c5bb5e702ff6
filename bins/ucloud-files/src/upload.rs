//! `files.createUpload` and the data channel's `files.upload` (protocols CHUNKED
//! and WEBSOCKET_V1).
//!
//! Chunks are written into a hidden partial file next to the target,
//! `.ucloud-im-upload-<jti>-<item>`, at the offset the client names (`-1`: at the
//! end), each fdatasync'ed before it is acknowledged. The partial file is only
//! reused when it is this user's own regular file with one link, checked on the
//! opened descriptor: in a directory others may write, someone else's file under
//! that name would otherwise receive the upload. Each chunk first checks that the
//! rest of the declared size fits the space the file system leaves this user, so a
//! disk that is too small refuses the upload at once (507) instead of half-way;
//! then the chunk's own space is reserved (`fallocate`), never more, so that a
//! client that declares a huge size and sends one byte holds one byte. The partial
//! file's length is the resume point: a chunk cut short (the client went away) is
//! cut off again, so a retry of that chunk, or `-1`, continues. When the partial
//! file reaches the declared total size it is fsync'ed and renamed to the target
//! under the conflict policy: the target never exists half-written. An upload
//! never finished is removed with its session once the session's token has
//! expired (`release`).

use crate::conflict::Policy;
use crate::error::Error;
use crate::fsops::{self, Journal, PlaceError};
use crate::resolve::{self, Ctx};
use crate::session::{self, endpoint};
use nix::errno::Errno;
use nix::fcntl::{
    fallocate, openat, posix_fadvise, splice, AtFlags, FallocateFlags, Flock, FlockArg, OFlag,
    PosixFadviseAdvice, SpliceFFlags,
};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::sys::statvfs::fstatvfs;
use nix::unistd::{fdatasync, fsync, ftruncate, geteuid, unlinkat, UnlinkatFlags};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use ucloud_wire::answer;

/// UCloud's largest chunk.
pub const MAX_CHUNK: u64 = 32_000_000;
/// The largest file this provider accepts (sanity bound on the declared size).
const MAX_TOTAL: u64 = 1 << 50;

pub fn create(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let token = session::token("files.upload", &ctx.user)?;
    let mut items = Vec::new();
    let mut responses = Vec::new();
    for (i, item) in resolve::items(request)?.iter().enumerate() {
        let what = format!("item {}", i + 1);
        let id = resolve::text(item, "id", &what)?;
        let policy = Policy::of(item)?;
        match item.get("type").and_then(Value::as_str) {
            None | Some("FILE") => {}
            Some("FOLDER") => {
                let (kept, answer) = crate::folder::create_item(ctx, item, i, &token, &what)?;
                items.push(kept);
                responses.push(answer);
                continue;
            }
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "{what}: uploads of type {other} are not supported (FILE or FOLDER)"
                )))
            }
        }
        let protocol = protocol_for(item, &what)?;
        let loc = ctx.resolve(id)?;
        let (dir, name) = loc.open_parent()?;
        if policy == Policy::Reject && crate::conflict::exists(&dir, name) {
            return Err(Error::Conflict(format!(
                "{} already exists (conflictPolicy REJECT)",
                loc.shown()
            )));
        }
        // The user must be able to create the partial file there.
        nix::unistd::faccessat(
            &dir,
            ".",
            nix::unistd::AccessFlags::W_OK,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|_| {
            Error::PermissionDenied(format!(
                "you may not create files in {}",
                loc.parent().map(|p| p.shown()).unwrap_or_default()
            ))
        })?;
        items.push(json!({"path": loc.shown(), "conflictPolicy": policy.name()}));
        let endpoint = match protocol {
            "CHUNKED" => endpoint("upload", &format!("item={i}"))?,
            // A browser cannot set headers on a WebSocket: the token goes in the URL.
            _ => websocket_url(&endpoint(
                "upload",
                &format!("item={i}&token={}", token.raw),
            )?),
        };
        responses.push(json!({
            "endpoint": endpoint,
            "protocol": protocol,
            "token": token.raw,
        }));
    }
    session::sweep(&|jti, session| release(ctx, jti, session));
    session::write(
        &token,
        &json!({"call": "files.upload", "exp": token.exp, "items": items}),
    )?;
    Ok(json!({ "responses": responses }))
}

/// CHUNKED when the client offers it (or names none), else WEBSOCKET_V1.
fn protocol_for(item: &Value, what: &str) -> Result<&'static str, Error> {
    let Some(list) = item.get("supportedProtocols").and_then(Value::as_array) else {
        return Ok("CHUNKED");
    };
    for protocol in ["CHUNKED", "WEBSOCKET_V1"] {
        if list.iter().any(|p| p == protocol) {
            return Ok(protocol);
        }
    }
    Err(Error::BadRequest(format!(
        "{what}: this provider speaks the CHUNKED and WEBSOCKET_V1 upload protocols, the client offers {}",
        Value::Array(list.clone())
    )))
}

/// The same place as a WebSocket URL (`https` becomes `wss`, `http` becomes `ws`).
fn websocket_url(url: &str) -> String {
    match url.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}"),
        Some(("http", rest)) => format!("ws://{rest}"),
        _ => url.to_string(),
    }
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request
        .get("headers")
        .and_then(|h| h.get(name))
        .and_then(Value::as_str)
}

fn number(request: &Value, name: &str, min: i64, max: u64) -> Result<Option<i64>, Error> {
    let Some(text) = header(request, name) else {
        return Ok(None);
    };
    match text.trim().parse::<i64>() {
        Ok(n) if n >= min && (n < 0 || n as u64 <= max) => Ok(Some(n)),
        _ => Err(Error::BadRequest(format!(
            "{name}: {text:?} is not a number from {min} to {max}"
        ))),
    }
}

/// What a chunk request says.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    /// `None`: append.
    pub offset: Option<u64>,
    pub total: u64,
    pub length: u64,
}

pub fn chunk(request: &Value) -> Result<Chunk, Error> {
    let offset = number(request, "chunked-upload-offset", -1, MAX_TOTAL)?.unwrap_or(-1);
    let total = number(request, "chunked-upload-total-size", 0, MAX_TOTAL)?
        .ok_or_else(|| Error::BadRequest("Chunked-Upload-Total-Size is missing".into()))?;
    let length = number(request, "content-length", 0, u64::MAX >> 1)?
        .ok_or_else(|| Error::BadRequest("the chunk has no Content-Length".into()))?;
    if length as u64 > MAX_CHUNK {
        return Err(Error::BadRequest(format!(
            "a chunk may hold at most {MAX_CHUNK} bytes, this one has {length}"
        )));
    }
    Ok(Chunk {
        offset: (offset >= 0).then_some(offset as u64),
        total: total as u64,
        length: length as u64,
    })
}

/// Answers in the framed form so that the browser may read it (CORS).
fn answer(status: u16, body: &Value) -> Result<(), Error> {
    let body = format!("{body}\n");
    let length = body.len().to_string();
    let headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Access-Control-Allow-Origin", "*"),
        ("Content-Length", &length),
    ];
    answer::write_whole(
        &mut std::io::stdout().lock(),
        status,
        &headers,
        body.as_bytes(),
    )
    .map_err(|e| Error::Internal(format!("the gateway stopped reading: {e}")))
}

/// An upload's partial file, locked for this chunk (or stream), and where it stands.
struct Partial {
    loc: resolve::Loc,
    shown: String,
    dir: std::os::fd::OwnedFd,
    name: String,
    partial: String,
    policy: Policy,
    lock: Flock<std::fs::File>,
    /// Bytes on disk already: where the next byte goes.
    have: u64,
}

/// The name of item `n`'s partial file in an upload session.
fn partial_name(jti: &str, n: usize) -> String {
    format!(
        "{}upload-{}-{n}",
        fsops::TRANSIENT,
        &jti[..jti.len().min(32)]
    )
}

/// Whether an opened partial file is one this upload may write into: a regular
/// file of this user with no other name. Anything else was put there by someone
/// else (a directory others may write is enough), and writing into it would hand
/// them the upload's bytes, or the finished file itself.
fn ours(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits()
        && st.st_uid == geteuid().as_raw()
        && st.st_nlink <= 1
}

fn not_ours(shown: &str) -> Error {
    Error::Conflict(format!(
        "{shown}: the upload's partial file in that folder is not this upload's own (another \
         user made or replaced it); nothing was written to it: start a new upload"
    ))
}

/// The partial file, reopened when it exists and is ours, else made afresh
/// (`O_EXCL`: never someone else's file that appeared meanwhile).
fn open_or_make(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    shown: &str,
) -> Result<std::os::fd::OwnedFd, Error> {
    let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    for _ in 0..4 {
        let fd = match openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => match openat(
                dir,
                name,
                flags | OFlag::O_CREAT | OFlag::O_EXCL,
                crate::drive::NEW_FILE,
            ) {
                Ok(fd) => fd,
                // Another chunk of ours (or someone else) made it first: look again.
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(Error::from_errno(e, shown)),
            },
            // A symbolic link (ELOOP), or a file we may not open: not ours.
            Err(Errno::ELOOP | Errno::EACCES | Errno::EPERM | Errno::ENXIO) => {
                return Err(not_ours(shown))
            }
            Err(e) => return Err(Error::from_errno(e, shown)),
        };
        let st = fstat(&fd).map_err(|e| Error::from_errno(e, shown))?;
        if !ours(&st) {
            return Err(not_ours(shown));
        }
        return Ok(fd);
    }
    Err(not_ours(shown))
}

/// The session's item for this request, and its partial file, opened and locked.
fn open_partial(ctx: &Ctx, request: &Value) -> Result<Partial, Error> {
    let token = session::token("files.upload", &ctx.user)?;
    let session = session::read(&token)?;
    let (n, item) = session::item(&session, request)?;
    if item.get("type").and_then(Value::as_str) == Some("FOLDER") {
        return Err(Error::BadRequest(
            "this upload link is for a folder: its protocol is WEBSOCKET_V2".into(),
        ));
    }
    let id = resolve::text(item, "path", "the transfer session")?;
    let policy = Policy::of(item)?;
    let loc = ctx.resolve(id)?;
    let shown = loc.shown();
    let (dir, name) = loc.open_parent()?;
    let name = name.to_string();
    let partial = partial_name(&token.jti, n);
    // Checked before the lock: someone else's file could be held locked forever.
    let fd = open_or_make(&dir, &partial, &shown)?;
    // One chunk at a time per upload: a second, concurrent one waits, then finds
    // the offset moved and is refused.
    let lock = Flock::lock(std::fs::File::from(fd), FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::from_errno(e, &shown))?;
    let st = fstat(&*lock).map_err(|e| Error::from_errno(e, &shown))?;
    if st.st_nlink == 0 {
        // The chunk we waited for failed on an empty partial file and removed it.
        return Err(Error::BadOffset(format!(
            "{shown}: another chunk of this upload failed meanwhile; send the chunk that starts at 0"
        )));
    }
    if !ours(&st) {
        return Err(not_ours(&shown));
    }
    Ok(Partial {
        loc,
        shown,
        dir,
        name,
        partial,
        policy,
        lock,
        have: st.st_size as u64,
    })
}

/// Removes the partial files of an expired upload session (`session::sweep`), so
/// that an upload never finished gives its space back. Only files that are still
/// this user's own partial files go; best effort.
pub fn release(ctx: &Ctx, jti: &str, session: &Value) {
    if session.get("call").and_then(Value::as_str) != Some("files.upload") {
        return;
    }
    let Some(items) = session.get("items").and_then(Value::as_array) else {
        return;
    };
    for (n, item) in items.iter().enumerate() {
        let Some(loc) = item
            .get("path")
            .and_then(Value::as_str)
            .and_then(|id| ctx.resolve(id).ok())
        else {
            continue;
        };
        let Ok((dir, _)) = loc.open_parent() else {
            continue;
        };
        let name = partial_name(jti, n);
        if fstatat(&dir, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| ours(&st)) {
            let _ = unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

impl Partial {
    /// Refuses a start other than the resume point, and a size the data overruns.
    fn check(&self, at: u64, length: u64, total: u64) -> Result<(), Error> {
        let (have, shown) = (self.have, &self.shown);
        if at != have {
            return Err(Error::BadOffset(format!(
                "{shown}: this chunk starts at byte {at}, but {have} bytes are on disk; \
                 send the chunk that starts at {have} (or offset -1)"
            )));
        }
        if have > total || at + length > total {
            return Err(Error::BadRequest(format!(
                "{shown}: a chunk of {length} bytes at {at} goes past the declared total size of {total} bytes"
            )));
        }
        Ok(())
    }

    /// Cuts the file back to `keep` bytes after a failure, so that nothing
    /// half-written stays (which also frees the space reserved past it); a partial
    /// file left empty goes, so that a first chunk that failed leaves no trace.
    fn cut_back(&self, keep: u64, e: Error) -> Error {
        let _ = ftruncate(&*self.lock, keep as i64);
        if keep == 0 {
            let _ = unlinkat(&self.dir, self.partial.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        e
    }

    /// The complete file: data and metadata on disk, then the name appears, under
    /// the conflict policy. Returns the UCloud id it got. When the data cannot be
    /// made durable the file is cut back to `keep`, the bytes known to be on disk.
    fn finish(self, keep: u64) -> Result<String, Error> {
        let shown = &self.shown;
        fsync(&*self.lock).map_err(|e| self.cut_back(keep, Error::from_errno(e, shown)))?;
        // The name must still be the file written: in a folder others may write,
        // someone could have put their own file there, which would become the target.
        let written = fstat(&*self.lock).map_err(|e| Error::from_errno(e, shown))?;
        match fstatat(
            &self.dir,
            self.partial.as_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if (st.st_dev, st.st_ino) == (written.st_dev, written.st_ino) => {}
            _ => return Err(not_ours(shown)),
        }
        let mut journal = Journal::default();
        let policy = if self.policy == Policy::MergeRename {
            Policy::Rename
        } else {
            self.policy
        };
        let got = match fsops::place(
            &mut journal,
            &self.dir,
            &self.partial,
            &self.dir,
            &self.name,
            policy,
            shown,
        ) {
            Ok(got) => got,
            Err(PlaceError::Other(e)) => return Err(e),
            Err(PlaceError::CrossDevice) => {
                return Err(Error::Internal("rename crossed a device".into()))
            }
        };
        journal.commit()?;
        fsync(&self.dir).map_err(|e| Error::from_errno(e, shown))?;
        Ok(self
            .loc
            .parent()
            .map(|p| p.child(&got).shown())
            .unwrap_or_else(|| shown.clone()))
    }
}

pub fn serve(ctx: &Ctx, request: &Value) -> Result<(), Error> {
    if request.get("protocol").and_then(Value::as_str) == Some("WEBSOCKET_V2") {
        return crate::folder::serve(ctx, request);
    }
    if request.get("protocol").and_then(Value::as_str) == Some("WEBSOCKET_V1") {
        return serve_stream(ctx, request);
    }
    let up = open_partial(ctx, request)?;
    let c = chunk(request).map_err(|e| up.cut_back(up.have, e))?;
    let at = c.offset.unwrap_or(up.have);
    up.check(at, c.length, c.total)
        .map_err(|e| up.cut_back(up.have, e))?;
    let (have, shown) = (up.have, up.shown.clone());
    fits(&up.lock, have, c.total, &shown).map_err(|e| up.cut_back(have, e))?;
    reserve(&up.lock, at, c.length, c.total, &shown).map_err(|e| up.cut_back(have, e))?;
    receive(&up.lock, at, c.length, &shown).map_err(|e| up.cut_back(have, e))?;
    let pos = at + c.length;
    if pos < c.total {
        fdatasync(&*up.lock).map_err(|e| up.cut_back(have, Error::from_errno(e, &shown)))?;
        return answer(
            200,
            &json!({"offset": pos, "totalSize": c.total, "complete": false}),
        );
    }
    // Not synced yet: a failure cuts this chunk off again.
    let id = up.finish(have)?;
    answer(
        200,
        &json!({"offset": pos, "totalSize": c.total, "complete": true, "id": id}),
    )
}

/// Bytes between two progress reports of a WEBSOCKET_V1 upload: each report says
/// that many more bytes are on disk.
const PROGRESS_STEP: u64 = 16 << 20;

/// WEBSOCKET_V1 (ucloud-files(8)): once the session is found the plugin says
/// `ready <bytes on disk>`; the gateway then accepts the WebSocket and passes the
/// client's first message, `<offset> <totalSize>`, as one line on stdin, then the
/// binary messages' bytes.
/// Every PROGRESS_STEP bytes (and at the end) they are made durable and the count
/// on disk is printed as a line, which the gateway sends as a text message. A
/// stream that ends early keeps what is on disk: the client reconnects with that
/// offset, or with any smaller one (the last count it was told).
///
/// A step's `fdatasync` runs in a thread beside the reception of the next step,
/// and that thread prints the count once it is durable: waiting for the disk to
/// flush would otherwise stop the stream, and with it the disk, at every step
/// (writeback of what arrives is already under way, see `receive`). At most one
/// sync is under way; a count is only ever printed after its sync.
fn serve_stream(ctx: &Ctx, request: &Value) -> Result<(), Error> {
    let mut up = open_partial(ctx, request)?;
    // The token is verified and the session found: the gateway may now accept the
    // WebSocket (it answers 101 only after this line).
    say(&format!("ready {}", up.have)).map_err(|e| up.cut_back(up.have, e))?;
    let (offset, total) = stream_start().map_err(|e| up.cut_back(up.have, e))?;
    let shown = up.shown.clone();
    if offset > up.have {
        let e = Error::BadOffset(format!(
            "offset {offset} is past the {} bytes on disk: reconnect with an offset of at most {} ({shown})",
            up.have, up.have
        ));
        return Err(up.cut_back(up.have, e));
    }
    // A client may resume from the last count it was told, which can be short of
    // what reached the disk before the connection broke: the rest is sent again.
    if offset < up.have {
        ftruncate(&*up.lock, offset as i64).map_err(|e| Error::from_errno(e, &shown))?;
        up.have = offset;
    }
    up.check(offset, 0, total)
        .map_err(|e| up.cut_back(up.have, e))?;
    fits(&up.lock, up.have, total, &shown).map_err(|e| up.cut_back(up.have, e))?;
    let file: &std::fs::File = &up.lock;
    // The bytes known to be on disk: what a failure cuts the file back to.
    let mut durable = up.have;
    let streamed = std::thread::scope(|scope| {
        let mut syncing = None;
        let mut have = durable;
        let result = loop {
            if have == total {
                break Ok(());
            }
            let want = (total - have).min(PROGRESS_STEP);
            let got = match reserve(file, have, want, total, &shown)
                .and_then(|()| receive_upto(file, have, want, &shown))
            {
                Ok(got) => got,
                Err(e) => break Err(e),
            };
            if let Err(e) = settle(&mut syncing, &mut durable) {
                break Err(e);
            }
            have += got;
            if got < want {
                // What came is on disk and stays (an empty partial file goes); the
                // space reserved past it is not needed now. The numbers first: a
                // close reason is short.
                if let Err(e) = fdatasync(file) {
                    break Err(Error::from_errno(e, &shown));
                }
                durable = have;
                break Err(Error::BadRequest(format!(
                    "stopped after {have} of {total} bytes, which are kept: reconnect with offset {have} ({shown})"
                )));
            }
            // The last step is made durable by `finish`, which also tells its count.
            if have < total {
                let shown = &shown;
                syncing = Some(scope.spawn(move || {
                    fdatasync(file).map_err(|e| Error::from_errno(e, shown))?;
                    say(&have.to_string())?;
                    Ok(have)
                }));
            }
        };
        // No sync outlives the stream: the file is cut back or finished after it.
        let settled = settle(&mut syncing, &mut durable);
        result.and(settled)
    });
    streamed.map_err(|e| up.cut_back(durable, e))?;
    up.finish(durable)?;
    say(&total.to_string())
}

/// One line to the gateway, which sends it to the client as a text message.
fn say(line: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::Internal(format!("the gateway stopped reading: {e}")))
}

/// Waits for the sync under way, if any; on success `durable` is the count it
/// made durable (and told).
fn settle(
    syncing: &mut Option<std::thread::ScopedJoinHandle<'_, Result<u64, Error>>>,
    durable: &mut u64,
) -> Result<(), Error> {
    let Some(sync) = syncing.take() else {
        return Ok(());
    };
    *durable = sync.join().expect("the sync thread does not panic")?;
    Ok(())
}

/// The stream's first line, `<offset> <totalSize>`, read byte by byte from the
/// raw descriptor: the bytes after it are the file's and go to `splice`.
fn stream_start() -> Result<(u64, u64), Error> {
    let stdin = std::io::stdin();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(stdin.as_fd(), &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 64 => line.push(byte[0]),
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::Internal(format!("reading the upload's start: {e}"))),
        }
    }
    parse_start(&String::from_utf8_lossy(&line))
}

/// `<offset> <totalSize>`, two whole numbers, the offset at most the size.
fn parse_start(text: &str) -> Result<(u64, u64), Error> {
    let bad = || {
        Error::BadRequest(format!(
            "the first message must be \"<offset> <totalSize>\" (two whole numbers), got {text:?}"
        ))
    };
    let mut words = text.split(' ');
    let (Some(offset), Some(total), None) = (words.next(), words.next(), words.next()) else {
        return Err(bad());
    };
    let number = |w: &str| {
        (!w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
            .then(|| w.parse::<u64>().ok())
            .flatten()
            .filter(|n| *n <= MAX_TOTAL)
    };
    match (number(offset), number(total)) {
        (Some(o), Some(t)) if o <= t => Ok((o, t)),
        _ => Err(bad()),
    }
}

/// Refuses an upload whose rest (`total - have` bytes) is more than the file
/// system leaves this user (`f_bavail`: what an unprivileged writer may still take),
/// so that one that cannot fit is refused at once, before its bytes are sent. A
/// quota is the kernel's to enforce: it shows at `reserve` or the write (EDQUOT).
fn fits(file: &std::fs::File, have: u64, total: u64, shown: &str) -> Result<(), Error> {
    let Ok(vfs) = fstatvfs(file) else {
        return Ok(());
    };
    let free = vfs.blocks_available().saturating_mul(vfs.fragment_size());
    let rest = total.saturating_sub(have);
    if rest > free {
        return Err(Error::DiskFull(format!(
            "{shown}: {total} bytes do not fit (the file system has {free} bytes free for you, \
             the upload needs {rest} more); nothing of the upload was kept past byte {have}, \
             free space and resend from there"
        )));
    }
    Ok(())
}

/// Reserves the space of the `length` bytes about to be written at `at`, so that
/// a chunk cannot run out of space half-way. Never more than that: a reservation
/// for the whole declared size would let one byte of an upload hold all of it
/// (and, abandoned, hold it for good). The file's size (the resume point) does not
/// change; a chunk that fails is cut back, which frees what it reserved. A file
/// system without `fallocate` just goes on (a full disk then shows at the write,
/// which is undone as well).
fn reserve(
    file: &std::fs::File,
    at: u64,
    length: u64,
    total: u64,
    shown: &str,
) -> Result<(), Error> {
    if length == 0 {
        return Ok(());
    }
    match fallocate(
        file,
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        at as i64,
        length as i64,
    ) {
        Ok(()) => Ok(()),
        Err(e @ (Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG)) => Err(match e {
            Errno::EFBIG => Error::DiskFull(format!(
                "{shown}: a file of {total} bytes is larger than this file system allows"
            )),
            _ => Error::DiskFull(format!(
                "{shown}: {total} bytes do not fit (disk or quota full); nothing of the upload \
                 was kept past byte {at}, free space and resend from there"
            )),
        }),
        Err(_) => Ok(()),
    }
}

/// Bytes between two writeback starts (see `receive`).
const WRITEBACK_STEP: u64 = 4 << 20;
/// The most one `splice`/`read` moves (the gateway's pipe holds 1 MiB).
const STEP: usize = 1 << 20;

/// Moves `length` bytes from stdin (the gateway's pipe) into `file` at `at`.
///
/// `splice` moves them pipe to page cache without a trip through this process
/// (plain reads when stdin is not a pipe). Every `WRITEBACK_STEP` bytes the
/// kernel is told to start writing what came (`POSIX_FADV_DONTNEED` starts
/// writeback of dirty pages without waiting), so the disk works while the rest of
/// the chunk arrives and the `fdatasync` before the answer waits only for the
/// tail. It also keeps uploads from filling the login node's page cache.
fn receive(file: &std::fs::File, at: u64, length: u64, shown: &str) -> Result<(), Error> {
    let got = receive_upto(file, at, length, shown)?;
    if got < length {
        return Err(Error::BadRequest(format!(
            "{shown}: the chunk was cut short after {got} of {length} bytes; nothing of it was \
             kept, resend it from offset {at}"
        )));
    }
    Ok(())
}

/// Like [`receive`], but an early end of stdin is no error: the bytes moved.
fn receive_upto(file: &std::fs::File, at: u64, length: u64, shown: &str) -> Result<u64, Error> {
    let stdin = std::io::stdin();
    let end = at + length;
    let mut pos = at;
    let mut started = at;
    let mut buf: Vec<u8> = Vec::new();
    let errno = |e: Errno| Error::from_errno(e, shown);
    while pos < end {
        let want = ((end - pos) as usize).min(STEP);
        let got = if buf.is_empty() {
            let mut off = pos as i64;
            match splice(
                stdin.as_fd(),
                None,
                file,
                Some(&mut off),
                want,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                // stdin is not a pipe, or the filesystem cannot take spliced pages.
                Err(Errno::EINVAL) => {
                    buf = vec![0u8; STEP];
                    continue;
                }
                Err(e) => return Err(errno(e)),
            }
        } else {
            let n = match stdin.lock().read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Internal(format!("reading the chunk: {e}"))),
            };
            file.write_all_at(&buf[..n], pos)
                .map_err(|e| errno(Errno::from_raw(e.raw_os_error().unwrap_or(5))))?;
            n
        };
        if got == 0 {
            break;
        }
        pos += got as u64;
        if pos - started >= WRITEBACK_STEP || pos == end {
            let _ = posix_fadvise(
                file,
                started as i64,
                (pos - started) as i64,
                PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            started = pos;
        }
    }
    Ok(pos - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: Value) -> Value {
        json!({"headers": h})
    }

    #[test]
    fn only_a_lone_regular_file_of_ours_is_our_partial_file() {
        let dir = std::env::temp_dir().join(format!("ucloud-files-ours-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("partial");
        std::fs::write(&file, b"x").unwrap();
        let stat = |p: &std::path::Path| nix::sys::stat::lstat(p).unwrap();
        assert!(ours(&stat(&file)));
        assert!(!ours(&stat(&dir)), "a directory");
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        assert!(!ours(&stat(&dir.join("link"))), "a symbolic link");
        std::fs::hard_link(&file, dir.join("second")).unwrap();
        assert!(!ours(&stat(&file)), "a file with another name");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_starts_are_two_numbers_in_order() {
        assert_eq!(parse_start("0 10").unwrap(), (0, 10));
        assert_eq!(parse_start("10 10").unwrap(), (10, 10));
        for bad in [
            "",
            "0",
            "0 10 3",
            "11 10",
            "-1 10",
            "0  10",
            " 0 10",
            "0x1 10",
            "1 1e3",
            "0 99999999999999999999",
        ] {
            assert!(parse_start(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn protocols_and_their_urls() {
        let offer = |p: Value| json!({"supportedProtocols": p});
        assert_eq!(protocol_for(&json!({}), "item").unwrap(), "CHUNKED");
        assert_eq!(
            protocol_for(&offer(json!(["WEBSOCKET_V1", "CHUNKED"])), "i").unwrap(),
            "CHUNKED"
        );
        assert_eq!(
            protocol_for(&offer(json!(["WEBSOCKET_V1"])), "i").unwrap(),
            "WEBSOCKET_V1"
        );
        assert!(protocol_for(&offer(json!(["CARRIER_PIGEON"])), "i").is_err());
        assert_eq!(
            websocket_url("https://h/ucloud/p/upload?x"),
            "wss://h/ucloud/p/upload?x"
        );
        assert_eq!(websocket_url("http://h:1/u"), "ws://h:1/u");
    }

    #[test]
    fn chunk_headers() {
        let c = chunk(&req(
            json!({"chunked-upload-offset": "-1", "chunked-upload-total-size": "10",
            "content-length": "4"}),
        ))
        .unwrap();
        assert_eq!(
            c,
            Chunk {
                offset: None,
                total: 10,
                length: 4
            }
        );
        let c = chunk(&req(
            json!({"chunked-upload-offset": "4", "chunked-upload-total-size": "10",
            "content-length": "4"}),
        ))
        .unwrap();
        assert_eq!(c.offset, Some(4));
        for bad in [
            json!({"chunked-upload-total-size": "10"}),
            json!({"content-length": "1"}),
            json!({"chunked-upload-offset": "-2", "chunked-upload-total-size": "10", "content-length": "1"}),
            json!({"chunked-upload-offset": "x", "chunked-upload-total-size": "10", "content-length": "1"}),
            json!({"chunked-upload-total-size": "10", "content-length": "32000001"}),
        ] {
            assert!(chunk(&req(bad.clone())).is_err(), "{bad}");
        }
    }
}
