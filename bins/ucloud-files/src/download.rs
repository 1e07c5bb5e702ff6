//! `files.createDownload` and the data channel's `files.download`.
//!
//! The download answers in the framed form (contracts.md): a head with
//! Content-Length, Content-Disposition and CORS, then data frames whose bytes go
//! from the file to stdout with `sendfile(2)`: no copy in this process, no buffer
//! that grows with the file.

use crate::error::Error;
use crate::resolve::{self, Ctx};
use crate::session::{self, endpoint};
use crate::tree::Kind;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::OwnedFd;
use ucloud_wire::answer;

/// Bytes per data frame.
const FRAME: u64 = 4 << 20;

/// Opens a regular file for reading below the caller's drive, links refused.
pub fn open_file(ctx: &Ctx, id: &str) -> Result<(OwnedFd, u64, String), Error> {
    let loc = ctx.resolve(id)?;
    let shown = loc.shown();
    let (dir, name) = loc.open_parent()?;
    let fd = openat(
        &dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::EACCES => Error::PermissionDenied(format!(
            "{shown} is not readable by your account on this system"
        )),
        e => Error::from_errno(e, &shown),
    })?;
    let st = fstat(&fd).map_err(|e| Error::from_errno(e, &shown))?;
    if Kind::of(&st) == Kind::Directory {
        return Err(Error::BadRequest(format!(
            "{shown} is a folder; only files can be downloaded"
        )));
    }
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(Error::BadRequest(format!("{shown} is not a regular file")));
    }
    Ok((fd, st.st_size as u64, name.to_string()))
}

pub fn create(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let token = session::token("files.download", &ctx.user)?;
    let mut items = Vec::new();
    let mut responses = Vec::new();
    for (i, item) in resolve::items(request)?.iter().enumerate() {
        let id = resolve::text(item, "id", &format!("item {}", i + 1))?;
        // Checked now, so that a link to a file the user cannot read is never made.
        open_file(ctx, id)?;
        items.push(json!({"path": id}));
        responses.push(
            json!({"endpoint": endpoint("download", &format!("token={}&item={i}", token.raw))?}),
        );
    }
    session::sweep(&|jti, session| crate::upload::release(ctx, jti, session));
    session::write(
        &token,
        &json!({"call": "files.download", "exp": token.exp, "items": items}),
    )?;
    Ok(json!({ "responses": responses }))
}

/// A byte range `[start, end)` of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    Whole,
    Part(u64, u64),
}

/// One `bytes=` range (RFC 9110 14.1.2). Several ranges, or a unit other than
/// bytes, are ignored (the whole file is sent, as the RFC allows).
pub fn range(header: Option<&str>, size: u64) -> Result<Range, Error> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(Range::Whole);
    };
    if spec.contains(',') {
        return Ok(Range::Whole);
    }
    let unsat = || {
        Error::RangeNotSatisfiable(format!(
            "the range {spec:?} is not within the file's {size} bytes"
        ))
    };
    let (a, b) = spec.split_once('-').ok_or_else(unsat)?;
    let num = |s: &str| -> Result<u64, Error> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(unsat());
        }
        s.parse().map_err(|_| unsat())
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n = num(suffix)?;
            if n == 0 {
                return Err(unsat());
            }
            (size.saturating_sub(n), size)
        }
        (first, "") => (num(first)?, size),
        (first, last) => {
            let (f, l) = (num(first)?, num(last)?);
            if l < f {
                return Err(unsat());
            }
            (f, (l + 1).min(size))
        }
    };
    if start >= size {
        return Err(unsat());
    }
    Ok(Range::Part(start, end))
}

/// RFC 5987 / 8187 encoding of a file name for `filename*=UTF-8''`.
fn ext_value(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The framed answer's head, from the owned header values built here.
fn head(status: u16, headers: &[(&str, String)]) -> String {
    let list: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    answer::head(status, &list)
}

pub fn serve(ctx: &Ctx, request: &Value) -> Result<(), Error> {
    let token = session::token("files.download", &ctx.user)?;
    let session = session::read(&token)?;
    let (_, item) = session::item(&session, request)?;
    let id = resolve::text(item, "path", "the transfer session")?;
    let (fd, size, name) = open_file(ctx, id)?;
    let header = request
        .get("headers")
        .and_then(|h| h.get("range"))
        .and_then(Value::as_str);
    let mut out = std::io::stdout().lock();
    let mut headers = vec![
        ("Content-Type", "application/octet-stream".to_string()),
        (
            "Content-Disposition",
            format!("attachment; filename*=UTF-8''{}", ext_value(&name)),
        ),
        ("Access-Control-Allow-Origin", "*".to_string()),
        (
            "Access-Control-Expose-Headers",
            "Content-Length, Content-Range, Content-Disposition".to_string(),
        ),
        ("Accept-Ranges", "bytes".to_string()),
        ("Cache-Control", "no-store".to_string()),
    ];
    let (status, start, end) = match range(header, size) {
        Ok(Range::Whole) => (200, 0, size),
        Ok(Range::Part(s, e)) => {
            headers.push(("Content-Range", format!("bytes {s}-{}/{size}", e - 1)));
            (206, s, e)
        }
        Err(e @ Error::RangeNotSatisfiable(_)) => {
            let body = format!("{}\n", e.failure().body());
            headers.retain(|(n, _)| *n != "Content-Disposition");
            headers[0].1 = "application/json; charset=utf-8".into();
            headers.push(("Content-Range", format!("bytes */{size}")));
            headers.push(("Content-Length", body.len().to_string()));
            let list: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            return answer::write_whole(&mut out, 416, &list, body.as_bytes()).map_err(gone);
        }
        Err(e) => return Err(e),
    };
    headers.push(("Content-Length", (end - start).to_string()));
    out.write_all(head(status, &headers).as_bytes())
        .map_err(gone)?;
    let mut offset = start as i64;
    while (offset as u64) < end {
        let n = (end - offset as u64).min(FRAME);
        out.write_all(answer::data_line(n).as_bytes())
            .map_err(gone)?;
        out.flush().map_err(gone)?;
        let frame_end = offset + n as i64;
        while offset < frame_end {
            let want = (frame_end - offset) as usize;
            match nix::sys::sendfile::sendfile64(&out, &fd, Some(&mut offset), want) {
                Ok(0) => {
                    // The file shrank under us: the frame cannot be completed.
                    return Err(Error::Internal(format!(
                        "{id} became shorter while it was sent"
                    )));
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(Error::from_errno(e, id)),
            }
        }
    }
    out.write_all(answer::END.as_bytes())
        .and_then(|()| out.flush())
        .map_err(gone)
}

fn gone(e: std::io::Error) -> Error {
    Error::Internal(format!("the gateway stopped reading: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(range(None, 10).unwrap(), Range::Whole);
        assert_eq!(range(Some("bytes=0-3"), 10).unwrap(), Range::Part(0, 4));
        assert_eq!(range(Some("bytes=5-"), 10).unwrap(), Range::Part(5, 10));
        assert_eq!(range(Some("bytes=-3"), 10).unwrap(), Range::Part(7, 10));
        assert_eq!(range(Some("bytes=8-100"), 10).unwrap(), Range::Part(8, 10));
        assert_eq!(range(Some("bytes=0-1,3-4"), 10).unwrap(), Range::Whole);
        assert_eq!(range(Some("items=0-1"), 10).unwrap(), Range::Whole);
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=x-1",
            "bytes=-",
            "bytes=1",
        ] {
            assert!(range(Some(bad), 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_encoded_for_content_disposition() {
        assert_eq!(ext_value("a b\"ü.txt"), "a%20b%22%C3%BC.txt");
    }
}
