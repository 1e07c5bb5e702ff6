//! Projects, allocations and wallets, as UCloud's core keeps them for one
//! provider (core2/pkg/foundation/projects.go, core2/pkg/accounting): a project
//! has members with roles (exactly one PI); an allocation gives a user or a
//! project a quota in one of the provider's product categories; a wallet is an
//! owner's view of one category: its quota (the sum of its active allocations),
//! its usage (charged by usage.rs), locked when the usage has reached the
//! quota (the core sends `locked` for `MaxUsable == 0`), and when it last changed.
//!
//! Every change names what it touched as a [`Change`], which the server hands to
//! the open notification streams (the notification streams (notify.rs)); the stream looks the
//! current state up when it sends, as the core does.
//!
//! ```text
//! projects.json     {"projects":{"<id>":{"id","title","createdAt","modifiedAt",
//!                    "members":[{"username","role"}]}}}
//! allocations.json  {"next":N,"allocations":[{"id","owner":{"type":"user","username"}
//!                    |{"type":"project","projectId"},"category","quota","active",
//!                    "createdAt"}]}
//! usage.json        "updated":{"<category>\n<owner>":ms} beside the usage (usage.rs)
//! ```
//!
//! Where the simulator is more lenient than the core, it says so in ucloud-sim(1).

use crate::answer::{fail, internal, ok, Answer};
use crate::catalogue;
use crate::store::Store;
use serde_json::{json, Map, Value};
use ucloud_wire::names::UcloudName;

const PROJECTS: &str = "projects.json";
const ALLOCATIONS: &str = "allocations.json";
const USAGE: &str = "usage.json";
const FIRST_ALLOCATION: u64 = 1;
const ROLES: [&str; 3] = ["PI", "ADMIN", "USER"];

/// What a request changed, for the notification streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The wallet of `owner` (a username or a project id) in `category`.
    Wallet { category: String, owner: String },
    /// A project's members (or the project itself).
    Project(String),
}

fn bad(why: impl Into<String>) -> Answer {
    fail(400, "BAD_REQUEST", why)
}

fn load(store: &Store, file: &str, fresh: Value) -> Result<Value, Answer> {
    Ok(store.read(file).map_err(internal)?.unwrap_or(fresh))
}

fn load_projects(store: &Store) -> Result<Value, Answer> {
    load(store, PROJECTS, json!({"projects": {}}))
}

fn load_allocations(store: &Store) -> Result<Value, Answer> {
    load(
        store,
        ALLOCATIONS,
        json!({"next": FIRST_ALLOCATION, "allocations": []}),
    )
}

fn allocations_of(state: &Value) -> Vec<Value> {
    state["allocations"].as_array().cloned().unwrap_or_default()
}

/// A body that must be a JSON object (Go would refuse anything else for a struct).
fn object(body: &[u8]) -> Result<Value, Answer> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    Ok(v)
}

/// A UCloud username as the core accepts one: 1 to 120 bytes, no control character.
fn username(v: &Value, what: &str) -> Result<String, Answer> {
    let name = v
        .as_str()
        .ok_or_else(|| bad(format!("{what} must be a string")))?;
    UcloudName::new(name).map_err(|e| bad(format!("{what}: {e}")))?;
    Ok(name.to_string())
}

fn role(v: &Value) -> Result<String, Answer> {
    match v.as_str() {
        Some(r) if ROLES.contains(&r) => Ok(r.to_string()),
        _ => Err(bad(format!("role must be one of PI, ADMIN, USER, not {v}"))),
    }
}

/// A project id as the core makes them (`util.UUid`): a version 4 UUID.
fn new_project_id() -> Result<String, Answer> {
    let mut b: [u8; 16] = crate::follow::random().map_err(internal)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    ))
}

/// `util.LooksLikeUuid`: how the core tells a project id from a username in a
/// wallet owner reference.
pub fn looks_like_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn now() -> i64 {
    ucloud_wire::now_ms() as i64
}

/// The project, as stored, or 404.
fn project<'a>(state: &'a Value, id: &str) -> Result<&'a Value, Answer> {
    state["projects"]
        .get(id)
        .filter(|p| p.is_object())
        .ok_or_else(|| fail(404, "NOT_FOUND", format!("unknown project {id:?}")))
}

/// `POST /sim/projects` `{"title","members":[{"username","role"}]}` -> `{"id"}`.
pub fn create(store: &Store, body: &[u8], changes: &mut Vec<Change>) -> Result<Answer, Answer> {
    let v = object(body)?;
    let title = v["title"]
        .as_str()
        .ok_or_else(|| bad("title must be a string"))?;
    // `ProjectCreate` refuses a title starting with %; an empty or multi-line one
    // the core's frontend never sends.
    if title.trim().is_empty() || title.starts_with('%') || title.chars().any(char::is_control) {
        return Err(bad("Invalid project title"));
    }
    let list = v["members"]
        .as_array()
        .ok_or_else(|| bad("members must be a list of {\"username\",\"role\"}"))?;
    let mut members: Vec<Value> = Vec::new();
    for m in list {
        let name = username(&m["username"], "a member's username")?;
        let r = role(&m["role"])?;
        if members.iter().any(|x| x["username"] == name.as_str()) {
            return Err(bad(format!("{name} is given twice")));
        }
        members.push(json!({"username": name, "role": r}));
    }
    if members.iter().filter(|m| m["role"] == "PI").count() != 1 {
        return Err(bad("a project has exactly one PI"));
    }
    let mut state = load_projects(store)?;
    let id = new_project_id()?;
    let at = now();
    state["projects"][&id] = json!({
        "id": id, "title": title, "createdAt": at, "modifiedAt": at, "members": members,
    });
    store.write(PROJECTS, &state).map_err(internal)?;
    for m in &members {
        crate::owners::know(store, m["username"].as_str(), None)?;
    }
    crate::owners::know(store, None, Some(&id))?;
    changes.push(Change::Project(id.clone()));
    Ok(ok(json!({"id": id})))
}

/// `POST /sim/projects/{id}/members` `{"username","role"}`: adds a member, or
/// changes a member's role. A new PI takes over: the old one becomes ADMIN, as in
/// `ProjectChangeRole`. Making the PI anything else would leave no PI: 400. The
/// same role again is 200 and changes nothing.
pub fn set_member(
    store: &Store,
    id: &str,
    body: &[u8],
    changes: &mut Vec<Change>,
) -> Result<Answer, Answer> {
    let v = object(body)?;
    let name = username(&v["username"], "username")?;
    let r = role(&v["role"])?;
    let mut state = load_projects(store)?;
    let mut members = project(&state, id)?["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current = members.iter().position(|m| m["username"] == name.as_str());
    match current {
        Some(i) if members[i]["role"] == r.as_str() => return Ok(ok(json!({}))),
        Some(i) if members[i]["role"] == "PI" => {
            return Err(bad(
                "the PI's role changes only by making another member PI",
            ))
        }
        _ => {}
    }
    if r == "PI" {
        for m in members.iter_mut().filter(|m| m["role"] == "PI") {
            m["role"] = json!("ADMIN");
        }
    }
    match current {
        Some(i) => members[i]["role"] = json!(r),
        None => members.push(json!({"username": name, "role": r})),
    }
    let p = &mut state["projects"][id];
    p["members"] = json!(members);
    p["modifiedAt"] = json!(now().max(p["modifiedAt"].as_i64().unwrap_or(0) + 1));
    store.write(PROJECTS, &state).map_err(internal)?;
    crate::owners::know(store, Some(&name), None)?;
    changes.push(Change::Project(id.to_string()));
    Ok(ok(json!({})))
}

/// `DELETE /sim/projects/{id}/members/{username}`. The PI stays: 400 (the core
/// answers 403 when the PI leaves, 500 "Project has no PI after member removal"
/// when an admin removes them).
pub fn remove_member(
    store: &Store,
    id: &str,
    name: &str,
    changes: &mut Vec<Change>,
) -> Result<Answer, Answer> {
    let mut state = load_projects(store)?;
    let members = project(&state, id)?["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(i) = members.iter().position(|m| m["username"] == name) else {
        return Err(fail(
            404,
            "NOT_FOUND",
            format!("{name:?} is not a member of project {id}"),
        ));
    };
    if members[i]["role"] == "PI" {
        return Err(bad(
            "Project has no PI after member removal: the PI cannot be removed",
        ));
    }
    let mut members = members;
    members.remove(i);
    let p = &mut state["projects"][id];
    p["members"] = json!(members);
    p["modifiedAt"] = json!(now().max(p["modifiedAt"].as_i64().unwrap_or(0) + 1));
    store.write(PROJECTS, &state).map_err(internal)?;
    changes.push(Change::Project(id.to_string()));
    Ok(ok(json!({})))
}

/// `DELETE /sim/projects/{id}`: every active allocation of the project ends, its
/// wallets lock (quota 0). The project stays (the core deletes none), and is no
/// longer sent to the provider, having no active allocation here.
pub fn end(store: &Store, id: &str, changes: &mut Vec<Change>) -> Result<Answer, Answer> {
    project(&load_projects(store)?, id)?;
    let mut state = load_allocations(store)?;
    let mut touched = Vec::new();
    if let Some(list) = state["allocations"].as_array_mut() {
        for a in list.iter_mut() {
            if a["owner"]["projectId"] == id && a["active"] == true {
                a["active"] = json!(false);
                let c = a["category"].as_str().unwrap_or_default().to_string();
                if !touched.contains(&c) {
                    touched.push(c);
                }
            }
        }
    }
    if touched.is_empty() {
        return Ok(ok(json!({})));
    }
    store.write(ALLOCATIONS, &state).map_err(internal)?;
    for c in touched {
        touch(store, &c, id)?;
        changes.push(Change::Wallet {
            category: c,
            owner: id.to_string(),
        });
    }
    Ok(ok(json!({})))
}

/// Records that a wallet changed now (its quota, usage or lock).
fn touch(store: &Store, category: &str, owner: &str) -> Result<(), Answer> {
    let mut state = load(store, USAGE, json!({}))?;
    mark_updated(&mut state, category, owner);
    store.write(USAGE, &state).map_err(internal)
}

/// Sets a wallet's `updated` time in a loaded `usage.json`: now, and always later
/// than before, so that a replay from the last time seen finds it.
pub fn mark_updated(usage_state: &mut Value, category: &str, owner: &str) {
    if !usage_state["updated"].is_object() {
        usage_state["updated"] = Value::Object(Map::new());
    }
    let key = format!("{category}\n{owner}");
    let before = usage_state["updated"][&key].as_i64().unwrap_or(0);
    usage_state["updated"][&key] = json!(now().max(before + 1));
}

/// `POST /sim/allocations` `{"owner":{"type":"user","username"}|{"type":"project",
/// "projectId"},"category":{"name","provider"},"quota":N}` -> `{"id"}`.
pub fn allocate(
    store: &Store,
    provider: &str,
    body: &[u8],
    changes: &mut Vec<Change>,
) -> Result<Answer, Answer> {
    let v = object(body)?;
    let owner = owner_of(store, &v["owner"])?;
    let category = category_of(store, provider, &v["category"])?;
    let quota = v["quota"]
        .as_i64()
        .filter(|q| *q >= 0)
        .ok_or_else(|| bad("quota must be an integer >= 0"))?;
    let reference = reference(&owner);
    let id = add_allocation(store, &owner, &category, quota)?;
    touch(store, &category, &reference)?;
    changes.push(Change::Wallet {
        category,
        owner: reference,
    });
    Ok(ok(json!({"id": id})))
}

fn add_allocation(
    store: &Store,
    owner: &Value,
    category: &str,
    quota: i64,
) -> Result<String, Answer> {
    let mut state = load_allocations(store)?;
    let n = state["next"].as_u64().unwrap_or(FIRST_ALLOCATION);
    state["next"] = json!(n + 1);
    let id = n.to_string();
    let entry = json!({"id": id, "owner": owner, "category": category, "quota": quota,
                       "active": true, "createdAt": now()});
    match state["allocations"].as_array_mut() {
        Some(list) => list.push(entry),
        None => state["allocations"] = json!([entry]),
    }
    store.write(ALLOCATIONS, &state).map_err(internal)?;
    Ok(id)
}

/// An allocation's owner: a project created here, or a user UCloud knows.
fn owner_of(store: &Store, owner: &Value) -> Result<Value, Answer> {
    match owner["type"].as_str() {
        Some("user") => {
            let name = username(&owner["username"], "owner.username")?;
            if !crate::owners::knows_user(store, &name)? {
                return Err(fail(404, "NOT_FOUND", format!("unknown user {name:?}")));
            }
            Ok(json!({"type": "user", "username": name}))
        }
        Some("project") => {
            let id = owner["projectId"]
                .as_str()
                .ok_or_else(|| bad("owner.projectId must be a string"))?;
            project(&load_projects(store)?, id)?;
            Ok(json!({"type": "project", "projectId": id}))
        }
        _ => Err(bad(
            "owner must be {\"type\":\"user\",\"username\"} or {\"type\":\"project\",\"projectId\"}",
        )),
    }
}

/// A category of this provider's catalogue, or the core's 404.
fn category_of(store: &Store, provider: &str, category: &Value) -> Result<String, Answer> {
    let (Some(name), Some(p)) = (category["name"].as_str(), category["provider"].as_str()) else {
        return Err(bad("category must be {\"name\",\"provider\"}"));
    };
    if p != provider || catalogue::category(store, provider, name)?.is_none() {
        return Err(fail(404, "NOT_FOUND", "unknown product category"));
    }
    Ok(name.to_string())
}

/// `WalletOwner.Reference()`.
fn reference(owner: &Value) -> String {
    match owner["projectId"].as_str() {
        Some(p) => p.to_string(),
        None => owner["username"].as_str().unwrap_or_default().to_string(),
    }
}

/// `POST /sim/quota` `{"owner":REF,"category":NAME,"quota":N|null}`, kept for the
/// tests written before allocations: the owner's active allocations in the
/// category end and one new allocation of N replaces them, so the wallet's quota
/// is N; `null` removes the owner's allocations in the category altogether (the
/// wallet then has none, locks never and is not sent). REF names a project when it
/// looks like a UUID (`WalletOwnerFromReference`), else a user; neither needs to be
/// known here.
pub fn set_quota(store: &Store, body: &[u8], changes: &mut Vec<Change>) -> Result<Answer, Answer> {
    let v = object(body)?;
    let (Some(owner), Some(category)) = (v["owner"].as_str(), v["category"].as_str()) else {
        return Err(bad(
            "expected {\"owner\":\"...\",\"category\":\"...\",\"quota\":N}",
        ));
    };
    let quota = match &v["quota"] {
        Value::Null => None,
        q => Some(
            q.as_i64()
                .ok_or_else(|| bad("quota must be an integer or null"))?,
        ),
    };
    if owner.is_empty() || category.is_empty() {
        return Err(bad("owner and category must not be empty"));
    }
    let mut state = load_allocations(store)?;
    if let Some(list) = state["allocations"].as_array_mut() {
        let mine = |a: &Value| reference(&a["owner"]) == owner && a["category"] == category;
        match quota {
            None => list.retain(|a| !mine(a)),
            Some(_) => {
                for a in list.iter_mut().filter(|a| mine(a)) {
                    a["active"] = json!(false);
                }
            }
        }
    }
    store.write(ALLOCATIONS, &state).map_err(internal)?;
    if let Some(q) = quota {
        let owner_json = if looks_like_uuid(owner) {
            json!({"type": "project", "projectId": owner})
        } else {
            json!({"type": "user", "username": owner})
        };
        add_allocation(store, &owner_json, category, q)?;
    }
    touch(store, category, owner)?;
    changes.push(Change::Wallet {
        category: category.to_string(),
        owner: owner.to_string(),
    });
    Ok(ok(json!({})))
}

/// One wallet of this provider, as the stream and `GET /sim/wallets` show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Wallet {
    /// `{"type":"user","username"}` or `{"type":"project","projectId"}`.
    pub owner: Value,
    /// The category as the catalogue stores it (`accapi.ProductCategory`).
    pub category: Value,
    pub quota: i64,
    pub usage: i64,
    pub locked: bool,
    pub updated_ms: i64,
    /// Whether any allocation (active or ended) gives to it: the core sends
    /// only such wallets.
    pub allocated: bool,
    /// Whether an allocation of it is active now.
    pub active: bool,
}

impl Wallet {
    pub fn reference(&self) -> String {
        reference(&self.owner)
    }

    pub fn category_name(&self) -> &str {
        self.category["name"].as_str().unwrap_or_default()
    }

    pub fn free(&self) -> bool {
        self.category["freeToUse"] == true
    }

    fn to_json(&self, allocations: Vec<Value>) -> Value {
        json!({
            "owner": self.owner,
            "category": {"name": self.category["name"], "provider": self.category["provider"]},
            "quota": self.quota, "usage": self.usage, "locked": self.locked,
            "updatedAt": self.updated_ms, "allocations": allocations,
        })
    }
}

/// The quota of a wallet: `None` when no allocation ever gave to it (then it
/// never locks: the simulator charges such wallets, which the core would not),
/// else the sum of its active allocations.
pub fn quota(store: &Store, category: &str, owner: &str) -> Result<Option<i64>, Answer> {
    let mut quota = None;
    for a in allocations_of(&load_allocations(store)?) {
        if a["category"] == category && reference(&a["owner"]) == owner {
            let q = quota.unwrap_or(0);
            quota = Some(match a["active"] == true {
                true => q + a["quota"].as_i64().unwrap_or(0),
                false => q,
            });
        }
    }
    Ok(quota)
}

/// Whether usage has used the quota up: `MaxUsable == 0`.
pub fn is_locked(quota: Option<i64>, usage: i64) -> bool {
    quota.is_some_and(|q| usage >= q)
}

/// The wallet of `owner` in `category`, when the category is the provider's and
/// an allocation gave to it.
pub fn wallet(
    store: &Store,
    provider: &str,
    category: &str,
    owner: &str,
) -> Result<Option<Wallet>, Answer> {
    let allocations: Vec<Value> = allocations_of(&load_allocations(store)?)
        .into_iter()
        .filter(|a| a["category"] == category && reference(&a["owner"]) == owner)
        .collect();
    let Some(first) = allocations.first() else {
        return Ok(None);
    };
    let Some(cat) = catalogue::category(store, provider, category)? else {
        return Ok(None);
    };
    let usage_state = load(store, USAGE, json!({}))?;
    let key = format!("{category}\n{owner}");
    let usage = usage_state["wallets"][&key].as_i64().unwrap_or(0);
    let active: Vec<&Value> = allocations.iter().filter(|a| a["active"] == true).collect();
    let quota: i64 = active
        .iter()
        .map(|a| a["quota"].as_i64().unwrap_or(0))
        .sum();
    Ok(Some(Wallet {
        owner: first["owner"].clone(),
        category: catalogue::category_json(&cat),
        quota,
        usage,
        locked: usage >= quota,
        updated_ms: usage_state["updated"][&key].as_i64().unwrap_or(0),
        allocated: true,
        active: !active.is_empty(),
    }))
}

/// Every wallet of the provider that an allocation gave to, by owner and category.
pub fn wallets(store: &Store, provider: &str) -> Result<Vec<Wallet>, Answer> {
    let mut keys: Vec<(String, String)> = allocations_of(&load_allocations(store)?)
        .iter()
        .map(|a| {
            (
                a["category"].as_str().unwrap_or_default().to_string(),
                reference(&a["owner"]),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for (category, owner) in keys {
        if let Some(w) = wallet(store, provider, &category, &owner)? {
            out.push(w);
        }
    }
    Ok(out)
}

/// `GET /sim/wallets`: `{"items":[{"owner","category","quota","usage","locked",
/// "updatedAt","allocations":[...]}]}`.
pub fn view_wallets(store: &Store, provider: &str) -> Result<Answer, Answer> {
    let all = allocations_of(&load_allocations(store)?);
    let items: Vec<Value> = wallets(store, provider)?
        .into_iter()
        .map(|w| {
            let mine = all
                .iter()
                .filter(|a| {
                    a["category"] == w.category_name() && reference(&a["owner"]) == w.reference()
                })
                .map(|a| json!({"id": a["id"], "quota": a["quota"], "active": a["active"]}))
                .collect();
            w.to_json(mine)
        })
        .collect();
    Ok(ok(json!({"items": items})))
}

/// A project as `fndapi.Project` marshals it (`ProjectRetrieveFromDatabase`: no
/// groups here, `myRole` and `path` empty), and its `modifiedAt`.
pub fn project_json(store: &Store, id: &str) -> Result<Option<(Value, i64)>, Answer> {
    let state = load_projects(store)?;
    let Ok(p) = project(&state, id) else {
        return Ok(None);
    };
    let modified = p["modifiedAt"].as_i64().unwrap_or(0);
    let members: Vec<Value> = p["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| json!({"username": m["username"], "role": m["role"]}))
        .collect();
    Ok(Some((
        json!({
            "id": id,
            "createdAt": p["createdAt"],
            "modifiedAt": modified,
            "specification": {"parent": null, "title": p["title"], "canConsumeResources": true},
            "status": {
                "archived": false, "isFavorite": false, "isHidden": false,
                "members": members, "groups": [],
                "settings": {"subProjects": {"allowRenaming": false}},
                "myRole": "", "path": "", "personalProviderProjectFor": null,
            },
        }),
        modified,
    )))
}

/// `GET /sim/projects/{id}`.
pub fn view_project(store: &Store, id: &str) -> Result<Answer, Answer> {
    match project_json(store, id)? {
        Some((p, _)) => Ok(ok(p)),
        None => Err(fail(404, "NOT_FOUND", format!("unknown project {id:?}"))),
    }
}

/// Whether the project has an active allocation at this provider (every
/// allocation here is in one of its categories): only then does the core tell
/// the provider about it.
pub fn active_here(store: &Store, id: &str) -> Result<bool, Answer> {
    Ok(allocations_of(&load_allocations(store)?)
        .iter()
        .any(|a| a["owner"]["projectId"] == id && a["active"] == true))
}

/// The projects modified after `ms` (`ProjectsListUpdatedAfter`: strictly after).
pub fn projects_modified_after(store: &Store, ms: i64) -> Result<Vec<String>, Answer> {
    let state = load_projects(store)?;
    let mut list: Vec<(i64, String)> = state["projects"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(id, p)| {
            let m = p["modifiedAt"].as_i64()?;
            (m > ms).then(|| (m, id.clone()))
        })
        .collect();
    list.sort();
    Ok(list.into_iter().map(|(_, id)| id).collect())
}

/// The projects `user` is a member of.
pub fn projects_of(store: &Store, user: &str) -> Result<Vec<String>, Answer> {
    let state = load_projects(store)?;
    let mut ids: Vec<String> = state["projects"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, p)| {
            p["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["username"] == user))
        })
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    Ok(ids)
}

/// The role of `user` in project `id`: `None` for no member (or no such project).
pub fn role_of(store: &Store, id: &str, user: &str) -> Result<Option<String>, Answer> {
    let state = load_projects(store)?;
    let Ok(p) = project(&state, id) else {
        return Ok(None);
    };
    Ok(p["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["username"] == user)
        .and_then(|m| m["role"].as_str().map(String::from)))
}

/// Whether the project was created here (`POST /sim/projects`): a project known
/// only from a job's owner predates them and is not checked.
pub fn exists(store: &Store, id: &str) -> Result<bool, Answer> {
    Ok(project(&load_projects(store)?, id).is_ok())
}

/// The core's checks of a job owned by a project (core2 launcher `claimsToActor`,
/// orchestrator `ResourceValidateAllocation`): the creator is a member (else the
/// token is refused, 403 "Bad token supplied"), and the project has an active
/// allocation in the product's category (for a free-to-use one, any at this
/// provider), else 402. A project this simulator never created is let through.
pub fn check_job(store: &Store, provider: &str, job: &Value) -> Result<(), Answer> {
    let Some(id) = job["owner"]["project"].as_str().filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    if !exists(store, id)? {
        return Ok(());
    }
    let creator = job["owner"]["createdBy"].as_str().unwrap_or_default();
    if role_of(store, id, creator)?.is_none() {
        let mut a = fail(403, "FORBIDDEN", "Bad token supplied");
        a.refused = Some(format!(
            "{creator:?} is not a member of project {id}: Bad token supplied"
        ));
        return Err(a);
    }
    let product = &job["specification"]["product"];
    let category = product["category"].as_str().unwrap_or_default();
    let free =
        catalogue::category(store, provider, category)?.is_some_and(|c| c["freeToUse"] == true);
    let allocated = allocations_of(&load_allocations(store)?).iter().any(|a| {
        a["owner"]["projectId"] == id && a["active"] == true && (free || a["category"] == category)
    });
    if !allocated {
        let shown = if free { provider } else { category };
        return Err(fail(
            402,
            "PAYMENT_REQUIRED",
            format!("You do not have any valid allocations for '{shown}'"),
        ));
    }
    Ok(())
}

/// `permissions.myself` of a job for `actor`, as the core computes it
/// (`resourcesReadEx`): the creator, and a PI or admin of the owning project, have
/// ADMIN, READ and EDIT; another member only what the job's ACL gives (jobs have
/// none); anyone else nothing, and may not see the job. `None`: no access at all.
pub fn job_permissions(
    store: &Store,
    job: &Value,
    actor: &str,
) -> Result<Option<Vec<&'static str>>, Answer> {
    let all = vec!["ADMIN", "READ", "EDIT"];
    let creator = job["owner"]["createdBy"].as_str().unwrap_or_default();
    match job["owner"]["project"].as_str().filter(|p| !p.is_empty()) {
        None => Ok((creator == actor).then_some(all)),
        Some(id) => match role_of(store, id, actor)?.as_deref() {
            Some("PI" | "ADMIN") => Ok(Some(all)),
            Some(_) if creator == actor => Ok(Some(all)),
            Some(_) => Ok(Some(Vec::new())),
            // A project known only from a job: its creator alone, as before.
            None if !exists(store, id)? && creator == actor => Ok(Some(all)),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests;
