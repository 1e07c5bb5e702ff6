//! The file calls through the whole chain, as the mapped users, on real files:
//! folder, move, copy, trash, delete with their conflict policies and bulk
//! undo; downloads and chunked uploads over the data channel, including hostile
//! tokens and broken-off uploads. The links point at the public URL, the balancer
//! (https); one test follows them as given with curl, the others speak raw HTTP/1.1
//! to the direct gateway behind it (the same program), so that every byte on the
//! wire is theirs to shape.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use ucloud_im_tests::{
    run_as, uid_of, unique, ws_client_frame, ws_connect, ws_server_frame, Stack,
};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn home_of(user: &str) -> String {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split(':').nth(5).unwrap().to_string()
}

/// Runs `script` with `sh -c` in `user`'s home, as `user`.
fn as_user(user: &str, script: &str) -> String {
    let out = run_as(user, &["sh", "-c", &format!("cd && {script}")]);
    assert!(
        out.status.success(),
        "as {user}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A scratch directory in the user's home, removed on drop.
struct Scratch {
    user: String,
    dir: String,
    home: String,
}

impl Scratch {
    fn new(user: &str) -> Scratch {
        let dir = unique("files");
        as_user(user, &format!("mkdir {dir}"));
        Scratch {
            user: user.into(),
            home: home_of(user),
            dir,
        }
    }
    fn local(&self, rel: &str) -> String {
        format!("{}/{}/{rel}", self.home, self.dir)
    }
}

impl Drop for Scratch {
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

fn api(stack: &Stack, user: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let p = format!("/ucloud/{}/{path}", stack.get("UCLOUD_IM_PROVIDER"));
    stack.call(Some(user), method, &p, Some(&body.to_string()))
}

fn items(list: Vec<Value>) -> Value {
    json!({ "items": list })
}

fn exists(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn owner(path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().uid()
}

fn refused(status: u16, body: &Value, want: u16, context: &str) {
    assert_eq!(status, want, "{context}: {body}");
    assert!(
        body["why"].as_str().is_some_and(|w| !w.is_empty()) && body["errorCode"].is_string(),
        "{context}: no why/errorCode: {body}"
    );
}

#[test]
fn folders_copies_moves_and_conflict_policies() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let base = format!("/{d}/{}", s.dir);
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/folder",
        items(vec![
            json!({"id": format!("{base}/new"), "conflictPolicy": "REJECT"}),
        ]),
    );
    assert_eq!(st, 200, "{body}");
    // Go's BulkResponse[util.Empty]: an empty object per item.
    assert_eq!(body["responses"], json!([{}]));
    assert_eq!(owner(&s.local("new")), uid_of(&alice), "created as Alice");
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/folder",
        items(vec![
            json!({"id": format!("{base}/new"), "conflictPolicy": "REJECT"}),
        ]),
    );
    refused(st, &body, 409, "REJECT on an existing folder");
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/folder",
        items(vec![
            json!({"id": format!("{base}/new"), "conflictPolicy": "RENAME"}),
        ]),
    );
    assert_eq!((st, &body["responses"]), (200, &json!([{}])));
    assert!(
        std::path::Path::new(&s.local("new(1)")).is_dir(),
        "RENAME made new(1)"
    );

    as_user(&alice, &format!("cd {} && mkdir -p src/deep && printf one > src/a.txt && printf two > src/deep/b && ln -s /etc/shadow src/link", s.dir));
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/copy",
        items(vec![json!({
        "oldId": format!("{base}/src"), "newId": format!("{base}/new/src"), "conflictPolicy": "REJECT"})]),
    );
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
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/copy",
        items(vec![json!({
        "oldId": format!("{base}/src"), "newId": format!("{base}/new/src"), "conflictPolicy": "REPLACE"})]),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local("new/src/a.txt")).unwrap(), b"one");
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/copy",
        items(vec![json!({
        "oldId": format!("{base}/src"), "newId": format!("{base}/new/src"), "conflictPolicy": "RENAME"})]),
    );
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
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/move",
        items(vec![json!({
        "oldId": format!("{base}/m"), "newId": format!("{base}/src"), "conflictPolicy": "MERGE_RENAME"})]),
    );
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
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/copy",
        items(vec![json!({
        "oldId": format!("{base}/cm"), "newId": format!("{base}/src"), "conflictPolicy": "MERGE_RENAME"})]),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local("src/a(2).txt")).unwrap(), b"copy");
    assert_eq!(std::fs::read(s.local("src/deep/d")).unwrap(), b"d");
    assert_eq!(std::fs::read(s.local("src/deep/c")).unwrap(), b"c");
    assert_eq!(std::fs::read(s.local("cm/a.txt")).unwrap(), b"copy");
    // Moving a folder into itself is refused.
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/move",
        items(vec![json!({
        "oldId": format!("{base}/src"), "newId": format!("{base}/src/deep/x"), "conflictPolicy": "REJECT"})]),
    );
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
    let s = Scratch::new(&alice);
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
    let s = Scratch::new(&alice);
    let base = format!("/{d}/{}", s.dir);
    let name = unique("trashme");
    as_user(&alice, &format!("printf keep > {}/{name}", s.dir));
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/trash",
        items(vec![json!({"id": format!("{base}/{name}")})]),
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
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/move",
        items(vec![json!({
        "oldId": in_trash, "newId": info["path"], "conflictPolicy": "REJECT"})]),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(std::fs::read(s.local(&name)).unwrap(), b"keep");
    // Trash it again and empty the trash.
    let (st, _) = api(
        &stack,
        ALICE,
        "POST",
        "files/trash",
        items(vec![json!({"id": format!("{base}/{name}")})]),
    );
    assert_eq!(st, 200);
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/emptyTrash",
        items(vec![json!({"id": format!("/{d}/Trash")})]),
    );
    assert_eq!(st, 200, "{body}");
    assert!(!exists(&format!("{home}/Trash/{name}")));
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/emptyTrash",
        items(vec![json!({"id": base.clone()})]),
    );
    refused(st, &body, 400, "emptyTrash on a non-trash folder");
    assert!(
        exists(&s.local("")),
        "nothing outside the trash was touched"
    );
}

#[test]
fn alice_cannot_reach_bob_through_any_call() {
    let stack = Stack::load();
    let bob = stack.local_of(BOB);
    let bob_drive = stack.drive_of(BOB);
    let a = stack.drive_of(ALICE);
    let s = Scratch::new(&bob);
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
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/collections",
        items(vec![json!({"title": "x"})]),
    );
    refused(st, &body, 400, "collections.create");
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/collections/rename",
        items(vec![json!({"id": d, "newTitle": "x"})]),
    );
    refused(st, &body, 400, "collections.rename");
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/collections/verify",
        items(vec![json!({"id": d})]),
    );
    assert_eq!(st, 200, "{body}");
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/collections/verify",
        items(vec![json!({"id": stack.drive_of(BOB)})]),
    );
    refused(st, &body, 404, "verify of another's drive");
}

// ---- the data channel -------------------------------------------------------

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A link as UCloud hands it out (under the public URL, the balancer), rewritten
/// onto the direct gateway behind it: `(host:port, /path?query)` for raw HTTP/1.1.
fn split_url(url: &str) -> (String, String) {
    Stack::load().direct_target(url)
}

fn read_answer(conn: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            conn.read(&mut byte).unwrap(),
            1,
            "connection closed in the head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut a = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = a.header("content-length") {
        let mut body = vec![0u8; len.parse().unwrap()];
        conn.read_exact(&mut body).unwrap();
        a.body = body;
    } else if a.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                conn.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            let n = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            conn.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            a.body.extend_from_slice(&chunk[..n]);
        }
    }
    a
}

fn http(url: &str, method: &str, headers: &[(&str, String)], body: &[u8]) -> Answer {
    let (host, target) = split_url(url);
    let mut conn = TcpStream::connect(&host).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    read_answer(&mut conn)
}

fn create_download(stack: &Stack, user: &str, id: &str) -> (u16, Value) {
    api(
        stack,
        user,
        "POST",
        "files/download",
        items(vec![json!({"id": id})]),
    )
}

#[test]
fn downloads_stream_with_length_disposition_cors_and_range() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    as_user(&alice, &format!("cd {} && head -c 5000000 /dev/urandom > 'big ü.bin' && printf 0123456789 > small && printf x > locked && chmod 000 locked", s.dir));
    let (st, body) = create_download(&stack, ALICE, &format!("/{d}/{}/big ü.bin", s.dir));
    assert_eq!(st, 200, "{body}");
    let url = body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with(&format!("{}/", stack.get("UCLOUD_IM_LB_URL"))),
        "link under the public URL, the balancer: {url}"
    );
    let a = http(&url, "GET", &[], b"");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, std::fs::read(s.local("big ü.bin")).unwrap());
    assert_eq!(a.header("content-length"), Some("5000000"));
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        a.header("content-disposition"),
        Some("attachment; filename*=UTF-8''big%20%C3%BC.bin")
    );

    let (_, body) = create_download(&stack, ALICE, &format!("/{d}/{}/small", s.dir));
    let url = body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let a = http(&url, "GET", &[("Range", "bytes=2-5".into())], b"");
    assert_eq!((a.status, a.body.as_slice()), (206, &b"2345"[..]));
    assert_eq!(a.header("content-range"), Some("bytes 2-5/10"));
    let a = http(&url, "GET", &[("Range", "bytes=20-".into())], b"");
    assert_eq!(a.status, 416);
    assert_eq!(a.header("content-range"), Some("bytes */10"));

    // A token altered by one byte, a download token on the upload URL, no token.
    let altered = {
        let i = url.find("token=").unwrap() + 6 + 40;
        let mut b = url.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    assert_eq!(http(&altered, "GET", &[], b"").status, 401);
    let upload_url = url.replace("/download?", "/upload?");
    assert_eq!(
        http(
            &upload_url,
            "POST",
            &[("Chunked-Upload-Total-Size", "1".into())],
            b"x"
        )
        .status,
        401
    );
    let bare = url.split('?').next().unwrap().to_string();
    assert_eq!(http(&bare, "GET", &[], b"").status, 401);
    // A file Alice may not read: 403 with a why, no link made.
    let (st, body) = create_download(&stack, ALICE, &format!("/{d}/{}/locked", s.dir));
    refused(st, &body, 403, "unreadable file");
}

/// What UCloud hands a browser works as given: over TLS through the balancer, with
/// the stack CA, to the file as its owner wrote or will read it.
#[test]
fn links_work_through_the_balancer() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();

    let (url, token) = create_upload(
        &stack,
        ALICE,
        &format!("/{d}/{}/via-tls.bin", s.dir),
        "REJECT",
    );
    assert!(url.starts_with("https://"), "upload link {url}");
    let body_file = std::env::temp_dir().join(unique("files-tls-body"));
    std::fs::write(&body_file, &data).unwrap();
    let up = stack.upload_in_one_chunk(
        &url,
        &token,
        data.len(),
        &format!("@{}", body_file.display()),
    );
    let answer: Value = serde_json::from_slice(&up.body).unwrap_or(Value::Null);
    assert_eq!(
        (up.status, &answer["complete"]),
        (200, &json!(true)),
        "{}\n{answer}",
        up.head
    );
    assert_eq!(std::fs::read(s.local("via-tls.bin")).unwrap(), data);
    assert_eq!(
        as_user(&alice, &format!("stat -c %U {}/via-tls.bin", s.dir)).trim(),
        alice
    );

    let (st, body) = create_download(&stack, ALICE, &format!("/{d}/{}/via-tls.bin", s.dir));
    assert_eq!(st, 200, "{body}");
    let url = body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("https://"), "download link {url}");
    let down = stack.follow_link(&url, &[]);
    assert_eq!(down.status, 200, "{}", down.head);
    assert!(
        down.body == data,
        "the download through the balancer is not the file ({} bytes of {})",
        down.body.len(),
        data.len()
    );
    let disposition = down.header("content-disposition").unwrap_or_default();
    assert!(disposition.starts_with("attachment"), "{}", down.head);
    assert_eq!(
        down.header("access-control-allow-origin"),
        Some("*"),
        "{}",
        down.head
    );
    // A resumed download asks for a range; the balancer passes it through untouched.
    let part = stack.follow_link(&url, &["-r", "1000-1099"]);
    assert_eq!(part.status, 206, "{}", part.head);
    assert_eq!(part.body, &data[1000..1100]);
    let _ = std::fs::remove_file(&body_file);
}

fn create_upload(stack: &Stack, user: &str, id: &str, policy: &str) -> (String, String) {
    let (st, body) = api(
        stack,
        user,
        "POST",
        "files/upload",
        items(vec![json!({
        "id": id, "type": "FILE", "supportedProtocols": ["CHUNKED"], "conflictPolicy": policy})]),
    );
    assert_eq!(st, 200, "{body}");
    let r = &body["responses"][0];
    assert_eq!(r["protocol"], "CHUNKED");
    (
        r["endpoint"].as_str().unwrap().into(),
        r["token"].as_str().unwrap().into(),
    )
}

fn chunk(url: &str, token: &str, offset: i64, total: usize, data: &[u8]) -> Answer {
    http(
        url,
        "POST",
        &[
            ("Chunked-Upload-Token", token.to_string()),
            ("Chunked-Upload-Offset", offset.to_string()),
            ("Chunked-Upload-Total-Size", total.to_string()),
        ],
        data,
    )
}

#[test]
fn chunked_uploads_resume_refuse_bad_chunks_and_appear_whole() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let total = data.len();
    let id = format!("/{d}/{}/up.bin", s.dir);
    let (url, token) = create_upload(&stack, ALICE, &id, "REJECT");
    let partial = || {
        as_user(
            &alice,
            &format!("find {} -name '.ucloud-im-upload-*'", s.dir),
        )
    };

    let a = chunk(&url, &token, 0, total, &data[..1_000_000]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(a.json()["offset"], 1_000_000);
    assert!(
        !exists(&s.local("up.bin")),
        "no target before the last chunk"
    );
    // Out of order, overlapping, and past the declared size: refused, nothing changes.
    for (offset, len) in [(2_000_000i64, 1000usize), (500_000, 1000)] {
        let a = chunk(
            &url,
            &token,
            offset,
            total,
            &data[offset as usize..offset as usize + len],
        );
        assert_eq!(
            a.status,
            409,
            "offset {offset}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(
            a.json()["why"].as_str().unwrap().contains("1000000"),
            "names the resume point"
        );
    }
    let a = chunk(
        &url,
        &token,
        1_000_000,
        1_000_010,
        &data[1_000_000..1_000_020],
    );
    assert_eq!(a.status, 400, "a chunk longer than the declared size");

    // The client vanishes in the middle of a chunk: nothing of it is kept.
    {
        let (host, target) = split_url(&url);
        let mut conn = TcpStream::connect(&host).unwrap();
        let head = format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\
            Chunked-Upload-Token: {token}\r\nChunked-Upload-Offset: -1\r\nChunked-Upload-Total-Size: {total}\r\n\r\n");
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&data[1_000_000..1_400_000]).unwrap();
        drop(conn);
    }
    // The plugin cuts the partial file back; wait for it (bounded), then resume.
    let size = |p: &str| -> u64 {
        p.trim()
            .lines()
            .next()
            .map(|f| {
                std::fs::metadata(format!("{}/{f}", home_of(&alice)))
                    .unwrap()
                    .len()
            })
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    loop {
        let probe = chunk(&url, &token, 1_000_000, total, &[]);
        if probe.status == 200 || started.elapsed().as_secs() > 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(size(&partial()), 1_000_000, "the broken chunk was cut off");
    assert!(!exists(&s.local("up.bin")));
    let a = chunk(&url, &token, -1, total, &data[1_000_000..2_000_000]);
    assert_eq!(
        (a.status, a.json()["offset"].clone()),
        (200, json!(2_000_000))
    );
    let a = chunk(&url, &token, 2_000_000, total, &data[2_000_000..]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["complete"], true);
    assert_eq!(a.json()["id"], id.as_str());
    assert_eq!(
        std::fs::read(s.local("up.bin")).unwrap(),
        data,
        "byte for byte"
    );
    assert_eq!(
        owner(&s.local("up.bin")),
        uid_of(&alice),
        "written as Alice"
    );
    assert_eq!(partial().trim(), "", "no partial file left");

    // REJECT at creation when the target exists; RENAME at completion.
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/upload",
        items(vec![json!({
        "id": id, "type": "FILE", "supportedProtocols": ["CHUNKED"], "conflictPolicy": "REJECT"})]),
    );
    refused(st, &body, 409, "upload onto an existing file with REJECT");
    let (url, token) = create_upload(&stack, ALICE, &id, "RENAME");
    let a = chunk(&url, &token, 0, 3, b"abc");
    assert_eq!(a.json()["id"], format!("/{d}/{}/up(1).bin", s.dir));
    assert_eq!(std::fs::read(s.local("up(1).bin")).unwrap(), b"abc");
    // The token, not the URL, chooses the session: Bob's token on Alice's URL
    // writes Bob's file as Bob, never Alice's.
    let bob = stack.local_of(BOB);
    let bob_name = unique("from-alice-url");
    let (_, bob_token) = create_upload(
        &stack,
        BOB,
        &format!("/{}/{bob_name}", stack.drive_of(BOB)),
        "RENAME",
    );
    let a = chunk(&url, &bob_token, 0, 3, b"xyz");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(std::fs::read(s.local("up(1).bin")).unwrap(), b"abc");
    let bobs = format!("{}/{bob_name}", home_of(&bob));
    assert_eq!(owner(&bobs), uid_of(&bob));
    std::fs::remove_file(bobs).unwrap();
}

// ---- 1 GiB round trip with flat memory --------------------------------------

/// Peak memory (VmHWM) any part of a transfer may reach, in KiB. The gateway
/// relays through 1 MiB buffers and pipes and the plugin splices or sends files
/// without a buffer that grows with the file; 64 MiB is far above what they use
/// and far below the 1 GiB a whole-file buffer would take.
const FLAT_KIB: u64 = 64 << 10;
const GIB: usize = 1 << 30;
const CHUNK_16MB: usize = 16_000_000;

/// `(Name, real uid, VmHWM KiB)` of a process, if it still exists.
fn proc_status(pid: &str) -> Option<(String, u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let hwm = field("VmHWM:")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some((field("Name:")?, uid, hwm))
}

fn pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

/// The gateway process serving our end of `conn`: found by the server side's
/// socket inode (`/proc/net/tcp`), then the process holding that socket.
fn gateway_of(conn: &TcpStream) -> String {
    let (mine, theirs) = (
        conn.local_addr().unwrap().port(),
        conn.peer_addr().unwrap().port(),
    );
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    // The socket activator accepts, forks and execs the gateway: until it has
    // accepted, the connection's inode is 0. Wait for both (bounded).
    let started = std::time::Instant::now();
    let mut link = String::new();
    while started.elapsed().as_secs() < 5 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let inode = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| port(f[1]) == theirs && port(f[2]) == mine)
            .map(|f| f[9].to_string())
            .expect("the gateway's side of our connection is in /proc/net/tcp");
        link = format!("socket:[{inode}]");
        if inode != "0" {
            for pid in pids() {
                let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                let holds = fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == link)
                });
                if holds && proc_status(&pid).is_some_and(|(name, _, _)| name == "ucloud-gateway") {
                    return pid;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no ucloud-gateway process holds {link}");
}

/// Samples, until stopped, the peak memory of every process running as `uid` (the
/// plugins of the transfer; the dispatcher becomes the plugin by exec) and of
/// every `ucloud-dispatch` still before its exec. Returns `(pid, name, VmHWM)`s.
struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(String, String, u64)>>,
}

impl Sampler {
    fn start(uid: u32) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<String, (String, u64)>::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for pid in pids() {
                    if let Some((name, u, hwm)) = proc_status(&pid) {
                        if u == uid || name == "ucloud-dispatch" {
                            let e = seen.entry(pid).or_insert((name.clone(), 0));
                            e.0 = name;
                            e.1 = e.1.max(hwm);
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            seen.into_iter().map(|(p, (n, h))| (p, n, h)).collect()
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<(String, String, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A `sha256sum` reading what we write to it.
fn hasher() -> std::process::Child {
    Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) runs")
}

fn digest(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The bytes of chunk `i`: one random block, marked with the chunk's number so
/// that a chunk written in the wrong place changes the checksum.
fn chunk_bytes(block: &mut [u8], i: usize) {
    block[..8].copy_from_slice(&(i as u64).to_le_bytes());
}

#[test]
fn a_gib_round_trips_byte_for_byte_with_flat_memory() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let id = format!("/{d}/{}/gib.bin", s.dir);
    let (url, token) = create_upload(&stack, ALICE, &id, "REJECT");
    let (host, target) = split_url(&url);
    let mut block = vec![0u8; CHUNK_16MB];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut block)
        .unwrap();

    // Upload: 16 MB chunks on one keep-alive connection, as a browser sends them.
    let sampler = Sampler::start(uid_of(&alice));
    let mut sent = hasher();
    let mut conn = TcpStream::connect(&host).unwrap();
    let gateway = gateway_of(&conn);
    let started = std::time::Instant::now();
    let mut offset = 0;
    for i in 0.. {
        if offset == GIB {
            break;
        }
        let n = CHUNK_16MB.min(GIB - offset);
        chunk_bytes(&mut block, i);
        sent.stdin.as_mut().unwrap().write_all(&block[..n]).unwrap();
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {n}\r\n\
             Chunked-Upload-Token: {token}\r\nChunked-Upload-Offset: {offset}\r\n\
             Chunked-Upload-Total-Size: {GIB}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&block[..n]).unwrap();
        let a = read_answer(&mut conn);
        assert_eq!(
            a.status,
            200,
            "chunk {i}: {}",
            String::from_utf8_lossy(&a.body)
        );
        offset += n;
        assert_eq!(a.json()["offset"], offset);
    }
    let up_secs = started.elapsed().as_secs_f64();
    let (_, _, gateway_hwm) = proc_status(&gateway).expect("the gateway is still serving us");
    drop(conn);
    let uploaded = sampler.finish();
    let sent = digest(sent);
    assert_eq!(
        std::fs::metadata(s.local("gib.bin")).unwrap().len(),
        GIB as u64
    );
    assert_eq!(owner(&s.local("gib.bin")), uid_of(&alice));

    // Download through the chain, hashed as it arrives.
    let sampler = Sampler::start(uid_of(&alice));
    let (st, body) = create_download(&stack, ALICE, &id);
    assert_eq!(st, 200, "{body}");
    let url = body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let (host, target) = split_url(&url);
    let mut conn = TcpStream::connect(&host).unwrap();
    let download_gateway = gateway_of(&conn);
    let started = std::time::Instant::now();
    conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {GIB}\r\n")),
        "{head}"
    );
    let mut got = hasher();
    let mut left = GIB;
    while left > 0 {
        let n = conn.read(&mut block[..left.min(CHUNK_16MB)]).unwrap();
        assert!(n > 0, "the download ended {left} bytes early");
        got.stdin.as_mut().unwrap().write_all(&block[..n]).unwrap();
        left -= n;
    }
    let down_secs = started.elapsed().as_secs_f64();
    let (_, _, download_gateway_hwm) =
        proc_status(&download_gateway).expect("the gateway is still serving us");
    drop(conn);
    let downloaded = sampler.finish();
    assert_eq!(
        digest(got),
        sent,
        "the download is the upload, byte for byte"
    );
    eprintln!(
        "1 GiB: upload {:.0} MB/s, download {:.0} MB/s; gateway peak {} / {} KiB",
        GIB as f64 / up_secs / 1e6,
        GIB as f64 / down_secs / 1e6,
        gateway_hwm,
        download_gateway_hwm
    );

    for (what, hwm) in [("upload", gateway_hwm), ("download", download_gateway_hwm)] {
        assert!(
            hwm > 0 && hwm < FLAT_KIB,
            "the gateway's peak memory during the {what} was {hwm} KiB (bound {FLAT_KIB})"
        );
    }
    for (what, seen) in [("upload", &uploaded), ("download", &downloaded)] {
        let top = seen.iter().max_by_key(|(_, _, hwm)| *hwm);
        eprintln!(
            "{what}: {} processes sampled, highest peak {top:?}",
            seen.len()
        );
        assert!(
            seen.iter().any(|(_, _, hwm)| *hwm > 0),
            "no plugin process of the {what} was sampled"
        );
        for (pid, name, hwm) in seen.iter() {
            assert!(
                *hwm < FLAT_KIB,
                "{name} (pid {pid}) peaked at {hwm} KiB during the {what} (bound {FLAT_KIB})"
            );
        }
    }
}

// ---- a full disk ------------------------------------------------------------

/// An 8 MiB tmpfs owned by `user`, entered in the drive table as drive `id` of
/// `ucloud`; all of it undone on drop.
struct SmallDrive {
    mount: String,
    entry: String,
}

impl SmallDrive {
    fn new(stack: &Stack, ucloud: &str, user: &str, id: &str) -> SmallDrive {
        SmallDrive::with_mode(stack, ucloud, user, id, "0700")
    }

    /// The same with its top directory's mode (`0777`: others may write there).
    fn with_mode(stack: &Stack, ucloud: &str, user: &str, id: &str, mode: &str) -> SmallDrive {
        let mount = format!("/tmp/{id}");
        std::fs::create_dir(&mount).unwrap();
        let gid = String::from_utf8(
            Command::new("id")
                .args(["-g", user])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let options = format!(
            "size=8m,mode={mode},uid={},gid={}",
            uid_of(user),
            gid.trim()
        );
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "ucim-test-full", &mount])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -t tmpfs -o {options} {mount} (the tests run as root)"
        );
        let entry = stack
            .prefix()
            .join(format!("var/lib/ucloud-im/drives/{id}"))
            .to_string_lossy()
            .into_owned();
        let drive = json!({"id": id, "ucloud": ucloud, "local": user, "base": mount,
            "kind": "scratch", "title": "Small scratch"});
        std::fs::write(&entry, drive.to_string()).unwrap();
        SmallDrive { mount, entry }
    }

    /// Names in the drive's top directory, hidden ones included.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.mount)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for SmallDrive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.entry);
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

#[test]
fn a_full_disk_refuses_clearly_and_keeps_nothing_half_written() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let id = unique("ucim-full");
    let small = SmallDrive::new(&stack, ALICE, &alice, &id);

    // 12 MB into 8 MiB: refused at the first chunk, with CORS for the browser.
    let target = format!("/{id}/big.bin");
    let (url, token) = create_upload(&stack, ALICE, &target, "REJECT");
    let data = vec![7u8; 4_000_000];
    let a = chunk(&url, &token, 0, 12_000_000, &data);
    assert_eq!(a.status, 507, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["errorCode"], "DISK_FULL");
    assert!(
        a.json()["why"].as_str().unwrap().contains("do not fit"),
        "{}",
        a.json()
    );
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        small.names(),
        Vec::<String>::new(),
        "no target, no partial file"
    );

    // What fits is taken whole.
    let (url, token) = create_upload(&stack, ALICE, &format!("/{id}/three.bin"), "REJECT");
    let three = vec![3u8; 3_000_000];
    let a = chunk(&url, &token, 0, three.len(), &three);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        std::fs::read(format!("{}/three.bin", small.mount)).unwrap(),
        three
    );

    // A bulk copy: item 1 fits (6 MB), item 2 does not (9 MB): both undone.
    let (st, body) = api(
        &stack,
        ALICE,
        "POST",
        "files/copy",
        items(vec![
            json!({"oldId": format!("/{id}/three.bin"), "newId": format!("/{id}/c1.bin"), "conflictPolicy": "REJECT"}),
            json!({"oldId": format!("/{id}/three.bin"), "newId": format!("/{id}/c2.bin"), "conflictPolicy": "REJECT"}),
        ]),
    );
    refused(st, &body, 507, "a copy past the end of the disk");
    assert_eq!(body["errorCode"], "DISK_FULL");
    assert_eq!(
        small.names(),
        vec!["three.bin".to_string()],
        "both copies undone"
    );

    // A 6 MB upload into the 5 MiB left is refused at its first chunk (its rest is
    // checked against the free space then), and goes through once space is freed.
    let (url, token) = create_upload(&stack, ALICE, &format!("/{id}/six.bin"), "REJECT");
    let six = vec![6u8; 6_000_000];
    let a = chunk(&url, &token, 0, six.len(), &six[..2_000_000]);
    assert_eq!(a.status, 507, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(small.names(), vec!["three.bin".to_string()]);
    std::fs::remove_file(format!("{}/three.bin", small.mount)).unwrap();
    let a = chunk(&url, &token, 0, six.len(), &six[..2_000_000]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = chunk(&url, &token, -1, six.len(), &six[2_000_000..]);
    assert_eq!(a.json()["complete"], true, "{}", a.json());
    assert_eq!(
        std::fs::read(format!("{}/six.bin", small.mount)).unwrap(),
        six
    );
}

/// `user`'s upload session whose item is `target` (its file in the user's state
/// directory) and the session's jti, which names the upload's partial files.
fn session_of(user: &str, target: &str) -> (String, String) {
    let dir = format!("{}/.local/state/ucloud-im/transfers", home_of(user));
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(jti) = name.strip_suffix(".json") else {
            continue;
        };
        if std::fs::read_to_string(entry.path()).is_ok_and(|t| t.contains(target)) {
            return (entry.path().to_string_lossy().into_owned(), jti.to_string());
        }
    }
    panic!("no upload session for {target} in {dir}");
}

/// One byte of an upload that declares 6 MB holds one byte of the disk, not 6 MB,
/// so a client cannot take the space by declaring a size and going away; and once
/// its session has expired the next transfer call removes what it left.
#[test]
fn an_unfinished_upload_holds_only_what_came_and_goes_when_it_expires() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let id = unique("ucim-hold");
    let small = SmallDrive::new(&stack, ALICE, &alice, &id);

    let target = format!("/{id}/declared.bin");
    let (url, token) = create_upload(&stack, ALICE, &target, "REJECT");
    let a = chunk(&url, &token, 0, 6_000_000, b"x");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let partials = || -> Vec<String> {
        small
            .names()
            .into_iter()
            .filter(|n| n.starts_with(".ucloud-im-upload-"))
            .collect()
    };
    assert_eq!(partials().len(), 1, "{:?}", small.names());
    // The 8 MiB drive still takes another 6 MB file whole.
    let (url2, token2) = create_upload(&stack, ALICE, &format!("/{id}/six.bin"), "REJECT");
    let six = vec![6u8; 6_000_000];
    let a = chunk(&url2, &token2, 0, six.len(), &six);
    assert_eq!(
        a.status,
        200,
        "an upload of one byte held the space it declared: {}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["complete"], true);
    // The declared size must still fit the space left: refused at once.
    let a = chunk(&url, &token, 1, 6_000_000, b"y");
    assert_eq!(a.status, 507, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        a.json()["why"].as_str().unwrap().contains("do not fit"),
        "{}",
        a.json()
    );

    // 48 hours pass: the session's expiry moves into the past (as the token's
    // would), and the next transfer call of Alice's removes the partial file.
    let (file, _) = session_of(&alice, &target);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut session: Value = serde_json::from_str(&text).unwrap();
    session["exp"] = json!(1);
    as_user(
        &alice,
        &format!("printf '%s' '{session}' > {file}.new && mv {file}.new {file}"),
    );
    assert_eq!(partials().len(), 1, "kept while its session lasts");
    create_upload(&stack, ALICE, &format!("/{id}/later.bin"), "REJECT");
    assert_eq!(
        partials(),
        Vec::<String>::new(),
        "the expired upload's partial file is gone"
    );
    assert!(!exists(&file), "and its session");
}

/// In a folder others may write, another user can put a file under the name of an
/// upload's partial file, before the upload starts or in place of it half-way.
/// The upload must never write into a file that is not its own: that user would
/// read the bytes, and own the finished file.
#[test]
fn an_upload_never_writes_into_a_partial_file_another_user_put_there() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let bob = stack.local_of(BOB);
    let id = unique("ucim-shared");
    let shared = SmallDrive::with_mode(&stack, ALICE, &alice, &id, "0777");
    let as_bob = |script: &str| {
        let out = run_as(&bob, &["sh", "-c", script]);
        assert!(
            out.status.success(),
            "as {bob}: {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let secret = b"alice's secret!!";

    // Before the first chunk (the name leaked with the link).
    let target = format!("/{id}/first.bin");
    let (url, token) = create_upload(&stack, ALICE, &target, "REJECT");
    let (_, jti) = session_of(&alice, &target);
    let planted = format!("{}/.ucloud-im-upload-{}-0", shared.mount, &jti[..32]);
    as_bob(&format!("umask 0; : > {planted}"));
    let a = chunk(&url, &token, 0, secret.len(), secret);
    assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        a.json()["why"]
            .as_str()
            .unwrap()
            .contains("not this upload's own"),
        "{}",
        a.json()
    );
    assert_eq!(
        std::fs::read(&planted).unwrap(),
        b"",
        "nothing written into it"
    );
    assert!(!exists(&format!("{}/first.bin", shared.mount)));
    assert_eq!(owner(&planted), uid_of(&bob));

    // Half-way: Bob sees the partial file, removes it, and puts his own of the
    // same length in its place.
    let target = format!("/{id}/second.bin");
    let (url, token) = create_upload(&stack, ALICE, &target, "REJECT");
    let a = chunk(&url, &token, 0, secret.len(), &secret[..8]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let (_, jti) = session_of(&alice, &target);
    let partial = format!("{}/.ucloud-im-upload-{}-0", shared.mount, &jti[..32]);
    assert_eq!(owner(&partial), uid_of(&alice));
    as_bob(&format!(
        "rm -f {partial} && umask 0 && head -c 8 /dev/zero > {partial}"
    ));
    let a = chunk(&url, &token, 8, secret.len(), &secret[8..]);
    assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        std::fs::read(&partial).unwrap(),
        vec![0u8; 8],
        "nothing written into Bob's file"
    );
    assert!(!exists(&format!("{}/second.bin", shared.mount)));
}

// --- WEBSOCKET_V1 uploads ----------------------------------------------------

/// A WEBSOCKET_V1 upload link for `target`, as path and query on the direct gateway.
fn websocket_upload(stack: &Stack, target: &str, policy: &str) -> String {
    let (st, body) = api(
        stack,
        ALICE,
        "POST",
        "files/upload",
        items(vec![json!({"id": target, "type": "FILE",
            "supportedProtocols": ["WEBSOCKET_V1"], "conflictPolicy": policy})]),
    );
    assert_eq!(st, 200, "{body}");
    let response = &body["responses"][0];
    assert_eq!(response["protocol"], "WEBSOCKET_V1", "{body}");
    let endpoint = response["endpoint"].as_str().unwrap();
    // The stack's public URL is the balancer's (https): the link is wss.
    let rest = endpoint
        .strip_prefix("wss://")
        .unwrap_or_else(|| panic!("not a wss:// link: {endpoint}"));
    format!("/{}", rest.split_once('/').unwrap().1)
}

/// Reads server frames until the close frame: the text messages, and the close
/// code and reason.
fn until_close(stream: &mut TcpStream) -> (Vec<String>, u16, String) {
    let mut texts = Vec::new();
    loop {
        let (opcode, payload) = ws_server_frame(stream).expect("a frame before the close");
        match opcode {
            0x1 => texts.push(String::from_utf8(payload).unwrap()),
            0x8 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (
                    texts,
                    code,
                    String::from_utf8_lossy(&payload[2..]).into_owned(),
                );
            }
            _ => {}
        }
    }
}

#[test]
fn a_websocket_upload_is_written_as_the_user_and_resumes_after_a_break() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let target = format!("/{d}/{}/ws.bin", s.dir);
    let link = websocket_upload(&stack, &target, "REJECT");
    let data: Vec<u8> = (0..40_000_000u32).map(|i| (i % 251) as u8).collect();
    let total = data.len();

    // A first connection breaks off after 20 MB, having been told of 16 MiB on disk.
    let (head, mut ws) = ws_connect(&stack, &link, "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(&ws_client_frame(0x1, format!("0 {total}").as_bytes()))
        .unwrap();
    for piece in data[..20_000_000].chunks(4_000_000) {
        ws.write_all(&ws_client_frame(0x2, piece)).unwrap();
    }
    let (opcode, told) = ws_server_frame(&mut ws).unwrap();
    assert_eq!(opcode, 0x1);
    let told: usize = String::from_utf8(told).unwrap().parse().unwrap();
    assert_eq!(told, 16 << 20, "the first count of bytes on disk");
    drop(ws);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !exists(&s.local("ws.bin")),
        "the target appeared half-written"
    );

    // The second resumes from what it was told, and completes the file.
    let (head, mut ws) = ws_connect(&stack, &link, "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(&ws_client_frame(0x1, format!("{told} {total}").as_bytes()))
        .unwrap();
    for piece in data[told..].chunks(3_000_000) {
        ws.write_all(&ws_client_frame(0x2, piece)).unwrap();
    }
    let (texts, code, why) = until_close(&mut ws);
    assert_eq!((code, why.as_str()), (1000, "complete"), "{texts:?}");
    assert_eq!(
        texts.last().map(String::as_str),
        Some(total.to_string().as_str())
    );
    assert!(
        std::fs::read(s.local("ws.bin")).unwrap() == data,
        "the file came out changed"
    );
    assert_eq!(owner(&s.local("ws.bin")), uid_of(&alice));
    let leftovers = as_user(&alice, &format!("find {} -name '.ucloud-im-*'", s.dir));
    assert_eq!(leftovers.trim(), "", "transient entries left");
}

#[test]
fn hostile_websocket_uploads_are_closed_with_a_reason_and_write_nothing() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let target = format!("/{d}/{}/hostile.bin", s.dir);
    let link = websocket_upload(&stack, &target, "REJECT");
    let cases: Vec<(Vec<Vec<u8>>, u16, &str)> = vec![
        (
            vec![ws_client_frame(0x1, b"zero 10")],
            1008,
            "first message must be",
        ),
        (
            vec![ws_client_frame(0x1, b"11 10")],
            1008,
            "first message must be",
        ),
        (
            vec![ws_client_frame(0x2, b"bytes first")],
            1003,
            "first message must be",
        ),
        (
            vec![ws_client_frame(0x1, b"5 10")],
            1008,
            "past the 0 bytes on disk",
        ),
        (
            vec![
                ws_client_frame(0x1, b"0 4"),
                ws_client_frame(0x1, b"more text"),
            ],
            1003,
            "binary",
        ),
    ];
    for (frames, want, why_contains) in cases {
        let (head, mut ws) = ws_connect(&stack, &link, "");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        for frame in frames {
            ws.write_all(&frame).unwrap();
        }
        let (_, code, why) = until_close(&mut ws);
        assert_eq!(code, want, "{why}");
        assert!(why.contains(why_contains), "{why}");
    }
    // A token altered in its last character keeps its shape, so the gateway starts
    // the dispatcher, which refuses it: an HTTP refusal, never a WebSocket.
    let token_end = link.find("token=").unwrap() + "token=".len();
    let token_len = link[token_end..]
        .find('&')
        .unwrap_or(link.len() - token_end);
    let last = token_end + token_len - 1;
    let flipped = if &link[last..=last] == "A" { "B" } else { "A" };
    let altered = format!("{}{flipped}{}", &link[..last], &link[last + 1..]);
    let (head, _) = ws_connect(&stack, &altered, "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    // A token that is not even a token's shape never starts a dispatcher.
    let (head, _) = ws_connect(&stack, &link.replacen("token=", "token=x", 1), "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(!exists(&s.local("hostile.bin")));
    let leftovers = as_user(&alice, &format!("find {} -name '.ucloud-im-*'", s.dir));
    assert_eq!(leftovers.trim(), "", "partial files left");
}

#[test]
fn an_empty_file_uploads_over_a_websocket_too() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = Scratch::new(&alice);
    let link = websocket_upload(&stack, &format!("/{d}/{}/empty.bin", s.dir), "REJECT");
    let (head, mut ws) = ws_connect(&stack, &link, "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(&ws_client_frame(0x1, b"0 0")).unwrap();
    let (texts, code, why) = until_close(&mut ws);
    assert_eq!((code, why.as_str()), (1000, "complete"), "{texts:?}");
    assert_eq!(texts, ["0"]);
    assert_eq!(std::fs::metadata(s.local("empty.bin")).unwrap().len(), 0);
    assert_eq!(owner(&s.local("empty.bin")), uid_of(&alice));
}
