//! Linking as it should go: the connect page, redemption, use and unlinking; Bob
//! cannot take over Alice, who may reconnect; only the service account mints
//! tickets and unlinks.

use super::*;

const BOB: &str = "BobNielsen#2002";

fn sim_heard_count(stack: &Stack, path_part: &str, ucloud: &str) -> usize {
    sim_log(stack)
        .iter()
        .filter(|e| {
            e.to_string().contains(path_part) && e.to_string().contains(&json!(ucloud).to_string())
        })
        .count()
}

fn drive_of(stack: &Stack, ucloud: &str) -> String {
    let mut drive = String::new();
    let found = within(20, || {
        let _ = stack.registry(&["sync"]);
        let out = stack.registry(&["list"]);
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

/// The ticket page `redirect` leads to: followed as given, over TLS through the
/// balancer, a page that names the UCloud user and shows the ticket apart from the
/// command, no token needed; the same link on the direct gateway (plain HTTP, no
/// balancer) shows the same page: showing it does not use the ticket up.
fn shows_the_ticket_page(stack: &Stack, redirect: &str, ticket: &str, ucloud: &str) {
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
    let (_, target) = stack.direct_target(redirect);
    let (status, head, direct_page) = browser_get(stack, &target);
    assert_eq!(status, 200, "{head}\n{direct_page}");
    assert_eq!(direct_page, page, "the direct gateway shows another page");
}

/// The whole flow: connect → ticket page → the person runs
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
        stack.mapping_of(&ucloud).is_none(),
        "mapped before the ticket was redeemed"
    );

    // The browser follows the redirect as given, over TLS through the balancer, and
    // on the direct gateway.
    shows_the_ticket_page(&stack, redirect, ticket, &ucloud);

    // Without a terminal and without --yes nobody confirmed: nothing is connected,
    // the refusal names both, and the ticket stays valid.
    let out = redeem_as(&stack, Some(&carol.name), &format!("{ticket}\n"), &[]);
    assert_exit(&out, 77, None, "unconfirmed");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&ucloud) && why.contains(&carol.name) && why.contains("--yes"),
        "{}",
        described(&out)
    );
    assert!(stack.mapping_of(&ucloud).is_none(), "connected unconfirmed");

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
        described(&out)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("connected") && said.contains(&carol.name),
        "{said}"
    );

    let m = stack
        .mapping_of(&ucloud)
        .expect("no mapping after ucloud-connect");
    assert_eq!(m["local"], carol.name.as_str());
    assert_eq!(m["uid"], carol.uid());
    assert_heard(&stack, "approveConnection", &ucloud);
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
    assert!(out.status.success(), "{}", described(&out));
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
    assert_exit(&again, 77, Some("used already"), "again");

    // UCloud says the user disconnected.
    let (status, answer) = integration(&stack, "unlinked", &ucloud);
    assert_eq!((status, &answer), (200, &json!({})), "integration/unlinked");
    assert!(
        stack.mapping_of(&ucloud).is_none(),
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
    assert_heard(&stack, "clearConnection", &ucloud);
    // Unlinked again: still {} (UCloud retries), nothing to remove.
    assert_eq!(integration(&stack, "unlinked", &ucloud), (200, json!({})));
}

/// The policy (ucloud-registry(8)): a connected UCloud user is never remapped by a
/// ticket, an account serves one UCloud user, and reconnecting to the same account
/// is a yes that tells UCloud again.
#[test]
fn bob_cannot_take_over_alice_and_alice_may_reconnect() {
    let stack = Stack::load();
    let alice_local = stack.local_of(ALICE);
    let bob_local = stack.local_of(BOB);
    let before = stack.mapping_of(ALICE).expect("the stack maps Alice");

    let ticket = mint(&stack, ALICE);
    let out = redeem_as(&stack, Some(&bob_local), &ticket, &["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(77),
        "Bob with Alice's ticket: {}",
        described(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already connected to another"),
        "{}",
        described(&out)
    );
    assert_eq!(
        stack.mapping_of(ALICE),
        Some(before.clone()),
        "Alice's mapping changed"
    );

    // Bob's account already serves BobNielsen: it takes no second UCloud user.
    let stranger = unique_account("EveStranger#");
    let ticket = mint(&stack, &stranger);
    let out = redeem_as(&stack, Some(&bob_local), &ticket, &["--yes"]);
    assert_eq!(out.status.code(), Some(77), "{}", described(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already the target"),
        "{}",
        described(&out)
    );
    assert!(stack.mapping_of(&stranger).is_none());

    // Alice connects again to her own account: yes, and UCloud hears it again.
    let heard = sim_heard_count(&stack, "approveConnection", ALICE);
    let ticket = mint(&stack, ALICE);
    let out = redeem_as(&stack, Some(&alice_local), &ticket, &["--yes"]);
    assert!(
        out.status.success(),
        "Alice reconnecting: {}",
        described(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already connected"),
        "{}",
        described(&out)
    );
    assert_eq!(stack.mapping_of(ALICE), Some(before));
    assert!(
        within(15, || sim_heard_count(&stack, "approveConnection", ALICE)
            > heard),
        "approveConnection for Alice was not sent again"
    );
}

/// The socket's roles: only the service account mints tickets and reports unlinked.
#[test]
fn only_the_service_account_mints_tickets_and_unlinks() {
    let stack = Stack::load();
    let alice_local = stack.local_of(ALICE);
    let before = stack.mapping_of(ALICE).expect("the stack maps Alice");
    for args in [["--mint-ticket", ALICE], ["--unlinked", ALICE]] {
        let out = connect_as(&stack, &alice_local, &args);
        assert_eq!(
            out.status.code(),
            Some(77),
            "{args:?} as {alice_local}: {}",
            described(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("only the service account"),
            "{}",
            described(&out)
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
            described(&out)
        );
    }
    assert_eq!(
        stack.mapping_of(ALICE),
        Some(before),
        "Alice's mapping changed"
    );
    let out = connect_as(&stack, &alice_local, &[]);
    assert_eq!(out.status.code(), Some(64), "{}", described(&out));
    // The old form, the ticket as an argument: refused before anything is sent,
    // saying why and what to run instead. The ticket is still good.
    let ticket = mint(&stack, ALICE);
    let out = connect_as(&stack, &alice_local, &[&ticket]);
    assert_eq!(out.status.code(), Some(64), "{}", described(&out));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("command line") && why.contains("ucloud-connect --yes < FILE"),
        "{}",
        described(&out)
    );
    let out = redeem_as(&stack, Some(&alice_local), &ticket, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already connected to your account"),
        "{}",
        described(&out)
    );
    // A raw client that is not ucloud-connect gets a JSON answer, not a crash.
    let socket = stack.get("UCLOUD_IM_REGISTRY_SOCKET");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.write_all(b"{\"op\":\"format-disk\"}\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let v: Value =
        serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("{answer:?}: {e}"));
    assert_refused(&v, 64, "format-disk");
}
