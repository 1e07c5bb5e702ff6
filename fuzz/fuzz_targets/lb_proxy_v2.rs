//! The PROXY protocol v2 header (ucloud-http proxy_v2.rs) as a relay ucloud-lb
//! parses it from a balancer on another host, after its client certificate was
//! verified: from a buffer that grows as bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_http::proxy_v2;

fuzz_target!(|input: &[u8]| {
    if let Ok(Some((_, len))) = proxy_v2::parse(input) {
        // The header is within the input, at least its 16 fixed bytes, and no
        // shorter prefix of it is already a whole header.
        assert!((16..=input.len()).contains(&len));
        assert_eq!(proxy_v2::parse(&input[..len - 1]), Ok(None));
        assert!(matches!(proxy_v2::parse(&input[..len]), Ok(Some((_, l))) if l == len));
    }
});
