//! Connecting UCloud users to local accounts, against the local stack:
//! UCloud (the simulator) calls integration/connect, the browser gets the ticket
//! page from the gateway, a real account made by useradd runs the installed
//! ucloud-connect, the registry (socket-activated, as root) checks the kernel's word
//! for who that is, and UCloud hears approveConnection. Then the hostile cases:
//! altered, reused, expired tickets, root and system accounts, Bob and Alice, the
//! roles of the socket, expiry, and two redemptions at once; and the attacks on
//! the ticket: a local user watching /proc for tickets, a ticket presented first by
//! the wrong account, and a person sent someone else's ticket (the confirmation).
#![forbid(unsafe_code)]

mod attacks;
mod help;
mod linking;
mod refusals;
mod store;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use ucloud_im_tests::{
    described, hex, run_as, sim_log, unique_account, within, ScratchAccount, Stack,
};

const ALICE: &str = "AliceHansen#1001";

/// A registry answer refusing with `status`.
fn assert_refused(v: &Value, status: i64, what: &str) {
    assert_eq!(
        (v["ok"].clone(), v["status"].clone()),
        (json!(false), json!(status)),
        "{what}: {v}"
    );
}

/// A ucloud-connect that exited with `code`, saying `why` (if given).
fn assert_exit(out: &Output, code: i32, why: Option<&str>, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", described(out));
    if let Some(why) = why {
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{}",
            described(out)
        );
    }
}

/// UCloud's `what` call (approveConnection, clearConnection) for `ucloud` reached the
/// simulator within 15 s.
fn assert_heard(stack: &Stack, what: &str, ucloud: &str) {
    assert!(
        within(15, || sim_heard(stack, what, ucloud)),
        "the simulator never heard {what} for {ucloud}"
    );
}

fn connect_bin(stack: &Stack) -> String {
    let bin = stack.bin("ucloud-connect");
    assert!(
        bin.is_file(),
        "{} is missing: rerun scripts/stack up",
        bin.display()
    );
    // The socket is the one the stack started; a missing one is a failure, not a skip.
    let socket = stack.get("UCLOUD_IM_REGISTRY_SOCKET");
    assert!(
        Path::new(&socket).exists(),
        "the registry socket {socket} is missing: rerun scripts/stack up"
    );
    bin.display().to_string()
}

/// `ucloud-connect ARGS` as `user`.
fn connect_as(stack: &Stack, user: &str, args: &[&str]) -> Output {
    let bin = connect_bin(stack);
    let mut all = vec![bin.as_str()];
    all.extend_from_slice(args);
    run_as(user, &all)
}

/// `ucloud-connect ARGS` as `user` (root: None), with `input` on standard input (a
/// pipe, not a terminal): how a ticket is given now.
fn redeem_as(stack: &Stack, user: Option<&str>, input: &str, args: &[&str]) -> Output {
    let bin = connect_bin(stack);
    let mut command = match user {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", &bin]);
            c
        }
        None => Command::new(&bin),
    };
    let mut child = command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run ucloud-connect");
    // A client that refuses before reading may close its end first: not an error.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

/// The ticket, the UCloud user and the page of an integration/connect redirect.
fn ticket_of(stack: &Stack, redirect: &str) -> (String, String) {
    let prefix = format!(
        "{}/ucloud/{}/connect?ticket=",
        stack.get("UCLOUD_IM_LB_URL"),
        stack.get("UCLOUD_IM_PROVIDER")
    );
    let rest = redirect
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("redirectTo {redirect} is not below the public URL {prefix}"));
    let (ticket, user) = rest
        .split_once("&user=")
        .unwrap_or_else(|| panic!("redirectTo {redirect} names no user"));
    (ticket.to_string(), user.to_string())
}

/// A ticket for `ucloud`, asked for as the service account (what the plugin does).
fn mint(stack: &Stack, ucloud: &str) -> String {
    let out = connect_as(
        stack,
        &stack.get("UCLOUD_IM_SERVICE_USER"),
        &["--mint-ticket", ucloud],
    );
    assert!(
        out.status.success(),
        "--mint-ticket {ucloud}: {}",
        described(&out)
    );
    let ticket = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(ticket.len(), 43, "{ticket:?}");
    ticket
}

fn sim_heard(stack: &Stack, path_part: &str, ucloud: &str) -> bool {
    sim_log(stack).iter().any(|entry| {
        entry.to_string().contains(path_part)
            && entry.to_string().contains(&json!(ucloud).to_string())
    })
}

/// A plain HTTP GET to the direct gateway, as a browser would send it (no token):
/// for hostile targets a link would never carry.
fn browser_get(stack: &Stack, target: &str) -> (u16, String, String) {
    let url = stack.get("UCLOUD_IM_GATEWAY_URL");
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the tests speak plain HTTP to the gateway, got {url}"));
    let mut stream = TcpStream::connect(authority).unwrap_or_else(|e| panic!("{authority}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn browse(stack: &Stack, ucloud: &str, drive: &str) -> (u16, Value) {
    let body = json!({
        "resolvedCollection": {"id": drive},
        "browse": {"flags": {"path": format!("/{drive}")}, "itemsPerPage": 50}
    });
    let path = format!("/ucloud/{}/files/browse", stack.get("UCLOUD_IM_PROVIDER"));
    stack.call(Some(ucloud), "POST", &path, Some(&body.to_string()))
}

fn integration(stack: &Stack, op: &str, ucloud: &str) -> (u16, Value) {
    let path = format!(
        "/ucloud/{}/integration/{op}",
        stack.get("UCLOUD_IM_PROVIDER")
    );
    stack.call(
        None,
        "POST",
        &path,
        Some(&json!({"username": ucloud}).to_string()),
    )
}
