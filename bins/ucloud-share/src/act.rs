//! One run: gathers the facts (UCloud's list through the outbox, the mappings, the
//! drive table, the records of earlier runs), asks plan.rs what to do, and does it,
//! one action at a time, each with its audit record. A record is written before
//! the step it describes, so a run that dies half-way is finished or undone by the
//! next: "granted" means "may have been granted, revoke it on teardown".

use crate::facts::{consented, consents, drive_reply, fetch};
use crate::plan::{self, Action, Grant, Record};
use crate::site::{account_of, site, Failure, Site};
use crate::store::{
    drive_entry, load_records, put_drive, remove_drive, remove_record, renew_drive, save_record,
};
use crate::ucloud::{self, Share};
use nix::unistd::{geteuid, User};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs::{self};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ucloud_share::{gate, privilege, walk};
use ucloud_wire::names::UcloudName;
use ucloud_wire::outbox::{self, Message};

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
