//! The one way ucloud-project runs a command: an argv vector (never a shell), a
//! clean environment (PATH and the C locale, so the answers it reads are the
//! ones it was written for), no input, and a time limit, so that a slurmdbd that
//! does not answer holds up one step, not the run. Tests put a fake in its place.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    #[cfg(test)]
    pub fn ok(stdout: &str) -> Output {
        Output {
            ok: true,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }
    pub fn failed(stderr: &str) -> Output {
        Output {
            ok: false,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
    /// The first line that says something: stderr's, else stdout's; at most 300
    /// characters.
    pub fn why(&self) -> String {
        let line = self
            .stderr
            .lines()
            .chain(self.stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        line.chars().take(300).collect()
    }
}

pub trait Runner {
    fn run(&mut self, argv: &[String]) -> Output;
}

pub struct System {
    pub timeout: Duration,
}

/// Root's commands come from the system's directories, never from a PATH the
/// caller's environment gave (the stack starts this with one without sbin).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// More output than any answer of ours; the rest is read and dropped.
const MAX_OUTPUT: u64 = 64 << 20;

impl Runner for System {
    fn run(&mut self, argv: &[String]) -> Output {
        let Some((program, args)) = argv.split_first() else {
            return Output::failed("an empty command");
        };
        let child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return Output::failed(&format!("cannot start {program}: {e}")),
        };
        // A thread the system refuses (the unit's TasksMax) fails this command,
        // never the run: with panic=abort a panic would end it.
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::Builder::new().spawn(move || {
                let mut bytes = Vec::new();
                if let Some(p) = pipe {
                    let mut p = p.take(MAX_OUTPUT);
                    let _ = p.read_to_end(&mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
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
        let (out, err) = match (out, err) {
            (Ok(out), Ok(err)) => (out, err),
            (out, err) => {
                let _ = child.kill();
                let _ = child.wait();
                let why = out.err().or(err.err()).map(|e| e.to_string());
                return Output::failed(&format!(
                    "cannot read {program}'s output: {}",
                    why.unwrap_or_default()
                ));
            }
        };
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let mut stderr = err.join().unwrap_or_default();
        if status.is_none() {
            stderr = format!(
                "{program} did not finish within {} s and was killed\n{stderr}",
                self.timeout.as_secs()
            );
        }
        Output {
            ok: status.is_some_and(|s| s.success()),
            stdout,
            stderr,
        }
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;

    type Answer = Box<dyn FnMut(&[String]) -> Output>;

    /// Records every argv and answers from a script.
    pub struct Fake {
        pub calls: Vec<Vec<String>>,
        pub answer: Answer,
    }

    impl Fake {
        pub fn new(answer: impl FnMut(&[String]) -> Output + 'static) -> Fake {
            Fake {
                calls: Vec::new(),
                answer: Box::new(answer),
            }
        }
    }

    impl Runner for Fake {
        fn run(&mut self, argv: &[String]) -> Output {
            self.calls.push(argv.to_vec());
            (self.answer)(argv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_without_a_shell_and_time_out() {
        let mut r = System {
            timeout: Duration::from_secs(5),
        };
        let out = r.run(&["echo".into(), "a;b $(id)".into()]);
        assert!(out.ok);
        assert_eq!(out.stdout, "a;b $(id)\n");
        let out = r.run(&["sh".into(), "-c".into(), "echo oops >&2; exit 3".into()]);
        assert!(!out.ok);
        assert_eq!(out.why(), "oops");
        let out = r.run(&["/nonexistent/cmd".into()]);
        assert!(!out.ok && out.why().contains("cannot start"));
        let mut quick = System {
            timeout: Duration::from_millis(200),
        };
        let started = Instant::now();
        let out = quick.run(&["sleep".into(), "10".into()]);
        assert!(!out.ok && out.why().contains("did not finish"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
