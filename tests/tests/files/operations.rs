//! Folders, copies, moves and the trash, as the owner: conflict policies, bulk
//! calls that undo themselves when one item fails.

use super::*;

#[test]
fn folders_copies_moves_and_conflict_policies() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "files");
    let base = format!("/{d}/{}", s.dir);
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/folder",
        json!({"id": format!("{base}/new"), "conflictPolicy": "REJECT"}),
    );
    assert_eq!(st, 200, "{body}");
    // Go's BulkResponse[util.Empty]: an empty object per item.
    assert_eq!(body["responses"], json!([{}]));
    assert_eq!(owner(&s.local("new")), uid_of(&alice), "created as Alice");
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/folder",
        json!({"id": format!("{base}/new"), "conflictPolicy": "REJECT"}),
    );
    refused(st, &body, 409, "REJECT on an existing folder");
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/folder",
        json!({"id": format!("{base}/new"), "conflictPolicy": "RENAME"}),
    );
    assert_eq!((st, &body["responses"]), (200, &json!([{}])));
    assert!(
        std::path::Path::new(&s.local("new(1)")).is_dir(),
        "RENAME made new(1)"
    );

    as_user(&alice, &format!("cd {} && mkdir -p src/deep && printf one > src/a.txt && printf two > src/deep/b && ln -s /etc/shadow src/link", s.dir));
    let (st, body) = relocate(&stack, "files/copy", &base, "src", "new/src", "REJECT");
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local("new/src/deep/b")).unwrap(), b"two");
    assert_eq!(
        std::fs::read_link(s.local("new/src/link"))
            .unwrap()
            .to_str(),
        Some("/etc/shadow"),
        "a link is copied as a link, never followed"
    );
    assert_eq!(owner(&s.local("new/src/deep/b")), uid_of(&alice));
    // Copy again: REPLACE puts a fresh copy in place; RENAME makes src(1).
    as_user(&alice, &format!("printf changed > {}/new/src/a.txt", s.dir));
    let (st, body) = relocate(&stack, "files/copy", &base, "src", "new/src", "REPLACE");
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local("new/src/a.txt")).unwrap(), b"one");
    let (st, body) = relocate(&stack, "files/copy", &base, "src", "new/src", "RENAME");
    assert_eq!((st, &body["responses"]), (200, &json!([{}])));
    assert_eq!(
        std::fs::read(s.local("new/src(1)/a.txt")).unwrap(),
        b"one",
        "RENAME made src(1)"
    );
    // MERGE_RENAME: a folder merges; a clashing file gets a new name.
    as_user(
        &alice,
        &format!(
            "cd {} && mkdir -p m/deep && printf mine > m/a.txt && printf c > m/deep/c",
            s.dir
        ),
    );
    let (st, body) = relocate(&stack, "files/move", &base, "m", "src", "MERGE_RENAME");
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local("src/a.txt")).unwrap(), b"one");
    assert_eq!(std::fs::read(s.local("src/a(1).txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read(s.local("src/deep/c")).unwrap(), b"c");
    assert!(!exists(&s.local("m")), "the merged source is gone");
    // The same by copy: folders merge all the way down, the source stays.
    as_user(
        &alice,
        &format!(
            "cd {} && mkdir -p cm/deep && printf copy > cm/a.txt && printf d > cm/deep/d",
            s.dir
        ),
    );
    let (st, body) = relocate(&stack, "files/copy", &base, "cm", "src", "MERGE_RENAME");
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local("src/a(2).txt")).unwrap(), b"copy");
    assert_eq!(std::fs::read(s.local("src/deep/d")).unwrap(), b"d");
    assert_eq!(std::fs::read(s.local("src/deep/c")).unwrap(), b"c");
    assert_eq!(std::fs::read(s.local("cm/a.txt")).unwrap(), b"copy");
    // Moving a folder into itself is refused.
    let (st, body) = relocate(&stack, "files/move", &base, "src", "src/deep/x", "REJECT");
    refused(st, &body, 400, "move into itself");
    // No transient entries are left behind.
    let leftovers = as_user(&alice, &format!("find {} -name '.ucloud-im-*'", s.dir));
    assert_eq!(leftovers.trim(), "", "transient entries left");
}

#[test]
fn a_failing_bulk_item_undoes_the_earlier_ones() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "files");
    let base = format!("/{d}/{}", s.dir);
    as_user(
        &alice,
        &format!(
            "cd {} && mkdir taken && printf 1 > f1 && printf 2 > f2 && printf old > dst",
            s.dir
        ),
    );
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/folder",
        items(vec![
            json!({"id": format!("{base}/a"), "conflictPolicy": "REJECT"}),
            json!({"id": format!("{base}/b"), "conflictPolicy": "REJECT"}),
            json!({"id": format!("{base}/taken"), "conflictPolicy": "REJECT"}),
        ]),
    );
    refused(st, &body, 409, "third item exists");
    assert!(
        body["why"].as_str().unwrap().contains("item 3 of 3"),
        "{body}"
    );
    assert!(
        !exists(&s.local("a")) && !exists(&s.local("b")),
        "items 1 and 2 were undone"
    );
    // A move that replaced a file, then a failing item: the replaced file is back.
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/move",
        items(vec![
            json!({"oldId": format!("{base}/f1"), "newId": format!("{base}/dst"), "conflictPolicy": "REPLACE"}),
            json!({"oldId": format!("{base}/nope"), "newId": format!("{base}/x"), "conflictPolicy": "REJECT"}),
        ]),
    );
    refused(st, &body, 404, "second item missing");
    assert_eq!(std::fs::read(s.local("dst")).unwrap(), b"old");
    assert_eq!(std::fs::read(s.local("f1")).unwrap(), b"1");
    // Delete with one bad item deletes nothing.
    let (st, body) = api(
        &stack,
        ALICE,
        "DELETE",
        "files",
        items(vec![
            json!({"id": format!("{base}/f2")}),
            json!({"id": format!("{base}/../etc")}),
        ]),
    );
    refused(st, &body, 400, "traversal in item 2");
    assert!(exists(&s.local("f2")), "item 1 was not deleted");
    let (st, body) = api(
        &stack,
        ALICE,
        "DELETE",
        "files",
        items(vec![json!({"id": format!("{base}/f2")})]),
    );
    assert_eq!(st, 200, "{body}");
    assert!(!exists(&s.local("f2")));
}

#[test]
fn trash_is_restorable_and_empties() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "files");
    let base = format!("/{d}/{}", s.dir);
    let name = unique("trashme");
    as_user(&alice, &format!("printf keep > {}/{name}", s.dir));
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/trash",
        json!({"id": format!("{base}/{name}")}),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["responses"], json!([{}]));
    let in_trash = format!("/{d}/Trash/{name}");
    let home = home_of(&alice);
    assert_eq!(
        std::fs::read(format!("{home}/Trash/{name}")).unwrap(),
        b"keep"
    );
    let info: Value =
        serde_json::from_slice(&std::fs::read(format!("{home}/Trash/.info/{name}.json")).unwrap())
            .unwrap();
    assert_eq!(
        info["path"],
        format!("{base}/{name}"),
        "the trash remembers where it came from"
    );
    // Restore = move back to the recorded path.
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/move",
        json!({
        "oldId": in_trash, "newId": info["path"], "conflictPolicy": "REJECT"}),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local(&name)).unwrap(), b"keep");
    // Trash it again and empty the trash.
    let (st, _) = post_one(
        &stack,
        ALICE,
        "files/trash",
        json!({"id": format!("{base}/{name}")}),
    );
    assert_eq!(st, 200);
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/emptyTrash",
        json!({"id": format!("/{d}/Trash")}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(!exists(&format!("{home}/Trash/{name}")));
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/emptyTrash",
        json!({"id": base.clone()}),
    );
    refused(st, &body, 400, "emptyTrash on a non-trash folder");
    assert!(
        exists(&s.local("")),
        "nothing outside the trash was touched"
    );
}
