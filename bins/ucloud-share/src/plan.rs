//! What to do about each share, decided from facts alone: UCloud's list of shares,
//! the mapping store, the drive table and what earlier runs did (the records). No
//! I/O here, so every rule can be tested, hostile lists included. The rules:
//!
//! - access exists only while UCloud lists the share as APPROVED and available at
//!   the drive this site registered for it, both users have accounts here, and the
//!   folder is in a home drive of the sharer;
//! - anything else takes access away (revocations are planned before grants);
//! - without a fresh list from UCloud nothing is granted, and what was granted
//!   lapses once UCloud has not confirmed it for the grace period.

use crate::ucloud::Share;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use ucloud_wire::names::{DriveId, LocalName, UcloudName};
use ucloud_wire::record::Drive;

/// A local account as the mapping store names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub local: LocalName,
    pub uid: u32,
}

/// What a grant gave, kept so that it can be taken back exactly even after UCloud
/// has forgotten the share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub sharer: Account,
    pub recipient: UcloudName,
    pub to: Account,
    /// The sharer's folder (absolute, below the home drive's base).
    pub folder: String,
    pub write: bool,
    pub drive: DriveId,
    pub title: String,
}

/// What earlier runs did about one share (`shares/<id>.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub drive: Option<DriveId>,
    pub registered: bool,
    pub announced: bool,
    pub refused: Option<String>,
    /// What went wrong the last time, by action, each said once in the audit log.
    pub failures: BTreeMap<String, String>,
    pub granted: Option<Grant>,
    /// When UCloud last listed the share as approved (ms).
    pub confirmed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Teardown { id: String, why: String },
    Forget { id: String },
    Register { id: String, title: String },
    Announce { id: String, drive: DriveId },
    Refuse { id: String, why: String },
    Grant { id: String, grant: Grant },
}

/// The facts a run gathered.
pub struct Facts<'a> {
    /// UCloud's whole list, when this run got a fresh one.
    pub shares: Option<&'a [Share]>,
    /// Ids UCloud listed in a form this site cannot read: never granted, never
    /// forgotten (UCloud has not forgotten them).
    pub unreadable: &'a [String],
    pub accounts: &'a dyn Fn(&UcloudName) -> Option<Account>,
    pub drives: &'a [Drive],
    /// UCloud's answer to the registration of a share's drive, once there is one.
    pub registered: &'a dyn Fn(&str) -> Option<DriveId>,
    /// Whether the sharer's own `shares.create` recorded this share (the uid is
    /// the sharer's account): a list from UCloud alone grants nothing.
    pub consented: &'a dyn Fn(&Share, u32) -> bool,
    pub records: &'a BTreeMap<String, Record>,
    pub now: u64,
    pub grace_ms: u64,
}

pub fn plan(f: &Facts) -> Vec<Action> {
    let mut takedowns = Vec::new();
    let mut rest = Vec::new();
    let Some(shares) = f.shares else {
        for (id, record) in f.records {
            if record.granted.is_some() && record.confirmed + f.grace_ms <= f.now {
                takedowns.push(Action::Teardown {
                    id: id.clone(),
                    why: "UCloud has not confirmed the share within the grace period".into(),
                });
            }
        }
        return takedowns;
    };
    for (id, record) in f.records {
        if f.unreadable.contains(id) {
            if record.granted.is_some() {
                takedowns.push(Action::Teardown {
                    id: id.clone(),
                    why: "UCloud lists the share in a form this site cannot read".into(),
                });
            }
            continue;
        }
        if !shares.iter().any(|s| &s.id == id) {
            if record.granted.is_some() {
                takedowns.push(Action::Teardown {
                    id: id.clone(),
                    why: "UCloud no longer lists the share".into(),
                });
            }
            rest.push(Action::Forget { id: id.clone() });
        }
    }
    let empty = Record::default();
    for share in shares {
        let record = f.records.get(&share.id).unwrap_or(&empty);
        let (down, up) = one(f, share, record);
        takedowns.extend(down);
        rest.extend(up);
    }
    takedowns.extend(rest);
    takedowns
}

/// The actions for one share: those that take access away, then the others.
fn one(f: &Facts, share: &Share, record: &Record) -> (Vec<Action>, Vec<Action>) {
    let id = share.id.clone();
    let mut up = Vec::new();
    let wanted = match wanted(f, share, record) {
        Ok(wanted) => wanted,
        Err(why) => {
            if record.refused.as_deref() != Some(why.as_str()) {
                up.push(Action::Refuse {
                    id: id.clone(),
                    why: why.clone(),
                });
            }
            let down = record
                .granted
                .as_ref()
                .map(|_| Action::Teardown { id, why })
                .into_iter()
                .collect();
            return (down, up);
        }
    };
    let (title, drive) = wanted;
    let Some(drive) = drive else {
        if !record.registered {
            up.push(Action::Register { id, title });
        }
        return (Vec::new(), up);
    };
    let at = format!("/{drive}");
    if share.available_at.as_deref() != Some(at.as_str()) {
        if !record.announced {
            up.push(Action::Announce {
                id: id.clone(),
                drive,
            });
        }
        let down = teardown_if_granted(record, &id, "the share is not available at its drive");
        return (down, up);
    }
    if !share.approved {
        let down = teardown_if_granted(record, &id, "the recipient has not accepted the share");
        return (down, up);
    }
    let grant = match grant_of(f, share, drive, title) {
        Ok(grant) => grant,
        Err(why) => {
            let down = teardown_if_granted(record, &id, &why);
            return (down, up);
        }
    };
    let mut down = Vec::new();
    if let Some(old) = &record.granted {
        // Another folder, account, drive or permission: the old grant goes first,
        // so that no read-write gate outlives a share taken down to READ.
        if (&old.folder, &old.to, &old.sharer, &old.drive, old.write)
            != (
                &grant.folder,
                &grant.to,
                &grant.sharer,
                &grant.drive,
                grant.write,
            )
        {
            down.push(Action::Teardown {
                id: id.clone(),
                why: "the share now names another folder, account or permission".into(),
            });
        }
    }
    up.push(Action::Grant { id, grant });
    (down, up)
}

fn teardown_if_granted(record: &Record, id: &str, why: &str) -> Vec<Action> {
    record
        .granted
        .as_ref()
        .map(|_| Action::Teardown {
            id: id.to_string(),
            why: why.to_string(),
        })
        .into_iter()
        .collect()
}

/// The share's title and drive, or why this site cannot make it work.
fn wanted(f: &Facts, share: &Share, record: &Record) -> Result<(String, Option<DriveId>), String> {
    (f.accounts)(&share.sharer)
        .ok_or_else(|| format!("{} has no account on this site", share.sharer))?;
    let (_, title) = folder_of(f, share)?;
    (f.accounts)(&share.recipient).ok_or_else(|| {
        format!(
            "{} has no account on this site yet; the share starts working once they connect",
            share.recipient
        )
    })?;
    let drive = record.drive.clone().or_else(|| (f.registered)(&share.id));
    Ok((title, drive))
}

fn grant_of(f: &Facts, share: &Share, drive: DriveId, title: String) -> Result<Grant, String> {
    let sharer = (f.accounts)(&share.sharer).ok_or("the sharer has no account")?;
    let to = (f.accounts)(&share.recipient).ok_or("the recipient has no account")?;
    if sharer.uid == to.uid {
        return Err("the recipient's account is the sharer's own".into());
    }
    if !(f.consented)(share, sharer.uid) {
        return Err("the sharer's own shares.create never recorded this share".into());
    }
    let (folder, _) = folder_of(f, share)?;
    Ok(Grant {
        sharer,
        recipient: share.recipient.clone(),
        to,
        folder,
        write: share.write,
        drive,
        title,
    })
}

/// The local folder of `/<driveId>/a/b`, which must be in a home drive of the
/// sharer's, and its name.
fn folder_of(f: &Facts, share: &Share) -> Result<(String, String), String> {
    let refuse = || {
        format!(
            "{} is not a folder in a home drive of {} on this site",
            share.source, share.sharer
        )
    };
    let rest = share.source.strip_prefix('/').ok_or_else(refuse)?;
    let mut parts = rest.split('/');
    let drive_id = parts.next().ok_or_else(refuse)?;
    let components: Vec<&str> = parts.filter(|c| !c.is_empty()).collect();
    let bad = |c: &&str| *c == "." || *c == ".." || c.contains('\0') || c.len() > 255;
    if components.is_empty() || components.iter().any(bad) || share.source.len() > 4096 {
        return Err(refuse());
    }
    let drive = f
        .drives
        .iter()
        .find(|d| d.id.as_str() == drive_id && d.is_home() && d.ucloud() == Some(&share.sharer))
        .ok_or_else(refuse)?;
    let folder = format!(
        "{}/{}",
        drive.base.trim_end_matches('/'),
        components.join("/")
    );
    let title = components.last().expect("not empty").to_string();
    Ok((folder, title))
}

impl Record {
    pub fn to_json(&self) -> Value {
        json!({
            "drive": self.drive.as_ref().map(|d| d.as_str()),
            "registered": self.registered,
            "announced": self.announced,
            "refused": self.refused,
            "failures": self.failures,
            "confirmed": self.confirmed,
            "granted": self.granted.as_ref().map(|g| json!({
                "sharer": g.sharer.local.as_str(), "sharerUid": g.sharer.uid,
                "recipient": g.recipient.as_str(),
                "to": g.to.local.as_str(), "toUid": g.to.uid,
                "folder": g.folder, "write": g.write, "drive": g.drive.as_str(),
                "title": g.title,
            })),
        })
    }

    /// Records are root's own files (0600 in a 0700 directory); they are parsed
    /// strictly all the same, and one that does not parse is reported.
    pub fn from_json(v: &Value) -> Result<Record, String> {
        let drive = |v: &Value| match v {
            Value::Null => Ok(None),
            Value::String(s) => DriveId::new(s).map(Some).map_err(|e| e.to_string()),
            _ => Err("drive is not a string".to_string()),
        };
        let granted = match &v["granted"] {
            Value::Null => None,
            g => {
                let text = |k: &str| g[k].as_str().ok_or(format!("granted.{k} is missing"));
                let uid = |k: &str| {
                    g[k].as_u64()
                        .and_then(|u| u32::try_from(u).ok())
                        .ok_or(format!("granted.{k} is missing"))
                };
                let local = |k: &str| LocalName::new(text(k)?).map_err(|e| e.to_string());
                Some(Grant {
                    sharer: Account {
                        local: local("sharer")?,
                        uid: uid("sharerUid")?,
                    },
                    recipient: UcloudName::new(text("recipient")?).map_err(|e| e.to_string())?,
                    to: Account {
                        local: local("to")?,
                        uid: uid("toUid")?,
                    },
                    folder: text("folder")?.to_string(),
                    write: g["write"].as_bool().ok_or("granted.write is missing")?,
                    drive: drive(&g["drive"])?.ok_or("granted.drive is missing")?,
                    title: text("title")?.to_string(),
                })
            }
        };
        Ok(Record {
            drive: drive(&v["drive"])?,
            registered: v["registered"].as_bool().unwrap_or(false),
            announced: v["announced"].as_bool().unwrap_or(false),
            refused: v["refused"].as_str().map(str::to_string),
            failures: v["failures"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            granted,
            confirmed: v["confirmed"].as_u64().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UcloudName {
        UcloudName::new(s).unwrap()
    }

    fn share(id: &str) -> Share {
        Share {
            id: id.into(),
            sharer: name("alice#1"),
            recipient: name("bob#2"),
            source: "/17/Data".into(),
            write: false,
            approved: true,
            available_at: Some("/90".into()),
        }
    }

    fn home() -> Vec<Drive> {
        vec![Drive::home(
            DriveId::new("17").unwrap(),
            name("alice#1"),
            LocalName::new("alice").unwrap(),
            "/home/alice".into(),
        )]
    }

    fn accounts(n: &UcloudName) -> Option<Account> {
        match n.as_str() {
            "alice#1" => Some(Account {
                local: LocalName::new("alice").unwrap(),
                uid: 1001,
            }),
            "bob#2" => Some(Account {
                local: LocalName::new("bob").unwrap(),
                uid: 1002,
            }),
            _ => None,
        }
    }

    fn registered(id: &str) -> Option<DriveId> {
        (id == "7").then(|| DriveId::new("90").unwrap())
    }

    fn run(shares: Option<&[Share]>, records: &BTreeMap<String, Record>) -> Vec<Action> {
        run_consented(shares, records, &|s, uid| s.id != "666" && uid == 1001)
    }

    fn run_consented(
        shares: Option<&[Share]>,
        records: &BTreeMap<String, Record>,
        consented: &dyn Fn(&Share, u32) -> bool,
    ) -> Vec<Action> {
        let drives = home();
        plan(&Facts {
            shares,
            unreadable: &[],
            accounts: &accounts,
            drives: &drives,
            registered: &registered,
            consented,
            records,
            now: 1_000_000,
            grace_ms: 60_000,
        })
    }

    fn granted(records: &mut BTreeMap<String, Record>, id: &str) {
        let actions = run(Some(&[share(id)]), &BTreeMap::new());
        let Some(Action::Grant { grant, .. }) = actions.last() else {
            panic!("{actions:?}")
        };
        records.insert(
            id.into(),
            Record {
                drive: Some(grant.drive.clone()),
                granted: Some(grant.clone()),
                confirmed: 1_000_000,
                ..Record::default()
            },
        );
    }

    #[test]
    fn an_approved_share_is_granted_on_its_folder_for_the_recipient() {
        let actions = run(Some(&[share("7")]), &BTreeMap::new());
        let [Action::Grant { id, grant }] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(id, "7");
        assert_eq!(grant.folder, "/home/alice/Data");
        assert_eq!(
            (grant.to.uid, grant.sharer.uid, grant.write),
            (1002, 1001, false)
        );
        assert_eq!(grant.drive.as_str(), "90");
    }

    #[test]
    fn a_new_share_is_registered_then_announced_and_granted_only_once_approved() {
        let mut s = share("8");
        s.approved = false;
        s.available_at = None;
        let none = BTreeMap::new();
        assert_eq!(
            run(Some(&[s.clone()]), &none),
            vec![Action::Register {
                id: "8".into(),
                title: "Data".into()
            }]
        );
        let mut records = BTreeMap::new();
        records.insert(
            "8".into(),
            Record {
                registered: true,
                drive: Some(DriveId::new("91").unwrap()),
                ..Record::default()
            },
        );
        assert_eq!(
            run(Some(&[s.clone()]), &records),
            vec![Action::Announce {
                id: "8".into(),
                drive: DriveId::new("91").unwrap()
            }]
        );
        s.available_at = Some("/91".into());
        records.get_mut("8").unwrap().announced = true;
        assert!(run(Some(&[s]), &records).is_empty(), "pending: nothing yet");
    }

    #[test]
    fn whatever_ends_a_share_takes_access_away_first() {
        let mut records = BTreeMap::new();
        granted(&mut records, "7");
        let mut rejected = share("7");
        rejected.approved = false;
        let mut moved = share("7");
        moved.available_at = Some("/666".into());
        let mut stranger = share("7");
        stranger.recipient = name("carol#3");
        let mut elsewhere = share("7");
        elsewhere.source = "/18/Data".into();
        for s in [rejected, moved, stranger, elsewhere] {
            let actions = run(Some(std::slice::from_ref(&s)), &records);
            assert!(
                matches!(actions.first(), Some(Action::Teardown { .. })),
                "{s:?}: {actions:?}"
            );
            assert!(
                !actions.iter().any(|a| matches!(a, Action::Grant { .. })),
                "{actions:?}"
            );
        }
        let gone = run(Some(&[]), &records);
        assert!(matches!(
            gone.as_slice(),
            [Action::Teardown { .. }, Action::Forget { .. }]
        ));
    }

    #[test]
    fn a_share_the_sharer_never_recorded_is_never_granted() {
        // As a forged answer in UCloud's name would list it.
        let nobody_asked = |_: &Share, _: u32| false;
        let actions = run_consented(Some(&[share("7")]), &BTreeMap::new(), &nobody_asked);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Grant { .. })),
            "{actions:?}"
        );
        let mut records = BTreeMap::new();
        granted(&mut records, "7");
        let actions = run_consented(Some(&[share("7")]), &records, &nobody_asked);
        assert!(
            matches!(actions.as_slice(), [Action::Teardown { .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn a_change_of_permission_takes_the_old_grant_away_before_the_new_one() {
        let mut records = BTreeMap::new();
        granted(&mut records, "7");
        let mut edit = share("7");
        edit.write = true;
        let actions = run(Some(&[edit]), &records);
        assert!(
            matches!(
                actions.as_slice(),
                [Action::Teardown { .. }, Action::Grant { grant, .. }] if grant.write
            ),
            "{actions:?}"
        );
        // The same permission again: renewed in place.
        let actions = run(Some(&[share("7")]), &records);
        assert!(
            matches!(actions.as_slice(), [Action::Grant { .. }]),
            "{actions:?}"
        );
    }

    #[test]
    fn without_word_from_ucloud_a_grant_lapses_after_the_grace_period() {
        let mut records = BTreeMap::new();
        granted(&mut records, "7");
        assert!(run(None, &records).is_empty());
        records.get_mut("7").unwrap().confirmed = 1_000_000 - 60_000;
        assert!(matches!(
            run(None, &records).as_slice(),
            [Action::Teardown { .. }]
        ));
    }

    #[test]
    fn hostile_sources_and_unknown_users_are_refused_with_a_reason() {
        for source in [
            "/17",
            "/17/",
            "17/Data",
            "/17/../etc",
            "/17/./x",
            "/18/Data",
            "/17/a\0b",
        ] {
            let mut s = share("7");
            s.source = source.into();
            let actions = run(Some(&[s]), &BTreeMap::new());
            assert!(
                matches!(actions.as_slice(), [Action::Refuse { .. }]),
                "{source:?}: {actions:?}"
            );
        }
        let mut s = share("7");
        s.recipient = name("carol#3");
        let actions = run(Some(&[s.clone()]), &BTreeMap::new());
        let [Action::Refuse { why, .. }] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert!(why.contains("carol#3 has no account"), "{why}");
        // Said once, not on every run.
        let mut records = BTreeMap::new();
        records.insert(
            "7".into(),
            Record {
                refused: Some(why.clone()),
                ..Record::default()
            },
        );
        assert!(run(Some(&[s]), &records).is_empty());
    }

    #[test]
    fn records_survive_their_own_format() {
        let mut records = BTreeMap::new();
        granted(&mut records, "7");
        let r = &records["7"];
        assert_eq!(&Record::from_json(&r.to_json()).unwrap(), r);
        assert!(Record::from_json(&json!({"drive": "../x"})).is_err());
        assert!(Record::from_json(&json!({"granted": {"sharer": "alice"}})).is_err());
    }
}
