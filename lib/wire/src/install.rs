//! What the trusted files of an installation must be, and the records they hold:
//! one set of rules for the dispatcher, which enforces them on every request, and
//! for ucloud-check(8), which reports them ahead of time. Pure: the caller opens
//! (the dispatcher on descriptors, never following a link) and hands in what
//! `fstat`/`lstat` said, so both judge a file by the same words.

use crate::names::{DriveId, LocalName, UcloudName};
use serde_json::{json, Value};

/// Files larger than this are not configuration (site.conf, a key, a mapping).
pub const MAX_SMALL_FILE: u64 = 64 << 10;
/// The transfer key holds at least this many random bytes.
pub const MIN_TRANSFER_KEY: usize = 32;

/// The type of one path component, from `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// The components of an absolute path, refusing `.` and `..`: a trusted path is
/// walked one component at a time, and each must be what it says.
pub fn components(path: &str) -> Result<Vec<&str>, String> {
    if !path.starts_with('/') {
        return Err("not an absolute path".into());
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("contains . or ..".into());
    }
    Ok(parts)
}

/// `walked` is of the kind wanted: every component but a file's last is a
/// directory, and a link is refused wherever it is.
pub fn check_kind(walked: &str, is: FileKind, want: FileKind) -> Result<(), String> {
    if is == FileKind::Symlink {
        return Err(format!("{walked} is a symlink"));
    }
    if is != want {
        let what = if want == FileKind::File {
            "a regular file"
        } else {
            "a directory"
        };
        return Err(format!("{walked} is not {what}"));
    }
    Ok(())
}

/// Root-owned and writable by root alone.
pub fn check_owner(name: &str, uid: u32, mode: u32) -> Result<(), String> {
    if uid != 0 {
        return Err(format!(
            "{name} is owned by uid {uid}, not root: chown root {name}"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{name} is writable by group or others (mode {:04o}): chmod go-w {name}",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The transfer key is a secret: root's alone.
pub fn check_secret_mode(name: &str, mode: u32) -> Result<(), String> {
    if mode & 0o077 != 0 {
        return Err(format!(
            "{name} is readable by group or others (mode {:04o}): chmod 0600 {name}",
            mode & 0o7777
        ));
    }
    Ok(())
}

pub fn check_transfer_key_length(name: &str, len: usize) -> Result<(), String> {
    if len < MIN_TRANSFER_KEY {
        return Err(format!(
            "{name} holds {len} bytes; it needs at least {MIN_TRANSFER_KEY} random bytes"
        ));
    }
    Ok(())
}

/// A plugin runs as the mapped user, so everyone may execute it, and it never
/// carries a set-id bit (ownership is [`check_owner`]'s).
pub fn check_plugin_mode(name: &str, mode: u32) -> Result<(), String> {
    if mode & 0o001 == 0 {
        return Err(format!(
            "{name} is not executable by others (mode {:04o}): chmod 0755 {name}",
            mode & 0o7777
        ));
    }
    if mode & 0o6000 != 0 {
        return Err(format!(
            "{name} is setuid or setgid: plugins run as the user, remove the bit"
        ));
    }
    Ok(())
}

/// What a mapping file (`mappings/<hex of the UCloud name>`) says, as the
/// dispatcher reads it: `{"ucloud":"...","local":"...","uid":N,"created":ms}`.
#[derive(Debug, PartialEq, Eq)]
pub struct MappingRecord {
    pub local: String,
    pub uid: u32,
    /// When it was made (ms); absent in files written by hand.
    pub created: Option<u64>,
}

impl MappingRecord {
    /// `user` is the name the file is stored under: a file that names another user
    /// is refused rather than trusted.
    pub fn parse(user: &UcloudName, text: &str) -> Result<MappingRecord, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("ucloud").and_then(Value::as_str) != Some(user.as_str()) {
            return Err(format!("does not name UCloud user {user}"));
        }
        let local = value
            .get("local")
            .and_then(Value::as_str)
            .ok_or("has no local account")?;
        let local = LocalName::new(local).map_err(|e| e.to_string())?;
        let uid = value
            .get("uid")
            .and_then(Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
            .ok_or("has no uid")?;
        let created = match value.get("created") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or("created must be a time in milliseconds")?),
        };
        Ok(MappingRecord {
            local: local.as_str().to_string(),
            uid,
            created,
        })
    }

    /// A mapping older than the site's `mapping_expire_after_ms` no longer works,
    /// even before the registry has swept it away. One without a creation time never
    /// expires on its own (it was written by an admin).
    pub fn expired(&self, expire_after_ms: Option<u64>, now_ms: u64) -> bool {
        match (self.created, expire_after_ms) {
            (Some(created), Some(after)) => created.saturating_add(after) <= now_ms,
            _ => false,
        }
    }
}

/// One entry of the drive table (`drives/<driveId>`, written by ucloud-registry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    pub id: DriveId,
    pub ucloud: UcloudName,
    pub local: LocalName,
    /// The local directory the drive's paths are below (the user's home).
    pub base: String,
}

impl Drive {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.as_str(), "ucloud": self.ucloud.as_str(), "local": self.local.as_str(),
            "base": self.base, "kind": "home", "title": "Home",
        })
    }

    /// `expected` is the id the entry is stored under.
    pub fn from_json(expected: &DriveId, v: &Value) -> Result<Drive, String> {
        let field = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("has no {key:?}"))
        };
        let id = field("id")?;
        if id != expected.as_str() {
            return Err(format!("names drive {id:?}, not {expected}"));
        }
        let base = field("base")?;
        if !base.starts_with('/') || base.contains('\0') {
            return Err(format!("base {base:?} is not an absolute path"));
        }
        Ok(Drive {
            id: expected.clone(),
            ucloud: UcloudName::new(field("ucloud")?).map_err(|e| e.to_string())?,
            local: LocalName::new(field("local")?).map_err(|e| e.to_string())?,
            base: base.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_without_dot_components() {
        assert_eq!(
            components("/etc//ucloud-im/").unwrap(),
            ["etc", "ucloud-im"]
        );
        assert!(components("etc/passwd").is_err());
        assert!(components("/etc/../etc/passwd").is_err());
        assert!(components("/etc/./passwd").is_err());
    }

    #[test]
    fn owners_and_modes() {
        assert!(check_owner("/x", 0, 0o100644).is_ok());
        assert!(check_owner("/x", 0, 0o040755).is_ok());
        assert!(check_owner("/x", 1000, 0o100644)
            .unwrap_err()
            .contains("chown root /x"));
        assert!(check_owner("/x", 0, 0o100664)
            .unwrap_err()
            .contains("chmod go-w /x"));
        assert!(check_owner("/x", 0, 0o041777).is_err());
        assert!(check_secret_mode("/k", 0o100600).is_ok());
        assert!(check_secret_mode("/k", 0o100640).is_err());
        assert!(check_transfer_key_length("/k", 31).is_err());
        assert!(check_transfer_key_length("/k", 32).is_ok());
        assert!(check_plugin_mode("/p", 0o100755).is_ok());
        assert!(check_plugin_mode("/p", 0o100750).is_err());
        assert!(check_plugin_mode("/p", 0o104755).is_err());
        assert!(check_plugin_mode("/p", 0o102755).is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(FileKind::from_mode(0o100644), FileKind::File);
        assert_eq!(FileKind::from_mode(0o040755), FileKind::Dir);
        assert_eq!(FileKind::from_mode(0o120777), FileKind::Symlink);
        assert_eq!(FileKind::from_mode(0o010644), FileKind::Other);
        assert!(check_kind("/a", FileKind::Symlink, FileKind::Dir)
            .unwrap_err()
            .contains("is a symlink"));
        assert!(check_kind("/a", FileKind::Dir, FileKind::File)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(check_kind("/a", FileKind::Other, FileKind::Dir).is_err());
    }

    #[test]
    fn mapping_files_must_name_their_user() {
        let alice = UcloudName::new("AliceHansen#1001").unwrap();
        let ok = r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":1}"#;
        let expected = MappingRecord {
            local: "alice".into(),
            uid: 1001,
            created: Some(1),
        };
        assert_eq!(MappingRecord::parse(&alice, ok).unwrap(), expected);
        for bad in [
            r#"{"ucloud":"BobNielsen#2002","local":"alice","uid":1001}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"../root","uid":1001}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice"}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":-1}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":4294967296}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":"x"}"#,
            "not json",
        ] {
            assert!(MappingRecord::parse(&alice, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mappings_expire_after_the_site_limit() {
        let m = |created| MappingRecord {
            local: "alice".into(),
            uid: 1001,
            created,
        };
        assert!(!m(Some(1_000)).expired(None, u64::MAX));
        assert!(!m(None).expired(Some(10), u64::MAX));
        assert!(!m(Some(1_000)).expired(Some(10), 1_009));
        assert!(m(Some(1_000)).expired(Some(10), 1_010));
        assert!(m(Some(u64::MAX)).expired(Some(u64::MAX), u64::MAX));
    }

    #[test]
    fn drive_entries_name_their_id_and_an_absolute_base() {
        let id = DriveId::new("17").unwrap();
        let good =
            json!({"id":"17","ucloud":"AliceHansen#1001","local":"alice","base":"/home/alice"});
        let d = Drive::from_json(&id, &good).unwrap();
        assert_eq!(Drive::from_json(&id, &d.to_json()).unwrap(), d);
        for bad in [
            json!({"id":"18","ucloud":"AliceHansen#1001","local":"alice","base":"/home/alice"}),
            json!({"id":"17","ucloud":"AliceHansen#1001","local":"alice","base":"home/alice"}),
            json!({"id":"17","ucloud":"AliceHansen#1001","local":"../x","base":"/home/alice"}),
            json!({"id":"17","local":"alice","base":"/home/alice"}),
            json!({"id":"17","ucloud":"AliceHansen#1001","local":"alice","base":"/a\u{0}b"}),
        ] {
            assert!(Drive::from_json(&id, &bad).is_err(), "{bad}");
        }
    }
}
