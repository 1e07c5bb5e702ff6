//! Chunked uploads: resumed, bad chunks refused, the file appearing whole; an
//! unfinished one expires; another user's partial file is never written into.

use super::*;

/// A client that sends the head of a 1,000,000-byte chunk at the resume point and
/// `part` of its body, then vanishes.
fn vanish_mid_chunk(url: &str, token: &str, total: usize, part: &[u8]) {
    let (host, target) = split_url(url);
    let mut conn = TcpStream::connect(&host).unwrap();
    let head = format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\
        Chunked-Upload-Token: {token}\r\nChunked-Upload-Offset: -1\r\nChunked-Upload-Total-Size: {total}\r\n\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(part).unwrap();
}

/// Waits (10 s at most) until the upload takes a chunk at `offset` again.
fn wait_for_resume_point(url: &str, token: &str, offset: i64, total: usize) {
    let started = std::time::Instant::now();
    loop {
        let probe = chunk(url, token, offset, total, &[]);
        if probe.status == 200 || started.elapsed().as_secs() > 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The size of the first partial file `find` listed (relative to `user`'s home),
/// 0 for none.
fn partial_size(user: &str, listing: &str) -> u64 {
    listing
        .trim()
        .lines()
        .next()
        .map(|f| {
            std::fs::metadata(format!("{}/{f}", home_of(user)))
                .unwrap()
                .len()
        })
        .unwrap_or(0)
}

#[test]
fn chunked_uploads_resume_refuse_bad_chunks_and_appear_whole() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let d = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "files");
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
    vanish_mid_chunk(&url, &token, total, &data[1_000_000..1_400_000]);
    // The plugin cuts the partial file back; wait for it (bounded), then resume.
    wait_for_resume_point(&url, &token, 1_000_000, total);
    let size = partial_size(&alice, &partial());
    assert_eq!(size, 1_000_000, "the broken chunk was cut off");
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
    let (st, body) = post_one(
        &stack,
        ALICE,
        "files/upload",
        json!({
        "id": id, "type": "FILE", "supportedProtocols": ["CHUNKED"], "conflictPolicy": "REJECT"}),
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
