//! Single-use session identifiers (a terminal's): the identifier's `jti` is marked
//! in a root-only directory before the plugin starts, and a second use of it finds
//! the mark and is refused. Neither the dispatcher nor the gateway outlives a
//! request, so the mark is a file: created with O_EXCL, it is the one atomic test
//! and set the kernel offers across processes. Marks outlive their identifiers by a
//! lifetime and are then swept, a few per use.

use crate::error::Error;
use crate::trust::{self, Use};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::os::fd::AsFd;
use ucloud_wire::paths;
use ucloud_wire::transfer::{Claims, SESSION_LIFETIME_SECS};

/// Marks removed per use at most: a full directory is emptied over a few uses
/// instead of delaying one shell.
const SWEEP_AT_MOST: usize = 64;

/// Marks `claims`' identifier used; refuses it if it was used before.
pub fn use_once(claims: &Claims, now: u64) -> Result<(), Error> {
    let jti = &claims.jti;
    if jti.len() != 32 || !jti.bytes().all(|b| b.is_ascii_hexdigit()) {
        // Minted by us with 16 random bytes in hex; anything else is not ours.
        return Err(Error::BadToken(
            "the session identifier has a malformed jti".into(),
        ));
    }
    let dir_path = paths::sessions_used_dir();
    let dir = trust::open(&dir_path, Use::Dir).map_err(|e| match e {
        Error::Config(why) if why.ends_with("does not exist") => Error::Config(format!(
            "{why}: the installation makes it (root, 0700); by hand: \
             install -d -m 0700 -o root -g root {dir_path}"
        )),
        e => e,
    })?;
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(&dir, jti.as_str(), flags, Mode::from_bits_truncate(0o600)) {
        Ok(_) => {}
        Err(Errno::EEXIST) => {
            return Err(Error::BadToken(
                "this session identifier was used already; each opens one session \
                 (open the terminal again in UCloud for a new one)"
                    .into(),
            ))
        }
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot mark a session used in {dir_path}: {e}"
            )))
        }
    }
    sweep(&dir, now);
    Ok(())
}

/// Removes marks whose identifiers expired a lifetime ago: they can never be
/// presented again (verification refuses them as expired first). Best effort.
fn sweep(dir: &impl AsFd, now: u64) {
    let Ok(mut listing) = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let old = now.saturating_sub(2 * SESSION_LIFETIME_SECS);
    let mut stale = Vec::new();
    for entry in listing.iter().flatten() {
        let name = entry.file_name().to_owned();
        let Ok(text) = name.to_str() else { continue };
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let Ok(stat) = fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue;
        };
        if u64::try_from(stat.st_mtime).is_ok_and(|m| m < old) {
            stale.push(name);
            if stale.len() == SWEEP_AT_MOST {
                break;
            }
        }
    }
    for name in stale {
        let _ = unlinkat(dir, name.as_c_str(), UnlinkatFlags::NoRemoveDir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucloud_wire::names::{LocalName, UcloudName};

    #[test]
    fn a_malformed_jti_is_refused_before_any_file_is_named() {
        for jti in [
            "",
            "../../etc/passwd",
            "0123456789abcdef0123456789abcdeX",
            "ab",
        ] {
            let claims = Claims::new(
                "jobs.shell",
                UcloudName::new("AliceHansen#1001").unwrap(),
                LocalName::new("alice").unwrap(),
                1001,
                jti.into(),
                1_800_000_000,
                Some("job/1/0".into()),
            );
            let e = use_once(&claims, 1_800_000_010).unwrap_err();
            assert!(
                matches!(&e, Error::BadToken(w) if w.contains("malformed")),
                "{jti}: {e}"
            );
        }
    }
}
