//! The WEBSOCKET_V2 folder upload (ucloud-gateway(8), FOLDER UPLOADS): a WebSocket
//! on the upload endpoint with `protocol=WEBSOCKET_V2` in its URL, as the link of a
//! FOLDER item says, the transfer token beside it. The protocol is the plugin's to
//! speak (ucloud-files(8)); this only relays, with backpressure: each binary
//! message of the client goes to the plugin's stdin as a `u32` big-endian length
//! and its bytes, and each such frame the plugin prints goes back as one binary
//! message. A text `ping` is answered `pong` here, as UCloud's own module does. The
//! plugin's exit ends the WebSocket: 1000 when it succeeded, otherwise 1008 (a
//! refusal) or 1011 with the plugin's why.

use super::shared::{finish, pump, read_tick, refuse, start, upgrade_accept, Ended, Live};
use crate::conn::ClientIn;
use crate::connection::Connection;
use crate::credential::{no_transfer_token, transfer_token};
use crate::envelope;
use crate::error::Reject;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::ChildStdin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};
use ucloud_http::server::Request;
use ucloud_http::websocket::{self as ws, Decoder, Message, Role};
use ucloud_wire::calls::Call;
use ucloud_wire::envelope::Envelope;

/// The largest client message (the web client sends 16 MB chunks, listings of 64 KiB).
const MAX_MESSAGE: usize = 64 << 20;
/// The largest message the plugin may send (its answers are a few bytes each).
const MAX_ANSWER: usize = 1 << 20;
/// A client that sends nothing for this long is gone.
const CLIENT_IDLE: Duration = Duration::from_secs(120);

/// Whether the request asks for the folder protocol.
pub fn wanted(req: &Request) -> bool {
    req.query_param("protocol").as_deref() == Some("WEBSOCKET_V2")
}

enum Event {
    /// A message the plugin sent.
    Answer(Vec<u8>),
    PluginEof,
    /// A control or text message to send back as it is (a pong).
    Send(Vec<u8>),
    /// The client side ended: how, and the close code for a broken stream.
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
    let (accept, envelope) = match check(conn, call, req) {
        Ok(ok) => ok,
        Err(reject) => return refuse(out, reject),
    };
    let Live {
        mut child,
        stdout,
        stderr,
    } = match start(conn, call, &envelope, &accept, out, |first| {
        first == b"ready\n"
    }) {
        Ok(live) => live,
        Err(ended) => return ended,
    };
    let stdin = child.stdin.take().expect("stdin is piped");
    let note = pump(
        64,
        |tx, stop| read_client(input, leftover, stdin, tx, stop),
        |tx| read_plugin(stdout, tx),
        |rx| relay(out, rx, &mut child, stderr),
    );
    (101, note)
}

/// The upgrade's checks, the token's shape, and the envelope: the request with the
/// site's limits on the tree (site.conf), which the plugin enforces.
fn check(conn: &Connection, call: &Call, req: &Request) -> Result<(String, Envelope), Reject> {
    let accept = upgrade_accept(req)?;
    let Some(token) = transfer_token(req)? else {
        return Err(no_transfer_token(call.name, "query parameter token"));
    };
    let config = conn.config()?;
    let mut envelope = envelope::transfer(call, req, token, None);
    envelope.request["protocol"] = Value::String("WEBSOCKET_V2".into());
    envelope.request["folderLimits"] = json!({
        "depth": config.folder_upload_max_depth,
        "width": config.folder_upload_max_width,
        "files": config.folder_upload_max_files,
    });
    Ok((accept, envelope))
}

/// The plugin's messages out, pongs out, until the plugin ends; then the close.
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
            Ok(Event::Answer(message)) => {
                if out.write_all(&ws::encode(0x2, &message, None)).is_err() {
                    return "client gone while answered".into();
                }
                sent += 1;
            }
            Ok(Event::Send(frame)) => {
                if out.write_all(&frame).is_err() {
                    return "client gone while answering a ping".into();
                }
            }
            Ok(Event::ClientDone(how, code)) => client_end = Some((how, code)),
            Ok(Event::PluginEof) | Err(_) => {
                let (code, why) = finish(out, child, stderr, client_end);
                return format!("closed {code} after {sent} answers: {why}");
            }
        }
    }
}

/// Client messages into the plugin's stdin, framed, until the client closes, breaks
/// the WebSocket protocol, is idle for CLIENT_IDLE, or `stop` is set. Dropping
/// `stdin` gives the plugin EOF.
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
            heard = Instant::now();
            let data = match message {
                Message::Binary(b) => b,
                Message::Text(t) if t == "ping" => {
                    let _ = tx.send(Event::Send(ws::text("pong", None)));
                    continue;
                }
                Message::Text(_) => {
                    return done(
                        "a text message other than ping: the folder protocol is binary".into(),
                        Some(ws::CLOSE_UNSUPPORTED),
                    )
                }
                Message::Ping(p) => {
                    let _ = tx.send(Event::Send(ws::encode(0xA, &p, None)));
                    continue;
                }
                Message::Pong(_) => continue,
                Message::Close(..) => return done("the client closed".into(), None),
            };
            let head = (data.len() as u32).to_be_bytes();
            if stdin
                .write_all(&head)
                .and_then(|()| stdin.write_all(&data))
                .is_err()
            {
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

/// The plugin's framed messages, until its stdout ends or breaks the framing.
fn read_plugin(mut reader: impl Read, tx: SyncSender<Event>) {
    loop {
        let mut head = [0u8; 4];
        if reader.read_exact(&mut head).is_err() {
            let _ = tx.send(Event::PluginEof);
            return;
        }
        let len = u32::from_be_bytes(head) as usize;
        let mut message = vec![0u8; len.min(MAX_ANSWER)];
        if len > MAX_ANSWER || reader.read_exact(&mut message).is_err() {
            let _ = tx.send(Event::PluginEof);
            return;
        }
        if tx.send(Event::Answer(message)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_link_that_says_v2_is_a_folder_upload() {
        let get = |target: &str| Request::new("GET", target, &[]);
        assert!(wanted(&get(
            "/ucloud/p/upload?item=0&protocol=WEBSOCKET_V2&token=t"
        )));
        assert!(!wanted(&get("/ucloud/p/upload?item=0&token=t")));
        assert!(!wanted(&get("/ucloud/p/upload?protocol=WEBSOCKET_V1")));
    }

    #[test]
    fn the_plugins_frames_become_messages_and_a_broken_one_ends_them() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let mut bytes = vec![0, 0, 0, 5, 0, 0, 0, 0, 7];
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        // Longer than MAX_ANSWER: the plugin is broken, the relay stops.
        bytes.extend_from_slice(&(MAX_ANSWER as u32 + 1).to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        read_plugin(std::io::Cursor::new(bytes), tx);
        let got: Vec<Event> = rx.try_iter().collect();
        assert!(matches!(&got[0], Event::Answer(m) if m == &[0, 0, 0, 0, 7]));
        assert!(matches!(&got[1], Event::Answer(m) if m.is_empty()));
        assert!(matches!(got[2], Event::PluginEof));
        assert_eq!(got.len(), 3);
    }
}
