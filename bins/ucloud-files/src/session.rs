//! Transfer sessions: what a download or upload URL's token may be used for.
//!
//! The dispatcher mints the token (bound to the UCloud user, the local account and
//! the call) and verifies it on the data channel before it chooses the account;
//! the token says nothing about paths. So `files.createDownload` and
//! `files.createUpload`, running as the user, record the paths in a session file
//! in the user's own state directory, named by the token's random `jti`:
//!
//!   `$HOME/.local/state/ucloud-im/transfers/<jti>.json` (0600, in 0700 dirs)
//!
//! and `files.download` / `files.upload`, running as the same user after the
//! dispatcher verified the token, read it back. Only that user (and root) can read
//! or write it; a token of another user leads to another user's directory, where
//! this jti has no file. Sessions end when their token expires; expired files are
//! removed whenever a new session is made, with the partial files of an upload
//! that was never finished.

use crate::error::Error;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

const DIRS: [&str; 4] = [".local", "state", "ucloud-im", "transfers"];
const MAX_SESSION: u64 = 4 << 20;

/// The token of this request, and what it claims (the dispatcher checked the
/// signature; this only reads the claims).
pub struct Token {
    pub raw: String,
    pub jti: String,
    pub exp: u64,
}

/// The token the dispatcher hands over in `UCLOUD_TRANSFER_TOKEN`, and the only
/// place it comes from: for a create call the one it minted, on the data channel the
/// one it verified. Its claims are read, not verified (the key is root's).
pub fn token(call: &str, user: &str) -> Result<Token, Error> {
    let raw = std::env::var("UCLOUD_TRANSFER_TOKEN").map_err(|_| {
        Error::Misconfigured(format!(
            "{call} got no transfer token (UCLOUD_TRANSFER_TOKEN, set by ucloud-dispatch)"
        ))
    })?;
    token_of(&raw, call, user, ucloud_wire::now_ms() / 1000)
}

fn token_of(raw: &str, call: &str, user: &str, now: u64) -> Result<Token, Error> {
    let bad = |why: &str| Error::BadRequest(format!("the transfer token {why}"));
    let claims = ucloud_wire::transfer::read_verified(raw, call, now).map_err(|why| bad(&why))?;
    if claims.local.as_str() != user {
        return Err(bad("was issued for another account"));
    }
    // It names a file: hex of a sensible length, whatever the token says.
    let jti = claims.jti;
    if !(16..=64).contains(&jti.len()) || !jti.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("has no usable jti"));
    }
    Ok(Token {
        raw: raw.to_string(),
        jti,
        exp: claims.exp,
    })
}

/// The session directory, made (0700) when `create` is set.
fn dir(create: bool) -> Result<OwnedFd, Error> {
    let home = std::env::var("HOME").map_err(|_| {
        Error::Misconfigured("HOME is not set (ucloud-files runs under ucloud-dispatch)".into())
    })?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut fd = nix::fcntl::open(home.as_str(), flags, Mode::empty()).map_err(|e| {
        Error::Misconfigured(format!(
            "cannot open your home directory {home}: {}",
            e.desc()
        ))
    })?;
    for name in DIRS {
        if create {
            match mkdirat(&fd, name, Mode::S_IRWXU) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(Error::PermissionDenied(format!(
                        "cannot make ~/{} for transfer sessions: {}",
                        DIRS.join("/"),
                        e.desc()
                    )))
                }
            }
        }
        fd = openat(&fd, name, flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| match e {
            Errno::ENOENT => gone(),
            e => Error::PermissionDenied(format!(
                "cannot open ~/{} for transfer sessions: {}",
                DIRS.join("/"),
                e.desc()
            )),
        })?;
    }
    Ok(fd)
}

fn gone() -> Error {
    Error::NotFound(
        "this transfer link has no session (it was never made here, has expired, or was for another user)"
            .into(),
    )
}

/// Writes the session atomically (temporary file, fsync, rename).
pub fn write(token: &Token, session: &Value) -> Result<(), Error> {
    let d = dir(true)?;
    let name = format!("{}.json", token.jti);
    let tmp = format!(".{}.tmp", token.jti);
    let fd = openat(
        &d,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|e| Error::from_errno(e, "the transfer session"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(session.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Internal(format!("cannot write the transfer session: {e}")))?;
    renameat(&d, tmp.as_str(), &d, name.as_str())
        .map_err(|e| Error::from_errno(e, "the transfer session"))
}

pub fn read(token: &Token) -> Result<Value, Error> {
    if token.exp <= ucloud_wire::now_ms() / 1000 {
        return Err(gone());
    }
    let d = dir(false)?;
    let name = format!("{}.json", token.jti);
    let fd = openat(
        &d,
        name.as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT => gone(),
        e => Error::from_errno(e, "the transfer session"),
    })?;
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_SESSION)
        .read_to_end(&mut text)
        .map_err(|e| Error::Internal(format!("cannot read the transfer session: {e}")))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Internal(format!("the transfer session is damaged: {e}")))
}

/// Removes sessions whose token has expired, each after `release(jti, session)`
/// gave back what it left behind (an unfinished upload's partial files). Best effort.
pub fn sweep(release: &dyn Fn(&str, &Value)) {
    let Ok(d) = dir(false) else { return };
    let now = ucloud_wire::now_ms() / 1000;
    let Ok(listing) = crate::tree::list(d, "sessions") else {
        return;
    };
    for name in listing.names {
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let session = openat(
            &listing.dir,
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| {
            let mut text = Vec::new();
            std::fs::File::from(fd)
                .take(MAX_SESSION)
                .read_to_end(&mut text)
                .ok()?;
            serde_json::from_slice::<Value>(&text).ok()
        });
        let Some(session) = session else { continue };
        let expired = session
            .get("exp")
            .and_then(Value::as_u64)
            .is_some_and(|exp| exp <= now);
        if expired && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            release(stem, &session);
            let _ = unlinkat(&listing.dir, name.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Which item of the session a data-channel request is for (`?item=N`, default 0).
pub fn item<'a>(session: &'a Value, request: &Value) -> Result<(usize, &'a Value), Error> {
    let n = match request.get("query").and_then(|q| q.get("item")) {
        None => 0,
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().expect("checked digits")
        }
        Some(v) => return Err(Error::BadRequest(format!("item {v} is not a number"))),
    };
    let item = session
        .get("items")
        .and_then(Value::as_array)
        .and_then(|a| a.get(n))
        .ok_or_else(|| Error::NotFound(format!("this transfer link has no item {n}")))?;
    Ok((n, item))
}

/// The URL of a transfer's data channel, `path` (download or upload) with `query`
/// (the token, the item): what a create call answers, built from site.conf's
/// public_url that the dispatcher passes in the environment.
pub fn endpoint(path: &str, query: &str) -> Result<String, Error> {
    let public = std::env::var("UCLOUD_PUBLIC_URL").unwrap_or_default();
    let provider = std::env::var("UCLOUD_PROVIDER").unwrap_or_default();
    if public.is_empty() || provider.is_empty() {
        return Err(Error::Misconfigured(
            "UCLOUD_PUBLIC_URL or UCLOUD_PROVIDER is not set (public_url in site.conf)".into(),
        ));
    }
    Ok(format!(
        "{}/ucloud/{provider}/{path}?{query}",
        public.trim_end_matches('/')
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(b"{\"alg\":\"HS256\"}"),
            e.encode(claims.to_string())
        )
    }

    #[test]
    fn tokens_must_be_for_this_call_and_account() {
        let good = json!({"typ": "ucloud-im-transfer", "call": "files.download",
            "ucloud": "Alice#1", "local": "alice", "uid": 1001,
            "jti": "0123456789abcdef0123456789abcdef", "exp": 99});
        let t = token_of(&jwt(good.clone()), "files.download", "alice", 98).unwrap();
        assert_eq!(
            (t.jti.as_str(), t.exp),
            ("0123456789abcdef0123456789abcdef", 99)
        );
        let of = |claims: &Value, call, user| token_of(&jwt(claims.clone()), call, user, 98);
        assert!(of(&good, "files.upload", "alice").is_err());
        assert!(of(&good, "files.download", "bob").is_err());
        assert!(token_of(&jwt(good.clone()), "files.download", "alice", 99).is_err());
        for jti in ["../../etc/passwd", "abc", ""] {
            let mut bad = good.clone();
            bad["jti"] = json!(jti);
            assert!(of(&bad, "files.download", "alice").is_err(), "{jti}");
        }
        assert!(token_of("x", "files.download", "alice", 98).is_err());
        std::env::remove_var("UCLOUD_TRANSFER_TOKEN");
        assert!(token("files.download", "alice").is_err());
    }

    #[test]
    fn items_are_chosen_by_number() {
        let s = json!({"items": [{"path": "/1/a"}, {"path": "/1/b"}]});
        assert_eq!(item(&s, &json!({})).unwrap().0, 0);
        assert_eq!(
            item(&s, &json!({"query": {"item": "1"}})).unwrap().1["path"],
            "/1/b"
        );
        assert!(item(&s, &json!({"query": {"item": "2"}})).is_err());
        assert!(item(&s, &json!({"query": {"item": "-1"}})).is_err());
    }
}
