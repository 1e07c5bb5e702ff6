//! WEBSOCKET_V1 uploads: written as the user, resumed after a break, hostile ones
//! closed with a reason.

use super::*;

// --- WEBSOCKET_V1 uploads ----------------------------------------------------

/// A WEBSOCKET_V1 upload link for `target`, as path and query on the direct gateway.
fn websocket_upload(stack: &Stack, target: &str, policy: &str) -> String {
    let (st, body) = post_one(
        stack,
        ALICE,
        "files/upload",
        json!({"id": target, "type": "FILE",
            "supportedProtocols": ["WEBSOCKET_V1"], "conflictPolicy": policy}),
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
    let s = ScratchDir::new(&alice, "files");
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
    let s = ScratchDir::new(&alice, "files");
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
    let s = ScratchDir::new(&alice, "files");
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
