//! Hostile and unusual HTTP against the running gateway (`UCLOUD_IM_GATEWAY_URL` of
//! the local stack), over raw TCP: what a broken or malicious client sends must get
//! a clear 4xx (or a closed connection) and must not disturb other connections.
//! None of these requests reaches a plugin: they are refused before dispatch.

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

#[test]
fn health_is_answered_by_the_gateway() {
    let stack = Stack::load();
    let (r, _) = exchange(&stack, &get("/ucloud-im/health", ""));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    // UCloud's path rules: `//` collapsed, trailing slash stripped.
    let (r, _) = exchange(&stack, &get("//ucloud-im//health/", ""));
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_request_lines_get_400_and_a_closed_connection() {
    let stack = Stack::load();
    for raw in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /ucloud-im/health HTTP/9.9\r\n\r\n",
        b"GET /ucloud-im/health\r\n\r\n",
        b"GET http://evil.example/ucloud-im/health HTTP/1.1\r\n\r\n",
        b"GET /ucloud-im/health HTTP/1.1\r\nNo Colon Here\r\n\r\n",
        b"GET /ucloud-im/health HTTP/1.1\r\nContent-Length: twelve\r\n\r\n",
    ] {
        let (r, mut conn) = exchange(&stack, raw);
        r.assert_error(400, "BAD_REQUEST");
        assert!(
            conn.closed(),
            "connection still open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn oversized_heads_get_431() {
    let stack = Stack::load();
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    let (r, mut conn) = exchange(&stack, &get("/ucloud-im/health", &big));
    r.assert_error(431, "HEADERS_TOO_LARGE");
    assert!(conn.closed());
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (r, _) = exchange(&stack, &get("/ucloud-im/health", &many));
    r.assert_error(431, "HEADERS_TOO_LARGE");
}

#[test]
fn bad_bodies_are_refused() {
    let stack = Stack::load();
    let p = provider(&stack);
    let post = |headers: &str, body: &str| {
        format!("POST /ucloud/{p}/jobs HTTP/1.1\r\nHost: gateway\r\n{headers}\r\n{body}")
            .into_bytes()
    };
    // Bad chunk sizes and framing.
    for (headers, body) in [
        ("Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", "-2\r\n{}\r\n0\r\n\r\n"),
        ("Transfer-Encoding: chunked\r\n", "2\r\n{}}}\r\n0\r\n\r\n"),
        ("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
        // Both framings at once: the request-smuggling pattern.
        (
            "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
            "2\r\n{}\r\n0\r\n\r\n",
        ),
        ("Content-Length: 2\r\nContent-Length: 3\r\n", "{} "),
    ] {
        let (r, mut conn) = exchange(&stack, &post(headers, body));
        let why = r.assert_error(400, "BAD_REQUEST");
        assert!(conn.closed(), "{headers:?} {body:?}: {why}");
    }
    // Announced too large: refused at once, without waiting for the body.
    let (r, mut conn) = exchange(&stack, &post("Content-Length: 100000000\r\n", ""));
    r.assert_error(413, "BODY_TOO_LARGE");
    assert!(conn.closed());
}

#[test]
fn a_stalled_client_times_out_and_costs_others_nothing() {
    let stack = Stack::load();
    let started = Instant::now();
    let mut stalled = Conn::open(&stack);
    stalled.send(b"GET /ucloud-im/health HTTP/1.1\r\nHost: gat");
    // Another connection is served normally meanwhile.
    let (r, _) = exchange(&stack, &get("/ucloud-im/health", ""));
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a stalled client delayed another"
    );
    // The stalled one gets 408 once the head timeout (10 s) has passed, then EOF.
    let r = stalled.response();
    let waited = started.elapsed();
    r.assert_error(408, "REQUEST_TIMEOUT");
    assert!(
        waited >= Duration::from_secs(8),
        "answered after {waited:?}: no head timeout at all?"
    );
    assert!(
        waited <= Duration::from_secs(20),
        "answered after {waited:?}"
    );
    assert!(stalled.closed());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let stack = Stack::load();
    let p = provider(&stack);
    let mut raw = get("/ucloud-im/health", "");
    raw.extend(get(&format!("/ucloud/{p}/no/such/call"), ""));
    raw.extend(
        format!("POST /ucloud/{p}/jobs HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").into_bytes(),
    );
    raw.extend(get("/ucloud-im/health", "Connection: close\r\n"));
    let mut conn = Conn::open(&stack);
    conn.send(&raw);
    assert_eq!(conn.response().status, 200);
    conn.response().assert_error(404, "NOT_FOUND");
    // No token: refused before any dispatch, and the connection stays usable.
    conn.response().assert_error(401, "UNAUTHORIZED");
    let last = conn.response();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(conn.closed());
}

#[test]
fn keep_alive_and_http_1_0() {
    let stack = Stack::load();
    let mut conn = Conn::open(&stack);
    for _ in 0..3 {
        conn.send(&get("/ucloud-im/health", ""));
        assert_eq!(conn.response().status, 200);
    }
    // HTTP/1.0 without keep-alive: one answer, then the gateway closes.
    let mut old = Conn::open(&stack);
    old.send(b"GET /ucloud-im/health HTTP/1.0\r\n\r\n");
    assert_eq!(old.response().status, 200);
    assert!(old.closed());
    // HTTP/1.0 asking for keep-alive keeps it.
    let mut old = Conn::open(&stack);
    old.send(b"GET /ucloud-im/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(old.response().status, 200);
    old.send(b"GET /ucloud-im/health HTTP/1.0\r\n\r\n");
    assert_eq!(old.response().status, 200);
    assert!(old.closed());
}

#[test]
fn expect_100_continue_is_answered() {
    let stack = Stack::load();
    let p = provider(&stack);
    let mut conn = Conn::open(&stack);
    conn.send(
        format!(
            "POST /ucloud/{p}/jobs HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(conn.response().status, 100);
    conn.send(b"{}");
    conn.response().assert_error(401, "UNAUTHORIZED");
}

#[test]
fn unknown_calls_get_404_with_a_reason() {
    let stack = Stack::load();
    let p = provider(&stack);
    let token = stack.token(&[]);
    let auth = format!("Authorization: Bearer {token}\r\n");
    for (method, path, hint) in [
        ("POST", format!("/ucloud/{p}/files/nosuchop"), "not a call"),
        (
            "GET",
            format!("/ucloud/{p}/files/browse"),
            "does not answer GET",
        ),
        ("PUT", format!("/ucloud/{p}/jobs"), "does not answer PUT"),
        ("POST", "/ucloud/someone-else/jobs".to_string(), "provider"),
        ("GET", "/".to_string(), "not a provider API path"),
        ("POST", format!("/ucloud/{p}/files/../jobs"), "not a call"),
    ] {
        let raw = format!("{method} {path} HTTP/1.1\r\n{auth}Content-Length: 2\r\n\r\n{{}}");
        let (r, _) = exchange(&stack, raw.as_bytes());
        let why = r.assert_error(404, "NOT_FOUND");
        assert!(why.contains(hint), "{method} {path}: {why}");
    }
    let (r, _) = exchange(
        &stack,
        &get(&format!("/ucloud/jobs.provider.{p}/websocket"), &auth),
    );
    // The follow endpoint speaks WebSocket only: a plain GET is a bad request.
    let why = r.assert_error(400, "BAD_REQUEST");
    assert!(why.contains("WebSocket"), "{why}");
}

#[test]
fn bad_tokens_get_401() {
    let stack = Stack::load();
    let p = provider(&stack);
    let user = stack.users()[0].0.clone();
    let user_header = format!("UCloud-Username: {}\r\n", base64(&user));
    let call = |auth: &str| {
        let raw = format!("POST /ucloud/{p}/files/browse HTTP/1.1\r\n{auth}{user_header}Content-Length: 2\r\n\r\n{{}}");
        exchange(&stack, raw.as_bytes()).0
    };
    let why = call("").assert_error(401, "UNAUTHORIZED");
    assert!(why.contains("Authorization"), "{why}");
    call("Authorization: Basic dXNlcjpwdw==\r\n").assert_error(401, "UNAUTHORIZED");
    let why = call("Authorization: Bearer not.a.jwt\r\n").assert_error(401, "UNAUTHORIZED");
    assert!(why.contains("token"), "{why}");
    let expired = stack.token(&["--fresh", "--iat-offset", "-7200", "--lifetime", "600"]);
    let why =
        call(&format!("Authorization: Bearer {expired}\r\n")).assert_error(401, "UNAUTHORIZED");
    assert!(why.contains("expired"), "{why}");
    // A valid token's signature with a changed payload.
    let good = stack.token(&[]);
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = base64_url(
        r#"{"sub":"_UCloud","role":"SERVICE","iss":"cloud.sdu.dk","aud":["all:write"],"iat":1,"exp":99999999999}"#,
    );
    parts[1] = &forged_payload;
    let why = call(&format!("Authorization: Bearer {}\r\n", parts.join(".")))
        .assert_error(401, "UNAUTHORIZED");
    assert!(why.contains("signature"), "{why}");
}

#[test]
fn bad_users_and_bodies_get_400_before_dispatch() {
    let stack = Stack::load();
    let p = provider(&stack);
    let auth = format!("Authorization: Bearer {}\r\n", stack.token(&[]));
    let user = format!("UCloud-Username: {}\r\n", base64(&stack.users()[0].0));
    let call = |headers: &str, body: &str| {
        let raw = format!("POST /ucloud/{p}/files/browse HTTP/1.1\r\n{auth}{headers}Content-Length: {}\r\n\r\n{body}", body.len());
        exchange(&stack, raw.as_bytes()).0
    };
    let why = call("UCloud-Username: %%%not-base64\r\n", "{}").assert_error(400, "BAD_REQUEST");
    assert!(why.contains("base64"), "{why}");
    let why = call("", "{}").assert_error(400, "BAD_REQUEST");
    assert!(why.contains("UCloud-Username"), "{why}");
    let why = call(&user, "{not json").assert_error(400, "BAD_REQUEST");
    assert!(why.contains("JSON"), "{why}");
}

#[test]
fn gzip_when_asked() {
    let stack = Stack::load();
    let (r, _) = exchange(
        &stack,
        &get("/ucloud-im/health", "Accept-Encoding: deflate, gzip\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), br#"{"status":"ok"}"#);
    let (r, _) = exchange(&stack, &get("/nowhere", "Accept-Encoding: gzip\r\n"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let body: serde_json::Value = serde_json::from_slice(&gunzip(&r.body)).unwrap();
    assert_eq!(body["errorCode"], "NOT_FOUND");
    // Not asked (or refused with q=0): plain.
    let (r, _) = exchange(
        &stack,
        &get("/ucloud-im/health", "Accept-Encoding: gzip;q=0\r\n"),
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    assert!(data.starts_with(&[0x1f, 0x8b]), "not gzip data");
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -d failed");
    out.stdout
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(text: &str) -> String {
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_url(text: &str) -> String {
    base64(text)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Runs the installed gateway inetd-style on pipes, with extra `setpriv` options.
fn gateway_on_pipes(stack: &Stack, setpriv: &[&str], request: &[u8]) -> std::process::Output {
    let mut child = Command::new("setpriv")
        .args(setpriv)
        .arg(stack.bin("ucloud-gateway"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run setpriv ucloud-gateway");
    child.stdin.take().unwrap().write_all(request).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn no_new_privs_is_reported_as_misconfigured() {
    let stack = Stack::load();
    let out = gateway_on_pipes(&stack, &["--no-new-privs"], &get("/ucloud-im/health", ""));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 500 "), "{stdout}");
    assert!(
        stdout.contains("\"errorCode\":\"MISCONFIGURED\""),
        "{stdout}"
    );
    assert!(stdout.contains("no_new_privs is set"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remove NoNewPrivileges="), "{stderr}");
    // The same binary without the flag is healthy (the check is not always on).
    let out = gateway_on_pipes(&stack, &[], &get("/ucloud-im/health", ""));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200 "));
}

#[test]
fn listen_fds_mode_serves_the_connection_on_fd_3() {
    let stack = Stack::load();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // Without --inetd, systemd-socket-activate passes the connection as fd 3 with
    // LISTEN_FDS=1 and LISTEN_PID, as a socket unit with Accept=yes does.
    let mut activator = Command::new("systemd-socket-activate")
        .args(["-l", &addr, "-a"])
        .arg(stack.bin("ucloud-gateway"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run systemd-socket-activate");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("systemd-socket-activate never listened on {addr}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    conn.send(&get("/ucloud-im/health", ""));
    let first = conn.response();
    conn.send(&get("/ucloud-im/health", "Connection: close\r\n"));
    let second = conn.response();
    let closed = conn.closed();
    let _ = activator.kill();
    let _ = activator.wait();
    assert_eq!(first.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(second.status, 200);
    assert!(closed);
}

// --- the spare dispatcher ------------------------------------------------------

/// A call with no UCloud user: the dispatcher runs integration.init as the service account.
fn init_request(stack: &Stack, token: &str) -> Vec<u8> {
    format!(
        "POST /ucloud/{}/integration/init HTTP/1.1\r\nHost: gateway\r\n\
         Authorization: Bearer {token}\r\nContent-Length: 2\r\n\r\n{{}}",
        provider(stack)
    )
    .into_bytes()
}

/// The gateway process serving `conn`: the owner of the server side of its TCP
/// connection, as `ss` reports it.
fn gateway_of(conn: &Conn) -> u32 {
    let ours = conn.stream.local_addr().unwrap().port();
    let gateway_port = conn.stream.peer_addr().unwrap().port();
    let filter = format!("( sport = :{gateway_port} and dport = :{ours} )");
    let output = Command::new("ss")
        .args(["-Htnp", "state", "established", &filter])
        .output()
        .expect("ss (iproute2) is needed to find the gateway process");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no process owns the gateway side of the connection: {text:?}"))
}

/// The children of `parent` that are dispatchers (pid, effective uid).
fn dispatchers_of(parent: u32) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let is_child = field("PPid:").first() == Some(&parent.to_string().as_str());
        if is_child && field("Name:").first() == Some(&"ucloud-dispatch") {
            let euid = field("Uid:").get(1).and_then(|u| u.parse().ok()).unwrap();
            found.push((pid, euid));
        }
    }
    found
}

/// The one spare dispatcher of `gateway`, waiting as root (it has not changed
/// user: it has no request yet).
fn spare_of(gateway: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = dispatchers_of(gateway);
        if let [(pid, euid)] = found[..] {
            assert_eq!(
                euid, 0,
                "a spare dispatcher waits as root, before any user change"
            );
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "gateway {gateway} has no single spare dispatcher: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "process {pid} is still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The audit records of `pid` among those after the first `since` lines.
fn audit_of(stack: &Stack, pid: u32, since: usize) -> Vec<serde_json::Value> {
    stack.audit_lines()[since..]
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["pid"] == serde_json::json!(pid))
        .collect()
}

#[test]
fn a_kept_alive_connection_gets_a_spare_dispatcher_and_lets_it_go_unrecorded() {
    let stack = Stack::load();
    let request = init_request(&stack, &stack.token(&[]));
    let since = stack.audit_lines().len();
    let mut conn = Conn::open(&stack);
    conn.send(&request);
    assert_eq!(conn.response().status, 200);
    let gateway = gateway_of(&conn);
    // One request is no sign of more: no spare yet.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        dispatchers_of(gateway),
        [],
        "a spare after the first request"
    );

    conn.send(&request);
    assert_eq!(conn.response().status, 200);
    let spare = spare_of(gateway);
    assert!(
        audit_of(&stack, spare, since).is_empty(),
        "a waiting spare decided something"
    );

    // The next request is served by that very process, recorded once.
    conn.send(&request);
    let response = conn.response();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let records = audit_of(&stack, spare, since);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["decision"], "allowed");
    assert_eq!(records[0]["call"], "integration.init");

    // A new spare waits; closing the connection lets it go without a record.
    let next = spare_of(gateway);
    assert_ne!(next, spare);
    drop(conn);
    wait_gone(next, Duration::from_secs(10));
    assert!(
        audit_of(&stack, next, since).is_empty(),
        "{:?}",
        audit_of(&stack, next, since)
    );
}

/// A connection that has carried two requests, and so has its spare.
struct Spared {
    request: Vec<u8>,
    /// Audit lines before the connection's first request.
    since: usize,
    conn: Conn,
    gateway: u32,
    spare: u32,
}

fn spared(stack: &Stack) -> Spared {
    let request = init_request(stack, &stack.token(&[]));
    let since = stack.audit_lines().len();
    let mut conn = Conn::open(stack);
    for _ in 0..2 {
        conn.send(&request);
        assert_eq!(conn.response().status, 200);
    }
    let gateway = gateway_of(&conn);
    let spare = spare_of(gateway);
    Spared {
        request,
        since,
        conn,
        gateway,
        spare,
    }
}

#[test]
fn a_spare_too_old_to_use_is_let_go_unrecorded() {
    let stack = Stack::load();
    let Spared {
        request,
        since,
        mut conn,
        gateway,
        spare,
    } = spared(&stack);
    // The gateway lets a spare go at 30 s, well before it would stop waiting itself.
    wait_gone(spare, Duration::from_secs(40));
    assert!(
        audit_of(&stack, spare, since).is_empty(),
        "{:?}",
        audit_of(&stack, spare, since)
    );
    assert_eq!(dispatchers_of(gateway), []);
    // The connection still works, with a dispatcher of its own.
    conn.send(&request);
    assert_eq!(conn.response().status, 200);
}

#[test]
fn a_spare_that_got_old_during_a_slow_request_is_not_used() {
    let stack = Stack::load();
    let Spared {
        request,
        since,
        mut conn,
        gateway: _,
        spare,
    } = spared(&stack);
    // The next request's body takes longer than a spare may wait to be used.
    let (head_and_first, last) = request.split_at(request.len() - 1);
    conn.send(head_and_first);
    std::thread::sleep(Duration::from_secs(32));
    conn.send(last);
    assert_eq!(conn.response().status, 200);
    wait_gone(spare, Duration::from_secs(10));
    // It was let go unrecorded: a fresh dispatcher gave the 200.
    assert!(
        audit_of(&stack, spare, since).is_empty(),
        "{:?}",
        audit_of(&stack, spare, since)
    );
}
