//! The calls: one table, one row per call, with everything a program needs to know
//! about it (after OpenSSH's `mon_dispatch_proto20[]`). The gateway derives its
//! routes, its CORS headers, its pipe sizes and its WebSocket endpoints from it, the
//! dispatcher who a call runs as and which transfer token it mints, and site.conf
//! the default time limits. Adding a call is one row here plus its plugin.
//!
//! A call's name is UCloud's operation name without the provider prefix; its
//! plugin is the file of that name in the plugin directory.

/// Who a call runs as, and so which credential it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunsAs {
    /// UCloud's bearer token, no end user: the site's service account.
    Service,
    /// UCloud's bearer token and the UCloud user it acts for: the mapped local user.
    User,
    /// A transfer token the dispatcher minted earlier (the data channel): the user
    /// it names.
    Transfer,
}

/// Its time limit when site.conf sets none for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`DEFAULT_TIMEOUT_SECS`] (site.conf `timeout` changes it for all).
    Default,
    /// [`LONG_TIMEOUT_SECS`]: transfers and streams.
    Long,
}

/// Which of the plugin's pipes carries bulk bytes and is made bigger (1 MiB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    Default,
    /// stdin: a streamed request body (upload chunks, WebSocket uploads).
    In,
    /// stdout: the answer (downloads).
    Out,
}

/// Whether the call is reached over a WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebSocket {
    No,
    /// Only as a WebSocket: a stream of messages (`jobs.follow`).
    Only,
    /// Also as a WebSocket: a `GET` upgrade on its path carries the body as
    /// messages (the `WEBSOCKET_V1` upload).
    Also,
}

/// One call.
#[derive(Debug, PartialEq, Eq)]
pub struct Call {
    pub name: &'static str,
    /// The HTTP method and the path under `/ucloud/`, where `{P}` is the provider.
    pub method: &'static str,
    pub path: &'static str,
    pub runs_as: RunsAs,
    /// The call whose transfer token the dispatcher mints for this one's plugin.
    pub mints: Option<&'static str>,
    pub limit: Limit,
    pub pipe: Pipe,
    /// Called by browsers: answers and errors carry CORS headers, and a `POST`
    /// call also answers the browser's preflight `OPTIONS`.
    pub cors: bool,
    pub websocket: WebSocket,
    /// Its transfer token is a session identifier: good for minutes, not hours,
    /// used once (the dispatcher marks it before the plugin starts), and bound to
    /// the one job or folder the minting request named (`subject`).
    pub once: bool,
    /// Served on a job's own web host (`app-J-R.<web_domain>`), never on the
    /// provider's: its token is bound to that job and rank.
    pub app: bool,
}

/// The common case; rows spell out what differs.
const fn call(
    method: &'static str,
    path: &'static str,
    name: &'static str,
    runs_as: RunsAs,
) -> Call {
    Call {
        name,
        method,
        path,
        runs_as,
        mints: None,
        limit: Limit::Default,
        pipe: Pipe::Default,
        cors: false,
        websocket: WebSocket::No,
        once: false,
        app: false,
    }
}

use RunsAs::{Service, Transfer, User};

/// Every call the module serves.
pub const CALLS: &[Call] = &[
    call(
        "GET",
        "{P}/integration/retrieveManifest",
        "integration.retrieveManifest",
        Service,
    ),
    call(
        "POST",
        "{P}/integration/connect",
        "integration.connect",
        Service,
    ),
    call("POST", "{P}/integration/init", "integration.init", Service),
    call(
        "POST",
        "{P}/integration/unlinked",
        "integration.unlinked",
        Service,
    ),
    call("POST", "{P}/jobs", "jobs.create", User),
    call("POST", "{P}/jobs/terminate", "jobs.terminate", User),
    call("POST", "{P}/jobs/extend", "jobs.extend", User),
    call("POST", "{P}/jobs/suspend", "jobs.suspend", User),
    call("POST", "{P}/jobs/unsuspend", "jobs.unsuspend", User),
    call("POST", "{P}/jobs/updateAcl", "jobs.updateAcl", User),
    call("POST", "{P}/jobs/verify", "jobs.verify", User),
    call(
        "GET",
        "{P}/jobs/retrieveProducts",
        "jobs.retrieveProducts",
        Service,
    ),
    Call {
        limit: Limit::Long,
        websocket: WebSocket::Only,
        ..call("GET", "jobs.provider.{P}/websocket", "jobs.follow", User)
    },
    // A terminal: the core asks for a session, the browser opens jobs.shell with it.
    Call {
        mints: Some("jobs.shell"),
        ..call(
            "POST",
            "{P}/jobs/interactiveSession",
            "jobs.interactiveSession",
            User,
        )
    },
    Call {
        mints: Some("jobs.shell"),
        ..call(
            "POST",
            "{P}/jobs/openTerminalInFolder",
            "jobs.openTerminalInFolder",
            User,
        )
    },
    call("POST", "{P}/files/browse", "files.browse", User),
    call("POST", "{P}/files/retrieve", "files.retrieve", User),
    call("POST", "{P}/files/move", "files.move", User),
    call("POST", "{P}/files/copy", "files.copy", User),
    call("POST", "{P}/files/trash", "files.trash", User),
    call("POST", "{P}/files/emptyTrash", "files.emptyTrash", User),
    call("POST", "{P}/files/search", "files.search", User),
    call("POST", "{P}/files/folder", "files.createFolder", User),
    Call {
        mints: Some("files.upload"),
        ..call("POST", "{P}/files/upload", "files.createUpload", User)
    },
    Call {
        mints: Some("files.download"),
        ..call("POST", "{P}/files/download", "files.createDownload", User)
    },
    call("DELETE", "{P}/files", "files.delete", User),
    // The same path as files.delete: a GET upgrade here is the search stream.
    Call {
        websocket: WebSocket::Only,
        ..call("GET", "{P}/files", "files.streamingSearch", User)
    },
    call(
        "POST",
        "{P}/files/collections",
        "files.collections.create",
        User,
    ),
    call(
        "DELETE",
        "{P}/files/collections",
        "files.collections.delete",
        User,
    ),
    call(
        "GET",
        "{P}/files/collections/retrieveProducts",
        "files.collections.retrieveProducts",
        Service,
    ),
    call(
        "POST",
        "{P}/files/collections/rename",
        "files.collections.rename",
        User,
    ),
    call(
        "POST",
        "{P}/files/collections/updateAcl",
        "files.collections.updateAcl",
        User,
    ),
    call(
        "POST",
        "{P}/files/collections/verify",
        "files.collections.verify",
        User,
    ),
    call("POST", "{P}/shares", "shares.create", User),
    call("DELETE", "{P}/shares", "shares.delete", User),
    call("POST", "{P}/ssh/keyUploaded", "ssh.keyUploaded", User),
    Call {
        limit: Limit::Long,
        pipe: Pipe::Out,
        cors: true,
        ..call("GET", "{P}/download", "files.download", Transfer)
    },
    Call {
        limit: Limit::Long,
        pipe: Pipe::In,
        cors: true,
        websocket: WebSocket::Also,
        ..call("POST", "{P}/upload", "files.upload", Transfer)
    },
    Call {
        limit: Limit::Long,
        websocket: WebSocket::Only,
        once: true,
        ..call("GET", "{P}/websocket", "jobs.shell", Transfer)
    },
    // A job's web interface, on its own host: the browser comes with the link
    // jobs.interactiveSession made (single-use), which is exchanged for a cookie
    // (a token for jobs.web) that every later connection shows.
    Call {
        once: true,
        app: true,
        mints: Some("jobs.web"),
        ..call("GET", "{P}/app/authorize", "jobs.webAuthorize", Transfer)
    },
    Call {
        limit: Limit::Long,
        pipe: Pipe::Out,
        app: true,
        ..call("GET", "{P}/app", "jobs.web", Transfer)
    },
];

pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
pub const LONG_TIMEOUT_SECS: u64 = 6 * 3600;

impl Call {
    /// Whether `rest` (a normalised path without `/ucloud/`) is this call's path
    /// for provider `provider`.
    pub fn path_is(&self, rest: &str, provider: &str) -> bool {
        let (before, after) = self.path.split_once("{P}").unwrap_or((self.path, ""));
        rest.strip_prefix(before)
            .and_then(|r| r.strip_prefix(provider))
            .is_some_and(|r| r == after)
    }
}

/// The row of a call.
pub fn find(name: &str) -> Option<&'static Call> {
    CALLS.iter().find(|c| c.name == name)
}

pub fn is_service_call(call: &str) -> bool {
    find(call).is_some_and(|c| c.runs_as == Service)
}

pub fn is_transfer_call(call: &str) -> bool {
    find(call).is_some_and(|c| c.runs_as == Transfer)
}

/// Whether a call's default time limit is [`LONG_TIMEOUT_SECS`].
pub fn is_long(call: &str) -> bool {
    find(call).is_some_and(|c| c.limit == Limit::Long)
}

/// The call a transfer token minted for `call`'s plugin is good for (redemption).
pub fn redeemed_by(call: &str) -> Option<&'static str> {
    find(call).and_then(|c| c.mints)
}

/// Whether `call`'s transfer token is a single-use session identifier.
pub fn is_once(call: &str) -> bool {
    find(call).is_some_and(|c| c.once)
}

/// Whether `call` is served on a job's web host.
pub fn is_app(call: &str) -> bool {
    find(call).is_some_and(|c| c.app)
}

/// Whether `call`'s tokens are bound to a subject (a job or folder).
pub fn is_bound(call: &str) -> bool {
    is_once(call) || is_app(call)
}

/// The names of the calls that run as `who`, worked out when compiled.
const fn names_of<const N: usize>(who: RunsAs) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < CALLS.len() {
        if CALLS[i].runs_as as u8 == who as u8 {
            out[n] = CALLS[i].name;
            n += 1;
        }
        i += 1;
    }
    out
}

const fn count_of(who: RunsAs) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < CALLS.len() {
        if CALLS[i].runs_as as u8 == who as u8 {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Calls that carry no end user: they run as the site's service account.
pub const SERVICE_CALLS: &[&str] = &names_of::<{ count_of(Service) }>(Service);

/// Calls whose only credential is a transfer token the dispatcher issued.
pub const TRANSFER_CALLS: &[&str] = &names_of::<{ count_of(Transfer) }>(Transfer);

/// A call name is one or more dot-separated words of ASCII letters: nothing that
/// could name a path outside the plugin directory or a hidden file.
pub fn is_valid_call_name(call: &str) -> bool {
    !call.is_empty()
        && call.len() <= 64
        && call.contains('.')
        && call
            .split('.')
            .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_names_cannot_leave_the_plugin_directory() {
        assert!(is_valid_call_name("files.browse"));
        assert!(is_valid_call_name("files.collections.retrieveProducts"));
        for bad in [
            "",
            "files",
            "../files.browse",
            "files/browse",
            ".files.browse",
            "files..browse",
            "files.browse.",
            "files.br\0owse",
            "files.brówse",
            "files.browse ",
            "a.b-c",
        ] {
            assert!(!is_valid_call_name(bad), "{bad:?} accepted");
        }
        assert!(!is_valid_call_name(&"a.".repeat(40)));
    }

    #[test]
    fn the_table_is_consistent() {
        for (i, c) in CALLS.iter().enumerate() {
            assert!(is_valid_call_name(c.name), "{}", c.name);
            assert!(
                c.path.contains("{P}") && !c.path.ends_with('/'),
                "{}",
                c.name
            );
            assert!(
                CALLS[..i]
                    .iter()
                    .all(|o| o.name != c.name || o.path == c.path),
                "{}: one call, one path",
                c.name
            );
            assert!(
                CALLS[..i]
                    .iter()
                    .all(|o| o.path != c.path || o.method != c.method),
                "{} {}: two calls",
                c.method,
                c.path
            );
            // A minted token is only good for a call that takes one.
            if let Some(m) = c.mints {
                assert!(is_transfer_call(m), "{} mints for {m}", c.name);
            }
            // The data channel is the browser's: its answers need CORS to be read
            // (a WebSocket is not under CORS: its credential is in its URL).
            // A web interface is its own origin, not UCloud's.
            let browser_reads = c.runs_as == Transfer && c.websocket != WebSocket::Only && !c.app;
            assert_eq!(c.cors, browser_reads, "{}", c.name);
            // Only a data-channel call can take a single-use session or be a web
            // interface's.
            assert!(!c.once || c.runs_as == Transfer, "{}", c.name);
            assert!(!c.app || c.runs_as == Transfer && !c.cors, "{}", c.name);
        }
    }

    #[test]
    fn what_the_table_says() {
        assert_eq!(
            SERVICE_CALLS,
            [
                "integration.retrieveManifest",
                "integration.connect",
                "integration.init",
                "integration.unlinked",
                "jobs.retrieveProducts",
                "files.collections.retrieveProducts",
            ]
        );
        assert_eq!(
            TRANSFER_CALLS,
            [
                "files.download",
                "files.upload",
                "jobs.shell",
                "jobs.webAuthorize",
                "jobs.web"
            ]
        );
        assert!(is_app("jobs.web") && is_bound("jobs.web") && !is_once("jobs.web"));
        assert!(is_bound("jobs.shell") && !is_app("jobs.shell"));
        assert!(is_once("jobs.shell") && !is_once("files.download"));
        assert_eq!(redeemed_by("jobs.interactiveSession"), Some("jobs.shell"));
        assert!(find("jobs.shell").unwrap().path_is("hpc/websocket", "hpc"));
        assert!(is_service_call("integration.init") && !is_service_call("files.browse"));
        assert!(is_transfer_call("files.upload") && !is_transfer_call("files.createUpload"));
        assert_eq!(redeemed_by("files.createDownload"), Some("files.download"));
        assert_eq!(redeemed_by("files.createUpload"), Some("files.upload"));
        assert_eq!(redeemed_by("files.download"), None);
        for long in ["files.download", "files.upload", "jobs.follow"] {
            assert!(is_long(long), "{long}");
        }
        assert!(!is_long("files.browse") && !is_long("no.such"));
        let follow = find("jobs.follow").unwrap();
        assert!(follow.path_is("jobs.provider.hpc/websocket", "hpc"));
        assert!(!follow.path_is("jobs.provider.hp/websocket", "hpc"));
        assert!(find("jobs.create").unwrap().path_is("hpc/jobs", "hpc"));
        assert!(!find("jobs.create").unwrap().path_is("hpc/jobs/x", "hpc"));
    }
}
