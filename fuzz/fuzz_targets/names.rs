//! Names from outside (lib/wire names.rs): the UCloud-Username header, the user
//! hint of a call, mapping file names, local account names and drive ids. What is
//! accepted must come back unchanged through its own encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_wire::names::{DriveId, LocalName, UcloudName};

fuzz_target!(|input: &[u8]| {
    if let Ok(name) = UcloudName::from_header(input) {
        let header = name.to_header();
        assert_eq!(UcloudName::from_header(header.as_bytes()).unwrap(), name);
        let file = name.file_name();
        assert!(!file.contains('/') && !file.starts_with('.'));
        assert_eq!(UcloudName::from_file_name(&file).unwrap(), name);
    }
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(name) = UcloudName::new(text) {
        assert_eq!(name.as_str(), text);
    }
    let _ = UcloudName::from_hint(text);
    if let Ok(name) = UcloudName::from_file_name(text) {
        assert_eq!(name.file_name(), text);
    }
    if let Ok(local) = LocalName::new(text) {
        assert!(!local.as_str().contains(['/', '\0', ':', '\n']));
    }
    if let Ok(id) = DriveId::new(text) {
        assert!(!id.as_str().contains(['/', '\0']));
    }
});
