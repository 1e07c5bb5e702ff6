//! The spare dispatcher a kept-alive connection gets: let go unrecorded when unused
//! or too old.

use super::*;

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
