//! Whether UCloud would create a job for a product (core2/pkg/orchestrator/job.go
//! `jobsValidateForSubmission` → features.go `SupportByProduct`): the product is in
//! the catalogue as a compute product, and the provider lists it in its own
//! `jobs.retrieveProducts`. Anything else is 400 "bad machine type requested".

use crate::answer::{fail, Answer};
use crate::catalogue;
use crate::store::Store;
use serde_json::Value;
use std::path::Path;

/// The (product name, category) pairs the provider at `url` supports for jobs.
pub fn fetch(
    url: &str,
    ca: Option<&Path>,
    token: &str,
    provider: &str,
) -> Result<Vec<(String, String)>, String> {
    let path = format!("/ucloud/{provider}/jobs/retrieveProducts");
    let (status, body) = crate::provider::invoke(url, ca, token, None, "GET", &path, b"")?;
    if status != 200 {
        return Err(format!("GET {path} answered {status}"));
    }
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))?;
    Ok(v["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["product"]["provider"]
                .as_str()
                .is_none_or(|p| p == provider)
        })
        .filter_map(|s| {
            Some((
                s["product"]["id"].as_str()?.to_string(),
                s["product"]["category"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Refuses a job whose `specification.product` UCloud would not run: not in the
/// catalogue as compute, or (when the provider's support is known) not supported.
pub fn check_job(
    store: &Store,
    job: &Value,
    supported: Option<&[(String, String)]>,
) -> Result<(), Answer> {
    let product = &job["specification"]["product"];
    let bad = |why: String| {
        fail(
            400,
            "BAD_REQUEST",
            format!("bad machine type requested: {why}"),
        )
    };
    match catalogue::find(store, product)? {
        Some(p) if p["type"] == "compute" => {}
        Some(_) => return Err(bad(format!("{product} is not a compute product"))),
        None => return Err(bad(format!("{product} is not in the product catalogue"))),
    }
    if let Some(list) = supported {
        let key = (
            product["id"].as_str().unwrap_or_default().to_string(),
            product["category"].as_str().unwrap_or_default().to_string(),
        );
        if !list.contains(&key) {
            return Err(bad(format!(
                "the provider's jobs.retrieveProducts does not list {product}"
            )));
        }
    }
    Ok(())
}
