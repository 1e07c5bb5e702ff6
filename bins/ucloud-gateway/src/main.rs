//! ucloud-gateway: serves one client connection (inetd style on fds 0/1, or the
//! socket-activated fd 3), routing each HTTP request of UCloud's provider API to
//! one run of the setuid dispatcher. See ucloud-gateway(8).
#![deny(unsafe_code)]

mod app;
mod bind;
mod conn;
mod connect_page;
mod connection;
mod credential;
mod envelope;
mod error;
mod handle;
mod launch;
mod normalise;
mod proxy;
mod relay;
mod respond;
mod route;
mod serve;
#[allow(unsafe_code)]
mod sys;
mod upgrade;

use connection::Connection;
use serve::Timeouts;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::paths;

/// How long a keep-alive connection may stay open after its last request that
/// carried a credential (--idle-timeout). Requests without one (the health check,
/// the ticket page, refusals) do not extend it: else any client could hold this
/// process, and its place on the socket, for ever by asking for nothing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may take to send a whole request head (--head-timeout).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
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
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-gateway", || HELP.to_string())
    {
        return done;
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
    let connection = Connection::new(startup_config(), paths::dispatcher());
    serve::serve(&connection, client_in, &mut out, timeouts);
    // Before exiting, so that no spare outlives the gateway.
    connection.launcher.release_spare();
    ExitCode::SUCCESS
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
