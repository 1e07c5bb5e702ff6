//! ucloud-lb: terminates TLS (rustls) for UCloud's calls and spreads the connections
//! over one or more ucloud-gateway endpoints. See ucloud-lb(8), ucloud-lb.conf(5).
#![forbid(unsafe_code)]

mod backend;
mod config;
mod conn;
mod error;
mod health;
mod metrics;
mod origin;
mod relay;
mod state;
mod tls;

use backend::Backend;
use config::Config;
use error::Error;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, SockaddrStorage};
use state::{Generation, Shared};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ucloud_systemd::{notify, Family, Role, State, Want};

const HELP: &str = "\
ucloud-lb: TLS load balancer in front of ucloud-gateway

Usage: ucloud-lb [--config FILE] [--check]

Takes its listening socket from the service manager (LISTEN_FDS) or binds the
configured `listen` address, terminates TLS and relays each connection to a healthy
gateway. A connect that is refused or times out (connect_timeout) goes to another
backend; a backend its health checks take out has its open connections closed, so
that clients reconnect to one that is up (on_marked_down). SIGHUP reloads the
configuration and certificates (open connections keep the old ones); SIGTERM
stops accepting and waits for open connections, at most drain_timeout.

Options:
  --config FILE  configuration (default: lb.conf in the configuration directory)
  --check        load the configuration and certificates, report, and exit
  -h, --help     print this help
  --version      print the version

See ucloud-lb(8) and ucloud-lb.conf(5).";

fn main() -> ExitCode {
    // First, before anything else opens a descriptor that could land on fd 3.
    let inherited = ucloud_systemd::take_socket(Want {
        family: Family::Inet,
        role: Role::Listening,
    });
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-lb", || HELP.to_string())
    {
        return done;
    }
    let check = args.contains("--check");
    let path: PathBuf = match args.opt_value_from_str("--config") {
        Ok(Some(p)) => p,
        Ok(None) => Path::new(&ucloud_wire::paths::etc_dir()).join("lb.conf"),
        Err(e) => return usage(&e.to_string()),
    };
    let rest = args.finish();
    if !rest.is_empty() {
        return usage(&format!("unexpected arguments {rest:?}"));
    }
    let resumption = match tls::Resumption::new() {
        Ok(r) => r,
        Err(e) => return fail(&e, 70),
    };
    let generation = match load(&path, &resumption, None) {
        Ok(g) => g,
        Err(e) => return fail(&e, 78),
    };
    if check {
        println!(
            "{}: {} certificate(s), {} backend(s): ok",
            path.display(),
            generation.config.certificates.len(),
            generation.backends.len()
        );
        return ExitCode::SUCCESS;
    }
    let inherited = inherited.map_err(|e| Error::Listen(e.to_string()));
    let listener = match inherited.and_then(|l| match l {
        Some(fd) => Ok(TcpListener::from(fd)),
        None => bind(generation.config.listen),
    }) {
        Ok(l) => l,
        Err(e) => return fail(&e, 71),
    };
    raise_fd_limit();
    // Blocked here, before any thread starts, so only the signal loop sees them.
    let signals = {
        let mut s = SigSet::empty();
        s.add(Signal::SIGHUP);
        s.add(Signal::SIGTERM);
        s.add(Signal::SIGINT);
        s
    };
    if let Err(e) = signals.thread_block() {
        return fail(&Error::Listen(format!("cannot block signals: {e}")), 71);
    }
    let metrics_addr = generation.config.metrics;
    let shared = Arc::new(Shared::new(generation));
    for b in &shared.generation().backends {
        health::spawn(shared.clone(), b.clone());
    }
    if let Some(addr) = metrics_addr {
        let started = TcpListener::bind(addr).and_then(|l| metrics::spawn(shared.clone(), l));
        if let Err(e) = started {
            return fail(&Error::Listen(format!("metrics address {addr}: {e}")), 71);
        }
    }
    if let Err(e) = conn::start_relay() {
        return fail(
            &Error::Listen(format!("cannot start the relay thread: {e}")),
            71,
        );
    }
    let acceptor = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(&shared, listener))
    };
    let acceptor = match acceptor {
        Ok(a) => a,
        Err(e) => {
            return fail(
                &Error::Listen(format!("cannot start the accept thread: {e}")),
                71,
            )
        }
    };
    let local = shared.generation();
    ucloud_wire::log_info!(
        "ucloud-lb: serving with {} backend(s)",
        local.backends.len()
    );
    drop(local);
    let _ = notify(&[State::Ready]);
    loop {
        match signals.wait() {
            Ok(Signal::SIGHUP) => {
                let _ = notify(&[State::Reloading]);
                match reload(&shared, &path, &resumption) {
                    Ok(()) => {
                        shared.counters.reloads.fetch_add(1, Relaxed);
                        ucloud_wire::log_info!("ucloud-lb: reloaded {}", path.display());
                    }
                    Err(e) => {
                        shared.counters.reload_failures.fetch_add(1, Relaxed);
                        ucloud_wire::log_err!(
                            "ucloud-lb: reload refused, the running configuration stays: {e}"
                        );
                    }
                }
                let _ = notify(&[State::Ready]);
            }
            Ok(_) => break,
            Err(e) => ucloud_wire::log_err!("ucloud-lb: waiting for signals: {e}"),
        }
    }
    let _ = notify(&[State::Stopping]);
    shared.stopping.store(true, Relaxed);
    let _ = acceptor.join();
    let bound = shared.generation().config.drain_timeout;
    ucloud_wire::log_info!(
        "ucloud-lb: stopping: {} connection(s) open, waiting up to {} s",
        shared.active.load(Relaxed),
        bound.as_secs_f64()
    );
    let deadline = Instant::now() + bound;
    while shared.active.load(Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = shared.active.load(Relaxed);
    if left > 0 {
        ucloud_wire::log_warn!(
            "ucloud-lb: stopped with {left} connection(s) cut at the drain bound"
        );
    } else {
        ucloud_wire::log_info!("ucloud-lb: stopped");
    }
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    ucloud_wire::log_err!("ucloud-lb: {why} (see --help)");
    ExitCode::from(64)
}

fn fail(e: &Error, code: u8) -> ExitCode {
    ucloud_wire::log_err!("ucloud-lb: {e}");
    ExitCode::from(code)
}

/// A new generation; backends that keep their name and address keep their state
/// (health, counters, open connections) and health checker.
fn load(
    path: &Path,
    resumption: &tls::Resumption,
    old: Option<&Generation>,
) -> Result<Generation, Error> {
    let config = Config::load(path)?;
    let tls = tls::server_config(
        &config.certificates,
        config.client_ca.as_deref(),
        resumption,
    )?;
    // All files first: a reload that fails changes no backend.
    let relayed = config
        .backends
        .iter()
        .map(|c| c.tls.as_ref().map(tls::client_config).transpose())
        .collect::<Result<Vec<_>, Error>>()?;
    let backends = config
        .backends
        .iter()
        .zip(relayed)
        .map(|(c, relayed)| {
            let kept = old.and_then(|g| {
                g.backends
                    .iter()
                    .find(|b| b.name == c.name && b.address == c.address)
            });
            match kept {
                Some(b) => {
                    b.update(c, relayed);
                    b.clone()
                }
                None => Arc::new(Backend::new(c, relayed)),
            }
        })
        .collect();
    Ok(Generation {
        config,
        tls,
        backends,
    })
}

fn reload(shared: &Arc<Shared>, path: &Path, resumption: &tls::Resumption) -> Result<(), Error> {
    let old = shared.generation();
    let new = load(path, resumption, Some(&old))?;
    if new.config.listen != old.config.listen || new.config.metrics != old.config.metrics {
        ucloud_wire::log_warn!("ucloud-lb: listen and metrics addresses change only on restart");
    }
    for b in &old.backends {
        if !new.backends.iter().any(|n| Arc::ptr_eq(n, b)) {
            b.retired.store(true, Relaxed);
        }
    }
    for b in &new.backends {
        if !old.backends.iter().any(|o| Arc::ptr_eq(o, b)) {
            health::spawn(shared.clone(), b.clone());
        }
    }
    shared.replace(new);
    Ok(())
}

/// Binds `listen` with a deep backlog: a UCloud core opens bursts of connections.
fn bind(listen: Option<SocketAddr>) -> Result<TcpListener, Error> {
    let addr = listen.ok_or_else(|| {
        Error::Listen(
            "no socket from the service manager and no `listen =` in the configuration".into(),
        )
    })?;
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let e = |what: &str, err: nix::Error| Error::Listen(format!("{what} {addr}: {err}"));
    let fd = sock::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|x| e("socket for", x))?;
    sock::setsockopt(&fd, sock::sockopt::ReuseAddr, &true).map_err(|x| e("SO_REUSEADDR on", x))?;
    sock::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(|x| e("cannot bind", x))?;
    let backlog = sock::Backlog::new(1024).unwrap_or(sock::Backlog::MAXCONN);
    sock::listen(&fd, backlog).map_err(|x| e("cannot listen on", x))?;
    Ok(TcpListener::from(fd))
}

/// Two descriptors per connection: the soft limit (often 1024) would cap us early.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    if let Err(e) = listener.set_nonblocking(true) {
        ucloud_wire::log_err!("ucloud-lb: listener: {e}");
    }
    while !shared.stopping.load(Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        // A short tick so that a stop is noticed promptly.
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                ucloud_wire::log_err!("ucloud-lb: poll on the listener: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        loop {
            let (client, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    ucloud_wire::log_err!("ucloud-lb: accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    break;
                }
            };
            let generation = shared.generation();
            let Some(slot) = shared.admit(peer.ip(), &generation.config) else {
                continue; // dropping `client` closes it
            };
            let _ = client.set_nonblocking(false);
            let spawned = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || conn::serve(slot, generation, client, peer));
            if let Err(e) = spawned {
                ucloud_wire::log_err!("ucloud-lb: {peer}: cannot start a thread: {e}");
            }
        }
    }
}
