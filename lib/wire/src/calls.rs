//! Call names: UCloud's operation name without the provider prefix. The plugin for
//! a call is the file of that name in the plugin directory.

/// Calls that carry no end user: they run as the site's service account.
pub const SERVICE_CALLS: &[&str] = &[
    "integration.retrieveManifest",
    "integration.connect",
    "integration.init",
    "integration.unlinked",
    "jobs.retrieveProducts",
    "files.collections.retrieveProducts",
];

/// Calls whose only credential is a transfer token the dispatcher issued.
pub const TRANSFER_CALLS: &[&str] = &["files.download", "files.upload"];

/// Calls that hand the plugin a fresh transfer token.
pub const MINTS_TRANSFER_TOKEN: &[&str] = &["files.createDownload", "files.createUpload"];

/// Calls that may run long: their default time limit is [`LONG_TIMEOUT_SECS`].
pub const LONG_CALLS: &[&str] = &["files.download", "files.upload", "jobs.follow"];

pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
pub const LONG_TIMEOUT_SECS: u64 = 6 * 3600;

pub fn is_service_call(call: &str) -> bool {
    SERVICE_CALLS.contains(&call)
}

pub fn is_transfer_call(call: &str) -> bool {
    TRANSFER_CALLS.contains(&call)
}

/// A call name is one or more dot-separated words of ASCII letters: nothing that
/// could name a path outside the plugin directory or a hidden file.
pub fn is_valid_call_name(call: &str) -> bool {
    !call.is_empty()
        && call.len() <= 64
        && call.contains('.')
        && call
            .split('.')
            .all(|word| !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_names_cannot_leave_the_plugin_directory() {
        assert!(is_valid_call_name("files.browse"));
        assert!(is_valid_call_name("files.collections.retrieveProducts"));
        for bad in [
            "",
            "files",
            "../files.browse",
            "files/browse",
            ".files.browse",
            "files..browse",
            "files.browse.",
            "files.br\0owse",
            "files.brówse",
            "files.browse ",
            "a.b-c",
        ] {
            assert!(!is_valid_call_name(bad), "{bad:?} accepted");
        }
        assert!(!is_valid_call_name(&"a.".repeat(40)));
    }

    #[test]
    fn service_calls_are_valid_names() {
        for call in SERVICE_CALLS
            .iter()
            .chain(TRANSFER_CALLS)
            .chain(MINTS_TRANSFER_TOKEN)
        {
            assert!(is_valid_call_name(call));
        }
    }
}
