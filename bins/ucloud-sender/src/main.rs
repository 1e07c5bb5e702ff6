//! ucloud-sender: the one program that holds the provider's refresh token. It
//! delivers the outbox (what the registry and the monitor have to tell UCloud) to
//! UCloud in order, retrying until UCloud has taken each message.
#![forbid(unsafe_code)]

mod deliver;
mod error;
mod products;
mod setup;
mod tokens;

use error::SendError;
use std::process::ExitCode;
use std::time::Duration;
use ucloud_http::client::{Client, Endpoint};

const HELP: &str = "\
ucloud-sender: deliver ucloud-im's outbox to UCloud

usage: ucloud-sender [--once]

  --once   register the products, deliver what is queued, then exit: 0 when the
           products are registered and the queue is empty at the end, 1 when they
           are not or a message could not be delivered (it stays queued)
  --version  print the version

First it registers the site's products (products/jobs.json and products/files.json
of the configuration directory) with UCloud, unless UCloud holds them already or the
table would change a category's accounting terms; then it delivers the outbox.
Without --once it runs until stopped, delivering new messages as they arrive and
registering the products again whenever the table changes. Reads site.conf
(provider, ucloud_url, ucloud_ca, sender_user) and the refresh token; runs as
sender_user only. See ucloud-sender(8).
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
    let mut sender = deliver::Sender::new(Client::new(endpoint), setup.refresh_token, setup.outbox);
    if once {
        let registered = matches!(
            registrar.settle(&mut sender, Some(deliver::ONCE_ATTEMPTS)),
            products::Outcome::Registered(_)
        );
        return Ok(sender.drain(true)? && registered);
    }
    ucloud_wire::log_info!("ucloud-sender: delivering to {}", setup.ucloud_url);
    registrar.settle(&mut sender, None);
    loop {
        registrar.tick(&mut sender);
        sender.drain(false)?;
        std::thread::sleep(POLL);
    }
}
