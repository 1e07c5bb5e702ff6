//! The dispatch envelope (lib/wire envelope.rs): what the gateway hands the setuid
//! dispatcher on its standard input. Whatever decodes must encode to an envelope
//! that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_wire::envelope::Envelope;

fuzz_target!(|input: &[u8]| {
    if let Ok(envelope) = Envelope::decode(input) {
        let again = Envelope::decode(&envelope.encode()).expect("an encoded envelope decodes");
        assert_eq!(again, envelope);
    }
});
