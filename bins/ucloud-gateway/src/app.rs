//! A job's web interface, on the job's own host `app-<job>-<rank>.<web_domain>`
//! (site.conf `web_domain`; each job and rank its own origin). Every request with
//! such a Host comes here, never to the provider's calls, and nothing of the
//! provider's is served on these hosts. The hosts of one `web_domain` are one
//! *site* to a browser unless the domain is a public suffix: another user's
//! application there may set cookies for the whole domain and send same-site
//! requests. So the cookie this host uses is the one whose subject names it, and
//! a request a browser marks as sent from a sibling host (`Sec-Fetch-Site:
//! same-site`) is refused.
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
use ucloud_wire::error::Failure;

/// The cookie a job's web host keeps its session in (ucloud-interactive(8)).
use ucloud_wire::transfer::APP_COOKIE as COOKIE;
/// How long a kept-alive connection to an application may stay quiet between
/// requests before it is closed.
const BETWEEN_REQUESTS: Duration = Duration::from_secs(300);
/// How long a request body may take to arrive.
const BODY_WITHIN: Duration = Duration::from_secs(120);
/// How long the plugin may take to find the job and connect to the application.
const READY_WITHIN: Duration = Duration::from_secs(60);

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

/// The session cookie meant for `app`: among the request's cookies of that name
/// (a sibling host may have set one for the whole domain), the one whose subject
/// (not yet verified: the dispatcher does that) names this job and rank.
fn cookie(req: &Request, app: &App) -> Option<String> {
    let prefix = format!("web/{}/{}/", app.job, app.rank);
    req.headers
        .iter()
        .filter(|(name, _)| name == "cookie")
        .flat_map(|(_, value)| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .find(|token| {
            ucloud_wire::transfer::peek_subject(token).is_some_and(|s| s.starts_with(&prefix))
        })
}

/// Why a request may not reach the application whatever its cookie: sent by a
/// page of a sibling host, or with more than one Host.
fn refused_request(req: &Request) -> Option<String> {
    let fetched_from = req.header("sec-fetch-site").unwrap_or_default();
    if fetched_from.eq_ignore_ascii_case("same-site") {
        return Some(
            "a request from another application's page (Sec-Fetch-Site: same-site) does not \
             reach this one"
                .into(),
        );
    }
    if req.headers.iter().filter(|(n, _)| n == "host").count() != 1 {
        return Some("a request names exactly one Host".into());
    }
    None
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
    if let Some(why) = refused_request(&req) {
        return refused(
            out,
            call,
            Reject::Plugin(Failure::new(403, "FORBIDDEN", why)),
        );
    }
    let Some(token) = cookie(&req, &app) else {
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
        credential: Credential::Transfer(token.clone()),
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
    let answered = readable_within(from_app.get_ref(), READY_WITHIN);
    let ready = answered
        && (&mut from_app)
            .take(64)
            .read_until(b'\n', &mut first)
            .is_ok()
        && first == b"ready\n";
    if !answered {
        // Still finding the application: the client is told; the plugin is
        // stopped by its stdin's end (or its own time limit).
        drop(child.stdin.take());
        let why = "the application did not answer in time; try again".into();
        return refused(out, call, Reject::DispatchFailed(why));
    }
    let Some(to_app) = child.stdin.take().filter(|_| ready) else {
        let reject = judge(call.name, child.wait(), stderr).unwrap_or_else(|| {
            Reject::DispatchFailed("the plugin ended before it was ready".into())
        });
        return refused(out, call, reject);
    };
    let started = Instant::now();
    // The client's requests, on a thread of its own: when the application is
    // done, the process ends with this connection, whatever that thread waits for.
    std::thread::spawn(move || forward(reader, to_app, req, body, &app, &token));
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
/// names another host or shows another session, or asks for an upgrade (then its
/// bytes as they come).
fn forward(
    mut reader: Reader<ClientIn>,
    mut to_app: ChildStdin,
    first: Request,
    first_body: PendingBody,
    app: &App,
    token: &str,
) {
    let limits = Limits::default();
    let (mut req, mut body) = (first, first_body);
    loop {
        // A later request on the connection is held to what the first was: the
        // same host, the same session (a proxy in front that mixed clients on one
        // connection would otherwise reach this application with another's).
        let same_host = req
            .header("host")
            .is_some_and(|h| h.eq_ignore_ascii_case(&app.host));
        let same_session = cookie(&req, app).as_deref() == Some(token);
        if !same_host || !same_session || refused_request(&req).is_some() {
            return;
        }
        reader.get_mut().deadline = Some(Instant::now() + BODY_WITHIN);
        if send(&mut reader, &mut to_app, &req, body, &limits).is_err() {
            return;
        }
        reader.get_mut().deadline = None;
        if is_upgrade(&req) {
            let _ = to_app.write_all(reader.buffered());
            let _ = io::copy(reader.get_mut(), &mut to_app);
            return;
        }
        if !req.keep_alive {
            // The application answers after the request; its input stays open
            // until the client leaves, or some servers would drop the answer.
            let _ = io::copy(reader.get_mut(), &mut io::sink());
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

/// A WebSocket upgrade (RFC 6455: a GET with Upgrade and Connection: upgrade);
/// only then do the client's bytes pass as they come.
fn is_upgrade(req: &Request) -> bool {
    req.method == "GET"
        && req.header("upgrade").is_some()
        && req.header("connection").is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Waits until `pipe` has something to read (or its end), at most `within`.
fn readable_within(pipe: &impl std::os::fd::AsFd, within: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(within.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => return n > 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
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
            // The framing is the gateway's; the forwarding headers are the
            // gateway's to set, never the client's to claim.
            "content-length" | "transfer-encoding" | "forwarded" => {}
            n if n.starts_with("x-forwarded-") => {}
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
        // (The session cookie of the host is picked by its subject: see below.)
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
        let app = job_7();
        assert_eq!(
            cookie(&Request::new("GET", "/", &[("Cookie", "x=1")]), &app),
            None
        );
    }

    /// Job 7's rank 0, as a request to its host makes it.
    fn job_7() -> App {
        App {
            job: "7".into(),
            rank: 0,
            host: "app-7-0.apps.example.org".into(),
        }
    }

    fn head_of(req: &Request) -> Vec<u8> {
        head(req, 0)
    }

    /// A JWT-shaped token whose (unsigned) claims name `sub`.
    fn token_for(sub: &str) -> String {
        use ucloud_wire::transfer::peek_subject;
        let e = |b: &[u8]| {
            use std::fmt::Write;
            // base64url without padding, by hand: the tests need no base64 crate.
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in b.chunks(3) {
                let n = chunk.iter().fold(0u32, |n, &c| n << 8 | u32::from(c))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    let _ = out.write_char(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        };
        let t = format!(
            "{}.{}.c2ln",
            e(br#"{"alg":"HS256","typ":"JWT"}"#),
            e(
                format!(r#"{{"typ":"ucloud-im-transfer","sub":"{sub}","exp":9999999999}}"#)
                    .as_bytes()
            )
        );
        assert_eq!(peek_subject(&t).as_deref(), Some(sub));
        t
    }

    #[test]
    fn the_hosts_own_cookie_wins_over_one_a_sibling_host_set() {
        let app = job_7();
        let tossed = token_for("web/8/0/80");
        let mine = token_for("web/7/0/8888");
        let other_rank = token_for("web/7/1/8888");
        let req = Request::new(
            "GET",
            "/",
            &[(
                "Cookie",
                &format!(
                    "ucloud-im-app={tossed}; ucloud-im-app={other_rank}; ucloud-im-app={mine}"
                ),
            )],
        );
        assert_eq!(cookie(&req, &app), Some(mine));
        let only_tossed = Request::new(
            "GET",
            "/",
            &[("Cookie", &format!("ucloud-im-app={tossed}"))],
        );
        assert_eq!(cookie(&only_tossed, &app), None);
        // A sibling host's page, and a second Host, never reach the application.
        let sibling = Request::new(
            "POST",
            "/api",
            &[
                ("Host", "app-7-0.apps.example.org"),
                ("Sec-Fetch-Site", "same-site"),
            ],
        );
        assert!(refused_request(&sibling).is_some());
        let two = Request::new(
            "GET",
            "/",
            &[
                ("Host", "app-7-0.apps.example.org"),
                ("Host", "app-8-0.apps.example.org"),
            ],
        );
        assert!(refused_request(&two).is_some());
        let own = Request::new(
            "GET",
            "/",
            &[
                ("Host", "app-7-0.apps.example.org"),
                ("Sec-Fetch-Site", "same-origin"),
            ],
        );
        assert!(refused_request(&own).is_none());
        // Only a GET that asks for the connection's upgrade turns it into a tunnel.
        assert!(is_upgrade(&Request::new(
            "GET",
            "/ws",
            &[
                ("Upgrade", "websocket"),
                ("Connection", "keep-alive, Upgrade")
            ]
        )));
        assert!(!is_upgrade(&Request::new(
            "POST",
            "/ws",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")]
        )));
        assert!(!is_upgrade(&Request::new(
            "GET",
            "/ws",
            &[("Upgrade", "websocket")]
        )));
        // Forwarding headers are the gateway's.
        let spoof = Request::new(
            "GET",
            "/",
            &[
                ("X-Forwarded-For", "1.2.3.4"),
                ("Forwarded", "for=x"),
                ("X-Forwarded-Proto", "http"),
            ],
        );
        let h = String::from_utf8(head(&spoof, 0)).unwrap();
        assert!(
            !h.contains("1.2.3.4") && !h.contains("for=x") && !h.contains("proto: http\r"),
            "{h}"
        );
    }
}
