//! A drive that fills up: a clear refusal, nothing half written left behind.

use super::*;

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
