//! The registry's records as the tests read and plant them: where the store lives,
//! how a record's file is named, a user's mapping, and the registry's command line.

use crate::Stack;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A record's file name: the name (a UCloud user, a job id) in lowercase hex, so
/// that no name can reach outside its directory.
pub fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Stack {
    /// The registry's state directory: mappings, drives, tickets, its lock.
    pub fn state_dir(&self) -> PathBuf {
        self.prefix().join("var/lib/ucloud-im")
    }

    /// The mapping the store holds for `ucloud`, if any.
    pub fn mapping_of(&self, ucloud: &str) -> Option<serde_json::Value> {
        let path = self.state_dir().join("mappings").join(hex(ucloud));
        std::fs::read_to_string(path)
            .ok()
            .map(|t| serde_json::from_str(&t).expect("a mapping file is JSON"))
    }

    /// `ucloud-registry ARGS...`, run as the tests run (root), from `/`.
    pub fn registry(&self, args: &[&str]) -> Output {
        Command::new(self.bin("ucloud-registry"))
            .args(args)
            .current_dir("/")
            .output()
            .expect("cannot run ucloud-registry")
    }
}

/// A finished command's exit code and both outputs, for an assertion's message.
pub fn described(output: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
