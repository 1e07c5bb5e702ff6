//! A job's web application for the tests and `scripts/bench-web`, run inside a
//! Slurm job as its user: a small HTTP/1.1 server on 0.0.0.0:PORT.
//!
//!   GET /           `hello from USER in job SLURM_JOB_ID`
//!   GET /headers    the request's head as it arrived (what the proxy passed on)
//!   GET /bytes?n=N  N bytes (Content-Length), for throughput
//!   GET /ws         a WebSocket that echoes each text message
//!
//! Keep-alive; one thread per connection. Not installed on a site.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use ucloud_http::websocket::{self, Decoder, Message, Role};

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: test-web-app PORT");
            std::process::exit(64);
        });
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("test-web-app: cannot listen on {port}: {e}");
        std::process::exit(1);
    });
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut out = stream.try_clone().expect("clone");
    let mut input = BufReader::with_capacity(64 << 10, stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        let header = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > 0
            && std::io::copy(&mut (&mut input).take(length as u64), &mut std::io::sink()).is_err()
        {
            return;
        }
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let sent = match path {
            "/" => {
                let user = std::env::var("USER").unwrap_or_default();
                let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
                reply(
                    &mut out,
                    "200 OK",
                    format!("hello from {user} in job {job}\n").as_bytes(),
                )
            }
            "/headers" => reply(&mut out, "200 OK", head.as_bytes()),
            "/bytes" => {
                let n: u64 = query
                    .strip_prefix("n=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                bytes(&mut out, n)
            }
            "/ws" => return echo(input, out, header("sec-websocket-key").unwrap_or_default()),
            _ => reply(&mut out, "404 Not Found", b"not here\n"),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn reply(out: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body)
}

fn bytes(out: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
    );
    out.write_all(head.as_bytes())?;
    let block = vec![b'x'; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        out.write_all(&block[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn echo(mut input: BufReader<TcpStream>, mut out: TcpStream, key: String) {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        websocket::accept_key(&key)
    );
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut decoder = Decoder::new(Role::Server, 1 << 20);
    decoder.push(input.buffer());
    input.consume(input.buffer().len());
    let mut input = input.into_inner();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        while let Ok(Some(m)) = decoder.next() {
            let frame = match m {
                Message::Text(t) => websocket::text(&format!("echo: {t}"), None),
                Message::Ping(p) => websocket::encode(0xA, &p, None),
                Message::Close(..) => {
                    let _ = out.write_all(&websocket::close(1000, "", None));
                    return;
                }
                _ => continue,
            };
            if out.write_all(&frame).is_err() {
                return;
            }
        }
        match input.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
}
