use super::*;
use crate::ucloud::BROWSE_SSH_KEYS;
use ucloud_wire::outbox::Method;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fn name() -> UcloudName {
    UcloudName::new("DonnaJensen#4512").unwrap()
}

fn key(id: &str, owner: &str, key: &str) -> Value {
    json!({"id": id, "owner": owner, "createdAt": 1, "fingerprint": "",
           "specification": {"title": "t", "key": key}})
}

fn scratch(tag: &str) -> Replies {
    let dir = std::env::temp_dir().join(format!(
        "registry-ssh-{tag}-{}-{}",
        std::process::id(),
        ucloud_wire::now_ms()
    ));
    for sub in [outbox::TMP, outbox::QUEUE, outbox::REPLIES, outbox::FAILED] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    Replies { dir }
}

fn put_reply(r: &Replies, value: &Value) {
    std::fs::write(r.reply_path(&name()), value.to_string()).unwrap();
}

#[test]
fn the_question_is_gos_request_and_the_tag_names_the_user() {
    let m = browse(&name(), None);
    assert_eq!((m.method, m.path.as_str()), (Method::Post, BROWSE_SSH_KEYS));
    assert_eq!(m.body, json!({"itemsPerPage": 250, "next": null}));
    assert_eq!(
        m.reply.as_deref(),
        Some("ssh-446f6e6e614a656e73656e2334353132")
    );
    assert_eq!(browse(&name(), Some("31")).body["next"], "31");
    // The longest name still makes a tag the outbox takes.
    let long = UcloudName::new(&"x".repeat(ucloud_wire::names::UCLOUD_NAME_MAX)).unwrap();
    assert!(ssh_tag(&long).len() <= outbox::MAX_TAG);
}

#[test]
fn only_the_connecting_users_keys_are_kept() {
    let page = json!({"items": [key("1", "DonnaJensen#4512", KEY), key("2", "Mallory#1", KEY),
                                key("3", "donnajensen#4512", KEY)], "next": null});
    let (mine, next) = parse_page(&page, &name()).unwrap();
    assert_eq!(
        mine,
        vec![json!({"id": "1", "specification": {"key": KEY}})]
    );
    assert_eq!(next, None);
    for bad in [
        json!({}),
        json!({"items": {}}),
        json!({"items": [], "next": 5}),
        json!({"items": [], "next": "x".repeat(65)}),
    ] {
        assert!(parse_page(&bad, &name()).is_err(), "{bad}");
    }
}

#[test]
fn a_hostile_key_hands_over_nothing() {
    let good = json!({"id": "1", "specification": {"key": KEY}});
    assert_eq!(check(vec![good.clone()]), Fetched::Keys(vec![good.clone()]));
    for bad in [
        format!("{KEY}\nssh-ed25519 AAAA"),
        format!("command=\"sh\" {KEY}"),
        format!("{KEY} # END ucloud-im"),
        format!("{KEY}\0"),
    ] {
        let keys = vec![
            good.clone(),
            json!({"id": "2", "specification": {"key": bad}}),
        ];
        assert!(matches!(check(keys), Fetched::Unavailable(_)), "{bad:?}");
    }
    // More than ucloud-connect reads in one answer: none.
    let long = format!("{KEY} {}", "c".repeat(8000));
    let many: Vec<Value> = (1..=300)
        .map(|i| json!({"id": i.to_string(), "specification": {"key": long}}))
        .collect();
    assert!(matches!(check(many), Fetched::Unavailable(ref w) if w.contains("bytes")));
}

#[test]
fn pages_are_followed_and_answers_used_once() {
    let r = scratch("pages");
    put_reply(
        &r,
        &json!({"items": [key("1", name().as_str(), KEY)], "next": "1"}),
    );
    let mut asked = Vec::new();
    let fetched = r.collect(&name(), Instant::now() + Duration::from_secs(5), |m| {
        asked.push(m.body.clone());
        // The sender's answer to the next page.
        put_reply(&r, &json!({"items": [key("2", name().as_str(), KEY), key("3", "Other#2", KEY)], "next": null}));
        Ok(())
    });
    assert_eq!(asked, vec![json!({"itemsPerPage": 250, "next": "1"})]);
    let Fetched::Keys(keys) = fetched else {
        panic!("{fetched:?}")
    };
    assert_eq!(keys.len(), 2);
    assert!(!r.reply_path(&name()).exists(), "an answer is read once");
    std::fs::remove_dir_all(&r.dir).unwrap();
}

#[test]
fn no_answer_or_a_refusal_ends_the_wait() {
    let r = scratch("refused");
    let started = Instant::now();
    let none = r.collect(&name(), Instant::now() + Duration::from_millis(300), |_| {
        Ok(())
    });
    assert!(
        matches!(none, Fetched::Unavailable(ref w) if w.contains("in time")),
        "{none:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The core of today answers 404: the sender moves the question to failed/.
    let failed = r.dir.join(outbox::FAILED);
    // Links and FIFOs planted by the outbox group are neither followed nor waited on.
    std::os::unix::fs::symlink("/dev/zero", failed.join("0-0-0.json")).unwrap();
    nix::unistd::mkfifo(
        &failed.join("0-0-1.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let started = Instant::now();
    let none = r.collect(&name(), Instant::now() + Duration::from_millis(300), |_| {
        Ok(())
    });
    assert!(matches!(none, Fetched::Unavailable(_)), "{none:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let message = json!({"path": BROWSE_SSH_KEYS, "body": {}, "reply": ssh_tag(&name())});
    std::fs::write(failed.join("1-2-3.json"), message.to_string()).unwrap();
    std::fs::write(failed.join("1-2-3.response"), r#"{"status":404,"body":{}}"#).unwrap();
    std::fs::write(
        failed.join("1-2-4.json"),
        r#"{"path":"/x","reply":"drive-1"}"#,
    )
    .unwrap();
    let refused = r.collect(&name(), Instant::now() + Duration::from_secs(5), |_| Ok(()));
    assert!(
        matches!(refused, Fetched::Unavailable(ref w) if w.contains("404")),
        "{refused:?}"
    );
    assert!(!failed.join("1-2-3.json").exists() && !failed.join("1-2-3.response").exists());
    assert!(
        failed.join("1-2-4.json").exists(),
        "another's failure stays"
    );
    // A reply that is a link, or not JSON, is no list of keys.
    std::os::unix::fs::symlink("/etc/passwd", r.reply_path(&name())).unwrap();
    assert!(matches!(
        r.collect(&name(), Instant::now(), |_| Ok(())),
        Fetched::Unavailable(_)
    ));
    std::fs::remove_file(r.reply_path(&name())).unwrap();
    nix::unistd::mkfifo(
        &r.reply_path(&name()),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(matches!(
        r.collect(&name(), Instant::now(), |_| Ok(())),
        Fetched::Unavailable(_)
    ));
    std::fs::remove_file(r.reply_path(&name())).unwrap();
    put_reply(&r, &json!("not a page"));
    assert!(matches!(
        r.collect(&name(), Instant::now(), |_| Ok(())),
        Fetched::Unavailable(_)
    ));
    std::fs::remove_dir_all(&r.dir).unwrap();
}
