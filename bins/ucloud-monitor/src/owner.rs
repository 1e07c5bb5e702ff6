//! Who owns a UCloud job, so that a Slurm job is reported to UCloud job J only when
//! it runs as J's owner. The monitor holds no UCloud credential: it queues
//! `GET /api/jobs/control/retrieve?id=J` in the outbox with a reply tag, and the
//! sender (the only holder of the refresh token) leaves UCloud's answer in
//! `outbox/replies/`. The owner's local account and home drive come from the drive
//! table the registry keeps (`var/lib/ucloud-im/drives/`, world-readable, root-owned).

use crate::error::Error;
use crate::store::write_durably;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use ucloud_wire::outbox;

/// How long an answer "UCloud does not know J" or "J's owner is not mapped here"
/// holds before the monitor asks again.
const RETRY_MS: u64 = 30_000;

/// A UCloud job id as jobs.create accepts it (it becomes a Slurm job name and a
/// directory name).
pub fn is_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
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
    /// Asked UCloud; no answer yet.
    Waiting,
    /// Nothing can be reported for this job id now; why.
    Unknown(String),
}

pub struct Owners {
    outbox: PathBuf,
    drives: PathBuf,
    cache_dir: PathBuf,
    known: HashMap<String, Owner>,
    /// Job id → (queued message stem, when asked).
    asked: HashMap<String, String>,
    /// Job id → (why, when to ask again).
    unknown: HashMap<String, (String, u64)>,
}

impl Owners {
    pub fn new(outbox: PathBuf, drives: PathBuf, cache_dir: PathBuf) -> Owners {
        Owners {
            outbox,
            drives,
            cache_dir,
            known: HashMap::new(),
            asked: HashMap::new(),
            unknown: HashMap::new(),
        }
    }

    fn cache_file(&self, id: &str) -> PathBuf {
        self.cache_dir.join(format!("{}.json", hex(id)))
    }

    fn reply_tag(id: &str) -> String {
        format!("monitor-job-{}", hex(id))
    }

    pub fn is_waiting(&self) -> bool {
        !self.asked.is_empty()
    }

    pub fn lookup(&mut self, id: &str) -> Result<Lookup, Error> {
        if let Some(owner) = self.known.get(id) {
            return Ok(Lookup::Known(owner.clone()));
        }
        if let Ok(bytes) = fs::read(self.cache_file(id)) {
            if let Some(owner) = parse_cached(&bytes) {
                self.known.insert(id.to_string(), owner.clone());
                return Ok(Lookup::Known(owner));
            }
        }
        if let Some((why, until)) = self.unknown.get(id) {
            if ucloud_wire::now_ms() < *until {
                return Ok(Lookup::Unknown(why.clone()));
            }
            self.unknown.remove(id);
        }
        if !self.asked.contains_key(id) {
            // The id is plain (letters, digits, `_.-`): nothing to escape in a query.
            let queued = enqueue_get(
                &self.outbox,
                &format!("/api/jobs/control/retrieve?id={id}"),
                &Self::reply_tag(id),
            )
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot queue a retrieve of job {id} in {}: {e} (is the monitor's account in the outbox group?)",
                    self.outbox.display()
                ))
            })?;
            let stem = queued
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            self.asked.insert(id.to_string(), stem);
        }
        Ok(Lookup::Waiting)
    }

    /// Collects the sender's answers to outstanding retrieves. Returns the job ids
    /// whose lookup finished (either way).
    pub fn collect(&mut self) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        let asked: Vec<(String, String)> = self
            .asked
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, stem) in asked {
            let reply = self
                .outbox
                .join(outbox::REPLIES)
                .join(format!("{}.json", Self::reply_tag(&id)));
            let refused = self
                .outbox
                .join(outbox::FAILED)
                .join(format!("{stem}.response"));
            if let Ok(bytes) = fs::read(&reply) {
                let job: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                match job["owner"]["createdBy"].as_str() {
                    Some(user) => match home_drive(&self.drives, user) {
                        Some(mut owner) => {
                            owner.project = job["owner"]["project"]
                                .as_str()
                                .filter(|p| !p.is_empty())
                                .map(String::from);
                            let product = &job["specification"]["product"];
                            owner.category = product["category"]
                                .as_str()
                                .zip(product["provider"].as_str())
                                .map(|(c, p)| (c.to_string(), p.to_string()));
                            write_durably(
                                &self.cache_file(&id),
                                json!({
                                    "ucloud": owner.ucloud,
                                    "local": owner.local,
                                    "drive": owner.drive,
                                    "project": owner.project,
                                    "category": owner.category.as_ref().map(|c| &c.0),
                                    "provider": owner.category.as_ref().map(|c| &c.1),
                                })
                                .to_string()
                                .as_bytes(),
                            )?;
                            self.known.insert(id.clone(), owner);
                        }
                        None => self.remember_unknown(
                            &id,
                            format!("its owner {user} has no home drive on this site (not mapped)"),
                        ),
                    },
                    None => self.remember_unknown(&id, "UCloud's answer names no owner".into()),
                }
                let _ = fs::remove_file(&reply);
            } else if let Ok(bytes) = fs::read(&refused) {
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                self.remember_unknown(
                    &id,
                    format!(
                        "UCloud does not know it ({} {})",
                        answer["status"],
                        answer["body"]["why"].as_str().unwrap_or("")
                    ),
                );
                let _ = fs::remove_file(&refused);
                let _ = fs::remove_file(refused.with_extension("json"));
            } else {
                continue;
            }
            self.asked.remove(&id);
            done.push(id);
        }
        Ok(done)
    }

    fn remember_unknown(&mut self, id: &str, why: String) {
        self.unknown
            .insert(id.to_string(), (why, ucloud_wire::now_ms() + RETRY_MS));
    }
}

/// Queues a GET in the outbox: the sender asks UCloud and stores the answer as the
/// reply `reply`.
fn enqueue_get(dir: &Path, path: &str, reply: &str) -> std::io::Result<PathBuf> {
    outbox::enqueue(
        dir,
        &outbox::Message {
            method: outbox::Method::Get,
            path: path.to_string(),
            body: json!({}),
            reply: Some(reply.to_string()),
        },
    )
}

fn parse_cached(bytes: &[u8]) -> Option<Owner> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    Some(Owner {
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

/// The home drive of a UCloud user in the drive table.
fn home_drive(drives: &Path, ucloud_user: &str) -> Option<Owner> {
    let entries = fs::read_dir(drives).ok()?;
    for entry in entries.flatten() {
        let Ok(bytes) = fs::read(entry.path()) else {
            continue;
        };
        let Ok(d) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if d["ucloud"].as_str() == Some(ucloud_user) && d["kind"].as_str() == Some("home") {
            return Some(Owner {
                ucloud: ucloud_user.to_string(),
                local: d["local"].as_str()?.to_string(),
                drive: d["id"].as_str()?.to_string(),
                project: None,
                category: None,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_what_jobs_create_accepts() {
        assert!(is_job_id("4711"));
        assert!(is_job_id("a.b-c_d"));
        for bad in ["", "-x", ".x", "a b", "a/b", "a|b", &"x".repeat(65)] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn retrieves_go_through_the_outbox_and_answers_come_back() {
        let dir = std::env::temp_dir().join(format!("monitor-owner-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in [
            "outbox/tmp",
            "outbox/queue",
            "outbox/replies",
            "outbox/failed",
            "drives",
            "owners",
        ] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(
            dir.join("drives/17"),
            r#"{"id":"17","ucloud":"Bob#1","local":"bob","base":"/home/bob","kind":"home"}"#,
        )
        .unwrap();
        let mut owners = Owners::new(dir.join("outbox"), dir.join("drives"), dir.join("owners"));
        assert_eq!(owners.lookup("J1").unwrap(), Lookup::Waiting);
        assert_eq!(owners.lookup("J1").unwrap(), Lookup::Waiting);
        let queued = outbox::queued(&dir.join("outbox")).unwrap();
        assert_eq!(queued.len(), 1, "one retrieve per job, however often asked");
        let msg: Value = serde_json::from_slice(&fs::read(&queued[0]).unwrap()).unwrap();
        assert_eq!(msg["method"], "GET");
        assert_eq!(msg["path"], "/api/jobs/control/retrieve?id=J1");
        fs::write(
            dir.join("outbox/replies")
                .join(format!("monitor-job-{}.json", hex("J1"))),
            r#"{"id":"J1","owner":{"createdBy":"Bob#1","project":"P1"},
               "specification":{"product":{"id":"cpu-small","category":"cpu","provider":"hpc"}}}"#,
        )
        .unwrap();
        assert_eq!(owners.collect().unwrap(), vec!["J1".to_string()]);
        let owner = Owner {
            ucloud: "Bob#1".into(),
            local: "bob".into(),
            drive: "17".into(),
            project: Some("P1".into()),
            category: Some(("cpu".into(), "hpc".into())),
        };
        assert_eq!(owners.lookup("J1").unwrap(), Lookup::Known(owner.clone()));
        // The answer survives a restart.
        let mut again = Owners::new(dir.join("outbox"), dir.join("drives"), dir.join("owners"));
        assert_eq!(again.lookup("J1").unwrap(), Lookup::Known(owner));
        fs::remove_dir_all(dir).unwrap();
    }
}
