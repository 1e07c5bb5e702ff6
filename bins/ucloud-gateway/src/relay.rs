//! A plugin's answer, relayed to the client in the simple or the framed form
//! (contracts.md, "Plugin → gateway"), with a request body streamed to the plugin
//! first when there is one.

use crate::error::Reject;
use crate::launch::{judge, stop, Started};
use crate::respond;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::process::Child;
use std::thread::JoinHandle;
use ucloud_http::server::{write_head, write_last_chunk};
use ucloud_wire::answer::{self, Frame};
use ucloud_wire::calls::Call;

/// The simple form's cap (contracts.md).
const MAX_SIMPLE: usize = 64 << 20;
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

/// How to relay one call's answer.
pub struct Job<'a> {
    pub call: &'static Call,
    /// A body streamed from the client to the plugin's stdin (upload chunks), left
    /// open by the launch: called once with the pipe, it copies the body into it.
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

pub fn run(started: Started, mut job: Job<'_>, out: &mut impl Write) -> Relayed {
    let Started { mut child, stderr } = started;
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

fn finish_failed(mut child: Child, stderr: JoinHandle<Vec<u8>>, reject: Reject) -> Relayed {
    stop(&mut child);
    let _ = stderr.join();
    Relayed::Failed(reject)
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
