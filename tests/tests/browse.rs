//! files.browse through the whole chain: the simulator calls the gateway as UCloud
//! would, the dispatcher runs the installed ucloud-files as the mapped user, on files
//! the tests make as that user with runuser.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::process::Command;
use ucloud_im_tests::{as_user, run_as, uid_of, unique, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

/// A directory in `user`'s home with files of known size and age, removed on drop.
struct Fixture {
    user: String,
    dir: String,
}

impl Fixture {
    /// `a` 1 byte, 2020; `b` 3 bytes, 2022; `c` 2 bytes, 2021; `d/` a directory, 2019.
    fn new(user: &str) -> Fixture {
        let dir = unique("browse");
        as_user(
            user,
            &format!(
                "mkdir {dir} && cd {dir} && printf x > a && printf xyz > b && printf xy > c && mkdir d \
                 && touch -d 2020-01-01 a && touch -d 2022-01-01 b && touch -d 2021-01-01 c \
                 && touch -d 2019-01-01 d"
            ),
        );
        Fixture {
            user: user.to_string(),
            dir,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = run_as(
            &self.user,
            &[
                "sh",
                "-c",
                &format!("cd && chmod -R u+rwx {0}; rm -rf {0}", self.dir),
            ],
        );
    }
}

fn browse(stack: &Stack, user: &str, collection: &str, path: &str, extra: Value) -> (u16, Value) {
    let mut browse = json!({"flags": {"path": path}, "itemsPerPage": 50, "next": null,
        "sortBy": "PATH", "sortDirection": "ascending"});
    for (k, v) in extra.as_object().unwrap() {
        browse[k] = v.clone();
    }
    let body = json!({
        "resolvedCollection": {"id": collection, "specification": {"title": "Home",
            "product": {"id": "home", "category": "home", "provider": stack.get("UCLOUD_IM_PROVIDER")}}},
        "browse": browse,
    });
    let path = format!("/ucloud/{}/files/browse", stack.get("UCLOUD_IM_PROVIDER"));
    stack.call(Some(user), "POST", &path, Some(&body.to_string()))
}

fn names(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {body}"))
        .iter()
        .map(|i| {
            i["id"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn assert_refused(status: u16, body: &Value, statuses: &[u16], context: &str) -> String {
    assert!(
        statuses.contains(&status),
        "{context}: got {status}, want one of {statuses:?}: {body}"
    );
    assert!(
        body.get("items").is_none(),
        "{context}: a listing leaked: {body}"
    );
    let why = body["why"].as_str().unwrap_or_default();
    assert!(
        !why.is_empty() && body["errorCode"].is_string(),
        "{context}: no why/errorCode: {body}"
    );
    why.to_string()
}

#[test]
fn alice_lists_her_directory_as_herself() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let f = Fixture::new(&alice);
    let (status, body) = browse(
        &stack,
        ALICE,
        &drive,
        &format!("/{drive}/{}", f.dir),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body), ["a", "b", "c", "d"]);
    assert_eq!(body["next"], Value::Null);
    let uid = uid_of(&alice);
    for item in body["items"].as_array().unwrap() {
        assert!(
            item["id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("/{drive}/{}/", f.dir)),
            "{item}"
        );
        assert_eq!(item["status"]["unixOwner"], json!(uid), "{item}");
        assert!(item["createdAt"].is_i64(), "{item}");
        assert!(item["status"]["modifiedAt"].is_i64(), "{item}");
    }
    let b = &body["items"][1];
    assert_eq!(b["status"]["type"], "FILE");
    assert_eq!(b["status"]["sizeInBytes"], 3);
    assert_eq!(
        b["status"]["modifiedAt"],
        json!(1_640_995_200_000i64 + tz_offset_ms()),
        "{b}"
    );
    assert_eq!(body["items"][3]["status"]["type"], "DIRECTORY");
    // A trailing slash names the same directory.
    let (status, again) = browse(
        &stack,
        ALICE,
        &drive,
        &format!("/{drive}/{}/", f.dir),
        json!({}),
    );
    assert_eq!((status, names(&again)), (200, names(&body)));
}

/// `touch -d 2022-01-01` means local midnight.
fn tz_offset_ms() -> i64 {
    let out = Command::new("date")
        .args(["-d", "2022-01-01", "+%s"])
        .output()
        .unwrap();
    let local: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (local - 1_640_995_200) * 1000
}

#[test]
fn pages_follow_next_until_the_end() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let f = Fixture::new(&alice);
    let path = format!("/{drive}/{}", f.dir);
    let (status, first) = browse(&stack, ALICE, &drive, &path, json!({"itemsPerPage": 3}));
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (names(&first), first["itemsPerPage"].clone()),
        (vec!["a".to_string(), "b".into(), "c".into()], json!(3))
    );
    let next = first["next"]
        .as_str()
        .unwrap_or_else(|| panic!("no next: {first}"))
        .to_string();
    let (status, second) = browse(
        &stack,
        ALICE,
        &drive,
        &path,
        json!({"itemsPerPage": 3, "next": next}),
    );
    assert_eq!(status, 200, "{second}");
    assert_eq!(names(&second), ["d"]);
    assert_eq!(second["next"], Value::Null);
    // Above the maximum the page is cut to 250; a forged token is refused.
    let (_, big) = browse(
        &stack,
        ALICE,
        &drive,
        &path,
        json!({"itemsPerPage": 100000}),
    );
    assert_eq!(big["itemsPerPage"], 250);
    let (status, body) = browse(&stack, ALICE, &drive, &path, json!({"next": "../../etc"}));
    assert_refused(status, &body, &[400], "forged next token");
}

#[test]
fn sorting_by_path_size_and_modification() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let f = Fixture::new(&alice);
    let path = format!("/{drive}/{}", f.dir);
    as_user(&alice, &format!("truncate -s 10000 {}/b", f.dir));
    as_user(&alice, &format!("touch -d 2022-01-01 {}/b", f.dir));
    let cases = [
        ("PATH", "descending", vec!["d", "c", "b", "a"]),
        ("SIZE", "ascending", vec!["a", "c", "d", "b"]),
        ("SIZE", "descending", vec!["b", "d", "c", "a"]),
        ("MODIFIED_AT", "ascending", vec!["d", "a", "c", "b"]),
        ("MODIFIED_AT", "descending", vec!["b", "c", "a", "d"]),
    ];
    for (by, direction, want) in cases {
        let (status, body) = browse(
            &stack,
            ALICE,
            &drive,
            &path,
            json!({"sortBy": by, "sortDirection": direction}),
        );
        assert_eq!(status, 200, "{by} {direction}: {body}");
        assert_eq!(names(&body), want, "{by} {direction}");
    }
    let (status, body) = browse(&stack, ALICE, &drive, &path, json!({"sortBy": "OWNER"}));
    assert_refused(status, &body, &[400], "unknown sortBy");
}

#[test]
fn alice_cannot_list_bobs_home_by_naming_his_drive() {
    let stack = Stack::load();
    let alice_drive = stack.drive_of(ALICE);
    let bob_drive = stack.drive_of(BOB);
    let bob = stack.local_of(BOB);
    let marker = unique("bob-secret");
    as_user(&bob, &format!("chmod 0700 . && touch {marker}"));
    for (collection, path) in [
        (bob_drive.as_str(), format!("/{bob_drive}")),
        // The drive comes from the path, never from resolvedCollection.
        (alice_drive.as_str(), format!("/{bob_drive}")),
        (bob_drive.as_str(), format!("/{bob_drive}/")),
    ] {
        let (status, body) = browse(&stack, ALICE, collection, &path, json!({}));
        assert_refused(
            status,
            &body,
            &[403, 404],
            &format!("Alice on {path} ({collection})"),
        );
        assert!(
            !body.to_string().contains(&marker),
            "Bob's file name leaked: {body}"
        );
    }
    // resolvedCollection naming Bob's drive does not redirect Alice's own path.
    let (status, body) = browse(
        &stack,
        ALICE,
        &bob_drive,
        &format!("/{alice_drive}"),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.to_string().contains(&marker),
        "Bob's file name leaked: {body}"
    );
    as_user(&bob, &format!("rm -f {marker}"));
}

#[test]
fn hostile_paths_are_refused_with_why() {
    let stack = Stack::load();
    let drive = stack.drive_of(ALICE);
    let bob_drive = stack.drive_of(BOB);
    let long = format!("/{drive}/{}", "x".repeat(300));
    for path in [
        format!("/{drive}/.."),
        format!("/{drive}/../{bob_drive}"),
        format!("/{drive}/./x"),
        format!("/{drive}//etc"),
        format!("/{drive}/a\u{0}b"),
        "/../etc".to_string(),
        format!("{drive}/x"),
        long,
    ] {
        let (status, body) = browse(&stack, ALICE, &drive, &path, json!({}));
        let why = assert_refused(status, &body, &[400], &format!("path {path:?}"));
        assert_eq!(body["errorCode"], "BAD_PATH", "{path:?}: {body}");
        assert!(
            why.contains("path"),
            "{path:?}: why {why:?} does not say what is wrong"
        );
    }
}

#[test]
fn links_are_listed_but_never_followed() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let bob = stack.local_of(BOB);
    let drive = stack.drive_of(ALICE);
    let f = Fixture::new(&alice);
    let bob_home = String::from_utf8_lossy(
        &Command::new("getent")
            .args(["passwd", &bob])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .split(':')
    .nth(5)
    .unwrap()
    .to_string();
    as_user(
        &alice,
        &format!(
            "cd {} && ln -s /etc etc-link && ln -s {bob_home} bob-link && ln -s d d-link",
            f.dir
        ),
    );
    let path = format!("/{drive}/{}", f.dir);
    let (status, body) = browse(&stack, ALICE, &drive, &path, json!({}));
    assert_eq!(status, 200, "{body}");
    let link = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"].as_str().unwrap().ends_with("/etc-link"))
        .unwrap();
    assert_eq!(link["status"]["type"], "SOFT_LINK", "{link}");
    for name in ["etc-link", "bob-link", "d-link"] {
        let (status, body) = browse(&stack, ALICE, &drive, &format!("{path}/{name}"), json!({}));
        let why = assert_refused(status, &body, &[400], name);
        assert!(why.contains("link"), "{name}: {why}");
    }
}

#[test]
fn permissions_are_the_users_own() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let f = Fixture::new(&alice);
    as_user(&alice, &format!("chmod 000 {}/d", f.dir));
    let (status, body) = browse(
        &stack,
        ALICE,
        &drive,
        &format!("/{drive}/{}/d", f.dir),
        json!({}),
    );
    assert_refused(status, &body, &[403], "a 000 directory");
    assert_eq!(body["errorCode"], "PERMISSION_DENIED");
    let (status, body) = browse(
        &stack,
        ALICE,
        &drive,
        &format!("/{drive}/{}/nope", f.dir),
        json!({}),
    );
    assert_refused(status, &body, &[404], "a missing directory");
    let (status, body) = browse(
        &stack,
        ALICE,
        &drive,
        &format!("/{drive}/{}/a", f.dir),
        json!({}),
    );
    assert_refused(status, &body, &[400], "a file");
}
