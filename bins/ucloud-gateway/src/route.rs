//! From method and path to what the gateway does: a call name for the dispatcher,
//! the health answer, or a refusal that says why.

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A provider API call authenticated by UCloud's bearer token.
    Api(&'static str),
    /// A data-channel call authenticated by a transfer token.
    Transfer(&'static str),
    /// `GET /ucloud-im/health`, answered by the gateway itself.
    Health,
    /// `GET /ucloud/{P}/connect?ticket=...`: the page that shows a connection ticket
    /// to a browser (no token; answered by the gateway itself, see connect_page.rs).
    ConnectPage,
    /// `GET /ucloud/jobs.provider.{P}/websocket`: a WebSocket session (follow.rs).
    WebSocket(&'static str),
    /// A call this version recognises but does not serve yet (none at present).
    #[allow(dead_code)]
    NotImplemented(&'static str),
    /// Nothing here; the text says why.
    NotFound(String),
}

/// The calls under `/ucloud/{P}/`, by method and the rest of the path.
const API: &[(&str, &str, &str)] = &[
    (
        "GET",
        "integration/retrieveManifest",
        "integration.retrieveManifest",
    ),
    ("POST", "integration/connect", "integration.connect"),
    ("POST", "integration/init", "integration.init"),
    ("POST", "integration/unlinked", "integration.unlinked"),
    ("POST", "jobs", "jobs.create"),
    ("POST", "jobs/terminate", "jobs.terminate"),
    ("POST", "jobs/extend", "jobs.extend"),
    ("POST", "jobs/suspend", "jobs.suspend"),
    ("POST", "jobs/unsuspend", "jobs.unsuspend"),
    ("POST", "jobs/updateAcl", "jobs.updateAcl"),
    ("POST", "jobs/verify", "jobs.verify"),
    ("GET", "jobs/retrieveProducts", "jobs.retrieveProducts"),
    ("POST", "files/browse", "files.browse"),
    ("POST", "files/retrieve", "files.retrieve"),
    ("POST", "files/move", "files.move"),
    ("POST", "files/copy", "files.copy"),
    ("POST", "files/trash", "files.trash"),
    ("POST", "files/emptyTrash", "files.emptyTrash"),
    ("POST", "files/search", "files.search"),
    ("POST", "files/folder", "files.createFolder"),
    ("POST", "files/upload", "files.createUpload"),
    ("POST", "files/download", "files.createDownload"),
    ("DELETE", "files", "files.delete"),
    ("POST", "files/collections", "files.collections.create"),
    ("DELETE", "files/collections", "files.collections.delete"),
    (
        "GET",
        "files/collections/retrieveProducts",
        "files.collections.retrieveProducts",
    ),
    (
        "POST",
        "files/collections/rename",
        "files.collections.rename",
    ),
    (
        "POST",
        "files/collections/updateAcl",
        "files.collections.updateAcl",
    ),
    (
        "POST",
        "files/collections/verify",
        "files.collections.verify",
    ),
];

/// The data channel under `/ucloud/{P}/`.
const TRANSFER: &[(&str, &str, &str)] = &[
    ("GET", "download", "files.download"),
    ("POST", "upload", "files.upload"),
    ("OPTIONS", "upload", "files.upload"),
];

/// Every call name the gateway can route to.
#[cfg(test)]
pub fn all_calls() -> impl Iterator<Item = &'static str> {
    API.iter()
        .chain(TRANSFER)
        .map(|(_, _, call)| *call)
        .chain(["jobs.follow"])
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
    let (first, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if first == format!("jobs.provider.{provider}") && rest == "websocket" {
        return if method == "GET" {
            Route::WebSocket("jobs.follow")
        } else {
            Route::NotFound(format!("{path} answers GET (a WebSocket upgrade) only"))
        };
    }
    if first != provider {
        return Route::NotFound(format!(
            "{path}: this site is provider {provider:?}, not {first:?}"
        ));
    }
    if rest == "connect" {
        return if method == "GET" {
            Route::ConnectPage
        } else {
            Route::NotFound(format!("{path} answers GET only, not {method}"))
        };
    }
    let mut known_path = false;
    for (table, make) in [
        (API, Route::Api as fn(&'static str) -> Route),
        (TRANSFER, Route::Transfer),
    ] {
        for (m, p, call) in table {
            if *p == rest {
                if *m == method {
                    return make(call);
                }
                known_path = true;
            }
        }
    }
    if known_path {
        Route::NotFound(format!("{path} does not answer {method}"))
    } else {
        Route::NotFound(format!("{path} is not a call this provider serves"))
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
            assert_eq!(
                route(method, path, "hpc"),
                Route::Api(call),
                "{method} {path}"
            );
        }
        assert_eq!(
            route("GET", "/ucloud/hpc/download", "hpc"),
            Route::Transfer("files.download")
        );
        assert_eq!(
            route("POST", "/ucloud/hpc/upload", "hpc"),
            Route::Transfer("files.upload")
        );
        assert_eq!(
            route("OPTIONS", "/ucloud/hpc/upload", "hpc"),
            Route::Transfer("files.upload")
        );
        assert_eq!(
            route("GET", "/ucloud/jobs.provider.hpc/websocket", "hpc"),
            Route::WebSocket("jobs.follow")
        );
        assert_eq!(route("GET", "/ucloud-im/health/", "hpc"), Route::Health);
        assert_eq!(
            route("GET", "/ucloud/hpc/connect", "hpc"),
            Route::ConnectPage
        );
    }

    #[test]
    fn call_names_are_valid_plugin_names() {
        for call in all_calls() {
            assert!(ucloud_wire::calls::is_valid_call_name(call), "{call}");
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
            (
                "POST",
                "/ucloud/jobs.provider.hpc/websocket",
                "GET (a WebSocket upgrade) only",
            ),
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
