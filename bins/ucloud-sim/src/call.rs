//! `ucloud-sim call`: one request to the provider the way UCloud's core makes it:
//! its bearer token, the user in `ucloud-username` (standard base64, the header name
//! lower-case as the Go core sends it), `Accept-Encoding: gzip`. Prints the status on
//! the first line and the (decompressed) body after it.

use crate::store::Store;
use crate::{api, gojson, gotypes, support, usage, SimError};
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

/// The jobs of a job creation as UCloud would send it: the body decodes as
/// `fnd.BulkRequest[orc.Job]` and every id is a decimal number. `None` for any
/// other body: one the core never sends, passed on as it is (hostile tests of the
/// provider) and remembered not.
fn jobs_of(body: &str) -> Option<Vec<(Value, Value)>> {
    let decoded = gojson::decode(body.as_bytes(), &gotypes::JOBS_CREATE).ok()?;
    let original: Value = serde_json::from_str(body).ok()?;
    let decoded = decoded["items"].as_array()?.clone();
    let originals = original["items"].as_array()?.clone();
    if decoded.is_empty()
        || decoded.len() != originals.len()
        || decoded.iter().any(|j| {
            api::resource_id(j["id"].as_str().unwrap_or_default()).as_deref() != j["id"].as_str()
        })
    {
        return None;
    }
    Some(decoded.into_iter().zip(originals).collect())
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
    let jobs = match args.body {
        Some(body) if is_job_create(args.method, args.path) => jobs_of(body),
        _ => None,
    };
    if let Some(jobs) = jobs {
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
            Err(why) => Some(api::fail(
                400,
                "BAD_REQUEST",
                format!("bad machine type requested: no support from the provider: {why}"),
            )),
        };
        if let Some(answer) = refusal {
            eprintln!(
                "ucloud-sim: UCloud would not create this job: {}",
                answer.refused.as_deref().unwrap_or_default()
            );
            return Ok((answer.status, answer.body.to_string().into_bytes()));
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
}
