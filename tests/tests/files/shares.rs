//! Folder shares through the whole chain: the simulator plays UCloud's core (a share
//! made, accepted, ended), ucloud-share follows it on the stack's 10-second timer,
//! and access is checked the two ways a recipient has: UCloud calls through the
//! balancer, and the recipient's own local account on the login node.

use super::*;
use ucloud_im_tests::wait_until;

/// UCloud ends access within one timer period plus the wait for UCloud's answer.
const PERIOD: u64 = 40;

/// The simulator's own endpoints, giving up after 60 s.
fn sim(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.sim_api(method, path, body, 60)
}

fn share(stack: &Stack, with: &str, path: &str, permissions: &[&str]) -> String {
    let body = json!({"sharedBy": ALICE, "sharedWith": with, "path": path,
                      "permissions": permissions});
    let (status, answer) = sim(stack, "POST", "/sim/shares", Some(body));
    assert_eq!(status, 200, "POST /sim/shares: {answer}");
    answer["id"].as_str().expect("a share id").to_string()
}

fn ucloud_share(stack: &Stack, id: &str) -> Value {
    let (status, all) = sim(stack, "GET", "/sim/shares", None);
    assert_eq!(status, 200, "{all}");
    let list = all.get("items").unwrap_or(&all).clone();
    list.as_array()
        .and_then(|l| l.iter().find(|s| s["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// The drive UCloud shows the recipient, once ucloud-share has told UCloud where.
fn available_at(stack: &Stack, id: &str) -> String {
    let mut at = String::new();
    wait_until("the share to be available at a drive", PERIOD, || {
        at = ucloud_share(stack, id)["status"]["shareAvailableAt"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        !at.is_empty()
    });
    at
}

fn browse(stack: &Stack, user: &str, drive: &str) -> (u16, Value) {
    let body = json!({
        "resolvedCollection": {"id": drive, "specification": {"title": "Shared",
            "product": {"id": "share", "category": "home", "provider": stack.get("UCLOUD_IM_PROVIDER")}}},
        "browse": {"flags": {"path": format!("/{drive}")}, "itemsPerPage": 50, "next": null,
                   "sortBy": "PATH", "sortDirection": "ascending"},
    });
    // Through the balancer, as UCloud reaches the site.
    let path = format!("/ucloud/{}/files/browse", stack.get("UCLOUD_IM_PROVIDER"));
    stack.call_public(Some(user), "POST", &path, Some(&body.to_string()))
}

fn gate(stack: &Stack, id: &str) -> String {
    format!(
        "{}/var/lib/ucloud-im/share-gates/{id}/folder",
        stack.prefix().display()
    )
}

fn can(user: &str, script: &str) -> bool {
    run_as(user, &["sh", "-c", script]).status.success()
}

#[test]
fn a_share_gives_bob_alices_folder_while_ucloud_says_so_and_nothing_else() {
    let stack = Stack::load();
    let (alice, bob) = (stack.local_of(ALICE), stack.local_of(BOB));
    let s = ScratchDir::new(&alice, "share");
    as_user(
        &alice,
        &format!(
            "mkdir {0}/sub && printf one > {0}/a.txt && printf two > {0}/sub/b.txt && \
             umask 077 && printf secret > .share-dotfile-{0} && chmod 0644 .share-dotfile-{0}",
            s.dir
        ),
    );
    let home = home_of(&alice);
    let dotfile = format!("{home}/.share-dotfile-{}", s.dir);
    // Only meaningful where Bob cannot read Alice's dotfiles to begin with.
    assert!(
        !can(&bob, &format!("cat {dotfile}")),
        "{home} lets {bob} in before any share"
    );
    let id = share(
        &stack,
        BOB,
        &format!("/{}/{}", stack.drive_of(ALICE), s.dir),
        &["READ"],
    );
    let drive = available_at(&stack, &id);
    let g = gate(&stack, &id);

    // Pending: nothing yet.
    std::thread::sleep(std::time::Duration::from_secs(12));
    assert!(
        !can(&bob, &format!("cat {g}/a.txt")),
        "readable before Bob accepted"
    );
    let (status, _) = browse(&stack, BOB, &drive);
    assert_ne!(status, 200, "browsable before Bob accepted");

    let (status, answer) = sim(&stack, "POST", &format!("/sim/shares/{id}/approve"), None);
    assert_eq!(status, 200, "approve: {answer}");
    wait_until("Bob to browse the share", PERIOD, || {
        browse(&stack, BOB, &drive).0 == 200
    });
    let (_, page) = browse(&stack, BOB, &drive);
    assert!(page.to_string().contains("a.txt"), "{page}");
    assert_eq!(
        as_user(&bob, &format!("cat {g}/a.txt {g}/sub/b.txt")),
        "onetwo"
    );
    assert!(
        !can(&bob, &format!("printf x > {g}/new.txt")),
        "a READ share is writable"
    );
    assert!(
        !can(&bob, &format!("cat {dotfile}")),
        "the share opened Alice's home"
    );
    assert!(
        !can(&bob, &format!("cat {g}/../.share-dotfile-{}", s.dir)),
        "climbed out of the gate"
    );

    // Added later, with a mode that keeps everyone out: shared all the same.
    as_user(
        &alice,
        &format!("umask 077 && printf later > {}/later.txt", s.dir),
    );
    wait_until("a file Alice adds later to reach Bob", PERIOD, || {
        can(&bob, &format!("cat {g}/later.txt"))
    });

    let (status, answer) = sim(&stack, "DELETE", &format!("/sim/shares/{id}"), None);
    assert_eq!(status, 200, "revoke: {answer}");
    wait_until("the revoked share to close", PERIOD, || {
        !can(&bob, &format!("cat {g}/a.txt"))
    });
    assert!(
        !can(&bob, &format!("cat {}/a.txt", s.local(""))),
        "the ACLs stayed"
    );
    let (status, _) = browse(&stack, BOB, &drive);
    assert_ne!(status, 200, "browsable after the share ended");
    let _ = std::fs::remove_file(&dotfile);
}

#[test]
fn an_edit_share_lets_bob_write_and_alice_keeps_what_he_wrote() {
    let stack = Stack::load();
    let (alice, bob) = (stack.local_of(ALICE), stack.local_of(BOB));
    let s = ScratchDir::new(&alice, "share-rw");
    let id = share(
        &stack,
        BOB,
        &format!("/{}/{}", stack.drive_of(ALICE), s.dir),
        &["READ", "EDIT"],
    );
    available_at(&stack, &id);
    let (status, answer) = sim(&stack, "POST", &format!("/sim/shares/{id}/approve"), None);
    assert_eq!(status, 200, "approve: {answer}");
    let g = gate(&stack, &id);
    wait_until("Bob to write into the share", PERIOD, || {
        can(&bob, &format!("umask 077 && printf bob > {g}/from-bob.txt"))
    });
    assert_eq!(
        as_user(&alice, &format!("cat {}", s.local("from-bob.txt"))),
        "bob"
    );
    // Taken down to READ in UCloud (no call reaches the provider): writing stops.
    let (status, answer) = sim(
        &stack,
        "POST",
        &format!("/sim/shares/{id}/permissions"),
        Some(json!({"permissions": ["READ"]})),
    );
    assert_eq!(status, 200, "permissions: {answer}");
    wait_until("the READ-only share to refuse writes", PERIOD, || {
        !can(&bob, &format!("printf again > {g}/again.txt"))
    });
    let (status, answer) = sim(&stack, "DELETE", &format!("/sim/shares/{id}"), None);
    assert_eq!(status, 200, "revoke: {answer}");
    wait_until("the revoked share to close", PERIOD, || {
        !can(&bob, &format!("ls {g}/"))
    });
}

#[test]
fn a_share_with_someone_who_has_no_account_here_is_refused_with_a_reason() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let s = ScratchDir::new(&alice, "share-nobody");
    // Known to UCloud (the owner of a job there), with no account on this site.
    let nobody = format!("{}#9{}", unique("NoAccount"), std::process::id());
    stack.ucloud_knows(&ucloud_im_tests::job_id(), &nobody, None);
    let (status, answer) = sim(
        &stack,
        "POST",
        "/sim/shares",
        Some(json!({"sharedBy": ALICE, "sharedWith": nobody,
                    "path": format!("/{}/{}", stack.drive_of(ALICE), s.dir),
                    "permissions": ["READ"]})),
    );
    // Refused by the provider, so UCloud shows the sharer why, and keeps no share.
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.to_string().contains("has no account on this site"),
        "{answer}"
    );
    let (_, all) = sim(&stack, "GET", "/sim/shares", None);
    assert!(
        !all.to_string().contains(&nobody),
        "UCloud kept the share: {all}"
    );
}
