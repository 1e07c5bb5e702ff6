//! ucloud-term: the terminal plugin (`jobs.shell`), run as the mapped user by the
//! dispatcher once per terminal. It reads which job and rank its session is for
//! (signed by the dispatcher), finds that job among the caller's own running
//! Slurm jobs, starts `srun --jobid … --overlap --pty` on a pseudo-terminal on
//! the rank's node, and relays keys in and the screen out as the WebSocket stream
//! of ucloud-im-protocol(7) until either side ends. See ucloud-term(8).
// unsafe only in sys.rs, allowed there alone.
#![deny(unsafe_code)]

mod error;
mod relay;
mod session;
mod slurm;
#[allow(unsafe_code)]
mod sys;

use error::Error;
use nix::pty::openpty;
use nix::unistd::{Pid, User};
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

const USAGE: &str = "\
usage: jobs.shell REQUEST_FILE
       ucloud-term --help | --version

The jobs.shell plugin of ucloud-im: run by ucloud-dispatch as the mapped user,
with the session identifier the dispatcher verified in UCLOUD_TRANSFER_TOKEN,
the browser's {\"type\":\"initialize\",\"cols\":C,\"rows\":R} in REQUEST_FILE, and
the browser's later messages on stdin. It starts
  srun --jobid=ID --overlap --pty --nodes=1 --ntasks=1 --nodelist=NODE SHELL -l
on a pseudo-terminal, in the caller's running Slurm job named after the UCloud
job, and prints the terminal's output as {\"type\":\"data\",\"data\":...} lines.
See ucloud-term(8).
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) = ucloud_wire::cli::help_or_version(&mut args, "ucloud-term", || USAGE.into())
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
    let session = session::read(token.as_deref(), &request, now)?;
    let me = User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .ok_or_else(|| Error::Start("the caller's account is not in the user database".into()))?;
    let place = slurm::locate(&session.job, session.rank, &me.name)?;
    let shell = login_shell(&me);
    let size = nix::pty::Winsize {
        ws_row: session.rows,
        ws_col: session.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None)
        .map_err(|e| Error::Start(format!("cannot open a pseudo-terminal: {e}")))?;
    let mut command = Command::new("srun");
    command
        .arg(format!("--jobid={}", place.slurm_id))
        .args(["--overlap", "--pty", "--nodes=1", "--ntasks=1", "--quiet"])
        .arg(format!("--nodelist={}", place.node))
        .arg(format!("--chdir={}", me.dir.display()))
        .arg(&shell)
        .arg("-l")
        .env("SHELL", &shell)
        .env("TERM", "xterm-256color")
        .current_dir(&me.dir);
    let slave = pty.slave;
    let (stdin, stdout, stderr) = (
        slave.try_clone().map_err(start_error)?,
        slave.try_clone().map_err(start_error)?,
        slave,
    );
    command
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    sys::on_own_terminal(&mut command);
    let mut child = command
        .spawn()
        .map_err(|e| Error::Start(format!("cannot start srun: {e}")))?;
    // The command holds the slave's copies: drop them, so that the terminal reads
    // EIO once the shell's side has closed.
    drop(command);
    let mut out = std::io::stdout().lock();
    // The WebSocket stream's head (ucloud-im-protocol(7)), then the web client's
    // "initialize" (UCloud's own module answers one too).
    let head = format!(
        "{}\n{}\n{}\n",
        ucloud_wire::answer::MAGIC,
        ucloud_wire::answer::WEBSOCKET_HEAD,
        r#"{"type":"initialize"}"#
    );
    let relayed = out
        .write_all(head.as_bytes())
        .and_then(|()| out.flush())
        .and_then(|()| relay::run(pty.master, Pid::from_raw(child.id() as i32), &mut out));
    let _ = child.wait();
    relayed.map_err(|e| Error::Start(format!("the terminal ended badly: {e}")))
}

fn start_error(e: std::io::Error) -> Error {
    Error::Start(format!("cannot set up the pseudo-terminal: {e}"))
}

/// The account's login shell, when it is an absolute path to a program.
fn login_shell(me: &User) -> std::path::PathBuf {
    let shell = &me.shell;
    if shell.is_absolute() && shell.is_file() {
        shell.clone()
    } else {
        "/bin/sh".into()
    }
}
