//! What the registry tells UCloud, through the outbox (the sender holds the
//! provider's credentials, the registry never does), and how it reads UCloud's
//! answers, which the sender leaves in `outbox/replies/<tag>.json`.

use crate::error::Error;
use crate::store::read_json;
use serde_json::{json, Value};
use std::path::PathBuf;
use ucloud_wire::names::{DriveId, UcloudName};
use ucloud_wire::outbox::{self, Message, Method};

pub const REGISTER_DRIVE: &str = "/api/files/collections/control/register";
pub const BROWSE_DRIVES: &str = "/api/files/collections/control/browse";
pub const APPROVE_CONNECTION: &str = "/api/providers/integration/control/approveConnection";
pub const CLEAR_CONNECTION: &str = "/api/providers/integration/control/clearConnection";
pub const BROWSE_SSH_KEYS: &str = "/api/ssh/control/browse";
pub const SSH_KEYS_PER_PAGE: u64 = 250;

/// Outbox reply tags are `drive-` (UCloud's answer to a registration) or `find-`
/// (its answer to a look-up by provider id) and the hex of the name: the longest name
/// the tags can carry, which is more than the longest UCloud name `lib/wire` accepts.
pub const MAX_NAME_BYTES: usize = (outbox::MAX_TAG - "drive-".len()) / 2;
const _: () = assert!(MAX_NAME_BYTES >= ucloud_wire::names::UCLOUD_NAME_MAX);
const TAG_PREFIXES: [&str; 2] = ["drive-", "find-"];

/// The tag under which the sender stores UCloud's answer to a home drive registration.
pub fn drive_tag(name: &UcloudName) -> String {
    format!("drive-{}", name.file_name())
}

/// The tag under which the sender stores UCloud's answer to the look-up of a home drive.
pub fn find_tag(name: &UcloudName) -> String {
    format!("find-{}", name.file_name())
}

/// The provider's own id for a user's home drive: stable, so registering it twice
/// names the same drive.
pub fn home_drive_provider_id(provider: &str, name: &UcloudName) -> String {
    format!("{provider}-home-{}", name.file_name())
}

/// The tag of the answer to the SSH key look-up of `name` (sshkeys.rs).
pub fn ssh_tag(name: &UcloudName) -> String {
    format!("ssh-{}", name.file_name())
}

/// `POST /api/ssh/control/browse` (`SshControlBrowse`, orchestrators/ssh.go):
/// `SshKeysControlBrowseRequest{itemsPerPage, next}` → `fnd.PageV2[SshKey]`.
pub fn browse_ssh_keys(name: &UcloudName, next: Option<&str>) -> Message {
    Message {
        method: Method::Post,
        path: BROWSE_SSH_KEYS.into(),
        body: json!({"itemsPerPage": SSH_KEYS_PER_PAGE, "next": next}),
        reply: Some(ssh_tag(name)),
    }
}

pub fn approve_connection(name: &UcloudName) -> Message {
    Message {
        method: Method::Post,
        path: APPROVE_CONNECTION.into(),
        body: json!({"username": name.as_str()}),
        reply: None,
    }
}

pub fn clear_connection(name: &UcloudName) -> Message {
    Message {
        method: Method::Post,
        path: CLEAR_CONNECTION.into(),
        body: json!({"username": name.as_str()}),
        reply: None,
    }
}

/// The home drive UCloud may already have for `name`, by its provider id: Go's
/// `DrivesControlBrowse` (`orchestrators/drives.go`), `DrivesControlBrowseRequest`
/// read from the query (`ResourceFlags.FilterProviderIds`, comma-separated) →
/// `PageV2[Drive]`. The core reserves a provider id until the drive is deleted, so a
/// user who connects again must get the drive back, never a second registration.
pub fn find_home_drive(provider: &str, name: &UcloudName) -> Message {
    Message {
        method: Method::Get,
        path: format!(
            "{BROWSE_DRIVES}?filterProviderIds={}&itemsPerPage=250",
            home_drive_provider_id(provider, name)
        ),
        body: Value::Null,
        reply: Some(find_tag(name)),
    }
}

/// Go's `DrivesControlRegister` (`orchestrators/drives.go`):
/// `BulkRequest[ProviderRegisteredResource[DriveSpecification]]`
/// (`orchestrators/resource.go`): `spec` (`{title, product}`), `providerGeneratedId`,
/// `createdBy`, `project`, `projectAllRead`, `projectAllWrite`, and nothing else.
pub fn register_home_drive(provider: &str, name: &UcloudName) -> Message {
    Message {
        method: Method::Post,
        path: REGISTER_DRIVE.into(),
        body: json!({"items": [{
            "spec": {
                "title": "Home",
                "product": {"id": "home", "category": "home", "provider": provider},
            },
            "providerGeneratedId": home_drive_provider_id(provider, name),
            "createdBy": name.as_str(),
            "project": null,
            "projectAllRead": false,
            "projectAllWrite": false,
        }]}),
        reply: Some(drive_tag(name)),
    }
}

pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn site() -> Outbox {
        Outbox {
            dir: ucloud_wire::paths::outbox_dir().into(),
        }
    }

    #[cfg(test)]
    pub fn at(dir: &std::path::Path) -> Outbox {
        Outbox { dir: dir.into() }
    }

    /// The outbox directory (sshkeys.rs reads its replies and failures).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Forgets an answer to an SSH key look-up: only one asked for now counts.
    pub fn discard_ssh_reply(&self, name: &UcloudName) {
        let _ = std::fs::remove_file(self.reply_path(&ssh_tag(name)));
    }

    pub fn send(&self, message: &Message) -> Result<(), Error> {
        outbox::enqueue(&self.dir, message)
            .map(|_| ())
            .map_err(|e| {
                Error::Io(format!(
                    "cannot queue {} in the outbox {}: {e} (its tmp/ and queue/ must exist)",
                    message.path,
                    self.dir.display()
                ))
            })
    }

    fn reply_path(&self, tag: &str) -> PathBuf {
        self.dir.join(outbox::REPLIES).join(format!("{tag}.json"))
    }

    /// The drive id UCloud gave the home drive of `name`, once the sender has stored
    /// its answer. A reply is written by the sender's account, so it is checked like
    /// any input: a drive id that could be a path is an error, not a file name.
    pub fn drive_reply(&self, name: &UcloudName) -> Result<Option<DriveId>, Error> {
        let path = self.reply_path(&drive_tag(name));
        let Some(reply) = read_json(&path)? else {
            return Ok(None);
        };
        parse_drive_reply(&reply)
            .map(Some)
            .map_err(|why| Error::Io(format!("{}: {why}", path.display())))
    }

    /// UCloud's answer to the look-up of the home drive of `name`, once there:
    /// the drive id when UCloud has the drive, None inside when it has not.
    pub fn find_reply(&self, name: &UcloudName) -> Result<Option<Option<DriveId>>, Error> {
        let path = self.reply_path(&find_tag(name));
        let Some(reply) = read_json(&path)? else {
            return Ok(None);
        };
        parse_find_reply(&reply, name)
            .map(Some)
            .map_err(|why| Error::Io(format!("{}: {why}", path.display())))
    }

    pub fn discard_drive_reply(&self, name: &UcloudName) {
        let _ = std::fs::remove_file(self.reply_path(&drive_tag(name)));
        self.discard_find_reply(name);
    }

    pub fn discard_find_reply(&self, name: &UcloudName) {
        let _ = std::fs::remove_file(self.reply_path(&find_tag(name)));
    }

    /// Names with an answer in `replies/`: for finding answers that outlived their
    /// mapping (a `remove` while the registration was still on its way).
    pub fn answered_names(&self) -> Vec<UcloudName> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(outbox::REPLIES)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let tagged = TAG_PREFIXES.iter().find_map(|p| file.strip_prefix(p))?;
                UcloudName::from_file_name(tagged.strip_suffix(".json")?).ok()
            })
            .collect()
    }

    /// A registration or look-up UCloud refused: the sender moved it to `failed/`.
    pub fn failed_registration(&self, name: &UcloudName) -> Option<PathBuf> {
        let tags = [drive_tag(name), find_tag(name)];
        let entries = std::fs::read_dir(self.dir.join(outbox::FAILED)).ok()?;
        entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            read_json(p).ok().flatten().is_some_and(|v| {
                v.get("reply")
                    .and_then(Value::as_str)
                    .is_some_and(|t| tags.iter().any(|tag| tag == t))
            })
        })
    }
}

/// A `PageV2[Drive]`: the id of the drive with the provider id of `name`'s home
/// drive, created by `name`; None when UCloud has none. A drive with that provider id
/// but another owner is an error: it is not this user's to take.
pub fn parse_find_reply(reply: &Value, name: &UcloudName) -> Result<Option<DriveId>, String> {
    let items = reply
        .get("items")
        .and_then(Value::as_array)
        .ok_or("UCloud's answer has no items list")?;
    let want = name.file_name();
    for drive in items {
        let pid = drive.get("providerGeneratedId").and_then(Value::as_str);
        if !pid.is_some_and(|p| p.ends_with(&format!("-home-{want}"))) {
            continue;
        }
        let owner = drive
            .get("owner")
            .and_then(|o| o.get("createdBy"))
            .and_then(Value::as_str);
        if owner != Some(name.as_str()) {
            return Err(format!(
                "UCloud's drive with provider id {} belongs to {owner:?}, not {name}",
                pid.unwrap_or_default()
            ));
        }
        let id = drive
            .get("id")
            .and_then(Value::as_str)
            .ok_or("UCloud's drive has no id")?;
        return DriveId::new(id).map(Some).map_err(|e| e.to_string());
    }
    Ok(None)
}

/// `{"responses":[{"id":"<driveId>"}]}`.
pub fn parse_drive_reply(reply: &Value) -> Result<DriveId, String> {
    let id = reply
        .get("responses")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("id"))
        .and_then(Value::as_str)
        .ok_or("UCloud's answer has no responses[0].id")?;
    DriveId::new(id).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_body_names_the_user_and_a_stable_id() {
        let name = UcloudName::new("DonnaJensen#4512").unwrap();
        let m = register_home_drive("hpc", &name);
        assert_eq!(m.path, REGISTER_DRIVE);
        assert_eq!(
            m.reply.as_deref(),
            Some("drive-446f6e6e614a656e73656e2334353132")
        );
        let item = &m.body["items"][0];
        assert_eq!(item["createdBy"], "DonnaJensen#4512");
        assert_eq!(
            item["providerGeneratedId"],
            "hpc-home-446f6e6e614a656e73656e2334353132"
        );
        assert_eq!(item["spec"]["product"]["provider"], "hpc");
        assert_eq!(item["spec"]["title"], "Home");
        // Only the keys of Go's ProviderRegisteredResource[DriveSpecification].
        let mut keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "createdBy",
                "project",
                "projectAllRead",
                "projectAllWrite",
                "providerGeneratedId",
                "spec"
            ]
        );
        assert_eq!(m.body.as_object().unwrap().len(), 1, "only items");
        for m in [approve_connection(&name), clear_connection(&name)] {
            assert_eq!(m.body, json!({"username": "DonnaJensen#4512"}));
        }
    }

    #[test]
    fn hostile_replies_are_refused() {
        assert_eq!(
            parse_drive_reply(&json!({"responses":[{"id":"17"}]}))
                .unwrap()
                .as_str(),
            "17"
        );
        for bad in [
            json!({"responses":[{"id":"../mappings/x"}]}),
            json!({"responses":[{"id":".hidden"}]}),
            json!({"responses":[{"id":17}]}),
            json!({"responses":[]}),
            json!({}),
        ] {
            assert!(parse_drive_reply(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_home_drive_is_looked_up_by_its_provider_id() {
        let name = UcloudName::new("DonnaJensen#4512").unwrap();
        let m = find_home_drive("hpc", &name);
        assert_eq!(m.method, Method::Get);
        assert_eq!(
            m.path,
            "/api/files/collections/control/browse?filterProviderIds=hpc-home-446f6e6e614a656e73656e2334353132&itemsPerPage=250"
        );
        assert_eq!(
            m.reply.as_deref(),
            Some("find-446f6e6e614a656e73656e2334353132")
        );
        let pid = home_drive_provider_id("hpc", &name);
        let drive = |id: Value, owner: &str| {
            json!({"id": id, "providerGeneratedId": pid, "owner": {"createdBy": owner, "project": null},
                   "specification": {"title": "Home"}})
        };
        assert_eq!(
            parse_find_reply(
                &json!({"items": [drive(json!("17"), name.as_str())], "next": null}),
                &name
            )
            .unwrap()
            .unwrap()
            .as_str(),
            "17"
        );
        assert_eq!(
            parse_find_reply(&json!({"items": [], "itemsPerPage": 1000}), &name).unwrap(),
            None
        );
        for bad in [
            json!({"items": [drive(json!("17"), "MalloryX#1")]}),
            json!({"items": [drive(json!("../x"), name.as_str())]}),
            json!({"items": [drive(json!(17), name.as_str())]}),
            json!({"items": {}}),
            json!({"responses": [{"id": "17"}]}),
        ] {
            assert!(parse_find_reply(&bad, &name).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_name_still_makes_a_valid_tag() {
        let name = UcloudName::new(&"x".repeat(ucloud_wire::names::UCLOUD_NAME_MAX)).unwrap();
        let dir = std::env::temp_dir().join(format!("registry-outbox-{}", std::process::id()));
        for sub in [outbox::TMP, outbox::QUEUE] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Outbox::at(&dir)
            .send(&register_home_drive("hpc", &name))
            .unwrap();
        Outbox::at(&dir)
            .send(&find_home_drive("hpc", &name))
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
