//! The registry's operations, independent of how they are asked for: the admin
//! command or the socket-activated service (serve.rs, which decides who may ask for
//! what). Each takes validated input, records its decision in the audit log and then
//! changes the store under its lock.

use crate::account;
use crate::audit::{Audit, Record};
use crate::error::Error;
use crate::store::{Drive, Lock, Mapping, Store};
use crate::ticket::{Ticket, Tickets};
use crate::ucloud::{self, Outbox};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::{DriveId, LocalName, UcloudName};

pub struct Registry {
    pub store: Store,
    pub outbox: Outbox,
    pub audit: Audit,
    pub tickets: Tickets,
    /// Where a new mapping is announced to ucloud-project and the sender (sites
    /// with projects only).
    pub inbox: PathBuf,
}

/// How long a new mapping waits for ucloud-project to take its announcement (the
/// user's Slurm association, their projects' groups): the connect answers after it,
/// so the person's first job finds the association made.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(10);

/// What a valid ticket asks for.
enum Redeem {
    Map(Mapping, String),
    Again(Mapping),
}

/// What redeeming a ticket would do, shown to the person before anything is done.
#[derive(Debug, PartialEq, Eq)]
pub struct Preview {
    pub ucloud: UcloudName,
    pub local: LocalName,
    pub uid: u32,
    /// The UCloud user is connected to this very account already.
    pub again: bool,
}

/// How a redeemed ticket ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Connected {
    New(Mapping, Added),
    /// The UCloud user was already mapped to the caller: UCloud is told again.
    Again(Mapping),
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

/// Writes the replay request and the `mapped` nudge, then waits until the nudge is
/// taken (removed by ucloud-project) or `wait` passed. Returns whether it was taken.
fn announce(inbox: &Path, user: &UcloudName, wait: Duration) -> bool {
    use ucloud_wire::inbox;
    // Root writes here: only into root's sticky directories, never through a link
    // the sender's group put in their place.
    if let Err(e) = inbox::check_dirs(inbox) {
        ucloud_wire::log_err!("ucloud-registry: not announcing the mapping of {user}: {e}");
        return false;
    }
    if let Err(e) = inbox::request_replay(inbox, user) {
        ucloud_wire::log_err!("ucloud-registry: cannot ask for a replay of {user}: {e}");
    }
    let nudge = serde_json::json!({"type": "mapped", "username": user.as_str()});
    let path = match inbox::write_event(inbox, &nudge) {
        Ok(p) => p,
        Err(e) => {
            ucloud_wire::log_err!("ucloud-registry: cannot announce the mapping of {user}: {e}");
            return false;
        }
    };
    let deadline = Instant::now() + wait;
    while path.exists() {
        if Instant::now() >= deadline {
            ucloud_wire::log_err!(
                "ucloud-registry: ucloud-project has not taken the mapping of {user} in {} s; its next run will",
                wait.as_secs()
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
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
            tickets: Tickets::site(),
            inbox: PathBuf::from(ucloud_wire::paths::inbox_dir()),
        }
    }

    /// On a site with projects: asks the sender to have UCloud replay the user (their
    /// allocations and projects here), and ucloud-project to give the new account its
    /// Slurm association and project groups, waiting up to [`ANNOUNCE_WAIT`] for it
    /// to take the announcement. Neither is needed for the mapping itself, so a
    /// failure is logged, never an error: ucloud-project's next run and the stream's
    /// next replay catch up.
    fn announce_mapped(&self, site: &SiteConfig, user: &UcloudName) {
        if site.projects.is_none() {
            return;
        }
        announce(&self.inbox, user, ANNOUNCE_WAIT);
    }

    /// Maps `raw_name` to the local account `raw_local` and registers the user's home
    /// drive with UCloud, waiting up to `wait` for the answer.
    pub fn add(
        &self,
        site: &SiteConfig,
        raw_name: &str,
        raw_local: &str,
        wait: Duration,
        caller: Option<u32>,
    ) -> Result<Added, Error> {
        let mut record = Record {
            action: "add",
            ucloud_user: Some(raw_name.to_string()),
            local_user: Some(raw_local.to_string()),
            caller,
            ..Default::default()
        };
        let lock = self.store.lock()?;
        let mapping = match self.check_add(site, raw_name, raw_local, &mut record) {
            Ok(m) => m,
            Err(e) => {
                self.audit.refused(&record, &e);
                return Err(e);
            }
        };
        self.write_mapping(&lock, site, &mapping.0, &record)?;
        drop(lock);
        self.announce_mapped(site, &mapping.0.ucloud);
        self.wait_for_drive(site, &mapping.0, &mapping.1, wait)
    }

    /// The common end of `add` and a redeemed ticket: audit, write the mapping and
    /// queue UCloud's approveConnection and the look-up of the home drive by its
    /// provider id. The drive is registered only when UCloud has none (see
    /// `record_drive`): a user who connects again gets the drive UCloud kept.
    fn write_mapping(
        &self,
        lock: &Lock,
        site: &SiteConfig,
        mapping: &Mapping,
        record: &Record,
    ) -> Result<(), Error> {
        self.audit.allowed(record)?;
        self.store.put_mapping(lock, mapping)?;
        let queued = self
            .outbox
            .send(&ucloud::approve_connection(&mapping.ucloud))
            .and_then(|()| {
                self.outbox
                    .send(&ucloud::find_home_drive(&site.provider, &mapping.ucloud))
            });
        if let Err(e) = queued {
            // Without the registration the drive could never appear: undo the mapping
            // so that the admin can simply run `add` again.
            self.store.remove_mapping(lock, &mapping.ucloud)?;
            self.audit.refused(record, &e);
            return Err(e);
        }
        Ok(())
    }

    fn wait_for_drive(
        &self,
        site: &SiteConfig,
        mapping: &Mapping,
        home: &str,
        wait: Duration,
    ) -> Result<Added, Error> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(drive) = self.record_drive(site, mapping, home)? {
                return Ok(Added::Drive(drive));
            }
            if Instant::now() >= deadline {
                return Ok(Added::Pending);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A one-time ticket for `raw_name`, asked for by the service account when UCloud
    /// calls integration/connect.
    pub fn mint_ticket(&self, raw_name: &str, caller: Option<u32>) -> Result<Ticket, Error> {
        let record = Record {
            action: "ticket",
            ucloud_user: Some(raw_name.to_string()),
            caller,
            ..Default::default()
        };
        let name = match ucloud_name(raw_name) {
            Ok(n) => n,
            Err(e) => {
                self.audit.refused(&record, &e);
                return Err(e);
            }
        };
        let lock = self.store.lock()?;
        self.audit.allowed(&record)?;
        self.tickets.mint(&lock, &name, ucloud_wire::now_ms())
    }

    /// What redeeming `raw_ticket` as uid `uid` would do, with every check of
    /// [`Registry::redeem`] and no change: the ticket stays valid. `ucloud-connect`
    /// asks this first, to show the person whose UCloud user they are about to
    /// connect to their account.
    pub fn preview(&self, site: &SiteConfig, raw_ticket: &str, uid: u32) -> Result<Preview, Error> {
        let mut record = Record {
            action: "preview",
            uid: Some(uid),
            caller: Some(uid),
            ..Default::default()
        };
        let lock = self.store.lock()?;
        let checked = self.check_redeem(site, raw_ticket, uid, &lock, &mut record);
        let preview = match checked {
            Ok((_, Redeem::Map(m, _))) => Preview {
                ucloud: m.ucloud,
                local: m.local,
                uid: m.uid,
                again: false,
            },
            Ok((_, Redeem::Again(m))) => Preview {
                ucloud: m.ucloud,
                local: m.local,
                uid: m.uid,
                again: true,
            },
            Err(e) => {
                self.audit.refused(&record, &e);
                return Err(e);
            }
        };
        self.audit.allowed(&record)?;
        Ok(preview)
    }

    /// Redeems `raw_ticket` for the local account with uid `uid` (the kernel's word
    /// for who is asking), after the person confirmed that it is for the UCloud user
    /// `confirmed`. Policy: a UCloud user already mapped to another account is never
    /// remapped, and an account that serves one UCloud user serves no other;
    /// otherwise whoever holds the ticket connects its UCloud user to their own
    /// account (see ucloud-registry(8)). The ticket is spent only when it connects: a
    /// refusal leaves it for the right account.
    pub fn redeem(
        &self,
        site: &SiteConfig,
        raw_ticket: &str,
        confirmed: &str,
        uid: u32,
        wait: Duration,
    ) -> Result<Connected, Error> {
        let mut record = Record {
            action: "connect",
            uid: Some(uid),
            caller: Some(uid),
            ..Default::default()
        };
        let lock = self.store.lock()?;
        let checked = self
            .check_redeem(site, raw_ticket, uid, &lock, &mut record)
            .and_then(|(ticket, redeem)| {
                let wanted = match &redeem {
                    Redeem::Map(m, _) | Redeem::Again(m) => &m.ucloud,
                };
                if wanted.as_str() != confirmed {
                    return Err(Error::Refused(format!(
                        "the ticket is for UCloud user {wanted}, not {confirmed:?} as confirmed; nothing was connected"
                    )));
                }
                Ok((ticket, redeem))
            });
        let (ticket, redeem) = match checked {
            Ok(c) => c,
            Err(e) => {
                self.audit.refused(&record, &e);
                return Err(e);
            }
        };
        let (mapping, home) = match redeem {
            Redeem::Map(mapping, home) => (mapping, home),
            Redeem::Again(existing) => {
                // Mapped to this very account already: say yes again, UCloud may
                // have lost the first approval.
                self.audit.allowed(&record)?;
                self.tickets.spend(&lock, &ticket)?;
                self.outbox
                    .send(&ucloud::approve_connection(&existing.ucloud))?;
                return Ok(Connected::Again(existing));
            }
        };
        // Spent before the mapping is written: a failure after this point costs the
        // person a new ticket, never a second use of this one.
        self.tickets.spend(&lock, &ticket)?;
        self.write_mapping(&lock, site, &mapping, &record)?;
        drop(lock);
        self.announce_mapped(site, &mapping.ucloud);
        let added = self.wait_for_drive(site, &mapping, &home, wait)?;
        Ok(Connected::New(mapping, added))
    }

    /// Every check of a redemption, changing nothing but deleting an expired ticket.
    fn check_redeem(
        &self,
        site: &SiteConfig,
        raw_ticket: &str,
        uid: u32,
        lock: &Lock,
        record: &mut Record,
    ) -> Result<(Ticket, Redeem), Error> {
        let ticket = Ticket::parse(raw_ticket)?;
        let local = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(user)) => user.name,
            Ok(None) => {
                return Err(Error::Refused(format!(
                    "uid {uid} has no account name in NSS; only accounts can be connected"
                )))
            }
            Err(e) => return Err(Error::Io(format!("cannot look up uid {uid}: {}", e.desc()))),
        };
        record.local_user = Some(local.clone());
        let taken = self.tickets.peek(lock, &ticket)?.ok_or_else(|| {
            Error::Refused(
                "unknown ticket: it was used already, has expired, or was mistyped; \
                 press Connect in UCloud again for a new one"
                    .into(),
            )
        })?;
        record.ucloud_user = Some(taken.ucloud.to_string());
        if taken.expires <= ucloud_wire::now_ms() {
            return Err(Error::Refused(format!(
                "the ticket has expired (tickets last {} minutes); press Connect in UCloud again",
                crate::ticket::TTL_MS / 60_000
            )));
        }
        if uid == 0 {
            return Err(Error::Refused(
                "root is never connected to a UCloud user: run ucloud-connect as yourself, \
                 not with sudo (the ticket is still valid)"
                    .into(),
            ));
        }
        if let Some(existing) = self.store.mapping(&taken.ucloud)? {
            if existing.uid == uid && existing.local.as_str() == local {
                return Ok((ticket, Redeem::Again(existing)));
            }
            return Err(Error::Refused(format!(
                "UCloud user {} is already connected to another local account; \
                 it must be disconnected in UCloud (or by the site admin) first",
                taken.ucloud
            )));
        }
        let (mapping, home) = self.check_add(site, taken.ucloud.as_str(), &local, record)?;
        if mapping.uid != uid {
            return Err(Error::Refused(format!(
                "the account {local} has uid {} in NSS, but the caller has uid {uid}",
                mapping.uid
            )));
        }
        Ok((ticket, Redeem::Map(mapping, home)))
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
            created: Some(ucloud_wire::now_ms()),
        };
        Ok((mapping, account.home))
    }

    /// Records the home drive of `mapping` when UCloud's answer is there. Takes the
    /// lock itself: `add` waits for the answer without holding it.
    fn record_drive(
        &self,
        site: &SiteConfig,
        mapping: &Mapping,
        home: &str,
    ) -> Result<Option<Drive>, Error> {
        let id = match self.outbox.drive_reply(&mapping.ucloud)? {
            Some(id) => id,
            None => match self.outbox.find_reply(&mapping.ucloud)? {
                None => return Ok(None),
                Some(Some(id)) => id,
                Some(None) => return self.register_drive(site, mapping),
            },
        };
        let lock = self.store.lock()?;
        // Removed or remapped while we waited: the answer is for a mapping that is gone.
        if self.store.mapping(&mapping.ucloud)?.as_ref() != Some(mapping) {
            return Err(Error::Refused(format!(
                "the mapping of {} changed while waiting for UCloud; run `ucloud-registry sync`",
                mapping.ucloud
            )));
        }
        let drive = Drive::home(
            id,
            mapping.ucloud.clone(),
            mapping.local.clone(),
            home.to_string(),
        );
        self.put_drive(&lock, &drive)?;
        self.outbox.discard_drive_reply(&mapping.ucloud);
        Ok(Some(drive))
    }

    /// UCloud has no home drive for `mapping`: register it, once. Under the lock and
    /// only while the look-up's answer is still there, so that two waiters (an `add`
    /// and a `sync`) cannot both register it: the core would answer the second 409.
    fn register_drive(&self, site: &SiteConfig, mapping: &Mapping) -> Result<Option<Drive>, Error> {
        let _lock = self.store.lock()?;
        if self.store.mapping(&mapping.ucloud)?.as_ref() != Some(mapping) {
            return Err(Error::Refused(format!(
                "the mapping of {} changed while waiting for UCloud; run `ucloud-registry sync`",
                mapping.ucloud
            )));
        }
        if self.outbox.find_reply(&mapping.ucloud)? != Some(None) {
            return Ok(None);
        }
        self.outbox.send(&ucloud::register_home_drive(
            &site.provider,
            &mapping.ucloud,
        ))?;
        self.outbox.discard_find_reply(&mapping.ucloud);
        Ok(None)
    }

    fn put_drive(&self, lock: &Lock, drive: &Drive) -> Result<(), Error> {
        if let Some(existing) = self.store.drive(&drive.id)? {
            // A remapped user keeps their drive; a project's drive is never taken.
            if existing.ucloud() != drive.ucloud() {
                return Err(Error::Refused(format!(
                    "UCloud answered drive id {} for {}, but that drive belongs to {}; nothing recorded",
                    drive.id, drive.owner, existing.owner
                )));
            }
        }
        self.store.put_drive(lock, drive)
    }

    /// Removes the mapping of `raw_name` and its drives, and tells UCloud the
    /// connection is gone.
    pub fn remove(&self, raw_name: &str, caller: Option<u32>) -> Result<Mapping, Error> {
        self.remove_as("remove", raw_name, caller)
    }

    /// UCloud says the user disconnected: like `remove`, but a user who is not mapped
    /// is no error (UCloud retries, and the answer must stay the same).
    pub fn unlinked(&self, raw_name: &str, caller: Option<u32>) -> Result<Option<Mapping>, Error> {
        let name = ucloud_name(raw_name)?;
        if self.store.mapping(&name)?.is_none() {
            let record = Record {
                action: "unlinked",
                ucloud_user: Some(raw_name.to_string()),
                caller,
                ..Default::default()
            };
            self.audit.allowed(&record)?;
            // Said again: UCloud may not have heard the first clearConnection.
            self.outbox.send(&ucloud::clear_connection(&name))?;
            return Ok(None);
        }
        self.remove_as("unlinked", raw_name, caller).map(Some)
    }

    /// Whether a UCloud user has a current mapping here; nothing else about it. The
    /// `shares.create` plugin asks, as the sharer, so that a share with someone who
    /// has no account here is refused at once, with the reason, to the sharer: the
    /// one person UCloud shows that refusal to, and who learns no more from it than
    /// from trying the share.
    pub fn is_mapped(&self, site: &SiteConfig, raw_name: &str) -> Result<bool, Error> {
        let name = ucloud_name(raw_name)?;
        Ok(self
            .store
            .mapping(&name)?
            .is_some_and(|m| !m.expired(site.mapping_expire_after_ms, ucloud_wire::now_ms())))
    }

    /// Removes every mapping older than `mapping_expire_after_ms` and tells UCloud.
    pub fn expire(&self, site: &SiteConfig, now: u64) -> Result<Vec<Mapping>, Error> {
        let Some(max_age) = site.mapping_expire_after_ms else {
            return Ok(Vec::new());
        };
        // Listed under the lock: a mapping made again a moment ago is not old.
        let lock = self.store.lock()?;
        let (mappings, _) = self.store.mappings()?;
        let mut expired = Vec::new();
        for m in mappings {
            if m.expired(Some(max_age), now) {
                let record = Record {
                    action: "expire",
                    ucloud_user: Some(m.ucloud.to_string()),
                    local_user: Some(m.local.to_string()),
                    uid: Some(m.uid),
                    caller: None,
                };
                self.remove_locked(&lock, &m, &record)?;
                expired.push(m);
            }
        }
        Ok(expired)
    }

    fn remove_as(
        &self,
        action: &'static str,
        raw_name: &str,
        caller: Option<u32>,
    ) -> Result<Mapping, Error> {
        let mut record = Record {
            action,
            ucloud_user: Some(raw_name.to_string()),
            caller,
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
        self.remove_locked(&lock, &mapping, &record)?;
        Ok(mapping)
    }

    fn remove_locked(&self, lock: &Lock, mapping: &Mapping, record: &Record) -> Result<(), Error> {
        self.audit.allowed(record)?;
        // Queued first: if a removal below fails, running `remove` again is safe.
        self.outbox
            .send(&ucloud::clear_connection(&mapping.ucloud))?;
        for drive in self.store.drives_of(&mapping.ucloud)? {
            self.store.remove_drive(lock, &drive.id)?;
        }
        self.store.remove_mapping(lock, &mapping.ucloud)?;
        self.outbox.discard_drive_reply(&mapping.ucloud);
        self.outbox.discard_ssh_reply(&mapping.ucloud);
        Ok(())
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
                    .find(|d| d.ucloud() == Some(&mapping.ucloud))
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
            match self.record_drive(site, &row.mapping, &home) {
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
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "registry-ops-{tag}-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        for sub in [
            "",
            "state",
            "outbox",
            "outbox/tmp",
            "outbox/queue",
            "outbox/replies",
            "tickets",
        ] {
            std::fs::create_dir(dir.join(sub)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn registry(dir: &Path) -> Registry {
        let audit = dir.join("audit.log");
        std::fs::write(&audit, "").unwrap();
        std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = Store::at(&dir.join("state"));
        std::fs::create_dir(dir.join("state/mappings")).unwrap();
        std::fs::create_dir(dir.join("state/drives")).unwrap();
        Registry {
            store,
            outbox: Outbox::at(&dir.join("outbox")),
            audit: Audit::at(&audit),
            tickets: Tickets::at(&dir.join("tickets")),
            inbox: dir.join("inbox"),
        }
    }

    #[test]
    fn a_mapping_is_announced_and_waits_only_until_taken() {
        let dir = scratch("announce");
        for sub in ["inbox", "inbox/tmp", "inbox/events", "inbox/replay"] {
            std::fs::create_dir(dir.join(sub)).unwrap();
            // As the package makes them: root's, sticky but replay/ (the tests run as root).
            let mode = if sub == "inbox/replay" {
                0o2770
            } else {
                0o3770
            };
            std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let inbox = dir.join("inbox");
        let user = UcloudName::new("DonnaJensen#4512").unwrap();
        // Nobody takes it: the wait ends at its bound, the files stay for later.
        let started = Instant::now();
        assert!(!announce(&inbox, &user, Duration::from_millis(200)));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let events = ucloud_wire::inbox::events(&inbox).unwrap();
        assert_eq!(events.len(), 1);
        let nudge = ucloud_wire::inbox::read_event(&events[0]).unwrap();
        assert_eq!(
            nudge,
            serde_json::json!({"type": "mapped", "username": "DonnaJensen#4512"})
        );
        let asked = ucloud_wire::inbox::replay_requests(&inbox).unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].1, user);
        std::fs::remove_file(&events[0]).unwrap();
        // A consumer that takes it: the wait ends as soon as the file is gone.
        let taker = {
            let inbox = inbox.clone();
            std::thread::spawn(move || loop {
                if let Some(p) = ucloud_wire::inbox::events(&inbox).unwrap().first() {
                    std::fs::remove_file(p).unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            })
        };
        let started = Instant::now();
        assert!(announce(&inbox, &user, Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
        taker.join().unwrap();
        // Without an inbox the mapping still stands: the announcement only logs.
        assert!(!announce(
            &dir.join("missing"),
            &user,
            Duration::from_secs(1)
        ));
    }

    fn queued(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir.join("outbox/queue"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        out.sort();
        out
    }

    /// Needs root: the audit log must be root-owned (the tests run as root).
    #[test]
    fn old_mappings_expire_and_ucloud_is_told() {
        let dir = scratch("expire");
        let r = registry(&dir);
        let now = 10_000_000;
        let site = |extra: &str| {
            SiteConfig::parse(&format!(
                "provider = hpc\ngateway_user = gw\nservice_user = svc\n{extra}"
            ))
            .unwrap()
        };
        let mapping = |name: &str, local: &str, created: u64| Mapping {
            ucloud: UcloudName::new(name).unwrap(),
            local: LocalName::new(local).unwrap(),
            uid: 2000,
            created: Some(created),
        };
        let lock = r.store.lock().unwrap();
        r.store
            .put_mapping(&lock, &mapping("Old#1", "old", now - 5000))
            .unwrap();
        r.store
            .put_mapping(&lock, &mapping("Edge#1", "edge", now - 1000))
            .unwrap();
        r.store
            .put_mapping(&lock, &mapping("New#1", "new", now - 999))
            .unwrap();
        drop(lock);
        // Expiry off: nothing happens.
        assert!(r.expire(&site(""), now).unwrap().is_empty());
        let gone = r
            .expire(&site("mapping_expire_after_ms = 1000\n"), now)
            .unwrap();
        let mut names: Vec<&str> = gone.iter().map(|m| m.ucloud.as_str()).collect();
        names.sort();
        assert_eq!(names, ["Edge#1", "Old#1"]);
        let (left, _) = r.store.mappings().unwrap();
        assert_eq!(left, vec![mapping("New#1", "new", now - 999)]);
        let messages = queued(&dir);
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages.iter().all(|m| m.contains("clearConnection")),
            "{messages:?}"
        );
        let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
        assert_eq!(audit.matches("\"action\":\"expire\"").count(), 2, "{audit}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn is_mapped_says_only_whether_a_current_mapping_exists() {
        let dir = scratch("mapped");
        let r = registry(&dir);
        let site = |extra: &str| {
            SiteConfig::parse(&format!(
                "provider = hpc\ngateway_user = gw\nservice_user = svc\n{extra}"
            ))
            .unwrap()
        };
        let lock = r.store.lock().unwrap();
        let m = Mapping {
            ucloud: UcloudName::new("Here#1").unwrap(),
            local: LocalName::new("here").unwrap(),
            uid: 2000,
            created: Some(ucloud_wire::now_ms() - 5000),
        };
        r.store.put_mapping(&lock, &m).unwrap();
        drop(lock);
        assert!(r.is_mapped(&site(""), "Here#1").unwrap());
        assert!(!r.is_mapped(&site(""), "Elsewhere#2").unwrap());
        // An expired mapping no longer counts.
        assert!(!r
            .is_mapped(&site("mapping_expire_after_ms = 1000\n"), "Here#1")
            .unwrap());
        assert!(r.is_mapped(&site(""), "bad\u{0}name").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_home_drive_is_registered_only_when_ucloud_has_none() {
        use serde_json::json;
        let dir = scratch("find");
        let r = registry(&dir);
        let site =
            SiteConfig::parse("provider = hpc\ngateway_user = gw\nservice_user = svc\n").unwrap();
        let m = Mapping {
            ucloud: UcloudName::new("Donna#1").unwrap(),
            local: LocalName::new("donna").unwrap(),
            uid: 2000,
            created: Some(1),
        };
        let lock = r.store.lock().unwrap();
        r.store.put_mapping(&lock, &m).unwrap();
        drop(lock);
        let reply = |tag: String, v: serde_json::Value| {
            let path = dir.join("outbox/replies").join(format!("{tag}.json"));
            std::fs::write(path, v.to_string()).unwrap()
        };
        let replies = || {
            std::fs::read_dir(dir.join("outbox/replies"))
                .unwrap()
                .count()
        };
        let record = || r.record_drive(&site, &m, "/home/donna").unwrap();
        assert_eq!(record(), None, "no answer yet");
        assert!(queued(&dir).is_empty());

        // UCloud has none: registered once, however often the registry looks.
        reply(
            ucloud::find_tag(&m.ucloud),
            json!({"items": [], "itemsPerPage": 1000}),
        );
        assert_eq!(record(), None);
        assert_eq!(record(), None);
        let q = queued(&dir);
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(
            q[0].contains("/api/files/collections/control/register"),
            "{q:?}"
        );
        assert_eq!(replies(), 0);
        reply(
            ucloud::drive_tag(&m.ucloud),
            json!({"responses": [{"id": "41"}]}),
        );
        assert_eq!(record().unwrap().id.as_str(), "41");

        // Disconnected and connected again: UCloud's drive comes back, unregistered.
        let lock = r.store.lock().unwrap();
        r.store
            .remove_drive(&lock, &DriveId::new("41").unwrap())
            .unwrap();
        drop(lock);
        reply(
            ucloud::find_tag(&m.ucloud),
            json!({"items": [{"id": "41", "owner": {"createdBy": "Donna#1", "project": null},
                "providerGeneratedId": ucloud::home_drive_provider_id("hpc", &m.ucloud)}]}),
        );
        let again = record().unwrap();
        assert_eq!(
            (again.id.as_str(), again.base.as_str()),
            ("41", "/home/donna")
        );
        assert_eq!(queued(&dir).len(), 1, "registered twice");
        assert_eq!(replies(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tickets_are_single_use_and_expire() {
        let dir = scratch("tickets");
        let r = registry(&dir);
        let name = UcloudName::new("T#1").unwrap();
        let lock = r.store.lock().unwrap();
        let fresh = r.tickets.mint(&lock, &name, ucloud_wire::now_ms()).unwrap();
        let stale = r
            .tickets
            .mint(
                &lock,
                &name,
                ucloud_wire::now_ms() - crate::ticket::TTL_MS - 1,
            )
            .unwrap();
        // Looking does not spend it; spending does.
        for _ in 0..2 {
            let seen = r.tickets.peek(&lock, &fresh).unwrap().unwrap();
            assert_eq!(seen.ucloud, name);
            assert!(seen.expires > ucloud_wire::now_ms());
        }
        r.tickets.spend(&lock, &fresh).unwrap();
        assert!(
            r.tickets.peek(&lock, &fresh).unwrap().is_none(),
            "used twice"
        );
        // Minting sweeps expired tickets away.
        let _ = r.tickets.mint(&lock, &name, ucloud_wire::now_ms()).unwrap();
        assert!(
            r.tickets.peek(&lock, &stale).unwrap().is_none(),
            "stale ticket kept"
        );
        // An expired ticket is shown as such once, and deleted.
        let late = r
            .tickets
            .mint(
                &lock,
                &name,
                ucloud_wire::now_ms() - crate::ticket::TTL_MS - 1,
            )
            .unwrap();
        let seen = r.tickets.peek(&lock, &late).unwrap().unwrap();
        assert!(seen.expires <= ucloud_wire::now_ms());
        assert!(r.tickets.peek(&lock, &late).unwrap().is_none());
        drop(lock);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A ticket presented first by the wrong account (root, a system
    /// account, a uid without an account) is refused and stays valid; the preview
    /// spends nothing either.
    #[test]
    fn refusals_leave_the_ticket_valid() {
        let dir = scratch("unspent");
        let r = registry(&dir);
        let site =
            SiteConfig::parse("provider = hpc\ngateway_user = gw\nservice_user = svc\n").unwrap();
        let name = UcloudName::new("Donna#1").unwrap();
        let lock = r.store.lock().unwrap();
        let ticket = r.tickets.mint(&lock, &name, ucloud_wire::now_ms()).unwrap();
        drop(lock);
        let wait = Duration::ZERO;
        for (uid, why) in [(0, "root"), (1, "min_uid"), (3_999_999_999, "no account")] {
            let e = r.preview(&site, ticket.as_str(), uid).unwrap_err();
            assert!(e.to_string().contains(why), "preview as {uid}: {e}");
            let e = r
                .redeem(&site, ticket.as_str(), "Donna#1", uid, wait)
                .unwrap_err();
            assert!(e.to_string().contains(why), "connect as {uid}: {e}");
        }
        let lock = r.store.lock().unwrap();
        let left = r.tickets.peek(&lock, &ticket).unwrap();
        assert_eq!(left.map(|t| t.ucloud), Some(name), "the ticket was spent");
        drop(lock);
        assert!(queued(&dir).is_empty(), "something was sent to UCloud");
        let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
        assert_eq!(
            audit.matches("\"decision\":\"refused\"").count(),
            6,
            "{audit}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

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
