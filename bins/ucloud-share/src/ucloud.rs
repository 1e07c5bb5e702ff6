//! What ucloud-share asks and tells UCloud, and how it reads UCloud's answers. It
//! holds no credential: every call goes through the outbox (ucloud-sender delivers it
//! and leaves the answer in `outbox/replies/<tag>.json`). Those answers are written by
//! the sender's account, which faces the network, so each one is checked here like
//! any input before a root program acts on it. Shapes are Go's
//! (provider-integration/shared/pkg/orchestrators/shares.go and drives.go).

use serde_json::{json, Value};
use ucloud_wire::names::{DriveId, UcloudName};
use ucloud_wire::outbox::{Message, Method};

pub const BROWSE: &str = "/api/shares/control/browse";
pub const UPDATE: &str = "/api/shares/control/update";
pub const REGISTER_DRIVE: &str = "/api/files/collections/control/register";
/// UCloud's page size limit.
pub const PAGE: u32 = 250;

/// A share as UCloud's core states it (`Share`), reduced to what access needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// UCloud's id: decimal, so it can name a file.
    pub id: String,
    /// `owner.createdBy`: who shared.
    pub sharer: UcloudName,
    /// `specification.sharedWith`.
    pub recipient: UcloudName,
    /// `specification.sourceFilePath`: `/<driveId>/<path>`.
    pub source: String,
    /// `specification.permissions` holds EDIT (else READ only).
    pub write: bool,
    /// `status.state` is APPROVED.
    pub approved: bool,
    /// `status.shareAvailableAt`: `/<driveId>` of the drive the recipient sees.
    pub available_at: Option<String>,
}

pub fn page_tag(n: usize) -> String {
    format!("shares-page-{n}")
}

pub fn drive_tag(share: &str) -> String {
    format!("share-drive-{share}")
}

/// `SharesControlBrowse`: `GET` with `SharesControlBrowseRequest` in the query.
pub fn browse(next: Option<&str>, n: usize) -> Message {
    let mut path = format!("{BROWSE}?itemsPerPage={PAGE}");
    if let Some(next) = next {
        path.push_str("&next=");
        path.push_str(&ucloud_wire::outbox::query_value(next));
    }
    Message {
        method: Method::Get,
        path,
        body: Value::Null,
        reply: Some(page_tag(n)),
    }
}

/// One page of `PageV2[Share]`: the shares of this provider that parse, a note
/// for each that does not, and the next page's token.
pub struct Page {
    pub shares: Vec<Share>,
    /// Items this site cannot read: the share id where it is a valid one (so that
    /// a share UCloud still lists is never taken for one it forgot), and why.
    pub refused: Vec<(Option<String>, String)>,
    pub next: Option<String>,
}

pub fn parse_page(v: &Value, provider: &str) -> Result<Page, String> {
    let items = v
        .get("items")
        .and_then(Value::as_array)
        .ok_or("the page has no items list")?;
    let next = match v.get("next") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => Some(s.clone()),
        Some(_) => return Err("next is not a page token".into()),
    };
    let mut page = Page {
        shares: Vec::new(),
        refused: Vec::new(),
        next,
    };
    for item in items {
        match parse_share(item, provider) {
            Ok(Some(share)) => page.shares.push(share),
            Ok(None) => {}
            Err(why) => {
                let id = item["id"]
                    .as_str()
                    .filter(|id| !id.is_empty() && id.len() <= 19)
                    .filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
                    .map(str::to_string);
                page.refused.push((id, why));
            }
        }
    }
    Ok(page)
}

/// A share, `None` for another provider's, or why it cannot be one.
pub fn parse_share(v: &Value, provider: &str) -> Result<Option<Share>, String> {
    let text = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{what} is missing or not a string"))
    };
    let id = text(&v["id"], "id")?;
    if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("share id {id:?} is not a decimal id"));
    }
    let spec = &v["specification"];
    if spec["product"]["provider"].as_str() != Some(provider) {
        return Ok(None);
    }
    let name = |field: &Value, what: &str| {
        UcloudName::new(&text(field, what)?).map_err(|e| format!("share {id}: {what}: {e}"))
    };
    let sharer = name(&v["owner"]["createdBy"], "owner.createdBy")?;
    let recipient = name(&spec["sharedWith"], "specification.sharedWith")?;
    let source = text(&spec["sourceFilePath"], "specification.sourceFilePath")?;
    let permissions = spec["permissions"]
        .as_array()
        .ok_or_else(|| format!("share {id}: specification.permissions is not a list"))?;
    let mut write = false;
    for p in permissions {
        match p.as_str() {
            Some("READ") => {}
            Some("EDIT") => write = true,
            other => return Err(format!("share {id}: unknown permission {other:?}")),
        }
    }
    let approved = match v["status"]["state"].as_str() {
        Some("APPROVED") => true,
        Some("PENDING" | "REJECTED") => false,
        other => return Err(format!("share {id}: unknown state {other:?}")),
    };
    let available_at = match &v["status"]["shareAvailableAt"] {
        Value::Null => None,
        other => Some(text(other, "status.shareAvailableAt")?),
    };
    Ok(Some(Share {
        id,
        sharer,
        recipient,
        source,
        write,
        approved,
        available_at,
    }))
}

/// The provider id of a share's drive; UCloud's core refuses a second
/// registration under it, so a share is registered once.
pub fn drive_provider_id(share: &str) -> String {
    format!("s-{share}")
}

/// `DrivesControlRegister` for the drive the recipient sees, made by UCloud
/// itself (`_ucloud`, as UCloud's own module registers share drives): UCloud gives
/// the recipient access to it when the share is accepted, and deletes it when the
/// share ends.
pub fn register_drive(provider: &str, category: &str, share: &str, title: &str) -> Message {
    Message {
        method: Method::Post,
        path: REGISTER_DRIVE.into(),
        body: json!({"items": [{
            "spec": {
                "title": title,
                "product": {"id": "share", "category": category, "provider": provider},
            },
            "providerGeneratedId": drive_provider_id(share),
            "createdBy": "_ucloud",
            "project": null,
            "projectAllRead": false,
            "projectAllWrite": false,
        }]}),
        reply: Some(drive_tag(share)),
    }
}

/// UCloud's answer to a registration: `BulkResponse[FindByStringId]`.
pub fn parse_drive_reply(v: &Value) -> Result<DriveId, String> {
    let id = v["responses"][0]["id"]
        .as_str()
        .ok_or("the answer names no drive id")?;
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("drive id {id:?} is not decimal"));
    }
    DriveId::new(id).map_err(|e| e.to_string())
}

/// `SharesControlAddUpdate`: where the share is (`/<driveId>`), or, with no
/// place, why this site cannot make it work (shown to both users).
pub fn update(share: &str, available_at: Option<&DriveId>, status: Option<&str>) -> Message {
    Message {
        method: Method::Post,
        path: UPDATE.into(),
        body: json!({"items": [{
            "id": share,
            "update": {
                "shareAvailableAt": available_at.map(|d| format!("/{d}")),
                "timestamp": ucloud_wire::now_ms(),
                "status": status,
            },
        }]}),
        reply: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(id: &str, provider: &str) -> Value {
        json!({
            "id": id, "createdAt": 1, "owner": {"createdBy": "alice#1", "project": null},
            "specification": {"sharedWith": "bob#2", "sourceFilePath": "/17/Data",
                "permissions": ["READ", "EDIT"],
                "product": {"id": "share", "category": "home", "provider": provider}},
            "status": {"shareAvailableAt": "/90", "state": "APPROVED"}, "updates": []
        })
    }

    #[test]
    fn a_page_keeps_this_providers_shares_and_says_why_it_drops_others() {
        let mut bad = share("8", "p");
        bad["status"]["state"] = json!("MAYBE");
        let mut climbing = share("../9", "p");
        climbing["id"] = json!("../9");
        let page = json!({"items": [share("7", "p"), share("5", "other"), bad, climbing],
                          "next": "abc"});
        let page = parse_page(&page, "p").unwrap();
        assert_eq!(page.shares.len(), 1);
        let s = &page.shares[0];
        assert_eq!(
            (s.id.as_str(), s.sharer.as_str(), s.recipient.as_str()),
            ("7", "alice#1", "bob#2")
        );
        assert!(s.write && s.approved);
        assert_eq!(s.available_at.as_deref(), Some("/90"));
        assert_eq!(page.refused.len(), 2, "{:?}", page.refused);
        assert_eq!(page.next.as_deref(), Some("abc"));
    }

    #[test]
    fn hostile_pages_are_refused_whole_or_per_item() {
        assert!(parse_page(&json!({}), "p").is_err());
        assert!(parse_page(&json!({"items": [], "next": 5}), "p").is_err());
        for (path, value) in [
            ("/owner/createdBy", json!(null)),
            ("/specification/sharedWith", json!("")),
            ("/specification/permissions", json!(["ADMIN"])),
            ("/specification/permissions", json!("READ")),
            ("/status/shareAvailableAt", json!(7)),
        ] {
            let mut s = share("7", "p");
            *s.pointer_mut(path).unwrap() = value;
            let page = parse_page(&json!({ "items": [s] }), "p").unwrap();
            assert!(page.shares.is_empty(), "{path}");
            assert_eq!(page.refused.len(), 1, "{path}");
        }
    }

    #[test]
    fn drive_replies_must_name_a_decimal_drive() {
        let ok = parse_drive_reply(&json!({"responses": [{"id": "123"}]})).unwrap();
        assert_eq!(ok.as_str(), "123");
        for bad in [
            json!({}),
            json!({"responses": [{"id": "../x"}]}),
            json!({"responses": [{"id": ""}]}),
        ] {
            assert!(parse_drive_reply(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_have_the_go_shapes() {
        let m = register_drive("p", "home", "7", "Data");
        assert_eq!(m.body["items"][0]["providerGeneratedId"], "s-7");
        assert_eq!(m.reply.as_deref(), Some("share-drive-7"));
        let u = update("7", Some(&DriveId::new("90").unwrap()), None);
        assert_eq!(u.body["items"][0]["update"]["shareAvailableAt"], "/90");
        let b = browse(Some("a b&c"), 2);
        assert_eq!(b.path, format!("{BROWSE}?itemsPerPage=250&next=a%20b%26c"));
        assert_eq!(b.reply.as_deref(), Some("shares-page-2"));
    }
}
