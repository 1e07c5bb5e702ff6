//! Load generator for `scripts/bench`: measures one thing per run and prints the
//! samples' summary as one JSON line, so the script can interleave runs of the chain
//! and of its floor and compare medians.
//!
//!   chain-bench keepalive ADDR PATH TOKEN N   N requests on one connection
//!   chain-bench newconn   ADDR PATH TOKEN N   N connections, one request each
//!   chain-bench exec      N PROGRAM...        N times: run each PROGRAM in a row
//!
//! `--gap MS` first paces keepalive and exec: MS milliseconds of quiet before each
//! timed request or run, as when calls arrive apart (UCloud's do), instead of back
//! to back.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gap = if args.first().map(String::as_str) == Some("--gap") && args.len() > 1 {
        let ms = count(&args[1]);
        args.drain(..2);
        Duration::from_millis(ms as u64)
    } else {
        Duration::ZERO
    };
    let samples = match args.first().map(String::as_str) {
        Some("keepalive") if args.len() == 5 => {
            keepalive(&args[1], &args[2], &args[3], count(&args[4]), gap)
        }
        Some("newconn") if args.len() == 5 => {
            newconn(&args[1], &args[2], &args[3], count(&args[4]))
        }
        Some("exec") if args.len() >= 3 => exec(count(&args[1]), &args[2..], gap),
        _ => {
            eprintln!(
                "usage: chain-bench [--gap MS] keepalive|newconn ADDR PATH TOKEN N | exec N PROGRAM..."
            );
            std::process::exit(64);
        }
    };
    report(samples);
}

fn count(text: &str) -> usize {
    text.parse().unwrap_or_else(|_| {
        eprintln!("chain-bench: {text:?} is not a count");
        std::process::exit(64)
    })
}

fn request(path: &str, token: &str) -> Vec<u8> {
    let body = r#"{"username":"bench#1"}"#;
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response with a Content-Length body; returns the status.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("numeric content-length"))
                .expect("the gateway answers with a content-length");
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).expect("read body");
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head[9..12].parse().expect("status code");
        }
        let n = stream.read(&mut chunk).expect("read head");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn check(status: u16) {
    if status != 200 {
        eprintln!(
            "chain-bench: the chain answered {status}; is the stack up and the plugin installed?"
        );
        std::process::exit(1);
    }
}

fn keepalive(addr: &str, path: &str, token: &str, n: usize, gap: Duration) -> Vec<f64> {
    let req = request(path, token);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).ok();
    let mut buf = Vec::new();
    // One request to warm the connection (and the page cache) before timing.
    stream.write_all(&req).expect("write");
    check(read_response(&mut stream, &mut buf));
    (0..n)
        .map(|_| {
            std::thread::sleep(gap);
            let start = Instant::now();
            stream.write_all(&req).expect("write");
            check(read_response(&mut stream, &mut buf));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn newconn(addr: &str, path: &str, token: &str, n: usize) -> Vec<f64> {
    let req = request(path, token);
    let mut buf = Vec::new();
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).ok();
            stream.write_all(&req).expect("write");
            check(read_response(&mut stream, &mut buf));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn exec(n: usize, programs: &[String], gap: Duration) -> Vec<f64> {
    (0..n)
        .map(|_| {
            std::thread::sleep(gap);
            let start = Instant::now();
            for program in programs {
                let status = Command::new(program)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .expect("spawn");
                assert!(status.success(), "{program} failed");
            }
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn report(mut samples: Vec<f64>) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{{\"n\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"min_ms\":{:.3},\"max_ms\":{:.3}}}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[0],
        samples[samples.len() - 1]
    );
}
