//! UCloud's provider notification stream (lib/wire apm.rs): the frames of one message
//! from the core, then the references they bind. Whatever decodes must encode to a
//! message that decodes to the same frames (the retired-usage number the core sends is
//! read and dropped), and resolving it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_wire::apm::{decode, encode, Refs};

fuzz_target!(|input: &[u8]| {
    let Some((&flag, message)) = input.split_first() else {
        return;
    };
    let retired = flag & 1 == 1;
    if let Ok(frames) = decode(message, retired) {
        let again = decode(&encode(&frames, retired), retired).expect("an encoded message decodes");
        assert_eq!(again, frames);
        let _ = Refs::default().apply(frames);
    }
});
