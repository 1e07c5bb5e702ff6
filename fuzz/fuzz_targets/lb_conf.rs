//! ucloud-lb.conf (ucloud-lb config.rs), read by the balancer at start and by
//! `ucloud-lb --check`.
#![no_main]

#[path = "../../bins/ucloud-lb/src/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../bins/ucloud-lb/src/error.rs"]
#[allow(dead_code)]
mod error;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = config::parse(text);
    }
});
