//! Registering project drives with UCloud, as UCloud's own Slurm module does
//! (im2 `RegisterDriveInfo`): a drive owned by the project (`project` set,
//! `createdBy` the core's `_ucloud`), readable and writable by all its members
//! (`projectAllRead`, `projectAllWrite`), in the site's file product. The calls go
//! through the outbox (the sender alone holds UCloud's token) and UCloud's
//! answers come back as replies there; with UCloud's drive id the drive's entry
//! is written into the drive table, which is what the file plugins trust.
//!
//! Never twice: UCloud is first asked whether it has a drive under the drive's
//! provider id (which the core keeps for good once used), and only when it has
//! none is the registration queued; a registration UCloud refused (409 after a
//! crash between queueing and recording) leads back to the question.

use crate::state::{DriveReg, Pending};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use ucloud_wire::names::DriveId;
use ucloud_wire::outbox::{self, Message, Method};
use ucloud_wire::products::{Kind, Table};
use ucloud_wire::record::{Drive, DriveOwner};

pub const REGISTER: &str = "/api/files/collections/control/register";
pub const BROWSE: &str = "/api/files/collections/control/browse";
/// The product project drives are registered with: the one of the users' home
/// drives (ucloud-registry's), as im2 registers a project's drive in the same
/// file-system category as its members' own.
pub const PRODUCT: &str = "home";
/// Replies are small; anything larger is not UCloud's answer.
const MAX_REPLY: u64 = 4 << 20;

/// The product (id, category) of project drives, when the site's table offers it
/// as a storage product.
pub fn product(table: &Table) -> Option<(String, String)> {
    table
        .products
        .iter()
        .find(|p| p.name == PRODUCT)
        .filter(|p| table.category(&p.category).map(|c| c.kind) == Some(Kind::Storage))
        .map(|p| (p.name.clone(), p.category.clone()))
}

/// The provider's own id for a project's drive: stable, so that the core, which
/// keeps it for good, refuses a second registration.
pub fn provider_id(provider: &str, project: &str) -> String {
    format!("{provider}-project-{project}")
}

pub fn register_tag(group: &str) -> String {
    format!("project-drive-{group}")
}

pub fn find_tag(group: &str) -> String {
    format!("project-find-{group}")
}

/// What a run knows of one project drive.
pub struct Project<'a> {
    pub id: &'a str,
    pub group: &'a str,
    pub gid: u32,
    pub title: &'a str,
    pub base: String,
}

/// `DrivesControlRegister` (`orchestrators/drives.go`):
/// `BulkRequest[ProviderRegisteredResource[DriveSpecification]]`.
pub fn register_message(provider: &str, product: &(String, String), p: &Project) -> Message {
    Message {
        method: Method::Post,
        path: REGISTER.into(),
        body: json!({"items": [{
            "spec": {
                "title": p.title,
                "product": {"id": product.0, "category": product.1, "provider": provider},
            },
            "providerGeneratedId": provider_id(provider, p.id),
            "createdBy": "_ucloud",
            "project": p.id,
            "projectAllRead": true,
            "projectAllWrite": true,
        }]}),
        reply: Some(register_tag(p.group)),
    }
}

/// `DrivesControlBrowse` by provider id (`filterProviderIds`).
pub fn find_message(provider: &str, p: &Project) -> Message {
    Message {
        method: Method::Get,
        path: format!(
            "{BROWSE}?filterProviderIds={}&itemsPerPage=250",
            outbox::query_value(&provider_id(provider, p.id))
        ),
        body: Value::Null,
        reply: Some(find_tag(p.group)),
    }
}

/// UCloud's drive ids are decimal; anything else is not taken for a file name.
fn drive_id(v: &Value) -> Result<DriveId, String> {
    let id = v.as_str().ok_or("the drive id is not a string")?;
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "drive id {:?} is not decimal",
            id.chars().take(40).collect::<String>()
        ));
    }
    DriveId::new(id).map_err(|e| e.to_string())
}

/// `BulkResponse[FindByStringId]`: `{"responses":[{"id":"23"}]}`.
pub fn parse_register_reply(v: &Value) -> Result<DriveId, String> {
    drive_id(&v["responses"][0]["id"]).map_err(|why| format!("UCloud's answer: {why}"))
}

/// A `PageV2[Drive]`: the drive with this project drive's provider id, if UCloud
/// has it. One with that provider id that is not the project's is an error:
/// it is nobody's here to take.
pub fn parse_find_reply(
    v: &Value,
    provider: &str,
    project: &str,
) -> Result<Option<DriveId>, String> {
    let items = v["items"]
        .as_array()
        .ok_or("UCloud's answer has no items list")?;
    let want = provider_id(provider, project);
    let Some(drive) = items
        .iter()
        .find(|d| d["providerGeneratedId"].as_str() == Some(want.as_str()))
    else {
        return Ok(None);
    };
    let owner = drive["owner"]["project"].as_str();
    if owner != Some(project) {
        return Err(format!(
            "UCloud's drive {want} belongs to project {:?}, not {project}",
            owner.map(|o| o.chars().take(80).collect::<String>())
        ));
    }
    drive_id(&drive["id"]).map(Some)
}

/// What to do next for one project drive, from the facts alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing until UCloud answers.
    Wait,
    /// Ask UCloud whether it has the drive.
    Ask,
    /// UCloud has none: register it.
    Register,
    /// UCloud's id: write the drive table entry.
    Record(DriveId),
    /// An answer that cannot be used: said (once), left for the admin.
    Refuse(String),
    /// The question or registration failed at UCloud: said, then asked again.
    Retry(String),
}

pub fn decide(
    reg: &DriveReg,
    registered: Option<Result<DriveId, String>>,
    found: Option<Result<Option<DriveId>, String>>,
    failed: Option<String>,
) -> Step {
    if let Some(r) = registered {
        return match r {
            Ok(id) => Step::Record(id),
            Err(why) => Step::Refuse(why),
        };
    }
    if let Some(f) = found {
        return match f {
            Ok(Some(id)) => Step::Record(id),
            // Only an answer to a question of ours leads to a registration.
            Ok(None) if reg.pending == Some(Pending::Asked) => Step::Register,
            Ok(None) => Step::Ask,
            Err(why) => Step::Refuse(why),
        };
    }
    if let Some(why) = failed {
        return Step::Retry(why);
    }
    match reg.pending {
        None => Step::Ask,
        Some(_) => Step::Wait,
    }
}

/// The outbox, as this program uses it: queueing, and reading the replies and
/// failures of its own tags.
pub struct Outbox {
    pub dir: PathBuf,
    /// The sender's uid: the only account whose replies (and failures) are read.
    /// Everyone in the outbox's group may write `replies/`; only the sender holds
    /// UCloud's answers, so a file of anyone else's is a forgery. None: no sender
    /// account is known, and no reply is believed.
    pub sender: Option<u32>,
}

impl Outbox {
    pub fn send(&self, m: &Message) -> Result<(), String> {
        // The sender (another account, in the outbox's group) must read it; the
        // unit's umask would make it root's alone.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
        let queued = outbox::enqueue(&self.dir, m);
        nix::sys::stat::umask(old);
        queued
            .map(|_| ())
            .map_err(|e| format!("cannot queue {} in {}: {e}", m.path, self.dir.display()))
    }

    fn reply_path(&self, tag: &str) -> PathBuf {
        self.dir.join(outbox::REPLIES).join(format!("{tag}.json"))
    }

    /// A reply, once the sender stored it. The sender's account writes it:
    /// never followed through a link, size-capped, parsed as any input.
    pub fn reply(&self, tag: &str) -> Option<Result<Value, String>> {
        self.read_senders(&self.reply_path(tag))
    }

    /// A file the sender wrote, or an error naming who else did.
    fn read_senders(&self, path: &Path) -> Option<Result<Value, String>> {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::symlink_metadata(path).ok()?.uid();
        if Some(owner) != self.sender {
            return Some(Err(format!(
                "{} is uid {owner}'s, not the sender's: not believed",
                path.display()
            )));
        }
        read_json(path)
    }

    pub fn discard(&self, tag: &str) {
        let _ = std::fs::remove_file(self.reply_path(tag));
    }

    /// The messages of this program UCloud refused (the sender moved them to
    /// `failed/`), by reply tag.
    pub fn failures(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join(outbox::FAILED)) else {
            return out;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(Ok(v)) = self.read_senders(&path) else {
                continue;
            };
            if let Some(tag) = v["reply"].as_str() {
                if tag.starts_with("project-drive-") || tag.starts_with("project-find-") {
                    out.insert(tag.to_string(), path);
                }
            }
        }
        out
    }
}

pub fn read_json(path: &Path) -> Option<Result<Value, String>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("cannot open {}: {e}", path.display()))),
    };
    let read = (|| {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".to_string());
        }
        let bytes = ucloud_wire::read_capped(file, MAX_REPLY).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
    })();
    Some(read.map_err(|why| format!("{}: {why}", path.display())))
}

/// Writes the drive table entry of a project's drive, under the registry's lock,
/// never over an entry that is not this project's drive (a drive id UCloud gave
/// someone else, or a forged reply, changes nothing).
pub fn put_entry(table: &Path, lock_dir: &Path, drive: &Drive) -> Result<bool, String> {
    let _lock = ucloud_wire::record::registry_lock(lock_dir)?;
    let path = table.join(drive.id.as_str());
    match read_entry(&path, &drive.id)? {
        Some(existing) if existing == *drive => return Ok(false),
        Some(existing) => {
            let same = matches!(
                (&existing.owner, &drive.owner),
                (DriveOwner::Project { project: a, .. }, DriveOwner::Project { project: b, .. }) if a == b
            );
            if !same {
                return Err(format!(
                    "drive {} is in the drive table as {}'s: nothing recorded",
                    drive.id, existing.owner
                ));
            }
        }
        None => {}
    }
    ucloud_wire::record::write_atomic(table, drive.id.as_str(), &drive.to_json(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(true)
}

fn read_entry(path: &Path, id: &DriveId) -> Result<Option<Drive>, String> {
    match read_json(path) {
        None => Ok(None),
        Some(Ok(v)) => Drive::from_json(id, &v)
            .map(Some)
            .map_err(|why| format!("{}: {why}", path.display())),
        Some(Err(why)) => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_senders_replies_are_believed() {
        let dir = std::env::temp_dir().join(format!("project-replies-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(outbox::REPLIES)).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let out = Outbox {
            dir: dir.clone(),
            sender: Some(me),
        };
        let path = dir.join(outbox::REPLIES).join("project-drive-ucp-x.json");
        std::fs::write(&path, r#"{"responses":[{"id":"7"}]}"#).unwrap();
        assert!(matches!(out.reply("project-drive-ucp-x"), Some(Ok(_))));
        // Nobody else's file is believed, and no sender known believes none.
        let nobody = Outbox {
            dir: dir.clone(),
            sender: None,
        };
        assert!(matches!(nobody.reply("project-drive-ucp-x"), Some(Err(_))));
        if me == 0 {
            nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let why = out.reply("project-drive-ucp-x").unwrap().unwrap_err();
            assert!(why.contains("not the sender's"), "{why}");
        }
        assert!(out.reply("missing").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const P: &str = "5d3c7a6e-2f4b-4c1d-9e8f-0a1b2c3d4e5f";

    fn project() -> Project<'static> {
        Project {
            id: P,
            group: "ucp-5d3c7a6e2f",
            gid: 200001,
            title: "Physics",
            base: "/srv/projects/ucp-5d3c7a6e2f".into(),
        }
    }

    #[test]
    fn the_registration_is_the_projects_as_ucloud_s_own_module_makes_it() {
        let product = ("home".to_string(), "home".to_string());
        let m = register_message("hpc", &product, &project());
        assert_eq!((m.method, m.path.as_str()), (Method::Post, REGISTER));
        assert_eq!(m.reply.as_deref(), Some("project-drive-ucp-5d3c7a6e2f"));
        assert_eq!(
            m.body,
            json!({"items": [{
                "spec": {"title": "Physics",
                         "product": {"id": "home", "category": "home", "provider": "hpc"}},
                "providerGeneratedId": format!("hpc-project-{P}"),
                "createdBy": "_ucloud",
                "project": P,
                "projectAllRead": true,
                "projectAllWrite": true,
            }]})
        );
        let f = find_message("hpc", &project());
        assert_eq!(f.method, Method::Get);
        assert_eq!(
            f.path,
            format!("{BROWSE}?filterProviderIds=hpc-project-{P}&itemsPerPage=250")
        );
        assert_eq!(f.reply.as_deref(), Some("project-find-ucp-5d3c7a6e2f"));
        // Both tags are ones the outbox takes.
        let dir = std::env::temp_dir().join(format!("project-outbox-{}", std::process::id()));
        for sub in [outbox::TMP, outbox::QUEUE] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let out = Outbox {
            dir: dir.clone(),
            sender: None,
        };
        out.send(&m).unwrap();
        out.send(&f).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hostile_answers_are_refused() {
        assert_eq!(
            parse_register_reply(&json!({"responses": [{"id": "23"}]}))
                .unwrap()
                .as_str(),
            "23"
        );
        for bad in [
            json!({"responses": [{"id": "../mappings/x"}]}),
            json!({"responses": [{"id": ".23"}]}),
            json!({"responses": [{"id": "23a"}]}),
            json!({"responses": [{"id": ""}]}),
            json!({"responses": [{"id": "1".repeat(21)}]}),
            json!({"responses": [{"id": 23}]}),
            json!({"responses": []}),
            json!({}),
            json!([]),
        ] {
            assert!(parse_register_reply(&bad).is_err(), "{bad}");
        }
        let pid = provider_id("hpc", P);
        let drive = |id: Value, project: Value| {
            json!({"id": id, "providerGeneratedId": pid,
                   "owner": {"createdBy": "_ucloud", "project": project}})
        };
        let found = |v: Value| parse_find_reply(&v, "hpc", P);
        assert_eq!(
            found(json!({"items": [drive(json!("23"), json!(P))], "next": null}))
                .unwrap()
                .unwrap()
                .as_str(),
            "23"
        );
        assert_eq!(found(json!({"items": []})).unwrap(), None);
        // Another provider id is not this drive.
        assert_eq!(
            found(
                json!({"items": [{"id": "9", "providerGeneratedId": "hpc-project-other",
                                    "owner": {"project": "other"}}]})
            )
            .unwrap(),
            None
        );
        for bad in [
            json!({"items": [drive(json!("23"), json!("someone-else"))]}),
            json!({"items": [drive(json!("23"), json!(null))]}),
            json!({"items": [drive(json!("../23"), json!(P))]}),
            json!({"items": [drive(json!(23), json!(P))]}),
            json!({"items": {}}),
            json!({"responses": [{"id": "23"}]}),
        ] {
            assert!(found(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_drive_is_asked_about_then_registered_once_then_recorded() {
        let id = || DriveId::new("23").unwrap();
        let reg = |pending| DriveReg { id: None, pending };
        // Nothing known: ask first, never register blind.
        assert_eq!(decide(&reg(None), None, None, None), Step::Ask);
        assert_eq!(
            decide(&reg(Some(Pending::Asked)), None, None, None),
            Step::Wait
        );
        assert_eq!(
            decide(&reg(Some(Pending::Sent)), None, None, None),
            Step::Wait
        );
        // UCloud has none: register; it has one: take it.
        assert_eq!(
            decide(&reg(Some(Pending::Asked)), None, Some(Ok(None)), None),
            Step::Register
        );
        assert_eq!(
            decide(&reg(Some(Pending::Asked)), None, Some(Ok(Some(id()))), None),
            Step::Record(id())
        );
        // An answer nobody here asked for registers nothing.
        assert_eq!(decide(&reg(None), None, Some(Ok(None)), None), Step::Ask);
        assert_eq!(
            decide(&reg(Some(Pending::Sent)), None, Some(Ok(None)), None),
            Step::Ask
        );
        assert_eq!(
            decide(&reg(Some(Pending::Sent)), Some(Ok(id())), None, None),
            Step::Record(id())
        );
        assert!(matches!(
            decide(&reg(Some(Pending::Sent)), Some(Err("x".into())), None, None),
            Step::Refuse(_)
        ));
        assert!(matches!(
            decide(
                &reg(Some(Pending::Asked)),
                None,
                Some(Err("x".into())),
                None
            ),
            Step::Refuse(_)
        ));
        // Refused at UCloud (409 after a crash): back to the question.
        assert!(matches!(
            decide(&reg(Some(Pending::Sent)), None, None, Some("409".into())),
            Step::Retry(_)
        ));
    }

    #[test]
    fn an_entry_is_written_only_over_this_projects_own() {
        let dir = std::env::temp_dir().join(format!("project-drives-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = project();
        let drive = Drive::project(
            DriveId::new("23").unwrap(),
            P.into(),
            p.gid,
            p.base.clone(),
            p.title.into(),
        );
        assert!(put_entry(&dir, &dir, &drive).unwrap());
        assert!(!put_entry(&dir, &dir, &drive).unwrap(), "unchanged");
        let mut renamed = drive.clone();
        renamed.title = "Physics II".into();
        assert!(put_entry(&dir, &dir, &renamed).unwrap());
        let back = Drive::parse(&drive.id, &std::fs::read(dir.join("23")).unwrap()).unwrap();
        assert_eq!(back, renamed);
        // Someone's home under the id UCloud (or a forged reply) named: left alone.
        let home = r#"{"id":"17","ucloud":"A#1","local":"alice","base":"/home/alice"}"#;
        std::fs::write(dir.join("17"), home).unwrap();
        let mut stolen = drive.clone();
        stolen.id = DriveId::new("17").unwrap();
        assert!(put_entry(&dir, &dir, &stolen).unwrap_err().contains("A#1"));
        assert_eq!(std::fs::read_to_string(dir.join("17")).unwrap(), home);
        // Another project's drive: left alone too.
        let mut other = drive.clone();
        other.owner = DriveOwner::Project {
            project: "other".into(),
            gid: 200002,
        };
        assert!(put_entry(&dir, &dir, &other).is_err());
        // A link is not followed.
        std::os::unix::fs::symlink("/etc/passwd", dir.join("24")).unwrap();
        let mut linked = drive.clone();
        linked.id = DriveId::new("24").unwrap();
        assert!(put_entry(&dir, &dir, &linked).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
