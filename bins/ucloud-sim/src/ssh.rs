//! SSH keys, as UCloud's core keeps them (core2/pkg/orchestrator/ssh.go): a user
//! adds a key (`SshKeyCreate`: trimmed, one of `validPrefixes`, else 400 "Not a
//! valid ssh key") or deletes one (`SshKeyDelete`), and after either the core sends
//! all the user's keys (`SshKeyBrowse`, at most 1000, by id) once, without retry,
//! to every provider where the user has a compute allocation
//! (`sshKeyNotifyProviders`: `FindRelevantProviders` with `ProductTypeCompute`,
//! free-to-use categories left out) as `SshProviderKeyUploaded`
//! (`POST /ucloud/{P}/ssh/keyUploaded`, `{username, allKeys: []SshKey}`, the user in
//! `ucloud-username`). What the provider answers changes nothing in the core: it
//! only logs a warning.
//!
//! The simulator has no allocations. A user has a compute allocation at the
//! simulated provider when the provider approved their connection and its
//! catalogue holds a compute product of a category that is not free to use; a
//! user without one gets no update, as from the core.
//!
//! The users' side is the simulator's own `/sim/ssh/keys` (no token: tests play
//! the users); its answers add what the provider said (`"provider"`), which the
//! core keeps to its log. The provider's side is `POST /api/ssh/control/browse`
//! (`SshControlBrowse`, orchestrators/ssh.go: `SshKeysControlBrowseRequest` →
//! `fnd.PageV2[SshKey]`, `rpc.RolesProvider`). core2 declares that call but serves
//! no handler for it (the real core answers 404); the request names no user, so
//! the simulator answers it the one way the type allows: a page of the keys of
//! every user with a compute allocation at the provider, each naming its `owner`,
//! by id, `next` the last id of a full page (as `SshKeyBrowse` pages).
//!
//! `ssh.json`: `{"next":N,"keys":{"<id>":{"id","owner","createdAt","title","key"}}}`.

use crate::answer::{fail, internal, ok, Answer};
use crate::catalogue;
use crate::gojson::{self, Ty};
use crate::store::Store;
use serde_json::{json, Value};

const FILE: &str = "ssh.json";
const FIRST_KEY: u64 = 30_000;

/// `validPrefixes` (core2/pkg/orchestrator/ssh.go): the same list the module's
/// key parser accepts.
const VALID_PREFIXES: [&str; 7] = ucloud_wire::sshkeys::KEY_TYPES;

/// `POST /sim/ssh/keys`: the acting user and `orc.SshKeySpecification`.
static ADD: Ty = Ty::Struct(&[
    ("username", &Ty::Str),
    ("title", &Ty::Str),
    ("key", &Ty::Str),
]);

/// `orc.SshKeysControlBrowseRequest` (orchestrators/ssh.go).
static CONTROL_BROWSE: Ty = Ty::Struct(&[("itemsPerPage", &Ty::Int), ("next", &Ty::Opt(&Ty::Str))]);

/// A change made, and the update the core sends for it.
#[derive(Debug)]
pub struct Notice {
    pub id: Option<String>,
    pub user: String,
    /// `SshProviderKeyUploadedRequest`, when the user has a compute allocation here.
    pub update: Option<Vec<u8>>,
}

fn load(store: &Store) -> Result<Value, Answer> {
    Ok(store
        .read(FILE)
        .map_err(internal)?
        .unwrap_or_else(|| json!({"next": FIRST_KEY, "keys": {}})))
}

/// Go's `strings.TrimSpace`: Unicode white space at both ends.
fn trim_space(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

/// `SshKeyCreate` for one key, then `sshKeyNotifyProviders`.
pub fn add(store: &Store, provider: &str, body: &[u8]) -> Result<Notice, Answer> {
    let request = gojson::decode(body, &ADD)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let user = request["username"].as_str().unwrap_or_default().to_string();
    // The core's actor is a signed-in user; the simulator plays whoever is named,
    // and from then on UCloud knows them.
    if user.is_empty() {
        return Err(fail(
            400,
            "BAD_REQUEST",
            "a key is added by a user: username is empty",
        ));
    }
    let key = trim_space(request["key"].as_str().unwrap_or_default()).to_string();
    if !VALID_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Err(fail(400, "BAD_REQUEST", "Not a valid ssh key"));
    }
    let mut state = load(store)?;
    let n = state["next"].as_u64().unwrap_or(FIRST_KEY);
    let id = n.to_string();
    state["next"] = json!(n + 1);
    state["keys"][&id] = json!({
        "id": id,
        "owner": user,
        "createdAt": ucloud_wire::now_ms(),
        "title": request["title"],
        "key": key,
    });
    store.write(FILE, &state).map_err(internal)?;
    crate::owners::know(store, Some(&user), None)?;
    Ok(Notice {
        id: Some(id),
        update: update(store, provider, &state, &user)?,
        user,
    })
}

/// `DELETE /sim/ssh/keys/{id}` (`SshKeyDelete` as its owner). The core ignores an
/// id that names no key of the actor; the simulator, whose endpoint names no
/// actor, answers 404 for an id that names no key.
pub fn delete(store: &Store, provider: &str, id: &str) -> Result<Notice, Answer> {
    let mut state = load(store)?;
    let key = crate::gotypes::resource_id(id)
        .filter(|k| state["keys"][k].is_object())
        .ok_or_else(|| fail(404, "NOT_FOUND", "SSH key does not exist"))?;
    let user = state["keys"][&key]["owner"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(keys) = state["keys"].as_object_mut() {
        keys.remove(&key);
    }
    store.write(FILE, &state).map_err(internal)?;
    Ok(Notice {
        id: None,
        update: update(store, provider, &state, &user)?,
        user,
    })
}

/// The keys of `owner` (or all), ordered by id, as `orc.SshKey`.
fn keys_of(state: &Value, owner: Option<&str>) -> Vec<Value> {
    let mut keys: Vec<(u64, Value)> = state["keys"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, k)| owner.is_none_or(|o| k["owner"] == o))
        .map(|(id, k)| {
            (
                id.parse().unwrap_or(0),
                json!({
                    "id": k["id"],
                    "owner": k["owner"],
                    "createdAt": k["createdAt"],
                    "fingerprint": "",
                    "specification": {"title": k["title"], "key": k["key"]},
                }),
            )
        })
        .collect();
    keys.sort_by_key(|(id, _)| *id);
    keys.into_iter().map(|(_, k)| k).collect()
}

/// The simulator's stand-in for `FindRelevantProviders` (compute, no free-to-use).
pub fn has_compute_allocation(store: &Store, provider: &str, user: &str) -> Result<bool, Answer> {
    let connected = store
        .read("connections.json")
        .map_err(internal)?
        .is_some_and(|c| {
            c["connected"]
                .as_array()
                .is_some_and(|l| l.iter().any(|u| u == user))
        });
    if !connected {
        return Ok(false);
    }
    Ok(catalogue::all(store)?.iter().any(|p| {
        p["productType"] == "COMPUTE"
            && p["category"]["provider"] == provider
            && p["category"]["freeToUse"] != json!(true)
    }))
}

fn update(
    store: &Store,
    provider: &str,
    state: &Value,
    user: &str,
) -> Result<Option<Vec<u8>>, Answer> {
    if !has_compute_allocation(store, provider, user)? {
        return Ok(None);
    }
    let mut all = keys_of(state, Some(user));
    all.truncate(1000);
    let body = json!({"username": user, "allKeys": all});
    Ok(Some(body.to_string().into_bytes()))
}

/// The answer to a user's change: the new id, and what the provider said (the
/// core keeps that to its log, a test wants to see it).
pub fn answer(notice: &Notice, outcome: Option<Result<(u16, Vec<u8>), String>>) -> Answer {
    let provider = match outcome {
        None => json!({"sent": false,
                       "why": "the user has no compute allocation at the provider: the core sends nothing"}),
        Some(Err(why)) => json!({"sent": true, "status": null, "why": why}),
        Some(Ok((status, body))) => {
            let body = serde_json::from_slice::<Value>(&body)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
            json!({"sent": true, "status": status, "body": body})
        }
    };
    let mut out = json!({"provider": provider});
    if let Some(id) = &notice.id {
        out["id"] = json!(id);
    }
    ok(out)
}

/// `GET /sim/ssh/keys?username=U`: the user's keys, as `SshKeyBrowse` lists them.
pub fn list(store: &Store, query: Option<&str>) -> Result<Answer, Answer> {
    static LIST: Ty = Ty::Struct(&[("username", &Ty::Str)]);
    let request = crate::query::decode(query, &LIST)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let user = request["username"].as_str().unwrap_or_default();
    let state = load(store)?;
    Ok(ok(json!({"items": keys_of(&state, Some(user))})))
}

/// `POST /api/ssh/control/browse` (see the top of this file).
pub fn control_browse(store: &Store, provider: &str, body: &[u8]) -> Result<Answer, Answer> {
    let request = gojson::decode(body, &CONTROL_BROWSE)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let per_page = catalogue::items_per_page(request["itemsPerPage"].as_i64().unwrap_or(0));
    // `:next::bigint`: a cursor that is no number fails the query.
    let after: i64 = match request["next"].as_str() {
        None => i64::MIN,
        Some(n) => crate::query::parse_int(n).ok_or_else(|| {
            fail(
                500,
                "INTERNAL_ERROR",
                format!("invalid input syntax for type bigint: {n:?}"),
            )
        })?,
    };
    let state = load(store)?;
    let mut items = Vec::new();
    for key in keys_of(&state, None) {
        let id: i64 = key["id"].as_str().and_then(|i| i.parse().ok()).unwrap_or(0);
        let owner = key["owner"].as_str().unwrap_or_default();
        if id <= after || !has_compute_allocation(store, provider, owner)? {
            continue;
        }
        items.push(key);
        if items.len() >= per_page {
            break;
        }
    }
    let next = match items.len() >= per_page {
        true => items.last().map(|k| k["id"].clone()).unwrap_or(Value::Null),
        false => Value::Null,
    };
    Ok(ok(
        json!({"itemsPerPage": per_page, "items": items, "next": next}),
    ))
}

#[cfg(test)]
mod tests;
