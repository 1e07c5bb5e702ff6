//! The records ucloud-registry keeps and every other program reads: mappings
//! (`mappings/<hex of the UCloud name>`) and the drive table (`drives/<driveId>`).
//! Each type has its one parser, writer and file name here, so the registry, the
//! dispatcher, ucloud-files, the monitor, the jobscript and ucloud-check agree on
//! them. Formats in doc/contracts.md.

use crate::names::{DriveId, LocalName, UcloudName};
use serde_json::{json, Value};
use std::path::Path;

/// Larger files are not records: a mapping or drive is a few hundred bytes.
pub const MAX_RECORD: u64 = 64 << 10;

/// `{"ucloud":"...","local":"...","uid":N,"created":ms}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub ucloud: UcloudName,
    pub local: LocalName,
    pub uid: u32,
    /// When it was made (ms); absent in files written by hand.
    pub created: Option<u64>,
}

impl Mapping {
    /// The file it is stored under: hex of the name, so a name never becomes a path.
    pub fn file_name(&self) -> String {
        self.ucloud.file_name()
    }

    /// `user` is the name the file is stored under: a file that names another user
    /// is refused rather than trusted.
    pub fn parse(user: &UcloudName, text: &[u8]) -> Result<Mapping, String> {
        Mapping::from_json(user, &json_of(text)?)
    }

    pub fn from_json(user: &UcloudName, value: &Value) -> Result<Mapping, String> {
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
        Ok(Mapping {
            ucloud: user.clone(),
            local,
            uid,
            created,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "ucloud": self.ucloud.as_str(), "local": self.local.as_str(), "uid": self.uid,
            "created": self.created,
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

/// Whose a drive is, which decides who may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveOwner {
    /// One person's drive (a home, a share's view): only `local` may use it.
    User {
        ucloud: UcloudName,
        local: LocalName,
    },
    /// A UCloud project's drive (ucloud-project's): any process in the project's
    /// group `gid` may use it, as the kernel would let it into the directory.
    /// There is no one person here: nothing may treat it as someone's own.
    Project { project: String, gid: u32 },
}

impl std::fmt::Display for DriveOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveOwner::User { ucloud, .. } => write!(f, "{ucloud}"),
            DriveOwner::Project { project, .. } => write!(f, "project {project}"),
        }
    }
}

/// A UCloud project id as the module accepts one: 1 to 64 of `[A-Za-z0-9_-]`
/// (UCloud's are UUIDs).
pub fn valid_project_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `{"id":"17","ucloud":"...","local":"...","base":"/home/x","kind":"home","title":"Home"}`,
/// or for a project's drive
/// `{"id":"23","kind":"project","project":"<id>","gid":200001,"base":"/x","title":"..."}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    pub id: DriveId,
    pub owner: DriveOwner,
    /// The local directory the drive's paths are below; absolute, taken as given
    /// (it is root's data: a link in it is the admin's choice).
    pub base: String,
    /// `home` for the drive the registry makes, `share` for one ucloud-share makes
    /// (a folder another user shares with `local`), `project` for a project's
    /// (and only for one); an admin may add others.
    pub kind: String,
    pub title: String,
    /// When the drive stops working (ms) unless renewed: ucloud-share renews a share's
    /// drive each time UCloud confirms the share, so a share nobody confirms ends.
    pub until: Option<u64>,
}

pub const PROJECT_KIND: &str = "project";

impl Drive {
    /// The home drive the registry registers for a mapping.
    pub fn home(id: DriveId, ucloud: UcloudName, local: LocalName, base: String) -> Drive {
        Drive {
            id,
            owner: DriveOwner::User { ucloud, local },
            base,
            kind: "home".into(),
            title: "Home".into(),
            until: None,
        }
    }

    /// The drive of UCloud project `project`, whose members here are group `gid`.
    pub fn project(id: DriveId, project: String, gid: u32, base: String, title: String) -> Drive {
        Drive {
            id,
            owner: DriveOwner::Project { project, gid },
            base,
            kind: PROJECT_KIND.into(),
            title,
            until: None,
        }
    }

    pub fn is_home(&self) -> bool {
        self.kind == "home" && self.user().is_some()
    }

    pub fn is_project(&self) -> bool {
        matches!(self.owner, DriveOwner::Project { .. })
    }

    /// The person whose drive it is; None for a project's drive.
    pub fn user(&self) -> Option<(&UcloudName, &LocalName)> {
        match &self.owner {
            DriveOwner::User { ucloud, local } => Some((ucloud, local)),
            DriveOwner::Project { .. } => None,
        }
    }

    /// The UCloud user whose drive it is; None for a project's drive.
    pub fn ucloud(&self) -> Option<&UcloudName> {
        self.user().map(|(u, _)| u)
    }

    /// The local account whose drive it is; None for a project's drive.
    pub fn local(&self) -> Option<&LocalName> {
        self.user().map(|(_, l)| l)
    }

    /// The UCloud project whose drive it is.
    pub fn project_id(&self) -> Option<&str> {
        match &self.owner {
            DriveOwner::Project { project, .. } => Some(project),
            DriveOwner::User { .. } => None,
        }
    }

    /// Whether the drive no longer works at `now_ms` (see [`Drive::until`]).
    pub fn lapsed(&self, now_ms: u64) -> bool {
        self.until.is_some_and(|until| until <= now_ms)
    }

    /// The file it is stored under.
    pub fn file_name(&self) -> &str {
        self.id.as_str()
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id.as_str(), "base": self.base, "kind": self.kind, "title": self.title,
        });
        match &self.owner {
            DriveOwner::User { ucloud, local } => {
                v["ucloud"] = json!(ucloud.as_str());
                v["local"] = json!(local.as_str());
            }
            DriveOwner::Project { project, gid } => {
                v["project"] = json!(project);
                v["gid"] = json!(gid);
            }
        }
        if let Some(until) = self.until {
            v["until"] = json!(until);
        }
        v
    }

    /// `id` is the name the entry is stored under. An entry without `kind` and
    /// `title` is a home drive (written by hand).
    pub fn parse(id: &DriveId, text: &[u8]) -> Result<Drive, String> {
        Drive::from_json(id, &json_of(text)?)
    }

    pub fn from_json(id: &DriveId, v: &Value) -> Result<Drive, String> {
        let named = str_field(v, "id")?;
        if named != id.as_str() {
            return Err(format!("names drive {named:?}, not {id}"));
        }
        let base = str_field(v, "base")?;
        if !base.starts_with('/') || base.contains('\0') {
            return Err(format!("base {base:?} is not an absolute path"));
        }
        let optional = |key: &str, default: &str| match v.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("{key} must be a string")),
        };
        let given = |key: &str| !matches!(v.get(key), None | Some(Value::Null));
        let kind = optional("kind", "home")?;
        // A project's entry and a person's are told apart by every field that
        // says so agreeing: an entry that mixes them could be read as either.
        let owner = if kind == PROJECT_KIND || given("project") || given("gid") {
            if kind != PROJECT_KIND {
                return Err(format!(
                    "names a project or gid but its kind is {kind:?}, not \"project\""
                ));
            }
            if given("ucloud") || given("local") {
                return Err("a project's drive names no ucloud or local user".into());
            }
            let project = str_field(v, "project")?;
            if !valid_project_id(project) {
                return Err(format!(
                    "project {:?} is not 1 to 64 of A-Z a-z 0-9 _ -",
                    project.chars().take(80).collect::<String>()
                ));
            }
            let gid = v
                .get("gid")
                .and_then(Value::as_u64)
                .and_then(|g| u32::try_from(g).ok())
                .ok_or("a project's drive needs its group's gid")?;
            // Group 0 is root's: its members are not a project's.
            if gid == 0 || gid == u32::MAX {
                return Err(format!("gid {gid} cannot be a project's group"));
            }
            DriveOwner::Project {
                project: project.to_string(),
                gid,
            }
        } else {
            DriveOwner::User {
                ucloud: UcloudName::new(str_field(v, "ucloud")?).map_err(|e| e.to_string())?,
                local: LocalName::new(str_field(v, "local")?).map_err(|e| e.to_string())?,
            }
        };
        Ok(Drive {
            id: id.clone(),
            owner,
            base: base.to_string(),
            kind,
            title: optional("title", "Home")?,
            until: match v.get("until") {
                None | Some(Value::Null) => None,
                Some(u) => Some(u.as_u64().ok_or("until must be a time in milliseconds")?),
            },
        })
    }
}

/// Why a drive cannot be used by a caller.
#[derive(Debug, PartialEq, Eq)]
pub enum DriveRefusal {
    /// Missing, or another account's (or a project's the caller is not in): the
    /// same answer, so nobody learns which drives exist.
    NotYours(String),
    /// A share UCloud has not confirmed lately.
    Lapsed(String),
    /// The entry is not root's, or not readable, or not a drive.
    Broken(String),
}

/// The groups this process is in, as the kernel checks access with them: the
/// supplementary groups (which the dispatcher set with initgroups for this one
/// request, from the group database as it is now) and the effective group.
/// Empty when they cannot be read: no project drive is then anyone's.
pub fn process_groups() -> Vec<u32> {
    let mut groups: Vec<u32> = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    groups.push(nix::unistd::getegid().as_raw());
    groups
}

/// The drive `id` of the drive table `table` (an open directory) if `user` may use
/// it and it has not lapsed at `now_ms`: a person's drive when it is `user`'s, a
/// project's drive when this process is in the project's group
/// ([`process_groups`]), so a member removed from the group is refused on the
/// very next request. The entry must be a regular root-owned file that only root
/// can write, or anyone who could write it could point a drive anywhere.
pub fn lookup_drive(
    table: &impl std::os::fd::AsFd,
    id: &DriveId,
    user: &str,
    now_ms: u64,
) -> Result<Drive, DriveRefusal> {
    lookup_drive_in(table, id, user, &process_groups(), now_ms)
}

/// [`lookup_drive`] with the caller's groups given.
pub fn lookup_drive_in(
    table: &impl std::os::fd::AsFd,
    id: &DriveId,
    user: &str,
    groups: &[u32],
    now_ms: u64,
) -> Result<Drive, DriveRefusal> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, Mode, SFlag};
    use std::io::Read;
    let not_yours =
        || DriveRefusal::NotYours(format!("there is no drive {id} of yours on this provider"));
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(table, id.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Err(not_yours()),
        Err(e) => {
            return Err(DriveRefusal::Broken(format!(
                "cannot open the drive table entry of {id}: {}",
                e.desc()
            )))
        }
    };
    let st = fstat(&fd).map_err(|e| DriveRefusal::Broken(format!("drive {id}: {}", e.desc())))?;
    let is_file = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFREG.bits();
    if !is_file || st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(DriveRefusal::Broken(format!(
            "the drive table entry of {id} must be a regular file owned by root, not group/world-writable"
        )));
    }
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_RECORD + 1)
        .read_to_end(&mut text)
        .map_err(|e| {
            DriveRefusal::Broken(format!("cannot read the drive table entry of {id}: {e}"))
        })?;
    let drive = Drive::parse(id, &text).map_err(|why| {
        DriveRefusal::Broken(format!("the drive table entry of {id} is invalid: {why}"))
    })?;
    if !may_use(&drive, user, groups) {
        return Err(not_yours());
    }
    if drive.lapsed(now_ms) {
        return Err(DriveRefusal::Lapsed(format!(
            "drive {id} is a share that UCloud has not confirmed lately; try again in a minute"
        )));
    }
    Ok(drive)
}

/// Whether `user`, in `groups`, may use `drive`: a person's drive only its own
/// account, a project's only a process in the project's group.
pub fn may_use(drive: &Drive, user: &str, groups: &[u32]) -> bool {
    match &drive.owner {
        DriveOwner::User { local, .. } => local.as_str() == user,
        DriveOwner::Project { gid, .. } => groups.contains(gid),
    }
}

/// Every entry of the drive table at `dir`, by id, and a note for each file that is
/// not a valid one. Dot-files are the registry's writes in progress. The table is
/// root's (a root 0755 directory), so what is in it is trusted once it parses; a
/// link or anything but a regular file is reported, not followed.
pub fn drive_table(dir: &Path) -> std::io::Result<(Vec<Drive>, Vec<String>)> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push((name, entry.file_type()?.is_file()));
        }
    }
    names.sort();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for (name, is_file) in names {
        let path = dir.join(&name);
        let read = DriveId::new(&name)
            .map_err(|_| "not a drive id".to_string())
            .and_then(|id| {
                if !is_file {
                    return Err("not a regular file".into());
                }
                Drive::parse(&id, &read_record(&path)?)
            });
        match read {
            Ok(drive) => found.push(drive),
            Err(why) => problems.push(format!("{}: {why}", path.display())),
        }
    }
    Ok((found, problems))
}

/// The registry's lock (`registry.lock` in the state directory `state`), which the
/// drive table's other writers (ucloud-share, ucloud-project) take before writing an
/// entry, so that none is written while the registry rewrites the table. Waits for it.
pub fn registry_lock(state: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state.join("registry.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", path.display()))
}

/// Writes a record file whole or not at all: a temporary file beside it (a dot
/// file, which readers skip), fsync, rename, fsync of the directory. For root's
/// record directories, whose writers hold a lock, so the temporary name (by pid)
/// is theirs to remove when a crashed writer left it.
pub fn write_atomic(dir: &Path, name: &str, value: &Value, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)?;
    let written = (|| {
        // The umask may have taken bits the readers need.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(format!("{value}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn read_record(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RECORD + 1).read_to_end(&mut text))
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(text)
}

fn json_of(text: &[u8]) -> Result<Value, String> {
    if text.len() as u64 > MAX_RECORD {
        return Err(format!("larger than {MAX_RECORD} bytes"));
    }
    serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))
}

fn str_field<'v>(v: &'v Value, key: &str) -> Result<&'v str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("has no {key:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_files_must_name_their_user() {
        let alice = UcloudName::new("AliceHansen#1001").unwrap();
        let ok = br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":1}"#;
        let m = Mapping::parse(&alice, ok).unwrap();
        assert_eq!(
            (m.local.as_str(), m.uid, m.created),
            ("alice", 1001, Some(1))
        );
        assert_eq!(m.file_name(), alice.file_name());
        let again = serde_json::to_vec(&m.to_json()).unwrap();
        assert_eq!(Mapping::parse(&alice, &again).unwrap(), m);
        let by_hand = br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001}"#;
        assert_eq!(Mapping::parse(&alice, by_hand).unwrap().created, None);
        let huge = format!(
            r#"{{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"x":"{}"}}"#,
            "a".repeat(MAX_RECORD as usize)
        );
        for bad in [
            &br#"{"ucloud":"BobNielsen#2002","local":"alice","uid":1001}"#[..],
            br#"{"ucloud":"AliceHansen#1001","local":"../root","uid":1001}"#,
            br#"{"ucloud":"AliceHansen#1001","local":"alice"}"#,
            br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":-1}"#,
            br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":4294967296}"#,
            br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":"1001"}"#,
            br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":"x"}"#,
            br#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":-5}"#,
            br#"{"local":"alice","uid":1001}"#,
            b"not json",
            b"",
            huge.as_bytes(),
        ] {
            let text = String::from_utf8_lossy(bad);
            assert!(Mapping::parse(&alice, bad).is_err(), "{text:.80}");
        }
    }

    #[test]
    fn mappings_expire_after_the_site_limit() {
        let m = |created| Mapping {
            ucloud: UcloudName::new("AliceHansen#1001").unwrap(),
            local: LocalName::new("alice").unwrap(),
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
        let by_hand =
            br#"{"id":"17","ucloud":"AliceHansen#1001","local":"alice","base":"/home/alice"}"#;
        let d = Drive::parse(&id, by_hand).unwrap();
        assert!(d.is_home());
        assert_eq!(d.file_name(), "17");
        assert_eq!(Drive::from_json(&id, &d.to_json()).unwrap(), d);
        let scratch = br#"{"id":"17","ucloud":"A#1","local":"alice","base":"/scratch","kind":"scratch","title":"Small"}"#;
        let s = Drive::parse(&id, scratch).unwrap();
        assert_eq!((s.is_home(), s.title.as_str()), (false, "Small"));
        assert_eq!(Drive::from_json(&id, &s.to_json()).unwrap(), s);
        for bad in [
            &br#"{"id":"18","ucloud":"A#1","local":"alice","base":"/home/alice"}"#[..],
            br#"{"id":"17","ucloud":"A#1","local":"alice","base":"home/alice"}"#,
            br#"{"id":"17","ucloud":"A#1","local":"../x","base":"/home/alice"}"#,
            br#"{"id":"17","ucloud":"A#1","local":"Alice","base":"/home/alice"}"#,
            br#"{"id":"17","local":"alice","base":"/home/alice"}"#,
            br#"{"id":"17","ucloud":"A#1","base":"/home/alice"}"#,
            br#"{"id":"17","ucloud":"A#1","local":"alice"}"#,
            br#"{"id":"17","ucloud":"A#1","local":"alice","base":"/a\u0000b"}"#,
            br#"{"id":"17","ucloud":"A#1","local":"alice","base":"/a","kind":7}"#,
            br#"{"id":17,"ucloud":"A#1","local":"alice","base":"/a"}"#,
            b"[]",
        ] {
            let text = String::from_utf8_lossy(bad);
            assert!(Drive::parse(&id, bad).is_err(), "{text}");
        }
    }

    const P: &str = "5d3c7a6e-2f4b-4c1d-9e8f-0a1b2c3d4e5f";

    fn project_entry(extra: &str) -> String {
        format!(
            r#"{{"id":"23","kind":"project","project":"{P}","gid":200001,"base":"/srv/p/ucp-5d3c7a6e2f","title":"Physics"{extra}}}"#
        )
    }

    #[test]
    fn a_project_drive_names_its_project_and_group_and_no_person() {
        let id = DriveId::new("23").unwrap();
        let d = Drive::parse(&id, project_entry("").as_bytes()).unwrap();
        assert_eq!(
            d.owner,
            DriveOwner::Project {
                project: P.into(),
                gid: 200001
            }
        );
        assert!(d.is_project() && !d.is_home());
        assert_eq!((d.user(), d.ucloud(), d.local()), (None, None, None));
        assert_eq!(d.project_id(), Some(P));
        assert_eq!(Drive::from_json(&id, &d.to_json()).unwrap(), d);
        let made = Drive::project(
            id.clone(),
            P.into(),
            200001,
            "/srv/p/ucp-5d3c7a6e2f".into(),
            "Physics".into(),
        );
        assert_eq!(made, d);
        assert!(made.to_json().get("ucloud").is_none() && made.to_json().get("local").is_none());
        let entry = |s: &str| s.replace("@P", P);
        for bad in [
            // A person's fields on a project's drive, or the other way round.
            project_entry(r#","local":"alice""#),
            project_entry(r#","ucloud":"A#1""#),
            entry(r#"{"id":"23","kind":"home","project":"@P","gid":5,"base":"/x"}"#),
            entry(r#"{"id":"23","project":"@P","gid":5,"base":"/x"}"#),
            entry(r#"{"id":"23","ucloud":"A#1","local":"alice","gid":5,"base":"/x"}"#),
            entry(r#"{"id":"23","ucloud":"A#1","local":"alice","kind":"project","base":"/x"}"#),
            // No project, a hostile one, no gid, root's group, not a gid.
            r#"{"id":"23","kind":"project","gid":5,"base":"/x"}"#.into(),
            r#"{"id":"23","kind":"project","project":"../../etc","gid":5,"base":"/x"}"#.into(),
            r#"{"id":"23","kind":"project","project":"","gid":5,"base":"/x"}"#.into(),
            format!(
                r#"{{"id":"23","kind":"project","project":"{}","gid":5,"base":"/x"}}"#,
                "a".repeat(65)
            ),
            r#"{"id":"23","kind":"project","project":"p q","gid":5,"base":"/x"}"#.into(),
            r#"{"id":"23","kind":"project","project":7,"gid":5,"base":"/x"}"#.into(),
            entry(r#"{"id":"23","kind":"project","project":"@P","base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":0,"base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":-1,"base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":4294967295,"base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":4294967296,"base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":"200001","base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":1.5,"base":"/x"}"#),
            entry(r#"{"id":"23","kind":"project","project":"@P","gid":5,"base":"x"}"#),
            entry(r#"{"id":"24","kind":"project","project":"@P","gid":5,"base":"/x"}"#),
        ] {
            assert!(Drive::parse(&id, bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_project_drive_is_for_its_group_alone_and_a_home_for_its_owner_alone() {
        let id = DriveId::new("23").unwrap();
        let project = Drive::parse(&id, project_entry("").as_bytes()).unwrap();
        // Membership is the process's groups, never the account's name.
        assert!(may_use(&project, "alice", &[1001, 200001]));
        assert!(may_use(&project, "anyone", &[200001]));
        assert!(!may_use(&project, "alice", &[1001]));
        assert!(!may_use(&project, "alice", &[]));
        assert!(!may_use(&project, "200001", &[1001]));
        let home = Drive::home(
            DriveId::new("17").unwrap(),
            UcloudName::new("A#1").unwrap(),
            LocalName::new("alice").unwrap(),
            "/home/alice".into(),
        );
        assert!(may_use(&home, "alice", &[]));
        // A group never opens a person's drive.
        assert!(!may_use(&home, "bob", &[0, 1001, 200001]));
    }

    #[test]
    fn lookup_refuses_a_removed_member_as_it_refuses_a_stranger() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ucloud-wire-lookup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("23"), project_entry("")).unwrap();
        std::fs::set_permissions(dir.join("23"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let table = std::fs::File::open(&dir).unwrap();
        let id = DriveId::new("23").unwrap();
        let missing = DriveId::new("99").unwrap();
        let out = lookup_drive_in(&table, &id, "bob", &[1002], 1);
        let gone = lookup_drive_in(&table, &missing, "bob", &[1002], 1);
        if nix::unistd::geteuid().is_root() {
            let d = lookup_drive_in(&table, &id, "alice", &[1001, 200001], 1).unwrap();
            assert!(d.is_project());
            // Not in the group (any more): exactly the answer for a missing drive,
            // but for the id it names.
            match (out, gone) {
                (Err(DriveRefusal::NotYours(a)), Err(DriveRefusal::NotYours(b))) => {
                    assert_eq!(a.replace("23", "99"), b)
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert!(matches!(out, Err(DriveRefusal::Broken(_))));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_drive_table_reports_what_it_cannot_use() {
        let dir = std::env::temp_dir().join(format!("ucloud-wire-drives-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let alice = Drive::home(
            DriveId::new("17").unwrap(),
            UcloudName::new("A#1").unwrap(),
            LocalName::new("alice").unwrap(),
            "/home/alice".into(),
        );
        std::fs::write(dir.join("17"), alice.to_json().to_string()).unwrap();
        std::fs::write(dir.join(".17.tmp"), "half a").unwrap();
        std::fs::write(dir.join("18"), "{}").unwrap();
        std::fs::write(dir.join("not an id"), "{}").unwrap();
        std::os::unix::fs::symlink(dir.join("17"), dir.join("19")).unwrap();
        let (found, problems) = drive_table(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [alice]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("18: has no \"id\""), "{problems:?}");
        assert!(
            problems[1].contains("19: not a regular file"),
            "{problems:?}"
        );
        assert!(problems[2].contains("not a drive id"), "{problems:?}");
        assert!(drive_table(Path::new("/nonexistent-drive-table")).is_err());
    }
}
