//! The life of one client connection: read each request, hand it on (to an upgrade,
//! upgrade/, or to the request handler, handle.rs), log it, and close the
//! connection when it idles too long or a request ends it.

use crate::conn::{ClientIn, ClientOut};
use crate::connection::Connection;
use crate::credential::shows_credential;
use crate::error::Reject;
use crate::respond::{self, Outcome};
use crate::{app, handle, proxy, relay, upgrade};
use std::time::{Duration, Instant};
use ucloud_http::server::{HttpError, Limits, Reader};

/// How long a client may take to send a request body (up to `Limits::max_body`).
const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest upload chunk the data channel streams (UCloud's largest chunk).
const MAX_STREAMED: usize = 32_000_000;

/// The connection's deadlines (ucloud-gateway(8), --idle-timeout, --head-timeout).
#[derive(Clone, Copy)]
pub struct Timeouts {
    pub idle: Duration,
    pub head: Duration,
}

/// Serves requests until the client leaves, idles too long, or a request ends
/// the connection.
pub fn serve(conn: &Connection, client_in: ClientIn, out: &mut ClientOut, timeouts: Timeouts) {
    let limits = Limits::default();
    // Heads may announce an upload chunk (streamed, never held); every other body
    // is held and stays under `limits.max_body`, checked once the route is known.
    let head_limits = Limits {
        max_body: MAX_STREAMED,
        ..Limits::default()
    };
    let mut reader = Reader::new(client_in);
    // Moved on only by a request with an accepted credential (main.rs, IDLE_TIMEOUT).
    let mut idle_until = Instant::now() + timeouts.idle;
    loop {
        // Also when requests come back to back (pipelined, or not for a dispatcher).
        conn.launcher.release_old_spare();
        if Instant::now() >= idle_until
            || reader.buffered().is_empty()
                && !next_request_comes(conn, reader.get_ref(), idle_until)
        {
            // Idle too long, or a broken descriptor: close without a word.
            return;
        }
        let started = Instant::now();
        reader.get_mut().deadline = Some(started + timeouts.head);
        let (mut req, body) = match reader.read_head(&head_limits, out) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => return refuse(out, e, "-", "-", started),
        };
        reader.get_mut().deadline = Some(Instant::now() + BODY_TIMEOUT);
        if let Some(app) = app::wanted(conn, &req) {
            conn.launcher.release_spare();
            let (method, path) = (req.method.clone(), req.path().to_string());
            let outcome = app::serve(conn, app, req, body, reader, out);
            log(&method, &path, &outcome, started);
            return;
        }
        if let Some(upgrade) = upgrade::wanted(conn, &req) {
            // The upgrade starts its own dispatcher; a spare would only wait.
            conn.launcher.release_spare();
            // The rest of the connection is the upgrade's, bytes already read included.
            let leftover = reader.buffered().to_vec();
            let outcome = upgrade::serve(upgrade, conn, &req, leftover, reader.get_mut(), out);
            log(&req.method, req.path(), &outcome, started);
            return;
        }
        let credential = shows_credential(&req);
        if let Some((call, n)) = handle::streams_body(conn, &req).zip(body.length()) {
            let (method, path) = (req.method.clone(), req.path().to_string());
            let mut copy = |sink: &mut dyn std::io::Write| match reader.copy_body(n, sink) {
                Ok(_) => relay::StreamEnd::Done,
                Err(e) => relay::StreamEnd::ClientGone(format!("upload body: {e}")),
            };
            let outcome = handle::handle_stream(conn, call, req, n, &mut copy, out);
            log(&method, &path, &outcome, started);
            if outcome.close {
                return;
            }
            if credential && accepted(outcome.status) {
                idle_until = Instant::now() + timeouts.idle;
            }
            reader.get_mut().deadline = None;
            continue;
        }
        if body.length().is_some_and(|n| n > limits.max_body) {
            return refuse(
                out,
                HttpError::BodyTooLarge,
                &req.method,
                req.path(),
                started,
            );
        }
        if !body.is_empty() {
            match reader.read_body(body, &limits) {
                Ok(bytes) => req.body = bytes,
                Err(e) => return refuse(out, e, &req.method, req.path(), started),
            }
        }
        reader.get_mut().deadline = None;
        let (method, path, keep_alive) =
            (req.method.clone(), req.path().to_string(), req.keep_alive);
        let outcome = handle::handle(conn, req, out);
        log(&method, &path, &outcome, started);
        if outcome.close || !keep_alive {
            return;
        }
        if credential && accepted(outcome.status) {
            idle_until = Instant::now() + timeouts.idle;
        }
    }
}

/// Waits until `idle_until` for the next request, letting the spare dispatcher go
/// once it is too old to be used.
fn next_request_comes(conn: &Connection, client: &ClientIn, idle_until: Instant) -> bool {
    loop {
        let until = conn
            .launcher
            .spare_expires()
            .map_or(idle_until, |t| t.min(idle_until));
        match client.wait_readable(until.saturating_duration_since(Instant::now())) {
            Ok(true) => return true,
            Ok(false) if Instant::now() < idle_until => conn.launcher.release_spare(),
            _ => return false,
        }
    }
}

/// Whether the gateway took the credential: the call was not refused for it.
fn accepted(status: u16) -> bool {
    status != 401 && status != 403
}

/// Answers an HTTP-level error (when it has a status) and ends the connection.
fn refuse(out: &mut ClientOut, e: HttpError, method: &str, path: &str, started: Instant) {
    let why = e.to_string();
    let status = match e.status() {
        Some(_) => respond::send_reject(out, &Reject::Http(e), false, false).unwrap_or(0),
        None => 0,
    };
    let outcome = Outcome {
        call: "-",
        status,
        close: true,
        note: Some(why),
    };
    log(method, path, &outcome, started);
}

/// One line per request: method, path (never the query: it may hold a transfer
/// token), call, status, milliseconds, and a note.
fn log(method: &str, path: &str, outcome: &Outcome, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut note = outcome
        .note
        .as_deref()
        .map(|n| n.replace(['\n', '\r'], " "))
        .unwrap_or_default();
    if let Some(client) = proxy::client() {
        note = if note.is_empty() {
            format!("client={client}")
        } else {
            format!("client={client} {note}")
        };
    }
    let (call, status) = (outcome.call, outcome.status);
    let mut line = format!("ucloud-gateway: {method} {path} {call} {status} {ms:.1}ms");
    if !note.is_empty() {
        line.push(' ');
        line.push_str(&note);
    }
    // A refusal (4xx) is the gateway doing its job; a 5xx is a fault to look at.
    if status >= 500 {
        ucloud_wire::log_err!("{line}");
    } else {
        ucloud_wire::log_info!("{line}");
    }
}
