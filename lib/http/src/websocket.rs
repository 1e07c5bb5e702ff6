//! RFC 6455 WebSocket: the handshake's checks and accept key, and the frame codec,
//! for both ends (the gateway is the server, `ucloud-sim follow` the client).
//! The decoder takes bytes as they come and never trusts a length it has not checked
//! against its limits, so a hostile peer costs at most `max_message` bytes of memory.
//! [`Stream`] is the same decoder for bulk data: it hands a binary message over in
//! pieces as they arrive, unmasked in the caller's buffer, and holds only short
//! text and control messages.

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
        let (fin, opcode, masked) = header_start(b[0], b[1], self.role)?;
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
            apply_mask(&mut payload, m, 0);
        }
        self.buf.drain(..at + len);
        Ok(Some((fin, opcode, payload)))
    }
}

/// What a [`Stream`] makes of the bytes it is given.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// The next bytes of a binary message, unmasked, in order; `true` with the
    /// message's last piece (which may be empty).
    Data(&'a [u8], bool),
    /// A whole text message (fragments joined, at most `max_text` bytes).
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close code (absent when its close frame had no body) and reason.
    Close(Option<u16>, String),
}

/// The payload of a frame that is arriving.
struct Payload {
    /// The frame's own opcode (0 for a continuation).
    opcode: u8,
    fin: bool,
    left: u64,
    mask: Option<[u8; 4]>,
    /// Payload bytes already taken, modulo 4: where the mask continues.
    phase: usize,
}

/// A decoder that streams binary messages: their payload bytes are unmasked in
/// the caller's buffer and handed back as they arrive, never assembled, so a
/// message of any allowed size costs no memory here. Text and control messages,
/// which are short, come whole. The checks are those of [`Decoder`]: masking by
/// role, reserved bits, opcodes, shortest lengths, whole control frames of at most
/// 125 bytes, fragment order, UTF-8, close codes, and the size bounds, which are
/// checked from a frame's header before its payload is waited for.
///
/// Feed it with [`Stream::decode`] on what was read, until it is all taken.
/// After an error the stream is unusable: close with the error's code.
pub struct Stream {
    role: Role,
    max_binary: u64,
    max_text: usize,
    /// A frame header being gathered (at most 14 bytes).
    head: [u8; 14],
    head_len: usize,
    payload: Option<Payload>,
    /// The opcode of a data message whose final frame has not come, and the bytes
    /// it had so far.
    message: Option<(u8, u64)>,
    /// A text message's bytes so far, unmasked.
    text: Vec<u8>,
    /// A control frame's payload so far, unmasked.
    control: Vec<u8>,
}

impl Stream {
    /// `max_binary`: the largest binary message (fragments added up); `max_text`:
    /// the largest text message.
    pub fn new(role: Role, max_binary: u64, max_text: usize) -> Stream {
        Stream {
            role,
            max_binary,
            max_text,
            head: [0; 14],
            head_len: 0,
            payload: None,
            message: None,
            text: Vec::new(),
            control: Vec::new(),
        }
    }

    /// Decodes from the front of `input`, unmasking in place: how many bytes it took
    /// and what they completed, if anything. It takes at least one byte of a
    /// non-empty `input`; call it again on the rest (`&mut input[taken..]`) until
    /// all is taken. A [`Piece::Data`] borrows from `input`: use it before that.
    pub fn decode<'a>(
        &mut self,
        input: &'a mut [u8],
    ) -> Result<(usize, Option<Piece<'a>>), WsError> {
        if self.payload.is_none() {
            let taken = self.header(input)?;
            // A frame with an empty payload ends at its header.
            let piece = match &self.payload {
                Some(p) if p.left == 0 => self.frame_end(&mut [])?,
                _ => None,
            };
            return Ok((taken, piece));
        }
        let p = self.payload.as_mut().expect("checked above");
        let n = usize::try_from(p.left)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let bytes = &mut input[..n];
        if let Some(key) = p.mask {
            apply_mask(bytes, key, p.phase);
        }
        p.left -= n as u64;
        p.phase = (p.phase + n) % 4;
        let ends = p.left == 0;
        let kind = if p.opcode == 0 {
            self.message.map_or(0, |(op, _)| op)
        } else {
            p.opcode
        };
        if kind == 0x2 {
            let fin = ends && p.fin;
            if ends {
                self.payload = None;
                if fin {
                    self.message = None;
                }
            }
            if n == 0 && !fin {
                return Ok((0, None));
            }
            return Ok((n, Some(Piece::Data(bytes, fin))));
        }
        // Text and control payloads are short (bounded in `header`): gathered.
        if kind >= 0x8 {
            self.control.extend_from_slice(bytes);
        } else {
            self.text.extend_from_slice(bytes);
        }
        let piece = if ends { self.frame_end(&mut [])? } else { None };
        Ok((n, piece))
    }

    /// Takes header bytes from `input`; once the header is whole, checks it and
    /// starts its payload. Returns how many bytes it took.
    fn header(&mut self, input: &[u8]) -> Result<usize, WsError> {
        let mut taken = 0;
        loop {
            // The first two bytes say how long the header is.
            let need = if self.head_len < 2 {
                2
            } else {
                self.check_start()?
            };
            if self.head_len == need {
                break;
            }
            let more = (need - self.head_len).min(input.len() - taken);
            self.head[self.head_len..self.head_len + more]
                .copy_from_slice(&input[taken..taken + more]);
            self.head_len += more;
            taken += more;
            if self.head_len < need {
                return Ok(taken);
            }
        }
        let h = &self.head;
        let (len, at) = match h[1] & 0x7F {
            126 => {
                let n = u16::from_be_bytes([h[2], h[3]]) as u64;
                if n < 126 {
                    return Err(err(CLOSE_PROTOCOL, "length not in its shortest form"));
                }
                (n, 4)
            }
            127 => {
                let n = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
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
        let mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0F;
        // Checked before a byte of the payload is waited for: an announced giant
        // is refused at once.
        let kind = if opcode == 0 {
            self.message.map_or(0, |(op, _)| op)
        } else {
            opcode
        };
        if kind == 0x2 {
            let so_far = self.message.map_or(0, |(_, n)| n);
            if so_far.saturating_add(len) > self.max_binary {
                return Err(err(
                    CLOSE_TOO_BIG,
                    format!("message larger than {} bytes", self.max_binary),
                ));
            }
            self.message = Some((0x2, so_far + len));
        } else if kind == 0x1 {
            if self.text.len() as u64 + len > self.max_text as u64 {
                return Err(err(
                    CLOSE_TOO_BIG,
                    format!("text message larger than {} bytes", self.max_text),
                ));
            }
            self.message = Some((0x1, 0));
        } else {
            self.control.clear();
        }
        self.head_len = 0;
        self.payload = Some(Payload {
            opcode,
            fin,
            left: len,
            mask,
            phase: 0,
        });
        Ok(taken)
    }

    /// The checks of a header's first two bytes; the header's full length.
    fn check_start(&self) -> Result<usize, WsError> {
        let h = &self.head;
        let (fin, opcode, masked) = header_start(h[0], h[1], self.role)?;
        let code = h[1] & 0x7F;
        if opcode >= 0x8 && (!fin || code > 125) {
            return Err(err(
                CLOSE_PROTOCOL,
                "control frames must be whole and at most 125 bytes",
            ));
        }
        match (opcode, self.message) {
            (0x0, None) => return Err(err(CLOSE_PROTOCOL, "continuation frame without a message")),
            (0x1 | 0x2, Some(_)) => {
                return Err(err(
                    CLOSE_PROTOCOL,
                    "a new message started before the fragmented one ended",
                ))
            }
            _ => {}
        }
        let ext = match code {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Ok(2 + ext + if masked { 4 } else { 0 })
    }

    /// A text or control frame's payload is all here: what it completes.
    fn frame_end<'a>(&mut self, empty: &'a mut [u8]) -> Result<Option<Piece<'a>>, WsError> {
        let p = self.payload.take().expect("a frame in progress");
        let kind = if p.opcode == 0 {
            self.message.map_or(0, |(op, _)| op)
        } else {
            p.opcode
        };
        match kind {
            0x2 => {
                if p.fin {
                    self.message = None;
                }
                Ok(p.fin.then_some(Piece::Data(empty, true)))
            }
            0x1 if !p.fin => Ok(None),
            0x1 => {
                self.message = None;
                let text = std::mem::take(&mut self.text);
                String::from_utf8(text)
                    .map(|t| Some(Piece::Text(t)))
                    .map_err(|_| err(CLOSE_BAD_DATA, "text message is not UTF-8"))
            }
            0x8 => match close_message(&self.control)? {
                Message::Close(code, why) => Ok(Some(Piece::Close(code, why))),
                _ => unreachable!("close_message makes a Close"),
            },
            0x9 => Ok(Some(Piece::Ping(std::mem::take(&mut self.control)))),
            0xA => Ok(Some(Piece::Pong(std::mem::take(&mut self.control)))),
            _ => unreachable!("check_start refuses other opcodes"),
        }
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
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    let at = out.len();
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut out[at..], k, 0);
    }
    out
}

/// XORs `bytes` with the masking key `key` (RFC 6455 5.3), in place; `phase` is
/// the position of `bytes[0]` in the frame's payload (modulo 4 is what counts), so
/// that a payload can be unmasked piece by piece as it arrives. A word at a time:
/// masking is on the path of every uploaded byte.
pub fn apply_mask(bytes: &mut [u8], key: [u8; 4], phase: usize) {
    let mut k = key;
    k.rotate_left(phase % 4);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut words = bytes.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().expect("8 bytes")) ^ word;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    // At most 7 bytes, whose key bytes start over at k[0] (8 is a multiple of 4).
    for (b, m) in words.into_remainder().iter_mut().zip(k.iter().cycle()) {
        *b ^= m;
    }
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

/// The checks of a frame header's first two bytes that both decoders make: no
/// reserved bit (no extension is agreed), a known opcode, and masking as the role
/// requires (RFC 6455, 5.1 and 5.2). Fin, opcode, masked.
fn header_start(b0: u8, b1: u8, role: Role) -> Result<(bool, u8, bool), WsError> {
    if b0 & 0x70 != 0 {
        return Err(err(
            CLOSE_PROTOCOL,
            "reserved bits set (no extension was agreed)",
        ));
    }
    let opcode = b0 & 0x0F;
    if !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA) {
        return Err(err(CLOSE_PROTOCOL, format!("unknown opcode {opcode:#x}")));
    }
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => Err(err(CLOSE_PROTOCOL, "client frames must be masked")),
        (Role::Client, true) => Err(err(CLOSE_PROTOCOL, "server frames must not be masked")),
        _ => Ok((b0 & 0x80 != 0, opcode, masked)),
    }
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

    #[test]
    fn masking_a_word_at_a_time_matches_the_rfc_at_any_phase() {
        let key = [0x5a, 0x17, 0xc3, 0x81];
        for len in 0..40 {
            for phase in 0..8 {
                let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
                let mut fast = data.clone();
                apply_mask(&mut fast, key, phase);
                let slow: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(i + phase) % 4])
                    .collect();
                assert_eq!(fast, slow, "length {len}, phase {phase}");
            }
        }
    }

    /// Feeds `bytes` to `s` in pieces of `step`, as reads would come; the messages
    /// (binary ones joined from their pieces) and the largest data piece.
    fn stream(s: &mut Stream, bytes: &[u8], step: usize) -> Result<(Vec<Message>, usize), WsError> {
        let mut got = Vec::new();
        let mut binary = Vec::new();
        let mut largest = 0;
        for read in bytes.chunks(step) {
            let mut read = read.to_vec();
            let mut at = 0;
            while at < read.len() {
                let (taken, piece) = s.decode(&mut read[at..])?;
                assert!(taken > 0, "no progress");
                at += taken;
                match piece {
                    None => {}
                    Some(Piece::Data(b, end)) => {
                        largest = largest.max(b.len());
                        binary.extend_from_slice(b);
                        if end {
                            got.push(Message::Binary(std::mem::take(&mut binary)));
                        }
                    }
                    Some(Piece::Text(t)) => got.push(Message::Text(t)),
                    Some(Piece::Ping(p)) => got.push(Message::Ping(p)),
                    Some(Piece::Pong(p)) => got.push(Message::Pong(p)),
                    Some(Piece::Close(c, r)) => got.push(Message::Close(c, r)),
                }
            }
        }
        Ok((got, largest))
    }

    fn fragment(opcode: u8, payload: &[u8], fin: bool, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = encode(opcode, payload, mask);
        if !fin {
            f[0] &= 0x7F;
        }
        f
    }

    #[test]
    fn a_stream_hands_binary_messages_over_in_pieces_as_they_arrive() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 255) as u8).collect();
        let mut bytes = fragment(0x2, &data[..1_000_001], false, K);
        bytes.extend(encode(0x9, b"ping", Some([9, 8, 7, 6])));
        bytes.extend(fragment(0x0, &data[1_000_001..1_000_001], false, K));
        bytes.extend(encode(0xA, b"", K));
        bytes.extend(fragment(
            0x0,
            &data[1_000_001..],
            true,
            Some([0xff, 0, 0x80, 1]),
        ));
        bytes.extend(text("done", K));
        bytes.extend(encode(0x2, b"", K));
        for step in [1, 3, 4093, 65536, 1 << 20, bytes.len()] {
            if step == 1 && bytes.len() > 100_000 {
                // Byte by byte through the headers only; the payload in big reads.
                let mut s = Stream::new(Role::Server, 4 << 20, 64);
                let (head, rest) = bytes.split_at(14);
                let (mut got, _) = stream(&mut s, head, 1).unwrap();
                got.extend(stream(&mut s, rest, 1 << 16).unwrap().0);
                assert_eq!(got.len(), 5);
                continue;
            }
            let mut s = Stream::new(Role::Server, 4 << 20, 64);
            let (got, largest) = stream(&mut s, &bytes, step).unwrap();
            assert_eq!(
                got,
                [
                    Message::Ping(b"ping".to_vec()),
                    Message::Pong(Vec::new()),
                    Message::Binary(data.clone()),
                    Message::Text("done".into()),
                    Message::Binary(Vec::new()),
                ],
                "reads of {step}"
            );
            assert!(largest <= step, "a piece of {largest} from reads of {step}");
        }
    }

    #[test]
    fn a_stream_decodes_what_the_decoder_decodes_in_any_split() {
        // A small xorshift: the same frames every run.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..300 {
            let mut bytes = Vec::new();
            for _ in 0..rand(6) + 1 {
                let len = [0, 1, 125, 126, 300, 70_000][rand(6) as usize];
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let key = Some((rand(u32::MAX as u64) as u32).to_be_bytes());
                match rand(4) {
                    0 => bytes.extend(encode(0x9, &payload[..len.min(125)], key)),
                    1 => bytes.extend(encode(0x1, &vec![b'a'; len], key)),
                    2 => bytes.extend(encode(0x2, &payload, key)),
                    _ => {
                        bytes.extend(fragment(0x2, &payload, false, key));
                        bytes.extend(encode(0xA, b"x", key));
                        bytes.extend(fragment(0x0, &payload, true, key));
                    }
                }
            }
            let step = rand(100_000) as usize + 1;
            let mut d = Decoder::new(Role::Server, 1 << 20);
            d.push(&bytes);
            let mut want = Vec::new();
            while let Some(m) = d.next().unwrap() {
                want.push(m);
            }
            let mut s = Stream::new(Role::Server, 1 << 20, 1 << 20);
            assert_eq!(
                stream(&mut s, &bytes, step).unwrap().0,
                want,
                "reads of {step}"
            );
        }
    }

    fn stream_refuses(bytes: &[u8], role: Role) -> WsError {
        let mut s = Stream::new(role, 1024, 64);
        stream(&mut s, bytes, 7).expect_err("must be refused")
    }

    #[test]
    fn hostile_streams_are_refused_with_the_right_code() {
        let code = |bytes: &[u8]| stream_refuses(bytes, Role::Server).code;
        // Unmasked from a client, masked from a server.
        let e = stream_refuses(&encode(0x2, b"x", None), Role::Server);
        assert_eq!(
            (e.code, e.why.as_str()),
            (CLOSE_PROTOCOL, "client frames must be masked")
        );
        assert_eq!(
            stream_refuses(&encode(0x2, b"x", K), Role::Client).code,
            CLOSE_PROTOCOL
        );
        // An unmasked fragment after a masked one.
        let mut bytes = fragment(0x2, b"ab", false, K);
        bytes.extend(fragment(0x0, b"cd", true, None));
        assert_eq!(code(&bytes), CLOSE_PROTOCOL);
        let mut rsv = encode(0x2, b"x", K);
        rsv[0] |= 0x10;
        assert_eq!(code(&rsv), CLOSE_PROTOCOL);
        assert_eq!(code(&encode(0xB, b"", K)), CLOSE_PROTOCOL);
        // Oversized: refused from the header alone, the payload never sent.
        let big = encode(0x2, &[0; 1025], K);
        assert_eq!(code(&big[..8]), CLOSE_TOO_BIG);
        let big_text = encode(0x1, &[b'a'; 65], K);
        assert_eq!(code(&big_text[..6]), CLOSE_TOO_BIG);
        // Fragments that add up past the limits, announced by the second header.
        let mut bytes = fragment(0x2, &[0; 600], false, K);
        bytes.extend(&fragment(0x0, &[0; 600], true, K)[..8]);
        assert_eq!(code(&bytes), CLOSE_TOO_BIG);
        let mut bytes = fragment(0x1, &[b'a'; 40], false, K);
        bytes.extend(&fragment(0x0, &[b'a'; 40], true, K)[..6]);
        assert_eq!(code(&bytes), CLOSE_TOO_BIG);
        // Lengths: the top bit, and forms longer than needed.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(code(&huge), CLOSE_PROTOCOL);
        let mut long_form = vec![0x82, 0xFF];
        long_form.extend_from_slice(&100u64.to_be_bytes());
        long_form.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(code(&long_form), CLOSE_PROTOCOL);
        assert_eq!(code(&[0x82, 0xFE, 0, 5, 0, 0, 0, 0]), CLOSE_PROTOCOL);
        // Control frames: whole and short only.
        assert_eq!(code(&encode(0x9, &[0; 126], K)), CLOSE_PROTOCOL);
        assert_eq!(code(&fragment(0x8, b"", false, K)), CLOSE_PROTOCOL);
        // Fragment order.
        assert_eq!(code(&encode(0x0, b"x", K)), CLOSE_PROTOCOL);
        let mut bytes = fragment(0x2, b"ab", false, K);
        bytes.extend(encode(0x2, b"cd", K));
        assert_eq!(code(&bytes), CLOSE_PROTOCOL);
        let mut bytes = fragment(0x1, b"ab", false, K);
        bytes.extend(encode(0x1, b"cd", K));
        assert_eq!(code(&bytes), CLOSE_PROTOCOL);
        // Bad text, bad close frames.
        assert_eq!(code(&encode(0x1, &[0xC3], K)), CLOSE_BAD_DATA);
        assert_eq!(code(&encode(0x8, &[3], K)), CLOSE_PROTOCOL);
        assert_eq!(code(&encode(0x8, &[0x03, 0xEE], K)), CLOSE_PROTOCOL);
        assert_eq!(code(&encode(0x8, &[0x03, 0xE8, 0xFF], K)), CLOSE_BAD_DATA);
    }

    #[test]
    fn a_truncated_frame_completes_nothing() {
        let data = vec![7u8; 5000];
        let frame = encode(0x2, &data, K);
        for cut in [1, 2, 3, 7, 8, 100, frame.len() - 1] {
            let mut s = Stream::new(Role::Server, 1 << 20, 64);
            let mut bytes = frame[..cut].to_vec();
            let mut at = 0;
            let mut seen = 0;
            while at < bytes.len() {
                let (taken, piece) = s.decode(&mut bytes[at..]).unwrap();
                at += taken;
                match piece {
                    None => {}
                    Some(Piece::Data(b, end)) => {
                        assert!(!end, "a cut frame never ends its message");
                        assert!(b.iter().all(|&x| x == 7), "unmasked");
                        seen += b.len();
                    }
                    Some(other) => panic!("{other:?}"),
                }
            }
            assert_eq!(seen, cut.saturating_sub(8), "cut at {cut}");
        }
        // Nothing at all: nothing taken, nothing made.
        let mut s = Stream::new(Role::Server, 1024, 64);
        assert_eq!(s.decode(&mut []).unwrap(), (0, None));
    }

    #[test]
    fn a_stream_takes_close_frames_and_server_frames() {
        let mut s = Stream::new(Role::Server, 1024, 64);
        let mut bytes = close(1000, "bye", K);
        bytes.extend(encode(0x8, b"", K));
        let (got, _) = stream(&mut s, &bytes, 5).unwrap();
        assert_eq!(
            got,
            [
                Message::Close(Some(1000), "bye".into()),
                Message::Close(None, String::new())
            ]
        );
        let mut c = Stream::new(Role::Client, 1024, 64);
        let mut bytes = text("hi", None);
        bytes.extend(encode(0x2, &[1, 2, 3], None));
        let (got, _) = stream(&mut c, &bytes, 1).unwrap();
        assert_eq!(
            got,
            [Message::Text("hi".into()), Message::Binary(vec![1, 2, 3])]
        );
    }
}
