//! The file calls through the whole chain, as the mapped users, on real files:
//! folder, move, copy, trash, delete with their conflict policies and bulk
//! undo; downloads and chunked uploads over the data channel, including hostile
//! tokens and broken-off uploads. The links point at the public URL, the balancer
//! (https); one test follows them as given with curl, the others speak raw HTTP/1.1
//! to the direct gateway behind it (the same program), so that every byte on the
//! wire is theirs to shape.
#![forbid(unsafe_code)]

mod downloads;
mod folder_uploads;
mod full_disk;
mod isolation;
mod large_files;
mod operations;
mod search;
mod shares;
mod uploads;
mod websocket_uploads;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use ucloud_im_tests::{
    as_user, home_of, run_as, uid_of, unique, ws_client_frame, ws_connect, ws_server_frame,
    ScratchDir, Stack,
};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn api(stack: &Stack, user: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let p = format!("/ucloud/{}/{path}", stack.get("UCLOUD_IM_PROVIDER"));
    stack.call(Some(user), method, &p, Some(&body.to_string()))
}

/// A bulk call (POST) of one item.
fn post_one(stack: &Stack, user: &str, path: &str, item: Value) -> (u16, Value) {
    api(stack, user, "POST", path, items(vec![item]))
}

/// A copy or move (`call`: files/copy or files/move) as Alice, of `from` to `to`,
/// both under the folder `base`.
fn relocate(
    stack: &Stack,
    call: &str,
    base: &str,
    from: &str,
    to: &str,
    policy: &str,
) -> (u16, Value) {
    let item = json!({
        "oldId": format!("{base}/{from}"),
        "newId": format!("{base}/{to}"),
        "conflictPolicy": policy,
    });
    post_one(stack, ALICE, call, item)
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
    post_one(stack, user, "files/download", json!({"id": id}))
}

fn create_upload(stack: &Stack, user: &str, id: &str, policy: &str) -> (String, String) {
    let (st, body) = post_one(
        stack,
        user,
        "files/upload",
        json!({
        "id": id, "type": "FILE", "supportedProtocols": ["CHUNKED"], "conflictPolicy": policy}),
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
