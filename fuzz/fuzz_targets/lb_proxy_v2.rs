//! The PROXY protocol v2 header a relay ucloud-lb reads from a balancer on another
//! host (ucloud-lb proxy_v2.rs), after its client certificate was verified.
#![no_main]

#[path = "../../bins/ucloud-lb/src/proxy_v2.rs"]
#[allow(dead_code)]
mod proxy_v2;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(Some((_, len))) = proxy_v2::parse(input) {
        // The header is within the input, at least its 16 fixed bytes, and no
        // shorter prefix of it is already a whole header.
        assert!((16..=input.len()).contains(&len));
        assert_eq!(proxy_v2::parse(&input[..len - 1]), Ok(None));
        assert!(matches!(proxy_v2::parse(&input[..len]), Ok(Some((_, l))) if l == len));
    }
});
