//! The simulator's state directory. Every file is JSON written atomically
//! (temporary file, fsync, rename), so a killed simulator never leaves half a file
//! and a restarted one knows the same drives, jobs and refresh token.
//!
//! ```text
//! provider.json            {"provider":"hpc","refreshToken":"<hex>"}
//! drives.json              {"next":N,"drives":{"<id>":{...item, "id"}}}
//! jobs.json                {"next":N,"registered":{"<providerGeneratedId>":"<id>"}}
//! connections.json         {"connected":["DonnaJensen#4512", ...]}
//! jobs/<hex id>.json       a Job as UCloud would return it (written by serve and call)
//! updates/<hex id>.json    [JobUpdate, ...] received for that job (serve only)
//! tokens/<key>.json        {"token":"<JWT>","exp":<s>} cached bearer tokens (token, call)
//! owners/<kind>-<hex>.json "<name>": a user or project UCloud knows (serve and call)
//! products.json, usage.json the catalogue, the usage charged (see catalogue.rs, usage.rs)
//! ```

use crate::error::SimError;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Store {
    dir: PathBuf,
}

/// Lower-case hex of the bytes: a file name that cannot leave its directory,
/// whatever a job id or a user name holds.
pub fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn is_valid_provider(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Store {
    /// The state at `dir`, which must exist (see [`Store::init`]).
    pub fn open(dir: &Path) -> Result<Store, SimError> {
        if !dir.join("provider.json").is_file() {
            return Err(SimError::Setup(format!(
                "{} holds no simulator state: run `ucloud-sim init --state {} --provider ID` first",
                dir.display(),
                dir.display()
            )));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// Creates the state when missing; returns it and the provider's refresh token.
    /// A second call with the same provider returns the same token.
    pub fn init(dir: &Path, provider: &str) -> Result<(Store, String), SimError> {
        if !is_valid_provider(provider) {
            return Err(SimError::Usage(format!(
                "provider id {provider:?} may hold only letters, digits, - and _"
            )));
        }
        for sub in ["", "jobs", "updates", "tokens", "owners"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| {
                SimError::Setup(format!("cannot create {}: {e}", dir.join(sub).display()))
            })?;
        }
        let store = Store {
            dir: dir.to_path_buf(),
        };
        if let Some(existing) = store.read("provider.json")? {
            let known = existing["provider"].as_str().unwrap_or_default();
            if known != provider {
                return Err(SimError::Setup(format!(
                    "{} already belongs to provider {known:?}, not {provider:?}: use another --state",
                    dir.display()
                )));
            }
            let token = existing["refreshToken"].as_str().unwrap_or_default();
            return Ok((store, token.to_string()));
        }
        let token = random_hex(32)?;
        store.write(
            "provider.json",
            &json!({"provider": provider, "refreshToken": token}),
        )?;
        Ok((store, token))
    }

    pub fn provider(&self) -> Result<(String, String), SimError> {
        let v = self
            .read("provider.json")?
            .ok_or_else(|| SimError::Setup("provider.json vanished".into()))?;
        match (v["provider"].as_str(), v["refreshToken"].as_str()) {
            (Some(p), Some(t)) => Ok((p.to_string(), t.to_string())),
            _ => Err(SimError::Setup(format!(
                "{} is damaged: rerun ucloud-sim init with a new --state",
                self.dir.join("provider.json").display()
            ))),
        }
    }

    /// A JSON file of the state, `None` when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Value>, SimError> {
        let path = self.dir.join(name);
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => f
                .read_to_string(&mut text)
                .map_err(|e| SimError::Setup(format!("cannot read {}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(SimError::Setup(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SimError::Setup(format!("{} is not JSON: {e}", path.display())))
    }

    /// Replaces a JSON file atomically.
    pub fn write(&self, name: &str, value: &Value) -> Result<(), SimError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = self.dir.join(name);
        let parent = path.parent().expect("state files live in a directory");
        let tmp = parent.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let fail =
            |e: std::io::Error| SimError::Setup(format!("cannot write {}: {e}", path.display()));
        let mut file = File::create(&tmp).map_err(fail)?;
        file.write_all(value.to_string().as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(fail)
    }

    pub fn job_file(id: &str) -> String {
        format!("jobs/{}.json", hex(id))
    }

    pub fn updates_file(id: &str) -> String {
        format!("updates/{}.json", hex(id))
    }

    pub fn token_file(key: &str) -> String {
        format!("tokens/{}.json", hex(key))
    }

    /// The file that says UCloud knows a user (`kind` "user") or a project: one
    /// file each, so that `serve` and `call` never rewrite each other's.
    pub fn owner_file(kind: &str, name: &str) -> String {
        format!("owners/{kind}-{}.json", hex(name))
    }

    /// A subdirectory of the state, made when missing (states made by an older
    /// `init` lack the newer ones).
    pub fn ensure_dir(&self, sub: &str) -> Result<(), SimError> {
        let path = self.dir.join(sub);
        fs::create_dir_all(&path)
            .map_err(|e| SimError::Setup(format!("cannot create {}: {e}", path.display())))
    }

    /// Remembers a job UCloud knows (from `call` or `POST /sim/jobs`).
    pub fn put_job(&self, job: &Value) -> Result<String, SimError> {
        let id = job
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 256)
            .ok_or_else(|| SimError::Usage("a job needs an \"id\" string".into()))?;
        self.write(&Self::job_file(id), job)?;
        Ok(id.to_string())
    }
}

fn random_hex(bytes: usize) -> Result<String, SimError> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| SimError::Setup(format!("cannot read /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sim-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn init_is_idempotent_and_keeps_the_token() {
        let dir = scratch("init");
        let (_, first) = Store::init(&dir, "hpc").unwrap();
        let (_, second) = Store::init(&dir, "hpc").unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 64);
        assert!(matches!(
            Store::init(&dir, "other"),
            Err(SimError::Setup(_))
        ));
        assert!(matches!(Store::init(&dir, "../x"), Err(SimError::Usage(_))));
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.provider().unwrap(), ("hpc".to_string(), first));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn job_ids_cannot_escape_the_state_dir() {
        let dir = scratch("jobs");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        let id = store.put_job(&json!({"id": "../../etc/x"})).unwrap();
        assert_eq!(id, "../../etc/x");
        assert!(dir.join(Store::job_file(&id)).is_file());
        assert!(Store::job_file(&id).starts_with("jobs/2e2e2f"));
        assert!(store.put_job(&json!({"id": 7})).is_err());
        assert!(Store::open(&scratch("missing")).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
