//! Folder uploads (WEBSOCKET_V2) as UCloud's web client makes them, through the
//! balancer: a drop of files and a folder in one createUpload, the folder's files
//! over one WebSocket, a broken upload resumed, and hostile streams refused with
//! nothing left behind.

use super::*;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

const OK: u8 = 0;
const CHUNK: u8 = 2;
const SKIP: u8 = 3;
const LISTING: u8 = 4;
const COMPLETED: u8 = 5;

/// What the web client offers for every item of a drop.
const OFFER: [&str; 2] = ["CHUNKED", "WEBSOCKET"];

/// createUpload through the balancer, as the web client asks for a drop.
fn create(stack: &Stack, items: Vec<Value>) -> (u16, Value) {
    let path = format!("/ucloud/{}/files/upload", stack.get("UCLOUD_IM_PROVIDER"));
    let body = json!({ "items": items }).to_string();
    stack.call_public(Some(ALICE), "POST", &path, Some(&body))
}

fn folder_item(id: &str) -> Value {
    json!({"id": id, "type": "FOLDER", "supportedProtocols": OFFER, "conflictPolicy": "RENAME"})
}

/// One folder's WEBSOCKET_V2 link.
fn folder_link(stack: &Stack, id: &str) -> String {
    let (st, body) = create(stack, vec![folder_item(id)]);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["responses"][0]["protocol"], "WEBSOCKET_V2", "{body}");
    body["responses"][0]["endpoint"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A client frame, masked a word at a time (no loop per byte).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x3d, 0x91, 0x0e, 0x72];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    let start = f.len();
    f.extend_from_slice(payload);
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let body = &mut f[start..];
    let mut words = body.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes((&*w).try_into().unwrap()) ^ word;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    let tail = words.into_remainder();
    let tail_mask = &word.to_ne_bytes()[..tail.len()];
    tail.iter_mut().zip(tail_mask).for_each(|(b, m)| *b ^= m);
    f
}

/// A WebSocket to a `wss://` link through the balancer, TLS by `openssl s_client`
/// (verified against the stack's CA); server frames arrive on a channel.
struct Ws {
    child: Child,
    input: ChildStdin,
    frames: Receiver<(u8, Vec<u8>)>,
}

impl Ws {
    fn open(stack: &Stack, link: &str) -> (String, Ws) {
        let rest = link
            .strip_prefix("wss://")
            .unwrap_or_else(|| panic!("not a wss:// link: {link}"));
        let (authority, path) = rest.split_once('/').unwrap();
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-verify_return_error",
                "-connect",
                authority,
            ])
            .args(["-CAfile", &stack.get("UCLOUD_IM_CA")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let mut input = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let upgrade = format!(
            "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        input.write_all(upgrade.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if output.read_exact(&mut byte).is_err() {
                break;
            }
            head.push(byte[0]);
        }
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(f) = ws_server_frame(&mut output) {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        let head = String::from_utf8_lossy(&head).into_owned();
        (
            head,
            Ws {
                child,
                input,
                frames,
            },
        )
    }

    fn send(&mut self, payload: &[u8]) {
        self.input.write_all(&frame(0x2, payload)).unwrap();
    }

    fn next(&self) -> Option<(u8, Vec<u8>)> {
        self.frames.recv_timeout(Duration::from_secs(60)).ok()
    }

    /// The server's next binary message, as (opcode, number) pairs; panics on a close.
    fn answers(&self) -> Vec<(u8, u32)> {
        loop {
            let (op, payload) = self.next().expect("an answer");
            assert_ne!(op, 0x8, "closed: {}", close_reason(&payload));
            if op == 0x2 {
                assert_eq!(payload.len() % 5, 0, "{payload:?}");
                return payload
                    .chunks_exact(5)
                    .map(|m| (m[0], u32::from_be_bytes(m[1..5].try_into().unwrap())))
                    .collect();
            }
        }
    }

    /// The server's answers until `until` says stop.
    fn answers_until(&self, mut until: impl FnMut(u8, u32) -> bool) {
        loop {
            for (op, n) in self.answers() {
                if until(op, n) {
                    return;
                }
            }
        }
    }

    /// The close frame's code and reason (other frames skipped).
    fn close_frame(&self) -> (u16, String) {
        loop {
            let (op, payload) = self.next().expect("a close frame");
            if op == 0x8 {
                return (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    close_reason(&payload),
                );
            }
        }
    }

    fn close(mut self) -> (u16, String) {
        self.input
            .write_all(&frame(0x8, &1000u16.to_be_bytes()))
            .unwrap();
        let got = self.close_frame();
        let _ = self.child.kill();
        let _ = self.child.wait();
        got
    }

    /// The connection breaks (no close frame).
    fn cut(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn close_reason(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned()
}

/// One LISTING message of `(id, size, path)`.
fn listing(entries: &[(u32, usize, String)]) -> Vec<u8> {
    let mut m = vec![LISTING];
    for (id, size, path) in entries {
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&(*size as u64).to_be_bytes());
        m.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        m.extend_from_slice(&(path.len() as u32).to_be_bytes());
        m.extend_from_slice(path.as_bytes());
    }
    m
}

fn chunk_message(id: u32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![CHUNK];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(data);
    m
}

fn content(i: usize) -> Vec<u8> {
    let n = 1 + (i * 7919) % 70_000;
    (0..n).map(|k| ((k * 31 + i) % 251) as u8).collect()
}

/// A tree of `n` files in `dirs` subfolders (one file at the top too).
fn tree(n: usize, dirs: usize) -> Vec<(u32, usize, String)> {
    (0..n)
        .map(|i| {
            let path = if i == 0 {
                "top.txt".to_string()
            } else {
                format!("sub{:02}/f{i:03}.bin", i % dirs)
            };
            (i as u32, content(i).len(), path)
        })
        .collect()
}

/// Sends the files the server answers OK, as the web client does, until `count`
/// files are dealt with (the DONE count); returns the ids answered SKIP.
fn upload_tree(ws: &mut Ws, files: &[(u32, usize, String)], count: u32) -> Vec<u32> {
    ws.send(&listing(files));
    let mut skipped = Vec::new();
    let mut to_send = Vec::new();
    let mut done = 0;
    while done < count {
        for (op, n) in ws.answers() {
            match op {
                OK => to_send.push(n),
                SKIP => skipped.push(n),
                COMPLETED => done = n,
                other => panic!("opcode {other} from the server"),
            }
        }
        for id in to_send.drain(..) {
            ws.send(&chunk_message(id, &content(id as usize)));
        }
    }
    skipped
}

fn owner_of(path: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().uid()
}

/// Hidden partial files left anywhere below `dir`.
fn partials_below(dir: &str) -> Vec<String> {
    let out = Command::new("find")
        .args([dir, "-name", ".ucloud-im-*"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_drop_of_files_and_a_folder_arrives_whole_through_the_balancer() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "folder");
    let base = format!("/{d}/{}", s.dir);
    // Three files and a folder, in one call of four items, as the web client asks.
    let mut items: Vec<Value> = (0..3)
        .map(|i| {
            json!({"id": format!("{base}/file{i}.bin"), "type": "FILE",
                "supportedProtocols": OFFER, "conflictPolicy": "RENAME"})
        })
        .collect();
    items.push(folder_item(&format!("{base}/tree")));
    let (st, body) = create(&stack, items);
    assert_eq!(st, 200, "{body}");
    let r = body["responses"].as_array().unwrap();
    assert_eq!(r.len(), 4, "{body}");
    for answer in &r[..3] {
        assert_eq!(answer["protocol"], "CHUNKED", "{body}");
    }
    assert_eq!(r[3]["protocol"], "WEBSOCKET_V2", "{body}");
    let lb = stack.get("UCLOUD_IM_LB_URL");
    for answer in r {
        let endpoint = answer["endpoint"].as_str().unwrap();
        let rest = endpoint.split_once("://").unwrap().1;
        assert!(
            lb.ends_with(rest.split('/').next().unwrap()),
            "{endpoint} not at {lb}"
        );
    }

    // The files by CHUNKED, with curl through the balancer.
    let scratch = std::env::temp_dir().join(unique("ucim-folder"));
    std::fs::create_dir_all(&scratch).unwrap();
    for (i, answer) in r[..3].iter().enumerate() {
        let data = content(1000 + i);
        let file = scratch.join(format!("{i}"));
        std::fs::write(&file, &data).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert", &stack.get("UCLOUD_IM_CA")])
            .args([
                "-H",
                &format!(
                    "Chunked-Upload-Token: {}",
                    answer["token"].as_str().unwrap()
                ),
            ])
            .args(["-H", "Chunked-Upload-Offset: 0"])
            .args(["-H", &format!("Chunked-Upload-Total-Size: {}", data.len())])
            .args(["--data-binary", &format!("@{}", file.display())])
            .arg(answer["endpoint"].as_str().unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(s.local(&format!("file{i}.bin"))).unwrap(),
            data
        );
    }
    std::fs::remove_dir_all(&scratch).unwrap();

    // The folder: 200 files in 20 subfolders over one WebSocket.
    let files = tree(200, 20);
    let (head, mut ws) = Ws::open(&stack, r[3]["endpoint"].as_str().unwrap());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let skipped = upload_tree(&mut ws, &files, 200);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(ws.close(), (1000, "complete".to_string()));
    let uid = uid_of(&alice);
    for (id, _, path) in &files {
        let local = s.local(&format!("tree/{path}"));
        assert_eq!(
            std::fs::read(&local).unwrap(),
            content(*id as usize),
            "{path}"
        );
        assert_eq!(owner_of(&local), uid, "{path}");
    }
    assert_eq!(owner_of(&s.local("tree/sub07")), uid);
    assert!(partials_below(&s.local("tree")).is_empty());
}

#[test]
fn a_broken_folder_upload_leaves_no_partial_files_and_resumes() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "folder");
    let link = folder_link(&stack, &format!("/{d}/{}/resumed", s.dir));
    let files = tree(30, 3);

    // The first connection sends ten files whole and half of the eleventh, then breaks.
    let (head, mut ws) = Ws::open(&stack, &link);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.send(&listing(&files));
    let mut oks = 0;
    ws.answers_until(|op, _| {
        oks += (op == OK) as u32;
        oks == 30
    });
    for i in 0..10 {
        ws.send(&chunk_message(i, &content(i as usize)));
    }
    let half = content(10);
    ws.send(&chunk_message(10, &half[..half.len() / 2]));
    ws.answers_until(|op, n| op == COMPLETED && n == 10);
    ws.cut();
    std::thread::sleep(Duration::from_secs(2));
    assert!(partials_below(&s.local("resumed")).is_empty());
    assert!(!exists(&s.local(&format!("resumed/{}", files[10].2))));
    for (id, _, path) in &files[..10] {
        assert_eq!(
            std::fs::read(s.local(&format!("resumed/{path}"))).unwrap(),
            content(*id as usize)
        );
    }

    // The second announces the tree again: the ten are skipped, the rest sent.
    let (head, mut ws) = Ws::open(&stack, &link);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut skipped = upload_tree(&mut ws, &files, 30);
    skipped.sort();
    assert_eq!(skipped, (0..10).collect::<Vec<u32>>());
    assert_eq!(ws.close().0, 1000);
    for (id, _, path) in &files {
        assert_eq!(
            std::fs::read(s.local(&format!("resumed/{path}"))).unwrap(),
            content(*id as usize)
        );
    }
}

/// A hostile stream: refused with 1008 and a reason, nothing left behind.
fn refused(stack: &Stack, s: &ScratchDir, name: &str, messages: Vec<Vec<u8>>, why: &str) {
    let d = stack.drive_of(ALICE);
    let link = folder_link(stack, &format!("/{d}/{}/{name}", s.dir));
    let (head, mut ws) = Ws::open(stack, &link);
    assert!(head.starts_with("HTTP/1.1 101"), "{name}: {head}");
    for m in messages {
        ws.send(&m);
    }
    let (code, reason) = loop {
        let (op, payload) = ws.next().unwrap_or_else(|| panic!("{name}: no close"));
        if op == 0x8 {
            break (
                u16::from_be_bytes([payload[0], payload[1]]),
                close_reason(&payload),
            );
        }
        // Answers to what was fine before the hostile part: send the close then.
        if op == 0x2 && payload.first() == Some(&OK) && why.contains("of 10 bytes") {
            ws.input
                .write_all(&frame(0x8, &1000u16.to_be_bytes()))
                .unwrap();
        }
    };
    ws.cut();
    assert_eq!(code, 1008, "{name}: {reason}");
    assert!(
        reason.contains(why),
        "{name}: {reason:?} does not say {why:?}"
    );
    assert!(
        !exists(&s.local(name)),
        "{name}: the refused upload left {:?}",
        partials_below(&s.local(""))
    );
}

#[test]
fn hostile_folder_streams_are_refused_and_leave_nothing_behind() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let s = ScratchDir::new(&alice, "folder");
    let one = |path: &str| listing(&[(0, 3, path.to_string())]);
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        ("climb", vec![one("a/../../x")], "a . or .. component"),
        ("absolute", vec![one("/etc/x")], "an absolute path"),
        ("nul", vec![one("a\0b")], "NUL"),
        ("slash", vec![one("a//b")], "an empty name"),
        (
            "twice",
            vec![listing(&[(0, 3, "x".into()), (1, 3, "x".into())])],
            "announced twice",
        ),
        (
            "same-id",
            vec![
                listing(&[(0, 3, "x".into())]),
                listing(&[(0, 3, "y".into())]),
            ],
            "announced twice",
        ),
        (
            "more",
            vec![one("x"), chunk_message(0, b"abcd")],
            "more data than the 3 bytes announced",
        ),
        (
            "fewer",
            vec![listing(&[(0, 10, "x".into())]), chunk_message(0, b"abcde")],
            "x (5 of 10 bytes)",
        ),
        (
            "deep",
            vec![one(&format!("{}x", "d/".repeat(33)))],
            "folder_upload_max_depth",
        ),
        (
            "wide",
            vec![listing(
                &(0..10_001)
                    .map(|i| (i, 1, format!("w/{i}")))
                    .collect::<Vec<_>>(),
            )],
            "folder_upload_max_width",
        ),
        (
            "unknown",
            vec![one("x"), chunk_message(7, b"a")],
            "never announced",
        ),
    ];
    for (name, messages, why) in cases {
        refused(&stack, &s, name, messages, why);
    }
}
