//! The gateway's shape check of a transfer token (lib/wire token.rs) before it
//! starts a dispatcher: any string a client puts in a download or upload URL.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(token) = std::str::from_utf8(input) {
        let _ = ucloud_wire::token::transfer_token_looks_valid(token, 1_700_000_000);
    }
});
