//! The records programs leave for each other on disk (lib/wire): mapping records,
//! drive-table entries, outbox messages and usage reports. A local account may
//! have influenced their contents; a reader must refuse cleanly what it does not
//! accept, and what it accepts must survive its own writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_wire::names::{DriveId, UcloudName};
use ucloud_wire::record::{Drive, Mapping};
use ucloud_wire::{outbox, usage};

fuzz_target!(|input: &[u8]| {
    let Some((&kind, rest)) = input.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            let user = UcloudName::new("alice#1234").unwrap();
            if let Ok(mapping) = Mapping::parse(&user, rest) {
                let again = serde_json::to_vec(&mapping.to_json()).unwrap();
                assert_eq!(Mapping::parse(&user, &again).unwrap(), mapping);
            }
        }
        1 => {
            let id = DriveId::new("7").unwrap();
            if let Ok(value) = serde_json::from_slice(rest) {
                if let Ok(drive) = Drive::from_json(&id, &value) {
                    let again = Drive::from_json(&id, &drive.to_json()).unwrap();
                    assert_eq!(again.to_json(), drive.to_json());
                }
            }
        }
        2 => {
            if let Ok(message) = outbox::Message::from_json(rest) {
                let bytes = serde_json::to_vec(&message.to_json()).unwrap();
                let again = outbox::Message::from_json(&bytes).unwrap();
                assert_eq!(again.to_json(), message.to_json());
            }
        }
        _ => {
            if let Ok(report) = usage::Report::from_json(rest) {
                let bytes = serde_json::to_vec(&report.to_json()).unwrap();
                let again = usage::Report::from_json(&bytes).unwrap();
                assert_eq!(again.to_json(), report.to_json());
                assert!(!report.file_name().contains('/'));
            }
        }
    }
});
