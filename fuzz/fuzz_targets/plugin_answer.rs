//! The framed plugin answer (ucloud-wire answer.rs, `UCLOUD-IM/1`): what a
//! plugin, running as a local user, writes back to the gateway.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{BufRead, BufReader, Read};
use ucloud_im_fuzz::Pieces;
use ucloud_wire::answer::{self, read_frame, Frame};

fuzz_target!(|input: &[u8]| {
    let _ = answer::is_framed(input);
    let mut reader = BufReader::with_capacity(64, Pieces::split(input));
    for _ in 0..64 {
        match read_frame(&mut reader) {
            Ok(Some(Frame::Data(n))) => {
                // The gateway copies n bytes through; here they are skipped.
                let mut skipped = 0u64;
                let mut body = (&mut reader).take(n.min(1 << 20) as u64);
                while let Ok(buf) = body.fill_buf() {
                    if buf.is_empty() {
                        break;
                    }
                    let len = buf.len();
                    body.consume(len);
                    skipped += len as u64;
                }
                assert!(skipped <= n as u64);
            }
            Ok(Some(Frame::Head { status, .. })) => assert!((200..=599).contains(&status)),
            Ok(Some(Frame::End)) | Ok(None) | Err(_) => break,
        }
    }
});
