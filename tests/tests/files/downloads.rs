//! Download links: streamed with length, disposition, CORS and ranges, directly and
//! through the balancer.

use super::*;

#[test]
fn downloads_stream_with_length_disposition_cors_and_range() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "files");
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
    let s = ScratchDir::new(&alice, "files");
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
