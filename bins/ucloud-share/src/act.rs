//! One run: gathers the facts (UCloud's list through the outbox, the mappings, the
//! drive table, the records of earlier runs), asks plan.rs what to do, and does it,
//! one action at a time, each with its audit record. A record is written before
//! the step it describes, so a run that dies half-way is finished or undone by the
//! next: "granted" means "may have been granted, revoke it on teardown".

use crate::plan::{self, Account, Action, Grant, Record};
use crate::ucloud::{self, Share};
use nix::unistd::{geteuid, User};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ucloud_share::{gate, privilege, walk};
use ucloud_wire::account::{self, Own};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::{DriveId, UcloudName};
use ucloud_wire::outbox::{self, Message};
use ucloud_wire::record::{Drive, Mapping, MAX_RECORD};

pub struct Options {
    pub wait: Duration,
    pub grace: Duration,
}

/// How long the sharer's part of a grant or revocation may take: the sharer
/// controls the tree, and must not be able to hold every other share up.
const WALK_DEADLINE: Duration = Duration::from_secs(60);
/// A shared folder's size: entries looked at and levels entered (the sharer's
/// child has 1024 descriptors, one per level).
const LIMITS: walk::Limits = walk::Limits {
    entries: 1_000_000,
    depth: 512,
};
/// The most pages of shares one run reads (250 shares each).
const MAX_PAGES: usize = 400;

struct Site {
    config: SiteConfig,
    category: String,
    own: Own,
    /// Whose files UCloud's answers are (`sender_user`).
    sender_uid: Option<u32>,
    /// `var/lib/ucloud-im/shares`: the records, root 0700.
    records: PathBuf,
    /// `var/lib/ucloud-im/share-gates`: the mount points, root 0711.
    gates: PathBuf,
    /// `var/lib/ucloud-im/share-consents`: each sharer's own record, root 1733.
    consents: PathBuf,
    drives: PathBuf,
    mappings: PathBuf,
    outbox: PathBuf,
    state: PathBuf,
}

type Failure = (u8, String);

pub fn run(options: &Options) -> Result<(), Failure> {
    if !geteuid().is_root() {
        return Err((77, "must run as root (ucloud-share.service)".into()));
    }
    let site = site(true)?;
    let (mut records, bad_records) = load_records(&site.records)?;
    // Without a whole, trustworthy list nothing is granted; what was granted
    // lapses after the grace period (plan.rs).
    let (shares, unreadable) = match fetch(&site, options.wait) {
        Ok(Some((shares, unreadable))) => (Some(shares), unreadable),
        Ok(None) => (None, Vec::new()),
        Err((_, why)) => {
            eprintln!("ucloud-share: acting without UCloud's list of shares: {why}");
            (None, Vec::new())
        }
    };
    let (drives, _) = ucloud_wire::record::drive_table(&site.drives)
        .map_err(|e| (74, format!("cannot read the drive table: {e}")))?;
    let consents = consents(&site);
    let accounts = |name: &UcloudName| account_of(&site, name);
    let registered = |id: &str| drive_reply(&site, id);
    let consented = |share: &Share, uid: u32| consented(&consents, share, uid);
    let now = ucloud_wire::now_ms();
    let actions = plan::plan(&plan::Facts {
        shares: shares.as_deref(),
        unreadable: &unreadable,
        accounts: &accounts,
        drives: &drives,
        registered: &registered,
        consented: &consented,
        records: &records,
        now,
        grace_ms: options.grace.as_millis() as u64,
    });
    let mut failed = bad_records;
    let torn_down: Vec<&String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Teardown { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    // Every way in is closed before any sharer's walk runs: a sharer who stalls
    // her own walks delays only ACL clean-up, never anyone's revocation.
    let mut closed = Vec::new();
    for action in &actions {
        let Action::Teardown { id, why } = action else {
            continue;
        };
        let Some(record) = records.get_mut(id) else {
            continue;
        };
        let Some(grant) = record.granted.clone() else {
            continue;
        };
        let outcome = close(&site, id, &grant);
        let why = match outcome {
            Ok(Closed::Busy) => {
                format!("{why}; a process of the recipient still held the gate, so it was detached")
            }
            _ => why.clone(),
        };
        let quiet = matches!(outcome, Ok(Closed::Nothing));
        let outcome = outcome.map(|_| ());
        if outcome.is_ok() {
            closed.push(id.clone());
        }
        failed += usize::from(outcome.is_err());
        if remember(record, "close", &outcome) && !quiet {
            let action = Action::Teardown {
                id: id.clone(),
                why,
            };
            audit(&action, "close", id, &outcome);
        }
    }
    // Grants already in place are renewed before any walk, so that a slow or
    // stalled walk of one sharer's never lets another share's drive entry lapse.
    let until = now + options.grace.as_millis() as u64;
    for action in &actions {
        let Action::Grant { id, grant } = action else {
            continue;
        };
        let in_place = records.get(id).is_some_and(|r| {
            r.granted.as_ref() == Some(grant) && !r.failures.contains_key("grant")
        });
        if in_place && !torn_down.contains(&id) {
            if let Err(why) = renew_drive(&site, &drive_entry(&site, id, grant, until)) {
                eprintln!("ucloud-share: share {id}: cannot renew its drive entry: {why}");
            }
        }
    }
    // A sharer whose walk timed out gets no other walk this run.
    let mut stalled: Vec<u32> = Vec::new();
    let mut torn = Vec::new();
    for action in actions {
        let (id, name) = describe(&action);
        let record = records.entry(id.clone()).or_default();
        let sharer = match &action {
            Action::Grant { grant, .. } => Some(&grant.sharer),
            Action::Teardown { .. } => record.granted.as_ref().map(|g| &g.sharer),
            _ => None,
        }
        .cloned();
        let was = record.granted.clone();
        let outcome = match &action {
            _ if sharer.as_ref().is_some_and(|s| stalled.contains(&s.uid)) => {
                Err("skipped: a walk in this sharer's folders timed out in this run".into())
            }
            Action::Teardown { .. } if !closed.contains(&id) => {
                Err("the share's way in could not be closed; the next run tries again".into())
            }
            // A grant never replaces one whose teardown failed in this run: the
            // record of what to take back would be lost.
            Action::Grant { .. } if torn.contains(&(id.clone(), false)) => {
                Err("the old grant of this share is not taken back yet".into())
            }
            // Forgotten only once nothing granted is left to take back.
            Action::Forget { .. } if record.granted.is_some() => {
                Err("kept until its grant is taken back".into())
            }
            _ => execute(&site, &id, action.clone(), record, now, options.grace),
        };
        if matches!(action, Action::Teardown { .. }) {
            torn.push((id.clone(), outcome.is_ok()));
        }
        if let (Some(sharer), Err(why)) = (&sharer, &outcome) {
            if why.starts_with(&format!("as {}: timed out: ", sharer.local)) {
                stalled.push(sharer.uid);
            }
        }
        // A renewal, and a failure the last run already recorded, change nothing
        // worth another audit record every ten seconds.
        let renewal = match &action {
            Action::Grant { grant, .. } => {
                was.as_ref() == Some(grant) && !record.failures.contains_key("grant")
            }
            _ => false,
        };
        let news = remember(record, name, &outcome);
        let forget = matches!(action, Action::Forget { .. }) && outcome.is_ok();
        let saved = if forget {
            records.remove(&id);
            remove_record(&site.records, &id)
        } else {
            save_record(&site.records, &id, &records[&id])
        };
        let outcome = outcome.and(saved);
        failed += usize::from(outcome.is_err());
        if news && !(renewal && outcome.is_ok()) {
            audit(&action, name, &id, &outcome);
        }
    }
    if failed > 0 {
        return Err((
            75,
            format!("{failed} actions failed; see the audit records"),
        ));
    }
    Ok(())
}

/// Keeps an action's failure in the record; whether the outcome is news: a
/// success, or a failure other than the one the last run recorded.
fn remember(record: &mut Record, action: &str, outcome: &Result<(), String>) -> bool {
    match outcome {
        Ok(()) => {
            record.failures.remove(action);
            true
        }
        Err(why) => record.failures.insert(action.into(), why.clone()).as_ref() != Some(why),
    }
}

/// Ends every grant, whatever UCloud says: for the package's removal and the
/// stack's shutdown, before anything removes the state directory (removing it
/// through a mounted gate would delete the sharers' files). Gates no record names
/// are unmounted too. A grant is forgotten only once it is taken back whole.
pub fn close_all() -> Result<(), Failure> {
    if !geteuid().is_root() {
        return Err((77, "must run as root".into()));
    }
    let state = PathBuf::from(ucloud_wire::paths::state_dir());
    let gates = state.join("share-gates");
    let records_dir = state.join("shares");
    let (mut records, mut failed) = if records_dir.is_dir() {
        load_records(&records_dir)?
    } else {
        (BTreeMap::new(), 0)
    };
    // Shares may be off by now (no share product): closing needs none.
    let site = site(false).ok();
    for (id, record) in records.iter_mut() {
        let Some(grant) = record.granted.clone() else {
            continue;
        };
        let why = "every share is being closed (--close-all)".to_string();
        let outcome = match &site {
            Some(site) => close(site, id, &grant).and_then(|_| revoke(&grant)),
            None => Err("site.conf cannot be read: only the gates are unmounted".into()),
        };
        if outcome.is_ok() {
            record.granted = None;
            if let Err(e) = save_record(&records_dir, id, record) {
                eprintln!("ucloud-share: {e}");
            }
        }
        failed += usize::from(outcome.is_err());
        let action = Action::Teardown {
            id: id.clone(),
            why,
        };
        audit(&action, "close-all", id, &outcome);
    }
    if let Ok(entries) = fs::read_dir(&gates) {
        for entry in entries.flatten() {
            if let Err(e) = gate::unmount(&entry.path()) {
                failed += 1;
                eprintln!("ucloud-share: {}: {e}", entry.path().display());
            }
        }
    }
    if failed > 0 {
        return Err((75, format!("{failed} shares could not be closed")));
    }
    Ok(())
}

/// The site's configuration and directories; with `shares_on`, also the storage
/// category of the `share` product, without which shares are off.
fn site(shares_on: bool) -> Result<Site, Failure> {
    let config =
        SiteConfig::load(&ucloud_wire::paths::site_config()).map_err(|e| (78, e.to_string()))?;
    let table = ucloud_wire::products::Table::load(Path::new(&ucloud_wire::paths::etc_dir()))
        .map_err(|e| (78, e))?;
    let category = table
        .products
        .iter()
        .find(|p| p.name == "share")
        .filter(|p| {
            table
                .category(&p.category)
                .is_some_and(|c| c.kind == ucloud_wire::products::Kind::Storage)
        })
        .map(|p| p.category.clone())
        .or_else(|| (!shares_on).then(String::new))
        .ok_or((
            78,
            "products/files.json offers no product \"share\": shares are off on this site \
             (see ucloud-share(8))"
                .to_string(),
        ))?;
    let mut uids = Vec::new();
    for name in [
        &config.service_user,
        &config.gateway_user,
        &config.sender_user,
    ] {
        if let Ok(Some(u)) = User::from_name(name) {
            uids.push(u.uid.as_raw());
        }
    }
    let state = PathBuf::from(ucloud_wire::paths::state_dir());
    let sender_uid = User::from_name(&config.sender_user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let site = Site {
        sender_uid,
        category,
        own: Own { uids },
        records: state.join("shares"),
        gates: state.join("share-gates"),
        consents: state.join("share-consents"),
        drives: ucloud_wire::paths::drives_dir().into(),
        mappings: ucloud_wire::paths::mappings_dir().into(),
        outbox: ucloud_wire::paths::outbox_dir().into(),
        state,
        config,
    };
    // Made by the installer: a missing or loose one is a broken installation.
    for (dir, mode) in [
        (&site.records, 0o700),
        (&site.gates, 0o711),
        (&site.consents, 0o1733),
    ] {
        let meta = fs::symlink_metadata(dir).map_err(|e| {
            (
                78,
                format!(
                    "{}: {e} (the installation makes it, root {mode:o})",
                    dir.display()
                ),
            )
        })?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o7777 != mode {
            return Err((
                78,
                format!(
                    "{} must be a directory, root's, mode {mode:o}",
                    dir.display()
                ),
            ));
        }
    }
    Ok(site)
}

/// UCloud's whole list, or `None` when it did not arrive in time. A question still
/// queued from an earlier run (UCloud down) is waited for, not asked again.
/// The shares, and the ids of those listed in a form this site cannot read.
type Listed = (Vec<Share>, Vec<String>);

fn fetch(site: &Site, wait: Duration) -> Result<Option<Listed>, Failure> {
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

fn queued_now(marker: &Path) -> bool {
    fs::read_to_string(marker)
        .ok()
        .is_some_and(|q| Path::new(&q).exists())
}

/// An answer from UCloud as the sender stored it: a regular file of the sender's
/// own account (other accounts of the outbox group write there too, and are not
/// UCloud), writable by nobody else.
fn read_reply(site: &Site, path: &Path) -> Result<Option<Value>, Failure> {
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
fn consents(site: &Site) -> BTreeMap<String, Vec<(u32, Value)>> {
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
fn consented(consents: &BTreeMap<String, Vec<(u32, Value)>>, share: &Share, uid: u32) -> bool {
    consents.get(&share.id).is_some_and(|all| {
        all.iter().any(|(owner, v)| {
            *owner == uid
                && v["share"] == share.id.as_str()
                && v["source"] == share.source.as_str()
                && v["sharedWith"] == share.recipient.as_str()
        })
    })
}

fn drive_reply(site: &Site, share: &str) -> Option<DriveId> {
    let path = site
        .outbox
        .join(outbox::REPLIES)
        .join(format!("{}.json", ucloud::drive_tag(share)));
    let reply = read_reply(site, &path).ok()??;
    ucloud::parse_drive_reply(&reply).ok()
}

/// The local account a UCloud user is mapped to, if the mapping is current and
/// the account passes the same rule the dispatcher applies on every request.
fn account_of(site: &Site, name: &UcloudName) -> Option<Account> {
    let path = site.mappings.join(name.file_name());
    let text = read_small(&path).ok()?;
    let mapping = Mapping::parse(name, &text).ok()?;
    if mapping.expired(site.config.mapping_expire_after_ms, ucloud_wire::now_ms()) {
        return None;
    }
    let found = account::look_up(mapping.local.as_str()).ok()??;
    if found.facts.uid != mapping.uid {
        return None;
    }
    account::judge(&found.facts, &site.config, &site.own).ok()?;
    Some(Account {
        local: mapping.local,
        uid: mapping.uid,
    })
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    ucloud_wire::read_capped(file, MAX_RECORD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

fn describe(action: &Action) -> (String, &'static str) {
    match action {
        Action::Teardown { id, .. } => (id.clone(), "teardown"),
        Action::Forget { id } => (id.clone(), "forget"),
        Action::Register { id, .. } => (id.clone(), "register"),
        Action::Announce { id, .. } => (id.clone(), "announce"),
        Action::Refuse { id, .. } => (id.clone(), "refuse"),
        Action::Grant { id, .. } => (id.clone(), "grant"),
    }
}

fn execute(
    site: &Site,
    id: &str,
    action: Action,
    record: &mut Record,
    now: u64,
    grace: Duration,
) -> Result<(), String> {
    let send = |m: &Message| {
        outbox::enqueue(&site.outbox, m)
            .map(|_| ())
            .map_err(|e| format!("cannot queue {}: {e}", m.path))
    };
    match action {
        Action::Register { title, .. } => {
            // Queued first: after a crash a second registration is refused by
            // UCloud (the provider id is taken), never lost.
            send(&ucloud::register_drive(
                &site.config.provider,
                &site.category,
                id,
                &title,
            ))?;
            record.registered = true;
        }
        Action::Announce { drive, .. } => {
            send(&ucloud::update(id, Some(&drive), None))?;
            record.drive = Some(drive);
            record.announced = true;
        }
        // Said in the audit log only: UCloud's core keeps no status text from a
        // provider, and an update without a place would take the share's place
        // away. The sharer was told at once where that could be known
        // (shares.create).
        Action::Refuse { why, .. } => record.refused = Some(why),
        Action::Grant { grant, .. } => {
            record.drive = Some(grant.drive.clone());
            record.granted = Some(grant.clone());
            record.refused = None;
            save_record(&site.records, id, record)?;
            grant_access(site, id, &grant, now + grace.as_millis() as u64)?;
            record.confirmed = now;
        }
        Action::Teardown { .. } => {
            if let Some(grant) = record.granted.clone() {
                revoke(&grant)?;
            }
            record.granted = None;
        }
        Action::Forget { .. } => {
            let prefix = format!("{id}.");
            for entry in fs::read_dir(&site.consents).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    fs::remove_file(entry.path())
                        .map_err(|e| format!("cannot remove {}: {e}", entry.path().display()))?;
                }
            }
        }
    }
    Ok(())
}

/// The sharer's ACLs first (as the sharer), then the gate, then the drive entry
/// that lets UCloud calls in: each step needs the one before.
fn grant_access(site: &Site, id: &str, grant: &Grant, until: u64) -> Result<(), String> {
    let gid = gid_of(grant.sharer.uid)?;
    let (folder, to, write) = (grant.folder.clone(), grant.to.uid, grant.write);
    let deadline = Instant::now() + WALK_DEADLINE;
    let report = privilege::as_sharer(grant.sharer.uid, gid, deadline, move || {
        walk::grant(&folder, to, write, LIMITS)
    })
    .map_err(|e| format!("as {}: {e}", grant.sharer.local))?;
    let gate = site.gates.join(id);
    gate::mount_with(
        &grant.folder,
        grant.sharer.uid,
        grant.to.uid,
        (report.folder_dev, report.folder_ino),
        &gate,
        !grant.write,
    )
    .map_err(|e| format!("the gate: {e}"))?;
    put_drive(site, &drive_entry(site, id, grant, until))
}

/// The recipient's drive entry: the gate's folder, until `until`.
fn drive_entry(site: &Site, id: &str, grant: &Grant, until: u64) -> Drive {
    Drive {
        id: grant.drive.clone(),
        ucloud: grant.recipient.clone(),
        local: grant.to.local.clone(),
        base: gate::mount_point(&site.gates.join(id))
            .to_string_lossy()
            .into_owned(),
        kind: "share".into(),
        title: grant.title.clone(),
        until: Some(until),
    }
}

/// What closing a share's ways in found.
enum Closed {
    /// Neither a drive entry nor a mounted gate was left.
    Nothing,
    Done,
    /// A process still held the gate, so its mount was detached rather than
    /// unmounted (ucloud-share(8), WHEN ACCESS ENDS).
    Busy,
}

/// The ways in, in the reverse order of a grant: the drive entry (no more UCloud
/// calls), then the gate (no more path). Root's own steps only: quick.
fn close(site: &Site, id: &str, grant: &Grant) -> Result<Closed, String> {
    let removed = remove_drive(site, &grant.drive, grant.to.local.as_str())?;
    let outcome = gate::unmount(&site.gates.join(id)).map_err(|e| format!("the gate: {e}"))?;
    Ok(match outcome {
        gate::Outcome::Busy => Closed::Busy,
        gate::Outcome::Unchanged if !removed => Closed::Nothing,
        _ => Closed::Done,
    })
}

/// The ACL entries, as the sharer.
fn revoke(grant: &Grant) -> Result<(), String> {
    // Kept, and tried again, until the sharer's account answers: its files
    // may be on a home that is only away for a while.
    let gid = gid_of(grant.sharer.uid)?;
    let (folder, to) = (grant.folder.clone(), grant.to.uid);
    let deadline = Instant::now() + WALK_DEADLINE;
    let walked = privilege::as_sharer(grant.sharer.uid, gid, deadline, move || {
        walk::revoke(&folder, to, LIMITS)
    });
    // A folder that is gone (moved, a home away for a while) is tried again
    // next run: its entries may still be somewhere.
    let report = walked.map_err(|e| format!("as {}: {e}", grant.sharer.local))?;
    // Entries that refused to change (an immutable file) are out of reach: the
    // gate is gone and the folder's parents never let the recipient through.
    if report.errors > 0 {
        eprintln!(
            "ucloud-share: {}: {} entries kept the recipient's ACL entry (no way in is left)",
            grant.folder, report.errors
        );
    }
    Ok(())
}

fn gid_of(uid: u32) -> Result<u32, String> {
    User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| format!("cannot look up uid {uid}: {e}"))?
        .map(|u| u.gid.as_raw())
        .ok_or_else(|| format!("uid {uid} has no account"))
}

/// The registry's lock, so that a drive entry is never written while the
/// registry rewrites the table.
fn registry_lock(site: &Site) -> Result<nix::fcntl::Flock<File>, String> {
    let path = site.state.join("registry.lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
}

/// Writes a share's drive entry, never over an entry that is not a share's.
fn put_drive(site: &Site, drive: &Drive) -> Result<(), String> {
    let _lock = registry_lock(site)?;
    if let Some(existing) = existing_drive(site, &drive.id)? {
        if existing.kind != "share" {
            return Err(format!(
                "drive {} is in the drive table as a {} drive, not a share: left alone",
                drive.id, existing.kind
            ));
        }
    }
    write_atomic(&site.drives, drive.id.as_str(), &drive.to_json(), 0o644)
}

/// Whether there was an entry to remove.
fn remove_drive(site: &Site, id: &DriveId, local: &str) -> Result<bool, String> {
    let _lock = registry_lock(site)?;
    match existing_drive(site, id)? {
        Some(d) if d.kind == "share" && d.local.as_str() == local => {
            fs::remove_file(site.drives.join(id.as_str()))
                .map_err(|e| format!("cannot remove drive {id}: {e}"))?;
            File::open(&site.drives)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("cannot sync {}: {e}", site.drives.display()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A later `until` for a share's drive entry that is there: never one made anew,
/// which only a whole grant makes.
fn renew_drive(site: &Site, drive: &Drive) -> Result<(), String> {
    let _lock = registry_lock(site)?;
    match existing_drive(site, &drive.id)? {
        Some(d) if d.kind == "share" && d.local == drive.local && d.base == drive.base => {
            write_atomic(&site.drives, drive.id.as_str(), &drive.to_json(), 0o644)
        }
        _ => Ok(()),
    }
}

fn existing_drive(site: &Site, id: &DriveId) -> Result<Option<Drive>, String> {
    match read_small(&site.drives.join(id.as_str())) {
        Ok(text) => Drive::parse(id, &text)
            .map(Some)
            .map_err(|why| format!("drive {id}: {why}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read drive {id}: {e}")),
    }
}

/// The records, and how many could not be read (each said on stderr). A record
/// that does not parse is left for the admin; the others are acted on.
fn load_records(dir: &Path) -> Result<(BTreeMap<String, Record>, usize), Failure> {
    let mut records = BTreeMap::new();
    let mut unreadable = 0;
    let entries =
        fs::read_dir(dir).map_err(|e| (74, format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let parsed = read_small(&entry.path())
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_slice::<Value>(&t).map_err(|e| e.to_string()))
            .and_then(|v| Record::from_json(&v));
        match parsed {
            Ok(r) => {
                records.insert(id.to_string(), r);
            }
            Err(why) => {
                unreadable += 1;
                eprintln!(
                    "ucloud-share: {}: {why} (fix or remove it by hand; that share is left as it is)",
                    entry.path().display()
                );
            }
        }
    }
    Ok((records, unreadable))
}

fn save_record(dir: &Path, id: &str, record: &Record) -> Result<(), String> {
    write_atomic(dir, &format!("{id}.json"), &record.to_json(), 0o600)
}

fn remove_record(dir: &Path, id: &str) -> Result<(), String> {
    match fs::remove_file(dir.join(format!("{id}.json"))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove the record of share {id}: {e}")),
    }
}

fn write_atomic(dir: &Path, name: &str, value: &Value, mode: u32) -> Result<(), String> {
    ucloud_wire::record::write_atomic(dir, name, value, mode)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
}

fn audit(action: &Action, name: &str, id: &str, outcome: &Result<(), String>) {
    let mut line = json!({
        "time": ucloud_wire::now_ms(),
        "program": "ucloud-share",
        "pid": std::process::id(),
        "action": name,
        "share": id,
        "decision": if outcome.is_ok() { "done" } else { "failed" },
    });
    match action {
        Action::Grant { grant, .. } => {
            line["sharer"] = json!(grant.sharer.local.as_str());
            line["recipient"] = json!(grant.recipient.as_str());
            line["localUser"] = json!(grant.to.local.as_str());
            line["folder"] = json!(grant.folder);
            line["write"] = json!(grant.write);
            line["drive"] = json!(grant.drive.as_str());
        }
        Action::Teardown { why, .. } | Action::Refuse { why, .. } => line["why"] = json!(why),
        Action::Announce { drive, .. } => line["drive"] = json!(drive.as_str()),
        Action::Register { title, .. } => line["title"] = json!(title),
        Action::Forget { .. } => {}
    }
    if let Err(why) = outcome {
        line["error"] = json!(why);
    }
    // The lock every writer of the audit log takes (see ucloud-dispatch(8)).
    let _locked = std::os::fd::AsFd::as_fd(&std::io::stdout())
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusive).ok());
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush());
}
