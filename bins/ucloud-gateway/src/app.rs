//! A job's web interface, on the job's own host `app-<job>-<rank>.<web_domain>`
//! (site.conf `web_domain`; each job and rank its own origin, so no two users'
//! applications share one). Every request with such a Host comes here, never to
//! the provider's calls, and nothing of the provider's is served on these hosts.
//!
//! `/ucloud/<P>/app/authorize?token=…` is the link UCloud hands the browser: the
//! token goes to the dispatcher (`jobs.webAuthorize`, single-use), whose plugin
//! answers with the cookie the dispatcher minted from it. Every other request
//! needs that cookie: it starts one `jobs.web` dispatcher for the connection,
//! which verifies the cookie (the gateway only looks at its shape) and runs the
//! plugin that connects to the application. From then on the connection belongs
//! to the application: the plugin's bytes go to the client as they come, and the
//! client's requests go to the plugin one by one, each read and written anew by
//! this module, so that the cookie is taken out of every request (the
//! application never sees it), every request names the connection's host, and
//! each body is framed as the gateway read it. After a request that asks for an
//! upgrade (a WebSocket), the client's bytes are passed on as they come.

use crate::conn::{ClientIn, ClientOut};
use crate::connection::Connection;
use crate::error::Reject;
use crate::launch::{judge, Started, Stdin};
use crate::respond::{self, Outcome};
use crate::{credential, handle};
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::ChildStdin;
use std::time::{Duration, Instant};
use ucloud_http::server::{Limits, PendingBody, Reader, Request};
use ucloud_wire::calls::{self, Call};
use ucloud_wire::envelope::{Credential, Envelope};

/// The cookie a job's web host keeps its session in (ucloud-interactive(8)).
pub const COOKIE: &str = "ucloud-im-app";
/// How long a kept-alive connection to an application may stay quiet between
/// requests before it is closed.
const BETWEEN_REQUESTS: Duration = Duration::from_secs(300);

/// A job's web host: the job and rank its name says.
pub struct App {
    job: String,
    rank: u32,
    host: String,
}

/// The application `req` is for, when its Host is a job's web host.
pub fn wanted(conn: &Connection, req: &Request) -> Option<App> {
    let site = conn.config().ok()?;
    let host = req.header("host")?;
    let (job, rank) = ucloud_wire::transfer::app_host(host, &site.web_domain)?;
    Some(App {
        job,
        rank,
        host: host.to_ascii_lowercase(),
    })
}

/// Serves a request on a job's web host and, for the application, the rest of the
/// connection; the connection is over afterwards.
pub fn serve(
    conn: &Connection,
    app: App,
    req: Request,
    body: PendingBody,
    reader: Reader<ClientIn>,
    out: &mut ClientOut,
) -> Outcome {
    let provider = conn
        .config()
        .map(|s| s.provider.clone())
        .unwrap_or_default();
    let authorize = format!("/ucloud/{provider}/app/authorize");
    if crate::route::normalise_path(req.path()) == authorize {
        return link(conn, &app, &req, out);
    }
    proxy(conn, app, req, body, reader, out)
}

fn call(name: &str) -> &'static Call {
    calls::find(name).expect("the call table has the web interface's calls")
}

fn refused(out: &mut ClientOut, call: &'static Call, reject: Reject) -> Outcome {
    let failure = reject.failure();
    let status = respond::send_reject(out, &reject, false, false).unwrap_or(failure.status);
    Outcome {
        call: call.name,
        status,
        close: true,
        note: Some(failure.why),
    }
}

/// What the plugin learns of the host: the job and rank, which it compares with
/// the ones its token was bound to.
fn request_for(app: &App) -> Value {
    json!({"app": {"job": app.job, "rank": app.rank}})
}

/// UCloud's link: its token for the cookie.
fn link(conn: &Connection, app: &App, req: &Request, out: &mut ClientOut) -> Outcome {
    let call = call("jobs.webAuthorize");
    let token = match credential::transfer_token(req) {
        Ok(Some(token)) => token,
        Ok(None) => {
            let why = "the link has no token: open the application from UCloud".into();
            return refused(out, call, Reject::Unauthorized(why));
        }
        Err(reject) => return refused(out, call, reject),
    };
    let envelope = Envelope {
        call: call.name.into(),
        credential: Credential::Transfer(token),
        user: None,
        request: request_for(app),
    };
    handle::run(conn, call, envelope, Stdin::Closed, None, false, false, out)
}

/// The cookie's value, if the request shows one of the right shape.
fn cookie(req: &Request) -> Option<String> {
    req.headers
        .iter()
        .filter(|(name, _)| name == "cookie")
        .flat_map(|(_, value)| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

fn proxy(
    conn: &Connection,
    app: App,
    req: Request,
    body: PendingBody,
    reader: Reader<ClientIn>,
    out: &mut ClientOut,
) -> Outcome {
    let call = call("jobs.web");
    let Some(token) = cookie(&req) else {
        let why = "no session for this application: open it from UCloud (its link is good once)";
        return refused(out, call, Reject::Unauthorized(why.into()));
    };
    let now = ucloud_wire::now_ms() / 1000;
    if let Err(e) = ucloud_wire::token::transfer_token_looks_valid(&token, now) {
        let why = format!("the session cookie {e}; open the application from UCloud again");
        return refused(out, call, Reject::Unauthorized(why));
    }
    let envelope = Envelope {
        call: call.name.into(),
        credential: Credential::Transfer(token),
        user: None,
        request: request_for(&app),
    };
    let Started { mut child, stderr } =
        match conn.launcher.launch(call, envelope.encode(), Stdin::Open) {
            Ok(started) => started,
            Err(why) => return refused(out, call, Reject::DispatchFailed(why)),
        };
    let mut from_app =
        BufReader::with_capacity(256 << 10, child.stdout.take().expect("stdout is piped"));
    let mut first = Vec::new();
    let ready = (&mut from_app)
        .take(64)
        .read_until(b'\n', &mut first)
        .is_ok()
        && first == b"ready\n";
    let Some(to_app) = child.stdin.take().filter(|_| ready) else {
        let reject = judge(call.name, child.wait(), stderr).unwrap_or_else(|| {
            Reject::DispatchFailed("the plugin ended before it was ready".into())
        });
        return refused(out, call, reject);
    };
    let started = Instant::now();
    // The client's requests, on a thread of its own: when the application is
    // done, the process ends with this connection, whatever that thread waits for.
    std::thread::spawn(move || forward(reader, to_app, req, body, &app.host));
    let sent = io::copy(&mut from_app, out);
    let _ = child.wait();
    let _ = stderr.join();
    Outcome {
        call: call.name,
        status: 200,
        close: true,
        note: Some(match sent {
            Ok(n) => format!(
                "application connection, {n} bytes in {:?}",
                started.elapsed()
            ),
            Err(e) => format!("application connection ended: {e}"),
        }),
    }
}

/// The client's requests to the plugin, from `first` on, until the client stops,
/// names another host, or asks for an upgrade (then its bytes as they come).
fn forward(
    mut reader: Reader<ClientIn>,
    mut to_app: ChildStdin,
    first: Request,
    first_body: PendingBody,
    host: &str,
) {
    let limits = Limits::default();
    let (mut req, mut body) = (first, first_body);
    loop {
        reader.get_mut().deadline = None;
        let same_host = req
            .header("host")
            .is_some_and(|h| h.eq_ignore_ascii_case(host));
        if !same_host || send(&mut reader, &mut to_app, &req, body, &limits).is_err() {
            return;
        }
        if req.header("upgrade").is_some() {
            let _ = to_app.write_all(reader.buffered());
            let _ = io::copy(reader.get_mut(), &mut to_app);
            return;
        }
        if !req.keep_alive {
            return;
        }
        reader.get_mut().deadline = Some(Instant::now() + BETWEEN_REQUESTS);
        // An interim 100 Continue is the application's to send, not ours.
        match reader.read_head(&head_limits(), &mut io::sink()) {
            Ok(Some(next)) => (req, body) = next,
            _ => return,
        }
    }
}

/// Bodies of any size stream through; a chunked one is held (up to the usual
/// limit) to be sent with its length.
fn head_limits() -> Limits {
    Limits {
        max_body: usize::MAX,
        ..Limits::default()
    }
}

/// One request to the application: its head written anew, without the cookie and
/// with the body's framing as read here, then the body.
fn send(
    reader: &mut Reader<ClientIn>,
    to_app: &mut ChildStdin,
    req: &Request,
    body: PendingBody,
    limits: &Limits,
) -> io::Result<()> {
    let announced = body.length();
    let held = match announced {
        Some(_) => None,
        None => Some(
            reader
                .read_body(body, limits)
                .map_err(|e| io::Error::other(e.to_string()))?,
        ),
    };
    let length = held.as_ref().map_or(announced.unwrap_or(0), Vec::len);
    to_app.write_all(&head(req, length))?;
    match held {
        Some(bytes) => to_app.write_all(&bytes),
        None if length > 0 => reader
            .copy_body(length, to_app)
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|end| match end {
                ucloud_http::server::CopyEnd::Done => Ok(()),
                ucloud_http::server::CopyEnd::SinkClosed => Err(io::Error::other("plugin gone")),
            }),
        None => Ok(()),
    }
}

/// The head the application gets.
fn head(req: &Request, length: usize) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (name, value) in &req.headers {
        match name.as_str() {
            "content-length" | "transfer-encoding" => {}
            "cookie" => {
                let kept: Vec<&str> = value
                    .split(';')
                    .map(str::trim)
                    .filter(|pair| !pair.is_empty())
                    .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n).trim() != COOKIE)
                    .collect();
                if !kept.is_empty() {
                    head.push_str(&format!("cookie: {}\r\n", kept.join("; ")));
                }
            }
            _ => head.push_str(&format!("{name}: {value}\r\n")),
        }
    }
    if length > 0 || !matches!(req.method.as_str(), "GET" | "HEAD" | "OPTIONS" | "DELETE") {
        head.push_str(&format!("content-length: {length}\r\n"));
    }
    head.push_str("x-forwarded-proto: https\r\n\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_and_never_passed_on() {
        let req = Request::new(
            "POST",
            "/api/x?y=1",
            &[
                ("Host", "app-7-0.apps.example.org"),
                ("Cookie", "a=1; ucloud-im-app=TOKEN; b=2"),
                ("Cookie", "ucloud-im-app=OTHER"),
                ("Content-Length", "999"),
                ("Transfer-Encoding", "chunked"),
                ("X-Custom", "v"),
            ],
        );
        assert_eq!(cookie(&req).as_deref(), Some("TOKEN"));
        let head = String::from_utf8(head(&req, 3)).unwrap();
        assert!(
            !head.contains("ucloud-im-app") && !head.contains("TOKEN"),
            "{head}"
        );
        assert!(head.starts_with("POST /api/x?y=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("cookie: a=1; b=2\r\n"), "{head}");
        // The framing is the gateway's: one length, no chunking, as read.
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert!(head.contains("content-length: 3\r\n") && !head.contains("chunked"));
        assert!(head.contains("x-custom: v\r\n") && head.ends_with("\r\n\r\n"));
        // A cookie header of only ours is dropped whole; a name that merely
        // starts like ours is someone else's.
        let only = Request::new(
            "GET",
            "/",
            &[
                ("Cookie", "ucloud-im-app=T"),
                ("Cookie", "ucloud-im-apps=x"),
            ],
        );
        let head = String::from_utf8(head_of(&only)).unwrap();
        assert!(
            head.contains("cookie: ucloud-im-apps=x\r\n") && !head.contains("=T"),
            "{head}"
        );
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(
            cookie(&Request::new("GET", "/", &[("Cookie", "x=1")])),
            None
        );
    }

    fn head_of(req: &Request) -> Vec<u8> {
        head(req, 0)
    }
}
