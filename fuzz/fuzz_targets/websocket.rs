//! The WebSocket frame decoder (ucloud-http websocket.rs) of jobs.follow and
//! WEBSOCKET_V1 uploads, both ends: masking, fragmentation, control frames, close
//! codes, lengths, and the message limit, with bytes arriving in any split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_http::websocket::{Decoder, Message, Role};

const MAX_MESSAGE: usize = 4096;

fuzz_target!(|input: &[u8]| {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let role = if control & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let step = usize::from(control >> 1).max(1);
    let mut decoder = Decoder::new(role, MAX_MESSAGE);
    for piece in rest.chunks(step) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(Some(message)) => match message {
                    Message::Text(t) => assert!(t.len() <= MAX_MESSAGE),
                    Message::Binary(b) => assert!(b.len() <= MAX_MESSAGE),
                    Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
                    Message::Close(_, reason) => assert!(reason.len() <= 123),
                },
                Ok(None) => break,
                Err(e) => {
                    assert!((1000..5000).contains(&e.code));
                    return;
                }
            }
        }
    }
});
