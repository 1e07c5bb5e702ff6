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
    // Each message is read into place behind room for its header, masked where it
    // lies and sent in one write, as a browser's WebSocket does with a slice.
    const ROOM: usize = 14;
    let mut buf = vec![0u8; ROOM + MESSAGE];
    loop {
        let mut n = 0;
        while n < MESSAGE {
            match input.read(&mut buf[ROOM + n..]).unwrap() {
                0 => break,
                got => n += got,
            }
        }
        if n == 0 {
            break;
        }
        let head = ws_client_head(0x82, n as u64);
        let at = ROOM - head.len();
        buf[at..ROOM].copy_from_slice(&head);
        ws_mask(&mut buf[ROOM..ROOM + n]);
        ws.write_all(&buf[at..ROOM + n]).unwrap();
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
