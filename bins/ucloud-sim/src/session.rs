//! The core's half of an interactive session (core2/pkg/orchestrator/job.go,
//! `JobsOpenInteractiveSession`), shared by `ucloud-sim shell` and `ucloud-sim
//! web`: the product's support must have the feature, then one
//! `JobsProviderOpenInteractiveSessionRequestItem` goes to the provider as the
//! user, and exactly one `OpenSession` must come back.

use crate::error::SimError;
use serde_json::{json, Value};
use std::path::Path;

/// Where and as whom the core calls.
pub struct Core<'a> {
    pub url: &'a str,
    pub ca: Option<&'a Path>,
    pub token: &'a str,
    pub user: &'a str,
    /// Skip the support check (hostile tests of the provider's own refusals).
    pub unchecked: bool,
}

fn fail(why: impl Into<String>) -> SimError {
    SimError::Call(why.into())
}

/// The provider a Job names (else `$UCLOUD_IM_PROVIDER`).
pub fn job_provider(job: &Value) -> Result<String, SimError> {
    job["specification"]["product"]["provider"]
        .as_str()
        .map(str::to_string)
        .or_else(|| std::env::var("UCLOUD_IM_PROVIDER").ok())
        .ok_or_else(|| {
            SimError::Usage(
                "the job names no specification.product.provider and UCLOUD_IM_PROVIDER is not set"
                    .into(),
            )
        })
}

/// The provider's one `OpenSession` for `job`'s `rank` of `session_type`, or what
/// the core answers instead (`{"refused":STATUS,"why":…}`). `feature` is the
/// product's `native` support the core requires (`terminal`, `web`).
pub fn open(
    core: &Core<'_>,
    job: &Value,
    rank: u32,
    session_type: &str,
    feature: &str,
) -> Result<Result<Value, Value>, SimError> {
    let provider = job_provider(job)?;
    if !core.unchecked && !supports(core, job, &provider, feature)? {
        return Ok(Err(json!({"refused": 400,
            "why": format!("{feature} access is not supported by this provider")})));
    }
    let body = json!({"items": [{"job": job, "rank": rank, "sessionType": session_type,
        "target": null}]});
    ask(core, &provider, "interactiveSession", &body)
}

/// The provider's one `OpenSession` for a terminal in `folder` (a UCloud path),
/// as core2's `JobsOpenTerminalInFolder` asks for it: the folder's drive must be
/// in the simulator's state and the user must have EDIT on it (else 403
/// "permission denied"; a path without a drive is 400 "bad folder path
/// supplied"); the provider is the drive product's. The core asks nothing of the
/// product's support here: the web client offers the button only where the
/// product says `files.openInTerminal`.
pub fn open_folder(
    core: &Core<'_>,
    store: &crate::store::Store,
    folder: &str,
) -> Result<Result<(String, Value), Value>, SimError> {
    let drive_id = folder
        .strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .filter(|d| !d.is_empty());
    let Some(drive_id) = drive_id else {
        return Ok(Err(
            json!({"refused": 400, "why": "bad folder path supplied"}),
        ));
    };
    let drives = store
        .read("drives.json")
        .map_err(|e| fail(e.to_string()))?
        .unwrap_or(json!({}));
    let drive = &drives["drives"][drive_id];
    let may_edit = crate::shares::permissions_of(Some(core.user), drive)
        .iter()
        .any(|p| p == "EDIT");
    let provider = drive["specification"]["product"]["provider"].as_str();
    let (true, Some(provider)) = (drive.is_object() && may_edit, provider) else {
        return Ok(Err(json!({"refused": 403, "why": "permission denied"})));
    };
    let body = json!({"items": [{"folder": folder}]});
    let session = ask(core, provider, "openTerminalInFolder", &body)?;
    Ok(session.map(|one| (provider.to_string(), one)))
}

/// One bulk request of one item to the provider's `jobs/<operation>` as the user:
/// exactly one `OpenSession` back, or what the core answers instead (the
/// provider's refusal, or 502 for any other number of answers).
fn ask(
    core: &Core<'_>,
    provider: &str,
    operation: &str,
    body: &Value,
) -> Result<Result<Value, Value>, SimError> {
    let path = format!("/ucloud/{provider}/jobs/{operation}");
    let (status, answer) = crate::provider::invoke(
        core.url,
        core.ca,
        core.token,
        Some(core.user),
        "POST",
        &path,
        body.to_string().as_bytes(),
    )
    .map_err(fail)?;
    let answer: Value = serde_json::from_slice(&answer)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer).into_owned()));
    if status != 200 {
        return Ok(Err(json!({"refused": status, "why": answer["why"]})));
    }
    match answer["responses"].as_array().map(Vec::as_slice) {
        Some([one]) => Ok(Ok(one.clone())),
        // core2: len(resp.Responses) != len(requests)
        _ => Ok(Err(
            json!({"refused": 502, "why": "bad response from provider"}),
        )),
    }
}

/// Whether the provider's `jobs.retrieveProducts` says `native.<feature>` for the
/// job's product (core2's `SupportByProduct` and `jobFeature…ByBackend`).
fn supports(core: &Core<'_>, job: &Value, provider: &str, feature: &str) -> Result<bool, SimError> {
    let path = format!("/ucloud/{provider}/jobs/retrieveProducts");
    let (status, body) =
        crate::provider::invoke(core.url, core.ca, core.token, None, "GET", &path, b"")
            .map_err(fail)?;
    if status != 200 {
        return Err(fail(format!("GET {path} answered {status}")));
    }
    let support: Value =
        serde_json::from_slice(&body).map_err(|e| fail(format!("GET {path}: {e}")))?;
    let product = &job["specification"]["product"];
    Ok(support["responses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["product"]["id"] == product["id"]
                && s["product"]["category"] == product["category"]
                && s["native"][feature] == true
        }))
}
