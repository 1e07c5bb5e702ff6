//! Hostile and unusual HTTP against the running gateway (`UCLOUD_IM_GATEWAY_URL` of
//! the local stack), over raw TCP: what a broken or malicious client sends must get
//! a clear 4xx (or a closed connection) and must not disturb other connections.
//! None of these requests reaches a plugin: they are refused before dispatch.

mod activation;
mod connections;
mod refusals;
mod spares;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ucloud_im_tests::Stack;

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// An error must be UCloud's `{"why","errorCode"}` as JSON.
    fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        let body = self.json();
        assert_eq!(body["errorCode"], code, "{body}");
        let why = body["why"].as_str().expect("why is a string").to_string();
        assert!(!why.is_empty());
        why
    }
}

/// A raw connection with a small reader for HTTP/1.1 responses.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(stack: &Stack) -> Conn {
        let url = stack.get("UCLOUD_IM_GATEWAY_URL");
        let addr = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("UCLOUD_IM_GATEWAY_URL={url}: these tests speak plain HTTP to the direct socket"))
            .trim_end_matches('/');
        let stream = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("cannot connect to the gateway at {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the gateway");
    }

    /// Reads more; false at EOF or on a reset (the gateway closed the connection).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading from the gateway: {e}"),
        }
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line =
                    String::from_utf8(self.buf[..i].to_vec()).expect("response head is UTF-8");
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill(),
                "connection closed in the middle of a response line"
            );
        }
    }

    fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill(),
                "connection closed in the middle of a response body"
            );
        }
        self.buf.drain(..n).collect()
    }

    /// One response (interim 1xx responses are returned like any other).
    fn response(&mut self) -> Response {
        let status_line = self.line();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line has a colon");
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if status < 200 || status == 204 {
            return response;
        }
        if response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let size = usize::from_str_radix(self.line().split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    assert_eq!(self.line(), "");
                    break;
                }
                let data = self.exact(size);
                response.body.extend_from_slice(&data);
                assert_eq!(self.line(), "");
            }
        } else {
            let len: usize = response
                .header("content-length")
                .expect("Content-Length or chunked")
                .parse()
                .unwrap();
            response.body = self.exact(len);
        }
        response
    }

    /// Whether the gateway closed the connection (nothing more arrives).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

fn provider(stack: &Stack) -> String {
    stack.get("UCLOUD_IM_PROVIDER")
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n{extra}\r\n").into_bytes()
}

fn exchange(stack: &Stack, raw: &[u8]) -> (Response, Conn) {
    let mut conn = Conn::open(stack);
    conn.send(raw);
    let response = conn.response();
    (response, conn)
}
