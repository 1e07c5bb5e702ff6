//! RFC 6455 WebSocket: the handshake's checks and accept key, and the frame codec,
//! for both ends (the gateway is the server, `ucloud-sim follow` the client).
//! The decoder takes bytes as they come and never trusts a length it has not checked
//! against its limits, so a hostile peer costs at most `max_message` bytes of memory.

use crate::server::{write_head, Request};
use std::fmt;
use std::io::{self, Write};

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    // RFC 6455 fixes SHA-1 here; it protects nothing (the key is no secret), so its
    // weakness does not matter. The crypto library the programs link already has it.
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Whether `key` is what RFC 6455 asks for: base64 of 16 bytes.
pub fn valid_key(key: &str) -> bool {
    use base64::Engine;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|b| b.len() == 16)
}

/// The checks of an RFC 6455 upgrade request (the server's side of the handshake);
/// the `Sec-WebSocket-Accept` value, or why the request is not an upgrade we take.
pub fn upgrade_accept(req: &Request) -> Result<String, String> {
    let has_token = |name: &str, token: &str| {
        req.header(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(
            "this is a WebSocket endpoint: the request needs Upgrade: websocket and Connection: Upgrade".into(),
        );
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(
            "only WebSocket version 13 (RFC 6455) is spoken: send Sec-WebSocket-Version: 13".into(),
        );
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    if !valid_key(key) {
        return Err("Sec-WebSocket-Key is missing or not base64 of 16 bytes".into());
    }
    Ok(accept_key(key))
}

/// The 101 that turns the connection into a WebSocket.
pub fn switch_protocols(out: &mut impl Write, accept: &str) -> io::Result<()> {
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept),
    ];
    write_head(out, 101, &headers).and_then(|()| out.flush())
}

/// Close codes (RFC 6455 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_BAD_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_INTERNAL: u16 = 1011;

/// A whole message (fragments joined) or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close code (absent when its close frame had no body) and reason.
    Close(Option<u16>, String),
}

/// Why the peer's bytes are not a WebSocket stream we accept; `code` is the close
/// code to answer with.
#[derive(Debug, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub why: String,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close code {})", self.why, self.code)
    }
}

fn err(code: u16, why: impl Into<String>) -> WsError {
    WsError {
        code,
        why: why.into(),
    }
}

/// Which end decodes: a server requires masked frames, a client unmasked ones.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Server,
    Client,
}

/// Turns a byte stream into messages. Feed with [`Decoder::push`], then take
/// messages with [`Decoder::next`] until it returns `Ok(None)`.
pub struct Decoder {
    role: Role,
    max_message: usize,
    buf: Vec<u8>,
    /// Opcode and data of a fragmented message in progress.
    partial: Option<(u8, Vec<u8>)>,
}

impl Decoder {
    pub fn new(role: Role, max_message: usize) -> Decoder {
        Decoder {
            role,
            max_message,
            buf: Vec::new(),
            partial: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After an
    /// error the stream is unusable: close with `code`.
    // Not an Iterator: "no message yet" and "no more messages" differ here.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame()? else {
                return Ok(None);
            };
            match opcode {
                0x8 => return close_message(&payload).map(Some),
                0x9 => return Ok(Some(Message::Ping(payload))),
                0xA => return Ok(Some(Message::Pong(payload))),
                0x0 => {
                    let Some((_, data)) = self.partial.as_mut() else {
                        return Err(err(CLOSE_PROTOCOL, "continuation frame without a message"));
                    };
                    if data.len() + payload.len() > self.max_message {
                        return Err(err(CLOSE_TOO_BIG, self.too_big()));
                    }
                    data.extend_from_slice(&payload);
                    if fin {
                        let (op, data) = self.partial.take().expect("checked above");
                        return data_message(op, data).map(Some);
                    }
                }
                0x1 | 0x2 => {
                    if self.partial.is_some() {
                        return Err(err(
                            CLOSE_PROTOCOL,
                            "a new message started before the fragmented one ended",
                        ));
                    }
                    if fin {
                        return data_message(opcode, payload).map(Some);
                    }
                    self.partial = Some((opcode, payload));
                }
                _ => unreachable!("frame() refuses other opcodes"),
            }
        }
    }

    fn too_big(&self) -> String {
        format!("message larger than {} bytes", self.max_message)
    }

    /// One frame: (fin, opcode, unmasked payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, WsError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(err(
                CLOSE_PROTOCOL,
                "reserved bits set (no extension was agreed)",
            ));
        }
        let opcode = b[0] & 0x0F;
        if !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA) {
            return Err(err(CLOSE_PROTOCOL, format!("unknown opcode {opcode:#x}")));
        }
        let masked = b[1] & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(err(CLOSE_PROTOCOL, "client frames must be masked"))
            }
            (Role::Client, true) => {
                return Err(err(CLOSE_PROTOCOL, "server frames must not be masked"))
            }
            _ => {}
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                let n = u16::from_be_bytes([b[2], b[3]]) as u64;
                if n < 126 {
                    return Err(err(CLOSE_PROTOCOL, "length not in its shortest form"));
                }
                (n, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let n = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                if n >> 63 != 0 {
                    return Err(err(CLOSE_PROTOCOL, "length with the top bit set"));
                }
                if n <= u16::MAX as u64 {
                    return Err(err(CLOSE_PROTOCOL, "length not in its shortest form"));
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        if opcode >= 0x8 && (!fin || len > 125) {
            return Err(err(
                CLOSE_PROTOCOL,
                "control frames must be whole and at most 125 bytes",
            ));
        }
        // Checked before waiting for the bytes: an announced giant is refused at once.
        if len > self.max_message as u64 {
            return Err(err(CLOSE_TOO_BIG, self.too_big()));
        }
        let len = len as usize;
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= m[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }
}

fn data_message(opcode: u8, data: Vec<u8>) -> Result<Message, WsError> {
    if opcode == 0x2 {
        return Ok(Message::Binary(data));
    }
    String::from_utf8(data)
        .map(Message::Text)
        .map_err(|_| err(CLOSE_BAD_DATA, "text message is not UTF-8"))
}

fn close_message(payload: &[u8]) -> Result<Message, WsError> {
    match payload.len() {
        0 => Ok(Message::Close(None, String::new())),
        1 => Err(err(CLOSE_PROTOCOL, "close frame with a one-byte body")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            // Codes a peer may send (RFC 6455 7.4): 1000-1003, 1007-1011, 3000-4999.
            if !matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999) {
                return Err(err(CLOSE_PROTOCOL, format!("invalid close code {code}")));
            }
            let reason = std::str::from_utf8(&payload[2..])
                .map_err(|_| err(CLOSE_BAD_DATA, "close reason is not UTF-8"))?;
            Ok(Message::Close(Some(code), reason.to_string()))
        }
    }
}

/// One whole frame. `mask`: the client's masking key (a server sends `None`).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub fn text(s: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    encode(0x1, s.as_bytes(), mask)
}

/// A close frame; the reason is cut to fit the 125-byte control frame limit.
pub fn close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    body.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(0x8, &body, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=!",
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn upgrade_requests() {
        let req = |headers: &[(&str, &str)]| Request::new("GET", "/", headers);
        let good = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(
            upgrade_accept(&req(&good)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        for (drop, why) in [(0, "Upgrade"), (1, "Upgrade"), (2, "13"), (3, "Key")] {
            let mut h = good.to_vec();
            h.remove(drop);
            let e = upgrade_accept(&req(&h)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut out = Vec::new();
        switch_protocols(&mut out, "abc").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 ") && text.contains("Sec-WebSocket-Accept: abc\r\n")
        );
    }

    fn server() -> Decoder {
        Decoder::new(Role::Server, 1024)
    }

    const K: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    #[test]
    fn masked_text_round_trips_even_byte_by_byte() {
        let frame = text("héllo", K);
        let mut d = server();
        for b in &frame[..frame.len() - 1] {
            d.push(&[*b]);
            assert_eq!(d.next().unwrap(), None);
        }
        d.push(&frame[frame.len() - 1..]);
        assert_eq!(d.next().unwrap(), Some(Message::Text("héllo".into())));
        assert_eq!(d.next().unwrap(), None);
    }

    #[test]
    fn lengths_of_all_three_forms() {
        for n in [0, 125, 126, 1000, 65535, 65536] {
            let payload = vec![b'x'; n];
            let mut d = Decoder::new(Role::Server, 1 << 20);
            d.push(&encode(0x2, &payload, K));
            assert_eq!(d.next().unwrap(), Some(Message::Binary(payload)), "{n}");
            let mut c = Decoder::new(Role::Client, 1 << 20);
            c.push(&encode(0x1, &vec![b'y'; n], None));
            assert!(matches!(c.next().unwrap(), Some(Message::Text(t)) if t.len() == n));
        }
    }

    #[test]
    fn fragments_join_and_controls_may_interleave() {
        let mut d = server();
        let mut first = encode(0x1, b"ab", K);
        first[0] &= 0x7F; // not final
        let mut middle = encode(0x0, b"cd", K);
        middle[0] &= 0x7F;
        d.push(&first);
        d.push(&middle);
        d.push(&encode(0x9, b"p", K));
        d.push(&encode(0x0, b"ef", K));
        assert_eq!(d.next().unwrap(), Some(Message::Ping(b"p".to_vec())));
        assert_eq!(d.next().unwrap(), Some(Message::Text("abcdef".into())));
    }

    fn refused(bytes: &[u8], role: Role) -> u16 {
        let mut d = Decoder::new(role, 1024);
        d.push(bytes);
        d.next().expect_err("must be refused").code
    }

    #[test]
    fn hostile_frames_are_refused_with_the_right_code() {
        assert_eq!(refused(&text("x", None), Role::Server), CLOSE_PROTOCOL);
        assert_eq!(refused(&text("x", K), Role::Client), CLOSE_PROTOCOL);
        let mut rsv = text("x", K);
        rsv[0] |= 0x40;
        assert_eq!(refused(&rsv, Role::Server), CLOSE_PROTOCOL);
        assert_eq!(refused(&encode(0x3, b"", K), Role::Server), CLOSE_PROTOCOL);
        // Oversized: refused from the header alone, before the bytes arrive.
        let big = encode(0x1, &vec![b'x'; 2000], K);
        assert_eq!(refused(&big[..8], Role::Server), CLOSE_TOO_BIG);
        let mut huge = vec![0x81, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(refused(&huge, Role::Server), CLOSE_PROTOCOL);
        let mut not_shortest = vec![0x81, 0xFE, 0, 5];
        not_shortest.extend_from_slice(&[0; 4]);
        assert_eq!(refused(&not_shortest, Role::Server), CLOSE_PROTOCOL);
        assert_eq!(
            refused(&encode(0x9, &[0; 126], K), Role::Server),
            CLOSE_PROTOCOL
        );
        let mut split_ping = encode(0x9, b"", K);
        split_ping[0] &= 0x7F;
        assert_eq!(refused(&split_ping, Role::Server), CLOSE_PROTOCOL);
        assert_eq!(refused(&encode(0x0, b"x", K), Role::Server), CLOSE_PROTOCOL);
        assert_eq!(
            refused(&encode(0x1, &[0xff, 0xfe], K), Role::Server),
            CLOSE_BAD_DATA
        );
        assert_eq!(refused(&encode(0x8, &[3], K), Role::Server), CLOSE_PROTOCOL);
        assert_eq!(
            refused(&encode(0x8, &[0x03, 0xED], K), Role::Server),
            CLOSE_PROTOCOL
        );
        // Fragments that add up past the limit.
        let mut d = server();
        let mut part = encode(0x1, &[b'a'; 600], K);
        part[0] &= 0x7F;
        d.push(&part);
        d.push(&encode(0x0, &[b'a'; 600], K));
        assert_eq!(d.next().unwrap_err().code, CLOSE_TOO_BIG);
        // A new message inside a fragmented one.
        let mut d = server();
        d.push(&part);
        d.push(&text("x", K));
        assert_eq!(d.next().unwrap_err().code, CLOSE_PROTOCOL);
    }

    #[test]
    fn close_frames() {
        let mut d = server();
        d.push(&close(1000, "bye", K));
        d.push(&encode(0x8, b"", K));
        assert_eq!(
            d.next().unwrap(),
            Some(Message::Close(Some(1000), "bye".into()))
        );
        assert_eq!(d.next().unwrap(), Some(Message::Close(None, String::new())));
        let long = close(1000, &"é".repeat(100), None);
        assert!(long.len() <= 127, "a control frame holds at most 125 bytes");
        let mut c = Decoder::new(Role::Client, 1024);
        c.push(&long);
        assert!(matches!(
            c.next().unwrap(),
            Some(Message::Close(Some(1000), _))
        ));
    }
}
