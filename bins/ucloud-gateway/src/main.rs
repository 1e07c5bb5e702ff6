//! ucloud-gateway: serves one client connection (inetd style on fds 0/1, or the
//! socket-activated fd 3), routing each HTTP request of UCloud's provider API to
//! one run of the setuid dispatcher. See ucloud-gateway(8).
#![deny(unsafe_code)]

mod bind;
mod conn;
mod connect_page; // issue 7: the ticket page
mod dispatch;
mod error;
mod follow; // the WebSocket of jobs.follow
mod framing;
mod handle;
mod normalise;
mod proxy;
mod respond;
mod route;
#[allow(unsafe_code)]
mod sys;
mod upload_ws;
mod websocket;

use error::Reject;
use std::cell::{Cell, OnceCell, RefCell};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ucloud_http::server::{HttpError, Limits, Reader};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::paths;

/// How long a keep-alive connection may stay open after its last request that
/// carried a credential (--idle-timeout). Requests without one (the health check,
/// the ticket page, refusals) do not extend it: else any client could hold this
/// process, and its place on the socket, for ever by asking for nothing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send a whole request head (--head-timeout).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body (up to `Limits::max_body`).
const BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest upload chunk the data channel streams (UCloud's largest chunk).
const MAX_STREAMED: usize = 32_000_000;
/// How long one write to a client may block before the client counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

const HELP: &str = "\
ucloud-gateway: serve one connection of UCloud's provider API

Usage: ucloud-gateway [--proxy-protocol [--balancer-user NAME]] [--idle-timeout S]
                      [--head-timeout S]

Started once per connection by a socket unit (Accept=yes) or inetd: the connection
is on stdin/stdout, or on fd 3 when LISTEN_FDS=1 and LISTEN_PID is this process.
Reads site.conf and UCloud's public key from the configuration directory, starts
the dispatcher once per request, logs one line per request to stderr.

Options:
  --proxy-protocol  balancer-facing socket: the connection must come over a
                    unix socket from the balancer's account and start with a
                    PROXY protocol v2 header (sent by ucloud-lb), else it is
                    closed unread; the client it names is logged with each request
  --balancer-user NAME
                    the balancer's account (default ucloud-lb): the only peer
                    whose PROXY header is believed
  --idle-timeout S  close a connection S seconds after its last request that
                    carried a token, or after it opened (default 60)
  --head-timeout S  a request head (and the PROXY header) must arrive whole
                    within S seconds, however it is cut up (default 10)
  -h, --help        print this help
  --version         print the version

See ucloud-gateway(8).";

const NO_NEW_PRIVS: &str = "no_new_privs is set: the setuid dispatcher cannot gain root; \
remove NoNewPrivileges= and the directives that imply it from the unit";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        println!("{HELP}");
        return ExitCode::SUCCESS;
    }
    if args.contains("--version") {
        println!("ucloud-gateway {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let behind_balancer = args.contains("--proxy-protocol");
    let balancer_user: String = match args.opt_value_from_str("--balancer-user") {
        Ok(name) => name.unwrap_or_else(|| "ucloud-lb".to_string()),
        Err(e) => {
            ucloud_wire::log_err!("ucloud-gateway: --balancer-user: {e} (see --help)");
            return ExitCode::from(64);
        }
    };
    let timeouts = match (
        seconds(&mut args, "--idle-timeout", IDLE_TIMEOUT),
        seconds(&mut args, "--head-timeout", HEAD_TIMEOUT),
    ) {
        (Ok(idle), Ok(head)) => Timeouts { idle, head },
        (Err(why), _) | (_, Err(why)) => {
            ucloud_wire::log_err!("ucloud-gateway: {why} (see --help)");
            return ExitCode::from(64);
        }
    };
    let rest = args.finish();
    if !rest.is_empty() {
        ucloud_wire::log_err!(
            "ucloud-gateway: takes no arguments but the options, got {rest:?} (see --help)"
        );
        return ExitCode::from(64);
    }
    let want = ucloud_systemd::Want {
        family: ucloud_systemd::Family::Any,
        role: ucloud_systemd::Role::Connected,
    };
    let listen = match ucloud_systemd::take_socket(want) {
        Ok(listen) => listen,
        Err(why) => {
            ucloud_wire::log_err!("ucloud-gateway: {why}");
            return ExitCode::from(match why {
                ucloud_systemd::activation::Error::Environment(_) => 64,
                ucloud_systemd::activation::Error::Descriptor(_) => 71,
            });
        }
    };
    let inherited = match sys::take_connection(listen) {
        Ok(fds) => fds,
        Err(e) => {
            ucloud_wire::log_err!("ucloud-gateway: cannot take the connection's descriptor: {e}");
            return ExitCode::from(71);
        }
    };
    let (read, write) = match inherited {
        sys::Inherited::Inetd(r, w) => (r, Some(w)),
        sys::Inherited::Listen(fd) => (fd, None),
    };
    if behind_balancer {
        // Before a byte is read: whoever else reached this socket gets nothing from
        // it, and nothing it claims lands in the log.
        if let Err(why) = proxy::check_peer(&read, &balancer_user) {
            ucloud_wire::log_warn!("ucloud-gateway: refusing the connection unread: {why}");
            return ExitCode::SUCCESS;
        }
    }
    let (mut client_in, mut out) = match conn::split(read, write, SEND_TIMEOUT) {
        Ok(halves) => halves,
        Err(e) => {
            ucloud_wire::log_err!("ucloud-gateway: cannot set up the connection: {e}");
            return ExitCode::from(71);
        }
    };
    if behind_balancer {
        client_in.deadline = Some(Instant::now() + timeouts.head);
        match proxy::read_header(&mut client_in) {
            // A client is logged with each of its requests; the balancer's own
            // health checks (LOCAL) get no line of their own.
            Ok(_) => {}
            Err(why) => {
                ucloud_wire::log_warn!("ucloud-gateway: closing the connection unanswered: {why}");
                return ExitCode::SUCCESS;
            }
        }
        client_in.deadline = None;
    }
    ucloud_wire::token::install_crypto_provider();
    let site = handle::Site {
        config: startup_config(),
        key: OnceCell::new(),
        dispatcher: paths::dispatcher(),
        last_token: RefCell::new(None),
        spare: RefCell::new(None),
        dispatched: Cell::new(0),
        spares_off: Cell::new(false),
    };
    serve(&site, client_in, &mut out, timeouts);
    // Before exiting, so that no spare outlives the gateway.
    site.release_spare();
    ExitCode::SUCCESS
}

#[derive(Clone, Copy)]
struct Timeouts {
    idle: Duration,
    head: Duration,
}

/// `--NAME S`: seconds, fractions allowed, 0.1 to 86400.
fn seconds(
    args: &mut pico_args::Arguments,
    name: &'static str,
    default: Duration,
) -> Result<Duration, String> {
    let value: Option<String> = args
        .opt_value_from_str(name)
        .map_err(|e| format!("{name}: {e}"))?;
    let Some(value) = value else {
        return Ok(default);
    };
    match value.parse::<f64>() {
        Ok(s) if (0.1..=86400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{name} {value:?}: a number of seconds from 0.1 to 86400"
        )),
    }
}

/// Whether a request shows a credential (a bearer token or a transfer token):
/// only such requests keep the connection open past its idle deadline.
fn shows_credential(req: &ucloud_http::server::Request) -> bool {
    req.header("authorization").is_some()
        || req.header("chunked-upload-token").is_some()
        || req.query_param("token").is_some()
}

/// Whether the gateway took the credential: the call was not refused for it.
fn accepted(status: u16) -> bool {
    status != 401 && status != 403
}

/// site.conf and the no_new_privs check; `Err` is answered as `MISCONFIGURED`.
fn startup_config() -> Result<SiteConfig, String> {
    if no_new_privs() {
        ucloud_wire::log_err!("ucloud-gateway: {NO_NEW_PRIVS}");
        return Err(NO_NEW_PRIVS.to_string());
    }
    SiteConfig::load(&paths::site_config()).map_err(|e| {
        let why = e.to_string();
        ucloud_wire::log_err!("ucloud-gateway: {why}");
        why
    })
}

fn no_new_privs() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().any(|l| {
        l.strip_prefix("NoNewPrivs:")
            .is_some_and(|v| v.trim() == "1")
    })
}

fn serve(
    site: &handle::Site,
    client_in: conn::ClientIn,
    out: &mut conn::ClientOut,
    timeouts: Timeouts,
) {
    let limits = Limits::default();
    // Heads may announce an upload chunk (streamed, never held); every other body
    // is held and stays under `limits.max_body`, checked once the route is known.
    let head_limits = Limits {
        max_body: MAX_STREAMED,
        ..Limits::default()
    };
    let mut reader = Reader::new(client_in);
    // Moved on only by a request with an accepted credential (see IDLE_TIMEOUT).
    let mut idle_until = Instant::now() + timeouts.idle;
    loop {
        // Also when requests come back to back (pipelined, or not for a dispatcher).
        site.release_old_spare();
        if Instant::now() >= idle_until
            || reader.buffered().is_empty()
                && !next_request_comes(site, reader.get_ref(), idle_until)
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
        if upload_ws::is_upload_websocket(site, &req) {
            // The rest of the connection is the upload's, bytes already read included.
            site.release_spare();
            let leftover = reader.buffered().to_vec();
            let outcome = upload_ws::serve(site, &req, leftover, reader.get_mut(), out);
            let path = req.path().to_string();
            log(
                &req.method,
                &path,
                upload_ws::CALL,
                outcome.status,
                started,
                Some(&outcome.note),
            );
            return;
        }
        if follow::is_websocket(site, &req) {
            // The WebSocket starts its own dispatcher; a spare would only wait.
            site.release_spare();
            // The rest of the connection is the WebSocket's, bytes already read included.
            let leftover = reader.buffered().to_vec();
            let outcome = follow::serve(site, &req, leftover, reader.get_mut(), out);
            let path = req.path().to_string();
            log(
                &req.method,
                &path,
                follow::CALL,
                outcome.status,
                started,
                Some(&outcome.note),
            );
            return;
        }
        let credential = shows_credential(&req);
        if let Some(n) = body.length().filter(|_| handle::streams_body(site, &req)) {
            let (method, path) = (req.method.clone(), req.path().to_string());
            let mut copy = |sink: &mut dyn std::io::Write| match reader.copy_body(n, sink) {
                Ok(_) => dispatch::StreamEnd::Done,
                Err(e) => dispatch::StreamEnd::ClientGone(format!("upload body: {e}")),
            };
            let outcome = handle::handle_stream(site, req, n, &mut copy, out);
            log(
                &method,
                &path,
                outcome.call,
                outcome.status,
                started,
                outcome.note.as_deref(),
            );
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
        let outcome = handle::handle(site, req, out);
        log(
            &method,
            &path,
            outcome.call,
            outcome.status,
            started,
            outcome.note.as_deref(),
        );
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
fn next_request_comes(site: &handle::Site, client: &conn::ClientIn, idle_until: Instant) -> bool {
    loop {
        let until = site
            .spare_expires()
            .map_or(idle_until, |t| t.min(idle_until));
        match client.wait_readable(until.saturating_duration_since(Instant::now())) {
            Ok(true) => return true,
            Ok(false) if Instant::now() < idle_until => site.release_spare(),
            _ => return false,
        }
    }
}

/// Answers an HTTP-level error (when it has a status) and ends the connection.
fn refuse(out: &mut conn::ClientOut, e: HttpError, method: &str, path: &str, started: Instant) {
    let why = e.to_string();
    match e.status() {
        Some(_) => {
            let status = respond::send_reject(out, &Reject::Http(e), false, false).unwrap_or(0);
            log(method, path, "-", status, started, Some(&why));
        }
        None => log(method, path, "-", 0, started, Some(&why)),
    }
}

/// One line per request: method, path (never the query: it may hold a transfer
/// token), call, status, milliseconds, and a note.
fn log(method: &str, path: &str, call: &str, status: u16, started: Instant, note: Option<&str>) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut note = note
        .map(|n| n.replace(['\n', '\r'], " "))
        .unwrap_or_default();
    if let Some(client) = proxy::client() {
        note = if note.is_empty() {
            format!("client={client}")
        } else {
            format!("client={client} {note}")
        };
    }
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
