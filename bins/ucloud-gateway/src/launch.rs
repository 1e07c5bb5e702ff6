//! Starting the setuid dispatcher: its pipes (the envelope on fd 3, stdin, stdout,
//! stderr collected on the side), the spare one started while a connection is idle
//! (ucloud-gateway(8), SPARE DISPATCHER), and how its end is judged. Every request
//! and every upgrade starts its dispatcher here.

use crate::error::Reject;
use crate::sys;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use ucloud_wire::calls::{Call, Pipe};
use ucloud_wire::error::Failure;

/// Stderr kept for the failure message: its tail, which holds the failure line.
const MAX_STDERR: usize = 64 << 10;
/// A pipe holds at least this much, so a smaller envelope is written without a thread.
const PIPE_CAPACITY: usize = 60 << 10;
/// Pipe size for bulk bytes (upload chunks in, downloads out): the default 64 KiB
/// costs a pair of context switches per 64 KiB. 1 MiB is what an unprivileged
/// process may ask for (`/proc/sys/fs/pipe-max-size`).
const BULK_PIPE: i32 = 1 << 20;
/// A connection gets a spare dispatcher once it has carried this many requests: one
/// that carries a single request (and then closes) would only waste the spare.
const SPARE_AFTER: u32 = 2;
/// A spare older than this is let go instead of used. The gateway checks before
/// each request and while idle, and a request's head and body take at most 130 s
/// more (serve.rs), so a spare never waits longer than about 160 s: well inside the
/// dispatcher's own limit of 300 s for its envelope (ucloud-dispatch(8)).
const SPARE_MAX_AGE: Duration = Duration::from_secs(30);

/// What the plugin's stdin gets.
pub enum Stdin {
    /// Nothing: closed at once.
    Closed,
    /// These bytes, then closed (a data-channel body read whole).
    Bytes(Vec<u8>),
    /// Left open for the caller, who streams into it (`Started::child.stdin`).
    Open,
}

/// A dispatcher that has its envelope, and the thread collecting its stderr.
pub struct Started {
    pub child: Child,
    pub stderr: JoinHandle<Vec<u8>>,
}

/// The dispatchers of one connection: where the program is, and its spare.
pub struct Launcher {
    dispatcher: String,
    /// site.conf asks for spares.
    spares: bool,
    /// The next request's dispatcher, started while the connection is idle.
    spare: RefCell<Option<Spare>>,
    /// Requests of this connection that went to a dispatcher.
    dispatched: Cell<u32>,
    /// Set once a spare ended on its own: the next would only do the same.
    spares_off: Cell<bool>,
}

impl Launcher {
    pub fn new(dispatcher: String, spares: bool) -> Launcher {
        Launcher {
            dispatcher,
            spares,
            spare: RefCell::new(None),
            dispatched: Cell::new(0),
            spares_off: Cell::new(false),
        }
    }

    /// Starts `call`'s dispatcher (or hands the spare the request), gives it the
    /// envelope and `stdin`, and sizes its pipes for the call.
    pub fn launch(&self, call: &Call, envelope: Vec<u8>, stdin: Stdin) -> Result<Started, String> {
        let mut child = match self.take_spare().and_then(|s| s.hand_over(&envelope)) {
            Some(child) => child,
            None => {
                let (child, fd3) = start(&self.dispatcher)?;
                write_side(fd3, envelope);
                child
            }
        };
        match (call.pipe, &stdin) {
            (Pipe::In, Stdin::Open) => grow_pipe(child.stdin.as_ref()),
            (Pipe::Out, _) => grow_pipe(child.stdout.as_ref()),
            _ => {}
        }
        match stdin {
            // Dropping the pipe gives the plugin EOF at once.
            Stdin::Closed => drop(child.stdin.take()),
            Stdin::Bytes(body) => {
                if let Some(pipe) = child.stdin.take() {
                    write_side(pipe, body);
                }
            }
            Stdin::Open => {}
        }
        let stderr = collect_stderr(child.stderr.take().expect("stderr is piped"));
        Ok(Started { child, stderr })
    }

    /// A request went to a dispatcher; a connection that stays open gets a spare
    /// for its next one once it has carried `SPARE_AFTER`.
    pub fn done(&self, stays_open: bool) {
        self.dispatched.set(self.dispatched.get().saturating_add(1));
        if stays_open && self.dispatched.get() >= SPARE_AFTER {
            self.prepare_spare();
        }
    }

    /// Starts the next request's dispatcher now, while the connection waits for that
    /// request: a kept-alive connection then finds its dispatcher past start-up.
    fn prepare_spare(&self) {
        if !self.spares || self.spares_off.get() || self.spare.borrow().is_some() {
            return;
        }
        match start(&self.dispatcher) {
            Ok((child, envelope)) => {
                *self.spare.borrow_mut() = Some(Spare {
                    child,
                    envelope,
                    born: Instant::now(),
                })
            }
            // The request that comes next starts its own and reports the fault.
            Err(e) => ucloud_wire::log_warn!("ucloud-gateway: no spare dispatcher: {e}"),
        }
    }

    /// The spare, if it can still take a request; one that cannot is let go.
    fn take_spare(&self) -> Option<Spare> {
        let mut spare = self.spare.borrow_mut().take()?;
        match spare.fitness() {
            Fitness::Ready => return Some(spare),
            Fitness::TooOld => {}
            Fitness::Ended(why) => {
                ucloud_wire::log_warn!(
                    "ucloud-gateway: a spare dispatcher ended before its request ({why}); \
                     no more spares on this connection"
                );
                self.spares_off.set(true);
            }
        }
        spare.release();
        None
    }

    /// When the spare must be let go, if there is one.
    pub fn spare_expires(&self) -> Option<Instant> {
        self.spare.borrow().as_ref().map(Spare::expires)
    }

    /// Lets the spare go if it is too old to be used.
    pub fn release_old_spare(&self) {
        if self.spare_expires().is_some_and(|t| t <= Instant::now()) {
            self.release_spare();
        }
    }

    /// Lets the spare go (fd 3 closed unwritten: it exits without a record).
    pub fn release_spare(&self) {
        if let Some(spare) = self.spare.borrow_mut().take() {
            spare.release();
        }
    }
}

/// A dispatcher started before its request, while the connection was idle: it has
/// made its own checks and waits for the envelope on fd 3. Closing fd 3 unwritten
/// lets it go without a record.
struct Spare {
    child: Child,
    envelope: File,
    born: Instant,
}

/// What became of a spare by the time a request wants it.
enum Fitness {
    Ready,
    TooOld,
    /// It exited on its own (a broken installation, say); why, for the log.
    Ended(String),
}

impl Spare {
    /// When the spare gets too old to be given a request.
    fn expires(&self) -> Instant {
        self.born + SPARE_MAX_AGE
    }

    fn fitness(&mut self) -> Fitness {
        match self.child.try_wait() {
            Ok(None) if Instant::now() < self.expires() => Fitness::Ready,
            Ok(None) => Fitness::TooOld,
            Ok(Some(status)) => {
                let mut text = Vec::new();
                if let Some(mut err) = self.child.stderr.take() {
                    // It has exited: its stderr ends at once.
                    let _ = err.by_ref().take(4096).read_to_end(&mut text);
                }
                let failure = Failure::from_stderr(&text, 512);
                Fitness::Ended(format!("{status}: {}", failure.why))
            }
            Err(e) => Fitness::Ended(format!("cannot wait for it: {e}")),
        }
    }

    /// Writes the envelope and closes fd 3: the dispatcher now decides the request.
    /// A spare that is gone by then (the write fails) is let go: `None`, start anew.
    fn hand_over(mut self, envelope: &[u8]) -> Option<Child> {
        if self.envelope.write_all(envelope).is_err() {
            self.release();
            return None;
        }
        let Spare { child, .. } = self;
        Some(child)
    }

    /// Closes fd 3 unwritten, so the dispatcher exits without a record, and reaps it.
    /// One still busy with its own checks is killed (it has decided nothing yet, and
    /// still has the gateway's real uid), so that this never waits on it.
    fn release(self) {
        let Spare {
            mut child,
            envelope,
            ..
        } = self;
        drop(envelope);
        drop(child.stdin.take());
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
        let _ = child.wait();
    }
}

/// Starts a dispatcher with pipes for fds 0, 1 and 2; returns it and the write end
/// of its envelope pipe (fd 3), which is still to be written and closed.
fn start(dispatcher: &str) -> Result<(Child, File), String> {
    let (env_read, env_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot make the envelope pipe: {e}"))?;
    let mut cmd = Command::new(dispatcher);
    // The dispatcher rebuilds its environment anyway; give it nothing to misread.
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = sys::spawn_with_fd3(&mut cmd, &env_read)
        .map_err(|e| format!("cannot start the dispatcher {dispatcher}: {e}"))?;
    Ok((child, File::from(env_write)))
}

/// Best effort: past the account's pipe quota (`pipe-user-pages-soft`) the kernel
/// refuses, and the default size still works, only slower.
fn grow_pipe(pipe: Option<&impl AsFd>) {
    if let Some(pipe) = pipe {
        let _ = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(BULK_PIPE));
    }
}

/// Writes `data` and closes `w`, in a thread when it may not fit the pipe. A reader
/// that exits early makes the write fail with EPIPE; that is its business.
fn write_side(mut w: impl Write + Send + 'static, data: Vec<u8>) {
    if data.len() <= PIPE_CAPACITY {
        let _ = w.write_all(&data);
    } else {
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
}

fn collect_stderr(mut err: ChildStderr) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => return kept,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * MAX_STDERR {
                        kept.drain(..kept.len() - MAX_STDERR);
                    }
                }
            }
        }
    })
}

/// Why the child ended, as a rejection; `None` for exit status 0.
pub fn judge(
    call: &str,
    status: io::Result<ExitStatus>,
    stderr: JoinHandle<Vec<u8>>,
) -> Option<Reject> {
    let text = stderr.join().unwrap_or_default();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Some(Reject::DispatchFailed(format!(
                "waiting for the dispatcher: {e}"
            )))
        }
    };
    if status.success() {
        return None;
    }
    if let Some(sig) = status.signal() {
        return Some(if sig == Signal::SIGALRM as i32 {
            Reject::Timeout(call.to_string())
        } else {
            Reject::Crashed(sig)
        });
    }
    Some(Reject::Plugin(Failure::from_stderr(&text, 4096)))
}

/// Ends a child we no longer want. Once the dispatcher has changed to the mapped
/// user the kill is refused (EPERM); closing its stdout then makes it fail on the
/// next write, and the caller closes the connection, which ends this process and
/// with it the plugin (PR_SET_PDEATHSIG, set by the dispatcher).
pub fn stop(child: &mut Child) {
    let killed = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).is_ok();
    drop(child.stdout.take());
    if killed {
        // SIGKILL cannot be ignored: reaping it does not block for long.
        let _ = child.wait();
    } else {
        let _ = child.try_wait();
    }
}
