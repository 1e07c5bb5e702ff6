//! The file calls through the whole chain, as the mapped users, on real files:
//! folder, move, copy, trash, delete with their conflict policies and bulk
//! undo; downloads and chunked uploads over the data channel (raw HTTP here, as a
//! browser would send it), including hostile tokens and broken-off uploads.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use ucloud_im_tests::{run_as, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

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
    assert_eq!(body["responses"][0]["id"], format!("{base}/new"));
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
    assert_eq!(
        (st, body["responses"][0]["id"].clone()),
        (200, json!(format!("{base}/new(1)")))
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
    assert_eq!(
        (st, body["responses"][0]["id"].clone()),
        (200, json!(format!("{base}/new/src(1)")))
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
    let in_trash = body["responses"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(in_trash, format!("/{d}/Trash/{name}"));
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

/// `http://host:port/path?query` → (host:port, /path?query).
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .expect("the stack's public URL is plain http");
    let i = rest.find('/').unwrap();
    (rest[..i].to_string(), rest[i..].to_string())
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
        url.starts_with(&stack.get("UCLOUD_IM_GATEWAY_URL")),
        "link under the public URL: {url}"
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
