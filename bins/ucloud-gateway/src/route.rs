//! From method and path to what the gateway does: a call name for the dispatcher,
//! the health answer, or a refusal that says why.

use ucloud_wire::calls::{Call, WebSocket, CALLS};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A call of the table (ucloud-wire calls.rs), for a dispatcher.
    Call(&'static Call),
    /// `GET /ucloud-im/health`, answered by the gateway itself.
    Health,
    /// `GET /ucloud/{P}/connect?ticket=...`: the page that shows a connection ticket
    /// to a browser (no token; answered by the gateway itself, see connect_page.rs).
    ConnectPage,
    /// Nothing here; the text says why.
    NotFound(String),
}

/// Collapses `//` and strips a trailing slash (UCloud's convention).
pub fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

pub fn route(method: &str, raw_path: &str, provider: &str) -> Route {
    let path = normalise_path(raw_path);
    if path == "/ucloud-im/health" {
        return if method == "GET" {
            Route::Health
        } else {
            Route::NotFound(format!("{path} answers GET only, not {method}"))
        };
    }
    let Some(rest) = path.strip_prefix("/ucloud/") else {
        return Route::NotFound(format!(
            "{path} is not a provider API path (they start with /ucloud/{provider}/)"
        ));
    };
    let (first, after) = rest.split_once('/').unwrap_or((rest, ""));
    if first == provider && after == "connect" {
        return if method == "GET" {
            Route::ConnectPage
        } else {
            Route::NotFound(format!("{path} answers GET only, not {method}"))
        };
    }
    let mut known_path = None;
    // A job's web interface is served on its own host only (app.rs).
    for call in CALLS.iter().filter(|c| !c.app && c.path_is(rest, provider)) {
        // A browser asks before it posts across origins (CORS preflight).
        if call.method == method || call.cors && call.method == "POST" && method == "OPTIONS" {
            return Route::Call(call);
        }
        // A path that also answers a plain call (`{P}/files`) is not upgrade-only.
        if known_path.is_none_or(|k: &Call| k.websocket == WebSocket::Only) {
            known_path = Some(call);
        }
    }
    match known_path {
        Some(call) if call.websocket == WebSocket::Only => {
            Route::NotFound(format!("{path} answers GET (a WebSocket upgrade) only"))
        }
        Some(_) => Route::NotFound(format!("{path} does not answer {method}")),
        None if first != provider => Route::NotFound(format!(
            "{path}: this site is provider {provider:?}, not {first:?}"
        )),
        None => Route::NotFound(format!("{path} is not a call this provider serves")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_of_the_design_table_routes() {
        let cases = [
            (
                "GET",
                "/ucloud/hpc/integration/retrieveManifest",
                "integration.retrieveManifest",
            ),
            (
                "POST",
                "/ucloud/hpc/integration/connect",
                "integration.connect",
            ),
            ("POST", "/ucloud/hpc/jobs", "jobs.create"),
            ("POST", "/ucloud/hpc/jobs/", "jobs.create"),
            ("POST", "//ucloud//hpc/jobs/extend/", "jobs.extend"),
            (
                "GET",
                "/ucloud/hpc/jobs/retrieveProducts",
                "jobs.retrieveProducts",
            ),
            ("POST", "/ucloud/hpc/files/browse", "files.browse"),
            ("POST", "/ucloud/hpc/files/folder", "files.createFolder"),
            ("POST", "/ucloud/hpc/files/upload", "files.createUpload"),
            ("POST", "/ucloud/hpc/files/download", "files.createDownload"),
            ("DELETE", "/ucloud/hpc/files", "files.delete"),
            ("GET", "/ucloud/hpc/files", "files.streamingSearch"),
            (
                "POST",
                "/ucloud/hpc/files/collections",
                "files.collections.create",
            ),
            (
                "DELETE",
                "/ucloud/hpc/files/collections/",
                "files.collections.delete",
            ),
            (
                "GET",
                "/ucloud/hpc/files/collections/retrieveProducts",
                "files.collections.retrieveProducts",
            ),
            (
                "POST",
                "/ucloud/hpc/files/collections/rename",
                "files.collections.rename",
            ),
        ];
        for (method, path, call) in cases {
            assert_eq!(called(method, path), call, "{method} {path}");
        }
        assert_eq!(called("GET", "/ucloud/hpc/download"), "files.download");
        assert_eq!(called("POST", "/ucloud/hpc/upload"), "files.upload");
        assert_eq!(called("OPTIONS", "/ucloud/hpc/upload"), "files.upload");
        assert_eq!(
            called("GET", "/ucloud/jobs.provider.hpc/websocket"),
            "jobs.follow"
        );
        assert_eq!(route("GET", "/ucloud-im/health/", "hpc"), Route::Health);
        assert_eq!(
            route("GET", "/ucloud/hpc/connect", "hpc"),
            Route::ConnectPage
        );
    }

    fn called(method: &str, path: &str) -> &'static str {
        match route(method, path, "hpc") {
            Route::Call(call) => call.name,
            other => panic!("{method} {path} routed to {other:?}"),
        }
    }

    #[test]
    fn every_call_of_the_table_routes() {
        for call in CALLS {
            let path = format!("/ucloud/{}", call.path.replace("{P}", "hpc"));
            if call.app {
                // A job's web interface is served on the job's own host only.
                assert!(
                    matches!(route(call.method, &path, "hpc"), Route::NotFound(_)),
                    "{path}"
                );
            } else {
                assert_eq!(called(call.method, &path), call.name);
            }
        }
    }

    #[test]
    fn everything_else_is_not_found_with_a_reason() {
        let cases = [
            ("GET", "/ucloud/hpc/files/browse", "does not answer GET"),
            ("POST", "/ucloud/other/jobs", "provider \"hpc\""),
            ("POST", "/ucloud/hpc/jobs/../files/browse", "not a call"),
            ("POST", "/ucloud/hpc/files/browse/x", "not a call"),
            ("GET", "/", "not a provider API path"),
            ("GET", "/api/jobs", "not a provider API path"),
            ("POST", "/ucloud-im/health", "GET only"),
            ("POST", "/ucloud/hpc", "not a call"),
            ("GET", "/ucloud/jobs.provider.other/websocket", "provider"),
            ("OPTIONS", "/ucloud/hpc/download", "does not answer OPTIONS"),
            (
                "OPTIONS",
                "/ucloud/hpc/files/browse",
                "does not answer OPTIONS",
            ),
            (
                "POST",
                "/ucloud/jobs.provider.hpc/websocket",
                "GET (a WebSocket upgrade) only",
            ),
            ("POST", "/ucloud/hpc/files", "does not answer POST"),
        ];
        for (method, path, why) in cases {
            match route(method, path, "hpc") {
                Route::NotFound(text) => assert!(text.contains(why), "{method} {path}: {text}"),
                other => panic!("{method} {path} routed to {other:?}"),
            }
        }
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise_path("//a///b/"), "/a/b");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path(""), "/");
    }
}
