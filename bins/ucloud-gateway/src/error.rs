//! Every way a request can fail at the gateway, and the UCloud error it becomes.
//! Statuses 449 and 503 never come from here: UCloud reads them as "re-run
//! integration/init and retry", which none of our own faults calls for.

use ucloud_http::server::HttpError;
use ucloud_wire::error::Failure;

#[derive(Debug)]
pub enum Reject {
    /// The installation is wrong (no_new_privs, site.conf, key); the text says what to fix.
    Misconfigured(String),
    /// The HTTP layer refused the request.
    Http(HttpError),
    BadRequest(String),
    Unauthorized(String),
    NotFound(String),
    /// The dispatcher could not be started or talked to.
    DispatchFailed(String),
    /// The dispatcher or plugin reported a failure (its stderr's failure line).
    Plugin(Failure),
    /// The call ran into its time limit (SIGALRM).
    Timeout(String),
    /// The plugin died from a signal other than its alarm.
    Crashed(i32),
    /// The plugin exited 0 but its answer breaks the contract.
    BadOutput(String),
}

impl Reject {
    pub fn failure(&self) -> Failure {
        match self {
            Reject::Misconfigured(why) => Failure::new(500, "MISCONFIGURED", why.clone()),
            Reject::Http(e) => {
                let code = match e {
                    HttpError::HeadTooLarge => "HEADERS_TOO_LARGE",
                    HttpError::BodyTooLarge => "BODY_TOO_LARGE",
                    HttpError::Timeout => "REQUEST_TIMEOUT",
                    _ => "BAD_REQUEST",
                };
                Failure::new(e.status().unwrap_or(400), code, e.to_string())
            }
            Reject::BadRequest(why) => Failure::new(400, "BAD_REQUEST", why.clone()),
            Reject::Unauthorized(why) => Failure::new(401, "UNAUTHORIZED", why.clone()),
            Reject::NotFound(why) => Failure::new(404, "NOT_FOUND", why.clone()),
            Reject::DispatchFailed(why) => Failure::new(500, "DISPATCH_FAILED", why.clone()),
            Reject::Plugin(f) => f.clone(),
            Reject::Timeout(call) => Failure::new(
                504,
                "TIMEOUT",
                format!("{call} did not finish within its time limit"),
            ),
            Reject::Crashed(sig) => Failure::new(
                500,
                "PLUGIN_CRASHED",
                format!("the plugin was killed by signal {sig}"),
            ),
            Reject::BadOutput(why) => Failure::new(500, "PLUGIN_FAILED", why.clone()),
        }
    }
}
