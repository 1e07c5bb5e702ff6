//! MUNGE, the way ucloud-im uses it: the `munge` and `unmunge` programs, at fixed
//! paths, with a fixed small environment and a hard deadline. No libmunge binding
//! (that would be unsafe FFI), and a munged that hangs costs the caller its
//! deadline, never more: ucloud-notify runs inside a Slurm hook that must end
//! within a second.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's and every distribution's path of the programs; never looked up on PATH.
pub const MUNGE: &str = "/usr/bin/munge";
pub const UNMUNGE: &str = "/usr/bin/unmunge";

/// What a program that ended in time said.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
pub enum RunError {
    /// It could not be started (missing, not executable).
    Spawn(std::io::Error),
    /// It ran longer than its deadline and was killed.
    Deadline(Duration),
    /// It wrote more than the caller takes; its output is not trusted.
    TooLarge(u64),
    /// Waiting for it failed.
    Wait(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "cannot start it: {e}"),
            RunError::Deadline(d) => write!(
                f,
                "it took longer than {d:?} and was killed (is munged running?)"
            ),
            RunError::TooLarge(cap) => write!(f, "it wrote more than {cap} bytes"),
            RunError::Wait(e) => write!(f, "waiting for it failed: {e}"),
        }
    }
}

/// Runs `program args` with `input` on its standard input, and returns what it
/// wrote, unless it runs past `deadline` (then it is killed) or writes more than
/// `max_output` bytes to either stream. The environment is PATH and LC_ALL only:
/// nothing of the caller's leaks in, and munge's messages stay in English.
pub fn run_bounded(
    program: &Path,
    args: &[&str],
    input: &[u8],
    deadline: Duration,
    max_output: u64,
) -> Result<Finished, RunError> {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    // Each pipe gets its own thread, so a program that does not read its input, or
    // fills one output while we wait on the other, cannot block us past the deadline.
    // A thread the system refuses (a unit's TasksMax, say) is an error for this
    // one run, never a panic: with panic=abort it would take the whole program.
    let stdin = child.stdin.take();
    let input = input.to_vec();
    let writer = std::thread::Builder::new().spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input);
        }
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::Builder::new().spawn(move || match pipe {
            Some(pipe) => crate::read_capped(pipe, max_output).map_err(|e| match e {
                crate::Capped::TooLarge(cap) => RunError::TooLarge(cap),
                crate::Capped::Io(e) => RunError::Wait(e),
            }),
            None => Ok(Vec::new()),
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let (writer, out, err) = match (writer, out, err) {
        (Ok(w), Ok(o), Ok(e)) => (w, o, e),
        (w, o, e) => {
            // Threads that did start end once the child's pipes close.
            let _ = child.kill();
            let _ = child.wait();
            let refused = [w.err(), o.err(), e.err()].into_iter().flatten().next();
            return Err(RunError::Spawn(refused.unwrap_or_else(|| {
                std::io::Error::other("a thread could not be started")
            })));
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Deadline(deadline));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Wait(e));
            }
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or(Ok(Vec::new()))?;
    let stderr = err.join().unwrap_or(Ok(Vec::new()))?;
    Ok(Finished {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Whether `text` has the shape of a MUNGE credential: `MUNGE:`, base64, `:`.
/// Checked before anything spends a process on it.
pub fn looks_like_credential(text: &[u8]) -> bool {
    text.len() > 8
        && text.starts_with(b"MUNGE:")
        && text.ends_with(b":")
        && text[6..text.len() - 1]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// The text of a munge status code, as munge_strerror(3) gives it, for logs and
/// answers a person reads.
pub fn status_text(code: u32) -> &'static str {
    match code {
        0 => "Success",
        1 => "Internal error",
        2 => "Invalid argument",
        3 => "Exceeded maximum message length",
        4 => "Buffer overflow",
        5 => "Out of memory",
        6 => "Socket communication error",
        7 => "Socket timeout",
        8 => "Invalid credential format",
        9 => "Invalid credential version",
        10 => "Invalid cipher type",
        11 => "Invalid MAC type",
        12 => "Invalid compression type",
        13 => "Unrecognized security realm",
        14 => "Invalid credential",
        15 => "Expired credential",
        16 => "Rewound credential",
        17 => "Replayed credential",
        18 => "Unauthorized credential",
        _ => "Unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn script(name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wire-munge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_program_gets_its_input_and_a_clean_environment() {
        let p = script("echo", "cat; echo; env | sort >&2; exit 3");
        let done = run_bounded(&p, &[], b"payload", Duration::from_secs(5), 4096).unwrap();
        assert_eq!(done.code, Some(3));
        assert_eq!(done.stdout, b"payload\n");
        let env = String::from_utf8(done.stderr).unwrap();
        assert!(env.contains("LC_ALL=C") && env.contains("PATH=/usr/bin:/bin"));
        assert!(!env.contains("HOME="), "{env}");
    }

    #[test]
    fn a_program_past_its_deadline_is_killed() {
        let p = script("hang", "exec sleep 30");
        let t = Instant::now();
        let e = run_bounded(&p, &[], b"", Duration::from_millis(200), 4096).unwrap_err();
        assert!(matches!(e, RunError::Deadline(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn too_much_output_or_no_program_is_an_error() {
        let p = script("flood", "head -c 100000 /dev/zero");
        let e = run_bounded(&p, &[], b"", Duration::from_secs(5), 1000).unwrap_err();
        assert!(matches!(e, RunError::TooLarge(1000)), "{e}");
        let e = run_bounded(
            Path::new("/nonexistent/munge"),
            &[],
            b"",
            Duration::from_secs(1),
            10,
        )
        .unwrap_err();
        assert!(matches!(e, RunError::Spawn(_)));
        // A program that never reads a large input still ends by its deadline.
        let p = script("deaf", "exec sleep 30");
        let e = run_bounded(
            &p,
            &[],
            &vec![b'x'; 1 << 20],
            Duration::from_millis(200),
            10,
        )
        .unwrap_err();
        assert!(matches!(e, RunError::Deadline(_)));
    }

    #[test]
    fn credential_shape() {
        assert!(looks_like_credential(b"MUNGE:AwQFAAB+/x=:"));
        for bad in [
            &b""[..],
            b"MUNGE::",
            b"MUNGE:abc",
            b"munge:abc:",
            b"MUNGE:ab c:",
            b"MUNGE:ab\nc:",
            b"MUNGE:ab:c:",
            b"MUNGE:ab\0c:",
        ] {
            assert!(!looks_like_credential(bad), "{bad:?}");
        }
        assert_eq!(status_text(15), "Expired credential");
        assert_eq!(status_text(999), "Unknown error");
    }
}
