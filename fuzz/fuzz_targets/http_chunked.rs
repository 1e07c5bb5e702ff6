//! The chunked body decoder (lib/http server.rs) on its own: every input is the
//! body of a request whose head announced `Transfer-Encoding: chunked`, so no run is
//! spent finding the head. Chunk sizes, extensions, trailers, and the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use ucloud_http::server::{Limits, Reader};
use ucloud_im_fuzz::Pieces;

const HEAD: &[u8] =
    b"POST /ucloud/p/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
const LIMITS: Limits = Limits {
    max_head: 2048,
    max_headers: 16,
    max_body: 4096,
};

fuzz_target!(|input: &[u8]| {
    let pieces = Pieces::split(input);
    let mut reader = Reader::new(HEAD.chain(pieces));
    match reader.read_request(&LIMITS) {
        Ok(Some(request)) => assert!(request.body.len() <= LIMITS.max_body),
        Ok(None) => unreachable!("the head is always there"),
        Err(e) => {
            let _ = (e.to_string(), e.status());
        }
    }
});
