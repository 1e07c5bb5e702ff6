//! The anchor of the terminal's keystroke benchmark (`scripts/bench-term`): runs a
//! command whose far end is `cat` on a terminal (`ssh -tt HOST cat`), then times
//! N keys one at a time from the write until the terminal's echo of it comes
//! back. Prints `{"keystroke_us":[...]}`, as `ucloud-sim shell --bench N` does.
//!
//!   echo-bench N COMMAND [ARGS...]
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(n), Some(program)) = (
        args.first().and_then(|n| n.parse::<usize>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: echo-bench N COMMAND [ARGS...]");
        std::process::exit(64);
    };
    let mut child = Command::new(program)
        .args(&args[2..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("{program}: {e}")));
    let mut keys = child.stdin.take().unwrap();
    let mut screen = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = screen.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let wait_for = |marker: &[u8]| {
        let until = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !seen.windows(marker.len()).any(|w| w == marker) {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(bytes) => seen.extend(bytes),
                Err(_) => fail(&format!(
                    "no {:?} within 30 s; seen {:?}",
                    String::from_utf8_lossy(marker),
                    String::from_utf8_lossy(&seen)
                )),
            }
        }
    };
    keys.write_all(b"ready\r").unwrap();
    keys.flush().unwrap();
    wait_for(b"ready\r\nready");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let key = [b'a' + (i % 26) as u8];
        let started = Instant::now();
        keys.write_all(&key).unwrap();
        keys.flush().unwrap();
        wait_for(&key);
        times.push(started.elapsed().as_micros() as u64);
    }
    println!("{{\"keystroke_us\":{times:?}}}");
    drop(keys);
    let _ = child.kill();
    let _ = child.wait();
}

fn fail(why: &str) -> ! {
    eprintln!("echo-bench: {why}");
    std::process::exit(1);
}
