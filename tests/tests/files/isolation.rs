//! One user's files are out of another's reach, and collection calls answer or
//! refuse clearly.

use super::*;

#[test]
fn alice_cannot_reach_bob_through_any_call() {
    let stack = Stack::load();
    let bob = stack.local_of(BOB);
    let bob_drive = stack.drive_of(BOB);
    let a = stack.drive_of(ALICE);
    let s = ScratchDir::new(&bob, "files");
    as_user(&bob, &format!("printf secret > {}/s.txt", s.dir));
    let theirs = format!("/{bob_drive}/{}/s.txt", s.dir);
    let calls = [
        (
            "POST",
            "files/retrieve",
            json!({"retrieve": {"id": theirs}}),
        ),
        (
            "POST",
            "files/folder",
            items(vec![json!({"id": format!("/{bob_drive}/{}/x", s.dir)})]),
        ),
        (
            "POST",
            "files/copy",
            items(vec![
                json!({"oldId": theirs, "newId": format!("/{a}/stolen"), "conflictPolicy": "RENAME"}),
            ]),
        ),
        (
            "POST",
            "files/move",
            items(vec![
                json!({"oldId": theirs, "newId": format!("/{a}/stolen"), "conflictPolicy": "RENAME"}),
            ]),
        ),
        ("POST", "files/trash", items(vec![json!({"id": theirs})])),
        ("DELETE", "files", items(vec![json!({"id": theirs})])),
        ("POST", "files/download", items(vec![json!({"id": theirs})])),
        (
            "POST",
            "files/upload",
            items(vec![
                json!({"id": theirs, "type": "FILE", "supportedProtocols": ["CHUNKED"], "conflictPolicy": "REPLACE"}),
            ]),
        ),
    ];
    for (method, path, body) in calls {
        let (st, answer) = api(&stack, ALICE, method, path, body);
        refused(
            st,
            &answer,
            404,
            &format!("Alice {method} {path} on Bob's drive"),
        );
    }
    // Bob's home through Alice's drive: traversal is refused by text, before any access.
    for bad in [
        format!("/{a}/../{bob_drive}"),
        format!("/{a}//x"),
        format!("/{a}/a\u{0}b"),
        format!("/{a}/{}", "n".repeat(300)),
        "/../../etc".to_string(),
    ] {
        let (st, answer) = api(
            &stack,
            ALICE,
            "POST",
            "files/retrieve",
            json!({"retrieve": {"id": bad}}),
        );
        refused(st, &answer, 400, &format!("path {bad:?}"));
    }
    assert_eq!(std::fs::read(s.local("s.txt")).unwrap(), b"secret");
}

#[test]
fn collections_calls_answer_or_refuse_clearly() {
    let stack = Stack::load();
    let d = stack.drive_of(ALICE);
    let (st, body) = post_one(&stack, ALICE, "files/collections", json!({"title": "x"}));
    refused(st, &body, 400, "collections.create");
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/collections/rename",
        json!({"id": d, "newTitle": "x"}),
    );
    refused(st, &body, 400, "collections.rename");
    let (st, body) = post_one(&stack, ALICE, "files/collections/verify", json!({"id": d}));
    assert_eq!(st, 200, "{body}");
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/collections/verify",
        json!({"id": stack.drive_of(BOB)}),
    );
    refused(st, &body, 404, "verify of another's drive");
}
