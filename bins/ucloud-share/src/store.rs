//! Root's files: the records of earlier runs (`shares/`) and the recipients'
//! drive-table entries, written under the registry's lock and never over an entry
//! that is not a share's.

use crate::plan::{Grant, Record};
use crate::site::{read_small, Failure, Site};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use ucloud_share::gate;
use ucloud_wire::names::DriveId;
use ucloud_wire::record::{Drive, DriveOwner};

/// The recipient's drive entry: the gate's folder, until `until`.
pub(crate) fn drive_entry(site: &Site, id: &str, grant: &Grant, until: u64) -> Drive {
    Drive {
        id: grant.drive.clone(),
        owner: DriveOwner::User {
            ucloud: grant.recipient.clone(),
            local: grant.to.local.clone(),
        },
        base: gate::mount_point(&site.gates.join(id))
            .to_string_lossy()
            .into_owned(),
        kind: "share".into(),
        title: grant.title.clone(),
        until: Some(until),
    }
}

/// Writes a share's drive entry, never over an entry that is not a share's.
pub(crate) fn put_drive(site: &Site, drive: &Drive) -> Result<(), String> {
    let _lock = ucloud_wire::record::registry_lock(&site.state)?;
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
pub(crate) fn remove_drive(site: &Site, id: &DriveId, local: &str) -> Result<bool, String> {
    let _lock = ucloud_wire::record::registry_lock(&site.state)?;
    match existing_drive(site, id)? {
        Some(d) if d.kind == "share" && d.local().is_some_and(|l| l.as_str() == local) => {
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
pub(crate) fn renew_drive(site: &Site, drive: &Drive) -> Result<(), String> {
    let _lock = ucloud_wire::record::registry_lock(&site.state)?;
    match existing_drive(site, &drive.id)? {
        Some(d)
            if d.kind == "share"
                && d.local().is_some()
                && d.local() == drive.local()
                && d.base == drive.base =>
        {
            write_atomic(&site.drives, drive.id.as_str(), &drive.to_json(), 0o644)
        }
        _ => Ok(()),
    }
}

pub(crate) fn existing_drive(site: &Site, id: &DriveId) -> Result<Option<Drive>, String> {
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
pub(crate) fn load_records(dir: &Path) -> Result<(BTreeMap<String, Record>, usize), Failure> {
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

pub(crate) fn save_record(dir: &Path, id: &str, record: &Record) -> Result<(), String> {
    write_atomic(dir, &format!("{id}.json"), &record.to_json(), 0o600)
}

pub(crate) fn remove_record(dir: &Path, id: &str) -> Result<(), String> {
    match fs::remove_file(dir.join(format!("{id}.json"))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove the record of share {id}: {e}")),
    }
}

pub(crate) fn write_atomic(dir: &Path, name: &str, value: &Value, mode: u32) -> Result<(), String> {
    ucloud_wire::record::write_atomic(dir, name, value, mode)
        .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
}
