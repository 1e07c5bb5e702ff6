//! The WEBSOCKET_V1 upload (ucloud-gateway(8), UPLOADS OVER A WEBSOCKET): a
//! WebSocket on the upload endpoint, its transfer token in the URL (a browser
//! cannot set headers on a WebSocket). The client's first message, the text
//! `<offset> <totalSize>`, goes to the plugin as one line; the bytes of its binary
//! messages follow raw, with backpressure (a reader thread writes them into the
//! plugin's stdin, so a slow disk slows the client, never fills this process).
//! They are streamed: each read from the client is unmasked where it lies and its
//! data written on at once, so no message is ever assembled here.
//! Each line the plugin prints, the byte count on disk, goes back as a text
//! message. The plugin's exit ends the WebSocket: 1000 once the file is complete,
//! otherwise 1008 (a refusal) or 1011 with the plugin's why.

use super::shared::{finish, pump, read_tick, refuse, start, upgrade_accept, Ended, Live};
use crate::conn::ClientIn;
use crate::connection::Connection;
use crate::credential::{no_transfer_token, transfer_token};
use crate::envelope;
use crate::error::Reject;
use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};
use ucloud_http::server::Request;
use ucloud_http::websocket::{self as ws, Piece, Role, Stream};
use ucloud_wire::calls::Call;
use ucloud_wire::envelope::Envelope;

/// The largest binary message (a browser sends a slice of the file as one message).
/// Messages are streamed, not held, so this is a bound on what a client may send,
/// not on memory.
const MAX_MESSAGE: u64 = 64 << 20;
/// The largest text message: the first, `<offset> <totalSize>`, is a few dozen bytes.
const MAX_TEXT: usize = 4096;
/// The most read from the client at once, which is also the most written into the
/// plugin's pipe at once (its size, see launch.rs).
///
/// Each byte is copied twice here: from the socket into this buffer (unmasking
/// touches every byte anyway, so the socket cannot be spliced) and from it into the
/// pipe. vmsplice(2) would hand the buffer's pages to the pipe instead of copying
/// them, but they must then stay untouched until the plugin has moved them on,
/// which this process cannot see; and the plugin's splice into the file copies
/// into the page cache all the same. A copy of 1 MiB costs far less than the
/// fdatasync every 16 MiB that bounds the upload.
const READ: usize = 1 << 20;
/// A client that sends no data for this long is gone.
const CLIENT_IDLE: Duration = Duration::from_secs(120);

enum Event {
    /// A line the plugin printed.
    Line(Vec<u8>),
    PluginEof,
    /// A ping to answer.
    Ping(Vec<u8>),
    /// The client side ended: how, for the log, and the close code to answer a
    /// broken stream with (`None`: it ended in order, or went away).
    ClientDone(String, Option<u16>),
}

/// Serves one upgrade request to its end. The connection is over afterwards.
pub fn serve(
    conn: &Connection,
    call: &'static Call,
    req: &Request,
    leftover: Vec<u8>,
    input: &mut ClientIn,
    out: &mut impl Write,
) -> Ended {
    let (accept, envelope) = match check(call, req) {
        Ok(ok) => ok,
        Err(reject) => return refuse(out, reject),
    };
    let Live {
        mut child,
        stdout,
        stderr,
    } = match start(conn, call, &envelope, &accept, out, |first| {
        first.starts_with(b"ready ")
    }) {
        Ok(live) => live,
        Err(ended) => return ended,
    };
    let stdin = child.stdin.take().expect("stdin is piped");
    let note = pump(
        16,
        |tx, stop| read_client(input, leftover, stdin, tx, stop),
        |tx| read_plugin(stdout, tx),
        |rx| relay(out, rx, &mut child, stderr),
    );
    (101, note)
}

/// Progress lines out, pongs out, until the plugin ends; then the close frame.
fn relay(
    out: &mut impl Write,
    rx: &Receiver<Event>,
    child: &mut std::process::Child,
    stderr: std::thread::JoinHandle<Vec<u8>>,
) -> String {
    let mut sent = 0usize;
    let mut client_end = None;
    loop {
        match rx.recv() {
            Ok(Event::Line(line)) => {
                let text = String::from_utf8_lossy(&line);
                if out.write_all(&ws::text(&text, None)).is_err() {
                    return "client gone while told the progress".into();
                }
                sent += 1;
            }
            Ok(Event::Ping(payload)) => {
                if out.write_all(&ws::encode(0xA, &payload, None)).is_err() {
                    return "client gone while answering a ping".into();
                }
            }
            Ok(Event::ClientDone(how, code)) => client_end = Some((how, code)),
            Ok(Event::PluginEof) | Err(_) => {
                let (code, why) = finish(out, child, stderr, client_end);
                return format!("closed {code} after {sent} progress messages: {why}");
            }
        }
    }
}

/// The upgrade's own checks, then the transfer token (shape only: the dispatcher
/// verifies it). Returns the accept key and the envelope.
fn check(call: &Call, req: &Request) -> Result<(String, Envelope), Reject> {
    let accept = upgrade_accept(req)?;
    // A browser cannot set headers on a WebSocket: the URL carries the token.
    let Some(token) = transfer_token(req)? else {
        return Err(no_transfer_token(call.name, "query parameter token"));
    };
    let mut envelope = envelope::transfer(call, req, token, None);
    envelope.request["protocol"] = Value::String("WEBSOCKET_V1".into());
    Ok((accept, envelope))
}

/// Client messages into the plugin's stdin until the client closes, breaks the
/// protocol, sends no data for CLIENT_IDLE, or `stop` is set. Dropping `stdin` at the
/// end gives the plugin EOF: what arrived is kept, the rest can be resent.
fn read_client(
    input: &mut ClientIn,
    mut leftover: Vec<u8>,
    stdin: ChildStdin,
    tx: SyncSender<Event>,
    stop: &AtomicBool,
) {
    let mut up = Upload {
        decoder: Stream::new(Role::Server, MAX_MESSAGE, MAX_TEXT),
        stdin,
        tx: &tx,
        started: false,
        heard: Instant::now(),
    };
    let done = |(how, code): ClientEnd| {
        let _ = tx.send(Event::ClientDone(how, code));
    };
    if let Err(end) = up.take(&mut leftover) {
        return done(end);
    }
    let mut buf = vec![0u8; READ];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if up.heard.elapsed() > CLIENT_IDLE {
            let why = format!("the client sent nothing for {} s", CLIENT_IDLE.as_secs());
            return done((why, None));
        }
        let n = match read_tick(input, &mut buf) {
            Ok(None) => continue,
            Ok(Some(0)) => return done(("the client closed the connection".into(), None)),
            Ok(Some(n)) => n,
            Err(e) => return done((format!("client gone: {e}"), None)),
        };
        if let Err(end) = up.take(&mut buf[..n]) {
            return done(end);
        }
    }
}

/// How the client side ended: why, for the log, and the close code to answer a
/// broken stream with.
type ClientEnd = (String, Option<u16>);

/// The bytes read from the client on their way into the plugin.
struct Upload<'a> {
    decoder: Stream,
    stdin: ChildStdin,
    tx: &'a SyncSender<Event>,
    /// Whether the first message, the text `<offset> <totalSize>`, came.
    started: bool,
    heard: Instant,
}

impl Upload<'_> {
    /// Decodes `bytes` (unmasking them in place) and writes the data they hold
    /// into the plugin's stdin as it comes: binary messages are never assembled.
    /// `Err`: the client side is over, how and with which close code.
    fn take(&mut self, bytes: &mut [u8]) -> Result<(), ClientEnd> {
        let mut at = 0;
        while at < bytes.len() {
            let (taken, piece) = self
                .decoder
                .decode(&mut bytes[at..])
                .map_err(|e| (e.why, Some(e.code)))?;
            at += taken;
            let wrote =
                match piece {
                    None => continue,
                    Some(Piece::Data(data, _)) if self.started => self.stdin.write_all(data),
                    Some(Piece::Text(t)) if !self.started => {
                        self.started = true;
                        self.stdin.write_all(format!("{t}\n").as_bytes())
                    }
                    Some(Piece::Text(_)) => return Err((
                        "a text message after the first: send the file's bytes as binary messages"
                            .into(),
                        Some(ws::CLOSE_UNSUPPORTED),
                    )),
                    Some(Piece::Data(..)) => {
                        return Err((
                            "the first message must be the text \"<offset> <totalSize>\"".into(),
                            Some(ws::CLOSE_UNSUPPORTED),
                        ))
                    }
                    Some(Piece::Ping(p)) => {
                        let _ = self.tx.send(Event::Ping(p));
                        continue;
                    }
                    Some(Piece::Pong(_)) => continue,
                    Some(Piece::Close(..)) => return Err(("the client closed".into(), None)),
                };
            // Only data counts as being heard from: pings alone do not hold an upload.
            self.heard = Instant::now();
            if wrote.is_err() {
                // The plugin stopped reading: its exit says why.
                return Err(("the plugin stopped reading".into(), None));
            }
        }
        Ok(())
    }
}

/// The plugin's progress lines, until its stdout ends.
fn read_plugin(mut reader: impl BufRead, tx: SyncSender<Event>) {
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(4096).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Event::PluginEof);
                return;
            }
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if tx.send(Event::Line(line)).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    const K: Option<[u8; 4]> = Some([0xde, 0xad, 0xbe, 0xef]);

    /// Feeds `bytes` in reads of `step` to an upload whose stdin is a pipe: what
    /// reached the pipe, the pings passed on, and how the client side ended.
    fn upload(bytes: &[u8], step: usize) -> (Vec<u8>, usize, Option<ClientEnd>) {
        let (read, write) = nix::unistd::pipe().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let mut up = Upload {
            decoder: Stream::new(Role::Server, MAX_MESSAGE, MAX_TEXT),
            stdin: ChildStdin::from(write),
            tx: &tx,
            started: false,
            heard: Instant::now(),
        };
        let mut end = None;
        for piece in bytes.chunks(step) {
            if let Err(e) = up.take(&mut piece.to_vec()) {
                end = Some(e);
                break;
            }
        }
        drop(up);
        let mut got = Vec::new();
        File::from(read).read_to_end(&mut got).unwrap();
        (got, rx.try_iter().count(), end)
    }

    #[test]
    fn data_goes_on_as_it_comes_with_pings_between_fragments() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
        let mut bytes = ws::text("0 40000", K);
        let mut first = ws::encode(0x2, &data[..7000], K);
        first[0] &= 0x7F;
        bytes.extend(first);
        bytes.extend(ws::encode(0x9, b"are you there", K));
        bytes.extend(ws::encode(0x0, &data[7000..], K));
        bytes.extend(ws::encode(0x2, &data, K));
        let mut want = b"0 40000\n".to_vec();
        want.extend(&data);
        want.extend(&data);
        for step in [1, 13, 4096, bytes.len()] {
            assert_eq!(upload(&bytes, step), (want.clone(), 1, None), "{step}");
        }
    }

    #[test]
    fn broken_uploads_end_with_their_close_code_and_what_came_before() {
        let code = |bytes: &[u8]| upload(bytes, 5).2.and_then(|(_, code)| code);
        assert_eq!(code(&ws::encode(0x2, b"x", K)), Some(ws::CLOSE_UNSUPPORTED));
        let mut two_texts = ws::text("0 1", K);
        two_texts.extend(ws::text("0 1", K));
        assert_eq!(code(&two_texts), Some(ws::CLOSE_UNSUPPORTED));
        assert_eq!(code(&ws::encode(0x2, b"x", None)), Some(ws::CLOSE_PROTOCOL));
        let huge = ws::encode(0x1, &[b'1'; MAX_TEXT + 1], K);
        assert_eq!(code(&huge[..8]), Some(ws::CLOSE_TOO_BIG));
        // A binary message past the limit is refused from its header, after the
        // data before it went on.
        let mut bytes = ws::text("0 99", K);
        bytes.extend(ws::encode(0x2, b"kept", K));
        bytes.extend([0x82, 0xFF]);
        bytes.extend((MAX_MESSAGE + 1).to_be_bytes());
        bytes.extend([1, 2, 3, 4]);
        let (got, _, end) = upload(&bytes, 3);
        assert_eq!(got, b"0 99\nkept");
        assert_eq!(end.unwrap().1, Some(ws::CLOSE_TOO_BIG));
        // A close ends it in order.
        let mut bytes = ws::text("0 1", K);
        bytes.extend(ws::close(1000, "", K));
        let (got, _, end) = upload(&bytes, 64);
        assert_eq!(got, b"0 1\n");
        assert_eq!(end, Some(("the client closed".into(), None)));
    }
}
