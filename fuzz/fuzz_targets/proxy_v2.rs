//! The PROXY protocol v2 header (ucloud-gateway proxy.rs) that opens every
//! connection from the balancer.
#![no_main]

#[path = "../../bins/ucloud-gateway/src/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use ucloud_im_fuzz::Pieces;

fuzz_target!(|input: &[u8]| {
    let mut pieces = Pieces::split(input);
    let before = pieces.remaining().len();
    if proxy::read_header(&mut pieces).is_ok() {
        // Exactly the header is read: at least its 16 fixed bytes, never the request.
        let taken = before - pieces.remaining().len();
        assert!(taken >= 16);
        let mut rest = Vec::new();
        pieces.read_to_end(&mut rest).unwrap();
    }
});
