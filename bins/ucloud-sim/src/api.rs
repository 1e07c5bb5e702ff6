//! UCloud's side of the provider API: the endpoints a provider calls, answered from
//! the state directory. No network here: [`Sim::handle`] maps one request to one
//! answer, so the rules can be tested directly.

use crate::store::Store;
use crate::tokens::Keys;
use crate::SimError;
use serde_json::{json, Value};
use std::sync::Mutex;

/// The first drive id handed out, and the first job id of `jobs/control/register`:
/// large enough not to be mistaken for a uid or a small counter elsewhere.
const FIRST_DRIVE: u64 = 100;
const FIRST_JOB: u64 = 50_000;

pub struct Sim {
    pub provider: String,
    refresh_token: String,
    keys: Keys,
    /// Every state change goes through this lock: one request at a time touches the
    /// state files (the `call` command only ever writes `jobs/` and `tokens/`).
    store: Mutex<Store>,
}

/// One answer: status, JSON body, and a note for the log when the call was refused.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub refused: Option<String>,
}

fn ok(body: Value) -> Answer {
    Answer {
        status: 200,
        body,
        refused: None,
    }
}

fn fail(status: u16, code: &str, why: impl Into<String>) -> Answer {
    let why = why.into();
    Answer {
        status,
        body: json!({"why": why, "errorCode": code}),
        refused: Some(why),
    }
}

fn internal(e: SimError) -> Answer {
    fail(500, "INTERNAL_ERROR", e.to_string())
}

/// `{"items":[...]}` of a bulk request.
fn items(body: &[u8]) -> Result<Vec<Value>, Answer> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("body is not JSON: {e}")))?;
    match v.get("items") {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items.clone()),
        _ => Err(fail(
            400,
            "BAD_REQUEST",
            "expected {\"items\":[...]} with at least one item",
        )),
    }
}

impl Sim {
    pub fn new(store: Store, keys: Keys) -> Result<Sim, SimError> {
        let (provider, refresh_token) = store.provider()?;
        Ok(Sim {
            provider,
            refresh_token,
            keys,
            store: Mutex::new(store),
        })
    }

    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query_id: Option<String>,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let path = path.trim_end_matches('/');
        match (method, path) {
            ("POST", "/auth/providers/refresh") => return self.refresh(body),
            ("POST", "/sim/jobs") => return self.sim_job(body),
            _ => {}
        }
        if path == "/api" || path.starts_with("/api/") {
            let token = authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            let Some(token) = token else {
                return fail(401, "UNAUTHORIZED", "missing Authorization: Bearer token");
            };
            if let Err(why) = self.keys.verify_provider(token, &self.provider) {
                return fail(401, "UNAUTHORIZED", why);
            }
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            let answer = match (method, path) {
                ("POST", "/api/files/collections/control/register") => {
                    register_drives(&store, body)
                }
                ("POST", "/api/jobs/control/update") => update_jobs(&store, body),
                ("GET", "/api/jobs/control/retrieve") => retrieve_job(&store, query_id),
                ("POST", "/api/jobs/control/register") => register_jobs(&store, body),
                ("POST", "/api/providers/integration/control/approveConnection") => {
                    connection(&store, body, true)
                }
                ("POST", "/api/providers/integration/control/clearConnection") => {
                    connection(&store, body, false)
                }
                _ => Err(fail(
                    404,
                    "NOT_FOUND",
                    format!("no endpoint {method} {path}"),
                )),
            };
            return answer.unwrap_or_else(|a| a);
        }
        fail(404, "NOT_FOUND", format!("no endpoint {method} {path}"))
    }

    fn refresh(&self, body: &[u8]) -> Answer {
        let items = match items(body) {
            Ok(items) => items,
            Err(a) => return a,
        };
        let mut responses = Vec::new();
        for item in items {
            if item["refreshToken"].as_str() != Some(self.refresh_token.as_str()) {
                return fail(
                    401,
                    "INVALID_REFRESH_TOKEN",
                    "the refresh token is not valid",
                );
            }
            match self.keys.provider_token(&self.provider) {
                Ok(token) => responses.push(json!({"accessToken": token})),
                Err(e) => return internal(e),
            }
        }
        ok(json!({"responses": responses}))
    }

    fn sim_job(&self, body: &[u8]) -> Answer {
        let job: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return fail(400, "BAD_REQUEST", "expected one Job JSON object"),
        };
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        match store.put_job(&job) {
            Ok(id) => ok(json!({"id": id})),
            Err(SimError::Usage(why)) => fail(400, "BAD_REQUEST", why),
            Err(e) => internal(e),
        }
    }
}

fn register_drives(store: &Store, body: &[u8]) -> Result<Answer, Answer> {
    let items = items(body)?;
    let mut state = store
        .read("drives.json")
        .map_err(internal)?
        .unwrap_or_else(|| json!({"next": FIRST_DRIVE, "drives": {}}));
    let mut responses = Vec::new();
    for item in &items {
        if !item.is_object() {
            return Err(fail(400, "BAD_REQUEST", "each item must be an object"));
        }
        let generated = item.get("providerGeneratedId").and_then(Value::as_str);
        let known = generated.and_then(|g| {
            state["drives"].as_object().and_then(|drives| {
                drives
                    .iter()
                    .find(|(_, d)| d["providerGeneratedId"].as_str() == Some(g))
                    .map(|(id, _)| id.clone())
            })
        });
        let id = match known {
            Some(id) => id,
            None => {
                let n = state["next"].as_u64().unwrap_or(FIRST_DRIVE);
                state["next"] = json!(n + 1);
                let id = n.to_string();
                let mut drive = item.clone();
                drive["id"] = json!(id);
                drive["createdAt"] = json!(ucloud_wire::now_ms());
                state["drives"][&id] = drive;
                id
            }
        };
        responses.push(json!({"id": id}));
    }
    store.write("drives.json", &state).map_err(internal)?;
    Ok(ok(json!({"responses": responses})))
}

fn update_jobs(store: &Store, body: &[u8]) -> Result<Answer, Answer> {
    let items = items(body)?;
    for item in &items {
        let valid =
            item["id"].as_str().is_some_and(|id| !id.is_empty()) && item["update"].is_object();
        if !valid {
            return Err(fail(
                400,
                "BAD_REQUEST",
                "each item needs an \"id\" string and an \"update\" object",
            ));
        }
    }
    let mut responses = Vec::new();
    for item in &items {
        let id = item["id"].as_str().expect("checked above");
        let file = Store::updates_file(id);
        let mut updates = store.read(&file).map_err(internal)?.unwrap_or(json!([]));
        let mut update = item["update"].clone();
        if update.get("timestamp").is_none() {
            update["timestamp"] = json!(ucloud_wire::now_ms());
        }
        if let Value::Array(list) = &mut updates {
            list.push(update);
        }
        store.write(&file, &updates).map_err(internal)?;
        responses.push(json!({}));
    }
    Ok(ok(json!({"responses": responses})))
}

/// The job as UCloud returns it: what UCloud sent the provider, plus every update
/// the provider reported, with `status.state` the last state among them.
fn retrieve_job(store: &Store, id: Option<String>) -> Result<Answer, Answer> {
    let id = id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| fail(400, "BAD_REQUEST", "the id query parameter is missing"))?;
    let Some(mut job) = store.read(&Store::job_file(&id)).map_err(internal)? else {
        return Err(fail(404, "NOT_FOUND", format!("no job {id:?}")));
    };
    let received = store
        .read(&Store::updates_file(&id))
        .map_err(internal)?
        .unwrap_or(json!([]));
    let mut updates = match job.get("updates") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    };
    updates.extend(received.as_array().cloned().unwrap_or_default());
    if !job["status"].is_object() {
        job["status"] = json!({"state": "IN_QUEUE"});
    }
    if job["status"].get("state").is_none() {
        job["status"]["state"] = json!("IN_QUEUE");
    }
    if let Some(state) = updates
        .iter()
        .rev()
        .find_map(|u| u.get("state").filter(|s| s.is_string()))
    {
        job["status"]["state"] = state.clone();
    }
    job["updates"] = Value::Array(updates);
    Ok(ok(job))
}

fn register_jobs(store: &Store, body: &[u8]) -> Result<Answer, Answer> {
    let items = items(body)?;
    let mut state = store
        .read("jobs.json")
        .map_err(internal)?
        .unwrap_or_else(|| json!({"next": FIRST_JOB, "registered": {}}));
    let mut responses = Vec::new();
    for item in &items {
        if !item.is_object() {
            return Err(fail(400, "BAD_REQUEST", "each item must be an object"));
        }
        let generated = item["providerGeneratedId"].as_str().map(String::from);
        if let Some(id) = generated
            .as_deref()
            .and_then(|g| state["registered"][g].as_str())
        {
            responses.push(json!({"id": id}));
            continue;
        }
        let n = state["next"].as_u64().unwrap_or(FIRST_JOB);
        state["next"] = json!(n + 1);
        let id = n.to_string();
        if let Some(g) = &generated {
            state["registered"][g] = json!(id);
        }
        let specification = item
            .get("specification")
            .or_else(|| item.get("spec"))
            .cloned()
            .unwrap_or(json!({}));
        let job = json!({
            "id": id,
            "createdAt": ucloud_wire::now_ms(),
            "owner": {"createdBy": item["createdBy"], "project": item["project"]},
            "permissions": null,
            "providerGeneratedId": generated,
            "specification": specification,
            "status": {"state": "IN_QUEUE"},
            "updates": [],
        });
        store.put_job(&job).map_err(internal)?;
        responses.push(json!({"id": id}));
    }
    store.write("jobs.json", &state).map_err(internal)?;
    Ok(ok(json!({"responses": responses})))
}

/// `{"username":"U"}`, or the bulk form `{"items":[{"username":"U"}]}`.
fn connection(store: &Store, body: &[u8], connect: bool) -> Result<Answer, Answer> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("body is not JSON: {e}")))?;
    let users: Vec<String> = match (&v["username"], &v["items"]) {
        (Value::String(u), _) => vec![u.clone()],
        (_, Value::Array(items)) => items
            .iter()
            .map(|i| i["username"].as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if users.is_empty() || users.iter().any(String::is_empty) {
        return Err(fail(400, "BAD_REQUEST", "expected {\"username\":\"...\"}"));
    }
    let mut state = store
        .read("connections.json")
        .map_err(internal)?
        .unwrap_or_else(|| json!({"connected": []}));
    let mut connected: Vec<String> = state["connected"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for user in users {
        connected.retain(|u| *u != user);
        if connect {
            connected.push(user);
        }
    }
    state["connected"] = json!(connected);
    store.write("connections.json", &state).map_err(internal)?;
    Ok(ok(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sim-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn drive_ids_are_stable_per_provider_generated_id() {
        let dir = scratch("drives");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        let body = br#"{"items":[{"providerGeneratedId":"h-a","specification":{"title":"Home"}},{"providerGeneratedId":"h-b"}]}"#;
        let first = register_drives(&store, body).unwrap_or_else(|a| a);
        assert_eq!(first.status, 200);
        let again = register_drives(&store, body).unwrap_or_else(|a| a);
        assert_eq!(first.body, again.body);
        assert_ne!(first.body["responses"][0], first.body["responses"][1]);
        let anon = register_drives(&store, br#"{"items":[{}]}"#).unwrap_or_else(|a| a);
        assert_eq!(anon.body["responses"][0]["id"], "102");
        for bad in [&b"nope"[..], b"{}", br#"{"items":[]}"#, br#"{"items":[7]}"#] {
            assert_eq!(
                register_drives(&store, bad).unwrap_or_else(|a| a).status,
                400
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn updates_show_in_the_retrieved_job() {
        let dir = scratch("jobs");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        store
            .put_job(&json!({"id": "77", "owner": {"createdBy": "A#1"}, "status": {"state": "IN_QUEUE"}}))
            .unwrap();
        let body = br#"{"items":[{"id":"77","update":{"state":"RUNNING","status":"started"}}]}"#;
        let a = update_jobs(&store, body).unwrap_or_else(|a| a);
        assert_eq!(
            (a.status, a.body.clone()),
            (200, json!({"responses": [{}]}))
        );
        let job = retrieve_job(&store, Some("77".into())).unwrap_or_else(|a| a);
        assert_eq!(job.body["status"]["state"], "RUNNING");
        assert_eq!(job.body["updates"][0]["status"], "started");
        assert_eq!(job.body["owner"]["createdBy"], "A#1");
        assert_eq!(
            retrieve_job(&store, Some("78".into()))
                .unwrap_or_else(|a| a)
                .status,
            404
        );
        assert_eq!(retrieve_job(&store, None).unwrap_or_else(|a| a).status, 400);
        let bad = br#"{"items":[{"id":"77"}]}"#;
        assert_eq!(update_jobs(&store, bad).unwrap_or_else(|a| a).status, 400);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn connections_accept_both_forms() {
        let dir = scratch("conn");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        connection(&store, br#"{"username":"A#1"}"#, true).unwrap_or_else(|a| a);
        connection(&store, br#"{"items":[{"username":"B#2"}]}"#, true).unwrap_or_else(|a| a);
        connection(&store, br#"{"username":"A#1"}"#, false).unwrap_or_else(|a| a);
        assert_eq!(
            store.read("connections.json").unwrap().unwrap()["connected"],
            json!(["B#2"])
        );
        assert_eq!(
            connection(&store, b"{}", true).unwrap_or_else(|a| a).status,
            400
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
