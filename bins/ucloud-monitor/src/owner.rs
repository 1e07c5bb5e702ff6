//! Which UCloud job a Slurm job stands for, and who owns it, so that a Slurm job is
//! reported only when the module itself submitted it for that UCloud job and it runs
//! as the owner's local account. A job's name and comment are free text any local
//! user sets, so they decide nothing: the binding the gateway wrote when jobs.create
//! answered does (`var/lib/ucloud-im/bindings/<slurm id>.json`, written by the
//! gateway's account only; ucloud_wire::binding). It names the UCloud job, its owner,
//! project and product, as UCloud sent them. The owner's local account and home
//! drive come from the drive table the registry keeps (`var/lib/ucloud-im/drives/`,
//! world-readable, root-owned). Nothing here asks UCloud anything: a Slurm job
//! without a binding costs a failed open, never a call.

use crate::error::Error;
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use ucloud_wire::binding;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    /// The UCloud job the Slurm job was submitted for.
    pub job: String,
    /// The UCloud user who created the job.
    pub ucloud: String,
    /// Their local account and home drive (from the drive table).
    pub local: String,
    pub drive: String,
    /// The project the job runs in, if any: it pays instead of the user.
    pub project: Option<String>,
    /// The job's product category and its provider, as UCloud sent them.
    pub category: Option<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Known(Owner),
    /// No binding: not a job the module submitted (or not yet bound).
    Unbound,
    /// Bound, but nothing can be reported for it; why.
    Unknown(String),
}

pub struct Owners {
    bindings: PathBuf,
    drives: PathBuf,
    /// Owners found by the retrieves of earlier versions, by UCloud job id: read
    /// only for jobs the monitor tracked before bindings existed.
    legacy_dir: PathBuf,
    known: HashMap<u64, Owner>,
}

impl Owners {
    pub fn new(bindings: PathBuf, drives: PathBuf, legacy_dir: PathBuf) -> Owners {
        Owners {
            bindings,
            drives,
            legacy_dir,
            known: HashMap::new(),
        }
    }

    /// The owner of Slurm job `slurm_id`, named `name` (the UCloud job id it was
    /// submitted as, if the module submitted it). `tracked`: the UCloud job id of
    /// the monitor's own record of it, if it has one (a job it took on before
    /// bindings existed is found through that record).
    pub fn lookup(
        &mut self,
        slurm_id: u64,
        name: &str,
        tracked: Option<&str>,
    ) -> Result<Lookup, Error> {
        if let Some(owner) = self.known.get(&slurm_id).filter(|o| o.job == name) {
            return Ok(Lookup::Known(owner.clone()));
        }
        let found = match binding::read(&self.bindings, slurm_id, name) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Ok(match tracked.and_then(|job| self.legacy(job)) {
                    Some(owner) => {
                        self.known.insert(slurm_id, owner.clone());
                        Lookup::Known(owner)
                    }
                    None => Lookup::Unbound,
                })
            }
            Err(why) => return Ok(Lookup::Unknown(why)),
        };
        let Some(mut owner) = home_drive(&self.drives, &found.created_by) else {
            return Ok(Lookup::Unknown(format!(
                "its owner {} has no home drive on this site (not mapped)",
                found.created_by
            )));
        };
        owner.job = found.job;
        owner.project = found.project;
        owner.category = found.category;
        self.known.insert(slurm_id, owner.clone());
        Ok(Lookup::Known(owner))
    }

    /// Forgets a job that ended (its owner is not needed again).
    pub fn forget(&mut self, slurm_id: u64) {
        self.known.remove(&slurm_id);
    }

    fn legacy(&self, job: &str) -> Option<Owner> {
        let bytes = fs::read(self.legacy_dir.join(format!("{}.json", hex(job)))).ok()?;
        let mut owner = parse_cached(&bytes)?;
        owner.job = job.to_string();
        Some(owner)
    }
}

fn parse_cached(bytes: &[u8]) -> Option<Owner> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    Some(Owner {
        job: String::new(),
        ucloud: v["ucloud"].as_str()?.to_string(),
        local: v["local"].as_str()?.to_string(),
        drive: v["drive"].as_str()?.to_string(),
        project: v["project"].as_str().map(String::from),
        category: v["category"]
            .as_str()
            .zip(v["provider"].as_str())
            .map(|(c, p)| (c.to_string(), p.to_string())),
    })
}

/// The home drive of a UCloud user in the drive table. An entry the table's reader
/// cannot use belongs to nobody here.
fn home_drive(drives: &Path, ucloud_user: &str) -> Option<Owner> {
    let (drives, _) = ucloud_wire::record::drive_table(drives).ok()?;
    let (home, local) = drives.iter().find_map(|d| match d.user() {
        Some((ucloud, local)) if ucloud.as_str() == ucloud_user && d.is_home() => Some((d, local)),
        _ => None,
    })?;
    Some(Owner {
        job: String::new(),
        ucloud: ucloud_user.to_string(),
        local: local.as_str().to_string(),
        drive: home.id.as_str().to_string(),
        project: None,
        category: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucloud_wire::binding::Binding;

    /// The owner comes from the gateway's binding and the drive table; a Slurm job
    /// without a binding is unbound whatever it is named, and costs no message in
    /// the outbox.
    #[test]
    fn owners_come_from_bindings_only() {
        let dir = std::env::temp_dir().join(format!("monitor-owner-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["bindings", "drives", "owners", "outbox/queue"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(
            dir.join("drives/17"),
            r#"{"id":"17","ucloud":"Bob#1","local":"bob","base":"/home/bob","kind":"home"}"#,
        )
        .unwrap();
        let b = Binding {
            slurm_id: 900,
            job: "J1".into(),
            created_by: "Bob#1".into(),
            project: Some("P1".into()),
            category: Some(("cpu".into(), "hpc".into())),
            at_ms: 1,
        };
        binding::write(&dir.join("bindings"), &b).unwrap();
        let mut owners = Owners::new(dir.join("bindings"), dir.join("drives"), dir.join("owners"));
        let owner = Owner {
            job: "J1".into(),
            ucloud: "Bob#1".into(),
            local: "bob".into(),
            drive: "17".into(),
            project: Some("P1".into()),
            category: Some(("cpu".into(), "hpc".into())),
        };
        assert_eq!(
            owners.lookup(900, "J1", None).unwrap(),
            Lookup::Known(owner)
        );
        for _ in 0..100 {
            assert_eq!(owners.lookup(901, "J1", None).unwrap(), Lookup::Unbound);
        }
        assert_eq!(fs::read_dir(dir.join("outbox/queue")).unwrap().count(), 0);
        // A binding for a UCloud user with no drive here reports nothing.
        let mut stray = b.clone();
        stray.slurm_id = 902;
        stray.created_by = "Eve#9".into();
        binding::write(&dir.join("bindings"), &stray).unwrap();
        assert!(matches!(
            owners.lookup(902, "J1", None).unwrap(),
            Lookup::Unknown(_)
        ));
        // A job tracked before bindings existed keeps the owner found back then.
        fs::write(
            dir.join("owners").join(format!("{}.json", hex("J7"))),
            r#"{"ucloud":"Bob#1","local":"bob","drive":"17","project":null,"category":"cpu","provider":"hpc"}"#,
        )
        .unwrap();
        assert_eq!(owners.lookup(903, "J7", None).unwrap(), Lookup::Unbound);
        let Lookup::Known(old) = owners.lookup(903, "J7", Some("J7")).unwrap() else {
            panic!("the legacy owner is not found");
        };
        assert_eq!((old.job.as_str(), old.local.as_str()), ("J7", "bob"));
        fs::remove_dir_all(dir).unwrap();
    }
}
