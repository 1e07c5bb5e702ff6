//! The monitor's durable state, one small JSON file per Slurm job under
//! `var/lib/ucloud-im/monitor/jobs/`, each written through a temporary file, fsync
//! and rename. A record holds every update ever committed for the job, in order,
//! and how many of them are in the outbox: an update is committed (written here)
//! before it is queued, so a crash between the two resends exactly the same update,
//! and a final state, once committed, is the only one the job will ever get.

use crate::error::Error;
use crate::jobstate::UState;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use ucloud_wire::lease::{Keeper, Token};

/// Finished records are forgotten this long after their last update was queued.
const KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// The Slurm job's user owns the UCloud job (or nobody checked yet).
    Reported,
    /// The Slurm job's user is not the UCloud job's owner: never reported.
    Refused(String),
}

#[derive(Clone, Debug)]
pub struct Record {
    pub slurm_id: u64,
    pub ucloud_id: String,
    pub user: String,
    pub standing: Standing,
    /// Every update committed for the job (UCloud JobUpdate objects), in order.
    pub updates: Vec<Value>,
    /// How many of `updates` are in the outbox.
    pub queued: usize,
    /// The time limit (minutes) UCloud last heard of.
    pub limit: Option<u64>,
    pub touched_ms: u64,
    /// The job's usage total last put in the outbox.
    pub usage: Option<u64>,
    /// The final total is in the outbox (or there is none to report).
    pub usage_done: bool,
}

impl Record {
    pub fn new(slurm_id: u64, ucloud_id: &str, user: &str) -> Record {
        Record {
            slurm_id,
            ucloud_id: ucloud_id.to_string(),
            user: user.to_string(),
            standing: Standing::Reported,
            updates: Vec::new(),
            queued: 0,
            limit: None,
            touched_ms: ucloud_wire::now_ms(),
            usage: None,
            usage_done: false,
        }
    }

    fn states(&self) -> impl Iterator<Item = UState> + '_ {
        self.updates
            .iter()
            .filter_map(|u| u["state"].as_str().and_then(UState::parse))
    }

    pub fn last_state(&self) -> Option<UState> {
        self.states().last()
    }

    pub fn ever(&self, state: UState) -> bool {
        self.states().any(|s| s == state)
    }

    pub fn is_final(&self) -> bool {
        self.states().any(UState::is_final)
    }

    /// Nothing left to say: refused, or final and queued, its final usage too.
    pub fn is_done(&self) -> bool {
        matches!(self.standing, Standing::Refused(_))
            || (self.is_final() && self.queued == self.updates.len() && self.usage_done)
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "slurm": self.slurm_id,
            "ucloud": self.ucloud_id,
            "user": self.user,
            "updates": self.updates,
            "queued": self.queued,
            "limit": self.limit,
            "touched": self.touched_ms,
            "usage": self.usage,
            "usageDone": self.usage_done,
        });
        if let Standing::Refused(why) = &self.standing {
            v["refused"] = json!(why);
        }
        v
    }

    fn from_json(v: &Value) -> Option<Record> {
        let updates = v["updates"].as_array()?.clone();
        let queued = usize::try_from(v["queued"].as_u64()?).ok()?;
        if queued > updates.len() {
            return None;
        }
        let mut record = Record {
            slurm_id: v["slurm"].as_u64()?,
            ucloud_id: v["ucloud"].as_str()?.to_string(),
            user: v["user"].as_str()?.to_string(),
            standing: match v["refused"].as_str() {
                Some(why) => Standing::Refused(why.to_string()),
                None => Standing::Reported,
            },
            updates,
            queued,
            limit: v["limit"].as_u64(),
            touched_ms: v["touched"].as_u64().unwrap_or(0),
            usage: v["usage"].as_u64(),
            usage_done: false,
        };
        // A record from before usage reports: a job that had ended is not charged
        // afterwards; one still running is, from now on.
        record.usage_done = v["usageDone"]
            .as_bool()
            .unwrap_or_else(|| record.is_final());
        Some(record)
    }
}

/// The monitor lease, where one is kept, and the token the state was read under.
static FENCE: OnceLock<Keeper> = OnceLock::new();
static HELD: AtomicU64 = AtomicU64::new(0);

/// From now on every write of state or to the outbox first asks `keeper`.
pub fn set_fence(keeper: Keeper) {
    let _ = FENCE.set(keeper);
}

/// The token the state in memory was read from disk under.
pub fn hold(token: Token) {
    HELD.store(token.0, Ordering::SeqCst);
}

/// The fencing check before every write: this process still holds the lease, with
/// the token under which it read the state (after a loss another host may have
/// changed it). Without a lease (tests), always `Ok`.
pub fn fenced() -> Result<(), Error> {
    match FENCE.get() {
        None => Ok(()),
        Some(keeper) => check(keeper, HELD.load(Ordering::SeqCst)),
    }
}

fn check(keeper: &Keeper, held: u64) -> Result<(), Error> {
    match keeper.check() {
        Ok(t) if t.0 == held => Ok(()),
        Ok(t) => Err(Error::LeaseLost(format!(
            "token {t} is not the one the state was read under"
        ))),
        Err(lost) => Err(Error::LeaseLost(lost.to_string())),
    }
}

/// Writes `bytes` to `path` so that a reader (or a restart after a crash) sees the
/// old content or the new one, never a mix.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fenced()?;
    let dir = path.parent().expect("state files live in a directory");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    ));
    let mut file = File::create(&tmp).map_err(Error::state(&tmp))?;
    file.write_all(bytes).map_err(Error::state(&tmp))?;
    file.sync_all().map_err(Error::state(&tmp))?;
    drop(file);
    // Again after the fsync, which may have taken longer than the lease lasts.
    if let Err(e) = fenced() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(Error::state(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::state(dir))
}

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens the state directory, creating its subdirectories; it must exist and
    /// belong to the monitor's account.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        if !dir.is_dir() {
            return Err(Error::Setup(format!(
                "the state directory {} does not exist: create it owned by the monitor's account, mode 0700",
                dir.display()
            )));
        }
        for sub in ["jobs", "owners"] {
            let path = dir.join(sub);
            if !path.is_dir() {
                fs::create_dir(&path).map_err(|e| {
                    Error::Setup(format!(
                        "cannot create {}: {e} (the state directory must belong to the monitor's account)",
                        path.display()
                    ))
                })?;
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn job_path(&self, slurm_id: u64) -> PathBuf {
        self.dir.join("jobs").join(format!("{slurm_id}.json"))
    }

    pub fn save(&self, record: &Record) -> Result<(), Error> {
        write_durably(
            &self.job_path(record.slurm_id),
            record.to_json().to_string().as_bytes(),
        )
    }

    /// Every record; finished ones older than [`KEEP_MS`] are removed. An unreadable
    /// record is an error, never silently skipped: skipping it could send a second,
    /// different final state.
    pub fn load(&self) -> Result<HashMap<u64, Record>, Error> {
        let dir = self.dir.join("jobs");
        let mut records = HashMap::new();
        let now = ucloud_wire::now_ms();
        for entry in fs::read_dir(&dir).map_err(Error::state(&dir))? {
            let path = entry.map_err(Error::state(&dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(Error::state(&path))?;
            let record = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| Record::from_json(&v))
                .ok_or_else(|| {
                    Error::State(format!(
                        "{} is not a monitor record: move it away after checking what UCloud was told about that job",
                        path.display()
                    ))
                })?;
            if record.is_done() && now.saturating_sub(record.touched_ms) > KEEP_MS {
                fenced()?;
                fs::remove_file(&path).map_err(Error::state(&path))?;
                continue;
            }
            records.insert(record.slurm_id, record);
        }
        Ok(records)
    }

    /// A small value kept across restarts (the time of the last accounting sweep).
    pub fn read_mark(&self, name: &str) -> Option<u64> {
        fs::read_to_string(self.dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn write_mark(&self, name: &str, value: u64) -> Result<(), Error> {
        write_durably(&self.dir.join(name), value.to_string().as_bytes())
    }

    pub fn owners_dir(&self) -> PathBuf {
        self.dir.join("owners")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_when_the_lease_is_lost_or_was_taken_anew() {
        use std::os::unix::fs::PermissionsExt;
        use std::time::Duration;
        use ucloud_wire::lease::{Holder, Lease, Timing};
        let dir = std::env::temp_dir().join(format!("monitor-fence-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("monitor")).unwrap();
        fs::set_permissions(dir.join("monitor"), fs::Permissions::from_mode(0o755)).unwrap();
        let timing = Timing {
            ttl: Duration::from_millis(300),
            skew: Duration::from_millis(50),
        };
        let keeper = |host: &str| {
            let holder = Holder {
                host: host.into(),
                pid: 1,
            };
            Keeper::spawn(
                Lease::open(&dir, "monitor", holder, timing).unwrap(),
                "test",
                None,
            )
            .unwrap()
        };
        let a = keeper("a");
        let token = a.check().unwrap();
        assert!(check(&a, token.0).is_ok());
        // Held, but under another token than the state was read with.
        assert!(matches!(check(&a, token.0 + 1), Err(Error::LeaseLost(_))));
        let b = keeper("b");
        a.stop_renewing();
        b.wait_held(timing.takeover_bound() * 2)
            .expect("B takes over");
        let e = check(&a, token.0).unwrap_err();
        assert!(matches!(e, Error::LeaseLost(_)), "{e}");
        assert_eq!(e.exit_code(), 75);
        b.release();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn records_round_trip_and_know_their_state() {
        let dir = std::env::temp_dir().join(format!("monitor-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir).unwrap();
        let mut r = Record::new(7, "J1", "alice");
        r.updates.push(json!({"state": "IN_QUEUE"}));
        r.updates.push(json!({"state": "SUCCESS"}));
        r.queued = 1;
        r.usage = Some(12);
        store.save(&r).unwrap();
        let mut refused = Record::new(8, "J1", "mallory");
        refused.standing = Standing::Refused("not the owner".into());
        store.save(&refused).unwrap();
        let all = store.load().unwrap();
        let back = &all[&7];
        assert_eq!(back.updates.len(), 2);
        assert_eq!(back.queued, 1);
        assert!(back.is_final() && !back.is_done());
        assert_eq!((back.usage, back.usage_done), (Some(12), false));
        assert_eq!(back.last_state(), Some(UState::Success));
        assert!(all[&8].is_done());
        // Records written before usage reports: only the running job is still charged.
        for (id, state) in [(10, "SUCCESS"), (11, "RUNNING")] {
            fs::write(
                dir.join(format!("jobs/{id}.json")),
                json!({"slurm": id, "ucloud": "J", "user": "u", "queued": 1, "touched": ucloud_wire::now_ms(),
                       "updates": [{"state": state}]})
                .to_string(),
            )
            .unwrap();
        }
        let old = store.load().unwrap();
        assert!(old[&10].usage_done && !old[&11].usage_done);
        fs::write(dir.join("jobs/9.json"), b"{broken").unwrap();
        assert!(matches!(store.load(), Err(Error::State(_))));
        fs::remove_dir_all(dir).unwrap();
    }
}
