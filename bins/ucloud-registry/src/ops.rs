//! The registry's operations, independent of how they are asked for: the admin
//! command today, a socket-activated service later. Each takes validated input,
//! records its decision in the audit log and then changes the store under its lock.

use crate::account;
use crate::audit::{Audit, Record};
use crate::error::Error;
use crate::store::{Drive, Lock, Mapping, Store};
use crate::ucloud::{self, Outbox};
use std::time::{Duration, Instant};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::{DriveId, LocalName, UcloudName};

pub struct Registry {
    pub store: Store,
    pub outbox: Outbox,
    pub audit: Audit,
}

/// How `add` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    Drive(Drive),
    /// The mapping is made; UCloud has not answered the drive registration yet.
    Pending,
}

/// One line of `list`.
#[derive(Debug)]
pub struct Row {
    pub mapping: Mapping,
    pub drive: Option<DriveId>,
}

#[derive(Debug, Default)]
pub struct Synced {
    pub recorded: Vec<Drive>,
    /// UCloud names still without a drive, with what is known about why.
    pub pending: Vec<(UcloudName, String)>,
    /// Answers for names that are no longer mapped, deleted.
    pub discarded: Vec<UcloudName>,
}

/// A UCloud name as the registry accepts it: valid for the wire, no whitespace
/// (UCloud never makes such names, and `list` output is whitespace-separated).
pub fn ucloud_name(raw: &str) -> Result<UcloudName, Error> {
    let name = UcloudName::new(raw).map_err(|e| Error::Refused(e.to_string()))?;
    if raw.chars().any(char::is_whitespace) {
        return Err(Error::Refused(format!(
            "UCloud username {raw:?} contains whitespace; UCloud makes no such names"
        )));
    }
    Ok(name)
}

impl Registry {
    pub fn site() -> Registry {
        Registry {
            store: Store::site(),
            outbox: Outbox::site(),
            audit: Audit::site(),
        }
    }

    /// Maps `raw_name` to the local account `raw_local` and registers the user's home
    /// drive with UCloud, waiting up to `wait` for the answer.
    pub fn add(
        &self,
        site: &SiteConfig,
        raw_name: &str,
        raw_local: &str,
        wait: Duration,
    ) -> Result<Added, Error> {
        let mut record = Record {
            action: "add",
            ucloud_user: Some(raw_name.to_string()),
            local_user: Some(raw_local.to_string()),
            uid: None,
        };
        let lock = self.store.lock()?;
        let mapping = match self.check_add(site, raw_name, raw_local, &mut record) {
            Ok(m) => m,
            Err(e) => {
                self.audit.refused(&record, &e);
                return Err(e);
            }
        };
        self.audit.allowed(&record)?;
        self.store.put_mapping(&lock, &mapping.0)?;
        let queued = self
            .outbox
            .send(&ucloud::approve_connection(&mapping.0.ucloud))
            .and_then(|()| {
                self.outbox.send(&ucloud::register_home_drive(
                    &site.provider,
                    &mapping.0.ucloud,
                ))
            });
        if let Err(e) = queued {
            // Without the registration the drive could never appear: undo the mapping
            // so that the admin can simply run `add` again.
            self.store.remove_mapping(&lock, &mapping.0.ucloud)?;
            self.audit.refused(&record, &e);
            return Err(e);
        }
        drop(lock);
        let deadline = Instant::now() + wait;
        loop {
            if let Some(drive) = self.record_drive(&mapping.0, &mapping.1)? {
                return Ok(Added::Drive(drive));
            }
            if Instant::now() >= deadline {
                return Ok(Added::Pending);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_add(
        &self,
        site: &SiteConfig,
        raw_name: &str,
        raw_local: &str,
        record: &mut Record,
    ) -> Result<(Mapping, String), Error> {
        let name = ucloud_name(raw_name)?;
        let local = LocalName::new(raw_local).map_err(|e| Error::Refused(e.to_string()))?;
        if let Some(existing) = self.store.mapping(&name)? {
            return Err(Error::Refused(format!(
                "UCloud user {name} is already mapped to {} (uid {}); run `ucloud-registry remove {name}` first",
                existing.local, existing.uid
            )));
        }
        let (mappings, _) = self.store.mappings()?;
        if let Some(other) = mappings.iter().find(|m| m.local == local) {
            return Err(Error::Refused(format!(
                "the local account {local} is already the target of UCloud user {}; one account serves one UCloud user",
                other.ucloud
            )));
        }
        let account = account::check(&local, site)?;
        record.uid = Some(account.uid);
        let mapping = Mapping {
            ucloud: name,
            local,
            uid: account.uid,
            created: ucloud_wire::now_ms(),
        };
        Ok((mapping, account.home))
    }

    /// Records the home drive of `mapping` when UCloud's answer is there. Takes the
    /// lock itself: `add` waits for the answer without holding it.
    fn record_drive(&self, mapping: &Mapping, home: &str) -> Result<Option<Drive>, Error> {
        let Some(id) = self.outbox.drive_reply(&mapping.ucloud)? else {
            return Ok(None);
        };
        let lock = self.store.lock()?;
        // Removed or remapped while we waited: the answer is for a mapping that is gone.
        if self.store.mapping(&mapping.ucloud)?.as_ref() != Some(mapping) {
            return Err(Error::Refused(format!(
                "the mapping of {} changed while waiting for UCloud; run `ucloud-registry sync`",
                mapping.ucloud
            )));
        }
        let drive = Drive {
            id,
            ucloud: mapping.ucloud.clone(),
            local: mapping.local.clone(),
            base: home.to_string(),
        };
        self.put_drive(&lock, &drive)?;
        self.outbox.discard_drive_reply(&mapping.ucloud);
        Ok(Some(drive))
    }

    fn put_drive(&self, lock: &Lock, drive: &Drive) -> Result<(), Error> {
        if let Some(existing) = self.store.drive(&drive.id)? {
            if existing.ucloud != drive.ucloud {
                return Err(Error::Refused(format!(
                    "UCloud answered drive id {} for {}, but that drive belongs to {}; nothing recorded",
                    drive.id, drive.ucloud, existing.ucloud
                )));
            }
        }
        self.store.put_drive(lock, drive)
    }

    /// Removes the mapping of `raw_name` and its drives, and tells UCloud the
    /// connection is gone.
    pub fn remove(&self, raw_name: &str) -> Result<Mapping, Error> {
        let mut record = Record {
            action: "remove",
            ucloud_user: Some(raw_name.to_string()),
            ..Default::default()
        };
        let lock = self.store.lock()?;
        let found = UcloudName::new(raw_name)
            .map_err(|e| Error::Refused(e.to_string()))
            .and_then(|name| match self.store.mapping(&name)? {
                Some(m) => Ok(m),
                None => Err(Error::Refused(format!(
                    "UCloud user {name} is not mapped (see `ucloud-registry list`)"
                ))),
            });
        let mapping = match found {
            Ok(m) => m,
            Err(e) => {
                self.audit.refused(&record, &e);
                return Err(e);
            }
        };
        record.local_user = Some(mapping.local.to_string());
        record.uid = Some(mapping.uid);
        self.audit.allowed(&record)?;
        // Queued first: if a removal below fails, running `remove` again is safe.
        self.outbox
            .send(&ucloud::clear_connection(&mapping.ucloud))?;
        for drive in self.store.drives_of(&mapping.ucloud)? {
            self.store.remove_drive(&lock, &drive.id)?;
        }
        self.store.remove_mapping(&lock, &mapping.ucloud)?;
        self.outbox.discard_drive_reply(&mapping.ucloud);
        Ok(mapping)
    }

    pub fn list(&self) -> Result<(Vec<Row>, Vec<String>), Error> {
        let (mappings, mut problems) = self.store.mappings()?;
        let (drives, drive_problems) = self.store.drives()?;
        problems.extend(drive_problems);
        let rows = mappings
            .into_iter()
            .map(|mapping| {
                let drive = drives
                    .iter()
                    .find(|d| d.ucloud == mapping.ucloud)
                    .map(|d| d.id.clone());
                Row { mapping, drive }
            })
            .collect();
        Ok((rows, problems))
    }

    /// Records the drives whose registration UCloud has answered since.
    pub fn sync(&self, site: &SiteConfig) -> Result<Synced, Error> {
        let (rows, _) = self.list()?;
        let mut synced = Synced::default();
        for row in rows.into_iter().filter(|r| r.drive.is_none()) {
            let name = row.mapping.ucloud.clone();
            let home = match account::check(&row.mapping.local, site) {
                Ok(a) if a.uid == row.mapping.uid => a.home,
                Ok(a) => {
                    synced.pending.push((
                        name,
                        format!(
                            "{} now has uid {}, mapped with {}: remove and add it again",
                            row.mapping.local, a.uid, row.mapping.uid
                        ),
                    ));
                    continue;
                }
                Err(e) => {
                    synced.pending.push((name, e.to_string()));
                    continue;
                }
            };
            match self.record_drive(&row.mapping, &home) {
                Ok(Some(drive)) => synced.recorded.push(drive),
                Ok(None) => {
                    let why = match self.outbox.failed_registration(&name) {
                        Some(path) => {
                            format!("UCloud refused the registration: see {}", path.display())
                        }
                        None => "no answer from UCloud yet (is ucloud-sender running?)".to_string(),
                    };
                    synced.pending.push((name, why));
                }
                Err(e) => synced.pending.push((name, e.to_string())),
            }
        }
        let _lock = self.store.lock()?;
        for name in self.outbox.answered_names() {
            if self.store.mapping(&name)?.is_none() {
                self.outbox.discard_drive_reply(&name);
                synced.discarded.push(name);
            }
        }
        Ok(synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ucloud_names_are_refused() {
        for bad in ["", "a\0b", "a\nb", "Donna Jensen#1", "tab\there"] {
            assert!(
                matches!(ucloud_name(bad), Err(Error::Refused(_))),
                "{bad:?}"
            );
        }
        assert!(ucloud_name(&"x".repeat(ucloud::MAX_NAME_BYTES + 1)).is_err());
        // Not refused, and harmless: stored under the hex of its bytes.
        assert_eq!(ucloud_name("../x").unwrap().file_name(), "2e2e2f78");
    }
}
