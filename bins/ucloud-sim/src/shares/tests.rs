use super::*;
// A test of this module drives the drive endpoints too (a test-only import).
use super::super::api::{browse_drives, register_drives};
use std::path::PathBuf;

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
const CAROL: &str = "CarolBerg#3003";

/// A state with Alice's home drive (100), Bob's (101), a project drive (102) and
/// another provider's drive (103); Alice, Bob and Carol are users UCloud knows.
fn scratch(name: &str) -> (PathBuf, Store) {
    let dir = std::env::temp_dir().join(format!("sim-shares-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::init(&dir, "hpc").unwrap();
    for user in [ALICE, BOB, CAROL] {
        crate::owners::know(&store, Some(user), None).unwrap();
    }
    let home = |pg: &str, by: &str| {
        json!({"providerGeneratedId": pg, "createdBy": by,
               "spec": {"title": "Home", "product": {"id": "home", "category": "home", "provider": "hpc"}}})
    };
    let mut project = home("p-1", ALICE);
    project["project"] = json!("P1");
    let body = json!({"items": [home("h-a", ALICE), home("h-b", BOB), project]});
    let a = register_drives(&store, "hpc", body.to_string().as_bytes()).unwrap();
    assert_eq!(a.body["responses"][2]["id"], "102");
    let mut drives = store.read(DRIVES).unwrap().unwrap();
    let mut other = drives["drives"]["100"].clone();
    other["id"] = json!("103");
    other["providerGeneratedId"] = json!("elsewhere");
    other["specification"]["product"]["provider"] = json!("other");
    drives["drives"]["103"] = other;
    drives["next"] = json!(104);
    store.write(DRIVES, &drives).unwrap();
    (dir, store)
}

fn answer(a: Result<Answer, Answer>) -> (u16, Value) {
    let a = a.unwrap_or_else(|a| a);
    (a.status, a.body)
}

fn share_body(by: &str, with: &str, path: &str, permissions: &[&str]) -> Vec<u8> {
    json!({"sharedBy": by, "sharedWith": with, "path": path, "permissions": permissions})
        .to_string()
        .into_bytes()
}

/// A share created as the core does when the provider takes it (answering
/// `responses` of one empty id, as UCloud's own module does).
fn create(store: &Store, by: &str, with: &str, path: &str) -> String {
    let pending = prepare(store, &share_body(by, with, path, &["READ"])).unwrap();
    let (status, body) = answer(finish(
        store,
        &pending,
        Ok(json!({"responses": [{"id": ""}]})),
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"id": pending.id}));
    pending.id
}

/// What the provider does for share `id`: registers its drive, says where it is.
fn make_available(store: &Store, id: &str) -> String {
    let body = json!({"items": [{"spec": {"title": "x",
        "product": {"id": "share", "category": "home", "provider": "hpc"}},
        "providerGeneratedId": format!("s-{id}"), "createdBy": "_ucloud"}]});
    let (status, got) = answer(register_drives(store, "hpc", body.to_string().as_bytes()));
    assert_eq!(status, 200, "{got}");
    let drive = got["responses"][0]["id"].as_str().unwrap().to_string();
    let update = json!({"items": [{"id": id, "update": {"shareAvailableAt": format!("/{drive}"), "timestamp": 1}}]});
    let a = control_update(store, "hpc", update.to_string().as_bytes()).unwrap();
    assert_eq!(a.body, json!({}));
    drive
}

fn shares(store: &Store) -> Value {
    answer(list(store)).1["items"].clone()
}

fn snapshot(store: &Store) -> (Option<Value>, Option<Value>) {
    (store.read(FILE).unwrap(), store.read(DRIVES).unwrap())
}

fn drive_acl(store: &Store, drive: &str) -> Value {
    store.read(DRIVES).unwrap().unwrap()["drives"][drive]["acl"].clone()
}

#[test]
fn create_follows_the_cores_rules_in_its_order() {
    let (dir, store) = scratch("create");
    let before = snapshot(&store);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            share_body(ALICE, BOB, "/100/x", &[]),
            403,
            "Share has no associated permissions",
        ),
        (
            share_body(ALICE, BOB, "/100/x", &["read"]),
            400,
            "Invalid permission specified",
        ),
        (
            share_body(ALICE, BOB, "/100/x", &["READ", "ADMIN"]),
            400,
            "Invalid permission specified",
        ),
        // The permissions are looked at before the users.
        (
            share_body(ALICE, ALICE, "/100/x", &["PROVIDER"]),
            400,
            "Invalid permission specified",
        ),
        (
            share_body(ALICE, ALICE, "/100/x", &["READ"]),
            403,
            "You cannot share a file with yourself",
        ),
        (
            share_body(ALICE, "Nobody#1", "/100/x", &["READ"]),
            403,
            "Cannot share this file with that user",
        ),
        (
            share_body(ALICE, "", "/100/x", &["READ"]),
            403,
            "Cannot share this file with that user",
        ),
        (
            share_body(ALICE, BOB, "/101/x", &["READ"]),
            403,
            "Cannot share this file",
        ),
        (
            share_body(ALICE, BOB, "/102/x", &["READ"]),
            403,
            "Cannot share this file",
        ),
        (
            share_body(ALICE, BOB, "/999/x", &["READ"]),
            403,
            "Cannot share this file",
        ),
        (
            share_body(ALICE, BOB, "/home/x", &["READ"]),
            403,
            "Cannot share this file",
        ),
        (
            share_body(ALICE, BOB, "", &["READ"]),
            403,
            "Cannot share this file",
        ),
        (
            share_body(ALICE, BOB, "/", &["READ"]),
            403,
            "Cannot share this file",
        ),
        (share_body(ALICE, BOB, "/101/../100", &["READ"]), 200, ""),
    ];
    for (body, want, why) in cases {
        let text = String::from_utf8_lossy(&body).to_string();
        if want == 200 {
            // `/101/../100` is drive 100 once cleaned, as the core reads it.
            let pending = prepare(&store, &body).unwrap();
            let share = &store.read(FILE).unwrap().unwrap()["shares"][&pending.id];
            assert_eq!(share["sourceFilePath"], "/100", "{text}");
            assert_eq!(share["state"], "PENDING");
            finish(&store, &pending, Err(fail(400, "X", "no"))).unwrap_err();
            continue;
        }
        let (status, got) = answer(prepare(&store, &body).map(|_| ok(json!({}))));
        assert_eq!((status, got["why"].as_str()), (want, Some(why)), "{text}");
        let (shares_now, drives_now) = snapshot(&store);
        assert_eq!(drives_now, before.1, "{text}");
        let count = shares_now.map(|s| s["shares"].as_object().unwrap().len());
        assert!(matches!(count, None | Some(0)), "{text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hostile_bodies_are_what_go_would_make_of_them() {
    let (dir, store) = scratch("hostile");
    let before = snapshot(&store);
    for bad in [
        &br#"{"sharedBy":"A","sharedWith":7,"path":"/100/x","permissions":["READ"]}"#[..],
        br#"{"sharedBy":"A","sharedWith":"B","path":"/100/x","permissions":"READ"}"#,
        br#"{"sharedBy":"A","sharedWith":"B","path":["/100/x"],"permissions":["READ"]}"#,
        br#"{"sharedBy":"A","sharedWith":"B","path":"/100/x","permissions":[1]}"#,
        br#"{"sharedBy":null,"sharedWith":"B","path":"/100/x","permissions":[null,7]}"#,
        b"[]",
        b"",
        b"{",
        b"\"x\"",
    ] {
        let (status, got) = answer(prepare(&store, bad).map(|_| ok(json!({}))));
        assert_eq!(status, 400, "{}: {got}", String::from_utf8_lossy(bad));
        assert_eq!(snapshot(&store), before);
    }
    // Unknown keys are ignored and keys match without case, as in Go.
    let body = format!(
        r#"{{"SHAREDBY":"{ALICE}","sharedwith":"{BOB}","path":"/100/x","permissions":["READ"],"product":{{"id":"other"}},"x":[1]}}"#
    );
    let pending = prepare(&store, body.as_bytes()).unwrap();
    assert_eq!(pending.sharer, ALICE);
    let sent: Value = serde_json::from_slice(&pending.request).unwrap();
    assert_eq!(sent["items"][0]["specification"]["product"]["id"], "home");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_provider_gets_the_share_as_the_core_maps_it() {
    let (dir, store) = scratch("request");
    let pending = prepare(
        &store,
        &share_body(ALICE, BOB, "//100//x/", &["READ", "EDIT"]),
    )
    .unwrap();
    assert_eq!(
        (pending.id.as_str(), pending.provider.as_str()),
        ("20000", "hpc")
    );
    let sent: Value = serde_json::from_slice(&pending.request).unwrap();
    let share = &sent["items"][0];
    assert!(share["createdAt"].as_u64().unwrap() > 1_600_000_000_000);
    let mut expected = json!({"items": [{
        "id": "20000",
        "createdAt": share["createdAt"],
        "owner": {"createdBy": ALICE, "project": null},
        "permissions": {"myself": [], "others": []},
        "specification": {"sharedWith": BOB, "sourceFilePath": "/100/x",
            "permissions": ["READ", "EDIT"],
            "product": {"id": "home", "category": "home", "provider": "hpc"}},
        "status": {"shareAvailableAt": null, "state": "PENDING"},
        "updates": null,
    }]});
    assert_eq!(sent, expected);
    // The provider's id, when it gives one, is the share's; the recipient may read it.
    finish(&store, &pending, Ok(json!({"responses": [{"id": "pg-1"}]}))).unwrap();
    let item = &shares(&store)[0];
    expected["items"][0]["providerGeneratedId"] = json!("pg-1");
    expected["items"][0]["permissions"] = json!({
        "myself": ["PROVIDER", "ADMIN", "READ", "EDIT"],
        "others": [{"entity": {"type": "user", "username": BOB}, "permissions": ["READ"]}]});
    assert_eq!(item, &expected["items"][0]);
    // Ids go on counting.
    let next = prepare(&store, &share_body(ALICE, CAROL, "/100/x", &["READ"])).unwrap();
    assert_eq!(next.id, "20001");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_refusing_provider_leaves_no_share_and_is_relayed() {
    let (dir, store) = scratch("refused");
    for (outcome, want, why) in [
        (
            Ok((
                400,
                br#"{"why":"File does not exist","errorCode":"NOPE"}"#.to_vec(),
            )),
            400,
            "File does not exist",
        ),
        (
            Ok((500, b"oops".to_vec())),
            500,
            "The provider answered 500 without a why",
        ),
        (
            Ok((404, br#"{"why":7}"#.to_vec())),
            404,
            "The provider answered 404 without a why",
        ),
        (Ok((200, b"oops".to_vec())), 502, ""),
        (Ok((200, br#"{"responses":"x"}"#.to_vec())), 502, ""),
        (Ok((200, br#"{"responses":[{"id":5}]}"#.to_vec())), 502, ""),
        (Err("connection refused".to_string()), 502, ""),
    ] {
        let pending = prepare(&store, &share_body(ALICE, BOB, "/100/x", &["READ"])).unwrap();
        let (status, got) = answer(finish(&store, &pending, provider_answer(outcome)));
        assert_eq!(status, want, "{got}");
        if !why.is_empty() {
            assert_eq!(got["why"], why);
        }
        assert_eq!(shares(&store), json!([]));
    }
    let (_, got) = answer(
        provider_answer(Ok((
            400,
            br#"{"why":"File does not exist","errorCode":"NOPE"}"#.to_vec(),
        )))
        .map(ok),
    );
    assert_eq!(got["errorCode"], "NOPE");
    // A drive the provider made before it refused stays, as in the core.
    let pending = prepare(&store, &share_body(ALICE, BOB, "/100/x", &["READ"])).unwrap();
    let drive = make_available(&store, &pending.id);
    finish(&store, &pending, Err(fail(400, "X", "no"))).unwrap_err();
    assert!(store.read(DRIVES).unwrap().unwrap()["drives"][&drive].is_object());
    // Taken: `{"responses":[{}]}` is an empty id, and no provider id.
    let pending = prepare(&store, &share_body(ALICE, BOB, "/100/x", &["READ"])).unwrap();
    let outcome = provider_answer(Ok((200, br#"{"responses":[{}],"x":1}"#.to_vec())));
    assert_eq!(answer(finish(&store, &pending, outcome)).0, 200);
    assert!(shares(&store)[0].get("providerGeneratedId").is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_same_path_is_shared_once_with_a_user() {
    let (dir, store) = scratch("duplicate");
    create(&store, ALICE, BOB, "/100/x");
    let before = snapshot(&store);
    for path in ["/100/x", "//100/./x/", "/100/y/../x"] {
        let (status, got) = answer(
            prepare(&store, &share_body(ALICE, BOB, path, &["EDIT"])).map(|_| ok(json!({}))),
        );
        assert_eq!(status, 409, "{path}: {got}");
        assert_eq!(
            got["why"],
            "This file has already been shared with the user"
        );
        assert_eq!(snapshot(&store), before);
    }
    // Another user, another path: new shares.
    create(&store, ALICE, CAROL, "/100/x");
    create(&store, ALICE, BOB, "/100/x/sub");
    // Before the provider took it, the recipient cannot read a share: no duplicate yet.
    let pending = prepare(&store, &share_body(ALICE, BOB, "/100/z", &["READ"])).unwrap();
    let again = prepare(&store, &share_body(ALICE, BOB, "/100/z", &["READ"])).unwrap();
    assert_ne!(pending.id, again.id);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_share_drive_is_registered_and_shown_with_its_acl() {
    let (dir, store) = scratch("drive");
    let id = create(&store, ALICE, BOB, "/100/x");
    let drive = make_available(&store, &id);
    assert_eq!(drive, "104");
    let (_, page) = answer(browse_drives(
        &store,
        "hpc",
        Some(&format!("filterProviderIds=s-{id}")),
    ));
    let shown = &page["items"][0];
    assert_eq!(
        shown["owner"],
        json!({"createdBy": "_ucloud", "project": null})
    );
    assert_eq!(shown["specification"]["product"]["id"], "share");
    assert_eq!(
        shown["permissions"],
        json!({"myself": ["READ", "PROVIDER"], "others": []})
    );
    assert_eq!(
        shares(&store)[0]["status"]["shareAvailableAt"],
        format!("/{drive}")
    );
    // Approved: Bob on the drive's ACL, shown with includeOthers.
    assert_eq!(answer(approve(&store, &id)), (200, json!({})));
    let (_, page) = answer(browse_drives(
        &store,
        "hpc",
        Some(&format!("filterProviderIds=s-{id}&includeOthers=true")),
    ));
    assert_eq!(
        page["items"][0]["permissions"]["others"],
        json!([{"entity": {"type": "user", "username": BOB}, "permissions": ["READ"]}])
    );
    assert!(page["items"][0].get("acl").is_none());
    // Another drive under the same provider id is refused, as before.
    let body = json!({"items": [{"spec": {"title": "x",
        "product": {"id": "share", "category": "home", "provider": "hpc"}},
        "providerGeneratedId": format!("s-{id}"), "createdBy": "_ucloud"}]});
    assert_eq!(
        answer(register_drives(&store, "hpc", body.to_string().as_bytes())).0,
        409
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn approval_needs_the_share_available_and_grants_its_permissions() {
    let (dir, store) = scratch("approve");
    let (status, got) = answer(approve(&store, "20000"));
    assert_eq!(
        (status, &got["why"]),
        (
            403,
            &json!("Unable to accept share (Write permission is required)")
        )
    );
    let pending = prepare(&store, &share_body(ALICE, BOB, "/100/x", &["READ", "EDIT"])).unwrap();
    // Not yet taken by the provider: Bob cannot read it, so cannot accept it.
    assert_eq!(answer(approve(&store, &pending.id)).0, 403);
    finish(&store, &pending, Ok(json!({"responses": [{}]}))).unwrap();
    let id = pending.id;
    let before = snapshot(&store);
    let (status, got) = answer(approve(&store, &id));
    assert_eq!(
        (status, &got["why"]),
        (400, &json!("Unable to accept this share, try again later"))
    );
    assert_eq!(snapshot(&store), before);
    let drive = make_available(&store, &id);
    // Read as the core reads ids.
    assert_eq!(
        answer(approve(&store, &format!("+0{id}"))),
        (200, json!({}))
    );
    assert_eq!(
        drive_acl(&store, &drive),
        json!([{"entity": {"type": "user", "username": BOB}, "permissions": ["READ", "EDIT"]}])
    );
    assert_eq!(shares(&store)[0]["status"]["state"], "APPROVED");
    // Approving again changes nothing more.
    assert_eq!(answer(approve(&store, &id)).0, 200);
    assert_eq!(drive_acl(&store, &drive).as_array().unwrap().len(), 1);
    for bad in ["x", "0", "-1", "", "99999"] {
        assert_eq!(answer(approve(&store, bad)).0, 403, "{bad}");
    }
    // Its drive gone: the ACL update fails, the share stays as it was.
    let other = create(&store, ALICE, CAROL, "/100/y");
    let update =
        json!({"items": [{"id": other, "update": {"shareAvailableAt": format!("/{drive}")}}]});
    control_update(&store, "hpc", update.to_string().as_bytes()).unwrap();
    let mut drives = store.read(DRIVES).unwrap().unwrap();
    drives["drives"].as_object_mut().unwrap().remove(&drive);
    store.write(DRIVES, &drives).unwrap();
    let (status, got) = answer(approve(&store, &other));
    assert_eq!(
        (status, &got["why"]),
        (
            403,
            &json!("Unable to accept share (Not found or permission denied)")
        )
    );
    assert_eq!(shares(&store)[1]["status"]["state"], "PENDING");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn permissions_change_the_share_and_an_active_shares_acl() {
    let (dir, store) = scratch("permissions");
    let id = create(&store, ALICE, BOB, "/100/x");
    let before = snapshot(&store);
    for (body, want, why) in [
        (
            &br#"{"permissions":[]}"#[..],
            400,
            "You must assign some permissions to the share",
        ),
        (
            br#"{"permissions":null}"#,
            400,
            "You must assign some permissions to the share",
        ),
        (
            br#"{}"#,
            400,
            "You must assign some permissions to the share",
        ),
        (
            br#"{"permissions":["EDIT","ADMIN"]}"#,
            400,
            "Invalid permission specified",
        ),
        (br#"{"permissions":"EDIT"}"#, 400, ""),
        (br#"{"permissions":[true]}"#, 400, ""),
        (b"[]", 400, ""),
    ] {
        let (status, got) = answer(update_permissions(&store, &id, body));
        assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
        if !why.is_empty() {
            assert_eq!(got["why"], why);
        }
        assert_eq!(snapshot(&store), before);
    }
    let (status, got) = answer(update_permissions(
        &store,
        "77",
        br#"{"permissions":["READ"]}"#,
    ));
    assert_eq!(
        (status, &got["why"]),
        (403, &json!("You cannot update this share"))
    );
    // Pending: the share only.
    let drive = make_available(&store, &id);
    let edit = br#"{"permissions":["EDIT"],"id":"ignored"}"#;
    assert_eq!(
        answer(update_permissions(&store, &id, edit)),
        (200, json!({}))
    );
    assert_eq!(
        shares(&store)[0]["specification"]["permissions"],
        json!(["EDIT"])
    );
    assert_eq!(drive_acl(&store, &drive), Value::Null);
    // Approved: the drive's ACL follows.
    approve(&store, &id).unwrap();
    let read = br#"{"permissions":["READ"]}"#;
    assert_eq!(answer(update_permissions(&store, &id, read)).0, 200);
    assert_eq!(
        drive_acl(&store, &drive),
        json!([{"entity": {"type": "user", "username": BOB}, "permissions": ["READ"]}])
    );
    // The drive gone: the share changes all the same, and the answer is the ACL's.
    let mut drives = store.read(DRIVES).unwrap().unwrap();
    drives["drives"].as_object_mut().unwrap().remove(&drive);
    store.write(DRIVES, &drives).unwrap();
    let (status, got) = answer(update_permissions(&store, &id, edit));
    assert_eq!(
        (status, &got["why"]),
        (404, &json!("Not found or permission denied"))
    );
    assert_eq!(
        shares(&store)[0]["specification"]["permissions"],
        json!(["EDIT"])
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rejection_deletes_the_drive_then_the_share() {
    let (dir, store) = scratch("reject");
    let id = create(&store, ALICE, BOB, "/100/x");
    let drive = make_available(&store, &id);
    approve(&store, &id).unwrap();
    let kept = create(&store, ALICE, CAROL, "/100/x");
    assert_eq!(answer(reject(&store, &id)), (200, json!({})));
    assert!(!store.read(DRIVES).unwrap().unwrap()["drives"][&drive].is_object());
    let left: Vec<Value> = shares(&store)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(left, [json!(kept)]);
    assert!(store.read(DRIVES).unwrap().unwrap()["drives"]["100"].is_object());
    // Gone: unknown now, and its provider id free again.
    let (status, got) = answer(reject(&store, &id));
    assert_eq!(
        (status, &got["why"]),
        (
            403,
            &json!("Unable to delete share (Write permission is required)")
        )
    );
    let body = json!({"items": [{"spec": {"title": "x",
        "product": {"id": "share", "category": "home", "provider": "hpc"}},
        "providerGeneratedId": format!("s-{id}"), "createdBy": "_ucloud"}]});
    assert_eq!(
        answer(register_drives(&store, "hpc", body.to_string().as_bytes())).0,
        200
    );
    // A pending share without a drive goes alone.
    assert_eq!(answer(reject(&store, &kept)).0, 200);
    assert_eq!(shares(&store), json!([]));
    // The same path may be shared with Bob again.
    create(&store, ALICE, BOB, "/100/x");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn updates_name_the_providers_shares_and_drives() {
    let (dir, store) = scratch("update");
    let id = create(&store, ALICE, BOB, "/100/x");
    let other = create(&store, ALICE, CAROL, "/100/x");
    let mut state = store.read(FILE).unwrap().unwrap();
    state["shares"][&other]["product"]["provider"] = json!("other");
    store.write(FILE, &state).unwrap();
    let before = snapshot(&store);
    let item =
        |id: &str, at: Value| json!({"id": id, "update": {"shareAvailableAt": at, "timestamp": 5}});
    let body = |items: Vec<Value>| json!({"items": items}).to_string().into_bytes();
    for (b, want, why) in [
        (
            body(vec![item("99", json!("/100"))]),
            404,
            "Not found or permission denied (99)",
        ),
        (
            body(vec![item(&id, json!("/100")), item("x", json!("/100"))]),
            404,
            "Not found or permission denied (x)",
        ),
        (body(vec![item(&other, json!("/100"))]), 404, ""),
        (
            body(vec![item(&id, json!("/999"))]),
            400,
            "Invalid share available at path (bad drive)",
        ),
        (
            body(vec![item(&id, json!("/"))]),
            400,
            "Invalid share available at path (bad drive)",
        ),
        (
            body(vec![item(&id, json!("share"))]),
            400,
            "Invalid share available at path (bad drive)",
        ),
        (
            body(vec![item(&id, json!("/103"))]),
            403,
            "Invalid share available at path (bad drive - forbidden)",
        ),
        (br#"{"items":[{"id":5,"update":{}}]}"#.to_vec(), 400, ""),
        (
            br#"{"items":[{"id":"20000","update":{"shareAvailableAt":7}}]}"#.to_vec(),
            400,
            "",
        ),
        (
            br#"{"items":[{"id":"20000","update":{"timestamp":"5"}}]}"#.to_vec(),
            400,
            "",
        ),
        (
            br#"{"items":[{"id":"20000","update":{"timestamp":null}}]}"#.to_vec(),
            400,
            "",
        ),
        (br#"{"items":{}}"#.to_vec(), 400, ""),
        (b"".to_vec(), 400, ""),
    ] {
        let (status, got) = answer(control_update(&store, "hpc", &b));
        assert_eq!(status, want, "{}: {got}", String::from_utf8_lossy(&b));
        if !why.is_empty() {
            assert_eq!(got["why"], why);
        }
        assert_eq!(snapshot(&store), before, "{}", String::from_utf8_lossy(&b));
    }
    // Any drive of the provider's will do, and the first component is the drive.
    let ok_body = body(vec![item(&id, json!("/101/deep/../er"))]);
    assert_eq!(
        answer(control_update(&store, "hpc", &ok_body)),
        (200, json!({}))
    );
    assert_eq!(
        shares(&store)[0]["status"]["shareAvailableAt"],
        "/101/deep/../er"
    );
    // Unknown keys, a status and no timestamp are fine; no shareAvailableAt clears it.
    let plain = format!(
        r#"{{"items":[{{"id":"{id}","update":{{"status":"ok","state":"APPROVED"}},"x":1}}]}}"#
    );
    assert_eq!(
        answer(control_update(&store, "hpc", plain.as_bytes())).0,
        200
    );
    assert_eq!(shares(&store)[0]["status"]["shareAvailableAt"], Value::Null);
    assert_eq!(shares(&store)[0]["status"]["state"], "PENDING");
    // Items before a refused one stay applied, as in the core.
    let mixed = body(vec![item(&id, json!("/100")), item(&id, json!("/999"))]);
    assert_eq!(answer(control_update(&store, "hpc", &mixed)).0, 400);
    assert_eq!(shares(&store)[0]["status"]["shareAvailableAt"], "/100");
    assert_eq!(
        answer(control_update(&store, "hpc", &body(vec![]))),
        (200, json!({}))
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_provider_retrieves_its_shares() {
    let (dir, store) = scratch("retrieve");
    let id = create(&store, ALICE, BOB, "/100/x");
    let (status, got) = answer(control_retrieve(&store, "hpc", Some(&format!("id={id}"))));
    assert_eq!(status, 200);
    assert_eq!(
        got["permissions"],
        json!({"myself": ["READ", "PROVIDER"], "others": []})
    );
    assert_eq!(got["specification"]["sharedWith"], BOB);
    assert_eq!(
        got["status"],
        json!({"shareAvailableAt": null, "state": "PENDING"})
    );
    let (_, got) = answer(control_retrieve(
        &store,
        "hpc",
        Some(&format!("id={id}&includeOthers=true")),
    ));
    assert_eq!(got["permissions"]["others"][0]["entity"]["username"], BOB);
    for (q, want) in [
        (format!("id=0{id}"), 200),
        (
            format!("id={id}&filterCreatedBy={}", "AliceHansen%231001"),
            200,
        ),
        (format!("id={id}&filterCreatedBy=Bob"), 404),
        (format!("id={id}&filterProductId=share"), 404),
        (format!("id={id}&hideProvider=hpc"), 404),
        (format!("id={id}&filterLabels.a=b"), 404),
        (format!("id={id}&filterIds=1,{id}"), 200),
        (format!("id={id}&filterIds=1,2"), 404),
        (format!("id={id}&filterProviderIds=s-1"), 404),
        (format!("id={id}&filterCreatedAfter=99999999999999"), 404),
        (format!("id={id}&filterCreatedBefore=1"), 404),
        ("id=1".to_string(), 403),
        ("id=x".to_string(), 403),
        (String::new(), 403),
        (format!("id={id}&includeOthers=yes"), 400),
        (format!("id={id}&filterIngoing=2"), 400),
        (format!("id={id}&filterCreatedAfter=-1"), 400),
    ] {
        assert_eq!(
            answer(control_retrieve(&store, "hpc", Some(&q))).0,
            want,
            "{q}"
        );
    }
    assert_eq!(
        answer(control_retrieve(&store, "other", Some(&format!("id={id}")))).0,
        403
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn browse_pages_newest_first_as_the_core_does() {
    let (dir, store) = scratch("browse");
    let ids: Vec<String> = (0..5)
        .map(|i| create(&store, ALICE, BOB, &format!("/100/{i}")))
        .collect();
    let page = |q: &str| answer(control_browse(&store, "hpc", Some(q)));
    let got = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, first) = page("itemsPerPage=2");
    assert_eq!(status, 200);
    assert_eq!(got(&first), [ids[4].as_str(), ids[3].as_str()]);
    assert_eq!(
        (&first["next"], &first["itemsPerPage"]),
        (&json!(ids[3]), &json!(2))
    );
    let (_, second) = page(&format!("itemsPerPage=2&next={}", ids[3]));
    assert_eq!(got(&second), [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(second["next"], json!(ids[1]));
    let (_, last) = page(&format!("itemsPerPage=2&next={}", ids[1]));
    assert_eq!(got(&last), [ids[0].as_str()]);
    assert_eq!(last["next"], Value::Null);
    // A full last page has no next: the core sets it only when more follow.
    let (_, exact) = page(&format!("itemsPerPage=3&next={}", ids[3]));
    assert_eq!(
        got(&exact),
        [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]
    );
    assert_eq!(exact["next"], Value::Null);
    let (_, all) = page("");
    assert_eq!(
        (got(&all).len(), &all["itemsPerPage"], &all["next"]),
        (5, &json!(50), &Value::Null)
    );
    assert_eq!(all["items"][0]["permissions"]["others"], json!([]));
    // A cursor between ids, past them all, or not a number.
    assert_eq!(
        got(&page(&format!("next={}", ids[2])).1),
        [ids[1].as_str(), ids[0].as_str()]
    );
    assert_eq!(got(&page("next=99999").1).len(), 5);
    assert_eq!(got(&page("next=abc").1), Vec::<String>::new());
    assert_eq!(got(&page("next=-5").1), Vec::<String>::new());
    assert_eq!(page("itemsPerPage=5000").1["itemsPerPage"], 1000);
    // Filters apply before paging.
    let mut state = store.read(FILE).unwrap().unwrap();
    state["shares"][ids[3].as_str()]["owner"]["createdBy"] = json!(CAROL);
    state["shares"][ids[1].as_str()]["product"]["provider"] = json!("other");
    state["shares"][ids[0].as_str()]["providerGeneratedId"] = json!("pg-0");
    store.write(FILE, &state).unwrap();
    let (_, alice) = page("itemsPerPage=2&filterCreatedBy=AliceHansen%231001");
    assert_eq!(got(&alice), [ids[4].as_str(), ids[2].as_str()]);
    let (_, rest) = page(&format!(
        "itemsPerPage=2&filterCreatedBy=AliceHansen%231001&next={}",
        ids[2]
    ));
    assert_eq!(got(&rest), [ids[0].as_str()]);
    assert_eq!(rest["next"], Value::Null);
    let (_, theirs) = answer(control_browse(&store, "other", None));
    assert_eq!(got(&theirs), [ids[1].as_str()]);
    let (_, by_pg) = page("filterProviderIds=nope,pg-0");
    assert_eq!(
        (got(&by_pg), &by_pg["itemsPerPage"]),
        (vec![ids[0].clone()], &json!(1000))
    );
    let many = vec!["pg-0"; 1001].join(",");
    assert_eq!(
        got(&page(&format!("filterProviderIds={many}")).1),
        Vec::<String>::new()
    );
    for bad in [
        "itemsPerPage=1.5",
        "includeOthers=2",
        "filterIngoing=x",
        "filterCreatedBefore=-1",
    ] {
        assert_eq!(page(bad).0, 400, "{bad}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn who_may_do_what_on_a_drive() {
    let drive = json!({"owner": {"createdBy": "_ucloud", "project": null},
        "acl": [{"entity": {"type": "user", "username": BOB}, "permissions": ["READ"]},
                {"entity": {"type": "project_group", "projectId": "P", "group": "g"}, "permissions": ["EDIT"]}]});
    assert_eq!(permissions_of(Some(BOB), &drive), ["READ"]);
    assert!(permissions_of(Some(ALICE), &drive).is_empty());
    assert!(permissions_of(None, &drive).is_empty());
    assert_eq!(
        permissions_of(Some("_ucloud"), &drive),
        ["ADMIN", "READ", "EDIT"]
    );
    let mut project = drive.clone();
    project["owner"] = json!({"createdBy": BOB, "project": "P"});
    assert!(permissions_of(Some(BOB), &project).is_empty());
}
