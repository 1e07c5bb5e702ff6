//! ucloud-monitor: watches Slurm and tells UCloud about every state change of the
//! jobs ucloud-im submitted, through the outbox (the sender delivers). It polls
//! slurmctld (one squeue per cycle for all jobs) and listens for the events
//! slurmctld's PrologSlurmctld/EpilogSlurmctld hooks send through ucloud-notify.
//! Never root; holds no UCloud credential.
#![forbid(unsafe_code)]

mod error;
mod events;
mod events_net;
mod jobstate;
mod monitor;
mod owner;
mod slurm;
mod store;
mod usage;

use error::Error;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

const HELP: &str = "\
ucloud-monitor: report Slurm job state changes to UCloud

usage: ucloud-monitor [--interval SECONDS] [--usage-interval SECONDS] [--no-events]
                      [--slurm-user NAME] [--listen ADDR:PORT]...

  --interval SECONDS   poll Slurm this often (default 5; one squeue per cycle)
  --usage-interval SECONDS
                       report the usage of running jobs this often (default 30);
                       a job that ends is charged its final total at once
  --no-events          do not listen on the local event socket (without --listen:
                       polling only)
  --slurm-user NAME    the only account whose events are accepted (default slurm)
  --listen ADDR:PORT   also take events from other hosts on this TCP address
                       (repeatable; e.g. 0.0.0.0:6830 or [::]:6830): each is a
                       MUNGE credential that unmunge must prove made by
                       --slurm-user within the last 30 s, and new to this monitor
  --version            print the version

Writes job updates and usage reports to the outbox; ucloud-sender delivers
them. Keeps what it
sent per job in var/lib/ucloud-im/monitor/. Listens on run/ucloud-im/monitor.sock
(or the socket the service manager passes). Never runs as root.

Several hosts may run it on one shared state directory: only the holder of the
monitor lease (var/lib/ucloud-im/leases/monitor/, site.conf lease_seconds and
clock_skew_seconds) polls, reports and writes; the others drop their events and
wait. See ucloud-monitor(8), HOSTS.
";

/// Every this many polls, the accounting database is swept for jobs that came and
/// went while nobody looked (at 5 s: every 5 minutes).
const SWEEP_EVERY: u32 = 60;
/// How often the loop looks for owner answers and due rechecks while it waits.
const BUSY_TICK: Duration = Duration::from_millis(50);

struct Options {
    interval: Duration,
    usage_interval: Duration,
    events: bool,
    slurm_user: String,
    listen: Vec<SocketAddr>,
}

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-monitor", || HELP.to_string())
    {
        return done;
    }
    match options(&mut args).and_then(|o| {
        let rest = args.finish();
        if rest.is_empty() {
            run(o)
        } else {
            Err(Error::Usage(format!("unexpected arguments {rest:?}")))
        }
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ucloud_wire::log_err!("ucloud-monitor: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn options(args: &mut pico_args::Arguments) -> Result<Options, Error> {
    let interval: f64 = args
        .opt_value_from_str("--interval")
        .map_err(|e| Error::Usage(format!("--interval: {e}")))?
        .unwrap_or(5.0);
    if !(0.1..=3600.0).contains(&interval) {
        return Err(Error::Usage(
            "--interval must be between 0.1 and 3600 seconds".into(),
        ));
    }
    let usage_interval: f64 = args
        .opt_value_from_str("--usage-interval")
        .map_err(|e| Error::Usage(format!("--usage-interval: {e}")))?
        .unwrap_or(30.0);
    if !(0.1..=3600.0).contains(&usage_interval) {
        return Err(Error::Usage(
            "--usage-interval must be between 0.1 and 3600 seconds".into(),
        ));
    }
    Ok(Options {
        interval: Duration::from_secs_f64(interval),
        usage_interval: Duration::from_secs_f64(usage_interval),
        events: !args.contains("--no-events"),
        slurm_user: args
            .opt_value_from_str("--slurm-user")
            .map_err(|e| Error::Usage(format!("--slurm-user: {e}")))?
            .unwrap_or_else(|| "slurm".to_string()),
        listen: listen_addresses(args)?,
    })
}

fn listen_addresses(args: &mut pico_args::Arguments) -> Result<Vec<SocketAddr>, Error> {
    let listen: Vec<SocketAddr> = args.values_from_str("--listen").map_err(|e| {
        Error::Usage(format!(
            "--listen takes ADDR:PORT, an IP address and a port ({e})"
        ))
    })?;
    for (i, addr) in listen.iter().enumerate() {
        if addr.port() == 0 {
            return Err(Error::Usage(format!("--listen {addr}: name a port")));
        }
        if listen[..i].contains(addr) {
            return Err(Error::Usage(format!("--listen {addr} is given twice")));
        }
    }
    Ok(listen)
}

fn state_dir() -> PathBuf {
    PathBuf::from(ucloud_wire::paths::state_dir()).join("monitor")
}

fn socket_path() -> PathBuf {
    PathBuf::from(format!(
        "{}/run/ucloud-im/monitor.sock",
        ucloud_wire::paths::ROOT
    ))
}

/// The event socket: the service manager's, or bound here (any local account may
/// connect; peer credentials decide who is heard).
fn listener() -> Result<UnixListener, Error> {
    let want = ucloud_systemd::Want {
        family: ucloud_systemd::Family::Unix,
        role: ucloud_systemd::Role::Listening,
    };
    if let Some(fd) = ucloud_systemd::take_socket(want).map_err(|e| Error::Setup(e.to_string()))? {
        return Ok(UnixListener::from(fd));
    }
    let path = socket_path();
    // A socket left by a previous run is ours to replace; anything else is not.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(Error::Setup(format!(
                "{} exists and is not a socket: remove it",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(|e| {
        Error::Setup(format!(
            "cannot listen on {}: {e} (the directory must be writable by the monitor's account)",
            path.display()
        ))
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    Ok(l)
}

fn run(o: Options) -> Result<(), Error> {
    // Taken first, before anything could open fd 3.
    let listener = if o.events { Some(listener()?) } else { None };
    if nix::unistd::geteuid().is_root() {
        return Err(Error::Setup(
            "ucloud-monitor never runs as root: start it as its own account (ucloud-mon)".into(),
        ));
    }
    let slurm_uid = nix::unistd::User::from_name(&o.slurm_user)
        .map_err(|e| Error::Setup(format!("cannot look up {}: {e}", o.slurm_user)))?
        .ok_or_else(|| {
            Error::Setup(format!(
                "no account {} (Slurm's SlurmUser); name it with --slurm-user",
                o.slurm_user
            ))
        })?
        .uid
        .as_raw();
    if !o.listen.is_empty() && slurm_uid == 0 {
        return Err(Error::Setup(format!(
            "--listen needs a Slurm account that is not root ({} is uid 0): a munge \
             credential of root proves too little to take from the network",
            o.slurm_user
        )));
    }
    let mut tcp = Vec::new();
    for addr in &o.listen {
        tcp.push(TcpListener::bind(addr).map_err(|e| {
            Error::Setup(format!(
                "cannot listen on {addr}: {e} (a port above 1023, not in use, on an address of this host)"
            ))
        })?);
    }
    let keeper = keep_lease()?;
    store::set_fence(keeper.clone());
    let (tx, rx) = mpsc::channel();
    let shared = events_net::Shared::new(slurm_uid, PathBuf::from(ucloud_wire::munge::UNMUNGE));
    for listener in tcp {
        let (shared, tx) = (shared.clone(), tx.clone());
        std::thread::spawn(move || events_net::serve(listener, shared, tx));
    }
    if let Some(listener) = listener {
        std::thread::spawn(move || events::serve(listener, slurm_uid, tx));
    } else {
        // Keeps the channel open: the loop then only ever times out.
        std::mem::forget(tx);
    }
    ucloud_wire::log_info!(
        "ucloud-monitor: polling every {:?}{}{}",
        o.interval,
        if o.events {
            ", listening for events"
        } else {
            ""
        },
        if o.listen.is_empty() {
            String::new()
        } else {
            let addrs: Vec<String> = o.listen.iter().map(|a| a.to_string()).collect();
            format!(", taking munge-proven events on {}", addrs.join(" "))
        }
    );
    loop {
        let token = standby(&keeper, &rx)?;
        store::hold(token);
        match serve(&o, &rx) {
            Err(Error::LeaseLost(why)) => ucloud_wire::log_warn!(
                "ucloud-monitor: standby: {why}; polling and writing nothing until this host holds the monitor lease again"
            ),
            Err(e) => return Err(e),
            Ok(never) => match never {},
        }
    }
}

/// The monitor lease, kept by its own thread.
fn keep_lease() -> Result<ucloud_wire::lease::Keeper, Error> {
    use ucloud_wire::lease::{Holder, Keeper, Lease};
    let setup = |e: ucloud_wire::lease::LeaseError| Error::Setup(e.to_string());
    let config = ucloud_wire::config::SiteConfig::load(&ucloud_wire::paths::site_config())
        .map_err(|e| Error::Setup(e.to_string()))?;
    let lease = Lease::open(
        std::path::Path::new(&ucloud_wire::paths::leases_dir()),
        "monitor",
        Holder::this_process().map_err(setup)?,
        config.lease_timing(),
    )
    .map_err(setup)?;
    Keeper::spawn(lease, "ucloud-monitor", None).map_err(setup)
}

/// Waits until this process holds the monitor lease, dropping the events that
/// come meanwhile (the holder on another host hears its own, and polls).
fn standby(
    keeper: &ucloud_wire::lease::Keeper,
    rx: &mpsc::Receiver<events::Event>,
) -> Result<ucloud_wire::lease::Token, Error> {
    let tick = keeper.timing().renew_every() / 2;
    loop {
        if let Ok(token) = keeper.check() {
            return Ok(token);
        }
        match rx.recv_timeout(tick) {
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Setup("the event socket stopped serving".into()))
            }
        }
    }
}

/// The monitor's work while it holds the lease: state read from disk afresh
/// (another host may have changed it), then polls, events and reports until an
/// error; a lost lease is `Error::LeaseLost`, checked before every write and on
/// every turn.
fn serve(
    o: &Options,
    rx: &mpsc::Receiver<events::Event>,
) -> Result<std::convert::Infallible, Error> {
    let store = store::Store::open(&state_dir())?;
    let outbox = PathBuf::from(ucloud_wire::paths::outbox_dir());
    let drives = PathBuf::from(ucloud_wire::paths::drives_dir());
    let rates = usage::Rates::load(
        &PathBuf::from(ucloud_wire::paths::etc_dir()).join("products/jobs.json"),
    );
    let bindings = PathBuf::from(ucloud_wire::paths::bindings_dir());
    let mut monitor = monitor::Monitor::new(store, outbox, bindings, drives, rates)?;
    monitor.flush()?;
    monitor.sweep()?;
    let mut next_poll = Instant::now();
    let mut next_usage = Instant::now() + o.usage_interval;
    let mut polls = 0u32;
    loop {
        store::fenced()?;
        let now = Instant::now();
        if now >= next_poll {
            monitor.poll()?;
            polls += 1;
            if polls.is_multiple_of(SWEEP_EVERY) {
                monitor.sweep()?;
            }
            next_poll = Instant::now() + o.interval;
        }
        // After the poll, so that a report charges what Slurm just said.
        if now >= next_usage {
            monitor.report_usage()?;
            next_usage = Instant::now() + o.usage_interval;
        }
        let wait = next_poll
            .min(next_usage)
            .saturating_duration_since(Instant::now());
        let wait = if monitor.busy() {
            wait.min(BUSY_TICK)
        } else {
            wait
        };
        match rx.recv_timeout(wait) {
            Ok(event) => {
                monitor.event(event)?;
                while let Ok(event) = rx.try_recv() {
                    monitor.event(event)?;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Setup("the event socket stopped serving".into()))
            }
        }
        monitor.recheck()?;
        monitor.collect_bindings()?;
        monitor.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(args: &[&str]) -> Result<Vec<SocketAddr>, Error> {
        let mut a = pico_args::Arguments::from_vec(args.iter().map(|s| s.into()).collect());
        listen_addresses(&mut a)
    }

    #[test]
    fn listen_takes_socket_addresses_only() {
        assert!(listen(&[]).unwrap().is_empty());
        let two = listen(&["--listen", "0.0.0.0:6830", "--listen", "[::1]:6830"]).unwrap();
        assert_eq!(two.len(), 2);
        for bad in [
            &["--listen", "host.example.org:6830"][..],
            &["--listen", "6830"],
            &["--listen", "10.0.0.1:0"],
            &["--listen", "10.0.0.1:6830", "--listen", "10.0.0.1:6830"],
            &["--listen", "10.0.0.1:6830;x"],
            &["--listen"],
        ] {
            assert!(matches!(listen(bad), Err(Error::Usage(_))), "{bad:?}");
        }
    }
}
