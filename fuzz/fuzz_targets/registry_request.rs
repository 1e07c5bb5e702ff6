//! The registry socket's request line (ucloud-registry request.rs): what any local
//! account may send to a root process. Whatever it accepts names its op's fields.
#![no_main]

#[path = "../../bins/ucloud-registry/src/error.rs"]
#[allow(dead_code)]
mod error;
#[path = "../../bins/ucloud-registry/src/request.rs"]
mod request;

use libfuzzer_sys::fuzz_target;
use request::Request;

fuzz_target!(|input: &[u8]| {
    let Ok(line) = std::str::from_utf8(input) else {
        return;
    };
    match Request::parse(line) {
        Ok(request) => {
            assert!(line.ends_with('\n') && line.len() <= request::MAX_REQUEST);
            assert!(line.contains(request.op()));
            assert_eq!(request.ucloud().is_none(), request.op() == "preview");
        }
        Err(e) => assert_eq!(e.exit_code(), 64, "{e}"),
    }
});
