//! The WebSocket frame decoders (ucloud-http websocket.rs) of jobs.follow and
//! WEBSOCKET_V1 uploads, both ends: masking, fragmentation, control frames, close
//! codes, lengths, and the message limit, with bytes arriving in any split. The
//! streaming decoder (`Stream`, uploads) runs on the same bytes and must make the
//! same messages as the assembling one, up to the first error of either: they
//! may refuse a broken frame at different bytes, never accept different things.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_http::websocket::{Decoder, Message, Piece, Role, Stream};

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
    let assembled = assembling(role, step, rest);
    let streamed = streaming(role, step, rest);
    let (a, a_failed) = &assembled;
    let (s, s_failed) = &streamed;
    let common = a.len().min(s.len());
    assert_eq!(a[..common], s[..common]);
    if !a_failed && !s_failed {
        assert_eq!(a, s);
    }
});

/// The messages, and whether the decoder refused the stream.
fn assembling(role: Role, step: usize, rest: &[u8]) -> (Vec<Message>, bool) {
    let mut got = Vec::new();
    let mut decoder = Decoder::new(role, MAX_MESSAGE);
    for piece in rest.chunks(step) {
        decoder.push(piece);
        loop {
            match decoder.next() {
                Ok(Some(message)) => {
                    match &message {
                        Message::Text(t) => assert!(t.len() <= MAX_MESSAGE),
                        Message::Binary(b) => assert!(b.len() <= MAX_MESSAGE),
                        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
                        Message::Close(_, reason) => assert!(reason.len() <= 123),
                    }
                    got.push(message);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!((1000..5000).contains(&e.code));
                    return (got, true);
                }
            }
        }
    }
    (got, false)
}

/// The same through the streaming decoder, its binary pieces joined.
fn streaming(role: Role, step: usize, rest: &[u8]) -> (Vec<Message>, bool) {
    let mut got = Vec::new();
    let mut binary = Vec::new();
    let mut stream = Stream::new(role, MAX_MESSAGE as u64, MAX_MESSAGE);
    for piece in rest.chunks(step) {
        let mut read = piece.to_vec();
        let mut at = 0;
        let len = read.len();
        while at < len {
            let (taken, piece) = match stream.decode(&mut read[at..]) {
                Ok(ok) => ok,
                Err(e) => {
                    assert!((1000..5000).contains(&e.code));
                    return (got, true);
                }
            };
            assert!(taken > 0 && at + taken <= len);
            at += taken;
            match piece {
                None => {}
                Some(Piece::Data(b, end)) => {
                    binary.extend_from_slice(b);
                    assert!(binary.len() <= MAX_MESSAGE);
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
    (got, false)
}
