//! The terminal (`jobs.shell`): a shell from `srun --jobid … --overlap --pty` on a
//! pseudo-terminal on the rank's node (or, for a folder, a login shell on this
//! node in the folder), relayed as the WebSocket stream of ucloud-im-protocol(7)
//! until either side ends.

use crate::error::Error;
use crate::session::Place;
use crate::{folder, relay, session, slurm, sys};
use nix::pty::openpty;
use nix::unistd::{Pid, User};
use std::io::Write;
use std::process::{Command, Stdio};

pub fn run(request: &[u8], token: Option<&str>, now: u64, me: &User) -> Result<(), Error> {
    let session = session::read(token, request, now)?;
    let shell = login_shell(me);
    let mut command = match &session.place {
        Place::Job { job, rank } => in_job(job, *rank, me, &shell)?,
        Place::Folder(folder) => {
            // On this login node, in the folder, inside the gateway unit's limits.
            let folder = folder::local_dir(folder, &me.name)?;
            // The shell inherits it (a profile of the user's may change it).
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(folder.umask));
            let mut login = Command::new(&shell);
            login.arg("-l").current_dir(folder.dir);
            login
        }
    };
    command.env("SHELL", &shell).env("TERM", "xterm-256color");
    let size = nix::pty::Winsize {
        ws_row: session.rows,
        ws_col: session.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None)
        .map_err(|e| Error::Start(format!("cannot open a pseudo-terminal: {e}")))?;
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
        .map_err(|e| Error::Start(format!("cannot start the shell: {e}")))?;
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

/// `srun` attaching a login shell to the caller's running job, on the rank's node.
fn in_job(job: &str, rank: u32, me: &User, shell: &std::path::Path) -> Result<Command, Error> {
    let place = slurm::locate(job, rank, &me.name)?;
    let mut command = Command::new("srun");
    command
        .arg(format!("--jobid={}", place.slurm_id))
        .args(["--overlap", "--pty", "--nodes=1", "--ntasks=1", "--quiet"])
        .arg(format!("--nodelist={}", place.node))
        .arg(format!("--chdir={}", me.dir.display()))
        .arg(shell)
        .arg("-l")
        .current_dir(&me.dir);
    Ok(command)
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
