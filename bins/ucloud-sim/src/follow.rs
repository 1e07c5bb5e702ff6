//! `ucloud-sim follow`: follows a job's output the way UCloud's core does: a
//! WebSocket to `/ucloud/jobs.provider.{P}/websocket?usernameHint=…` with the bearer
//! token on the upgrade request, then the `init` message. Prints one JSON line per
//! event: each message as received, and `{"close":CODE,"reason":…}` at the end (or
//! `{"http":STATUS,"body":…}` when the upgrade is refused). For hostile tests it can
//! send raw bytes in place of `init`, and cancel after some messages.

use crate::error::SimError;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use ucloud_http::client::Endpoint;
use ucloud_http::websocket::{self, Decoder, Message, Role};
use ucloud_wire::names::UcloudName;

pub struct FollowArgs<'a> {
    pub url: &'a str,
    pub ca: Option<&'a Path>,
    pub user: &'a str,
    pub token: &'a str,
    pub job: &'a str,
    /// Sent right after the upgrade instead of `init` (hostile tests).
    pub raw: Option<Vec<u8>>,
    /// Send a cancel after this many messages.
    pub cancel_after: Option<usize>,
}

/// Longer than the gateway's ping interval: a quiet job is not a dead connection.
const TIMEOUT: Duration = Duration::from_secs(90);
const MAX_MESSAGE: usize = 16 << 20;

fn fail(why: impl Into<String>) -> SimError {
    SimError::Call(why.into())
}

pub fn random<const N: usize>() -> Result<[u8; N], SimError> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| fail(format!("/dev/urandom: {e}")))?;
    Ok(b)
}

pub fn follow(args: &FollowArgs<'_>, out: &mut impl Write) -> Result<(), SimError> {
    let job: Value = serde_json::from_str(args.job)
        .map_err(|e| SimError::Usage(format!("JOB_JSON is not JSON: {e}")))?;
    let provider = crate::session::job_provider(&job)?;
    let stream_id = format!("sim-{}", std::process::id());
    let first = match &args.raw {
        Some(raw) => raw.clone(),
        None => {
            let init = json!({
                "call": format!("jobs.provider.{provider}.follow"),
                "streamId": stream_id,
                "payload": {"type": "init", "job": job},
            });
            websocket::text(&init.to_string(), Some(random()?))
        }
    };
    let socket = Socket {
        url: args.url,
        ca: args.ca,
        user: args.user,
        token: args.token,
        path: &format!("/ucloud/jobs.provider.{provider}/websocket"),
    };
    session(&socket, &first, &stream_id, args.cancel_after, out)
}

/// Where a stream goes, and as whom.
pub struct Socket<'a> {
    pub url: &'a str,
    pub ca: Option<&'a Path>,
    /// The UCloud user, sent as `usernameHint`.
    pub user: &'a str,
    pub token: &'a str,
    /// The path under the URL's base, without the query.
    pub path: &'a str,
}

/// Opens the WebSocket as UCloud's core does (the bearer token on the upgrade
/// request, the user in `usernameHint`), sends `first`, and prints every message
/// as a JSON line until the server closes; with `cancel_after`, a cancel for
/// `stream_id` goes out after that many messages.
pub fn session(
    socket: &Socket<'_>,
    first: &[u8],
    stream_id: &str,
    cancel_after: Option<usize>,
    out: &mut impl Write,
) -> Result<(), SimError> {
    let name = UcloudName::new(socket.user).map_err(|e| SimError::Usage(format!("--user: {e}")))?;
    let hint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(name.as_str());
    let endpoint =
        Endpoint::new(socket.url, socket.ca, TIMEOUT).map_err(|e| fail(e.to_string()))?;
    let mut stream = endpoint.connect().map_err(|e| fail(e.to_string()))?;
    let key = base64::engine::general_purpose::STANDARD.encode(random::<16>()?);
    let path = format!("{}{}?usernameHint={hint}", endpoint.url.base, socket.path);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\nUser-Agent: ucloud-sim\r\n\r\n",
        endpoint.url.authority(),
        socket.token
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("sending the upgrade: {e}")))?;
    let (status, headers, rest) = read_head(&mut stream)?;
    if status != 101 {
        let length = header(&headers, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = rest;
        while body.len() < length {
            let mut buf = [0u8; 8192];
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        let body: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        return print(out, &json!({"http": status, "body": body}));
    }
    if header(&headers, "sec-websocket-accept") != Some(websocket::accept_key(&key).as_str()) {
        return Err(fail(
            "the server's Sec-WebSocket-Accept does not match our key",
        ));
    }
    stream
        .write_all(first)
        .map_err(|e| fail(format!("sending the first message: {e}")))?;
    let mut decoder = Decoder::new(Role::Client, MAX_MESSAGE);
    decoder.push(&rest);
    let mut messages = 0usize;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        while let Some(m) = decoder.next().map_err(|e| fail(e.to_string()))? {
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::String(t));
                    print(out, &v)?;
                    messages += 1;
                    if cancel_after == Some(messages) {
                        let cancel = json!({"type": "cancel", "streamId": stream_id});
                        let frame = websocket::text(&cancel.to_string(), Some(random()?));
                        stream
                            .write_all(&frame)
                            .map_err(|e| fail(format!("sending cancel: {e}")))?;
                    }
                }
                Message::Binary(b) => print(out, &json!({"binary": b.len()}))?,
                Message::Ping(p) => {
                    let pong = websocket::encode(0xA, &p, Some(random()?));
                    stream
                        .write_all(&pong)
                        .map_err(|e| fail(format!("answering a ping: {e}")))?;
                }
                Message::Pong(_) => {}
                Message::Close(code, reason) => {
                    let reply = websocket::close(code.unwrap_or(1000), "", Some(random()?));
                    let _ = stream.write_all(&reply);
                    return print(out, &json!({"close": code, "reason": reason}));
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(fail(
                    "the server closed the connection without a close frame",
                ))
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) => return Err(fail(format!("reading: {e}"))),
        }
    }
}

pub fn print(out: &mut impl Write, v: &Value) -> Result<(), SimError> {
    writeln!(out, "{v}")
        .and_then(|()| out.flush())
        .map_err(|e| fail(format!("cannot write: {e}")))
}

pub type Head = (u16, Vec<(String, String)>, Vec<u8>);

/// The response head; the bytes after it are returned too.
pub fn read_head(stream: &mut impl Read) -> Result<Head, SimError> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if got.len() > 64 << 10 {
            return Err(fail("the response head is larger than 64 KiB"));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(fail("the server closed the connection before answering")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(fail(format!("reading the response: {e}"))),
        }
    };
    let text = String::from_utf8_lossy(&got[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("the response has no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, got[end + 4..].to_vec()))
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// `--raw HEX`: bytes from hex digits.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, SimError> {
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if clean.len() & 1 == 1 {
        return Err(SimError::Usage(
            "--raw needs an even number of hex digits".into(),
        ));
    }
    clean
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .ok_or_else(|| SimError::Usage(format!("--raw: {p:?} is not a hex byte")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_heads() {
        assert_eq!(parse_hex("81 00ff").unwrap(), vec![0x81, 0x00, 0xff]);
        assert!(parse_hex("8").is_err());
        assert!(parse_hex("zz").is_err());
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\n\r\n\x81\x00";
        let (status, headers, rest) = read_head(&mut &raw[..]).unwrap();
        assert_eq!(status, 101);
        assert_eq!(header(&headers, "sec-websocket-accept"), Some("x"));
        assert_eq!(rest, b"\x81\x00");
    }
}
