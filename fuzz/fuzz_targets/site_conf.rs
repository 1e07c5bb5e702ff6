//! site.conf (lib/wire config.rs), read by every program at start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_wire::config::SiteConfig;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(config) = SiteConfig::parse(text) {
            let _ = config.timeout_for("jobs.create");
        }
    }
});
