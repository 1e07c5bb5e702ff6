//! `ucloud-sim call`: one request to the provider the way UCloud's core makes it:
//! its bearer token, the user in `ucloud-username` (standard base64, the header name
//! lower-case as the Go core sends it), `Accept-Encoding: gzip`. Prints the status on
//! the first line and the (decompressed) body after it.

use crate::answer::{fail, Answer};
use crate::error::SimError;
use crate::store::Store;
use crate::{api, gojson, gotypes, support, usage};
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
        usage::know(store, job["owner"]["createdBy"].as_str(), project)
            .map_err(|a| SimError::Setup(a.refused.unwrap_or_default()))?;
    }
    Ok(())
}

/// A job creation UCloud would not make: the core's answer, printed as `call`
/// prints any, and nothing sent.
fn refused(answer: Answer) -> (u16, Vec<u8>) {
    eprintln!(
        "ucloud-sim: UCloud would not create this job: {}",
        answer.refused.as_deref().unwrap_or_default()
    );
    (answer.status, answer.body.to_string().into_bytes())
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
            Err(answer) => return Ok(refused(answer)),
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
            Ok(list) => jobs
                .iter()
                .find_map(|(job, _)| support::check_job(store, job, Some(list)).err()),
            Err(why) => Some(fail(
                400,
                "BAD_REQUEST",
                format!("bad machine type requested: no support from the provider: {why}"),
            )),
        };
        if let Some(answer) = refusal {
            return Ok(refused(answer));
        }
        remember_jobs(store, &jobs, args.user)?;
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
