//! Usage reports in the outbox: `usage/`, one file per owner, product category and
//! scope, holding the latest absolute total (UCloud's `ReportUsageRequest` with
//! `isDeltaCharge: false`, provider-integration/shared/pkg/accounting/accounting.go).
//! A writer replaces the file with a newer total through a rename, so a report not
//! yet delivered is merged into the next one rather than queued behind it. The
//! sender claims a file by renaming it to `.sending` (a newer total then lands
//! beside it, untouched) and removes the claim once UCloud has taken it. Since every
//! total is absolute, delivering one twice charges nothing twice.

use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const USAGE: &str = "usage";
/// A claimed report, being delivered.
pub const SENDING: &str = "sending";
/// The longest file name a report gets before its key is hashed instead.
const MAX_NAME: usize = 200;

/// Whose allocation pays: UCloud's `WalletOwner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalletOwner {
    User(String),
    Project(String),
}

impl WalletOwner {
    /// As UCloud's `WalletOwnerFromIds`: the project when the resource has one.
    pub fn of(created_by: &str, project: Option<&str>) -> WalletOwner {
        match project.filter(|p| !p.is_empty()) {
            Some(p) => WalletOwner::Project(p.to_string()),
            None => WalletOwner::User(created_by.to_string()),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            WalletOwner::User(u) => json!({"type": "user", "username": u, "projectId": ""}),
            WalletOwner::Project(p) => json!({"type": "project", "username": "", "projectId": p}),
        }
    }

    fn from_json(v: &Value) -> Option<WalletOwner> {
        let name = |key: &str| v[key].as_str().filter(|s| !s.is_empty()).map(String::from);
        match v["type"].as_str()? {
            "user" => name("username").map(WalletOwner::User),
            "project" => name("projectId").map(WalletOwner::Project),
            _ => None,
        }
    }

    fn reference(&self) -> &str {
        match self {
            WalletOwner::User(u) | WalletOwner::Project(u) => u,
        }
    }
}

/// The latest total of one owner, category and scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub owner: WalletOwner,
    pub category: String,
    pub provider: String,
    /// What the total is of, e.g. `job-4711`.
    pub scope: String,
    pub usage: u64,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Keeps `[A-Za-z0-9_-]`, writes every other byte as `%XX`: names stay apart and
/// never hold a `/` or a leading dot.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// 64-bit FNV-1a, for keys too long to be a file name as they are.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Report {
    /// UCloud's `ReportUsageRequest` for this total.
    pub fn item(&self) -> Value {
        json!({
            "isDeltaCharge": false,
            "owner": self.owner.to_json(),
            "categoryIdV2": {"name": self.category, "provider": self.provider},
            "usage": self.usage,
            "description": {"scope": self.scope, "description": null},
        })
    }

    /// The file the key's latest total lives in: the same key, the same name.
    pub fn file_name(&self) -> String {
        let kind = match self.owner {
            WalletOwner::User(_) => "u",
            WalletOwner::Project(_) => "p",
        };
        let key = format!(
            "{}.{}.{}.{kind}{}",
            escape(&self.scope),
            escape(&self.category),
            escape(&self.provider),
            escape(self.owner.reference())
        );
        if key.len() <= MAX_NAME {
            key
        } else {
            format!("{}.h{:016x}", &key[..64], fnv(&key))
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "owner": self.owner.to_json(),
            "category": self.category,
            "provider": self.provider,
            "scope": self.scope,
            "usage": self.usage,
        })
    }

    pub fn from_json(bytes: &[u8]) -> io::Result<Report> {
        let v: Value = serde_json::from_slice(bytes).map_err(|_| invalid("not JSON"))?;
        let text = |key: &str| {
            v[key]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(String::from)
                .ok_or_else(|| invalid(&format!("no {key}")))
        };
        Ok(Report {
            owner: WalletOwner::from_json(&v["owner"]).ok_or_else(|| invalid("bad owner"))?,
            category: text("category")?,
            provider: text("provider")?,
            scope: text("scope")?,
            usage: v["usage"]
                .as_u64()
                .ok_or_else(|| invalid("usage must be a whole number >= 0"))?,
        })
    }
}

/// Writes `report` as its key's latest total: `tmp/`, fsync, rename over
/// `usage/<name>.json`, fsync of `usage/`.
pub fn put(outbox: &Path, report: &Report) -> io::Result<PathBuf> {
    let name = format!("{}.json", report.file_name());
    let tmp = outbox
        .join(crate::outbox::TMP)
        .join(format!("usage-{}-{name}", std::process::id()));
    let mut file = File::create(&tmp)?;
    file.write_all(report.to_json().to_string().as_bytes())?;
    file.sync_all()?;
    drop(file);
    let path = outbox.join(USAGE).join(&name);
    fs::rename(&tmp, &path)?;
    File::open(outbox.join(USAGE))?.sync_all()?;
    Ok(path)
}

/// Claims every waiting total (`<name>.json` renamed over `<name>.sending`, where
/// it replaces an older claim of the same key) and returns every claim, oldest
/// unchanged: the ones to deliver now.
pub fn claim(outbox: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = outbox.join(USAGE);
    let mut claimed = Vec::new();
    let mut renamed = false;
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        match path.extension().and_then(|x| x.to_str()) {
            Some("json") => {
                let to = path.with_extension(SENDING);
                fs::rename(&path, &to)?;
                renamed = true;
                claimed.push(to);
            }
            Some(SENDING) => claimed.push(path),
            _ => {}
        }
    }
    if renamed {
        File::open(&dir)?.sync_all()?;
    }
    claimed.sort();
    claimed.dedup();
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("usage-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in [crate::outbox::TMP, USAGE] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    fn report(scope: &str, usage: u64) -> Report {
        Report {
            owner: WalletOwner::User("AliceHansen#1001".into()),
            category: "cpu".into(),
            provider: "hpc".into(),
            scope: scope.into(),
            usage,
        }
    }

    #[test]
    fn reports_merge_to_the_latest_per_key() {
        let dir = scratch("merge");
        put(&dir, &report("job-1", 5)).unwrap();
        put(&dir, &report("job-1", 9)).unwrap();
        put(&dir, &report("job-2", 1)).unwrap();
        let mut project = report("job-1", 3);
        project.owner = WalletOwner::Project("6c1a1b7e-0000-4000-8000-000000000001".into());
        put(&dir, &project).unwrap();
        let claimed = claim(&dir).unwrap();
        assert_eq!(claimed.len(), 3, "{claimed:?}");
        let totals: Vec<Report> = claimed
            .iter()
            .map(|p| Report::from_json(&fs::read(p).unwrap()).unwrap())
            .collect();
        assert!(totals.contains(&report("job-1", 9)));
        assert!(totals.contains(&report("job-2", 1)));
        assert!(totals.contains(&project));
        // A newer total while a claim is out: both stay, the next claim takes the newer.
        put(&dir, &report("job-1", 12)).unwrap();
        let again = claim(&dir).unwrap();
        assert_eq!(again.len(), 3);
        let job1 = again
            .iter()
            .map(|p| Report::from_json(&fs::read(p).unwrap()).unwrap())
            .find(|r| r.scope == "job-1" && r.owner == report("", 0).owner)
            .unwrap();
        assert_eq!(job1.usage, 12);
        assert_eq!(
            fs::read_dir(dir.join(crate::outbox::TMP)).unwrap().count(),
            0
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_keep_keys_apart() {
        let a = report("job-1", 0);
        let mut b = a.clone();
        b.owner = WalletOwner::Project("AliceHansen#1001".into());
        let mut c = a.clone();
        c.scope = "job.1".into();
        let mut d = a.clone();
        d.category = "../x".into();
        let names = [a.file_name(), b.file_name(), c.file_name(), d.file_name()];
        for (i, n) in names.iter().enumerate() {
            assert!(!n.contains('/') && !n.starts_with('.'), "{n}");
            assert!(names[i + 1..].iter().all(|m| m != n), "{names:?}");
        }
        let mut long = a.clone();
        long.scope = "j".repeat(300);
        assert!(long.file_name().len() < 100);
        let mut longer = long.clone();
        longer.scope.push('k');
        assert_ne!(long.file_name(), longer.file_name());
    }

    #[test]
    fn items_have_ucloud_shape_and_bad_files_are_refused() {
        let item = report("job-7", 42).item();
        assert_eq!(item["isDeltaCharge"], false);
        assert_eq!(item["owner"]["type"], "user");
        assert_eq!(item["categoryIdV2"]["provider"], "hpc");
        assert_eq!(item["description"]["scope"], "job-7");
        assert_eq!(item["usage"], 42);
        let back = Report::from_json(report("s", 1).to_json().to_string().as_bytes()).unwrap();
        assert_eq!(back, report("s", 1));
        for bad in [
            r#"{"owner":{"type":"user","username":"a"},"category":"c","provider":"p","scope":"s","usage":-1}"#,
            r#"{"owner":{"type":"wallet","username":"a"},"category":"c","provider":"p","scope":"s","usage":1}"#,
            r#"{"owner":{"type":"project","projectId":""},"category":"c","provider":"p","scope":"s","usage":1}"#,
            r#"{"owner":{"type":"user","username":"a"},"provider":"p","scope":"s","usage":1}"#,
            "nonsense",
        ] {
            assert!(Report::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
