//! Folder shares, as UCloud's core keeps them (core2/pkg/orchestrator/share.go, on
//! the resource rules of resources.go): a user shares a folder of a drive they own
//! with another user; the core creates the share (PENDING) and asks the provider
//! (`SharesProviderCreate`), which makes a drive for it and says where
//! (`shares/control/update`, `shareAvailableAt: "/<driveId>"`). When the recipient
//! approves, the core gives them the share's permissions on that drive's ACL.
//!
//! The users' side of the core is the simulator's own `/sim/shares` endpoints (no
//! token: tests play the users); the provider's is `/api/shares/control/*`. The
//! rules, statuses and messages are the core's (`util.HttpErr` capitalises the
//! first letter of each). The simulator knows no project memberships, so a
//! project's drive is no one's to share, and nothing about allocations
//! (`ResourceValidateAllocation` is not played).
//!
//! `shares.json`: `{"next":N,"shares":{"<id>":SHARE}}`, a SHARE being the core's
//! resource and `internalShare`: `id`, `createdAt`, `owner`, `product`,
//! `providerGeneratedId`, `acl` (the share's own, the recipient READ), `confirmed`,
//! `sharedWith`, `permissions`, `sourceFilePath` (cleaned), `availableAt`, `state`.
//! A drive's ACL is its `acl` in `drives.json`.

use crate::answer::{fail, internal, ok, Answer};
use crate::catalogue;
use crate::gojson::{self, Ty};
use crate::gopath;
use crate::gotypes;
use crate::gotypes::{resource_id, RESOURCE_FLAGS};
use crate::query;
use crate::store::Store;
use serde_json::{json, Value};

const FILE: &str = "shares.json";
const DRIVES: &str = "drives.json";

/// The first share id: the core counts every resource with one counter; the
/// simulator gives shares their own range, so that a share id is never taken for a
/// drive id (the provider's drive for share N is `s-N`, under another id).
const FIRST_SHARE: u64 = 20_000;

/// `shareValidPermissions`.
const VALID_PERMISSIONS: [&str; 2] = ["READ", "EDIT"];

/// What a provider may do with a resource of its own (`resourcesReadEx`).
const PROVIDER_VIEW: [&str; 2] = ["READ", "PROVIDER"];

/// What the core itself may (`rpc.ActorSystem` in `resourcesReadEx`).
const SYSTEM_VIEW: [&str; 4] = ["PROVIDER", "ADMIN", "READ", "EDIT"];

fn bad_request(e: gojson::GoError) -> Answer {
    fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}"))
}

fn forbidden(why: &str) -> Answer {
    fail(403, "FORBIDDEN", why)
}

fn load(store: &Store) -> Result<Value, Answer> {
    Ok(store
        .read(FILE)
        .map_err(internal)?
        .unwrap_or_else(|| json!({"next": FIRST_SHARE, "shares": {}})))
}

fn drives(store: &Store) -> Result<Value, Answer> {
    Ok(store
        .read(DRIVES)
        .map_err(internal)?
        .unwrap_or_else(|| json!({"drives": {}})))
}

/// The share an id names, read as `ResourceParseId` reads it.
fn share_key(state: &Value, id: &str) -> Option<String> {
    resource_id(id).filter(|k| state["shares"][k].is_object())
}

/// The key in `drives.json` of the drive a UCloud path is on
/// (`DriveIdFromUCloudPath`, then `ResourceParseId`), when there is that drive.
pub fn drive_of_path(drives: &Value, path: &str) -> Option<String> {
    resource_id(&gopath::drive_id(path)).filter(|k| drives["drives"][k].is_object())
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(String::from))
        .collect()
}

fn has_project(owner: &Value) -> bool {
    owner["project"].as_str().is_some_and(|p| !p.is_empty())
}

/// What an end user may do with a resource (`resourcesReadEx`): all of it when
/// they created it outside a project, else what the ACL grants them. A project's
/// resource needs a membership, which the simulator never knows of.
pub fn permissions_of(user: Option<&str>, resource: &Value) -> Vec<String> {
    let Some(user) = user else {
        return Vec::new();
    };
    if has_project(&resource["owner"]) {
        return Vec::new();
    }
    if resource["owner"]["createdBy"] == user {
        return ["ADMIN", "READ", "EDIT"].map(String::from).to_vec();
    }
    let mut granted: Vec<String> = Vec::new();
    for entry in resource["acl"].as_array().into_iter().flatten() {
        if entry["entity"]["type"] == "user" && entry["entity"]["username"] == user {
            for p in strings(&entry["permissions"]) {
                if !granted.contains(&p) {
                    granted.push(p);
                }
            }
        }
    }
    granted
}

fn may(user: Option<&str>, resource: &Value, permission: &str) -> bool {
    permissions_of(user, resource)
        .iter()
        .any(|p| p == permission)
}

/// `orc.AclEntityUser`, marshalled (`omitempty` drops the empty project and group).
fn user_entity(username: &str) -> Value {
    json!({"type": "user", "username": username})
}

/// `resourcesReadEx`'s permissions and the ACL as `lResourceApplyFlags` shows
/// them: `others` only with `includeOthers`.
fn permissions_view(myself: &[&str], acl: &Value, include_others: bool) -> Value {
    let others = match acl {
        Value::Array(list) if include_others => Value::Array(list.clone()),
        _ => json!([]),
    };
    json!({"myself": myself, "others": others})
}

/// A drive as the core shows it to the provider: its ACL as `permissions`.
pub fn drive_view(drive: &Value, include_others: bool) -> Value {
    let mut view = drive.clone();
    if let Value::Object(map) = &mut view {
        let acl = map.remove("acl").unwrap_or(Value::Null);
        map.insert(
            "permissions".into(),
            permissions_view(&PROVIDER_VIEW, &acl, include_others),
        );
    }
    view
}

/// An `orc.Share` as `shareTransform` makes it, over the `orc.Resource` fields
/// (`id`, `createdAt`, `owner`, `permissions`, `providerGeneratedId` omitted when
/// empty); `updates` is never filled (`null`).
fn share_view(share: &Value, myself: &[&str], include_others: bool) -> Value {
    let mut view = json!({
        "id": share["id"],
        "createdAt": share["createdAt"],
        "owner": share["owner"],
        "permissions": permissions_view(myself, &share["acl"], include_others),
        "specification": {
            "sharedWith": share["sharedWith"],
            "sourceFilePath": share["sourceFilePath"],
            "permissions": share["permissions"],
            "product": share["product"],
        },
        "status": {
            "shareAvailableAt": share["availableAt"],
            "state": share["state"],
        },
        "updates": null,
    });
    if let Some(generated) = share["providerGeneratedId"]
        .as_str()
        .filter(|g| !g.is_empty())
    {
        view["providerGeneratedId"] = json!(generated);
    }
    view
}

/// `util.VerifyEnum` over every permission: exactly `READ` or `EDIT`.
fn valid_permissions(permissions: &[String]) -> bool {
    permissions
        .iter()
        .all(|p| VALID_PERMISSIONS.contains(&p.as_str()))
}

/// `ResourceUpdateAcl(rpc.ActorSystem, driveType, ...)` on the drive with key `key`:
/// every user added must be one the core knows (403), the drive must exist (404);
/// entries of `deleted` go, then each added one replaces the entry of its entity
/// or is appended.
fn update_drive_acl(
    store: &Store,
    key: Option<&str>,
    deleted: &[Value],
    added: &[Value],
) -> Result<(), Answer> {
    for entry in added {
        let username = entry["entity"]["username"].as_str().unwrap_or_default();
        if !crate::owners::knows_user(store, username)? {
            return Err(forbidden("Bad ACL update supplied"));
        }
    }
    let not_found = || fail(404, "NOT_FOUND", "Not found or permission denied");
    let mut state = drives(store)?;
    let key = key.ok_or_else(not_found)?;
    let drive = state["drives"]
        .get_mut(key)
        .filter(|d| d.is_object())
        .ok_or_else(not_found)?;
    let mut acl: Vec<Value> = drive["acl"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !deleted.contains(&e["entity"]))
        .collect();
    for entry in added {
        match acl.iter_mut().find(|e| e["entity"] == entry["entity"]) {
            Some(existing) => *existing = entry.clone(),
            None => acl.push(entry.clone()),
        }
    }
    drive["acl"] = Value::Array(acl);
    store.write(DRIVES, &state).map_err(internal)
}

/// A share being created: stored (PENDING, not yet confirmed), and what to send
/// the provider.
#[derive(Debug)]
pub struct Pending {
    pub id: String,
    pub sharer: String,
    pub provider: String,
    /// `fnd.BulkRequest[orc.Share]`, the share as `ResourceCreateEx` maps it.
    pub request: Vec<u8>,
}

/// `ShareCreate`'s checks, in its order, then `ResourceCreate`: the share is
/// stored before the provider is asked, as in the core, so that the provider
/// can report where it made the share available while it answers.
pub fn prepare(store: &Store, body: &[u8]) -> Result<Pending, Answer> {
    let request = gojson::decode(body, &gotypes::SIM_SHARE).map_err(bad_request)?;
    let sharer = request["sharedBy"].as_str().unwrap_or_default().to_string();
    let recipient = request["sharedWith"].as_str().unwrap_or_default();
    let path = request["path"].as_str().unwrap_or_default();
    let permissions = strings(&request["permissions"]);
    if permissions.is_empty() {
        return Err(forbidden("Share has no associated permissions"));
    }
    if !valid_permissions(&permissions) {
        return Err(fail(400, "BAD_REQUEST", "Invalid permission specified"));
    }
    if recipient == sharer {
        return Err(forbidden("You cannot share a file with yourself"));
    }
    if !crate::owners::knows_user(store, recipient)? {
        return Err(forbidden("Cannot share this file with that user"));
    }
    // `ResourceRetrieveEx` with ADMIN: the sharer's own drive, outside a project
    // (the core's "belonging to a project" refusal needs a membership).
    let drives = drives(store)?;
    let drive = drive_of_path(&drives, path)
        .map(|k| &drives["drives"][k])
        .filter(|d| may(Some(&sharer), d, "ADMIN"))
        .ok_or_else(|| forbidden("Cannot share this file"))?;
    let cleaned = gopath::clean(path);
    let mut state = load(store)?;
    // The recipient's browse of shares they can read, for this path and them.
    let duplicate = state["shares"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .any(|s| {
            s["sharedWith"] == recipient
                && s["sourceFilePath"] == cleaned.as_str()
                && may(Some(recipient), s, "READ")
        });
    if duplicate {
        return Err(fail(
            409,
            "CONFLICT",
            "This file has already been shared with the user",
        ));
    }
    let product = drive["specification"]["product"].clone();
    let has_product = ["id", "category", "provider"]
        .iter()
        .any(|k| product[k].as_str().is_some_and(|v| !v.is_empty()));
    if !has_product {
        return Err(fail(
            400,
            "BAD_REQUEST",
            "Resource does not specify a product",
        ));
    }
    let n = state["next"].as_u64().unwrap_or(FIRST_SHARE);
    state["next"] = json!(n + 1);
    let id = n.to_string();
    let share = json!({
        "id": id,
        "createdAt": ucloud_wire::now_ms(),
        "owner": {"createdBy": sharer, "project": null},
        "product": product,
        "providerGeneratedId": null,
        "acl": [],
        "confirmed": false,
        "sharedWith": recipient,
        "permissions": permissions,
        "sourceFilePath": cleaned,
        "availableAt": null,
        "state": "PENDING",
    });
    let request = json!({"items": [share_view(&share, &[], true)]})
        .to_string()
        .into_bytes();
    state["shares"][&id] = share;
    store.write(FILE, &state).map_err(internal)?;
    Ok(Pending {
        id,
        sharer,
        provider: product["provider"].as_str().unwrap_or_default().to_string(),
        request,
    })
}

/// The provider's answer as the core reads it (`rpc.ParseResponse`): a 2xx body
/// must decode as `fnd.BulkResponse[fnd.FindByStringId]` (else 502); a refusal
/// keeps its status, and its `why` and `errorCode` when it has a `why`.
pub fn provider_answer(outcome: Result<(u16, Vec<u8>), String>) -> Result<Value, Answer> {
    let (status, body) = outcome.map_err(|why| {
        fail(
            502,
            "PROVIDER_UNREACHABLE",
            format!("The provider did not answer: {why}"),
        )
    })?;
    if (200..300).contains(&status) {
        return gojson::decode(&body, &gotypes::BULK_IDS).map_err(|e| {
            fail(
                502,
                "BAD_GATEWAY",
                format!("The provider's answer is no fnd.BulkResponse[fnd.FindByStringId]: {e}"),
            )
        });
    }
    let refusal = gojson::decode(&body, &gotypes::ERROR_MESSAGE).ok();
    let why = refusal.as_ref().and_then(|r| r["why"].as_str());
    let code = refusal
        .as_ref()
        .and_then(|r| r["errorCode"].as_str())
        .filter(|c| !c.is_empty() && why.is_some())
        .unwrap_or("PROVIDER_REFUSED");
    let why = match why {
        Some(why) => why.to_string(),
        None => format!("The provider answered {status} without a why"),
    };
    Err(fail(status, code, why))
}

/// The end of `ResourceCreateThroughProvider` and `ShareCreate`: the provider
/// refused, so the share goes (a drive the provider made stays, as in the core);
/// or it took it: its provider id (when it gave one), confirmed, and the recipient
/// may read it. Answers `{"id"}`, also when the share went in the meantime.
pub fn finish(
    store: &Store,
    pending: &Pending,
    outcome: Result<Value, Answer>,
) -> Result<Answer, Answer> {
    let mut state = load(store)?;
    let response = match outcome {
        Ok(response) => response,
        Err(refusal) => {
            if let Some(map) = state["shares"].as_object_mut() {
                map.remove(&pending.id);
            }
            store.write(FILE, &state).map_err(internal)?;
            return Err(refusal);
        }
    };
    if let Some(share) = state["shares"]
        .get_mut(&pending.id)
        .filter(|s| s.is_object())
    {
        if let Some(generated) = response["responses"][0]["id"]
            .as_str()
            .filter(|g| !g.is_empty())
        {
            share["providerGeneratedId"] = json!(generated);
        }
        share["confirmed"] = json!(true);
        let recipient = share["sharedWith"].as_str().unwrap_or_default().to_string();
        let entry = json!({"entity": user_entity(&recipient), "permissions": ["READ"]});
        let acl = share["acl"].as_array_mut();
        match acl {
            Some(list) => {
                list.retain(|e| e["entity"] != entry["entity"]);
                list.push(entry);
            }
            None => share["acl"] = json!([entry]),
        }
        store.write(FILE, &state).map_err(internal)?;
    }
    Ok(ok(json!({"id": pending.id})))
}

/// `ShareApprove`, as the recipient: the share must be readable by them (403
/// otherwise, the core's "Unable to accept share (...)"), available somewhere
/// (400 "try again later"); then they get the share's permissions on that drive
/// (a failure is 403 with the ACL's reason) and the share is APPROVED.
pub fn approve(store: &Store, id: &str) -> Result<Answer, Answer> {
    let mut state = load(store)?;
    let key = share_key(&state, id)
        .filter(|k| {
            let share = &state["shares"][k];
            may(share["sharedWith"].as_str(), share, "READ")
        })
        .ok_or_else(|| forbidden("Unable to accept share (Write permission is required)"))?;
    let share = &state["shares"][&key];
    let Some(available) = share["availableAt"].as_str() else {
        return Err(fail(
            400,
            "BAD_REQUEST",
            "Unable to accept this share, try again later",
        ));
    };
    let recipient = share["sharedWith"].as_str().unwrap_or_default();
    let entry = json!({"entity": user_entity(recipient), "permissions": share["permissions"]});
    let drive = drive_of_path(&drives(store)?, available);
    update_drive_acl(store, drive.as_deref(), &[], &[entry]).map_err(|a| {
        forbidden(&format!(
            "Unable to accept share ({})",
            a.refused.unwrap_or_default()
        ))
    })?;
    state["shares"][&key]["state"] = json!("APPROVED");
    store.write(FILE, &state).map_err(internal)?;
    Ok(ok(json!({})))
}

/// `ShareReject` (the core's `shares.reject` and `shares.delete`), as the share's
/// owner: the drive it is available at is deleted (no provider call), then the
/// share. An unknown share is 403.
pub fn reject(store: &Store, id: &str) -> Result<Answer, Answer> {
    let mut state = load(store)?;
    let key = share_key(&state, id)
        .ok_or_else(|| forbidden("Unable to delete share (Write permission is required)"))?;
    if let Some(available) = state["shares"][&key]["availableAt"].as_str() {
        let mut all = drives(store)?;
        if let Some(drive) = drive_of_path(&all, available) {
            if let Some(map) = all["drives"].as_object_mut() {
                map.remove(&drive);
            }
            store.write(DRIVES, &all).map_err(internal)?;
        }
    }
    if let Some(map) = state["shares"].as_object_mut() {
        map.remove(&key);
    }
    store.write(FILE, &state).map_err(internal)?;
    Ok(ok(json!({})))
}

/// `ShareUpdatePermissions`, as the share's owner: the new permissions replace the
/// share's; when it is active (APPROVED and available) the recipient's entry on
/// the drive's ACL is replaced too. As in the core, the share keeps its new
/// permissions even when that ACL update then fails.
pub fn update_permissions(store: &Store, id: &str, body: &[u8]) -> Result<Answer, Answer> {
    let request = gojson::decode(body, &gotypes::SIM_SHARE_PERMISSIONS).map_err(bad_request)?;
    let permissions = strings(&request["permissions"]);
    if permissions.is_empty() {
        return Err(fail(
            400,
            "BAD_REQUEST",
            "You must assign some permissions to the share",
        ));
    }
    if !valid_permissions(&permissions) {
        return Err(fail(400, "BAD_REQUEST", "Invalid permission specified"));
    }
    let mut state = load(store)?;
    let key = share_key(&state, id)
        .filter(|k| {
            let share = &state["shares"][k];
            may(share["owner"]["createdBy"].as_str(), share, "ADMIN")
        })
        .ok_or_else(|| forbidden("You cannot update this share"))?;
    let share = &mut state["shares"][&key];
    share["permissions"] = json!(permissions);
    let active = share["state"] == "APPROVED" && share["availableAt"].is_string();
    let available = share["availableAt"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let recipient = share["sharedWith"].as_str().unwrap_or_default().to_string();
    store.write(FILE, &state).map_err(internal)?;
    if !active {
        return Ok(ok(json!({})));
    }
    let drive_id = gopath::drive_id(&available);
    if drive_id.is_empty() {
        return Err(fail(500, "INTERNAL_ERROR", "Share is no longer valid"));
    }
    let entity = user_entity(&recipient);
    let entry = json!({"entity": entity, "permissions": permissions});
    let key = resource_id(&drive_id);
    update_drive_acl(store, key.as_deref(), &[entity], &[entry])?;
    Ok(ok(json!({})))
}

/// `GET /sim/shares`: every share, by id, as the core itself sees it (the ACL
/// included).
pub fn list(store: &Store) -> Result<Answer, Answer> {
    let state = load(store)?;
    let items: Vec<Value> = sorted(&state, |_| true)
        .into_iter()
        .map(|s| share_view(s, &SYSTEM_VIEW, true))
        .collect();
    Ok(ok(json!({"items": items})))
}

/// The shares `keep` selects, by id, oldest first.
fn sorted(state: &Value, keep: impl Fn(&Value) -> bool) -> Vec<&Value> {
    let mut all: Vec<&Value> = state["shares"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|s| keep(s))
        .collect();
    all.sort_by_key(|s| s["id"].as_str().and_then(|i| i.parse::<u64>().ok()));
    all
}

/// `orc.SharesControlRetrieveRequest` (shares.go) as `ParametersToStruct` reads
/// it: `id`, the `orc.ShareFlags` (`orc.ResourceFlags`, `filterIngoing`).
static CONTROL_RETRIEVE: Ty = Ty::Struct(&{
    let mut all: [(&str, &Ty); 20] = [("", &Ty::Str); 20];
    all[0] = ("id", &Ty::Str);
    all[1] = ("filterIngoing", &Ty::Bool);
    let mut i = 0;
    while i < RESOURCE_FLAGS.len() {
        all[i + 2] = RESOURCE_FLAGS[i];
        i += 1;
    }
    all
});

/// `orc.SharesControlBrowseRequest` (shares.go): `itemsPerPage`, `next`, the flags.
static CONTROL_BROWSE: Ty = Ty::Struct(&{
    let mut all: [(&str, &Ty); 21] = [("", &Ty::Str); 21];
    all[0] = ("itemsPerPage", &Ty::Int);
    all[1] = ("next", &Ty::Opt(&Ty::Str));
    all[2] = ("filterIngoing", &Ty::Bool);
    let mut i = 0;
    while i < RESOURCE_FLAGS.len() {
        all[i + 3] = RESOURCE_FLAGS[i];
        i += 1;
    }
    all
});

/// `lResourceApplyFlags` for a share (which always has a product, and no labels).
fn applies(share: &Value, flags: &Value) -> bool {
    let product = &share["product"];
    let only = |flag: &str, field: &str| flags[flag].as_str().is_none_or(|v| product[field] == v);
    let hide = |flag: &str, field: &str| flags[flag].as_str().is_some_and(|v| product[field] == v);
    if !only("filterProvider", "provider")
        || !only("filterProductId", "id")
        || !only("filterProductCategory", "category")
        || hide("hideProvider", "provider")
        || hide("hideProductCategory", "category")
        || hide("hideProductId", "id")
    {
        return false;
    }
    if flags["filterCreatedBy"]
        .as_str()
        .is_some_and(|by| share["owner"]["createdBy"] != by)
    {
        return false;
    }
    // A share has no labels: any label filter (even one with an empty key) fails.
    if flags["filterLabels"]
        .as_object()
        .is_some_and(|m| !m.is_empty())
    {
        return false;
    }
    let created = share["createdAt"].as_u64().unwrap_or(0);
    if flags["filterCreatedAfter"]
        .as_u64()
        .is_some_and(|after| created < after)
        || flags["filterCreatedBefore"]
            .as_u64()
            .is_some_and(|before| created > before)
    {
        return false;
    }
    if let Some(ids) = flags["filterIds"].as_str() {
        let id = share["id"].as_str().unwrap_or_default();
        if !ids
            .split(',')
            .any(|i| resource_id(i).as_deref() == Some(id))
        {
            return false;
        }
    }
    if let Some(ids) = flags["filterProviderIds"].as_str() {
        let Some(generated) = share["providerGeneratedId"].as_str() else {
            return false;
        };
        if !ids.split(',').any(|i| i == generated) {
            return false;
        }
    }
    true
}

fn is_providers(share: &Value, provider: &str) -> bool {
    share["product"]["provider"] == provider
}

/// `shares/control/retrieve`: a share of the provider's (else 403, the core's
/// `ResourceRetrieve` refusal for what it cannot read), unless the flags filter
/// it out (404).
pub fn control_retrieve(
    store: &Store,
    provider: &str,
    query_string: Option<&str>,
) -> Result<Answer, Answer> {
    let request = query::decode(query_string, &CONTROL_RETRIEVE).map_err(bad_request)?;
    let state = load(store)?;
    let id = request["id"].as_str().unwrap_or_default();
    let share = share_key(&state, id)
        .map(|k| &state["shares"][k])
        .filter(|s| is_providers(s, provider))
        .ok_or_else(|| forbidden("Write permission is required"))?;
    if !applies(share, &request) {
        return Err(fail(404, "NOT_FOUND", "Not found"));
    }
    let others = request["includeOthers"] == json!(true);
    Ok(ok(share_view(share, &PROVIDER_VIEW, others)))
}

/// `shares/control/browse` (`ResourceBrowse` for a provider): the provider's
/// shares, newest first; `next` is the id of the last share of a page, and the
/// next page holds the older ones (an unparsable cursor: none). `next` is null
/// on the last page. With `filterProviderIds` (at most 1000), the shares with
/// those provider ids, in that order, one page of 1000.
pub fn control_browse(
    store: &Store,
    provider: &str,
    query_string: Option<&str>,
) -> Result<Answer, Answer> {
    let request = query::decode(query_string, &CONTROL_BROWSE).map_err(bad_request)?;
    let state = load(store)?;
    let mine = sorted(&state, |s| is_providers(s, provider));
    let others = request["includeOthers"] == json!(true);
    if let Some(ids) = request["filterProviderIds"].as_str() {
        let ids: Vec<&str> = ids.split(',').collect();
        let mut items = Vec::new();
        if ids.len() <= 1000 {
            for id in ids {
                for share in &mine {
                    if share["providerGeneratedId"] == id && applies(share, &request) {
                        items.push(share_view(share, &PROVIDER_VIEW, others));
                    }
                }
            }
        }
        return Ok(ok(
            json!({"items": items, "next": null, "itemsPerPage": 1000}),
        ));
    }
    let per_page = catalogue::items_per_page(request["itemsPerPage"].as_i64().unwrap_or(0));
    let before = match request["next"].as_str() {
        Some(next) => query::parse_int(next).unwrap_or(0),
        None => i64::MAX,
    };
    let mut items = Vec::new();
    let mut last = None;
    let mut next = Value::Null;
    for share in mine.iter().rev() {
        let id = share["id"]
            .as_str()
            .and_then(|i| i.parse::<i64>().ok())
            .unwrap_or(0);
        if id >= before || !applies(share, &request) {
            continue;
        }
        if items.len() >= per_page {
            next = json!(last);
            break;
        }
        last = share["id"].as_str();
        items.push(share_view(share, &PROVIDER_VIEW, others));
    }
    Ok(ok(
        json!({"items": items, "next": next, "itemsPerPage": per_page}),
    ))
}

/// `shares/control/update` (`SharesControlAddUpdate`): every id a share of the
/// provider's (else 404 and nothing changes); then item by item, a
/// `shareAvailableAt` must name a drive that exists (400) and is the provider's
/// (403). Each update sets where the share is available, an absent
/// `shareAvailableAt` clearing it; its state is ignored. A refused item stops the
/// call and the items before it stay applied, as in the core. Answers `{}`.
pub fn control_update(store: &Store, provider: &str, body: &[u8]) -> Result<Answer, Answer> {
    let request = gojson::decode(body, &gotypes::SHARES_UPDATE).map_err(bad_request)?;
    let items = request["items"].as_array().cloned().unwrap_or_default();
    let mut state = load(store)?;
    let mut keys = Vec::new();
    for item in &items {
        let id = item["id"].as_str().unwrap_or_default();
        let key = share_key(&state, id)
            .filter(|k| is_providers(&state["shares"][k], provider))
            .ok_or_else(|| {
                fail(
                    404,
                    "NOT_FOUND",
                    format!("Not found or permission denied ({id})"),
                )
            })?;
        keys.push(key);
    }
    let drives = drives(store)?;
    let mut refusal = None;
    for (item, key) in items.iter().zip(keys) {
        let available = &item["update"]["shareAvailableAt"];
        if let Some(path) = available.as_str() {
            // `DriveIdFromUCloudPath` always finds a first component, so the
            // core's "(bad path)" cannot happen; a path naming no drive is a bad
            // drive.
            let Some(drive) = drive_of_path(&drives, path) else {
                refusal = Some(fail(
                    400,
                    "BAD_REQUEST",
                    "Invalid share available at path (bad drive)",
                ));
                break;
            };
            if drives["drives"][&drive]["specification"]["product"]["provider"] != provider {
                refusal = Some(forbidden(
                    "Invalid share available at path (bad drive - forbidden)",
                ));
                break;
            }
        }
        state["shares"][&key]["availableAt"] = available.clone();
    }
    store.write(FILE, &state).map_err(internal)?;
    match refusal {
        Some(a) => Err(a),
        None => Ok(ok(json!({}))),
    }
}

#[cfg(test)]
mod tests;
