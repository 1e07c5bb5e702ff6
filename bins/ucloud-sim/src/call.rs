//! `ucloud-sim call`: one request to the provider the way UCloud's core makes it:
//! its bearer token, the user in `ucloud-username` (standard base64, the header name
//! lower-case as the Go core sends it), `Accept-Encoding: gzip`. Prints the status on
//! the first line and the (decompressed) body after it.

use crate::answer::{fail, Answer};
use crate::error::SimError;
use crate::store::Store;
use crate::{api, gojson, gotypes, projects, query, shares, support};
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use ucloud_http::client::{Client, Endpoint};
use ucloud_wire::names::UcloudName;

pub struct CallArgs<'a> {
    pub url: &'a str,
    pub ca: Option<&'a Path>,
    pub user: Option<&'a str>,
    pub token: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<&'a str>,
    /// The token to ask the provider for its support with, as UCloud does before
    /// it creates a job: UCloud's own, whatever `token` is being tested.
    pub support_token: &'a str,
    /// Send a job creation as it is, without UCloud's checks (hostile tests of
    /// the provider with bodies UCloud never sends).
    pub unchecked: bool,
}

/// UCloud gives a provider call 5 s; a test waiting on a slow plugin gets more.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `path` is the provider's job creation, `/ucloud/{P}/jobs`.
fn is_job_create(method: &str, path: &str) -> bool {
    let path = path
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    method == "POST"
        && parts.len() == 4
        && parts[0].is_empty()
        && parts[1] == "ucloud"
        && parts[3] == "jobs"
}

/// The jobs of a job creation as UCloud sends one: the body decodes as
/// `fnd.BulkRequest[orc.Job]`, holds jobs, and every id is a decimal number as the
/// core makes them. Anything else is no job creation UCloud would make.
fn jobs_of(body: &str) -> Result<Vec<(Value, Value)>, Answer> {
    let refuse = |why: String| {
        fail(
            400,
            "BAD_REQUEST",
            format!("UCloud would send no such job creation: {why} (--unchecked sends it anyway)"),
        )
    };
    let decoded = gojson::decode(body.as_bytes(), &gotypes::JOBS_CREATE)
        .map_err(|e| refuse(format!("not a Go fnd.BulkRequest[orc.Job]: {e}")))?;
    let original: Value = serde_json::from_str(body).map_err(|e| refuse(e.to_string()))?;
    let decoded = decoded["items"].as_array().cloned().unwrap_or_default();
    let originals = original["items"].as_array().cloned().unwrap_or_default();
    if decoded.is_empty() || decoded.len() != originals.len() {
        return Err(refuse("no jobs in \"items\"".into()));
    }
    for job in &decoded {
        let id = job["id"].as_str().unwrap_or_default();
        if api::resource_id(id).as_deref() != Some(id) {
            return Err(refuse(format!(
                "job id {id:?} is not a positive decimal number, as UCloud's ids are"
            )));
        }
    }
    Ok(decoded.into_iter().zip(originals).collect())
}

/// Jobs UCloud hands a provider are jobs UCloud knows: remember them, so that
/// `/api/jobs/control/retrieve` can answer for them, and their owners, whom
/// UCloud knows.
fn remember_jobs(
    store: &Store,
    jobs: &[(Value, Value)],
    user: Option<&str>,
) -> Result<(), SimError> {
    for (decoded, job) in jobs {
        let mut job = job.clone();
        if let Some(user) = user {
            if job["owner"]["createdBy"].is_null() {
                if !job["owner"].is_object() {
                    job["owner"] = json!({"createdBy": user, "project": null});
                } else {
                    job["owner"]["createdBy"] = json!(user);
                }
            }
        }
        store.put_job(&job)?;
        let project = decoded["owner"]["project"].as_str();
        crate::owners::know(store, job["owner"]["createdBy"].as_str(), project)
            .map_err(|a| SimError::Setup(a.refused.unwrap_or_default()))?;
    }
    Ok(())
}

/// A call UCloud would not make: the core's answer, printed as `call` prints any,
/// and nothing sent.
fn refused(what: &str, answer: Answer) -> (u16, Vec<u8>) {
    eprintln!(
        "ucloud-sim: UCloud would not {what}: {}",
        answer.refused.as_deref().unwrap_or_default()
    );
    (answer.status, answer.body.to_string().into_bytes())
}

/// A body key as Go matches it to a field: exactly, else without case.
fn field<'v>(value: &'v Value, name: &str) -> &'v Value {
    let Some(map) = value.as_object() else {
        return &Value::Null;
    };
    if let Some(v) = map.get(name) {
        return v;
    }
    let folded = gojson::fold(name);
    map.iter()
        .find(|(k, _)| gojson::fold(k) == folded)
        .map(|(_, v)| v)
        .unwrap_or(&Value::Null)
}

/// The UCloud paths a provider's files call (`/ucloud/{P}/files...`,
/// orchestrators/files.go `FilesProvider*`) acts on, each with the permission the
/// core wants on its drive first (core2 orchestrator/files.go: `ResourceRetrieve`
/// for browse and retrieve, `filesFetchDrives` for the rest). Other calls: none.
fn files_paths(method: &str, path: &str, body: Option<&str>) -> Vec<(String, &'static str)> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let op = match parts.as_slice() {
        ["", "ucloud", _, "files"] => "",
        ["", "ucloud", _, "files", op] => op,
        _ => return Vec::new(),
    };
    // (where in the body, the permission): `items[].KEY` for bulk calls.
    let wanted: &[(&[&str], &str)] = match (method, op) {
        ("POST", "browse") => &[(&["browse", "flags", "path"], "READ")],
        ("POST", "retrieve") => &[(&["retrieve", "id"], "READ")],
        ("POST", "visualize") => &[(&["path"], "READ")],
        ("POST", "download") => &[(&["items", "id"], "READ")],
        ("POST", "folder" | "upload" | "trash" | "emptyTrash") | ("DELETE", "") => {
            &[(&["items", "id"], "EDIT")]
        }
        ("POST", "move") => &[(&["items", "oldId"], "EDIT"), (&["items", "newId"], "EDIT")],
        ("POST", "copy") => &[(&["items", "oldId"], "READ"), (&["items", "newId"], "EDIT")],
        _ => return Vec::new(),
    };
    let body: Value = body
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let mut found = Vec::new();
    for (keys, permission) in wanted {
        let mut values = vec![&body];
        for key in keys.iter() {
            values = values
                .into_iter()
                .flat_map(|v| match (field(v, key), *key == "items") {
                    (Value::Array(list), true) => list.iter().collect(),
                    (_, true) => Vec::new(),
                    (other, false) => vec![other],
                })
                .collect();
        }
        for v in values {
            if let Some(p) = v.as_str() {
                found.push((p.to_string(), *permission));
            }
        }
        // A test may name the path in the query instead.
        for (name, value) in query::pairs(query) {
            if name == *keys.last().expect("a field") {
                found.push((value, *permission));
            }
        }
    }
    found
}

/// The core's refusal of a files call on a share's drive (product `share`) that
/// the user may not touch: 403, as `ResourceRetrieveEx` refuses (its message
/// whatever the permission wanted). Other drives are left to the provider.
fn share_refusal(
    store: &Store,
    user: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Option<Answer>, SimError> {
    let paths = files_paths(method, path, body);
    if paths.is_empty() {
        return Ok(None);
    }
    let drives = store.read("drives.json")?.unwrap_or(Value::Null);
    for (path, permission) in paths {
        let Some(key) = shares::drive_of_path(&drives, &path) else {
            continue;
        };
        let drive = &drives["drives"][&key];
        if drive["specification"]["product"]["id"] != "share" {
            continue;
        }
        if !shares::permissions_of(user, drive)
            .iter()
            .any(|p| p == permission)
        {
            let mut answer = fail(403, "FORBIDDEN", "Write permission is required");
            answer.refused = Some(format!(
                "{} may not {permission} drive {key}, a share's: Write permission is required",
                user.unwrap_or("no user")
            ));
            return Ok(Some(answer));
        }
    }
    Ok(None)
}

/// The provider from `/ucloud/{P}/jobs`.
fn path_provider(path: &str) -> &str {
    path.split('/').nth(2).unwrap_or_default()
}

pub fn call(args: &CallArgs<'_>, store: Option<&Store>) -> Result<(u16, Vec<u8>), SimError> {
    let user_header = match args.user {
        Some(name) => Some(
            UcloudName::new(name)
                .map_err(|e| SimError::Usage(format!("--user: {e}")))?
                .to_header(),
        ),
        None => None,
    };
    let endpoint =
        Endpoint::new(args.url, args.ca, TIMEOUT).map_err(|e| SimError::Call(e.to_string()))?;
    let creation = is_job_create(args.method, args.path) && !args.unchecked;
    if creation {
        let jobs = match jobs_of(args.body.unwrap_or_default()) {
            Ok(jobs) => jobs,
            Err(answer) => return Ok(refused("create this job", answer)),
        };
        // UCloud creates a job only for a product in its catalogue that the
        // provider supports; it asks the provider, as the core does.
        let Some(store) = store else {
            return Err(SimError::Usage(
                "a job creation needs --state: the product catalogue decides whether UCloud would create the job".into(),
            ));
        };
        let provider = path_provider(args.path);
        let supported = support::fetch(args.url, args.ca, args.support_token, provider);
        let refusal = match &supported {
            Ok(list) => jobs.iter().find_map(|(job, _)| {
                support::check_job(store, job, Some(list))
                    .and_then(|()| projects::check_job(store, provider, job))
                    .err()
            }),
            Err(why) => Some(fail(
                400,
                "BAD_REQUEST",
                format!("bad machine type requested: no support from the provider: {why}"),
            )),
        };
        if let Some(answer) = refusal {
            return Ok(refused("create this job", answer));
        }
        remember_jobs(store, &jobs, args.user)?;
    }
    if let (Some(store), false) = (store, args.unchecked) {
        if let Some(answer) = share_refusal(store, args.user, args.method, args.path, args.body)? {
            return Ok(refused("make this files call", answer));
        }
    }
    let authorization = format!("Bearer {}", args.token);
    let mut headers = vec![
        ("Authorization", authorization.as_str()),
        ("Accept-Encoding", "gzip"),
        ("Content-Type", "application/json"),
        ("User-Agent", "ucloud-sim"),
    ];
    if let Some(user) = &user_header {
        headers.push(("ucloud-username", user.as_str()));
    }
    let body = args.body.unwrap_or_default().as_bytes();
    let mut client = Client::new(endpoint);
    let response = client
        .send(args.method, args.path, &headers, body)
        .map_err(|e| SimError::Call(format!("{} {}{}: {e}", args.method, args.url, args.path)))?;
    let encoding = response.header("content-encoding").unwrap_or("identity");
    let body = if encoding.eq_ignore_ascii_case("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(response.body.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| SimError::Call(format!("the gzip body does not decompress: {e}")))?;
        out
    } else {
        response.body
    };
    Ok((response.status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_job_creation_is_remembered() {
        assert!(is_job_create("POST", "/ucloud/hpc/jobs"));
        assert!(is_job_create("POST", "/ucloud/hpc/jobs/"));
        assert!(!is_job_create("GET", "/ucloud/hpc/jobs"));
        assert!(!is_job_create("POST", "/ucloud/hpc/jobs/terminate"));
        assert!(!is_job_create("POST", "/api/hpc/jobs"));
    }

    #[test]
    fn files_calls_name_their_paths_and_permissions() {
        let items = |k: &str| format!(r#"{{"items":[{{"{k}":"/5/a"}},{{"{k}":"/6/b"}}]}}"#);
        let browse = r#"{"resolvedCollection":{"id":"9"},"Browse":{"FLAGS":{"path":"/5/x"}}}"#;
        let got = |m: &str, p: &str, b: &str| files_paths(m, p, Some(b));
        assert_eq!(
            got("POST", "/ucloud/hpc/files/browse", browse),
            [("/5/x".to_string(), "READ")]
        );
        assert_eq!(
            got(
                "POST",
                "/ucloud/hpc/files/retrieve",
                r#"{"retrieve":{"id":"/5/y"}}"#
            ),
            [("/5/y".to_string(), "READ")]
        );
        assert_eq!(
            got("POST", "/ucloud/hpc/files/browse?path=/7/q", "{}"),
            [("/7/q".to_string(), "READ")]
        );
        for (op, want) in [
            ("download", "READ"),
            ("folder", "EDIT"),
            ("upload", "EDIT"),
            ("trash", "EDIT"),
            ("emptyTrash", "EDIT"),
        ] {
            let found = got("POST", &format!("/ucloud/hpc/files/{op}"), &items("id"));
            assert_eq!(
                found,
                [("/5/a".to_string(), want), ("/6/b".to_string(), want)],
                "{op}"
            );
        }
        assert_eq!(got("DELETE", "/ucloud/hpc/files", &items("id")).len(), 2);
        let pair = r#"{"items":[{"oldId":"/5/a","newId":"/6/b"}]}"#;
        assert_eq!(
            got("POST", "/ucloud/hpc/files/copy", pair),
            [("/5/a".to_string(), "READ"), ("/6/b".to_string(), "EDIT")]
        );
        assert_eq!(
            got("POST", "/ucloud/hpc/files/move", pair),
            [("/5/a".to_string(), "EDIT"), ("/6/b".to_string(), "EDIT")]
        );
        for (m, p, b) in [
            ("POST", "/ucloud/hpc/jobs", items("id")),
            ("POST", "/ucloud/hpc/files/collections", items("id")),
            ("GET", "/ucloud/hpc/files/browse", items("id")),
            ("POST", "/ucloud/hpc/files", items("id")),
            ("POST", "/ucloud/hpc/files/upload", "not json".into()),
            (
                "POST",
                "/ucloud/hpc/files/upload",
                r#"{"items":[{"id":5}]}"#.into(),
            ),
            (
                "POST",
                "/ucloud/hpc/files/upload",
                r#"{"items":{"id":"/5/a"}}"#.into(),
            ),
        ] {
            assert!(got(m, p, &b).is_empty(), "{m} {p} {b}");
        }
    }

    #[test]
    fn only_a_shares_drive_is_checked_and_by_its_acl() {
        let dir = std::env::temp_dir().join(format!("sim-call-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        let owner = |by: &str| json!({"createdBy": by, "project": null});
        let product = |id: &str| json!({"id": id, "category": "home", "provider": "hpc"});
        store
            .write(
                "drives.json",
                &json!({"next": 105, "drives": {
                    "100": {"id": "100", "owner": owner("A#1"), "specification": {"product": product("home")}},
                    "104": {"id": "104", "owner": owner("_ucloud"), "specification": {"product": product("share")},
                            "acl": [{"entity": {"type": "user", "username": "B#2"}, "permissions": ["READ"]},
                                    {"entity": {"type": "user", "username": "C#3"}, "permissions": ["READ", "EDIT"]}]},
                }}),
            )
            .unwrap();
        let check = |user: Option<&str>, method: &str, op: &str, body: &str| {
            let path = format!("/ucloud/hpc/files{op}");
            share_refusal(&store, user, method, &path, Some(body))
                .unwrap()
                .map(|a| (a.status, a.body["why"].clone()))
        };
        let one = |k: &str, p: &str| format!(r#"{{"items":[{{"{k}":"{p}"}}]}}"#);
        let browse = |p: &str| format!(r#"{{"browse":{{"flags":{{"path":"{p}"}}}}}}"#);
        let refused = Some((403, json!("Write permission is required")));
        // Bob reads, never writes; Carol both; Alice (whose folder it is) neither.
        assert_eq!(
            check(Some("B#2"), "POST", "/browse", &browse("/104/x")),
            None
        );
        assert_eq!(
            check(Some("B#2"), "POST", "/download", &one("id", "//104/x")),
            None
        );
        assert_eq!(
            check(Some("B#2"), "POST", "/upload", &one("id", "/104/x")),
            refused
        );
        assert_eq!(
            check(Some("B#2"), "POST", "/folder", &one("id", "/0104/x")),
            refused
        );
        assert_eq!(
            check(Some("B#2"), "POST", "/trash", &one("id", "/104")),
            refused
        );
        assert_eq!(
            check(Some("B#2"), "DELETE", "", &one("id", "/104/x")),
            refused
        );
        assert_eq!(
            check(Some("C#3"), "POST", "/upload", &one("id", "/104/x")),
            None
        );
        assert_eq!(
            check(Some("A#1"), "POST", "/browse", &browse("/104")),
            refused
        );
        assert_eq!(check(None, "POST", "/browse", &browse("/104")), refused);
        assert_eq!(
            check(
                Some("D#4"),
                "POST",
                "/retrieve",
                r#"{"retrieve":{"id":"/104/x"}}"#
            ),
            refused
        );
        // Copying out of a share needs READ there, into one EDIT.
        let pair = |a: &str, b: &str| format!(r#"{{"items":[{{"oldId":"{a}","newId":"{b}"}}]}}"#);
        assert_eq!(
            check(Some("B#2"), "POST", "/copy", &pair("/104/x", "/100/x")),
            None
        );
        assert_eq!(
            check(Some("B#2"), "POST", "/move", &pair("/104/x", "/100/x")),
            refused
        );
        assert_eq!(
            check(Some("B#2"), "POST", "/copy", &pair("/100/x", "/104/x")),
            refused
        );
        // Other drives, known or not, are the provider's to refuse.
        for user in [Some("B#2"), None] {
            for path in ["/100/x", "/999/x", "/x", "", "/"] {
                assert_eq!(
                    check(user, "POST", "/upload", &one("id", path)),
                    None,
                    "{path}"
                );
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_job_creations_ucloud_makes_pass() {
        let good = r#"{"items":[{"id":"42","owner":{"createdBy":"A#1"},"specification":{"product":{"id":"c1"}},"extra":1}]}"#;
        let jobs = jobs_of(good).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].0["specification"]["product"]["id"], "c1");
        assert_eq!(jobs[0].1["extra"], 1, "the job is remembered as sent");
        for bad in [
            r#"{"items":[{"id":"j-42"}]}"#,
            r#"{"items":[{"id":"042"}]}"#,
            r#"{"items":[{"id":42}]}"#,
            r#"{"items":[{"id":"42","specification":{"replicas":"1"}}]}"#,
            r#"{"items":[]}"#,
            r#"{}"#,
            "",
            "[]",
        ] {
            let refused = jobs_of(bad).unwrap_err();
            assert_eq!(refused.status, 400, "{bad}");
        }
    }
}
