//! Connecting UCloud users to local accounts (issue 7), against the local stack:
//! UCloud (the simulator) calls integration/connect, the browser gets the ticket
//! page from the gateway, a real account made by useradd runs the installed
//! ucloud-connect, the registry (socket-activated, as root) checks the kernel's word
//! for who that is, and UCloud hears approveConnection. Then the hostile cases:
//! altered, reused, expired tickets, root and system accounts, Bob and Alice, the
//! roles of the socket, expiry, and two redemptions at once; and the attacks of
//! issue 14: a local user watching /proc for tickets, a ticket presented first by
//! the wrong account, and a person sent someone else's ticket (the confirmation).
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use ucloud_im_tests::{run_as, sim_log, unique_account, ScratchAccount, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn text(output: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn registry(stack: &Stack, args: &[&str]) -> Output {
    Command::new(stack.bin("ucloud-registry"))
        .args(args)
        .current_dir("/")
        .output()
        .expect("cannot run ucloud-registry")
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

/// `ucloud-connect ARGS` as `user` on a terminal (a pty from script(1)), with
/// `typed` as what the person types; the output is the terminal's, echo included.
fn redeem_on_terminal(stack: &Stack, user: &str, typed: &str, args: &[&str]) -> Output {
    let command = std::iter::once(connect_bin(stack))
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("runuser")
        .args(["-u", user, "--", "script", "-qec", &command, "/dev/null"])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run script(1)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// One raw request on the registry socket, as root; the answer as JSON.
fn raw_request(stack: &Stack, line: &[u8]) -> Value {
    let socket = stack.get("UCLOUD_IM_REGISTRY_SOCKET");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.write_all(line).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("{answer:?}: {e}"))
}

/// One raw request on the registry socket as `user` (a client that is not
/// ucloud-connect: perl, which every Debian has), the request on standard input.
fn raw_request_as(stack: &Stack, user: &str, line: &str) -> Value {
    let mut child = Command::new("runuser")
        .args(["-u", user, "--", "perl", "-MIO::Socket::UNIX", "-e"])
        .arg(
            "my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\\n\"; \
             print $s scalar <STDIN>; shutdown($s, 1); print <$s>;",
        )
        .arg(stack.get("UCLOUD_IM_REGISTRY_SOCKET"))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run perl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
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
        text(&out)
    );
    let ticket = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(ticket.len(), 43, "{ticket:?}");
    ticket
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn state(stack: &Stack) -> PathBuf {
    stack.prefix().join("var/lib/ucloud-im")
}

fn mapping_of(stack: &Stack, ucloud: &str) -> Option<Value> {
    let path = state(stack).join("mappings").join(hex(ucloud));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("a mapping file is JSON"))
}

fn wait_until(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done()
}

fn sim_heard(stack: &Stack, path_part: &str, ucloud: &str) -> bool {
    sim_log(stack).iter().any(|entry| {
        entry.to_string().contains(path_part)
            && entry.to_string().contains(&json!(ucloud).to_string())
    })
}

fn sim_heard_count(stack: &Stack, path_part: &str, ucloud: &str) -> usize {
    sim_log(stack)
        .iter()
        .filter(|e| {
            e.to_string().contains(path_part) && e.to_string().contains(&json!(ucloud).to_string())
        })
        .count()
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

fn drive_of(stack: &Stack, ucloud: &str) -> String {
    let mut drive = String::new();
    let found = wait_until(20, || {
        let _ = registry(stack, &["sync"]);
        let out = registry(stack, &["list"]);
        drive = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.first() == Some(&ucloud)).then(|| f[3].to_string())
            })
            .unwrap_or_default();
        !drive.is_empty() && drive != "pending"
    });
    assert!(
        found,
        "the drive of {ucloud} is still {drive:?}: is the sender running?"
    );
    drive
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

/// The whole flow of the issue: connect → ticket page → the person runs
/// ucloud-connect → approveConnection reaches UCloud → requests run as them →
/// unlinked → refused with a reason, and UCloud hears clearConnection.
#[test]
fn connect_page_redeem_use_and_unlink() {
    let stack = Stack::load();
    let ucloud = unique_account("CarolConnect#");
    let carol = ScratchAccount::new(&stack, "ctest-", &ucloud);

    let (status, answer) = integration(&stack, "connect", &ucloud);
    assert_eq!(status, 200, "integration/connect: {answer}");
    let redirect = answer["redirectTo"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    let (ticket, user) = ticket_of(&stack, redirect);
    let ticket = ticket.as_str();
    assert_eq!(user, ucloud.replace('#', "%23"), "{redirect}");
    assert!(
        mapping_of(&stack, &ucloud).is_none(),
        "mapped before the ticket was redeemed"
    );

    // The browser follows the redirect as given, over TLS through the balancer: a
    // page that names the UCloud user and shows the ticket apart from the command,
    // no token needed.
    let shown = stack.follow_link(redirect, &[]);
    let page = shown.text();
    assert_eq!(shown.status, 200, "{}\n{page}", shown.head);
    let head = shown.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    for shows in [
        "<pre id=\"command\">ucloud-connect</pre>".to_string(),
        format!("<pre id=\"ticket\">{ticket}</pre>"),
        format!("<strong id=\"user\">{ucloud}</strong>"),
        "ucloud-connect --yes &lt; FILE".to_string(),
    ] {
        assert!(
            page.contains(&shows),
            "the page does not show {shows:?}:\n{page}"
        );
    }
    assert!(
        !page.contains(&format!("ucloud-connect {ticket}")),
        "the page shows the ticket on a command line:\n{page}"
    );
    // The same link on the direct gateway (plain HTTP, no balancer) shows the same
    // page: showing it does not use the ticket up.
    let (_, target) = stack.direct_target(redirect);
    let (status, head, direct_page) = browser_get(&stack, &target);
    assert_eq!(status, 200, "{head}\n{direct_page}");
    assert_eq!(direct_page, page, "the direct gateway shows another page");

    // Without a terminal and without --yes nobody confirmed: nothing is connected,
    // the refusal names both, and the ticket stays valid.
    let out = redeem_as(&stack, Some(&carol.name), &format!("{ticket}\n"), &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&ucloud) && why.contains(&carol.name) && why.contains("--yes"),
        "{}",
        text(&out)
    );
    assert!(
        mapping_of(&stack, &ucloud).is_none(),
        "connected unconfirmed"
    );

    // Before: UCloud's requests for this user are refused.
    let out = redeem_as(
        &stack,
        Some(&carol.name),
        &format!("{ticket}\n"),
        &["--yes"],
    );
    assert!(
        out.status.success(),
        "ucloud-connect as {}: {}",
        carol.name,
        text(&out)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("connected") && said.contains(&carol.name),
        "{said}"
    );

    let m = mapping_of(&stack, &ucloud).expect("no mapping after ucloud-connect");
    assert_eq!(m["local"], carol.name.as_str());
    assert_eq!(m["uid"], carol.uid());
    assert!(
        wait_until(15, || sim_heard(&stack, "approveConnection", &ucloud)),
        "the simulator never heard approveConnection for {ucloud}"
    );
    let audit_says = stack.audit_lines().iter().any(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["action"] == "connect"
                && v["ucloudUser"] == ucloud.as_str()
                && v["decision"] == "allowed"
                && v["callerUid"] == carol.uid()
        })
    });
    assert!(
        audit_says,
        "no audit line for the connect with the caller's uid"
    );

    // Requests now run as Carol: her private home lists, with her file in it.
    let hello = Path::new(&carol.home()).join("hello.txt");
    let out = run_as(
        &carol.name,
        &["sh", "-c", &format!("echo hi > {}", hello.display())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let drive = drive_of(&stack, &ucloud);
    let (status, page) = browse(&stack, &ucloud, &drive);
    assert_eq!(status, 200, "browse as {ucloud}: {page}");
    let item = page["items"]
        .as_array()
        .and_then(|items| {
            items.iter().find(|i| {
                i["id"]
                    .as_str()
                    .is_some_and(|id| id.ends_with("/hello.txt"))
            })
        })
        .unwrap_or_else(|| panic!("hello.txt is not in {page}"));
    assert_eq!(item["status"]["unixOwner"], carol.uid(), "{item}");

    // The same ticket again: spent.
    let again = redeem_as(&stack, Some(&carol.name), ticket, &["--yes"]);
    assert_eq!(again.status.code(), Some(77), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("used already"),
        "{}",
        text(&again)
    );

    // UCloud says the user disconnected.
    let (status, answer) = integration(&stack, "unlinked", &ucloud);
    assert_eq!((status, &answer), (200, &json!({})), "integration/unlinked");
    assert!(
        mapping_of(&stack, &ucloud).is_none(),
        "still mapped after unlinked"
    );
    let (status, refusal) = browse(&stack, &ucloud, &drive);
    assert!(
        (400..500).contains(&status),
        "browse after unlinked: {status} {refusal}"
    );
    let why = refusal["why"].as_str().unwrap_or_default();
    assert!(
        why.contains(&ucloud) && why.contains("connect"),
        "why: {refusal}"
    );
    assert!(
        wait_until(15, || sim_heard(&stack, "clearConnection", &ucloud)),
        "the simulator never heard clearConnection for {ucloud}"
    );
    // Unlinked again: still {} (UCloud retries), nothing to remove.
    assert_eq!(integration(&stack, "unlinked", &ucloud), (200, json!({})));
}

/// Altered, truncated, expired tickets, and hostile requests, are refused and map
/// nothing. Issue 14: the real ticket presented first by a system account, an
/// account with a disabled shell and root is refused and stays valid for the right
/// account, which connects with it afterwards.
#[test]
fn bad_tickets_and_unsuitable_accounts_are_refused() {
    let stack = Stack::load();
    let ucloud = unique_account("DaveRefused#");
    let dave = ScratchAccount::new(&stack, "ctest-", &ucloud);
    let ticket = mint(&stack, &ucloud);
    let line = format!("{ticket}\n");

    let last = ticket.chars().last().unwrap();
    let altered = format!("{}{}\n", &ticket[..42], if last == 'A' { 'B' } else { 'A' });
    let out = redeem_as(&stack, Some(&dave.name), &altered, &["--yes"]);
    assert_eq!(out.status.code(), Some(77), "altered: {}", text(&out));
    let out = redeem_as(&stack, Some(&dave.name), &ticket[..40], &["--yes"]);
    assert_eq!(out.status.code(), Some(77), "truncated: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a connection ticket"),
        "{}",
        text(&out)
    );
    let out = redeem_as(&stack, Some(&dave.name), "../../etc/passwd\n", &["--yes"]);
    assert_eq!(out.status.code(), Some(77), "path: {}", text(&out));
    // Endless standard input: refused after a bounded read, nothing sent.
    let out = redeem_as(&stack, Some(&dave.name), &"A".repeat(1 << 20), &["--yes"]);
    assert_eq!(out.status.code(), Some(64), "endless: {}", text(&out));

    // The real ticket, presented first by the wrong accounts: each is refused with
    // the reason, and the ticket is not spent.
    let wrong: [(Option<String>, &str); 3] = [
        (Some("daemon".into()), "min_uid"),
        (Some(stack.get("UCLOUD_IM_NOLOGIN_USER")), "disabled shell"),
        (None, "root"),
    ];
    for (user, why) in &wrong {
        let out = redeem_as(&stack, user.as_deref(), &line, &["--yes"]);
        assert_eq!(out.status.code(), Some(77), "{user:?}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(why), "{user:?}: {}", text(&out));
    }
    // A client that skips the preview and asks root's connect outright: the same.
    let asked = json!({"op": "connect", "ticket": ticket, "ucloud": ucloud});
    let v = raw_request(&stack, format!("{asked}\n").as_bytes());
    assert_eq!(
        (v["ok"].clone(), v["status"].clone()),
        (json!(false), json!(77)),
        "{v}"
    );
    assert!(
        mapping_of(&stack, &ucloud).is_none(),
        "mapped to a wrong account"
    );

    // Hostile preview and connect requests: bad requests, and a connect that names
    // another UCloud user than the ticket's (what the person did not confirm).
    for (request, status) in [
        (json!({"op": "preview"}), 64),
        (json!({"op": "preview", "ticket": 7}), 64),
        (json!({"op": "preview", "ticket": ["x"]}), 64),
        (
            json!({"op": "preview", "ticket": "../../registry.lock"}),
            77,
        ),
        (json!({"op": "preview", "ticket": "A".repeat(43)}), 77),
        (json!({"op": "connect", "ticket": ticket}), 64),
        (
            json!({"op": "connect", "ticket": ticket, "ucloud": null}),
            64,
        ),
    ] {
        let v = raw_request(&stack, format!("{request}\n").as_bytes());
        assert_eq!(
            (v["ok"].clone(), v["status"].clone()),
            (json!(false), json!(status)),
            "{request}: {v}"
        );
    }
    // The same as Dave, whose account could connect: a connect that does not name
    // the UCloud user, or names another than the ticket's, connects nothing.
    for (request, status) in [
        (json!({"op": "connect", "ticket": ticket}), 64),
        (
            json!({"op": "connect", "ticket": ticket, "ucloud": ALICE}),
            77,
        ),
        (
            json!({"op": "connect", "ticket": ticket, "ucloud": ucloud.to_lowercase()}),
            77,
        ),
    ] {
        let v = raw_request_as(&stack, &dave.name, &format!("{request}\n"));
        assert_eq!(
            (v["ok"].clone(), v["status"].clone()),
            (json!(false), json!(status)),
            "{request}: {v}"
        );
    }
    assert!(
        mapping_of(&stack, &ucloud).is_none(),
        "connected unconfirmed"
    );
    // Dave's preview says what the ticket is for, and spends nothing.
    let v = raw_request_as(
        &stack,
        &dave.name,
        &format!("{}\n", json!({"op": "preview", "ticket": ticket})),
    );
    assert_eq!(
        (&v["ucloud"], &v["local"], &v["again"]),
        (&json!(ucloud), &json!(dave.name), &json!(false)),
        "{v}"
    );

    // Expired: a ticket whose time is up (planted by root in the ticket store in the
    // registry's format; waiting 10 minutes would be a waste of CI time).
    let expired_ticket = format!("E{}", &mint(&stack, &ucloud)[1..]);
    let planted = state(&stack).join("tickets").join(&expired_ticket);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    std::fs::write(
        &planted,
        json!({"ucloud": ucloud, "created": now - 700_000, "expires": now - 100_000}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = redeem_as(&stack, Some(&dave.name), &expired_ticket, &["--yes"]);
    assert_eq!(out.status.code(), Some(77), "expired: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        text(&out)
    );
    assert!(!planted.exists(), "the expired ticket was not removed");

    assert!(
        mapping_of(&stack, &ucloud).is_none(),
        "a refused ticket mapped {ucloud}"
    );
    let refused = stack
        .audit_lines()
        .iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                (v["action"] == "preview" || v["action"] == "connect")
                    && v["ucloudUser"] == ucloud.as_str()
                    && v["decision"] == "refused"
            })
        })
        .count();
    assert!(
        refused >= 5,
        "only {refused} refused preview and connect lines in the audit log"
    );

    // After all that, the right account connects with the same ticket.
    let out = redeem_as(&stack, Some(&dave.name), &line, &["--yes"]);
    assert!(
        out.status.success(),
        "Dave after the others: {}",
        text(&out)
    );
    assert_eq!(
        mapping_of(&stack, &ucloud).map(|m| m["local"].clone()),
        Some(json!(dave.name))
    );
}

/// The policy (ucloud-registry(8)): a connected UCloud user is never remapped by a
/// ticket, an account serves one UCloud user, and reconnecting to the same account
/// is a yes that tells UCloud again.
#[test]
fn bob_cannot_take_over_alice_and_alice_may_reconnect() {
    let stack = Stack::load();
    let alice_local = stack.local_of(ALICE);
    let bob_local = stack.local_of(BOB);
    let before = mapping_of(&stack, ALICE).expect("the stack maps Alice");

    let ticket = mint(&stack, ALICE);
    let out = redeem_as(&stack, Some(&bob_local), &ticket, &["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(77),
        "Bob with Alice's ticket: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already connected to another"),
        "{}",
        text(&out)
    );
    assert_eq!(
        mapping_of(&stack, ALICE),
        Some(before.clone()),
        "Alice's mapping changed"
    );

    // Bob's account already serves BobNielsen: it takes no second UCloud user.
    let stranger = unique_account("EveStranger#");
    let ticket = mint(&stack, &stranger);
    let out = redeem_as(&stack, Some(&bob_local), &ticket, &["--yes"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already the target"),
        "{}",
        text(&out)
    );
    assert!(mapping_of(&stack, &stranger).is_none());

    // Alice connects again to her own account: yes, and UCloud hears it again.
    let heard = sim_heard_count(&stack, "approveConnection", ALICE);
    let ticket = mint(&stack, ALICE);
    let out = redeem_as(&stack, Some(&alice_local), &ticket, &["--yes"]);
    assert!(out.status.success(), "Alice reconnecting: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already connected"),
        "{}",
        text(&out)
    );
    assert_eq!(mapping_of(&stack, ALICE), Some(before));
    assert!(
        wait_until(15, || sim_heard_count(&stack, "approveConnection", ALICE)
            > heard),
        "approveConnection for Alice was not sent again"
    );
}

/// The socket's roles: only the service account mints tickets and reports unlinked.
#[test]
fn only_the_service_account_mints_tickets_and_unlinks() {
    let stack = Stack::load();
    let alice_local = stack.local_of(ALICE);
    let before = mapping_of(&stack, ALICE).expect("the stack maps Alice");
    for args in [["--mint-ticket", ALICE], ["--unlinked", ALICE]] {
        let out = connect_as(&stack, &alice_local, &args);
        assert_eq!(
            out.status.code(),
            Some(77),
            "{args:?} as {alice_local}: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("only the service account"),
            "{}",
            text(&out)
        );
        let out = Command::new(connect_bin(&stack))
            .args(args)
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(77),
            "{args:?} as root: {}",
            text(&out)
        );
    }
    assert_eq!(
        mapping_of(&stack, ALICE),
        Some(before),
        "Alice's mapping changed"
    );
    let out = connect_as(&stack, &alice_local, &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    // The old form, the ticket as an argument: refused before anything is sent,
    // saying why and what to run instead. The ticket is still good.
    let ticket = mint(&stack, ALICE);
    let out = connect_as(&stack, &alice_local, &[&ticket]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("command line") && why.contains("ucloud-connect --yes < FILE"),
        "{}",
        text(&out)
    );
    let out = redeem_as(&stack, Some(&alice_local), &ticket, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already connected to your account"),
        "{}",
        text(&out)
    );
    // A raw client that is not ucloud-connect gets a JSON answer, not a crash.
    let socket = stack.get("UCLOUD_IM_REGISTRY_SOCKET");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.write_all(b"{\"op\":\"format-disk\"}\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let v: Value =
        serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
    assert_eq!(
        (v["ok"].clone(), v["status"].clone()),
        (json!(false), json!(64)),
        "{v}"
    );
}

/// Issue 14, the stolen ticket: while ucloud-connect holds the ticket (the registry
/// is kept busy, so the client waits with it), another local user reads every
/// /proc/PID/cmdline and environ it can, as a watcher would: the ticket is in none.
/// The watcher does see the client's command line, so a ticket in it would be found.
#[test]
fn a_local_user_watching_proc_never_sees_the_ticket() {
    let stack = Stack::load();
    let ucloud = unique_account("KimWatched#");
    let victim = ScratchAccount::new(&stack, "ctest-", &ucloud);
    let watcher = ScratchAccount::new(&stack, "ctest-", &unique_account("MalloryWatch#"));
    let ticket = mint(&stack, &ucloud);
    let bin = connect_bin(&stack);

    // Hold the registry's lock: the registry answering the client waits for it.
    let lock = state(&stack).join("registry.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let held = || {
        !Command::new("flock")
            .args(["-n", "-E", "75"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    assert!(wait_until(10, held), "cannot take the registry lock");

    let mut client = Command::new("runuser")
        .args(["-u", &victim.name, "--", &bin, "--yes"])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ticket}\n").as_bytes())
        .unwrap();
    // The client has read the ticket once it holds a socket: it reads, then asks.
    let victim_uid = victim.uid();
    let mut pid = None;
    let asking = wait_until(20, || {
        pid = client_pid(&bin, victim_uid);
        pid.is_some_and(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
        })
    });
    assert!(asking, "ucloud-connect never connected to the registry");
    let pid = pid.unwrap();

    let seen = run_as(
        &watcher.name,
        &[
            "sh",
            "-c",
            "for d in /proc/[0-9]*; do cat $d/cmdline $d/environ; echo; done 2>/dev/null",
        ],
    );
    let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
    // Root reads what the watcher may not (the client's environment): not there either.
    let own = [
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default(),
    ]
    .concat();
    let still_waiting = Path::new(&format!("/proc/{pid}")).exists();

    drop(holder.stdin.take());
    holder.wait().unwrap();
    let out = client.wait_with_output().unwrap();

    assert!(
        still_waiting,
        "the client was gone before the watcher looked"
    );
    assert!(
        seen.contains(&format!("{bin}\0--yes")),
        "the watcher did not see the client's command line, so the test proves nothing"
    );
    assert!(!seen.contains(&ticket), "the watcher saw the ticket");
    assert!(
        !String::from_utf8_lossy(&own).contains(&ticket),
        "the ticket is in the client's command line or environment"
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        mapping_of(&stack, &ucloud).map(|m| m["local"].clone()),
        Some(json!(victim.name))
    );
}

/// The process running `bin` as `uid`, if there is one.
fn client_pid(bin: &str, uid: u32) -> Option<u32> {
    let bin = std::fs::canonicalize(bin).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()?;
        (exe == bin && real_uid == uid).then_some(pid)
    })
}

/// Issue 14, linking by trickery: Mallory sends Victor the connect page of her own
/// ticket. The page names her UCloud user; ucloud-connect names it and Victor's
/// account and asks on the terminal, `--yes` or not; only yes connects, and without
/// a terminal only `--yes` does.
#[test]
fn a_person_sent_another_ones_ticket_is_asked_first() {
    let stack = Stack::load();
    let mallory = unique_account("MalloryTricks#");
    let victor = ScratchAccount::new(&stack, "ctest-", &mallory);

    let (status, answer) = integration(&stack, "connect", &mallory);
    assert_eq!(status, 200, "integration/connect: {answer}");
    let redirect = answer["redirectTo"].as_str().unwrap_or_default();
    let (ticket, _) = ticket_of(&stack, redirect);
    let page = stack.follow_link(redirect, &[]).text();
    assert!(
        page.contains(&format!("<strong id=\"user\">{mallory}</strong>")),
        "the page does not name {mallory}:\n{page}"
    );

    // No terminal, no --yes: refused, naming both, nothing linked.
    let out = redeem_as(&stack, Some(&victor.name), &format!("{ticket}\n"), &[]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&mallory) && why.contains(&victor.name),
        "{why}"
    );
    assert!(
        mapping_of(&stack, &mallory).is_none(),
        "linked without a yes"
    );

    // On a terminal, with --yes even: the question names both, and "n" (or
    // anything but yes) links nothing.
    for answer in ["n", "", "yes please"] {
        let out = redeem_on_terminal(
            &stack,
            &victor.name,
            &format!("{ticket}\n{answer}\n"),
            &["--yes"],
        );
        let screen = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(77), "{answer:?}: {}", text(&out));
        assert!(screen.contains("Paste the ticket"), "{screen}");
        assert!(
            screen.contains(&format!("Connect {mallory} to {}? [y/N]", victor.name)),
            "{screen}"
        );
        assert!(
            mapping_of(&stack, &mallory).is_none(),
            "linked on {answer:?}"
        );
    }
    // Victor, had it been his own UCloud user, answers y: connected.
    let out = redeem_on_terminal(&stack, &victor.name, &format!("{ticket}\ny\n"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        mapping_of(&stack, &mallory).map(|m| m["local"].clone()),
        Some(json!(victor.name))
    );
}

/// The ticket page shows nothing a link can inject, and answers GET only.
#[test]
fn the_ticket_page_refuses_damaged_links() {
    let stack = Stack::load();
    let p = stack.get("UCLOUD_IM_PROVIDER");
    for target in [
        format!("/ucloud/{p}/connect?ticket=%3Cscript%3Ealert(1)%3C/script%3E"),
        format!("/ucloud/{p}/connect?ticket=a%22onload%3D"),
        format!("/ucloud/{p}/connect"),
    ] {
        let (status, _, body) = browser_get(&stack, &target);
        assert_eq!(status, 400, "{target}: {body}");
        assert!(
            !body.contains("<script") && !body.contains("onload"),
            "{target}: {body}"
        );
        assert!(body.contains("damaged"), "{body}");
    }
    let (status, _) = stack.call(None, "POST", &format!("/ucloud/{p}/connect"), Some("{}"));
    assert_eq!(status, 404);
}

/// Mappings older than mapping_expire_after_ms stop working and UCloud is told: by
/// `ucloud-registry expire`, and by the sweep at the start of any registry connection.
#[test]
fn old_mappings_expire() {
    let stack = Stack::load();
    let (status, manifest) = stack.call(
        None,
        "GET",
        &format!(
            "/ucloud/{}/integration/retrieveManifest",
            stack.get("UCLOUD_IM_PROVIDER")
        ),
        None,
    );
    assert_eq!(status, 200, "{manifest}");
    let max_age = manifest["expireAfterMs"].as_u64().unwrap_or_else(|| {
        panic!("the stack sets mapping_expire_after_ms; rerun scripts/stack up ({manifest})")
    });

    let by_cli = unique_account("FrankExpire#");
    let by_sweep = unique_account("GraceExpire#");
    let frank = ScratchAccount::new(&stack, "ctest-", &by_cli);
    let grace = ScratchAccount::new(&stack, "ctest-", &by_sweep);
    // Whoever expires it first (this test's trigger, or another registry connection
    // running at the same moment), it must be gone, audited, and UCloud told.
    let expired = |name: &str| {
        stack.audit_lines().iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["action"] == "expire" && v["ucloudUser"] == name && v["decision"] == "allowed"
            })
        })
    };
    let out = registry(&stack, &["add", &by_cli, &frank.name, "--wait", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    backdate(&stack, &by_cli, max_age + 1000);
    let out = registry(&stack, &["expire"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        mapping_of(&stack, &by_cli).is_none(),
        "expire left {by_cli}"
    );
    assert!(expired(&by_cli), "no audit line for the expiry of {by_cli}");

    // A fresh mapping is not touched; once old, any registry connection expires it.
    let out = registry(&stack, &["add", &by_sweep, &grace.name, "--wait", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = redeem_as(&stack, Some(&grace.name), "not-a-ticket", &["--yes"]);
    assert!(
        mapping_of(&stack, &by_sweep).is_some(),
        "a fresh mapping expired"
    );
    backdate(&stack, &by_sweep, max_age + 1000);
    let _ = redeem_as(&stack, Some(&grace.name), "not-a-ticket", &["--yes"]);
    assert!(
        mapping_of(&stack, &by_sweep).is_none(),
        "the socket's sweep left {by_sweep}"
    );
    assert!(
        expired(&by_sweep),
        "no audit line for the expiry of {by_sweep}"
    );
    for name in [&by_cli, &by_sweep] {
        assert!(
            wait_until(15, || sim_heard(&stack, "clearConnection", name)),
            "the simulator never heard clearConnection for {name}"
        );
        let (status, refusal) = browse(&stack, name, "1");
        assert!((400..500).contains(&status), "{status} {refusal}");
    }
}

/// Rewrites a mapping's `created` (atomically, as the registry writes) to `age_ms` ago.
fn backdate(stack: &Stack, ucloud: &str, age_ms: u64) {
    let mut m = mapping_of(stack, ucloud).unwrap_or_else(|| panic!("{ucloud} is not mapped"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    m["created"] = json!(now - age_ms);
    let dir = state(stack).join("mappings");
    let tmp = dir.join(format!(".test-{}", hex(ucloud)));
    std::fs::write(&tmp, m.to_string()).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, dir.join(hex(ucloud))).unwrap();
}

/// Two people race with one ticket, and two more with their own tickets at once:
/// one ticket maps once, and the store holds exactly the winners, all valid.
#[test]
fn concurrent_redemptions_never_corrupt_the_store() {
    let stack = Stack::load();
    let shared = unique_account("HeidiRace#");
    let (first, second) = (
        ScratchAccount::new(&stack, "ctest-", &shared),
        ScratchAccount::new(&stack, "ctest-", &shared),
    );
    let own: Vec<ScratchAccount> = (0..2)
        .map(|i| ScratchAccount::new(&stack, "ctest-", &unique_account(&format!("IvanRace{i}#"))))
        .collect();
    let ticket = mint(&stack, &shared);
    let own_tickets: Vec<String> = own.iter().map(|p| mint(&stack, &p.ucloud)).collect();
    let bin = connect_bin(&stack);
    let spawn = |user: &str, ticket: &str| {
        let mut child = Command::new("runuser")
            .current_dir("/")
            .args(["-u", user, "--", &bin, "--yes"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{ticket}\n").as_bytes()).unwrap();
        child
    };
    let children = vec![
        spawn(&first.name, &ticket),
        spawn(&second.name, &ticket),
        spawn(&own[0].name, &own_tickets[0]),
        spawn(&own[1].name, &own_tickets[1]),
    ];
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let shared_wins = outs[..2].iter().filter(|o| o.status.success()).count();
    assert_eq!(shared_wins, 1, "{} / {}", text(&outs[0]), text(&outs[1]));
    assert!(
        outs[2].status.success() && outs[3].status.success(),
        "{} / {}",
        text(&outs[2]),
        text(&outs[3])
    );
    let winner = if outs[0].status.success() {
        &first.name
    } else {
        &second.name
    };
    assert_eq!(
        mapping_of(&stack, &shared).unwrap()["local"],
        winner.as_str()
    );
    for (p, _) in own.iter().zip(&own_tickets) {
        assert_eq!(
            mapping_of(&stack, &p.ucloud).unwrap()["local"],
            p.name.as_str()
        );
    }
    let list = registry(&stack, &["list"]);
    assert!(
        list.status.success() && list.stderr.is_empty(),
        "the store has bad files: {}",
        text(&list)
    );
    let leftovers: Vec<String> = std::fs::read_dir(state(&stack).join("mappings"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn registry_units_pass_systemd_analyze() {
    let stack = Stack::load();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
    let dir = std::env::temp_dir().join(format!("ucloud-im-registry-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = stack.get("UCLOUD_IM_BIN");
    let units = ["ucloud-registry.socket", "ucloud-registry@.service"];
    for name in units {
        let text =
            std::fs::read_to_string(src.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(
            dir.join(name),
            text.replace("ExecStart=/usr/bin/", &format!("ExecStart={bin}/")),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.map(|u| dir.join(u)))
        .output()
        .expect("cannot run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    let service = std::fs::read_to_string(src.join("ucloud-registry@.service")).unwrap();
    assert!(
        service.contains("StandardInput=socket")
            && service.contains("ExecStart=/usr/bin/ucloud-registry serve")
    );
    let socket = std::fs::read_to_string(src.join("ucloud-registry.socket")).unwrap();
    assert!(
        socket.contains("Accept=yes")
            && socket.contains("SocketMode=0666")
            && socket.contains("TriggerLimitBurst=0")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_and_man_pages() {
    let stack = Stack::load();
    let out = Command::new(connect_bin(&stack))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("registry.sock"),
        "{}",
        text(&out)
    );
    let out = registry(&stack, &["--help"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("serve"),
        "{}",
        text(&out)
    );
    for page in ["ucloud-connect.1", "ucloud-registry.8"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../man")
            .join(page);
        let out = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{page}: {}",
            text(&out)
        );
        assert!(out.stderr.is_empty(), "{page} warns: {}", text(&out));
    }
}
