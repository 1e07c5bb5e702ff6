//! `ucloud-sim call`: one request to the provider the way UCloud's core makes it:
//! its bearer token, the user in `ucloud-username` (standard base64, the header name
//! lower-case as the Go core sends it), `Accept-Encoding: gzip`. Prints the status on
//! the first line and the (decompressed) body after it.

use crate::store::Store;
use crate::SimError;
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

/// Jobs UCloud hands a provider are jobs UCloud knows: remember them, so that
/// `/api/jobs/control/retrieve` can answer for them.
fn remember_jobs(store: &Store, body: &str, user: Option<&str>) -> Result<(), SimError> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Ok(());
    };
    for job in v["items"].as_array().into_iter().flatten() {
        if !job["id"].is_string() {
            continue;
        }
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
    }
    Ok(())
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
    if let (Some(store), Some(body)) = (store, args.body) {
        if is_job_create(args.method, args.path) {
            remember_jobs(store, body, args.user)?;
        }
    }
    let endpoint =
        Endpoint::new(args.url, args.ca, TIMEOUT).map_err(|e| SimError::Call(e.to_string()))?;
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
