//! What UCloud says, through the outbox (ucloud-sender asks and stores the
//! answers; only files of the sender's own account count), and what each sharer's
//! own plugin recorded: the facts a run decides from.

use crate::site::{Failure, Site};
use crate::ucloud::{self, Share};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ucloud_wire::names::DriveId;
use ucloud_wire::outbox;
use ucloud_wire::record::MAX_RECORD;

/// The most pages of shares one run reads (250 shares each).
pub(crate) const MAX_PAGES: usize = 400;

/// UCloud's whole list, or `None` when it did not arrive in time. A question still
/// queued from an earlier run (UCloud down) is waited for, not asked again.
/// The shares, and the ids of those listed in a form this site cannot read.
pub(crate) type Listed = (Vec<Share>, Vec<String>);

pub(crate) fn fetch(site: &Site, wait: Duration) -> Result<Option<Listed>, Failure> {
    let deadline = Instant::now() + wait;
    let marker = site.records.join(".browse-queued");
    let mut shares: Vec<Share> = Vec::new();
    let mut unreadable = Vec::new();
    let mut next: Option<String> = None;
    for n in 0..MAX_PAGES {
        let reply = site
            .outbox
            .join(outbox::REPLIES)
            .join(format!("{}.json", ucloud::page_tag(n)));
        let queued = fs::read_to_string(&marker).ok().map(PathBuf::from);
        let still_queued = queued.as_ref().is_some_and(|q| q.exists());
        if !still_queued {
            let _ = fs::remove_file(&reply);
            let path = outbox::enqueue(&site.outbox, &ucloud::browse(next.as_deref(), n))
                .map_err(|e| (74, format!("cannot queue the question for UCloud: {e}")))?;
            fs::write(&marker, path.as_os_str().as_encoded_bytes())
                .map_err(|e| (74, format!("cannot write {}: {e}", marker.display())))?;
        }
        let page = loop {
            if let Some(page) = read_reply(site, &reply)? {
                if !queued_now(&marker) {
                    break page;
                }
            }
            if Instant::now() >= deadline {
                eprintln!("ucloud-share: UCloud's list of shares did not arrive within the wait");
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = fs::remove_file(&marker);
        let _ = fs::remove_file(&reply);
        let page = ucloud::parse_page(&page, &site.config.provider)
            .map_err(|why| (76, format!("UCloud's list of shares: {why}")))?;
        for (id, why) in page.refused {
            eprintln!(
                "ucloud-share: a share UCloud listed cannot be read, so it is not granted: {why}"
            );
            unreadable.extend(id);
        }
        shares.extend(page.shares);
        match page.next {
            Some(token) => next = Some(token),
            None => {
                let mut ids: Vec<&str> = shares.iter().map(|s| s.id.as_str()).collect();
                ids.sort_unstable();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return Err((76, "UCloud's list names a share twice".into()));
                }
                return Ok(Some((shares, unreadable)));
            }
        }
    }
    eprintln!("ucloud-share: more than {MAX_PAGES} pages of shares; acting on none of them");
    Ok(None)
}

pub(crate) fn queued_now(marker: &Path) -> bool {
    fs::read_to_string(marker)
        .ok()
        .is_some_and(|q| Path::new(&q).exists())
}

/// An answer from UCloud as the sender stored it: a regular file of the sender's
/// own account (other accounts of the outbox group write there too, and are not
/// UCloud), writable by nobody else.
pub(crate) fn read_reply(site: &Site, path: &Path) -> Result<Option<Value>, Failure> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err((74, format!("cannot open {}: {e}", path.display()))),
    };
    let meta = file
        .metadata()
        .map_err(|e| (74, format!("cannot stat {}: {e}", path.display())))?;
    if !meta.is_file() || Some(meta.uid()) != site.sender_uid || meta.mode() & 0o022 != 0 {
        return Err((
            76,
            format!(
                "{} is not a regular file of {}'s, writable by it alone",
                path.display(),
                site.config.sender_user
            ),
        ));
    }
    let bytes = ucloud_wire::read_capped(file, 64 << 20)
        .map_err(|e| (76, format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| (76, format!("{} is not JSON: {e}", path.display())))
}

/// Every sharer's own record of a share, by share id: `<id>.<uid>.<random>`, a
/// regular file of that uid's, writable by nobody else (the directory is
/// sticky, so nobody else can replace it). The owner and what it says; a file
/// anybody else made under a name is only that person's word.
pub(crate) fn consents(site: &Site) -> BTreeMap<String, Vec<(u32, Value)>> {
    let mut found: BTreeMap<String, Vec<(u32, Value)>> = BTreeMap::new();
    let Ok(entries) = fs::read_dir(&site.consents) else {
        return found;
    };
    for entry in entries.flatten().take(100_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((id, _)) = name.split_once('.') else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(entry.path())
        else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !meta.is_file() || meta.nlink() != 1 || meta.mode() & 0o022 != 0 {
            continue;
        }
        let Ok(text) = ucloud_wire::read_capped(file, MAX_RECORD) else {
            continue;
        };
        if let Ok(v) = serde_json::from_slice::<Value>(&text) {
            found
                .entry(id.to_string())
                .or_default()
                .push((meta.uid(), v));
        }
    }
    found
}

/// Whether the sharer's own plugin recorded this share as UCloud states it.
pub(crate) fn consented(
    consents: &BTreeMap<String, Vec<(u32, Value)>>,
    share: &Share,
    uid: u32,
) -> bool {
    consents.get(&share.id).is_some_and(|all| {
        all.iter().any(|(owner, v)| {
            *owner == uid
                && v["share"] == share.id.as_str()
                && v["source"] == share.source.as_str()
                && v["sharedWith"] == share.recipient.as_str()
        })
    })
}

pub(crate) fn drive_reply(site: &Site, share: &str) -> Option<DriveId> {
    let path = site
        .outbox
        .join(outbox::REPLIES)
        .join(format!("{}.json", ucloud::drive_tag(share)));
    let reply = read_reply(site, &path).ok()??;
    ucloud::parse_drive_reply(&reply).ok()
}
