//! The session's two directions. Keys: the gateway's lines on stdin (`input
//! {data}`, `resize {cols, rows}`, already reduced to those fields) go to the
//! terminal, on a thread of their own. Screen: what the terminal prints goes to
//! stdout as `{"type":"data","data":…}` lines, the payloads the web client writes
//! to its terminal. Either side ending ends the session: stdin closing (the
//! browser left) hangs up the shell's session, and the shell ending (the terminal
//! reads EIO) ends the output.

use crate::sys;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::time::Duration;

/// The longest line the gateway sends (a pasted block of text).
const MAX_LINE: u64 = 1 << 20;
/// How long a hung-up shell has before it is killed.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

/// Relays until the shell ends or stdin closes.
pub fn run(master: OwnedFd, shell: Pid, out: &mut impl Write) -> std::io::Result<()> {
    let keys = master.try_clone()?;
    std::thread::spawn(move || {
        keys_in(std::io::stdin().lock(), keys);
        // The browser is gone: hang up the shell's session, then make sure.
        let _ = killpg(shell, Signal::SIGHUP);
        std::thread::sleep(HANGUP_GRACE);
        let _ = killpg(shell, Signal::SIGKILL);
    });
    screen_out(File::from(master), out)
}

/// The gateway's lines to the terminal, until stdin ends or a line is broken.
fn keys_in(input: impl Read, master: OwnedFd) {
    let mut terminal = File::from(master.try_clone().expect("dup of an open fd"));
    let mut lines = BufReader::new(input);
    loop {
        let mut line = Vec::new();
        match (&mut lines).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            return;
        };
        let done = match key(&v) {
            Some(Key::Input(data)) => terminal.write_all(data.as_bytes()).is_err(),
            Some(Key::Resize(cols, rows)) => sys::resize(&master, cols, rows).is_err(),
            None => true,
        };
        if done {
            return;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    Input(&'a str),
    Resize(u16, u16),
}

fn key(v: &Value) -> Option<Key<'_>> {
    let dim = |k: &str| {
        v[k].as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    match v["type"].as_str()? {
        "input" => Some(Key::Input(v["data"].as_str()?)),
        "resize" => Some(Key::Resize(dim("cols")?, dim("rows")?)),
        _ => None,
    }
}

/// The terminal's output as data lines, until it reads EIO (the shell's side
/// is closed) or stdout is gone.
fn screen_out(mut terminal: File, out: &mut impl Write) -> std::io::Result<()> {
    let mut carry = Utf8Carry::default();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match terminal.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let text = carry.push(&buf[..n]);
        if !text.is_empty() {
            writeln!(out, "{}", json!({"type": "data", "data": text}))?;
            out.flush()?;
        }
    }
}

/// Text from a byte stream read in pieces: a character split between two reads
/// is kept for the next; bytes that are no UTF-8 become U+FFFD (as Go's
/// encoding/json does with the same bytes in UCloud's own module).
#[derive(Default)]
struct Utf8Carry {
    held: Vec<u8>,
}

impl Utf8Carry {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let complete = match std::str::from_utf8(&self.held) {
            Ok(_) => self.held.len(),
            // An incomplete character at the end waits for the rest.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.held.len(),
        };
        let text = String::from_utf8_lossy(&self.held[..complete]).into_owned();
        self.held.drain(..complete);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_between_reads_are_kept_whole() {
        let mut c = Utf8Carry::default();
        let word = "blåbær ✓".as_bytes();
        let mut got = String::new();
        for byte in word {
            got += &c.push(std::slice::from_ref(byte));
        }
        assert_eq!(got, "blåbær ✓");
        assert_eq!(c.push(b"a\xffb"), "a\u{fffd}b");
        // An incomplete character followed by a byte that cannot continue it.
        assert_eq!(c.push(b"\xe2\x9c"), "");
        assert_eq!(c.push(b"x"), "\u{fffd}x");
    }

    #[test]
    fn only_known_keys() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            key(&v(r#"{"type":"input","data":"ls\r"}"#)),
            Some(Key::Input("ls\r"))
        );
        assert_eq!(
            key(&v(r#"{"type":"resize","cols":100,"rows":30}"#)),
            Some(Key::Resize(100, 30))
        );
        for bad in [
            r#"{"type":"resize","cols":0,"rows":30}"#,
            r#"{"type":"resize","cols":100}"#,
            r#"{"type":"input"}"#,
            r#"{"type":"exec","data":"x"}"#,
            r#"[]"#,
        ] {
            assert_eq!(key(&v(bad)), None, "{bad}");
        }
    }
}
