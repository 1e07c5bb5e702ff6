//! ucloud-sender: the one program that holds the provider's refresh token. It
//! delivers the outbox (what the registry and the monitor have to tell UCloud) to
//! UCloud in order, retrying until UCloud has taken each message, and, on a site
//! that uses UCloud projects, reads UCloud's provider notification stream into the
//! inbox (its own thread).
#![forbid(unsafe_code)]

mod deliver;
mod error;
mod products;
mod setup;
mod stream;
mod tokens;

use error::SendError;
use std::process::ExitCode;
use std::time::Duration;
use ucloud_http::client::{Client, Endpoint};

const HELP: &str = "\
ucloud-sender: deliver ucloud-im's outbox to UCloud, read UCloud's notifications

usage: ucloud-sender [--once]

  --once   register the products, deliver what is queued, then exit: 0 when the
           products are registered and the queue is empty at the end, 1 when they
           are not or a message could not be delivered (it stays queued); the
           notification stream is not opened
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
token; runs as sender_user only. See ucloud-sender(8).
";

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
    let mut sender = deliver::Sender::new(Client::new(endpoint), setup.refresh_token, setup.outbox);
    if once {
        let registered = matches!(
            registrar.settle(&mut sender, Some(deliver::ONCE_ATTEMPTS)),
            products::Outcome::Registered(_)
        );
        return Ok(sender.drain(true)? && registered);
    }
    ucloud_wire::log_info!("ucloud-sender: delivering to {}", setup.ucloud_url);
    let reader = match setup.inbox {
        Some(inbox) => Some(spawn_stream(stream_endpoint, refresh_token, inbox)?),
        None => {
            ucloud_wire::log_info!(
                "ucloud-sender: site.conf sets no project_prefix: the notification stream is not read"
            );
            None
        }
    };
    registrar.settle(&mut sender, None);
    loop {
        // The stream's thread waits out every failure; it ends only by a panic, and
        // a sender that no longer reads the stream should say so and be restarted.
        if reader.as_ref().is_some_and(|r| r.is_finished()) {
            return Err(SendError::Setup(
                "the notification stream's thread stopped unexpectedly".into(),
            ));
        }
        registrar.tick(&mut sender);
        sender.drain(false)?;
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
) -> Result<std::thread::JoinHandle<()>, SendError> {
    let options = stream::Options {
        endpoint: endpoint.clone(),
        inbox,
        timing: stream::Timing::STANDARD,
        stop: Default::default(),
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
