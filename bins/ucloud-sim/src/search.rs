//! `ucloud-sim search`: searches a folder of a drive the way UCloud's core does
//! (core2 orchestrator/files.go `FilesStreamingSearch`): it refuses what the core
//! refuses before it dials the provider (a query that util.ValidateString refuses,
//! a folder whose drive the user may not read, a drive whose product does not say
//! `streamingSearchSupported` in the provider's `files.collections.retrieveProducts`),
//! then opens `/ucloud/{P}/files?usernameHint=…` with its own token and sends one
//! `files.provider.{P}.streamingSearch` message (`FilesProviderStreamingSearchRequest`,
//! orchestrators/files.go). Prints each message as follow does; a refusal is one
//! line `{"refused":STATUS,"why":…}` and nothing is sent.

use crate::answer::{fail as answer_fail, Answer};
use crate::error::SimError;
use crate::follow::{print, random, session, Socket};
use crate::store::Store;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use ucloud_http::client::{Client, Endpoint};
use ucloud_http::websocket;

pub struct SearchArgs<'a> {
    pub url: &'a str,
    pub ca: Option<&'a Path>,
    pub user: &'a str,
    pub token: &'a str,
    /// The sim's state (the drives); `None` with `unchecked`.
    pub store: Option<&'a Store>,
    pub folder: &'a str,
    pub query: &'a str,
    /// Send as given, without the core's checks (hostile tests of the provider).
    pub unchecked: bool,
    /// Sent right after the upgrade instead of the search (hostile tests).
    pub raw: Option<Vec<u8>>,
}

/// UCloud's query limit (util.ValidateString without AllowLong).
const MAX_QUERY: usize = 1024;

pub fn search(args: &SearchArgs<'_>, out: &mut impl Write) -> Result<(), SimError> {
    let provider = std::env::var("UCLOUD_IM_PROVIDER")
        .ok()
        .filter(|p| !p.is_empty());
    let checked = if args.unchecked {
        None
    } else {
        let store = args.store.ok_or_else(|| {
            SimError::Usage("search needs --state (the drives), or --unchecked".into())
        })?;
        match check(store, args) {
            Ok(c) => Some(c),
            Err(answer) => {
                return print(
                    out,
                    &json!({"refused": answer.status, "why": answer.body["why"]}),
                )
            }
        }
    };
    let (provider, payload) = match checked {
        Some(c) => c,
        None => {
            let provider = provider.ok_or_else(|| {
                SimError::Usage("--unchecked needs UCLOUD_IM_PROVIDER (no drive names it)".into())
            })?;
            let payload = json!({
                "query": args.query,
                "owner": {"createdBy": args.user, "project": null},
                "flags": {},
                "category": {"name": "", "provider": provider},
                "currentFolder": args.folder,
            });
            (provider, payload)
        }
    };
    let stream_id = "ignored";
    let first = match &args.raw {
        Some(raw) => raw.clone(),
        None => {
            let message = json!({
                "call": format!("files.provider.{provider}.streamingSearch"),
                "streamId": stream_id,
                "payload": payload,
            });
            websocket::text(&message.to_string(), Some(random()?))
        }
    };
    let socket = Socket {
        url: args.url,
        ca: args.ca,
        user: args.user,
        token: args.token,
        path: &format!("/ucloud/{provider}/files"),
    };
    session(&socket, &first, stream_id, None, out)
}

/// The core's checks; the provider and the request it would send.
fn check(store: &Store, args: &SearchArgs<'_>) -> Result<(String, Value), Answer> {
    let bad = |why: &str| answer_fail(400, "BAD_REQUEST", why.to_string());
    let query = args.query.trim();
    if query.is_empty() {
        return Err(bad("query must not be empty"));
    }
    if query.len() > MAX_QUERY {
        return Err(bad("query is too long"));
    }
    if query.contains('\n') {
        return Err(bad("query must not contain new-lines"));
    }
    // orchestrators DriveIdFromUCloudPath: the first component.
    let drive_id = args
        .folder
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("currentFolder names no drive"))?;
    let drives = store
        .read("drives.json")
        .map_err(|e| answer_fail(500, "INTERNAL", e.to_string()))?
        .unwrap_or(json!({}));
    let drive = &drives["drives"][drive_id];
    let not_found = || answer_fail(404, "NOT_FOUND", "Not found".to_string());
    // A personal drive is the creator's, and a share's drive readable by those
    // its ACL names (no projects in the simulator).
    let readable = crate::shares::permissions_of(Some(args.user), drive)
        .iter()
        .any(|p| p == "READ");
    if !drive.is_object() || !readable {
        return Err(not_found());
    }
    let product = &drive["specification"]["product"];
    let provider = product["provider"]
        .as_str()
        .ok_or_else(not_found)?
        .to_string();
    if !supported(args, &provider, product)? {
        return Err(answer_fail(
            400,
            "BAD_REQUEST",
            format!("the provider does not support streaming search on {product}"),
        ));
    }
    let payload = json!({
        "query": query,
        "owner": drive["owner"],
        "flags": {},
        "category": {"name": product["category"], "provider": provider},
        "currentFolder": args.folder,
    });
    Ok((provider, payload))
}

/// Whether the provider's own support says `files.streamingSearchSupported` for
/// `product` (core2 drive_features.go `driveOpsStreamingSearch`).
fn supported(args: &SearchArgs<'_>, provider: &str, product: &Value) -> Result<bool, Answer> {
    let unreachable = |why: String| answer_fail(502, "PROVIDER_UNREACHABLE", why);
    let endpoint = Endpoint::new(args.url, args.ca, Duration::from_secs(30))
        .map_err(|e| unreachable(e.to_string()))?;
    let authorization = format!("Bearer {}", args.token);
    let path = format!("/ucloud/{provider}/files/collections/retrieveProducts");
    let response = Client::new(endpoint)
        .send(
            "GET",
            &path,
            &[
                ("Authorization", authorization.as_str()),
                ("User-Agent", "ucloud-sim"),
            ],
            b"",
        )
        .map_err(|e| unreachable(format!("GET {path}: {e}")))?;
    if response.status != 200 {
        return Err(unreachable(format!(
            "GET {path} answered {}",
            response.status
        )));
    }
    let v: Value = serde_json::from_slice(&response.body)
        .map_err(|e| unreachable(format!("GET {path}: not JSON: {e}")))?;
    Ok(v["responses"].as_array().into_iter().flatten().any(|s| {
        s["product"]["id"] == product["id"]
            && s["product"]["category"] == product["category"]
            && s["files"]["streamingSearchSupported"] == true
    }))
}
