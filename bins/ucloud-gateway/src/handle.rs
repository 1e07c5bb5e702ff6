//! One request that is not an upgrade, from route to answer: the health check, the
//! connect page, a provider API call, a data-channel call, or an upload chunk
//! streamed to its plugin.

use crate::connection::Connection;
use crate::credential::{no_transfer_token, transfer_token, TOKEN_PLACES};
use crate::envelope;
use crate::error::Reject;
use crate::launch::Stdin;
use crate::relay::{self, BodyStream, Job, Relayed, StreamEnd};
use crate::respond::{self, Outcome};
use crate::route::{route, Route};
use std::io::Write;
use ucloud_http::server::{write_response, Request};
use ucloud_wire::calls::{Call, Pipe, RunsAs, WebSocket};
use ucloud_wire::envelope::Envelope;

pub fn handle(conn: &Connection, req: Request, out: &mut impl Write) -> Outcome {
    let gz = respond::accepts_gzip(&req);
    let keep_alive = req.keep_alive;
    let mut call = None;
    let result = (|| -> Result<Outcome, Reject> {
        let config = conn.config()?;
        match route(&req.method, req.path(), &config.provider) {
            Route::Health => {
                let status = send(out, 200, br#"{"status":"ok"}"#, gz, keep_alive);
                Ok(answered("health", status))
            }
            Route::ConnectPage => Ok(answered(
                "connect.page",
                crate::connect_page::serve(&req, out, keep_alive),
            )),
            Route::NotFound(why) => Err(Reject::NotFound(why)),
            Route::Call(c) => {
                call = Some(c);
                match (c.websocket, c.runs_as) {
                    // The connection hands upgrades to upgrade/ before they get here.
                    (WebSocket::Only, _) => Err(Reject::BadRequest(format!(
                        "{} is a WebSocket endpoint: send a WebSocket upgrade request",
                        c.name
                    ))),
                    (_, RunsAs::Transfer) => transfer(conn, c, &req, out),
                    (_, RunsAs::Service | RunsAs::User) => {
                        let envelope = envelope::api(conn, c, &req)?;
                        Ok(run(
                            conn,
                            c,
                            envelope,
                            Stdin::Closed,
                            None,
                            gz,
                            keep_alive,
                            out,
                        ))
                    }
                }
            }
        }
    })();
    match result {
        Ok(outcome) => outcome,
        Err(reject) => {
            let name = call.map_or("-", |c| c.name);
            let note = Some(reject.failure().why);
            match respond::send_reject_with(out, &reject, gz, keep_alive, cors_for(call)) {
                Ok(status) => Outcome {
                    call: name,
                    status,
                    close: false,
                    note,
                },
                Err(_) => Outcome {
                    call: name,
                    status: reject.failure().status,
                    close: true,
                    note: Some("client gone".into()),
                },
            }
        }
    }
}

fn answered(call: &'static str, status: u16) -> Outcome {
    Outcome {
        call,
        status,
        close: false,
        note: None,
    }
}

/// A data-channel call: its transfer token (or a browser's preflight without one).
fn transfer(
    conn: &Connection,
    call: &'static Call,
    req: &Request,
    out: &mut impl Write,
) -> Result<Outcome, Reject> {
    let keep_alive = req.keep_alive;
    let Some(token) = transfer_token(req)? else {
        if req.method == "OPTIONS" {
            return Ok(answered(call.name, preflight(out, keep_alive)));
        }
        return Err(no_transfer_token(call.name, TOKEN_PLACES));
    };
    let post = req.method == "POST";
    let envelope = envelope::transfer(call, req, token, post.then_some(req.body.len()));
    let stdin = match post {
        true => Stdin::Bytes(req.body.clone()),
        false => Stdin::Closed,
    };
    Ok(run(
        conn, call, envelope, stdin, None, false, keep_alive, out,
    ))
}

/// The data channel is called by browsers, which hide an answer without CORS
/// headers from the page: its errors carry them too.
fn cors_for(call: Option<&Call>) -> &'static [(&'static str, &'static str)] {
    if call.is_some_and(|c| c.cors) {
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

/// Launches the call's dispatcher and relays its answer; a failure before the
/// answer is answered here.
#[allow(clippy::too_many_arguments)]
pub fn run<'a>(
    conn: &'a Connection,
    call: &'static Call,
    envelope: Envelope,
    stdin: Stdin,
    stream: Option<BodyStream<'a>>,
    gzip: bool,
    keep_alive: bool,
    out: &mut impl Write,
) -> Outcome {
    let binds = (call.name == "jobs.create").then(|| envelope.request.clone());
    let job = Job {
        call,
        stream,
        gzip,
        keep_alive,
        binds,
    };
    let relayed = match conn.launcher.launch(call, envelope.encode(), stdin) {
        Ok(started) => relay::run(started, job, out),
        Err(e) => Relayed::Failed(Reject::DispatchFailed(e)),
    };
    let outcome = match relayed {
        Relayed::Answered { status, reusable } => Outcome {
            call: call.name,
            status,
            close: !reusable,
            note: None,
        },
        Relayed::Failed(reject) => {
            let failure = reject.failure();
            let close =
                respond::send_reject_with(out, &reject, gzip, keep_alive, cors_for(Some(call)))
                    .is_err();
            Outcome {
                call: call.name,
                status: failure.status,
                close,
                note: Some(failure.why),
            }
        }
        Relayed::Broken { status, why } => Outcome {
            call: call.name,
            status,
            close: true,
            note: Some(why),
        },
    };
    conn.launcher.done(keep_alive && !outcome.close);
    outcome
}

/// Whether this request's body is streamed to the plugin instead of read first:
/// a POST of a call whose stdin carries bulk bytes (an upload chunk, up to
/// 32,000,000 bytes, UCloud's largest), when it has a Content-Length.
pub fn streams_body(conn: &Connection, req: &Request) -> Option<&'static Call> {
    match conn.route(&req.method, req)? {
        Route::Call(c) if c.pipe == Pipe::In && req.method == "POST" => Some(c),
        _ => None,
    }
}

/// An upload chunk: the body goes from the client to the plugin's stdin as it
/// arrives, never held whole. `length` is the request's Content-Length.
pub fn handle_stream(
    conn: &Connection,
    call: &'static Call,
    req: Request,
    length: usize,
    copy: &mut dyn FnMut(&mut dyn Write) -> StreamEnd,
    out: &mut impl Write,
) -> Outcome {
    let keep_alive = req.keep_alive;
    let token = transfer_token(&req)
        .and_then(|t| t.ok_or_else(|| no_transfer_token(call.name, TOKEN_PLACES)));
    let token = match token {
        Ok(t) => t,
        Err(reject) => {
            // The body was not read: the connection cannot carry another request.
            let _ = respond::send_reject_with(out, &reject, false, false, cors_for(Some(call)));
            return Outcome {
                call: call.name,
                status: reject.failure().status,
                close: true,
                note: Some(reject.failure().why),
            };
        }
    };
    let envelope = envelope::transfer(call, &req, token, Some(length));
    run(
        conn,
        call,
        envelope,
        Stdin::Open,
        Some(copy),
        false,
        keep_alive,
        out,
    )
}
