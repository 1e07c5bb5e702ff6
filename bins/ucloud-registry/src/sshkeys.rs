//! The user's UCloud SSH keys when they connect. UCloud's core sends a user's keys
//! (`ssh/keyUploaded`) only when they change, once and without retry, so a user
//! who connects after adding keys would have none here until their next change.
//! The registry therefore asks UCloud for them at the moment a person connects:
//! `POST /api/ssh/control/browse` (`SshControlBrowse`, orchestrators/ssh.go:
//! `SshKeysControlBrowseRequest{itemsPerPage, next}` → `fnd.PageV2[SshKey]`)
//! through the outbox (the sender holds UCloud's token, the registry never does),
//! and hands the connecting user's keys back on the socket to `ucloud-connect`,
//! which writes them as the person (`ucloud_wire::sshkeys`). Root never writes into
//! a home directory.
//!
//! The request names no user, so an answer is a page of keys of the provider's
//! users, each with its `owner`; only the connecting user's are kept. The sender's
//! account writes the answer, and what it says cannot be checked against anything
//! UCloud signed: so the keys are taken only while a person is connecting, only
//! for that person's own account, each key is checked as the plugin checks it, and
//! the audit record lists them (ucloud-registry(8), TRUST).

use crate::audit::Record;
use crate::error::Error;
use crate::ops::Registry;
use crate::store::{read_json, Mapping};
use crate::ucloud::{browse_ssh_keys as browse, ssh_tag, Outbox, SSH_KEYS_PER_PAGE};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ucloud_wire::names::UcloudName;
use ucloud_wire::outbox::{self, Message};
use ucloud_wire::sshkeys;

/// Pages followed for one person at most: 250 × 40 keys of the provider's users.
const MAX_PAGES: usize = 40;
/// A page of 250 keys of up to 8 KiB each, and room for the rest of the JSON.
const MAX_REPLY: u64 = 4 << 20;

/// The most key text handed to `ucloud-connect`, whose answer line is capped at 4 MiB.
const MAX_HANDED: usize = 2 << 20;

/// What came of asking.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    /// The user's keys as UCloud lists them (`{"id","specification":{"key"}}`),
    /// each one a key `ucloud_wire::sshkeys` accepts.
    Keys(Vec<Value>),
    /// Why there are none to hand over (no answer in time, UCloud refused, a bad key).
    Unavailable(String),
}

/// One page: the keys of `name`, and the cursor of the next page.
pub fn parse_page(
    reply: &Value,
    name: &UcloudName,
) -> Result<(Vec<Value>, Option<String>), String> {
    let items = reply
        .get("items")
        .and_then(Value::as_array)
        .ok_or("UCloud's answer has no items list")?;
    let mine = items
        .iter()
        .filter(|k| k.get("owner").and_then(Value::as_str) == Some(name.as_str()))
        .map(|k| {
            json!({"id": k.get("id").cloned().unwrap_or(Value::Null),
                   "specification": {"key": k.get("specification").and_then(|s| s.get("key")).cloned().unwrap_or(Value::Null)}})
        })
        .collect();
    let next = match reply.get("next") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 64 => Some(n.clone()),
        Some(other) => return Err(format!("UCloud's answer has a bad next cursor: {other}")),
    };
    Ok((mine, next))
}

/// Checks the whole list the way the plugin does: one bad key, none handed over.
pub fn check(keys: Vec<Value>) -> Fetched {
    let list = Value::Array(keys);
    if let Err(e) = sshkeys::parse_all(&list) {
        return Fetched::Unavailable(format!("UCloud's SSH keys were not taken: {e}"));
    }
    if list.to_string().len() > MAX_HANDED {
        return Fetched::Unavailable(format!(
            "UCloud lists more than {MAX_HANDED} bytes of SSH keys for you; none were taken"
        ));
    }
    let keys = list.as_array().cloned().unwrap_or_default();
    Fetched::Keys(keys)
}

pub struct Replies {
    pub dir: PathBuf,
}

impl Replies {
    pub fn of(outbox: &Outbox) -> Replies {
        Replies {
            dir: outbox.dir().to_path_buf(),
        }
    }

    fn reply_path(&self, name: &UcloudName) -> PathBuf {
        self.dir
            .join(outbox::REPLIES)
            .join(format!("{}.json", ssh_tag(name)))
    }

    fn read(&self, name: &UcloudName) -> Result<Option<Value>, String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.reply_path(name);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits(),
            )
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let mut bytes = Vec::new();
        file.take(MAX_REPLY + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_REPLY {
            return Err(format!(
                "{} is larger than {MAX_REPLY} bytes",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(&path);
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))
    }

    /// UCloud's refusal of the look-up, when the sender moved it to `failed/`:
    /// its status, and the files removed (the registry has handled it; the core
    /// that serves no such call would otherwise leave two files per connection).
    fn refused(&self, name: &UcloudName) -> Option<String> {
        let tag = ssh_tag(name);
        let failed = self.dir.join(outbox::FAILED);
        for entry in std::fs::read_dir(&failed).ok()?.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            // Written by the outbox group: never followed, never read past a record.
            let is_ours = read_json(&path)
                .ok()
                .flatten()
                .is_some_and(|m| m.get("reply").and_then(Value::as_str) == Some(tag.as_str()));
            if !is_ours {
                continue;
            }
            let response = path.with_extension("response");
            let status = read_json(&response)
                .ok()
                .flatten()
                .and_then(|r| r.get("status").cloned())
                .unwrap_or(Value::Null);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&response);
            return Some(format!(
                "UCloud refused to list SSH keys (status {status}); they arrive with your next key change in UCloud"
            ));
        }
        None
    }

    /// Waits until `deadline` for the answers, following pages; `send` queues the
    /// question for the next page.
    pub fn collect(
        &self,
        name: &UcloudName,
        deadline: Instant,
        mut send: impl FnMut(&Message) -> Result<(), Error>,
    ) -> Fetched {
        let mut keys = Vec::new();
        let mut pages = 0;
        let mut polls: u32 = 0;
        loop {
            polls += 1;
            match self.read(name) {
                Ok(Some(reply)) => match parse_page(&reply, name) {
                    Ok((mine, next)) => {
                        keys.extend(mine);
                        pages += 1;
                        let Some(next) = next else {
                            return check(keys);
                        };
                        if pages >= MAX_PAGES {
                            return Fetched::Unavailable(format!(
                                "UCloud lists more than {} SSH keys of this site's users; not all were read",
                                MAX_PAGES as u64 * SSH_KEYS_PER_PAGE
                            ));
                        }
                        if let Err(e) = send(&browse(name, Some(&next))) {
                            return Fetched::Unavailable(e.to_string());
                        }
                    }
                    Err(why) => return Fetched::Unavailable(why),
                },
                // failed/ may hold many files: looked through once a second.
                Ok(None) if polls % 10 == 1 => {
                    if let Some(why) = self.refused(name) {
                        return Fetched::Unavailable(why);
                    }
                }
                Ok(None) => {}
                Err(why) => return Fetched::Unavailable(why),
            }
            if Instant::now() >= deadline {
                return Fetched::Unavailable(
                    "UCloud has not listed your SSH keys in time; they arrive with your next key change in UCloud"
                        .into(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Asks UCloud for the keys of the user `mapping` just connected and waits up to
/// `wait` for them; audited, whatever came of it.
pub fn fetch(registry: &Registry, mapping: &Mapping, caller: u32, wait: Duration) -> Fetched {
    let deadline = Instant::now() + wait;
    let replies = Replies::of(&registry.outbox);
    registry.outbox.discard_ssh_reply(&mapping.ucloud);
    let fetched = match registry.outbox.send(&browse(&mapping.ucloud, None)) {
        Ok(()) => replies.collect(&mapping.ucloud, deadline, |m| registry.outbox.send(m)),
        Err(e) => Fetched::Unavailable(e.to_string()),
    };
    let record = Record {
        action: "sshKeys",
        ucloud_user: Some(mapping.ucloud.to_string()),
        local_user: Some(mapping.local.to_string()),
        uid: Some(mapping.uid),
        caller: Some(caller),
    };
    let note = match &fetched {
        Fetched::Keys(keys) => json!({"sshKeys": keys.iter().map(|k| json!({
            "id": k["id"],
            "type": k["specification"]["key"].as_str().and_then(|t| t.split_whitespace().next()),
        })).collect::<Vec<_>>()}),
        Fetched::Unavailable(why) => json!({"sshKeys": null, "why": why}),
    };
    if let Err(e) = registry.audit.allowed_noting(&record, note) {
        // Not written down, not handed over.
        return Fetched::Unavailable(e.to_string());
    }
    fetched
}

/// The part of the answer to `connect` that `ucloud-connect` installs.
pub fn answer(fetched: &Fetched) -> Value {
    match fetched {
        Fetched::Keys(keys) => json!({"keys": keys}),
        Fetched::Unavailable(why) => json!({"unavailable": why}),
    }
}

#[cfg(test)]
mod tests;
