//! WEBSOCKET_V1 upload client for `scripts/bench-files`: streams FILE to a
//! files.upload WebSocket on the direct gateway in 16 MB binary messages (masked a
//! word at a time, as a browser's engine does) after the `<offset> <totalSize>`
//! message, reads the progress counts until the close, and prints the rate in MB/s. Fails unless the close is 1000 with every byte counted.
//!
//!   ws-upload ADDR TARGET FILE      TARGET: path and query of the upload link
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::time::Instant;
use ucloud_im_tests::{ws_client_frame, ws_client_head, ws_mask, ws_server_frame, ws_upgrade};

const MESSAGE: usize = 16_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, target, file] = &args[..] else {
        eprintln!("usage: ws-upload ADDR TARGET FILE");
        std::process::exit(64);
    };
    let mut input = std::fs::File::open(file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let total = input.metadata().unwrap().len();
    let start = Instant::now();
    let (head, mut ws) = ws_upgrade(addr, target, "");
    if !head.starts_with("HTTP/1.1 101") {
        fail(&format!("no WebSocket: {head}"));
    }
    // The bytes take as long as they take.
    ws.set_read_timeout(None).unwrap();
    // The progress counts and the close, read while the bytes go out.
    let mut reader = ws.try_clone().unwrap();
    let answers = std::thread::spawn(move || {
        let mut last = String::new();
        loop {
            match ws_server_frame(&mut reader) {
                Ok((0x1, text)) => last = String::from_utf8_lossy(&text).into_owned(),
                Ok((0x8, body)) if body.len() >= 2 => {
                    let code = u16::from_be_bytes([body[0], body[1]]);
                    return (code, String::from_utf8_lossy(&body[2..]).into_owned(), last);
                }
                Ok(_) => {}
                Err(e) => return (0, format!("no close frame: {e}"), last),
            }
        }
    });
    ws.write_all(&ws_client_frame(0x1, format!("0 {total}").as_bytes()))
        .unwrap();
    // Each message goes out as it is read, in pieces masked where they lie: a
    // client that read and masked a whole message before sending any of it would
    // leave the connection idle meanwhile. Pieces are whole words of the mask, so
    // each starts at the key's first byte.
    const PIECE: usize = 1 << 20;
    let mut buf = vec![0u8; PIECE];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(MESSAGE as u64);
        ws.write_all(&ws_client_head(0x82, n)).unwrap();
        let mut left = n as usize;
        while left > 0 {
            let piece = &mut buf[..left.min(PIECE)];
            input.read_exact(piece).unwrap();
            ws_mask(piece);
            ws.write_all(piece).unwrap();
            left -= piece.len();
        }
        sent += n;
    }
    let (code, why, last) = answers.join().unwrap();
    if code != 1000 || last != total.to_string() {
        fail(&format!(
            "closed {code} ({why}) after a count of {last:?} of {total}"
        ));
    }
    println!("{:.1}", total as f64 / start.elapsed().as_secs_f64() / 1e6);
}

fn fail(why: &str) -> ! {
    eprintln!("ws-upload: {why}");
    std::process::exit(1)
}
