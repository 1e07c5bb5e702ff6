//! `files.createUpload` and the data channel's `files.upload` (protocol CHUNKED).
//!
//! Chunks are written into a hidden partial file next to the target,
//! `.ucloud-im-upload-<jti>-<item>`, at the offset the client names (`-1`: at the
//! end), each fdatasync'ed before it is acknowledged. The space for the whole
//! declared size is reserved at the first chunk (`fallocate`), so a disk that is
//! too small refuses the upload at once (507) instead of half-way. The partial file's length is the
//! resume point: a chunk cut short (the client went away) is cut off again, so a
//! retry of that chunk, or `-1`, continues. When the partial file reaches the
//! declared total size it is fsync'ed and renamed to the target under the
//! conflict policy: the target never exists half-written.

use crate::conflict::Policy;
use crate::download::endpoint;
use crate::error::Error;
use crate::fsops::{self, Journal, PlaceError};
use crate::resolve::{self, Ctx};
use crate::session;
use nix::errno::Errno;
use nix::fcntl::{
    fallocate, openat, posix_fadvise, splice, FallocateFlags, Flock, FlockArg, OFlag,
    PosixFadviseAdvice, SpliceFFlags,
};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{fdatasync, fsync, ftruncate, unlinkat, UnlinkatFlags};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// UCloud's largest chunk.
pub const MAX_CHUNK: u64 = 32_000_000;
/// The largest file this provider accepts (sanity bound on the declared size).
const MAX_TOTAL: u64 = 1 << 50;

pub fn create(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let token = session::token(None, "files.upload", &ctx.user)?;
    let mut items = Vec::new();
    let mut responses = Vec::new();
    for (i, item) in resolve::items(request)?.iter().enumerate() {
        let what = format!("item {}", i + 1);
        let id = resolve::text(item, "id", &what)?;
        let policy = Policy::of(item)?;
        match item.get("type").and_then(Value::as_str) {
            None | Some("FILE") => {}
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "{what}: uploads of type {other} are not supported; upload the files one by one (type FILE)"
                )))
            }
        }
        if let Some(list) = item.get("supportedProtocols").and_then(Value::as_array) {
            if !list.iter().any(|p| p == "CHUNKED") {
                return Err(Error::BadRequest(format!(
                    "{what}: this provider speaks the CHUNKED upload protocol only, the client offers {}",
                    Value::Array(list.clone())
                )));
            }
        }
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
        responses.push(json!({
            "endpoint": endpoint("upload", &format!("item={i}"))?,
            "protocol": "CHUNKED",
            "token": token.raw,
        }));
    }
    session::sweep();
    session::write(
        &token,
        &json!({"call": "files.upload", "exp": token.exp, "items": items}),
    )?;
    Ok(json!({ "responses": responses }))
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
    let head = json!({"status": status, "headers": [
        ["Content-Type", "application/json; charset=utf-8"],
        ["Access-Control-Allow-Origin", "*"],
        ["Content-Length", body.len().to_string()],
    ]});
    let text = format!(
        "UCLOUD-IM/1\n{head}\n{{\"data\":{}}}\n{body}{{\"end\":true}}\n",
        body.len()
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Internal(format!("the gateway stopped reading: {e}")))
}

pub fn serve(ctx: &Ctx, request: &Value) -> Result<(), Error> {
    let token = session::token(Some(request), "files.upload", &ctx.user)?;
    let session = session::read(&token)?;
    let (n, item) = session::item(&session, request)?;
    let id = resolve::text(item, "path", "the transfer session")?;
    let policy = Policy::of(item)?;
    let c = chunk(request)?;
    let loc = ctx.resolve(id)?;
    let shown = loc.shown();
    let (dir, name) = loc.open_parent()?;
    let partial = format!(
        "{}upload-{}-{n}",
        fsops::TRANSIENT,
        &token.jti[..token.jti.len().min(32)]
    );
    let fd = openat(
        &dir,
        partial.as_str(),
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|e| Error::from_errno(e, &shown))?;
    // One chunk at a time per upload: a second, concurrent one waits, then finds
    // the offset moved and is refused.
    let lock = Flock::lock(std::fs::File::from(fd), FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::from_errno(e, &shown))?;
    let file: &std::fs::File = &lock;
    let st = fstat(file).map_err(|e| Error::from_errno(e, &shown))?;
    if st.st_nlink == 0 {
        // The chunk we waited for failed on an empty partial file and removed it.
        return Err(Error::BadOffset(format!(
            "{shown}: another chunk of this upload failed meanwhile; send the chunk that starts at 0"
        )));
    }
    let have = st.st_size as u64;
    let at = c.offset.unwrap_or(have);
    if at != have {
        return Err(Error::BadOffset(format!(
            "{shown}: this chunk starts at byte {at}, but {have} bytes are on disk; \
             send the chunk that starts at {have} (or offset -1)"
        )));
    }
    if have > c.total || at + c.length > c.total {
        return Err(Error::BadRequest(format!(
            "{shown}: a chunk of {} bytes at {at} goes past the declared total size of {} bytes",
            c.length, c.total
        )));
    }
    // Cut back to `have` on any failure, so that nothing half-written stays (the
    // truncation also frees the space reserved past it); a partial file left empty
    // goes, so that a first chunk that failed leaves no trace.
    let undo = |e: Error| -> Error {
        let _ = ftruncate(file, have as i64);
        if have == 0 {
            let _ = unlinkat(&dir, partial.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        e
    };
    reserve(file, have, c.total, &shown).map_err(undo)?;
    receive(file, at, c.length, &shown).map_err(undo)?;
    let pos = at + c.length;
    if pos < c.total {
        fdatasync(file).map_err(|e| undo(Error::from_errno(e, &shown)))?;
        return answer(
            200,
            &json!({"offset": pos, "totalSize": c.total, "complete": false}),
        );
    }
    // The last chunk: data and metadata on disk before the name appears.
    fsync(file).map_err(|e| undo(Error::from_errno(e, &shown)))?;
    let mut journal = Journal::default();
    let policy = if policy == Policy::MergeRename {
        Policy::Rename
    } else {
        policy
    };
    let got = match fsops::place(&mut journal, &dir, &partial, &dir, name, policy, &shown) {
        Ok(got) => got,
        Err(PlaceError::Other(e)) => return Err(e),
        Err(PlaceError::CrossDevice) => {
            return Err(Error::Internal("rename crossed a device".into()))
        }
    };
    journal.commit()?;
    fsync(&dir).map_err(|e| Error::from_errno(e, &shown))?;
    let id = loc.parent().map(|p| p.child(&got).shown()).unwrap_or(shown);
    answer(
        200,
        &json!({"offset": pos, "totalSize": c.total, "complete": true, "id": id}),
    )
}

/// Reserves the space the rest of the upload needs, so that an upload that cannot
/// fit is refused at its first chunk, before any byte of it is taken, and the
/// chunks after it cannot run out of space half-way. The file's size (the resume
/// point) does not change. A filesystem without `fallocate` just goes on (a full
/// disk then shows at the write, which is undone as well).
fn reserve(file: &std::fs::File, have: u64, total: u64, shown: &str) -> Result<(), Error> {
    if total <= have {
        return Ok(());
    }
    match fallocate(
        file,
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        have as i64,
        (total - have) as i64,
    ) {
        Ok(()) => Ok(()),
        Err(e @ (Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG)) => Err(match e {
            Errno::EFBIG => Error::DiskFull(format!(
                "{shown}: a file of {total} bytes is larger than this file system allows"
            )),
            _ => Error::DiskFull(format!(
                "{shown}: {total} bytes do not fit (disk or quota full); nothing of the upload \
                 was kept past byte {have}, free space and resend from there"
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
            return Err(Error::BadRequest(format!(
                "{shown}: the chunk was cut short after {} of {length} bytes; nothing of it was \
                 kept, resend it from offset {at}",
                pos - at
            )));
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: Value) -> Value {
        json!({"headers": h})
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
