//! The inbox: what UCloud's notification stream told the provider, one file per
//! event, beside the outbox and made like it, but for the sender's own group alone
//! (`root:<sender's group> 2770`; the outbox's group is wider).
//!
//! ```text
//! inbox/tmp/             files being written
//! inbox/events/N.json    one event ([`crate::apm::Event::to_json`], or a nudge
//!                        `{"type":"mapped","username"}` from the registry), named so
//!                        that names sort in the order written
//! inbox/replay/NAME      a request for the sender to ask the stream to replay one
//!                        user (NAME: [`UcloudName::file_name`]), removed once sent
//! inbox/replay-from      the sender's replay start, ms since the epoch
//! ```
//!
//! The sender writes events and `replay-from`; the registry writes replay requests
//! and nudges; ucloud-project reads and removes events. Anyone in the sender's
//! group can write here, so the reader treats every file as untrusted input:
//! [`read_event`] caps its size and checks its shape, and acts on nothing a file
//! alone asserts about this site (mappings come from the registry's store).
//!
//! The directories are root's with the sticky bit (`3770`; `replay/`, whose requests
//! the sender removes, `2770`): the group may add entries but never rename or remove
//! one it does not own, so it cannot put a symbolic link where `events/` or `tmp/`
//! was and have root remove or rename files elsewhere through it. Root's readers and writers check that with
//! [`check_dirs`] before they touch anything.

use crate::names::UcloudName;
use serde_json::Value;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const TMP: &str = "tmp";
pub const EVENTS: &str = "events";
pub const REPLAY: &str = "replay";
pub const REPLAY_FROM: &str = "replay-from";
/// The largest event file read (a project of many thousand members fits).
pub const MAX_EVENT: u64 = 32 << 20;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Whether the inbox at `inbox` and its subdirectories are what root may work in:
/// real directories (not links), owned by root, with the sticky bit, writable by
/// nobody but root and the group. For root's programs (the registry, ucloud-project);
/// the sender, which owns nothing here, does not need it.
pub fn check_dirs(inbox: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // `replay/` is not sticky: the sender removes the requests root wrote there once
    // sent; it is a root-owned directory in a sticky one, so it cannot be swapped.
    for (dir, sticky) in [
        (inbox.to_path_buf(), true),
        (inbox.join(TMP), true),
        (inbox.join(EVENTS), true),
        (inbox.join(REPLAY), false),
    ] {
        let meta = fs::symlink_metadata(&dir)?;
        let sticky_ok = !sticky || meta.mode() & 0o1000 != 0;
        if !meta.file_type().is_dir() || meta.uid() != 0 || !sticky_ok || meta.mode() & 0o002 != 0 {
            return Err(invalid(format!(
                "{} must be a directory owned by root, not world-writable, and but for replay/ \
                 sticky (root:<sender's group> 3770, replay/ 2770, as the package's tmpfiles.d \
                 makes them); it is not, so nothing in the inbox is touched",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// What `events/` holds besides events: anything that is not a regular `*.json`
/// file (links, directories, other names). Root's reader removes them, or they
/// would keep the path unit (`DirectoryNotEmpty=`) starting it for ever.
pub fn strays(inbox: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(inbox.join(EVENTS))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if !regular || !name.ends_with(".json") || name.starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `bytes` to `dir/sub/name` whole or not at all (tmp, fsync, rename,
/// fsync of the directory), readable by the group (0640).
fn put(dir: &Path, sub: &str, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(TMP).join(name);
    let done = dir.join(sub).join(name);
    let _ = fs::remove_file(&tmp);
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)?;
    let written = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &done)?;
        File::open(dir.join(sub))?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|_| done)
}

/// Writes one event into `inbox/events/`; names sort in the order written:
/// milliseconds, pid, then a per-process counter.
pub fn write_event(inbox: &Path, event: &Value) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "{:013}-{:010}-{:06}.json",
        crate::now_ms(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    put(inbox, EVENTS, &name, event.to_string().as_bytes())
}

/// The event files waiting, oldest first (regular `*.json` names only).
pub fn events(inbox: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = fs::read_dir(inbox.join(EVENTS))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
        })
        .collect();
    names.sort();
    Ok(names)
}

/// One event file: not through a symbolic link, at most [`MAX_EVENT`] bytes, a
/// JSON object whose `type` is a string.
pub fn read_event(path: &Path) -> io::Result<Value> {
    let file = File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let bytes = match crate::read_capped(file, MAX_EVENT) {
        Ok(b) => b,
        Err(crate::Capped::Io(e)) => return Err(e),
        Err(e) => return Err(invalid(format!("the event {e}"))),
    };
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    if !value["type"].is_string() {
        return Err(invalid("an event without a string \"type\"".into()));
    }
    Ok(value)
}

/// The sender's replay start; 0 (replay everything) when none is stored yet.
pub fn replay_from(inbox: &Path) -> io::Result<i64> {
    let mut text = String::new();
    match File::open(inbox.join(REPLAY_FROM)) {
        Ok(f) => f.take(64).read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    text.trim()
        .parse::<i64>()
        .map_err(|_| invalid(format!("{REPLAY_FROM} holds {text:?}, not a number")))
}

pub fn set_replay_from(inbox: &Path, ms: i64) -> io::Result<()> {
    let name = format!("{REPLAY_FROM}.{}", std::process::id());
    let tmp = put(inbox, TMP, &name, format!("{ms}\n").as_bytes())?;
    fs::rename(&tmp, inbox.join(REPLAY_FROM))?;
    File::open(inbox)?.sync_all()
}

/// Asks the sender to have the stream replay `user` (a user who just connected).
pub fn request_replay(inbox: &Path, user: &UcloudName) -> io::Result<()> {
    put(inbox, REPLAY, &user.file_name(), b"").map(|_| ())
}

/// The users whose replay is asked for, with the request files to remove once sent.
/// Names that are no [`UcloudName::file_name`] are skipped.
pub fn replay_requests(inbox: &Path) -> io::Result<Vec<(PathBuf, UcloudName)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(inbox.join(REPLAY))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(String::from) else {
            continue;
        };
        if let Ok(user) = UcloudName::from_file_name(&name) {
            out.push((entry.path(), user));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("inbox-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in [TMP, EVENTS, REPLAY] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    fn sticky(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.to_path_buf(), dir.join(TMP), dir.join(EVENTS)] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o3770)).unwrap();
        }
        fs::set_permissions(dir.join(REPLAY), fs::Permissions::from_mode(0o2770)).unwrap();
    }

    #[test]
    fn root_works_only_in_sticky_root_directories_and_finds_strays() {
        let dir = scratch("dirs");
        // As made by mkdir: no sticky bit.
        assert!(check_dirs(&dir).is_err());
        sticky(&dir);
        let am_root = nix::unistd::geteuid().is_root();
        assert_eq!(
            check_dirs(&dir).is_ok(),
            am_root,
            "owned by root only when run as root"
        );
        if am_root {
            // events/ swapped for a link to elsewhere: refused.
            fs::rename(dir.join(EVENTS), dir.join("old")).unwrap();
            std::os::unix::fs::symlink("/etc", dir.join(EVENTS)).unwrap();
            assert!(check_dirs(&dir).is_err());
            fs::remove_file(dir.join(EVENTS)).unwrap();
            fs::rename(dir.join("old"), dir.join(EVENTS)).unwrap();
            assert!(check_dirs(&dir).is_ok());
        }
        let ev = dir.join(EVENTS);
        fs::write(ev.join("good.json"), b"{}").unwrap();
        fs::write(ev.join("note.txt"), b"x").unwrap();
        fs::create_dir(ev.join("sub.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ev.join("link.json")).unwrap();
        let found: Vec<String> = strays(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(found, ["link.json", "note.txt", "sub.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn events_come_back_in_the_order_written() {
        let dir = scratch("order");
        for n in 0..20 {
            write_event(&dir, &json!({"type": "wallet", "n": n})).unwrap();
        }
        let files = events(&dir).unwrap();
        let read: Vec<i64> = files
            .iter()
            .map(|p| read_event(p).unwrap()["n"].as_i64().unwrap())
            .collect();
        assert_eq!(read, (0..20).collect::<Vec<_>>());
        assert!(fs::read_dir(dir.join(TMP)).unwrap().next().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_event_files_are_refused() {
        let dir = scratch("hostile");
        let ev = dir.join(EVENTS);
        fs::write(ev.join("a.json"), b"not json").unwrap();
        fs::write(ev.join("b.json"), b"[1,2]").unwrap();
        fs::write(ev.join("c.json"), br#"{"type":3}"#).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ev.join("d.json")).unwrap();
        fs::write(ev.join(".hidden.json"), b"{}").unwrap();
        fs::write(ev.join("e.txt"), b"{}").unwrap();
        File::create(ev.join("f.json"))
            .unwrap()
            .set_len(MAX_EVENT + 1)
            .unwrap();
        let listed = events(&dir).unwrap();
        let names: Vec<_> = listed
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        // The link is no regular file; dot files and other names are skipped.
        assert_eq!(names, ["a.json", "b.json", "c.json", "f.json"]);
        for p in &listed {
            assert!(read_event(p).is_err(), "{p:?}");
        }
        // Opened directly, the link is refused too (O_NOFOLLOW).
        assert!(read_event(&ev.join("d.json")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replay_time_and_requests_round_trip() {
        let dir = scratch("replay");
        assert_eq!(replay_from(&dir).unwrap(), 0);
        set_replay_from(&dir, 1_700_000_000_123).unwrap();
        assert_eq!(replay_from(&dir).unwrap(), 1_700_000_000_123);
        fs::write(dir.join(REPLAY_FROM), "yesterday").unwrap();
        assert!(replay_from(&dir).is_err());
        let user = UcloudName::new("DonnaJensen#4512").unwrap();
        request_replay(&dir, &user).unwrap();
        request_replay(&dir, &user).unwrap();
        fs::write(dir.join(REPLAY).join("not a name/"), b"").ok();
        let asked = replay_requests(&dir).unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].1, user);
        fs::remove_dir_all(&dir).unwrap();
    }
}
