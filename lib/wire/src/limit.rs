//! How many refusals of a local caller the audit log takes, for every program that
//! writes it (the dispatcher, the registry). A caller whose refusals the program
//! limits gets at most [`BURST`] records per [`WINDOW_MS`] per uid; the refusals
//! beyond that are counted, and its first refusal after the window is preceded by
//! one summary of them. Which callers are limited is each program's choice (see its
//! man page): the dispatcher's gateway and the registry's service account bring
//! requests from the network and are never limited.
//!
//! The count lives in one small file per uid in a root-only directory the
//! installer makes, shared by the programs. Only uids that can reach a program ever
//! get a file, so the state is bounded by the accounts of the machine. Without that
//! directory (or with one that is not root's alone) nothing is limited, so a broken
//! count never loses a record; ucloud-check(8) reports the directory.

use crate::trust::{self, Use};
use nix::fcntl::OFlag;
use serde_json::json;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The length of a window, in milliseconds.
pub const WINDOW_MS: u64 = 30_000;
/// Records of a refused caller's uid written per window.
pub const BURST: u32 = 10;

/// One uid's count: when its window began, how many of its refusals were written in
/// it, and how many were not since the last summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub start: u64,
    pub written: u32,
    pub suppressed: u64,
}

/// Refusals that were not written: `count` of them since `since` (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub since: u64,
}

impl Summary {
    /// The audit line of the summary, in the shape of `program`'s records.
    pub fn line(&self, program: &str, caller_uid: u32) -> String {
        json!({
            "time": crate::now_ms(), "program": program,
            "pid": std::process::id(), "callerUid": caller_uid,
            "decision": "suppressed", "suppressed": self.count, "since": self.since,
        })
        .to_string()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// A summary to write before the record.
    pub summary: Option<Summary>,
    /// Whether the record itself is written.
    pub write: bool,
    pub next: State,
}

/// The verdict for one refusal of a caller that was not accepted, at `now`.
pub fn decide(state: State, now: u64) -> Verdict {
    // A clock set back ends the window too, or it could last for ever.
    let over = now < state.start || now - state.start >= WINDOW_MS;
    let mut next = state;
    let mut summary = None;
    if over {
        if state.suppressed > 0 {
            summary = Some(Summary {
                count: state.suppressed,
                since: state.start,
            });
        }
        next = State {
            start: now,
            written: 0,
            suppressed: 0,
        };
    }
    let write = if next.written < BURST {
        next.written += 1;
        true
    } else {
        next.suppressed += 1;
        false
    };
    Verdict {
        summary,
        write,
        next,
    }
}

/// A verdict whose new count is stored only once the lines it lets through are
/// written: a write that fails costs neither the count nor a summary.
pub struct Charge {
    pub verdict: Verdict,
    file: Option<(File, State)>,
}

impl Charge {
    pub fn commit(self) {
        if let Some((file, old)) = self.file {
            if self.verdict.next != old {
                // A count that cannot be stored only makes the next run count afresh.
                let _ = store(&file, self.verdict.next);
            }
        }
    }
}

/// Reads the state in `file` (a uid's, from [`open_state`]) and decides; without
/// one (a record that is not limited) the record is simply written. Called with the
/// audit log locked, so the writers of one uid count one after another.
pub fn charge(file: Option<File>, now: u64) -> Charge {
    let Some(file) = file else {
        let verdict = Verdict {
            summary: None,
            write: true,
            next: State::default(),
        };
        return Charge {
            verdict,
            file: None,
        };
    };
    let state = read(&file).unwrap_or_default();
    Charge {
        verdict: decide(state, now),
        file: Some((file, state)),
    }
}

/// How a uid's file is opened (made on its first refusal).
pub const STATE_USE: Use = Use::Write(OFlag::O_RDWR.union(OFlag::O_CREAT));

/// The uid's file in `dir`, the directories on the way judged once per run.
/// Anything but a root-owned 0600 regular file is not trusted: then nothing is
/// limited.
pub fn open_state(dir: &str, uid: u32) -> Option<File> {
    let path = format!("{dir}/{uid}");
    trust::open_kept(&path, STATE_USE).ok().map(File::from)
}

fn read(file: &File) -> Option<State> {
    let mut buf = [0u8; 64];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse(std::str::from_utf8(&buf[..n]).ok()?)
}

fn parse(text: &str) -> Option<State> {
    let mut fields = text.split_ascii_whitespace();
    let state = State {
        start: fields.next()?.parse().ok()?,
        written: fields.next()?.parse().ok()?,
        suppressed: fields.next()?.parse().ok()?,
    };
    fields.next().is_none().then_some(state)
}

fn format(state: State) -> String {
    format!("{} {} {}\n", state.start, state.written, state.suppressed)
}

fn store(file: &File, state: State) -> std::io::Result<()> {
    let text = format(state);
    file.write_all_at(text.as_bytes(), 0)?;
    file.set_len(text.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood: `BURST` refusals written, the rest counted, one summary when the
    /// window is over, then a new burst.
    #[test]
    fn a_flood_is_cut_to_a_burst_and_one_summary() {
        let mut state = State::default();
        let mut written = 0;
        for i in 0..500 {
            let v = decide(state, 1_000_000 + i);
            assert_eq!(v.summary, None);
            written += v.write as u32;
            state = v.next;
        }
        assert_eq!(written, BURST);
        assert_eq!(state.suppressed, 500 - BURST as u64);
        let later = 1_000_000 + WINDOW_MS;
        let v = decide(state, later);
        assert_eq!(
            v.summary,
            Some(Summary {
                count: 500 - BURST as u64,
                since: 1_000_000
            })
        );
        assert!(v.write);
        assert_eq!(
            v.next,
            State {
                start: later,
                written: 1,
                suppressed: 0
            }
        );
    }

    #[test]
    fn a_clock_set_back_ends_the_window() {
        let full = State {
            start: 50_000,
            written: BURST,
            suppressed: 3,
        };
        let v = decide(full, 10_000);
        assert!(v.write);
        assert_eq!(v.summary.map(|s| s.count), Some(3));
        assert_eq!(v.next.start, 10_000);
    }

    #[test]
    fn a_summary_says_how_many_since_when() {
        let line = Summary { count: 7, since: 5 }.line("ucloud-registry", 1001);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["decision"], "suppressed");
        assert_eq!(
            (v["suppressed"].as_u64(), v["since"].as_u64()),
            (Some(7), Some(5))
        );
        assert_eq!(
            (v["program"].as_str(), v["callerUid"].as_u64()),
            (Some("ucloud-registry"), Some(1001))
        );
    }

    #[test]
    fn the_state_file_round_trips_and_garbage_counts_afresh() {
        let s = State {
            start: 1_765_000_000_000,
            written: 4,
            suppressed: u64::MAX,
        };
        assert_eq!(parse(&format(s)), Some(s));
        assert!(format(s).len() <= 64);
        for bad in ["", "1 2", "1 2 3 4", "a b c", "-1 0 0", "1 99999999999 0"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
