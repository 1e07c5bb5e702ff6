//! `GET /ucloud/{P}/files` upgraded to a WebSocket: UCloud's core searches a folder
//! of a user's drive by name (core2 orchestrator/files.go `FilesStreamingSearch`
//! dials it with the provider's token and `usernameHint`, and sends one
//! `files.provider.{P}.streamingSearch` message whose payload is a
//! `FilesProviderStreamingSearchRequest`). The same path without the upgrade is
//! `files.delete`'s (DELETE); routing tells them apart by method and upgrade.
//!
//! The stream runs as follow.rs runs a job's output; only the first message is
//! read here. The plugin's request is that payload with the site's budget added,
//! set by the gateway whatever the core sent under that name:
//! `"budget":{"seconds":S,"results":N}`, S a second short of the call's time
//! limit (site.conf `timeout.files.streamingSearch`, whose SIGALRM stays the hard
//! stop) and N site.conf's `search_max_results`.

use super::follow::Stream;
use super::shared::first_message;
use crate::normalise::normalise;
use serde_json::{json, Value};
use ucloud_wire::config::SiteConfig;

pub const SEARCH: Stream = Stream {
    doing: "a search",
    init: parse_search,
    by_browser: false,
    forwards: None,
};

fn parse_search(text: &str, site: &SiteConfig) -> Result<(String, Value), String> {
    let call = format!("files.provider.{}.streamingSearch", site.provider);
    let (stream_id, mut payload) = first_message(text, &call)?;
    if !payload.is_object() {
        return Err(
            "the first message's payload must be a FilesProviderStreamingSearchRequest".into(),
        );
    }
    normalise(&mut payload);
    for key in ["query", "currentFolder"] {
        if !payload[key].is_string() {
            return Err(format!("the search's {key} must be a string"));
        }
    }
    let seconds = site
        .timeout_for("files.streamingSearch")
        .saturating_sub(1)
        .max(1);
    payload["budget"] = json!({"seconds": seconds, "results": site.search_max_results});
    Ok((stream_id, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(extra: &str) -> SiteConfig {
        SiteConfig::parse(&format!(
            "provider = hpc\ngateway_user = gw\nservice_user = svc\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_request_gets_the_sites_budget() {
        let text = r#"{"call":"files.provider.hpc.streamingSearch","streamId":"ignored",
            "payload":{"query":"x","owner":{"createdBy":"a"},"flags":{},
            "category":{"name":"c","provider":"hpc"},"currentFolder":"/17",
            "budget":{"seconds":999999,"results":999999}}}"#;
        let (id, req) = parse_search(text, &site("")).unwrap();
        assert_eq!(id, "ignored");
        assert_eq!(req["query"], "x");
        assert_eq!(req["currentFolder"], "/17");
        assert_eq!(req["budget"], json!({"seconds": 29, "results": 100000}));
        let tuned = site("timeout.files.streamingSearch = 120\nsearch_max_results = 5\n");
        let (_, req) = parse_search(text, &tuned).unwrap();
        assert_eq!(req["budget"], json!({"seconds": 119, "results": 5}));
    }

    #[test]
    fn other_first_messages_are_refused() {
        for (bad, why) in [
            ("[]", "must call"),
            (
                r#"{"call":"files.provider.other.streamingSearch","streamId":"s","payload":{}}"#,
                "must call files.provider.hpc.streamingSearch",
            ),
            (
                r#"{"call":"files.provider.hpc.streamingSearch","payload":{"query":"x","currentFolder":"/1"}}"#,
                "streamId",
            ),
            (
                r#"{"call":"files.provider.hpc.streamingSearch","streamId":"s","payload":"x"}"#,
                "FilesProviderStreamingSearchRequest",
            ),
            (
                r#"{"call":"files.provider.hpc.streamingSearch","streamId":"s","payload":{"query":"x","currentFolder":null}}"#,
                "currentFolder",
            ),
            (
                r#"{"call":"jobs.provider.hpc.follow","streamId":"s","payload":{"type":"init","job":{}}}"#,
                "must call",
            ),
        ] {
            let e = parse_search(bad, &site("")).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
