//! ucloud-interactive: the plugin of UCloud's interactive sessions, run as the
//! mapped user by the dispatcher: a terminal in a job (`jobs.shell`, term.rs) and
//! a job's web interface (`jobs.webAuthorize`, `jobs.web`, web.rs). Each reads
//! which job and rank its session is for from the token the dispatcher verified
//! (its signed `sub`), never from the request, and finds that job among the
//! caller's own running Slurm jobs. See ucloud-interactive(8).
// unsafe only in sys.rs, allowed there alone.
#![deny(unsafe_code)]

mod error;
mod folder;
mod listener;
mod relay;
mod session;
mod slurm;
#[allow(unsafe_code)]
mod sys;
mod term;
mod web;

use error::Error;
use nix::unistd::User;
use std::process::ExitCode;

const USAGE: &str = "\
usage: jobs.shell REQUEST_FILE
       jobs.openTerminalInFolder REQUEST_FILE
       jobs.webAuthorize REQUEST_FILE
       jobs.web REQUEST_FILE
       ucloud-interactive --help | --version

The jobs.shell plugin of ucloud-im: run by ucloud-dispatch as the mapped user,
with the session identifier the dispatcher verified in UCLOUD_TRANSFER_TOKEN,
the browser's {\"type\":\"initialize\",\"cols\":C,\"rows\":R} in REQUEST_FILE, and
the browser's later messages on stdin. It starts
  srun --jobid=ID --overlap --pty --nodes=1 --ntasks=1 --nodelist=NODE SHELL -l
on a pseudo-terminal, in the caller's running Slurm job named after the UCloud
job, and prints the terminal's output as {\"type\":\"data\",\"data\":...} lines.

As jobs.webAuthorize it turns a job's web link into the cookie of the job's web
host; as jobs.web it connects to the port the job's application listens on
(after checking that a process of the caller's listens there, on the job's node)
and relays the connection's bytes between stdin/stdout and that port.
The call is UCLOUD_CALL, as the dispatcher sets it. See ucloud-interactive(8).
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-interactive", || USAGE.into())
    {
        return done;
    }
    ucloud_wire::token::install_crypto_provider();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.failure().line());
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: pico_args::Arguments) -> Result<(), Error> {
    let request_file: String = args
        .free_from_str()
        .map_err(|_| Error::BadRequest("the request file argument is missing".into()))?;
    let request = std::fs::read(&request_file)
        .map_err(|e| Error::BadRequest(format!("cannot read {request_file}: {e}")))?;
    let token = std::env::var("UCLOUD_TRANSFER_TOKEN").ok();
    let now = ucloud_wire::now_ms() / 1000;
    let me = User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .ok_or_else(|| Error::Start("the caller's account is not in the user database".into()))?;
    match std::env::var("UCLOUD_CALL").as_deref() {
        Ok("jobs.shell") => term::run(&request, token.as_deref(), now, &me),
        Ok("jobs.openTerminalInFolder") => folder::open(token.as_deref(), now, &me.name),
        Ok("jobs.webAuthorize") => web::authorize(&request, token.as_deref(), now),
        Ok("jobs.web") => web::proxy(&request, token.as_deref(), now, &me),
        Ok(other) => Err(Error::BadRequest(format!(
            "this plugin does not serve {other}"
        ))),
        Err(_) => Err(Error::BadRequest(
            "UCLOUD_CALL is not set: run by ucloud-dispatch only".into(),
        )),
    }
}
