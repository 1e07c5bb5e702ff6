//! The connection: health, a stalled client, pipelining, keep-alive and HTTP/1.0,
//! 100-continue and gzip.

use super::*;

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
