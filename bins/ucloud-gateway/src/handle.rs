//! One request, from route to answer: the health check, the bearer-token gate, the
//! UCloud user, the request JSON, and the dispatcher.

use crate::dispatch::{self, BodyStream, Fitness, Job, Relayed, Spare, StreamEnd};
use crate::error::Reject;
use crate::normalise::normalise;
use crate::respond;
use crate::route::{route, Route};
use serde_json::{Map, Value};
use std::cell::{Cell, OnceCell, RefCell};
use std::io::Write;
use std::time::Instant;
use ucloud_http::server::{query_pairs, write_response, Request};
use ucloud_wire::config::{SiteConfig, UserMode};
use ucloud_wire::envelope::{Credential, Envelope, MAX_TOKEN};
use ucloud_wire::names::UcloudName;
use ucloud_wire::token::{self, TokenPolicy, UcloudKey, VerifiedToken};
use ucloud_wire::{calls, paths};

/// What the process learned at start; shared by every request of the connection.
pub struct Site {
    /// `Err`: every request gets 500 `MISCONFIGURED` with this text.
    pub config: Result<SiteConfig, String>,
    /// Parsed on first use, once per process.
    pub key: OnceCell<Result<UcloudKey, String>>,
    pub dispatcher: String,
    /// The last token that verified, and what it said: UCloud reuses one token for
    /// many calls, and the signature over the same bytes need not be checked twice.
    /// Its expiry is still checked on every use.
    pub last_token: RefCell<Option<(String, VerifiedToken)>>,
    /// The next request's dispatcher, started while the connection is idle.
    pub spare: RefCell<Option<Spare>>,
    /// Requests of this connection that went to a dispatcher.
    pub dispatched: Cell<u32>,
    /// Set once a spare ended on its own: the next would only do the same.
    pub spares_off: Cell<bool>,
}

/// A connection gets a spare dispatcher once it has carried this many requests: one
/// that carries a single request (and then closes) would only waste the spare.
const SPARE_AFTER: u32 = 2;

impl Site {
    /// Starts the next request's dispatcher now, while the connection waits for that
    /// request: a kept-alive connection then finds its dispatcher past start-up.
    fn prepare_spare(&self) {
        let wanted = self.config.as_ref().is_ok_and(|c| c.spare_dispatcher);
        if !wanted || self.spares_off.get() || self.spare.borrow().is_some() {
            return;
        }
        match Spare::start(&self.dispatcher) {
            Ok(spare) => *self.spare.borrow_mut() = Some(spare),
            // The request that comes next starts its own and reports the fault.
            Err(e) => ucloud_wire::log_warn!("ucloud-gateway: no spare dispatcher: {e}"),
        }
    }

    /// The spare, if it can still take a request; one that cannot is let go.
    fn take_spare(&self) -> Option<Spare> {
        let mut spare = self.spare.borrow_mut().take()?;
        match spare.fitness() {
            Fitness::Ready => return Some(spare),
            Fitness::TooOld => {}
            Fitness::Ended(why) => {
                ucloud_wire::log_warn!(
                    "ucloud-gateway: a spare dispatcher ended before its request ({why}); \
                     no more spares on this connection"
                );
                self.spares_off.set(true);
            }
        }
        spare.release();
        None
    }

    /// When the spare must be let go, if there is one.
    pub fn spare_expires(&self) -> Option<Instant> {
        self.spare.borrow().as_ref().map(Spare::expires)
    }

    /// Lets the spare go if it is too old to be used.
    pub fn release_old_spare(&self) {
        if self.spare_expires().is_some_and(|t| t <= Instant::now()) {
            self.release_spare();
        }
    }

    /// Lets the spare go (fd 3 closed unwritten: it exits without a record).
    pub fn release_spare(&self) {
        if let Some(spare) = self.spare.borrow_mut().take() {
            spare.release();
        }
    }

    fn key(&self) -> Result<&UcloudKey, Reject> {
        let key = self.key.get_or_init(|| {
            let path = paths::ucloud_public_key();
            UcloudKey::load(&path)
                .map_err(|e| format!("cannot use UCloud's public key {path}: {e}"))
        });
        key.as_ref()
            .map_err(|why| Reject::Misconfigured(why.clone()))
    }
}

/// What the access log says about one request.
pub struct Outcome {
    pub call: &'static str,
    pub status: u16,
    /// The connection must close after this answer.
    pub close: bool,
    /// A note for the log (e.g. why a relay broke off).
    pub note: Option<String>,
}

pub fn handle(site: &Site, req: Request, out: &mut impl Write) -> Outcome {
    let gz = respond::accepts_gzip(&req);
    let keep_alive = req.keep_alive;
    let mut call = "-";
    let result = (|| -> Result<Outcome, Reject> {
        let config = site
            .config
            .as_ref()
            .map_err(|why| Reject::Misconfigured(why.clone()))?;
        match route(&req.method, req.path(), &config.provider) {
            Route::Health => {
                let status = send(out, 200, br#"{"status":"ok"}"#, gz, keep_alive);
                Ok(Outcome {
                    call: "health",
                    status,
                    close: false,
                    note: None,
                })
            }
            Route::ConnectPage => Ok(Outcome {
                call: "connect.page",
                status: crate::connect_page::serve(&req, out, keep_alive),
                close: false,
                note: None,
            }),
            Route::NotFound(why) => Err(Reject::NotFound(why)),
            // serve() hands upgrades to follow.rs before they get here.
            Route::WebSocket(c) => {
                call = c;
                Err(Reject::BadRequest(format!(
                    "{c} is a WebSocket endpoint: send a WebSocket upgrade request"
                )))
            }
            Route::NotImplemented(c) => {
                call = c;
                Err(Reject::NotImplemented(format!(
                    "{c} (the WebSocket log stream) is not served by this version"
                )))
            }
            Route::Api(c) => {
                call = c;
                let envelope = api_envelope(site, config, c, &req)?;
                Ok(relay(site, c, envelope, None, None, gz, keep_alive, out))
            }
            Route::Transfer(c) => {
                call = c;
                let Some(transfer) = transfer_token(&req)? else {
                    if req.method == "OPTIONS" {
                        let status = preflight(out, keep_alive);
                        return Ok(Outcome {
                            call: c,
                            status,
                            close: false,
                            note: None,
                        });
                    }
                    return Err(Reject::Unauthorized(format!(
                        "{c} needs a transfer token (query parameter token or header Chunked-Upload-Token)"
                    )));
                };
                let mut request = transfer_request(&req);
                if req.method == "POST" {
                    request["headers"]["content-length"] =
                        Value::String(req.body.len().to_string());
                }
                let envelope = Envelope {
                    call: c.to_string(),
                    credential: Credential::Transfer(transfer),
                    user: None,
                    request,
                };
                let body = (req.method == "POST").then(|| req.body.clone());
                Ok(relay(site, c, envelope, body, None, false, keep_alive, out))
            }
        }
    })();
    match result {
        Ok(outcome) => outcome,
        Err(reject) => {
            let note = Some(reject.failure().why);
            match respond::send_reject_with(out, &reject, gz, keep_alive, cors_for(call)) {
                Ok(status) => Outcome {
                    call,
                    status,
                    close: false,
                    note,
                },
                Err(_) => Outcome {
                    call,
                    status: reject.failure().status,
                    close: true,
                    note: Some("client gone".into()),
                },
            }
        }
    }
}

/// The data channel is called by browsers, which hide an answer without CORS
/// headers from the page: its errors carry them too.
fn cors_for(call: &str) -> &'static [(&'static str, &'static str)] {
    if call == "files.download" || call == "files.upload" {
        respond::DATA_CHANNEL_CORS
    } else {
        &[]
    }
}

fn send(out: &mut impl Write, status: u16, body: &[u8], gz: bool, keep_alive: bool) -> u16 {
    // A failed write shows up as a closed connection on the next read.
    let _ = respond::send_json(out, status, body, gz, keep_alive);
    status
}

/// CORS preflight of the upload URL: browsers send it without credentials.
fn preflight(out: &mut impl Write, keep_alive: bool) -> u16 {
    let mut headers = vec![
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Allow-Methods", "POST, OPTIONS"),
        (
            "Access-Control-Allow-Headers",
            "Chunked-Upload-Token, Chunked-Upload-Offset, Chunked-Upload-Total-Size, UCloud-Username, Content-Type",
        ),
        ("Access-Control-Max-Age", "3600"),
    ];
    if !keep_alive {
        headers.push(("Connection", "close"));
    }
    let _ = write_response(out, 204, &headers, b"");
    204
}

#[allow(clippy::too_many_arguments)]
fn relay<'a>(
    site: &'a Site,
    call: &'static str,
    envelope: Envelope,
    stdin: Option<Vec<u8>>,
    stream: Option<BodyStream<'a>>,
    gzip: bool,
    keep_alive: bool,
    out: &mut impl Write,
) -> Outcome {
    let binds = (call == "jobs.create").then(|| envelope.request.clone());
    let job = Job {
        binds,
        dispatcher: &site.dispatcher,
        spare: site.take_spare(),
        call,
        envelope: envelope.encode(),
        stdin,
        stream,
        gzip,
        keep_alive,
    };
    let outcome = match dispatch::run(job, out) {
        Relayed::Answered { status, reusable } => Outcome {
            call,
            status,
            close: !reusable,
            note: None,
        },
        Relayed::Failed(reject) => {
            let failure = reject.failure();
            let close =
                respond::send_reject_with(out, &reject, gzip, keep_alive, cors_for(call)).is_err();
            Outcome {
                call,
                status: failure.status,
                close,
                note: Some(failure.why),
            }
        }
        Relayed::Broken { status, why } => Outcome {
            call,
            status,
            close: true,
            note: Some(why),
        },
    };
    site.dispatched.set(site.dispatched.get().saturating_add(1));
    if keep_alive && !outcome.close && site.dispatched.get() >= SPARE_AFTER {
        site.prepare_spare();
    }
    outcome
}

/// The request's bearer token and what it says, once verified (or found in the
/// one-entry cache). Also the gate of the WebSocket upgrade (follow.rs).
pub(crate) fn verify_bearer<'r>(
    site: &Site,
    config: &SiteConfig,
    req: &'r Request,
) -> Result<(&'r str, VerifiedToken), Reject> {
    let bearer = bearer_token(req)?;
    let key = site.key()?;
    let policy = TokenPolicy {
        max_lifetime: config.token_max_lifetime,
        skew: config.clock_skew,
    };
    let claim = match &config.user_mode {
        UserMode::Strict { claim } => Some(claim.as_str()),
        UserMode::Header => None,
    };
    let now = ucloud_wire::now_ms() / 1000;
    // Same rule as token::verify: valid while now < exp + skew. The other checks
    // (signature, claims, iat, nbf) passed for these very bytes already.
    let cached = site.last_token.borrow().as_ref().and_then(|(t, v)| {
        (t == bearer && now < v.expires_at.saturating_add(config.clock_skew)).then(|| v.clone())
    });
    let verified = match cached {
        Some(v) => v,
        None => {
            let v = token::verify(bearer, key, &policy, claim, now)
                .map_err(|e| Reject::Unauthorized(e.to_string()))?;
            *site.last_token.borrow_mut() = Some((bearer.to_string(), v.clone()));
            v
        }
    };
    Ok((bearer, verified))
}

fn api_envelope(
    site: &Site,
    config: &SiteConfig,
    call: &'static str,
    req: &Request,
) -> Result<Envelope, Reject> {
    let (bearer, verified) = verify_bearer(site, config, req)?;
    let user = match req.header("ucloud-username") {
        Some(value) => Some(
            UcloudName::from_header(value.as_bytes())
                .map_err(|e| Reject::BadRequest(e.to_string()))?,
        ),
        None => match verified.user {
            Some(name) => Some(
                UcloudName::new(&name)
                    .map_err(|e| Reject::BadRequest(format!("token user claim: {e}")))?,
            ),
            None if calls::is_service_call(call) => None,
            None => {
                return Err(Reject::BadRequest(format!(
                    "{call} acts for a UCloud user: the UCloud-Username header is missing"
                )))
            }
        },
    };
    let mut request = match req.method.as_str() {
        "GET" => query_object(req, None),
        _ if req.body.iter().all(u8::is_ascii_whitespace) => Value::Object(Map::new()),
        _ => serde_json::from_slice(&req.body)
            .map_err(|e| Reject::BadRequest(format!("the request body is not JSON: {e}")))?,
    };
    normalise(&mut request);
    Ok(Envelope {
        call: call.to_string(),
        credential: Credential::Bearer(bearer.to_string()),
        user,
        request,
    })
}

fn bearer_token(req: &Request) -> Result<&str, Reject> {
    let value = req.header("authorization").ok_or_else(|| {
        Reject::Unauthorized("no Authorization header: UCloud's bearer token is required".into())
    })?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(Reject::Unauthorized(
                "the Authorization header is not of the form \"Bearer <token>\"".into(),
            ))
        }
    };
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(Reject::Unauthorized(format!(
            "the bearer token is empty or longer than {MAX_TOKEN} bytes"
        )));
    }
    Ok(token)
}

pub(crate) fn transfer_token(req: &Request) -> Result<Option<String>, Reject> {
    let token = req
        .query_param("token")
        .or_else(|| req.header("chunked-upload-token").map(str::to_string));
    match token {
        Some(t) if t.is_empty() || t.len() > MAX_TOKEN => Err(Reject::Unauthorized(format!(
            "the transfer token is empty or longer than {MAX_TOKEN} bytes"
        ))),
        // Only a token of the right shape may start a (setuid) dispatcher.
        Some(t) => {
            match ucloud_wire::token::transfer_token_looks_valid(&t, ucloud_wire::now_ms() / 1000) {
                Ok(()) => Ok(Some(t)),
                Err(e) => Err(Reject::Unauthorized(e.to_string())),
            }
        }
        None => Ok(None),
    }
}

/// Query parameters as a JSON object of strings (the first of repeated names wins).
fn query_object(req: &Request, skip: Option<&str>) -> Value {
    let mut map = Map::new();
    if let Some(query) = req.query() {
        for (k, v) in query_pairs(query) {
            if Some(k.as_str()) != skip && !map.contains_key(&k) {
                map.insert(k, Value::String(v));
            }
        }
    }
    Value::Object(map)
}

/// The data channel's request (provisional until the transfer calls are served):
/// the method, the query without the token, and the headers a transfer needs.
pub(crate) fn transfer_request(req: &Request) -> Value {
    let mut headers = Map::new();
    for name in [
        "chunked-upload-offset",
        "chunked-upload-total-size",
        "range",
        "content-type",
    ] {
        if let Some(v) = req.header(name) {
            headers.insert(name.to_string(), Value::String(v.to_string()));
        }
    }
    let mut map = Map::new();
    map.insert("method".into(), Value::String(req.method.clone()));
    map.insert("query".into(), query_object(req, Some("token")));
    map.insert("headers".into(), Value::Object(headers));
    Value::Object(map)
}

/// Whether this request's body is streamed to the plugin instead of read first:
/// an upload chunk with a Content-Length (up to 32,000,000 bytes, UCloud's largest).
pub fn streams_body(site: &Site, req: &Request) -> bool {
    let Ok(config) = site.config.as_ref() else {
        return false;
    };
    req.method == "POST"
        && matches!(
            route(&req.method, req.path(), &config.provider),
            Route::Transfer("files.upload")
        )
}

/// An upload chunk: the body goes from the client to the plugin's stdin as it
/// arrives, never held whole. `length` is the request's Content-Length.
pub fn handle_stream(
    site: &Site,
    req: Request,
    length: usize,
    copy: &mut dyn FnMut(&mut dyn Write) -> StreamEnd,
    out: &mut impl Write,
) -> Outcome {
    let call = "files.upload";
    let keep_alive = req.keep_alive;
    let transfer = match transfer_token(&req).and_then(|t| {
        t.ok_or_else(|| {
            Reject::Unauthorized(format!(
                "{call} needs a transfer token (query parameter token or header Chunked-Upload-Token)"
            ))
        })
    }) {
        Ok(t) => t,
        Err(reject) => {
            // The body was not read: the connection cannot carry another request.
            let _ = respond::send_reject_with(out, &reject, false, false, cors_for(call));
            return Outcome {
                call,
                status: reject.failure().status,
                close: true,
                note: Some(reject.failure().why),
            };
        }
    };
    let mut request = transfer_request(&req);
    request["headers"]["content-length"] = Value::String(length.to_string());
    let envelope = Envelope {
        call: call.to_string(),
        credential: Credential::Transfer(transfer),
        user: None,
        request,
    };
    relay(
        site,
        call,
        envelope,
        None,
        Some(copy),
        false,
        keep_alive,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            keep_alive: true,
        }
    }

    #[test]
    fn bearer_forms() {
        assert_eq!(
            bearer_token(&req("GET", "/", &[("authorization", "Bearer a.b.c")])).unwrap(),
            "a.b.c"
        );
        assert_eq!(
            bearer_token(&req("GET", "/", &[("authorization", "bearer  a.b.c ")])).unwrap(),
            "a.b.c"
        );
        for bad in ["Basic abc", "Bearer", "Bearer ", "a.b.c"] {
            assert!(
                bearer_token(&req("GET", "/", &[("authorization", bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(bearer_token(&req("GET", "/", &[])).is_err());
    }

    #[test]
    fn query_and_transfer_requests() {
        // Shaped like the dispatcher's tokens (HS256, our typ, exp in 2286); the
        // signature is not checked here.
        const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXAiOiJ1Y2xvdWQtaW0tdHJhbnNmZXIiLCJleHAiOjk5OTk5OTk5OTl9.c2ln";
        let r = req(
            "GET",
            &format!("/x?id=a%2Fb&id=second&token={TOKEN}&n=1"),
            &[("range", "bytes=0-1")],
        );
        assert_eq!(
            query_object(&r, None),
            serde_json::json!({"id": "a/b", "token": TOKEN, "n": "1"})
        );
        assert_eq!(transfer_token(&r).unwrap().as_deref(), Some(TOKEN));
        let t = transfer_request(&r);
        assert_eq!(t["query"], serde_json::json!({"id": "a/b", "n": "1"}));
        assert_eq!(t["headers"]["range"], "bytes=0-1");
        let u = req("POST", "/x", &[("chunked-upload-token", TOKEN)]);
        assert_eq!(transfer_token(&u).unwrap().as_deref(), Some(TOKEN));
        assert_eq!(transfer_token(&req("POST", "/x", &[])).unwrap(), None);
        for garbage in ["secret", "a.b.c"] {
            let g = req("POST", "/x", &[("chunked-upload-token", garbage)]);
            assert!(
                transfer_token(&g).is_err(),
                "{garbage} would start a dispatcher"
            );
        }
    }
}
