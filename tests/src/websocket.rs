//! A WebSocket client: the upgrade, and frames written as a client and read as a
//! server sends them.

use crate::Stack;

/// One client WebSocket frame (masked, as RFC 6455 requires of a client).
pub fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x81];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
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
