//! The drive table as this program needs it: which directory each drive is, whose
//! allocation pays for it and in which storage category. Written by
//! ucloud-registry (`var/lib/ucloud-im/drives/<driveId>`, root 0644 files in a
//! root 0755 directory); read here as untrusted all the same: an entry that does
//! not make sense is refused by itself, and the others are still measured.

use serde_json::Value;
use std::path::{Path, PathBuf};
use ucloud_wire::usage::WalletOwner;

/// The category a drive is charged in when its entry names none: the registry
/// registers every home drive as product `home` of category `home`
/// (ucloud-registry's `register_home_drive`).
pub const HOME_CATEGORY: &str = "home";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    pub id: String,
    pub owner: WalletOwner,
    /// The person whose drive it is; None for a project's drive (ucloud-project's,
    /// kind `project`), which is its project's alone and charged to it.
    pub ucloud: Option<String>,
    pub local: Option<String>,
    pub base: PathBuf,
    pub category: String,
}

/// UCloud's drive ids are decimal; anything else is kept out of file names.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Drive {
    /// One entry, stored under the file name `file`.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Drive, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|_| "not JSON".to_string())?;
        let text = |k: &str| {
            v[k].as_str()
                .filter(|s| !s.is_empty())
                .map(String::from)
                .ok_or_else(|| format!("no {k}"))
        };
        let id = text("id")?;
        if id != file || !valid_id(&id) {
            return Err(format!(
                "its id {id:?} is not its file name or not a drive id"
            ));
        }
        let base = PathBuf::from(text("base")?);
        if !base.is_absolute() || base.components().any(|c| c.as_os_str() == "..") {
            return Err(format!(
                "its base {} is not an absolute path",
                base.display()
            ));
        }
        let project = v["project"].as_str().filter(|p| !p.is_empty());
        let (owner, ucloud, local) = if v["kind"] == "project" {
            let project = project.ok_or("a project's drive that names no project")?;
            (WalletOwner::Project(project.to_string()), None, None)
        } else {
            let ucloud = text("ucloud")?;
            let owner = WalletOwner::of(&ucloud, project);
            (owner, Some(ucloud), Some(text("local")?))
        };
        Ok(Drive {
            owner,
            local,
            category: v["category"].as_str().unwrap_or(HOME_CATEGORY).to_string(),
            ucloud,
            base,
            id,
        })
    }

    /// UCloud's own module's scope for a drive's storage: `drive-<provider>-<id>`.
    pub fn scope(&self, provider: &str) -> String {
        format!("drive-{provider}-{}", self.id)
    }
}

/// A file of the table: its name, and the drive or why it is refused.
pub type Entry = (String, Result<Drive, String>);

/// Every entry of the table, in id order.
pub fn table(dir: &Path) -> Result<Vec<Entry>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let drive = match entry.file_type() {
            Ok(t) if t.is_file() => std::fs::read(entry.path())
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|b| Drive::parse(&name, &b)),
            _ => Err("not a regular file".to_string()),
        };
        if is_share(&entry.path()) {
            continue;
        }
        out.push((name, drive));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A share's drive (ucloud-share's) is a view of a folder the sharer's own drive
/// holds and is measured there: counting it again would charge twice.
fn is_share(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["kind"] == "share")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_entries_are_drives_and_hostile_ones_are_refused() {
        let d = Drive::parse(
            "17",
            br#"{"id":"17","ucloud":"DonnaJensen#4512","local":"donna","base":"/home/donna","kind":"home","title":"Home"}"#,
        )
        .unwrap();
        assert_eq!(d.owner, WalletOwner::User("DonnaJensen#4512".into()));
        assert_eq!(d.category, "home");
        assert_eq!(d.scope("hpc"), "drive-hpc-17");
        let p = Drive::parse(
            "18",
            br#"{"id":"18","ucloud":"D#1","local":"d","base":"/p","project":"abc","category":"fast"}"#,
        )
        .unwrap();
        assert_eq!(p.owner, WalletOwner::Project("abc".into()));
        assert_eq!(p.category, "fast");
        // ucloud-project's entry: the project's, charged to it, no person in it.
        let q = Drive::parse(
            "23",
            br#"{"id":"23","kind":"project","project":"5d3c7a6e-2f4b","gid":200001,"base":"/srv/p/ucp-5d3c7a6e2f","title":"Physics"}"#,
        )
        .unwrap();
        assert_eq!(q.owner, WalletOwner::Project("5d3c7a6e-2f4b".into()));
        assert_eq!(
            (q.ucloud, q.local, q.category.as_str()),
            (None, None, "home")
        );
        for (file, bad) in [
            ("17", r#"{"id":"18","ucloud":"a","local":"a","base":"/a"}"#),
            ("..", r#"{"id":"..","ucloud":"a","local":"a","base":"/a"}"#),
            ("17", r#"{"id":"17","ucloud":"a","local":"a","base":"a/b"}"#),
            (
                "17",
                r#"{"id":"17","ucloud":"a","local":"a","base":"/a/../etc"}"#,
            ),
            ("17", r#"{"id":"17","ucloud":"","local":"a","base":"/a"}"#),
            ("17", "nonsense"),
            ("23", r#"{"id":"23","kind":"project","gid":5,"base":"/p"}"#),
            (
                "23",
                r#"{"id":"23","kind":"project","project":"","gid":5,"base":"/p"}"#,
            ),
        ] {
            assert!(Drive::parse(file, bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
