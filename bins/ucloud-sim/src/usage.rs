//! Usage reports, applied by the core's rule (core2/pkg/accounting/accounting.go
//! `ReportUsage`, accounting_internal.go `internalReportUsage`):
//!
//! - a report names an owner (`WalletOwner.Reference()`: the project id when given,
//!   else the username), a category of the provider's own, and a number;
//! - `isDeltaCharge: true` adds the number; `false` makes it the new total: of the
//!   owner's usage under `description.scope` when a scope is given (scopes are the
//!   owner's, across categories, as in the core), else of the owner's whole usage
//!   in the category. Either way the difference is what the owner's wallet in the
//!   category is charged, so re-sending a total charges nothing twice;
//! - a free-to-use category is accepted and charges nothing;
//! - the answer per item is `true` unless the wallet is locked (the quota its
//!   allocations give, see [`crate::projects`], used up), which is no error. A
//!   wallet no allocation ever gave to never locks (the core would refuse to charge
//!   it; tests of usage alone need no allocations).
//!
//! Refused with 403, as by the core: another provider's category, a category with
//! no product in the catalogue, an owner UCloud does not know (a user is known once
//! a job of theirs was created through the simulator or their connection approved;
//! a project once a job of it was created), a negative total. Items are applied in
//! order; a refused item stops the call, the ones before it stay applied.
//!
//! `usage.json`: `{"wallets":{"<category>\n<owner>":N},"scopes":{"<owner>\n<scope>":N},
//! "updated":{"<category>\n<owner>":ms}}` (when each wallet last changed); the owners
//! UCloud knows are files of `owners/` (see [`Store::owner_file`]).

use crate::answer::{fail, internal, ok, Answer};
use crate::catalogue;
use crate::gojson;
use crate::gotypes;
use crate::projects::{self, Change};
use crate::store::Store;
use serde_json::{json, Map, Value};

const USAGE: &str = "usage.json";

fn load(store: &Store, file: &str) -> Result<Value, Answer> {
    Ok(store
        .read(file)
        .map_err(internal)?
        .unwrap_or_else(|| json!({})))
}

/// `WalletOwner.Reference()`.
fn reference(owner: &Value) -> String {
    match owner["projectId"].as_str() {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => owner["username"].as_str().unwrap_or_default().to_string(),
    }
}

fn number(map: &Value, key: &str) -> i64 {
    map[key].as_i64().unwrap_or(0)
}

/// `accounting.reportUsage`: `POST /api/accounting/v2/reportUsage`.
/// Every wallet charged is named in `changes`, also when a later item is refused.
pub fn report(
    store: &Store,
    provider: &str,
    body: &[u8],
    changes: &mut Vec<Change>,
) -> Result<Answer, Answer> {
    let request = gojson::decode(body, &gotypes::REPORT_USAGE)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let items = request["items"].as_array().cloned().unwrap_or_default();
    let mut state = load(store, USAGE)?;
    let mut responses = Vec::new();
    let mut refusal = None;
    for item in &items {
        match apply(store, provider, &mut state, item, changes) {
            Ok(unlocked) => responses.push(json!(unlocked)),
            Err(a) => {
                refusal = Some(a);
                break;
            }
        }
    }
    store.write(USAGE, &state).map_err(internal)?;
    if let Some(a) = refusal {
        return Err(a);
    }
    // `fnd.BulkResponse` omits an empty `responses`.
    if responses.is_empty() {
        return Ok(ok(json!({})));
    }
    Ok(ok(json!({"responses": responses})))
}

fn apply(
    store: &Store,
    provider: &str,
    state: &mut Value,
    item: &Value,
    changes: &mut Vec<Change>,
) -> Result<bool, Answer> {
    let category_name = item["categoryIdV2"]["name"].as_str().unwrap_or_default();
    if item["categoryIdV2"]["provider"].as_str() != Some(provider) {
        return Err(fail(
            403,
            "FORBIDDEN",
            "You cannot report usage for this product",
        ));
    }
    let Some(category) = catalogue::category(store, provider, category_name)? else {
        return Err(fail(403, "FORBIDDEN", "This category does not exist"));
    };
    if !crate::owners::known(store, &item["owner"])? {
        return Err(fail(403, "FORBIDDEN", "This user/project does not exist"));
    }
    let usage = number(item, "usage");
    let delta_charge = item["isDeltaCharge"] == json!(true);
    if !delta_charge && usage < 0 {
        return Err(fail(403, "FORBIDDEN", "Absolute usage cannot be negative"));
    }
    if category["freeToUse"] == json!(true) {
        return Ok(true);
    }
    let owner = reference(&item["owner"]);
    let wallet_key = format!("{category_name}\n{owner}");
    let wallet = state["wallets"][&wallet_key].as_i64().unwrap_or(0);
    let scope_key = item["description"]["scope"]
        .as_str()
        .map(|s| format!("{owner}\n{s}"));
    let current = match &scope_key {
        Some(k) => state["scopes"][k].as_i64().unwrap_or(0),
        None => wallet,
    };
    let delta = if delta_charge { usage } else { usage - current };
    if let Some(k) = &scope_key {
        ensure_object(state, "scopes")[k] = json!(current.saturating_add(delta));
    }
    let total = wallet.saturating_add(delta);
    ensure_object(state, "wallets")[&wallet_key] = json!(total);
    let quota = projects::quota(store, category_name, &owner)?;
    if delta != 0 {
        projects::mark_updated(state, category_name, &owner);
        let change = Change::Wallet {
            category: category_name.to_string(),
            owner: owner.clone(),
        };
        if !changes.contains(&change) {
            changes.push(change);
        }
    }
    Ok(!projects::is_locked(quota, total))
}

fn ensure_object<'a>(state: &'a mut Value, key: &str) -> &'a mut Value {
    if !state[key].is_object() {
        state[key] = Value::Object(Map::new());
    }
    &mut state[key]
}

/// What `GET /sim/usage` and `ucloud-sim usage` show: each owner's usage per
/// category, and per scope.
pub fn view(store: &Store) -> Result<Value, Answer> {
    let state = load(store, USAGE)?;
    let split = |key: &str| {
        let (a, b) = key.split_once('\n').unwrap_or((key, ""));
        (a.to_string(), b.to_string())
    };
    let entries = |name: &str| -> Vec<(String, String, Value)> {
        let mut list: Vec<_> = state[name]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let (a, b) = split(k);
                        (a, b, v.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        list
    };
    let wallets: Vec<Value> = entries("wallets")
        .into_iter()
        .map(|(category, owner, usage)| json!({"owner": owner, "category": category, "usage": usage}))
        .collect();
    let scopes: Vec<Value> = entries("scopes")
        .into_iter()
        .map(|(owner, scope, usage)| json!({"owner": owner, "scope": scope, "usage": usage}))
        .collect();
    Ok(json!({"wallets": wallets, "scopes": scopes}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sim-usage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    // A project's wallet, charged through reports (projects.rs is the other half).
    fn run(a: Result<Answer, Answer>) -> (u16, Value) {
        let a = a.unwrap_or_else(|a| a);
        (a.status, a.body)
    }

    fn new_project(store: &Store, members: Value) -> String {
        let body = json!({"title": "Climate", "members": members}).to_string();
        let (status, v) = run(projects::create(store, body.as_bytes(), &mut Vec::new()));
        assert_eq!(status, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    fn pi_and_user() -> Value {
        json!([{"username": "A#1", "role": "PI"}, {"username": "B#2", "role": "USER"}])
    }

    fn alloc(store: &Store, owner: Value, category: &str, quota: Value) -> (u16, Value) {
        let body = json!({"owner": owner, "category": {"name": category, "provider": "hpc"}, "quota": quota});
        run(projects::allocate(
            store,
            "hpc",
            body.to_string().as_bytes(),
            &mut Vec::new(),
        ))
    }

    fn charge(store: &Store, owner: Value, n: i64) -> (u16, Value, Vec<projects::Change>) {
        let body = json!({"items": [{"isDeltaCharge": true, "owner": owner,
            "categoryIdV2": {"name": "cpu", "provider": "hpc"}, "usage": n}]});
        let mut changes = Vec::new();
        let (status, v) = run(report(
            store,
            "hpc",
            body.to_string().as_bytes(),
            &mut changes,
        ));
        (status, v, changes)
    }

    #[test]
    fn a_wallet_locks_when_usage_reaches_its_quota_and_ends_with_its_project() {
        let (dir, store) = setup("lock");
        let id = new_project(&store, pi_and_user());
        let owner = json!({"type": "project", "projectId": id});
        alloc(&store, owner.clone(), "cpu", json!(10));
        let before = projects::wallet(&store, "hpc", "cpu", &id)
            .unwrap()
            .unwrap();
        let (status, v, changes) = charge(&store, owner.clone(), 9);
        assert_eq!((status, v), (200, json!({"responses": [true]})));
        assert_eq!(
            changes,
            [projects::Change::Wallet {
                category: "cpu".into(),
                owner: id.clone()
            }]
        );
        let w = projects::wallet(&store, "hpc", "cpu", &id)
            .unwrap()
            .unwrap();
        assert_eq!((w.usage, w.locked), (9, false));
        assert!(w.updated_ms > before.updated_ms);
        // Reaching the quota locks: the core answers false, no error.
        let (_, v, _) = charge(&store, owner.clone(), 1);
        assert_eq!(v, json!({"responses": [false]}));
        assert!(
            projects::wallet(&store, "hpc", "cpu", &id)
                .unwrap()
                .unwrap()
                .locked
        );
        // A new allocation unlocks.
        alloc(&store, owner.clone(), "cpu", json!(5));
        assert!(
            !projects::wallet(&store, "hpc", "cpu", &id)
                .unwrap()
                .unwrap()
                .locked
        );
        // A report that charges nothing changes no wallet.
        assert!(charge(&store, owner.clone(), 0).2.is_empty());

        // The project leaves the site: its allocations end, its wallet locks at quota 0.
        let mut changes = Vec::new();
        assert_eq!(run(projects::end(&store, &id, &mut changes)).0, 200);
        assert_eq!(changes.len(), 1);
        let w = projects::wallet(&store, "hpc", "cpu", &id)
            .unwrap()
            .unwrap();
        assert_eq!(
            (w.quota, w.locked, w.active, w.allocated),
            (0, true, false, true)
        );
        assert!(!projects::active_here(&store, &id).unwrap());
        assert!(
            projects::project_json(&store, &id).unwrap().is_some(),
            "the project stays"
        );
        // Ending again changes nothing; an unknown project is 404.
        let mut changes = Vec::new();
        assert_eq!(run(projects::end(&store, &id, &mut changes)).0, 200);
        assert!(changes.is_empty());
        assert_eq!(run(projects::end(&store, "nope", &mut changes)).0, 404);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn setup(name: &str) -> (PathBuf, Store) {
        let dir = scratch(name);
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        let product = |name: &str, cat: &str, free: bool| {
            json!({"name": name, "productType": "COMPUTE", "category": {"name": cat, "provider": "hpc",
                   "accountingUnit": {"name": "Core"}, "accountingFrequency": "PERIODIC_MINUTE", "freeToUse": free}})
        };
        let body = json!({"items": [product("c1", "cpu", false), product("f1", "free", true)]});
        catalogue::create(&store, "hpc", body.to_string().as_bytes()).unwrap();
        crate::owners::know(&store, Some("A#1"), Some("p-1")).unwrap();
        (dir, store)
    }

    fn item(user: &str, cat: &str, usage: i64, delta: bool, scope: Option<&str>) -> Value {
        json!({"isDeltaCharge": delta, "owner": {"type": "user", "username": user},
               "categoryIdV2": {"name": cat, "provider": "hpc"}, "usage": usage,
               "description": {"scope": scope}})
    }

    fn send(store: &Store, items: &[Value]) -> Answer {
        let body = json!({"items": items}).to_string();
        report(store, "hpc", body.as_bytes(), &mut Vec::new()).unwrap_or_else(|a| a)
    }

    fn wallet(store: &Store, owner: &str, cat: &str) -> Value {
        view(store).unwrap()["wallets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["owner"] == owner && w["category"] == cat)
            .map(|w| w["usage"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn totals_replace_and_deltas_add() {
        let (dir, store) = setup("rule");
        let a = send(&store, &[item("A#1", "cpu", 10, false, Some("job-1"))]);
        assert_eq!((a.status, a.body), (200, json!({"responses": [true]})));
        // The same total again charges nothing more; a larger one the difference.
        send(&store, &[item("A#1", "cpu", 10, false, Some("job-1"))]);
        assert_eq!(wallet(&store, "A#1", "cpu"), 10);
        send(&store, &[item("A#1", "cpu", 25, false, Some("job-1"))]);
        send(&store, &[item("A#1", "cpu", 5, false, Some("job-2"))]);
        assert_eq!(wallet(&store, "A#1", "cpu"), 30);
        send(&store, &[item("A#1", "cpu", 3, true, None)]);
        assert_eq!(wallet(&store, "A#1", "cpu"), 33);
        // Without a scope, a total is the whole category's.
        send(&store, &[item("A#1", "cpu", 100, false, None)]);
        assert_eq!(wallet(&store, "A#1", "cpu"), 100);
        // A project owner is charged under its id.
        let project = json!({"owner": {"type": "project", "projectId": "p-1", "username": "A#1"},
                             "categoryIdV2": {"name": "cpu", "provider": "hpc"}, "usage": 7});
        assert_eq!(send(&store, &[project]).status, 200);
        assert_eq!(wallet(&store, "p-1", "cpu"), 7);
        // Free to use: accepted, nothing charged.
        assert_eq!(
            send(&store, &[item("A#1", "free", 9, false, None)]).body,
            json!({"responses": [true]})
        );
        assert_eq!(wallet(&store, "A#1", "free"), Value::Null);
        let scopes = &view(&store).unwrap()["scopes"];
        assert_eq!(
            scopes[0],
            json!({"owner": "A#1", "scope": "job-1", "usage": 25})
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refusals_charge_nothing_and_locks_answer_false() {
        let (dir, store) = setup("refuse");
        send(&store, &[item("A#1", "cpu", 10, false, Some("j"))]);
        let before = view(&store).unwrap();
        let mut other = item("A#1", "cpu", 1, true, None);
        other["categoryIdV2"]["provider"] = json!("other");
        let mut bad_type = item("A#1", "cpu", 1, true, None);
        bad_type["owner"]["type"] = json!("USER");
        for (items, want) in [
            (vec![item("A#1", "nope", 1, false, None)], 403),
            (vec![item("B#2", "cpu", 1, false, None)], 403),
            (vec![other], 403),
            (vec![bad_type], 403),
            (vec![item("A#1", "cpu", -1, false, Some("j"))], 403),
            (vec![json!({"usage": 1.5})], 400),
            (vec![json!({"usage": "1"})], 400),
            (vec![json!({"owner": []})], 400),
        ] {
            assert_eq!(send(&store, &items).status, want, "{items:?}");
            assert_eq!(view(&store).unwrap(), before, "{items:?}");
        }
        for body in [&b""[..], b"{", b"[]", br#"{"items":{}}"#] {
            assert_eq!(
                report(&store, "hpc", body, &mut Vec::new())
                    .unwrap_or_else(|a| a)
                    .status,
                400
            );
        }
        // A negative delta is allowed; an empty bulk answers {}.
        assert_eq!(
            send(&store, &[item("A#1", "cpu", -4, true, None)]).status,
            200
        );
        assert_eq!(send(&store, &[]).body, json!({}));
        // Items before a refused one stay applied, as in the core.
        let a = send(
            &store,
            &[
                item("A#1", "cpu", 2, true, None),
                item("B#2", "cpu", 1, true, None),
            ],
        );
        assert_eq!(a.status, 403);
        assert_eq!(wallet(&store, "A#1", "cpu"), 8);
        // A locked wallet answers false, and the usage is still recorded.
        let quota = br#"{"owner":"A#1","category":"cpu","quota":10}"#;
        projects::set_quota(&store, quota, &mut Vec::new()).unwrap();
        assert_eq!(
            send(&store, &[item("A#1", "cpu", 12, false, Some("j"))]).body,
            json!({"responses": [false]})
        );
        assert_eq!(wallet(&store, "A#1", "cpu"), 10);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
