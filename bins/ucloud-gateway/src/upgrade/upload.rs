//! The WEBSOCKET_V1 upload (ucloud-gateway(8), UPLOADS OVER A WEBSOCKET): a
//! WebSocket on the upload endpoint, its transfer token in the URL (a browser
//! cannot set headers on a WebSocket). The client's first message, the text
//! `<offset> <totalSize>`, goes to the plugin as one line; the bytes of its binary
//! messages follow raw, with backpressure (a reader thread writes them into the
//! plugin's stdin, so a slow disk slows the client, never fills this process).
//! Each line the plugin prints, the byte count on disk, goes back as a text
//! message. The plugin's exit ends the WebSocket: 1000 once the file is complete,
//! otherwise 1008 (a refusal) or 1011 with the plugin's why.

use super::shared::{read_tick, refuse, switch_protocols, upgrade_accept, Ended};
use crate::conn::ClientIn;
use crate::connection::Connection;
use crate::credential::{no_transfer_token, transfer_token};
use crate::envelope;
use crate::error::Reject;
use crate::launch::{judge, Started, Stdin};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};
use ucloud_http::server::Request;
use ucloud_http::websocket::{self as ws, Decoder, Message, Role};
use ucloud_wire::calls::Call;
use ucloud_wire::envelope::Envelope;
use ucloud_wire::error::Failure;

/// The largest binary message (a browser sends a slice of the file as one message).
const MAX_MESSAGE: usize = 64 << 20;
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
    let Started { mut child, stderr } =
        match conn.launcher.launch(call, envelope.encode(), Stdin::Open) {
            Ok(started) => started,
            Err(why) => return refuse(out, Reject::DispatchFailed(why)),
        };
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    // The plugin says `ready` once the dispatcher has verified the token and the
    // session is found: only then is the WebSocket accepted, so a client that is not
    // who the token says gets an HTTP refusal and never a byte buffered.
    let mut first = Vec::new();
    let ready = (&mut stdout).take(64).read_until(b'\n', &mut first).is_ok()
        && first.starts_with(b"ready ");
    if !ready {
        drop(child.stdin.take());
        let reject = judge(call.name, child.wait(), stderr).unwrap_or_else(|| {
            Reject::DispatchFailed("the plugin ended before it was ready".into())
        });
        return refuse(out, reject);
    }
    if let Err(ended) = switch_protocols(out, &accept) {
        return ended;
    }
    let stdin = child.stdin.take().expect("stdin is piped");
    // Bounded: a client that floods pings while not reading loses some pongs
    // instead of growing this process.
    let (tx, rx) = mpsc::sync_channel(16);
    let stop = AtomicBool::new(false);
    let note = std::thread::scope(|scope| {
        let (client_tx, stop_ref) = (tx.clone(), &stop);
        scope.spawn(move || read_client(input, leftover, stdin, client_tx, stop_ref));
        scope.spawn(move || read_plugin(stdout, tx));
        let note = relay(out, &rx, &mut child, stderr);
        stop.store(true, Ordering::Relaxed);
        // Unblocks a thread still sending.
        drop(rx);
        note
    });
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
                let status = child.wait();
                let text = stderr.join().unwrap_or_default();
                let (code, why) = match (status, client_end) {
                    // A complete file is complete, whatever the client did after.
                    (Ok(s), _) if s.success() => (ws::CLOSE_NORMAL, "complete".to_string()),
                    (_, Some((how, Some(code)))) => (code, how),
                    _ => {
                        let failure = Failure::from_stderr(&text, 4096);
                        let code = if failure.status < 500 || failure.status == 507 {
                            ws::CLOSE_POLICY
                        } else {
                            ws::CLOSE_INTERNAL
                        };
                        (code, failure.why)
                    }
                };
                let _ = out.write_all(&ws::close(code, &why, None));
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
    leftover: Vec<u8>,
    mut stdin: ChildStdin,
    tx: SyncSender<Event>,
    stop: &AtomicBool,
) {
    let mut decoder = Decoder::new(Role::Server, MAX_MESSAGE);
    decoder.push(&leftover);
    let mut buf = vec![0u8; 256 << 10];
    let mut started = false;
    let mut heard = Instant::now();
    let done = |how: String, code: Option<u16>| {
        let _ = tx.send(Event::ClientDone(how, code));
    };
    loop {
        loop {
            let message = match decoder.next() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return done(e.why, Some(e.code)),
            };
            let data =
                match message {
                    Message::Text(t) if !started => format!("{t}\n").into_bytes(),
                    Message::Binary(b) if started => b,
                    Message::Text(_) => return done(
                        "a text message after the first: send the file's bytes as binary messages"
                            .into(),
                        Some(ws::CLOSE_UNSUPPORTED),
                    ),
                    Message::Binary(_) => {
                        return done(
                            "the first message must be the text \"<offset> <totalSize>\"".into(),
                            Some(ws::CLOSE_UNSUPPORTED),
                        )
                    }
                    Message::Ping(p) => {
                        let _ = tx.send(Event::Ping(p));
                        continue;
                    }
                    Message::Pong(_) => continue,
                    Message::Close(..) => return done("the client closed".into(), None),
                };
            started = true;
            // Only data counts as being heard from: pings alone do not hold an upload.
            heard = Instant::now();
            if stdin.write_all(&data).is_err() {
                // The plugin stopped reading: its exit says why.
                return done("the plugin stopped reading".into(), None);
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if heard.elapsed() > CLIENT_IDLE {
                return done(
                    format!("the client sent nothing for {} s", CLIENT_IDLE.as_secs()),
                    None,
                );
            }
            match read_tick(input, &mut buf) {
                Ok(None) => continue,
                Ok(Some(0)) => return done("the client closed the connection".into(), None),
                Ok(Some(n)) => {
                    decoder.push(&buf[..n]);
                    break;
                }
                Err(e) => return done(format!("client gone: {e}"), None),
            }
        }
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
