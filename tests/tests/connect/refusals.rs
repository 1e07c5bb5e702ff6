//! Bad tickets and unsuitable accounts are refused, and the ticket page refuses
//! damaged links.

use super::*;
use std::path::PathBuf;

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
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", described(&out)))
}

/// A ticket of `ucloud` planted by root in the ticket store, in the registry's
/// format, that expired `ago_ms` ago after `lifetime_ms`.
fn plant_expired_ticket(
    stack: &Stack,
    ticket: &str,
    ucloud: &str,
    ago_ms: u64,
    lifetime_ms: u64,
) -> PathBuf {
    let planted = stack.state_dir().join("tickets").join(ticket);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let expires = now - ago_ms;
    std::fs::write(
        &planted,
        json!({"ucloud": ucloud, "created": expires - lifetime_ms, "expires": expires}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    planted
}

/// Altered, truncated, expired tickets, and hostile requests, are refused and map
/// nothing. The real ticket presented first by a system account, an
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
    let as_dave = |input: &str| redeem_as(&stack, Some(&dave.name), input, &["--yes"]);
    assert_exit(&as_dave(&altered), 77, None, "altered");
    let why = Some("not a connection ticket");
    assert_exit(&as_dave(&ticket[..40]), 77, why, "truncated");
    assert_exit(&as_dave("../../etc/passwd\n"), 77, None, "path");
    // Endless standard input: refused after a bounded read, nothing sent.
    assert_exit(&as_dave(&"A".repeat(1 << 20)), 64, None, "endless");

    // The real ticket, presented first by the wrong accounts: each is refused with
    // the reason, and the ticket is not spent.
    let wrong: [(Option<String>, &str); 3] = [
        (Some("daemon".into()), "min_uid"),
        (Some(stack.get("UCLOUD_IM_NOLOGIN_USER")), "disabled shell"),
        (None, "root"),
    ];
    for (user, why) in &wrong {
        let out = redeem_as(&stack, user.as_deref(), &line, &["--yes"]);
        assert_exit(&out, 77, Some(why), &format!("{user:?}"));
    }
    // A client that skips the preview and asks root's connect outright: the same.
    let asked = json!({"op": "connect", "ticket": ticket, "ucloud": ucloud});
    let v = raw_request(&stack, format!("{asked}\n").as_bytes());
    assert_refused(&v, 77, "root's connect");
    assert!(
        stack.mapping_of(&ucloud).is_none(),
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
        assert_refused(&v, status, &request.to_string());
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
        assert_refused(&v, status, &request.to_string());
    }
    assert!(stack.mapping_of(&ucloud).is_none(), "connected unconfirmed");
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
    let planted = plant_expired_ticket(&stack, &expired_ticket, &ucloud, 100_000, 600_000);
    assert_exit(&as_dave(&expired_ticket), 77, Some("expired"), "expired");
    assert!(!planted.exists(), "the expired ticket was not removed");

    assert!(
        stack.mapping_of(&ucloud).is_none(),
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
        described(&out)
    );
    assert_eq!(
        stack.mapping_of(&ucloud).map(|m| m["local"].clone()),
        Some(json!(dave.name))
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
