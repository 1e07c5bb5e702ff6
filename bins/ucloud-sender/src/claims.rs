//! Claims: how the lease's fencing token reaches the outbox. Before it sends a
//! queued message, the holder of the sender's lease moves it from `queue/` into
//! `claimed/<its token>/` with one `rename`, the file server's own atomic step. A
//! new holder first renames every older token's claim directory away, then puts
//! what it finds there back into `queue/` under the same names (so in the same
//! order). A paused holder that wakes up cannot claim any more: its directory is
//! gone, whatever its clock or its view of the lease directory says.
//!
//! The claim directory of token `n` is made, exclusively, before `n` is (in the
//! lease's `prepare` step), so no successor can learn of `n` before the directory
//! it has to revoke exists, and no process that lost the race for `n` can make it
//! again afterwards.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use ucloud_wire::lease::{Token, KEEP};
use ucloud_wire::outbox;

/// `outbox/claimed/`: the sender's own (ucloud-send, 0700).
pub const CLAIMED: &str = "claimed";
const REVOKED: &str = ".revoked-";

pub fn claims_dir(outbox: &Path) -> PathBuf {
    outbox.join(CLAIMED)
}

/// The lease's `prepare` step: makes `claimed/<n>`; `Ok(false)` when it exists
/// (another process is taking `n`).
pub fn prepare(outbox: &Path, token: Token) -> io::Result<bool> {
    let claims = claims_dir(outbox);
    match fs::create_dir(claims.join(token.name())) {
        Ok(()) => {
            File::open(&claims)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot make a claim directory in {}: {e}", claims.display()),
        )),
    }
}

/// What [`claim`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The message is ours to send, at this path.
    Ours(PathBuf),
    /// It left the queue meanwhile (an admin took it away): nothing to send.
    Gone,
    /// Our claim directory is gone: a successor revoked it.
    Revoked,
}

/// Moves `queued` into `claimed/<token>/`.
pub fn claim(outbox: &Path, token: Token, queued: &Path) -> io::Result<Claimed> {
    let Some(name) = queued.file_name() else {
        return Ok(Claimed::Gone);
    };
    let dir = claims_dir(outbox).join(token.name());
    let to = dir.join(name);
    match fs::rename(queued, &to) {
        Ok(()) => Ok(Claimed::Ours(to)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Claimed::Revoked),
            _ => Ok(Claimed::Gone),
        },
        Err(e) => Err(e),
    }
}

/// Puts a claimed message back at the head of the queue (a `--once` run that
/// gives up on it).
pub fn unclaim(outbox: &Path, claimed: &Path) -> io::Result<()> {
    let Some(name) = claimed.file_name() else {
        return Ok(());
    };
    match fs::rename(claimed, outbox.join(outbox::QUEUE).join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A new holder's first step: revokes every claim directory of a lower token
/// and puts the messages found in them back into `queue/`. Returns how many went
/// back. The tokens just below `mine` are revoked by name as well as found by
/// listing, so a directory listing served from a stale cache misses none of the
/// recent holders.
pub fn take_over(outbox: &Path, mine: Token) -> io::Result<usize> {
    let claims = claims_dir(outbox);
    let revoke = |t: Token| -> io::Result<()> {
        let from = claims.join(t.name());
        let to = claims.join(format!("{REVOKED}{}-{}", t.name(), mine.name()));
        match fs::rename(&from, &to) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    };
    for n in mine.0.saturating_sub(KEEP)..mine.0 {
        revoke(Token(n))?;
    }
    let mut revoked = Vec::new();
    for entry in fs::read_dir(&claims)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(t) = Token::parse(name) {
            if t < mine {
                revoke(t)?;
            }
        } else if name.starts_with(REVOKED) {
            revoked.push(entry.path());
        }
    }
    // Those revoked by name above, which the listing may not show yet.
    for entry in fs::read_dir(&claims)? {
        let path = entry?.path();
        let is_revoked = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(REVOKED));
        if is_revoked && !revoked.contains(&path) {
            revoked.push(path);
        }
    }
    let queue = outbox.join(outbox::QUEUE);
    let mut back = 0;
    for dir in revoked {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // Another new holder (a successor of ours) emptied it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let is_message = name
                .to_str()
                .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'));
            if !is_message || !entry.file_type()?.is_file() {
                ucloud_wire::log_warn!(
                    "ucloud-sender: {} is no message; left where it is",
                    entry.path().display()
                );
                continue;
            }
            match fs::rename(entry.path(), queue.join(&name)) {
                Ok(()) => back += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Not empty: something that is no message stays, and says so above.
        let _ = fs::remove_dir(&dir);
    }
    File::open(&queue)?.sync_all()?;
    File::open(&claims)?.sync_all()?;
    Ok(back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use ucloud_wire::outbox::{Message, Method};

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("claims-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in [outbox::TMP, outbox::QUEUE, CLAIMED] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    fn enqueue(dir: &Path, n: u64) -> PathBuf {
        outbox::enqueue(
            dir,
            &Message {
                method: Method::Post,
                path: "/api/x".into(),
                body: json!({ "n": n }),
                reply: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_paused_holders_claims_fail_and_nothing_is_lost() {
        let dir = scratch("paused");
        let queued: Vec<PathBuf> = (0..4).map(|n| enqueue(&dir, n)).collect();
        // Holder 5 claims two messages, then pauses (say while sending the second).
        assert!(prepare(&dir, Token(5)).unwrap());
        assert!(!prepare(&dir, Token(5)).unwrap(), "one process per number");
        let first = claim(&dir, Token(5), &queued[0]).unwrap();
        let second = claim(&dir, Token(5), &queued[1]).unwrap();
        assert!(matches!(first, Claimed::Ours(_)));
        // Holder 6 takes over: both come back, in their places.
        assert!(prepare(&dir, Token(6)).unwrap());
        assert_eq!(take_over(&dir, Token(6)).unwrap(), 2);
        assert_eq!(outbox::queued(&dir).unwrap(), queued);
        // Holder 5 wakes up: its next claim fails, whatever it believes.
        assert_eq!(claim(&dir, Token(5), &queued[2]).unwrap(), Claimed::Revoked);
        // Its send of the second finishes: removing its claim finds nothing, and
        // putting one back finds nothing either.
        let Claimed::Ours(second) = second else {
            panic!()
        };
        assert!(fs::remove_file(&second).is_err());
        unclaim(&dir, &second).unwrap();
        // Holder 6 works as before.
        assert!(matches!(
            claim(&dir, Token(6), &queued[0]).unwrap(),
            Claimed::Ours(_)
        ));
        // A message an admin removed is gone, not a revocation.
        fs::remove_file(&queued[3]).unwrap();
        assert_eq!(claim(&dir, Token(6), &queued[3]).unwrap(), Claimed::Gone);
        let left: Vec<_> = fs::read_dir(claims_dir(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [Token(6).name()]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_takeover_finishes_what_an_interrupted_one_began() {
        let dir = scratch("interrupted");
        let queued: Vec<PathBuf> = (0..3).map(|n| enqueue(&dir, n)).collect();
        assert!(prepare(&dir, Token(1)).unwrap());
        for q in &queued {
            claim(&dir, Token(1), q).unwrap();
        }
        // Token 2's holder revoked 1 and died before putting anything back; an
        // old token far below the window, and junk, lie there too.
        assert!(prepare(&dir, Token(2)).unwrap());
        fs::rename(
            claims_dir(&dir).join(Token(1).name()),
            claims_dir(&dir).join(format!("{REVOKED}{}-{}", Token(1).name(), Token(2).name())),
        )
        .unwrap();
        fs::create_dir(claims_dir(&dir).join(Token(0).name())).unwrap();
        let far = enqueue(&dir, 9);
        fs::rename(
            &far,
            claims_dir(&dir)
                .join(Token(0).name())
                .join(far.file_name().unwrap()),
        )
        .unwrap();
        fs::write(claims_dir(&dir).join("README"), "x").unwrap();
        assert!(prepare(&dir, Token(40)).unwrap());
        assert_eq!(take_over(&dir, Token(40)).unwrap(), 4);
        let mut all = queued.clone();
        all.push(far);
        all.sort();
        assert_eq!(outbox::queued(&dir).unwrap(), all);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hostile_things_in_a_revoked_claim_stay_put() {
        let dir = scratch("hostile");
        assert!(prepare(&dir, Token(1)).unwrap());
        let claimed = claims_dir(&dir).join(Token(1).name());
        fs::create_dir(claimed.join("sub.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", claimed.join("link.json")).unwrap();
        fs::write(claimed.join(".hidden.json"), "{}").unwrap();
        assert!(prepare(&dir, Token(2)).unwrap());
        assert_eq!(take_over(&dir, Token(2)).unwrap(), 0);
        assert!(outbox::queued(&dir).unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
