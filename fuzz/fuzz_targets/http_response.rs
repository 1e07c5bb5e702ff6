//! The HTTP/1.1 response reader (lib/http client.rs) that ucloud-sender, the
//! registry and ucloud-check use on UCloud's answers: status line, headers,
//! interim 1xx, Content-Length, chunked and read-until-close bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_im_fuzz::Pieces;

fuzz_target!(|input: &[u8]| {
    let (head_only, input) = match input.split_first() {
        Some((&b, rest)) => (b & 1 == 1, rest),
        None => return,
    };
    let mut pieces = Pieces::split(input);
    match ucloud_http::client::read_response(&mut pieces, head_only) {
        Ok(response) => {
            assert!((100..=999).contains(&response.status));
            if head_only {
                assert!(response.body.is_empty());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
