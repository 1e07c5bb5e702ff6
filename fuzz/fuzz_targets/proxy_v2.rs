//! The PROXY protocol v2 header (ucloud-http proxy_v2.rs) that opens every
//! connection from the balancer, read from a stream as the gateway reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use ucloud_http::proxy_v2;
use ucloud_im_fuzz::Pieces;

fuzz_target!(|input: &[u8]| {
    let mut pieces = Pieces::split(input);
    let before = pieces.remaining().len();
    if proxy_v2::read_header(&mut pieces).is_ok() {
        // Exactly the header is read: at least its 16 fixed bytes, never the request.
        let taken = before - pieces.remaining().len();
        assert!(taken >= 16);
        let mut rest = Vec::new();
        pieces.read_to_end(&mut rest).unwrap();
    }
});
