//! A WebSocket client: the upgrade, and frames written as a client and read as a
//! server sends them.

use crate::Stack;

/// One client WebSocket frame (masked, as RFC 6455 requires of a client).
pub fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = ws_client_head(0x80 | opcode, payload.len() as u64);
    let at = frame.len();
    frame.extend_from_slice(payload);
    ws_mask(&mut frame[at..]);
    frame
}

/// The masking key of every client frame here.
pub const WS_MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];

/// A client frame's header: `first` is the first byte (FIN, opcode), then the
/// length of the payload, then the masking key. The payload follows, masked with
/// [`ws_mask`].
pub fn ws_client_head(first: u8, len: u64) -> Vec<u8> {
    let mut head = vec![first];
    match len {
        n if n < 126 => head.push(0x80 | n as u8),
        n if n <= 0xffff => {
            head.push(0x80 | 126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(0x80 | 127);
            head.extend_from_slice(&n.to_be_bytes());
        }
    }
    head.extend_from_slice(&WS_MASK);
    head
}

/// Masks a whole payload with [`WS_MASK`] in place, eight bytes at a time (an
/// upload masks every byte it sends).
pub fn ws_mask(payload: &mut [u8]) {
    let k = WS_MASK;
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut words = payload.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().unwrap()) ^ word;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    // At most 7 bytes; the key starts over at k[0] (8 is a multiple of 4).
    for (b, m) in words.into_remainder().iter_mut().zip(k.iter().cycle()) {
        *b ^= m;
    }
}

/// The next server WebSocket frame: (opcode, payload).
pub fn ws_server_frame(stream: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            stream.read_exact(&mut n)?;
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            stream.read_exact(&mut n)?;
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    assert_eq!(head[1] & 0x80, 0, "a server frame is never masked");
    assert!(len < 1 << 20, "a {len}-byte frame");
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}

/// A WebSocket to the direct gateway (plain HTTP), upgraded on `target` (path and
/// query) with `extra` header lines (each ending in CRLF); the response head, and
/// the stream when it is a 101.
pub fn ws_connect(stack: &Stack, target: &str, extra: &str) -> (String, std::net::TcpStream) {
    let url = stack.get("UCLOUD_IM_GATEWAY_URL");
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("UCLOUD_IM_GATEWAY_URL {url} is not plain HTTP"))
        .trim_end_matches('/');
    ws_upgrade(authority, target, extra)
}

/// The upgrade itself, to `authority` (host:port).
pub fn ws_upgrade(authority: &str, target: &str, extra: &str) -> (String, std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("cannot connect to {authority}: {e}"));
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let upgrade = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(upgrade.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_are_masked_as_rfc_6455_says() {
        for len in [0, 1, 7, 8, 9, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let frame = super::ws_client_frame(0x2, &payload);
            let at = frame.len() - len;
            let key = &frame[at - 4..at];
            assert_eq!(key, super::WS_MASK);
            let clear: Vec<u8> = frame[at..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(clear, payload, "{len}");
        }
    }
}
