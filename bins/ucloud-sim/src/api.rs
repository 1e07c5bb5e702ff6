//! UCloud's side of the provider API: the endpoints a provider calls, answered from
//! the state directory the way UCloud's core answers them. No network here
//! (except asking the provider for its support when a job is created, and telling
//! it of a share):
//! [`Sim::handle`] maps one request to one answer, so the rules can be tested
//! directly. Every body is decoded as the core decodes it ([`crate::gojson`],
//! against the Go types of [`crate::gotypes`]); every refusal changes nothing,
//! except where the core too keeps the items of a bulk call before a refused one.

use crate::answer::{fail, internal, ok, Answer};
use crate::error::SimError;
use crate::gojson;
pub use crate::gotypes::resource_id;
use crate::gotypes::{self, RESOURCE_FLAGS};
use crate::notify::Hub;
use crate::projects::{self, Change};
use crate::query;
use crate::store::Store;
use crate::tokens::Keys;
use crate::{catalogue, shares, ssh, support, usage};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Mutex;

/// The first drive id handed out, and the first job id of `jobs/control/register`:
/// large enough not to be mistaken for a uid or a small counter elsewhere.
const FIRST_DRIVE: u64 = 100;
const FIRST_JOB: u64 = 50_000;

pub struct Sim {
    pub provider: String,
    refresh_token: String,
    keys: Keys,
    /// Where the provider listens, to ask it for its support as the core does
    /// when a job is created (`serve --provider-url`).
    provider_url: Option<(String, Option<PathBuf>)>,
    /// Every state change goes through this lock: one request at a time touches the
    /// state files (the `call` command only ever writes files of `jobs/`, `owners/`
    /// and `tokens/`, one per job, owner or token).
    store: Mutex<Store>,
    /// The open notification streams, told of every change (`notify.rs`).
    pub hub: Hub,
}

/// The body decoded into its Go type, or the core's 400.
fn decode(body: &[u8], ty: &gojson::Ty) -> Result<Value, Answer> {
    gojson::decode(body, ty)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))
}

fn items(request: &Value) -> Vec<Value> {
    request["items"].as_array().cloned().unwrap_or_default()
}

/// A job id as UCloud makes them: a positive decimal number, written plainly.
fn is_canonical_id(id: &str) -> bool {
    resource_id(id).as_deref() == Some(id)
}

impl Sim {
    pub fn new(
        store: Store,
        keys: Keys,
        provider_url: Option<(String, Option<PathBuf>)>,
    ) -> Result<Sim, SimError> {
        let (provider, refresh_token) = store.provider()?;
        Ok(Sim {
            provider,
            refresh_token,
            keys,
            provider_url,
            store: Mutex::new(store),
            hub: Hub::default(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn store(&self) -> &Mutex<Store> {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let mut changes = Vec::new();
        let answer = self.route(method, path, query, authorization, body, &mut changes);
        // Told after the state is written and the lock given back: a stream looks
        // the state up itself when it sends.
        self.hub.broadcast(&changes);
        answer
    }

    fn route(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        authorization: Option<&str>,
        body: &[u8],
        changes: &mut Vec<Change>,
    ) -> Answer {
        let path = path.trim_end_matches('/');
        let answer = match (method, path) {
            ("POST", "/auth/providers/refresh") => Some(self.refresh(body)),
            ("POST", "/sim/jobs") => Some(self.sim_job(body)),
            ("GET", p) if p.starts_with("/sim/jobs/") => {
                Some(job_for_actor(&self.lock(), &p["/sim/jobs/".len()..], query))
            }
            ("GET", "/sim/usage") => Some(usage::view(&self.lock()).map(ok)),
            ("POST", "/sim/quota") => Some(projects::set_quota(&self.lock(), body, changes)),
            ("POST", "/sim/projects") => Some(projects::create(&self.lock(), body, changes)),
            (_, p) if p.starts_with("/sim/projects/") => {
                Some(self.sim_project_call(method, p, body, changes))
            }
            ("POST", "/sim/allocations") => Some(projects::allocate(
                &self.lock(),
                &self.provider,
                body,
                changes,
            )),
            ("GET", "/sim/wallets") => Some(projects::view_wallets(&self.lock(), &self.provider)),
            ("POST", "/sim/shares") => Some(self.sim_share(body)),
            ("GET", "/sim/shares") => Some(shares::list(&self.lock())),
            (_, p) if p.starts_with("/sim/shares/") => self.sim_share_call(method, p, body),
            ("GET", "/sim/ssh/keys") => Some(ssh::list(&self.lock(), query)),
            ("POST", "/sim/ssh/keys") => Some(self.sim_ssh(|s, p| ssh::add(s, p, body))),
            ("DELETE", p) if p.starts_with("/sim/ssh/keys/") => {
                let id = &p["/sim/ssh/keys/".len()..];
                Some(self.sim_ssh(|s, p| ssh::delete(s, p, id)))
            }
            // Public in the core (`rpc.RolesPublic`): no token needed.
            ("GET", "/api/products/v2/browse") => Some(catalogue::browse(&self.lock(), query)),
            _ => None,
        };
        if let Some(answer) = answer {
            return answer.unwrap_or_else(|a| a);
        }
        if path != "/api" && !path.starts_with("/api/") {
            return fail(404, "NOT_FOUND", format!("no endpoint {method} {path}"));
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            return fail(401, "UNAUTHORIZED", "missing Authorization: Bearer token");
        };
        if let Err(why) = self.keys.verify_provider(token, &self.provider) {
            return fail(401, "UNAUTHORIZED", why);
        }
        let store = self.lock();
        let provider = self.provider.as_str();
        let answer = match (method, path) {
            ("POST", "/api/products/v2") => catalogue::create(&store, provider, body),
            ("POST", "/api/files/collections/control/register") => {
                register_drives(&store, provider, body)
            }
            ("GET", "/api/files/collections/control/browse") => {
                browse_drives(&store, provider, query)
            }
            ("POST", "/api/jobs/control/update") => update_jobs(&store, body),
            ("GET", "/api/jobs/control/retrieve") => retrieve_job(&store, query),
            ("POST", "/api/jobs/control/register") => register_jobs(&store, provider, body),
            ("POST", "/api/providers/integration/control/approveConnection") => {
                connection(&store, body, true)
            }
            ("POST", "/api/providers/integration/control/clearConnection") => {
                connection(&store, body, false)
            }
            ("POST", "/api/accounting/v2/reportUsage") => {
                usage::report(&store, provider, body, changes)
            }
            ("GET", "/api/shares/control/retrieve") => {
                shares::control_retrieve(&store, provider, query)
            }
            ("GET", "/api/shares/control/browse") => {
                shares::control_browse(&store, provider, query)
            }
            ("POST", "/api/shares/control/update") => {
                shares::control_update(&store, provider, body)
            }
            ("POST", "/api/ssh/control/browse") => ssh::control_browse(&store, provider, body),
            _ => Err(fail(
                404,
                "NOT_FOUND",
                format!("no endpoint {method} {path}"),
            )),
        };
        answer.unwrap_or_else(|a| a)
    }

    /// `/sim/projects/{id}` (GET, DELETE), `/sim/projects/{id}/members` (POST),
    /// `/sim/projects/{id}/members/{username}` (DELETE; the name percent-encoded,
    /// `#` as `%23`).
    fn sim_project_call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<Answer, Answer> {
        let rest = &path["/sim/projects/".len()..];
        let parts: Vec<&str> = rest.split('/').collect();
        let store = self.lock();
        match (method, parts.as_slice()) {
            ("GET", [id]) => projects::view_project(&store, id),
            ("DELETE", [id]) => projects::end(&store, id, changes),
            ("POST", [id, "members"]) => projects::set_member(&store, id, body, changes),
            ("DELETE", [id, "members", name]) => {
                let name = ucloud_http::server::percent_decode(name).ok_or_else(|| {
                    fail(
                        400,
                        "BAD_REQUEST",
                        "the username is not percent-encoded UTF-8",
                    )
                })?;
                projects::remove_member(&store, id, &name, changes)
            }
            _ => Err(fail(
                404,
                "NOT_FOUND",
                format!("no endpoint {method} {path}"),
            )),
        }
    }

    fn refresh(&self, body: &[u8]) -> Result<Answer, Answer> {
        let request = decode(body, &gotypes::PROVIDERS_REFRESH)?;
        let mut responses = Vec::new();
        for item in items(&request) {
            if item["refreshToken"].as_str() != Some(self.refresh_token.as_str()) {
                return Err(fail(
                    401,
                    "INVALID_REFRESH_TOKEN",
                    "the refresh token is not valid",
                ));
            }
            let token = self.keys.provider_token(&self.provider).map_err(internal)?;
            responses.push(json!({"accessToken": token}));
        }
        if responses.is_empty() {
            return Ok(ok(json!({})));
        }
        Ok(ok(json!({"responses": responses})))
    }

    /// `POST /sim/jobs`: one `orc.Job` UCloud has created (its `jobs.create`
    /// accepted it): a decimal id, a product UCloud would run.
    fn sim_job(&self, body: &[u8]) -> Result<Answer, Answer> {
        let job = decode(body, &gotypes::JOB)?;
        let id = job["id"].as_str().unwrap_or_default();
        if !is_canonical_id(id) {
            return Err(fail(
                400,
                "BAD_REQUEST",
                format!(
                    "a job's id is a positive decimal number, as UCloud makes them, not {id:?}"
                ),
            ));
        }
        let supported = match &self.provider_url {
            Some((url, ca)) => {
                let token = {
                    let store = self.lock();
                    crate::tokens::ucloud_token(&self.keys, &store, &Default::default())
                        .map_err(internal)?
                };
                Some(
                    support::fetch(url, ca.as_deref(), &token, &self.provider).map_err(|why| {
                        fail(
                            400,
                            "BAD_REQUEST",
                            format!(
                                "bad machine type requested: no support from the provider: {why}"
                            ),
                        )
                    })?,
                )
            }
            None => None,
        };
        let store = self.lock();
        support::check_job(&store, &job, supported.as_deref())?;
        projects::check_job(&store, &self.provider, &job)?;
        let original: Value = serde_json::from_slice(body)
            .map_err(|e| fail(400, "BAD_REQUEST", format!("body is not JSON: {e}")))?;
        store.put_job(&original).map_err(internal)?;
        crate::owners::know(
            &store,
            job["owner"]["createdBy"].as_str(),
            job["owner"]["project"].as_str(),
        )?;
        Ok(ok(json!({"id": id})))
    }

    /// `POST /sim/shares`: a user shares a folder (`ShareCreate`). The share is
    /// stored, then the provider asked without holding the state, since the
    /// provider registers the share's drive and reports it while it answers.
    /// Without `--provider-url` there is no provider to ask: 503, as the core
    /// answers for a provider it cannot reach.
    fn sim_share(&self, body: &[u8]) -> Result<Answer, Answer> {
        let pending = shares::prepare(&self.lock(), body)?;
        let outcome = match &self.provider_url {
            None => Err(fail(
                503,
                "SERVICE_UNAVAILABLE",
                "Service provider is unavailable",
            )),
            Some((url, ca)) => {
                let token =
                    crate::tokens::ucloud_token(&self.keys, &self.lock(), &Default::default());
                match token {
                    Ok(token) => shares::provider_answer(crate::provider::invoke(
                        url,
                        ca.as_deref(),
                        &token,
                        Some(&pending.sharer),
                        "POST",
                        &format!("/ucloud/{}/shares", pending.provider),
                        &pending.request,
                    )),
                    Err(e) => Err(internal(e)),
                }
            }
        };
        shares::finish(&self.lock(), &pending, outcome)
    }

    /// A user's SSH key change (`ssh.rs`), then the core's one update to the
    /// provider, sent without holding the state. Without `--provider-url` there is
    /// no provider to tell: the answer says so.
    fn sim_ssh(
        &self,
        change: impl FnOnce(&Store, &str) -> Result<ssh::Notice, Answer>,
    ) -> Result<Answer, Answer> {
        let notice = change(&self.lock(), &self.provider)?;
        let outcome = match (&notice.update, &self.provider_url) {
            (None, _) => None,
            (Some(_), None) => Some(Err("no --provider-url: no provider to tell".into())),
            (Some(update), Some((url, ca))) => {
                let token =
                    crate::tokens::ucloud_token(&self.keys, &self.lock(), &Default::default())
                        .map_err(internal)?;
                Some(crate::provider::invoke(
                    url,
                    ca.as_deref(),
                    &token,
                    Some(&notice.user),
                    "POST",
                    &format!("/ucloud/{}/ssh/keyUploaded", self.provider),
                    update,
                ))
            }
        };
        Ok(ssh::answer(&notice, outcome))
    }

    /// `/sim/shares/{id}/approve` (POST), `/sim/shares/{id}/permissions` (POST),
    /// `/sim/shares/{id}` (DELETE).
    fn sim_share_call(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Option<Result<Answer, Answer>> {
        let rest = path.strip_prefix("/sim/shares/")?;
        let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
        let store = self.lock();
        match (method, action) {
            ("POST", "approve") => Some(shares::approve(&store, id)),
            ("POST", "permissions") => Some(shares::update_permissions(&store, id, body)),
            ("DELETE", "") => Some(shares::reject(&store, id)),
            _ => None,
        }
    }
}

/// `GET /sim/jobs/{id}?actor=U`: the job as the core hands it to the provider in
/// a call made for `U` (terminate, follow, ...): `permissions.myself` what `U` may
/// do (`resourcesReadEx`), `others` the job's ACL (none). A job `U` may not edit
/// is the core's 404 "permission denied or job not found" (`JobsTerminateBulk`).
fn job_for_actor(store: &Store, id: &str, query_string: Option<&str>) -> Result<Answer, Answer> {
    let actor = query_string
        .into_iter()
        .flat_map(ucloud_http::server::query_pairs)
        .find(|(k, _)| k == "actor")
        .map(|(_, v)| v)
        .ok_or_else(|| fail(400, "BAD_REQUEST", "?actor=USERNAME is required"))?;
    let not_found = || {
        fail(
            404,
            "NOT_FOUND",
            format!("permission denied or job not found ({id})"),
        )
    };
    let n = resource_id(id).ok_or_else(not_found)?;
    let Some(mut job) = store.read(&Store::job_file(&n)).map_err(internal)? else {
        return Err(not_found());
    };
    let Some(myself) = projects::job_permissions(store, &job, &actor)? else {
        return Err(not_found());
    };
    if !myself.contains(&"EDIT") {
        return Err(not_found());
    }
    job["permissions"] = json!({"myself": myself, "others": []});
    Ok(ok(job))
}

/// The provider ids reserved so far, each with the resource it names: every
/// drive's and registered job's, and those a refused registration left reserved.
fn reserved(store: &Store) -> Result<Map<String, Value>, Answer> {
    let mut all = Map::new();
    let drives = store
        .read("drives.json")
        .map_err(internal)?
        .unwrap_or(json!({}));
    for (id, drive) in drives["drives"].as_object().into_iter().flatten() {
        if let Some(g) = drive["providerGeneratedId"]
            .as_str()
            .filter(|g| !g.is_empty())
        {
            all.insert(g.to_string(), json!(id));
        }
    }
    let jobs = store
        .read("jobs.json")
        .map_err(internal)?
        .unwrap_or(json!({}));
    for source in [&jobs["registered"], &drives["leaked"], &jobs["leaked"]] {
        for (g, id) in source.as_object().into_iter().flatten() {
            all.insert(g.clone(), id.clone());
        }
    }
    Ok(all)
}

/// `ResourceValidateLabels` (core2/pkg/orchestrator/resources.go): keys in lower
/// case, distinct, trimmed, 1 to 256 bytes, one line.
fn validate_labels(labels: &Value) -> Result<Value, Answer> {
    let mut out = Map::new();
    for (key, value) in labels.as_object().into_iter().flatten() {
        let lower = key.to_lowercase();
        if out.contains_key(&lower) {
            return Err(fail(
                400,
                "BAD_REQUEST",
                format!("duplicate key in labels: {key}"),
            ));
        }
        let trimmed = lower.trim();
        if trimmed.is_empty() || trimmed.len() > 256 || trimmed.contains('\n') {
            return Err(fail(
                400,
                "BAD_REQUEST",
                format!("labels[{lower}] must be 1 to 256 bytes on one line"),
            ));
        }
        out.insert(trimmed.to_string(), value.clone());
    }
    Ok(Value::Object(out))
}

/// Every item's `spec.product.provider` must be the caller (403 "forbidden").
fn check_provider(items: &[Value], provider: &str) -> Result<(), Answer> {
    if items
        .iter()
        .any(|i| i["spec"]["product"]["provider"].as_str() != Some(provider))
    {
        return Err(fail(
            403,
            "FORBIDDEN",
            format!("forbidden: spec.product.provider must be {provider:?}"),
        ));
    }
    Ok(())
}

/// `ResourceCreateEx`'s reservation: a provider id already reserved is 409.
/// Returns the new id (taken from the counter even when refused, as the core's is).
fn reserve(
    state: &mut Value,
    taken: &Map<String, Value>,
    generated: Option<&str>,
    first: u64,
) -> Result<String, Answer> {
    let n = state["next"].as_u64().unwrap_or(first);
    state["next"] = json!(n + 1);
    if let Some(g) = generated {
        if taken.contains_key(g) {
            return Err(fail(
                409,
                "CONFLICT",
                format!("already exists: providerGeneratedId {g:?} is registered"),
            ));
        }
    }
    Ok(n.to_string())
}

/// `files/collections/control/register` (core2/pkg/orchestrator/drive.go).
pub(crate) fn register_drives(
    store: &Store,
    provider: &str,
    body: &[u8],
) -> Result<Answer, Answer> {
    let fresh = json!({"next": FIRST_DRIVE, "drives": {}});
    let kind = Registration {
        ty: &gotypes::DRIVES_REGISTER,
        file: "drives.json",
        fresh,
        first: FIRST_DRIVE,
        check: project_group,
    };
    register(store, provider, body, kind, |state, item, id, labels| {
        state["drives"][id] = json!({
            "id": id,
            "createdAt": ucloud_wire::now_ms(),
            "owner": owner(item),
            "permissions": null,
            "providerGeneratedId": item["providerGeneratedId"].as_str().unwrap_or_default(),
            "specification": {
                "title": item["spec"]["title"],
                "product": item["spec"]["product"],
                "labels": labels,
            },
            "updates": [],
            "status": {"preferredDrive": false, "resolvedSupport": null, "resolvedProduct": null},
        });
        if let Some(entry) = all_users_acl(item) {
            state["drives"][id]["acl"] = json!([entry]);
        }
        Ok(())
    })
}

/// `ResourceCreateEx`'s first check: a resource owned by a project with
/// `projectAllRead` or `projectAllWrite` needs the project's all-users group,
/// which an unknown project has none of (500 "could not create resource (ACL
/// 0)", after the id was taken from the counter and before the provider id is
/// reserved).
fn project_group(store: &Store, item: &Value) -> Result<(), Answer> {
    let project = item["project"].as_str().filter(|p| !p.is_empty());
    let all = item["projectAllRead"] == json!(true) || item["projectAllWrite"] == json!(true);
    match project {
        Some(p) if all && !crate::projects::exists(store, p)? => Err(fail(
            500,
            "INTERNAL_SERVER_ERROR",
            format!("could not create resource (ACL 0): no project {p:?}"),
        )),
        _ => Ok(()),
    }
}

/// The ACL entry the core gives a project's resource registered with
/// `projectAllRead`/`projectAllWrite`: the project's all-users group (the
/// simulator names it `<project>-all-users`), READ and/or EDIT.
fn all_users_acl(item: &Value) -> Option<Value> {
    let project = item["project"].as_str().filter(|p| !p.is_empty())?;
    let mut permissions = Vec::new();
    if item["projectAllRead"] == json!(true) {
        permissions.push("READ");
    }
    if item["projectAllWrite"] == json!(true) {
        permissions.push("EDIT");
    }
    (!permissions.is_empty()).then(|| {
        json!({"entity": {"type": "project_group", "projectId": project,
                          "group": format!("{project}-all-users")},
               "permissions": permissions})
    })
}

fn no_check(_: &Store, _: &Value) -> Result<(), Answer> {
    Ok(())
}

/// What differs between the resources a provider registers.
struct Registration {
    ty: &'static gojson::Ty,
    /// The state file: its `next` id, and `leaked` ids the core reserved for a
    /// provider id before refusing the item.
    file: &'static str,
    fresh: Value,
    first: u64,
    /// Checked before an item's provider id is reserved.
    check: fn(&Store, &Value) -> Result<(), Answer>,
}

/// A `control/register` call as the core serves it for every resource: each item
/// gets a new id, or the first refusal ends the call, keeping the items before it
/// (and leaking the id reserved for the refused one). `keep` stores one resource.
fn register(
    store: &Store,
    provider: &str,
    body: &[u8],
    kind: Registration,
    mut keep: impl FnMut(&mut Value, &Value, &str, Value) -> Result<(), Answer>,
) -> Result<Answer, Answer> {
    let items = items(&decode(body, kind.ty)?);
    check_provider(&items, provider)?;
    let mut taken = reserved(store)?;
    let mut state = store
        .read(kind.file)
        .map_err(internal)?
        .unwrap_or(kind.fresh);
    let mut responses = Vec::new();
    let mut refusal = None;
    for item in &items {
        let generated = item["providerGeneratedId"].as_str();
        if let Err(a) = (kind.check)(store, item) {
            let n = state["next"].as_u64().unwrap_or(kind.first);
            state["next"] = json!(n + 1);
            refusal = Some(a);
            break;
        }
        let id = match reserve(&mut state, &taken, generated, kind.first) {
            Ok(id) => id,
            Err(a) => {
                refusal = Some(a);
                break;
            }
        };
        let labels = match validate_labels(&item["spec"]["labels"]) {
            Ok(l) => l,
            Err(a) => {
                // The core reserved the id before it looked at the labels.
                if let Some(g) = generated {
                    state["leaked"][g] = json!(id);
                }
                refusal = Some(a);
                break;
            }
        };
        if let Some(g) = generated {
            taken.insert(g.to_string(), json!(id));
        }
        keep(&mut state, item, &id, labels)?;
        responses.push(json!({"id": id}));
    }
    store.write(kind.file, &state).map_err(internal)?;
    if let Some(a) = refusal {
        return Err(a);
    }
    Ok(bulk_response(responses))
}

/// The owner of a registered resource: `createdBy` or `_ucloud`, a project only
/// when not empty.
fn owner(item: &Value) -> Value {
    let project = item["project"].as_str().filter(|p| !p.is_empty());
    json!({
        "createdBy": item["createdBy"].as_str().unwrap_or("_ucloud"),
        "project": project,
    })
}

/// `fnd.BulkResponse`: `responses` omitted when empty.
fn bulk_response(responses: Vec<Value>) -> Answer {
    if responses.is_empty() {
        ok(json!({}))
    } else {
        ok(json!({"responses": responses}))
    }
}

/// `orc.DrivesControlBrowseRequest` (drives.go) as `ParametersToStruct` reads it.
static DRIVES_BROWSE: gojson::Ty = gojson::Ty::Struct(&{
    let mut all: [(&str, &gojson::Ty); 21] = [("", &gojson::Ty::Str); 21];
    all[0] = ("itemsPerPage", &gojson::Ty::Int);
    all[1] = ("next", &gojson::Ty::Opt(&gojson::Ty::Str));
    all[2] = ("filterMemberFiles", &gojson::Ty::Opt(&gojson::Ty::Str));
    let mut i = 0;
    while i < RESOURCE_FLAGS.len() {
        all[i + 3] = RESOURCE_FLAGS[i];
        i += 1;
    }
    all
});

/// `orc.JobsControlRetrieveRequest` (jobs.go): `id` and the job flags.
static JOBS_RETRIEVE: gojson::Ty = gojson::Ty::Struct(&{
    let mut all: [(&str, &gojson::Ty); 24] = [("", &gojson::Ty::Str); 24];
    all[0] = ("id", &gojson::Ty::Str);
    all[1] = ("filterApplication", &gojson::Ty::Opt(&gojson::Ty::Str));
    all[2] = ("filterState", &gojson::Ty::Opt(&gojson::Ty::Str));
    all[3] = ("filterType", &gojson::Ty::Opt(&gojson::Ty::Str));
    all[4] = ("includeParameters", &gojson::Ty::Bool);
    all[5] = ("includeApplication", &gojson::Ty::Bool);
    let mut i = 0;
    while i < RESOURCE_FLAGS.len() {
        all[i + 6] = RESOURCE_FLAGS[i];
        i += 1;
    }
    all
});

/// A drive as the core returns it to its provider: the product resolved when asked
/// for, the ACL under `permissions.others` with `includeOthers`.
fn drive_view(
    store: &Store,
    drive: &Value,
    include_product: bool,
    include_others: bool,
) -> Result<Value, Answer> {
    let mut drive = shares::drive_view(drive, include_others);
    if include_product {
        drive["status"]["resolvedProduct"] =
            catalogue::find(store, &drive["specification"]["product"])?.unwrap_or(Value::Null);
    }
    Ok(drive)
}

/// `files/collections/control/browse` (drive.go → resources.go `ResourceBrowse`).
/// With `filterProviderIds` (comma-separated, at most 1000) the drives registered
/// under those provider ids, in that order, one page of 1000; else all the
/// provider's drives by id, paged, the cursor the last id.
pub(crate) fn browse_drives(
    store: &Store,
    provider: &str,
    query: Option<&str>,
) -> Result<Answer, Answer> {
    let request = query::decode(query, &DRIVES_BROWSE)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let include_product = request["includeProduct"] == json!(true);
    let include_others = request["includeOthers"] == json!(true);
    let state = store
        .read("drives.json")
        .map_err(internal)?
        .unwrap_or(json!({}));
    let mut drives: Vec<&Value> = state["drives"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|d| d["specification"]["product"]["provider"] == provider)
        .collect();
    drives.sort_by_key(|d| d["id"].as_str().and_then(|i| i.parse::<u64>().ok()));
    if let Some(ids) = request["filterProviderIds"].as_str() {
        let ids: Vec<&str> = ids.split(',').collect();
        let mut items = Vec::new();
        if ids.len() <= 1000 {
            for id in ids {
                if let Some(d) = drives.iter().find(|d| d["providerGeneratedId"] == id) {
                    items.push(drive_view(store, d, include_product, include_others)?);
                }
            }
        }
        return Ok(ok(
            json!({"items": items, "next": null, "itemsPerPage": 1000}),
        ));
    }
    let per_page = catalogue::items_per_page(request["itemsPerPage"].as_i64().unwrap_or(0));
    let after = request["next"]
        .as_str()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let mut items = Vec::new();
    for d in drives {
        let id = d["id"]
            .as_str()
            .and_then(|i| i.parse::<u64>().ok())
            .unwrap_or(0);
        if id <= after {
            continue;
        }
        if let Some(by) = request["filterCreatedBy"].as_str() {
            if d["owner"]["createdBy"] != by {
                continue;
            }
        }
        if items.len() == per_page {
            break;
        }
        items.push(drive_view(store, d, include_product, include_others)?);
    }
    let next = if items.len() == per_page {
        items.last().map(|d| d["id"].clone()).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    Ok(ok(
        json!({"items": items, "next": next, "itemsPerPage": per_page}),
    ))
}

/// `jobs/control/update` (core2/pkg/orchestrator/job.go `JobsControlAddUpdate`):
/// every job named must be one the core knows, else 404 and nothing is recorded;
/// the answer is `util.Empty`, `{}`.
fn update_jobs(store: &Store, body: &[u8]) -> Result<Answer, Answer> {
    let items = items(&decode(body, &gotypes::JOBS_UPDATE)?);
    let mut ids = Vec::new();
    for item in &items {
        let id = item["id"].as_str().unwrap_or_default();
        let known = match resource_id(id) {
            Some(n) => store
                .read(&Store::job_file(&n))
                .map_err(internal)?
                .is_some(),
            None => false,
        };
        if !known {
            return Err(fail(
                404,
                "NOT_FOUND",
                format!("not found or permission denied ({id})"),
            ));
        }
        ids.push(resource_id(id).expect("checked above"));
    }
    for (item, id) in items.iter().zip(ids) {
        let file = Store::updates_file(&id);
        let mut updates = store.read(&file).map_err(internal)?.unwrap_or(json!([]));
        let mut update = Map::new();
        for (k, v) in item["update"].as_object().into_iter().flatten() {
            // Fields the provider did not send stay out, as the core's record has
            // only what was set.
            if !v.is_null() {
                update.insert(k.clone(), v.clone());
            }
        }
        update
            .entry("timestamp")
            .or_insert_with(|| json!(ucloud_wire::now_ms()));
        if let Value::Array(list) = &mut updates {
            list.push(Value::Object(update));
        }
        store.write(&file, &updates).map_err(internal)?;
    }
    Ok(ok(json!({})))
}

/// The job as UCloud returns it: what UCloud sent the provider, plus every update
/// the provider reported, with `status.state` the last state among them. The id is
/// read as the core reads it (`ResourceParseId`: decimal, else no job).
fn retrieve_job(store: &Store, query_string: Option<&str>) -> Result<Answer, Answer> {
    let request = query::decode(query_string, &JOBS_RETRIEVE)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let given = request["id"].as_str().unwrap_or_default();
    let not_found = || fail(404, "NOT_FOUND", format!("no job {given:?}"));
    let id = resource_id(given).ok_or_else(not_found)?;
    let Some(mut job) = store.read(&Store::job_file(&id)).map_err(internal)? else {
        return Err(not_found());
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

/// `jobs/control/register` (job.go `JobsControlRegister`): jobs started outside
/// UCloud, each under a new id; a reserved provider id is 409.
fn register_jobs(store: &Store, provider: &str, body: &[u8]) -> Result<Answer, Answer> {
    let kind = Registration {
        ty: &gotypes::JOBS_REGISTER,
        file: "jobs.json",
        fresh: json!({"next": FIRST_JOB, "registered": {}}),
        first: FIRST_JOB,
        check: no_check,
    };
    register(store, provider, body, kind, |state, item, id, labels| {
        let generated = item["providerGeneratedId"].as_str();
        if let Some(g) = generated {
            state["registered"][g] = json!(id);
        }
        let mut spec = item["spec"].clone();
        spec["labels"] = labels;
        store
            .put_job(&json!({
                "id": id,
                "createdAt": ucloud_wire::now_ms(),
                "owner": owner(item),
                "permissions": null,
                "providerGeneratedId": generated.unwrap_or_default(),
                "specification": spec,
                "status": {"state": "IN_QUEUE"},
                "updates": [],
            }))
            .map(drop)
            .map_err(internal)
    })
}

/// `approveConnection`/`clearConnection` (core2/pkg/orchestrator/provider_integration.go):
/// `orc.ProviderIntegrationCtrlFindByUser`, `{"username":"U"}`. Go ignores other
/// keys, so `{"items":[...]}` is a request for the user `""`: accepted, and it
/// connects nobody real.
fn connection(store: &Store, body: &[u8], connect: bool) -> Result<Answer, Answer> {
    let request = decode(body, &gotypes::FIND_BY_USER)?;
    let user = request["username"].as_str().unwrap_or_default().to_string();
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
    connected.retain(|u| *u != user);
    if connect {
        connected.push(user.clone());
    }
    state["connected"] = json!(connected);
    store.write("connections.json", &state).map_err(internal)?;
    if connect {
        crate::owners::know(store, Some(&user), None)?;
    }
    Ok(ok(json!({})))
}

#[cfg(test)]
mod tests;
