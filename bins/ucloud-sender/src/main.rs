//! ucloud-sender: the one program that holds the provider's refresh token. It
//! delivers the outbox (what the registry and the monitor have to tell UCloud) to
//! UCloud in order, retrying until UCloud has taken each message, and, on a site
//! that uses UCloud projects, reads UCloud's provider notification stream into the
//! inbox (its own thread).
#![forbid(unsafe_code)]

mod claims;
mod deliver;
mod error;
mod products;
mod setup;
mod stream;
mod tokens;

use error::SendError;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ucloud_http::client::{Client, Endpoint};
use ucloud_wire::lease::{Holder, Keeper, Lease};

const HELP: &str = "\
ucloud-sender: deliver ucloud-im's outbox to UCloud, read UCloud's notifications

usage: ucloud-sender [--once]

  --once   register the products, deliver what is queued, then exit: 0 when the
           products are registered and the queue is empty at the end, 1 when they
           are not or a message could not be delivered (it stays queued); the
           notification stream is not opened. When another sender holds the
           sender lease, it delivers nothing itself and waits up to 30 s for
           that one to empty the queue
  --version  print the version

First it registers the site's products (products/jobs.json and products/files.json
of the configuration directory) with UCloud, unless UCloud holds them already or the
table would change a category's accounting terms; then it delivers the outbox.
Without --once it runs until stopped, delivering new messages as they arrive and
registering the products again whenever the table changes, and, when site.conf
sets project_prefix, reads UCloud's provider notification stream
(/api/accounting/notifications: wallets and projects) into the inbox for
ucloud-project(8), keeping the replay start in inbox/replay-from. Reads site.conf
(provider, ucloud_url, ucloud_ca, sender_user, project_prefix) and the refresh
token; runs as sender_user only.

Several hosts may run it on one shared state directory: only the holder of the
sender lease (var/lib/ucloud-im/leases/sender/, site.conf lease_seconds and
clock_skew_seconds) delivers and reads the stream; the others wait and take
over when it stops renewing. See ucloud-sender(8), HOSTS.
";

/// How long `--once` waits for another holder to empty the queue.
const ONCE_WAIT: Duration = Duration::from_secs(30);

/// How often an idle sender looks for new messages.
const POLL: Duration = Duration::from_millis(200);
/// Connect, read and write limit for one exchange with UCloud.
const TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-sender", || HELP.to_string())
    {
        return done;
    }
    let once = args.contains("--once");
    let rest = args.finish();
    let result = if rest.is_empty() {
        run(once)
    } else {
        Err(SendError::Usage(format!("unexpected arguments {rest:?}")))
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            ucloud_wire::log_err!("ucloud-sender: {e}");
            ExitCode::from(match e {
                SendError::Usage(_) => 64,
                SendError::Setup(_) => 78,
            })
        }
    }
}

fn run(once: bool) -> Result<bool, SendError> {
    ucloud_http::tls::install_provider();
    let setup = setup::load()?;
    let endpoint = Endpoint::new(&setup.ucloud_url, Some(&setup.ucloud_ca), TIMEOUT)
        .map_err(|e| SendError::Setup(format!("ucloud_url {}: {e}", setup.ucloud_url)))?;
    let mut registrar = products::Registrar::new(
        ucloud_wire::paths::etc_dir().into(),
        setup.provider,
        setup.outbox.clone(),
    );
    let stream_endpoint = endpoint.clone();
    let refresh_token = setup.refresh_token.clone();
    let outbox = setup.outbox.clone();
    let keeper = keep_lease(&outbox, setup.lease_timing)?;
    let mut sender = deliver::Sender::new(Client::new(endpoint), setup.refresh_token, setup.outbox);
    if once {
        let registered = matches!(
            registrar.settle(&mut sender, Some(deliver::ONCE_ATTEMPTS)),
            products::Outcome::Registered(_)
        );
        let delivered = match keeper.check() {
            Ok(token) => {
                take_over(&outbox, token)?;
                sender.fence(keeper.clone(), token);
                sender.drain(true)?
            }
            Err(_) => {
                ucloud_wire::log_info!(
                    "ucloud-sender: another sender holds the sender lease and delivers; waiting up to {} s for the queue to empty",
                    ONCE_WAIT.as_secs()
                );
                wait_empty(&outbox, ONCE_WAIT)
            }
        };
        keeper.release();
        return Ok(delivered && registered);
    }
    ucloud_wire::log_info!(
        "ucloud-sender: delivering to {} while holding the sender lease (takeover within {} s)",
        setup.ucloud_url,
        setup.lease_timing.takeover_bound().as_secs_f32()
    );
    let stream_keeper = keeper.clone();
    let fence: stream::Fence = std::sync::Arc::new(move || stream_keeper.check().is_ok());
    let reader = match setup.inbox {
        Some(inbox) => Some(spawn_stream(stream_endpoint, refresh_token, inbox, fence)?),
        None => {
            ucloud_wire::log_info!(
                "ucloud-sender: site.conf sets no project_prefix: the notification stream is not read"
            );
            None
        }
    };
    let mut current = None;
    let mut settled = false;
    loop {
        // The stream's thread waits out every failure; it ends only by a panic, and
        // a sender that no longer reads the stream should say so and be restarted.
        if reader.as_ref().is_some_and(|r| r.is_finished()) {
            return Err(SendError::Setup(
                "the notification stream's thread stopped unexpectedly".into(),
            ));
        }
        match keeper.check() {
            Ok(token) => {
                if current != Some(token) {
                    // A failure here is the file server's: try again next turn.
                    if let Err(e) = take_over(&outbox, token) {
                        ucloud_wire::log_err!("ucloud-sender: {e}");
                        std::thread::sleep(POLL);
                        continue;
                    }
                    sender.fence(keeper.clone(), token);
                    current = Some(token);
                } else if let Ok(back) = claims::take_over(&outbox, token) {
                    // Again on every turn: a process with a stale view of the lease
                    // directory may have made an older token's claim directory anew
                    // after we revoked it; revoked again, its holder cannot claim.
                    if back > 0 {
                        ucloud_wire::log_warn!(
                            "ucloud-sender: {back} message(s) claimed under an older token after the takeover are back in the queue"
                        );
                    }
                }
                if !settled {
                    registrar.settle(&mut sender, None);
                    settled = true;
                }
                registrar.tick(&mut sender);
                sender.drain(false)?;
            }
            Err(_) => {
                if let Some(token) = current.take() {
                    ucloud_wire::log_warn!(
                        "ucloud-sender: standby: token {token} is no longer held; delivering nothing until this host holds the sender lease again"
                    );
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// The sender lease, kept by its own thread; the claim directory of each new
/// token is made before the token.
fn keep_lease(outbox: &Path, timing: ucloud_wire::lease::Timing) -> Result<Keeper, SendError> {
    let setup = |e: ucloud_wire::lease::LeaseError| SendError::Setup(e.to_string());
    let lease = Lease::open(
        Path::new(&ucloud_wire::paths::leases_dir()),
        "sender",
        Holder::this_process().map_err(setup)?,
        timing,
    )
    .map_err(setup)?;
    let claims = outbox.to_path_buf();
    Keeper::spawn(
        lease,
        "ucloud-sender",
        Some(Box::new(move |token| claims::prepare(&claims, token))),
    )
    .map_err(setup)
}

/// Revokes the claims of older tokens and puts their messages back in the queue.
fn take_over(outbox: &Path, token: ucloud_wire::lease::Token) -> Result<(), SendError> {
    let back = claims::take_over(outbox, token).map_err(|e| {
        SendError::Setup(format!(
            "cannot take over the claims in {}: {e}",
            claims::claims_dir(outbox).display()
        ))
    })?;
    ucloud_wire::log_info!(
        "ucloud-sender: took over the outbox with token {token}: {back} claimed message(s) back in the queue"
    );
    Ok(())
}

/// Whether the queue and the usage reports empty within `limit` (another host's
/// sender delivers them).
fn wait_empty(outbox: &Path, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        let queued = ucloud_wire::outbox::queued(outbox)
            .map(|q| q.len())
            .unwrap_or(1);
        let usage = std::fs::read_dir(outbox.join(ucloud_wire::usage::USAGE))
            .map(|d| d.count())
            .unwrap_or(0);
        if queued == 0 && usage == 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// The notification stream's thread. It asks for its access tokens itself, over
/// its own connection: sharing the outbox loop's would make each wait on the
/// other's retries and backoff.
fn spawn_stream(
    endpoint: Endpoint,
    refresh_token: String,
    inbox: std::path::PathBuf,
    fence: stream::Fence,
) -> Result<std::thread::JoinHandle<()>, SendError> {
    let options = stream::Options {
        endpoint: endpoint.clone(),
        inbox,
        timing: stream::Timing::STANDARD,
        stop: Default::default(),
        fence,
    };
    let mut client = Client::new(endpoint);
    let mut tokens = tokens::Tokens::new(refresh_token);
    std::thread::Builder::new()
        .name("stream".into())
        .spawn(move || {
            stream::run(&options, &mut |fresh| {
                if fresh {
                    tokens.forget();
                }
                tokens.access_token(&mut client)
            })
        })
        .map_err(|e| {
            SendError::Setup(format!(
                "cannot start the notification stream's thread: {e}"
            ))
        })
}
