//! One request's dispatcher: start it with the envelope on fd 3, feed its stdin,
//! collect stderr on the side, and relay stdout to the client in the simple or the
//! framed form (contracts.md).

use crate::error::Reject;
use crate::respond;
use crate::sys;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use ucloud_http::server::{write_head, write_last_chunk};
use ucloud_wire::answer::{self, Frame};
use ucloud_wire::calls::{Call, Pipe};
use ucloud_wire::error::Failure;

/// The simple form's cap (contracts.md).
const MAX_SIMPLE: usize = 64 << 20;
/// Stderr kept for the failure message: its tail, which holds the failure line.
const MAX_STDERR: usize = 64 << 10;
/// A pipe holds at least this much, so a smaller envelope is written without a thread.
const PIPE_CAPACITY: usize = 60 << 10;
/// Pipe size for bulk bytes (upload chunks in, downloads out): the default 64 KiB
/// costs a pair of context switches per 64 KiB. 1 MiB is what an unprivileged
/// process may ask for (`/proc/sys/fs/pipe-max-size`).
const BULK_PIPE: i32 = 1 << 20;
/// The relay's read buffer: one pipe's worth, so one read empties the pipe.
const RELAY_BUFFER: usize = 1 << 20;

/// How the relay ended.
pub enum Relayed {
    /// An answer went out; the connection may carry another request if `reusable`.
    Answered { status: u16, reusable: bool },
    /// The call failed before anything was sent: the caller answers with this.
    Failed(Reject),
    /// The client went away (or the answer broke off mid-body): close the connection.
    Broken { status: u16, why: String },
}

pub struct Job<'a> {
    pub dispatcher: &'a str,
    /// A dispatcher already started for this request, if the connection has one.
    pub spare: Option<Spare>,
    pub call: &'static Call,
    pub envelope: Vec<u8>,
    /// Raw body for the plugin's stdin (data channel); `None` closes stdin at once.
    pub stdin: Option<Vec<u8>>,
    /// A body streamed from the client to the plugin's stdin (upload chunks), in
    /// place of `stdin`: called once with the pipe, it copies the body into it.
    pub stream: Option<BodyStream<'a>>,
    pub gzip: bool,
    pub keep_alive: bool,
    /// jobs.create's request: its answer binds the Slurm jobs to UCloud's (bind.rs).
    pub binds: Option<serde_json::Value>,
}

/// Copies a request body into the plugin's stdin (given as the argument).
pub type BodyStream<'a> = &'a mut dyn FnMut(&mut dyn Write) -> StreamEnd;

/// How streaming a request body to the plugin ended.
pub enum StreamEnd {
    /// The whole body went to the plugin, or the plugin stopped reading early (the
    /// rest was dropped): its answer decides.
    Done,
    /// The client went away or broke the body off: the plugin saw its stdin end
    /// early, and the connection is over.
    ClientGone(String),
}

pub fn run(mut job: Job<'_>, out: &mut impl Write) -> Relayed {
    let mut child = match spawn(&mut job) {
        Ok(child) => child,
        Err(e) => return Relayed::Failed(Reject::DispatchFailed(e)),
    };
    let stderr = collect_stderr(child.stderr.take().expect("stderr is piped"));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    if let Some(stream) = job.stream.take() {
        // The plugin reads its whole stdin before it answers (an early answer is a
        // refusal, small enough for the pipe), so copying first cannot deadlock.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let end = stream(&mut stdin);
        drop(stdin);
        if let StreamEnd::ClientGone(why) = end {
            // Let the plugin see the short body and clean up, then close.
            let _ = io::copy(&mut stdout, &mut io::sink());
            let _ = child.wait();
            let _ = stderr.join();
            return Relayed::Broken { status: 400, why };
        }
    }
    let mut stdout = stdout;
    let start = match read_start(&mut stdout) {
        Ok(start) => start,
        Err(e) => {
            return finish_failed(
                child,
                stderr,
                Reject::DispatchFailed(format!("reading the plugin's answer: {e}")),
            )
        }
    };
    if answer::is_framed(&start) {
        let after = start
            .iter()
            .position(|&c| c == b'\n')
            .map_or(start.len(), |i| i + 1);
        let reader = BufReader::with_capacity(
            RELAY_BUFFER,
            io::Cursor::new(start[after..].to_vec()).chain(stdout),
        );
        relay_framed(child, stderr, reader, out, &job)
    } else {
        relay_simple(child, stderr, start, stdout, out, &job)
    }
}

/// A dispatcher started before its request, while the connection was idle: it has
/// made its own checks and waits for the envelope on fd 3 (ucloud-gateway(8),
/// SPARE DISPATCHER). Closing fd 3 unwritten lets it go without a record.
pub struct Spare {
    child: Child,
    envelope: File,
    born: Instant,
}

/// A spare older than this is let go instead of used. The gateway checks before
/// each request and while idle, and a request's head and body take at most 130 s
/// more (main.rs), so a spare never waits longer than about 160 s: well inside the
/// dispatcher's own limit of 300 s for its envelope (ucloud-dispatch(8)).
pub const SPARE_MAX_AGE: Duration = Duration::from_secs(30);

/// What became of a spare by the time a request wants it.
pub enum Fitness {
    Ready,
    TooOld,
    /// It exited on its own (a broken installation, say); why, for the log.
    Ended(String),
}

impl Spare {
    pub fn start(dispatcher: &str) -> Result<Spare, String> {
        let (child, envelope) = start(dispatcher)?;
        Ok(Spare {
            child,
            envelope,
            born: Instant::now(),
        })
    }

    /// When the spare gets too old to be given a request.
    pub fn expires(&self) -> Instant {
        self.born + SPARE_MAX_AGE
    }

    pub fn fitness(&mut self) -> Fitness {
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
    pub fn release(self) {
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
pub fn start(dispatcher: &str) -> Result<(Child, File), String> {
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

/// Starts the dispatcher (or takes the job's spare) and hands it the envelope and
/// stdin (taken from `job`).
fn spawn(job: &mut Job<'_>) -> Result<Child, String> {
    let envelope = std::mem::take(&mut job.envelope);
    let mut child = match job
        .spare
        .take()
        .and_then(|spare| spare.hand_over(&envelope))
    {
        Some(child) => child,
        None => {
            let (child, fd3) = start(job.dispatcher)?;
            write_side(fd3, envelope);
            child
        }
    };
    match job.call.pipe {
        Pipe::In if job.stream.is_some() => grow_pipe(child.stdin.as_ref()),
        Pipe::Out => grow_pipe(child.stdout.as_ref()),
        _ => {}
    }
    // Without a body, dropping the pipe gives the plugin EOF at once.
    if job.stream.is_none() {
        if let (Some(body), Some(stdin)) = (job.stdin.take(), child.stdin.take()) {
            write_side(stdin, body);
        } else {
            drop(child.stdin.take());
        }
    }
    Ok(child)
}

/// Best effort: past the account's pipe quota (`pipe-user-pages-soft`) the kernel
/// refuses, and the default size still works, only slower.
pub fn grow_pipe(pipe: Option<&impl AsFd>) {
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

pub fn collect_stderr(mut err: ChildStderr) -> JoinHandle<Vec<u8>> {
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

/// Reads until the first line is known (or EOF), enough to tell the two forms apart.
fn read_start(stdout: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut start = Vec::with_capacity(8192);
    let mut buf = [0u8; 8192];
    while start.len() <= answer::MAGIC.len() + 1 {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        start.extend_from_slice(&buf[..n]);
    }
    Ok(start)
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

fn finish_failed(mut child: Child, stderr: JoinHandle<Vec<u8>>, reject: Reject) -> Relayed {
    stop(&mut child);
    let _ = stderr.join();
    Relayed::Failed(reject)
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

fn relay_simple(
    mut child: Child,
    stderr: JoinHandle<Vec<u8>>,
    mut body: Vec<u8>,
    stdout: impl Read,
    out: &mut impl Write,
    job: &Job<'_>,
) -> Relayed {
    let mut limited = stdout.take((MAX_SIMPLE + 1 - body.len().min(MAX_SIMPLE)) as u64);
    if let Err(e) = limited.read_to_end(&mut body) {
        return finish_failed(
            child,
            stderr,
            Reject::DispatchFailed(format!("reading the plugin's answer: {e}")),
        );
    }
    if body.len() > MAX_SIMPLE {
        return finish_failed(
            child,
            stderr,
            Reject::BadOutput(format!(
                "the plugin's answer is larger than {MAX_SIMPLE} bytes"
            )),
        );
    }
    drop(limited);
    if let Some(reject) = judge(job.call.name, child.wait(), stderr) {
        return Relayed::Failed(reject);
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
        let why = if body.iter().all(u8::is_ascii_whitespace) {
            "the plugin exited 0 without printing an answer".to_string()
        } else {
            format!("the plugin's answer is not JSON: {e}")
        };
        return Relayed::Failed(Reject::BadOutput(why));
    }
    // Before UCloud hears of the jobs, so the monitor's first look finds the binding.
    if let Some(request) = &job.binds {
        crate::bind::record(request, &body);
    }
    match respond::send_json(out, 200, &body, job.gzip, job.keep_alive) {
        Ok(()) => Relayed::Answered {
            status: 200,
            reusable: true,
        },
        Err(e) => Relayed::Broken {
            status: 200,
            why: format!("client gone: {e}"),
        },
    }
}

/// Response headers a plugin may not set: the gateway owns the framing.
fn owned_by_gateway(name: &str) -> bool {
    [
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "content-length",
        "trailer",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

enum BodyMode {
    Chunked,
    Fixed { total: u64, sent: u64 },
}

fn relay_framed(
    mut child: Child,
    stderr: JoinHandle<Vec<u8>>,
    mut reader: impl BufRead,
    out: &mut impl Write,
    job: &Job<'_>,
) -> Relayed {
    let mut head: Option<(u16, Vec<(String, String)>)> = None;
    let mut mode: Option<BodyMode> = None;
    let mut w = BufWriter::with_capacity(64 << 10, out);
    let mut status = 200;
    let ended = loop {
        let frame = match answer::read_frame(&mut reader) {
            Ok(frame) => frame,
            Err(e) => {
                if mode.is_none() {
                    return finish_failed(child, stderr, Reject::BadOutput(e.to_string()));
                }
                stop(&mut child);
                return Relayed::Broken {
                    status,
                    why: e.to_string(),
                };
            }
        };
        match frame {
            Some(Frame::Head { status: s, headers }) => {
                if head.is_some() || mode.is_some() {
                    stop(&mut child);
                    let why = "the plugin sent a second head or a head after data".to_string();
                    if mode.is_none() {
                        return finish_failed(child, stderr, Reject::BadOutput(why));
                    }
                    return Relayed::Broken { status, why };
                }
                head = Some((s, headers));
            }
            Some(Frame::Data(n)) => {
                if mode.is_none() {
                    match send_head(&mut w, head.take(), job.keep_alive) {
                        Ok((s, m)) => {
                            status = s;
                            mode = Some(m);
                        }
                        Err(HeadError::Bad(why)) => {
                            return finish_failed(child, stderr, Reject::BadOutput(why))
                        }
                        Err(HeadError::Gone(why)) => {
                            stop(&mut child);
                            return Relayed::Broken { status, why };
                        }
                    }
                }
                let m = mode.as_mut().expect("set above");
                if let Err(why) = copy_data(&mut reader, &mut w, m, n) {
                    stop(&mut child);
                    return Relayed::Broken { status, why };
                }
            }
            Some(Frame::End) => break true,
            None => break false,
        }
    };
    // At EOF without an end frame, the exit status decides whether it was complete.
    let failure = judge(job.call.name, child.wait(), stderr);
    if mode.is_none() {
        if let (Some(reject), false) = (failure, ended) {
            return Relayed::Failed(reject);
        }
        match send_head(&mut w, head.take(), job.keep_alive) {
            Ok((s, m)) => {
                status = s;
                mode = Some(m);
            }
            Err(HeadError::Bad(why)) => return Relayed::Failed(Reject::BadOutput(why)),
            Err(HeadError::Gone(why)) => return Relayed::Broken { status, why },
        }
    } else if !ended && failure.is_some() {
        return Relayed::Broken {
            status,
            why: "the plugin failed in the middle of its answer".into(),
        };
    }
    let done = match mode.expect("set above") {
        BodyMode::Chunked => write_last_chunk(&mut w).map_err(|e| format!("client gone: {e}")),
        BodyMode::Fixed { total, sent } if total == sent => Ok(()),
        BodyMode::Fixed { total, sent } => Err(format!(
            "the plugin announced {total} bytes and sent {sent}"
        )),
    };
    match done.and_then(|()| w.flush().map_err(|e| format!("client gone: {e}"))) {
        Ok(()) => Relayed::Answered {
            status,
            reusable: true,
        },
        Err(why) => Relayed::Broken { status, why },
    }
}

enum HeadError {
    /// The plugin's head is unusable; nothing was sent.
    Bad(String),
    Gone(String),
}

fn send_head(
    w: &mut impl Write,
    head: Option<(u16, Vec<(String, String)>)>,
    keep_alive: bool,
) -> Result<(u16, BodyMode), HeadError> {
    let (status, headers) =
        head.unwrap_or_else(|| (200, vec![("Content-Type".into(), respond::JSON.into())]));
    // UCloud reads 449 and 503 as "re-run init and retry": a plugin's fault is a 500.
    let status = if status == 449 || status == 503 {
        500
    } else {
        status
    };
    let mut length = None;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| HeadError::Bad(format!("bad Content-Length {value:?}")))?,
            );
        }
    }
    let mut list: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| !owned_by_gateway(n))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let length_text = length.map(|l| l.to_string());
    // 204 and 304 never carry a body (RFC 9112 6.3): announcing one would make the
    // client read the chunk framing as the next response on this connection.
    let bodiless = status == 204 || status == 304;
    let mode = match &length_text {
        _ if bodiless => BodyMode::Fixed { total: 0, sent: 0 },
        Some(text) => {
            list.push(("Content-Length", text));
            BodyMode::Fixed {
                total: length.unwrap_or(0),
                sent: 0,
            }
        }
        None => {
            list.push(("Transfer-Encoding", "chunked"));
            BodyMode::Chunked
        }
    };
    if !keep_alive {
        list.push(("Connection", "close"));
    }
    let mut buf = Vec::with_capacity(256);
    write_head(&mut buf, status, &list)
        .map_err(|e| HeadError::Bad(format!("the plugin's head is unusable: {e}")))?;
    w.write_all(&buf)
        .map_err(|e| HeadError::Gone(format!("client gone: {e}")))?;
    Ok((status, mode))
}

fn copy_data(
    reader: &mut impl BufRead,
    w: &mut impl Write,
    mode: &mut BodyMode,
    n: usize,
) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    match mode {
        BodyMode::Chunked => {
            w.write_all(format!("{n:x}\r\n").as_bytes())
                .map_err(|e| format!("client gone: {e}"))?;
        }
        BodyMode::Fixed { total, sent } => {
            if *sent + n as u64 > *total {
                return Err(format!(
                    "the plugin sent more than its Content-Length of {total}"
                ));
            }
            *sent += n as u64;
        }
    }
    let mut left = n;
    while left > 0 {
        let buf = reader
            .fill_buf()
            .map_err(|e| format!("reading the plugin's answer: {e}"))?;
        if buf.is_empty() {
            return Err("the plugin's data frame is cut short".into());
        }
        let k = buf.len().min(left);
        w.write_all(&buf[..k])
            .map_err(|e| format!("client gone: {e}"))?;
        reader.consume(k);
        left -= k;
    }
    if let BodyMode::Chunked = mode {
        w.write_all(b"\r\n")
            .map_err(|e| format!("client gone: {e}"))?;
    }
    // Stream: the client sees each frame as it comes.
    w.flush().map_err(|e| format!("client gone: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_cannot_set_framing_headers() {
        let mut out = Vec::new();
        let head = Some((
            200,
            vec![
                ("Transfer-Encoding".into(), "gzip".into()),
                ("X-A".into(), "1".into()),
            ],
        ));
        let (status, mode) = send_head(&mut out, head, false).ok().unwrap();
        assert_eq!(status, 200);
        assert!(matches!(mode, BodyMode::Chunked));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("X-A: 1\r\n")
                && !text.contains("gzip")
                && text.contains("Connection: close")
        );
    }

    #[test]
    fn no_content_answers_announce_no_body() {
        for status in [204, 304] {
            let mut out = Vec::new();
            let head = Some((status, vec![("Content-Length".into(), "5".into())]));
            let (_, mode) = send_head(&mut out, head, true).ok().unwrap();
            assert!(matches!(mode, BodyMode::Fixed { total: 0, sent: 0 }));
            let text = String::from_utf8(out).unwrap().to_ascii_lowercase();
            assert!(
                !text.contains("transfer-encoding") && !text.contains("content-length"),
                "{text}"
            );
        }
    }

    #[test]
    fn retry_statuses_are_not_relayed() {
        let mut out = Vec::new();
        let (status, _) = send_head(&mut out, Some((503, vec![])), true).ok().unwrap();
        assert_eq!(status, 500);
        let (status, _) = send_head(&mut Vec::new(), Some((206, vec![])), true)
            .ok()
            .unwrap();
        assert_eq!(status, 206);
    }
}
