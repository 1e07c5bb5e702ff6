//! The gateway's HTTP/1.1 request reader (lib/http server.rs): request line,
//! headers, Content-Length and chunked bodies, pipelined requests, in any split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_http::server::{Limits, Reader};
use ucloud_im_fuzz::Pieces;

const LIMITS: Limits = Limits {
    max_head: 2048,
    max_headers: 16,
    max_body: 4096,
};

fuzz_target!(|input: &[u8]| {
    let mut reader = Reader::new(Pieces::split(input));
    let mut interim = Vec::new();
    for _ in 0..8 {
        match reader.read_request_with(&LIMITS, &mut interim) {
            Ok(Some(request)) => {
                assert!(request.body.len() <= LIMITS.max_body);
                assert!(request.headers.len() <= LIMITS.max_headers);
                let _ = request.path();
                if let Some(query) = request.query() {
                    for (name, value) in ucloud_http::server::query_pairs(query) {
                        let _ = (name.len(), value.len());
                    }
                }
                if !request.keep_alive {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = (e.to_string(), e.status());
                break;
            }
        }
    }
});
