//! Slurm's answers as the monitor reads them (ucloud-monitor slurm.rs): squeue's
//! and sacct's delimited rows, where a job's name and comment are text a local user
//! chose, and `sacct --json`. A row the user forged must never come out as a row.
#![no_main]

#[path = "../../bins/ucloud-monitor/src/jobstate.rs"]
#[allow(dead_code)]
mod jobstate;
#[path = "../../bins/ucloud-monitor/src/slurm.rs"]
#[allow(dead_code)]
mod slurm;

use libfuzzer_sys::fuzz_target;

/// In the monitor the delimiter is drawn at random for each call; a fixed one lets
/// the fuzzer learn it, which is the stronger attacker.
const DELIMITER: &str = "~0123456789abcdef0123456789abcdef";

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if mode & 1 == 0 {
        let fields = usize::from(mode >> 1) % 12 + 1;
        if let Ok(rows) = slurm::parse_table(text, DELIMITER, fields) {
            for row in rows {
                assert_eq!(row.len(), fields);
                for field in row {
                    assert!(!field.contains(DELIMITER));
                }
            }
        }
    } else {
        let _ = slurm::read_sacct_names(text);
    }
});
