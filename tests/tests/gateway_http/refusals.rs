//! Requests refused before dispatch: malformed request lines, oversized heads, bad
//! bodies, unknown calls, bad tokens, bad users.

use super::*;
use ucloud_im_tests::{base64, base64url};

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
    let user_header = format!("UCloud-Username: {}\r\n", base64(user.as_bytes()));
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
    let forged_payload = base64url(
        br#"{"sub":"_UCloud","role":"SERVICE","iss":"cloud.sdu.dk","aud":["all:write"],"iat":1,"exp":99999999999}"#,
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
    let user = format!(
        "UCloud-Username: {}\r\n",
        base64(stack.users()[0].0.as_bytes())
    );
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
