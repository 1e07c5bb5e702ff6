//! Writing a record to the shared audit log, for every program that writes there
//! (the dispatcher and the registry). Each takes the log's exclusive flock first;
//! under it, a record goes in whole or not at all, and a record a killed writer
//! left unfinished is cut off before the next one, so that no line is ever glued
//! to another. What each program records, and what it does around the write, is
//! its own.

use crate::envelope::MAX_ENVELOPE;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;

/// One write(2); if it comes back short, the log is cut back to where it began (the
/// caller's lock keeps every other writer out, and O_APPEND put the bytes at the end).
pub fn write_whole(file: &File, bytes: &[u8]) -> Result<(), String> {
    let before = file.metadata().map_err(|e| e.to_string())?.len();
    let why = match (&*file).write(bytes) {
        Ok(n) if n == bytes.len() => return Ok(()),
        Ok(n) => format!("only {n} of {} bytes were written", bytes.len()),
        Err(e) => e.to_string(),
    };
    match file.set_len(before) {
        Ok(()) => Err(format!("{why} (the log is back at {before} bytes)")),
        Err(e) => Err(format!(
            "{why}, and cutting the log back to {before} bytes failed: {e}"
        )),
    }
}

/// How far back a partial record is looked for: longer than any record.
const MAX_PARTIAL: u64 = 2 * MAX_ENVELOPE as u64;

/// A log that does not end in a newline ends in a record its writer did not finish
/// (killed between two pages of its write): it is cut off at the last newline, so
/// that the next record is not glued to it. `file` must be open for reading too.
pub fn cut_partial_record(file: &File) -> Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    while end > 0 && len - end < MAX_PARTIAL {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)
            .map_err(|e| format!("cannot read its end: {e}"))?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            return cut(file, start + at as u64 + 1);
        }
        end = start;
    }
    match end {
        0 => cut(file, 0),
        _ => Err(format!(
            "it ends in more than {MAX_PARTIAL} bytes without a newline, which no record of ours is: repair it by hand"
        )),
    }
}

fn cut(file: &File, at: u64) -> Result<(), String> {
    file.set_len(at)
        .map_err(|e| format!("cannot cut off a partial record at byte {at}: {e}"))
}

/// The same line to syslog, best effort (machines without a syslog daemon have no
/// `/dev/log`): authpriv, notice for an allowed request, warning for a refusal.
pub fn syslog(program: &str, line: &str, allowed: bool) {
    let priority = 10 * 8 + if allowed { 5 } else { 4 };
    let message = format!("<{priority}>{program}[{}]: {line}", std::process::id());
    if let Ok(socket) = UnixDatagram::unbound() {
        let _ = socket.send_to(message.as_bytes(), "/dev/log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, contents: &[u8]) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("ucloud-wire-audit-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    /// A record its writer did not finish is cut off at the last newline; whole
    /// records are left alone.
    #[test]
    fn a_partial_record_is_cut_off_and_whole_ones_stay() {
        let long = format!("{{\"a\":1}}\n{}", "x".repeat(10_000));
        for (name, contents, kept) in [
            ("empty", "", ""),
            ("whole", "{\"a\":1}\n{\"b\":2}\n", "{\"a\":1}\n{\"b\":2}\n"),
            ("partial", "{\"a\":1}\n{\"b\":", "{\"a\":1}\n"),
            ("only-partial", "{\"b\":", ""),
            ("long-partial", long.as_str(), "{\"a\":1}\n"),
        ] {
            let (path, file) = scratch(name, contents.as_bytes());
            cut_partial_record(&file).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), kept, "{name}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_whole_write_appends_the_bytes() {
        let (path, file) = scratch("whole-write", b"{\"a\":1}\n");
        write_whole(&file, b"{\"b\":2}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
