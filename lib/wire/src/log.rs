//! Log lines of the services (gateway, registry serve, sender, monitor, balancer) on
//! stderr. When stderr is the journal, each line starts with its syslog priority
//! the way sd-daemon(3) says (`<3>` error, `<4>` warning, `<6>` info), so
//! `journalctl -p warning` finds the faults; on a terminal or in a file the line is
//! left as it was. systemd says which stream is the journal in `JOURNAL_STREAM`
//! (`device:inode` of it, systemd.exec(5)); a program whose stderr was redirected
//! elsewhere keeps the variable but no longer matches it.
//!
//! Each line goes out in one `write`, so lines of threads never interleave.
//! The dispatcher's stderr is its answer to the gateway, not a log: it does not use
//! this module.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A request or the service failed.
    Err = 3,
    /// Something is wrong but the service carries on.
    Warning = 4,
    /// The service's life: started, reloaded, stopped.
    Info = 6,
}

/// Writes one log line (`text` without its newline) to stderr.
pub fn line(priority: Priority, text: fmt::Arguments<'_>) {
    let line = format_line(priority, &text.to_string(), to_journal());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The bytes of one line: the prefix for the journal, and every line break of a
/// message folded, since the journal takes each line as its own record.
pub fn format_line(priority: Priority, text: &str, journal: bool) -> String {
    let text = text.trim_end_matches('\n').replace('\n', " / ");
    if journal {
        format!("<{}>{text}\n", priority as u8)
    } else {
        format!("{text}\n")
    }
}

fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Some(wanted) = std::env::var("JOURNAL_STREAM")
            .ok()
            .and_then(|v| parse_stream(&v))
        else {
            return false;
        };
        stderr_identity() == Some(wanted)
    })
}

/// `JOURNAL_STREAM=<device>:<inode>`, both decimal.
fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// `log_err!("ucloud-x: {why}")`: an error line of a service.
#[macro_export]
macro_rules! log_err {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Err, format_args!($($arg)*)) };
}

/// A warning line of a service: wrong, but it carries on.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Warning, format_args!($($arg)*)) };
}

/// An informational line of a service (start, reload, stop).
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Priority::Info, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_for_the_journal_only() {
        assert_eq!(format_line(Priority::Err, "x: y", true), "<3>x: y\n");
        assert_eq!(format_line(Priority::Warning, "x", true), "<4>x\n");
        assert_eq!(format_line(Priority::Info, "x", true), "<6>x\n");
        assert_eq!(format_line(Priority::Err, "x: y", false), "x: y\n");
        // One record per line: a message with a line break stays one record.
        assert_eq!(format_line(Priority::Err, "a\nb\n", true), "<3>a / b\n");
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_stream("64769:1234"), Some((64769, 1234)));
        for bad in ["", "1", "1:", ":2", "a:2", "1:2:3"] {
            assert_eq!(parse_stream(bad), None, "{bad}");
        }
    }
}
