use super::*;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A well-formed key of `kind` whose 32 bytes of key material are `seed`.
fn key_text(kind: &str, seed: u8) -> String {
    let mut blob = Vec::new();
    blob.extend_from_slice(&(kind.len() as u32).to_be_bytes());
    blob.extend_from_slice(kind.as_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(&[seed; 32]);
    format!(
        "{kind} {}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

fn ed(seed: u8) -> String {
    key_text("ssh-ed25519", seed)
}

fn keys(list: &[(&str, &str)]) -> serde_json::Value {
    json!(list
        .iter()
        .map(
            |(id, key)| json!({"id": id, "owner": "U#1", "createdAt": 0, "fingerprint": "",
                               "specification": {"title": "t", "key": key}})
        )
        .collect::<Vec<_>>())
}

struct Home(PathBuf);

impl Home {
    fn new(name: &str) -> Home {
        let dir = std::env::temp_dir().join(format!(
            "sshkeys-{name}-{}-{}",
            std::process::id(),
            crate::random_hex(4).unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Home(dir)
    }
    fn ak(&self) -> PathBuf {
        self.0.join(".ssh/authorized_keys")
    }
    fn read(&self) -> String {
        std::fs::read_to_string(self.ak()).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_plain_key_becomes_one_line_with_its_id() {
    let k = AuthorizedKey::parse("17", &format!("  {} alice@laptop  ", ed(1))).unwrap();
    assert_eq!(k.line(), format!("{} ucloud-key-17", ed(1)));
    for kind in KEY_TYPES {
        AuthorizedKey::parse("1", &key_text(kind, 2)).unwrap();
    }
}

#[test]
fn hostile_keys_are_refused() {
    let good = ed(3);
    let long = format!("{good} {}", "x".repeat(MAX_KEY_BYTES));
    let hostile = [
        format!("{good}\nssh-ed25519 AAAAC3Nza attacker"),
        format!("{good}\r\ncommand=\"sh\" {good}"),
        format!("{good}\0"),
        format!("{good}\tcomment"),
        format!("command=\"/bin/sh\" {good}"),
        format!("from=\"10.0.0.1\" {good}"),
        format!("restrict {good}"),
        format!("no-pty,{good}"),
        format!("{good} {END}"),
        format!("{good} x {BEGIN}"),
        format!("{good}\n{END}\nssh-ed25519 AAAA"),
        long,
        "ssh-ed25519".into(),
        "".into(),
        "ssh-ed25519 not*base64".into(),
        // The blob of another type, under this one's name.
        format!("ssh-rsa {}", good.split(' ').nth(1).unwrap()),
        // A certificate: the core's prefix match takes it, this does not.
        key_text("ssh-ed25519-cert-v01@openssh.com", 4),
        key_text("ssh-dss", 4),
        format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode([0xff; 3])
        ),
        format!("{good} \u{2028}"),
        format!("{good} \u{85}"),
    ];
    for bad in hostile {
        let refused = AuthorizedKey::parse("5", &bad);
        assert!(
            matches!(refused, Err(KeyError::Refused(_))),
            "{bad:?} accepted: {refused:?}"
        );
    }
    for id in ["", "a", "1\n", "../1", "-1", &"9".repeat(21)] {
        assert!(AuthorizedKey::parse(id, &good).is_err(), "id {id:?}");
    }
}

#[test]
fn one_bad_key_refuses_the_update() {
    assert_eq!(
        parse_all(&keys(&[("1", &ed(1)), ("2", &ed(2))]))
            .unwrap()
            .len(),
        2
    );
    // The same key twice is one line.
    assert_eq!(
        parse_all(&keys(&[("1", &ed(1)), ("2", &ed(1))]))
            .unwrap()
            .len(),
        1
    );
    assert_eq!(parse_all(&json!(null)).unwrap(), vec![]);
    for bad in [
        keys(&[("1", &ed(1)), ("2", &format!("{}\nx", ed(2)))]),
        json!([{"id": "1", "specification": {"key": 5}}]),
        json!([{"id": "1"}]),
        json!({"id": "1"}),
        json!("ssh-ed25519 AAAA"),
    ] {
        assert!(parse_all(&bad).is_err(), "{bad}");
    }
    let many: Vec<(String, String)> = (0..=MAX_KEYS).map(|i| (i.to_string(), ed(1))).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert!(parse_all(&keys(&many)).is_err());
}

fn parsed(ids: &[(&str, u8)]) -> Vec<AuthorizedKey> {
    ids.iter()
        .map(|(id, seed)| AuthorizedKey::parse(id, &ed(*seed)).unwrap())
        .collect()
}

#[test]
fn merge_touches_nothing_outside_the_block() {
    let mine = "# my own\nssh-ed25519 AAAAmine me@home\n\ncommand=\"backup\" ssh-rsa AAAA x\n";
    let one = merge(mine.as_bytes(), &parsed(&[("7", 7)])).unwrap();
    let text = String::from_utf8(one.clone()).unwrap();
    assert_eq!(
        text,
        format!("{mine}{BEGIN}\n{} ucloud-key-7\n{END}\n", ed(7))
    );
    // Replaced in place, with lines after it kept.
    let with_tail = format!("{text}tail-line\n");
    let two = merge(with_tail.as_bytes(), &parsed(&[("8", 8), ("9", 9)])).unwrap();
    assert_eq!(
        String::from_utf8(two.clone()).unwrap(),
        format!(
            "{mine}{BEGIN}\n{} ucloud-key-8\n{} ucloud-key-9\n{END}\ntail-line\n",
            ed(8),
            ed(9)
        )
    );
    // No keys: the block goes, the rest stays byte for byte.
    let none = merge(&two, &[]).unwrap();
    assert_eq!(
        String::from_utf8(none).unwrap(),
        format!("{mine}tail-line\n")
    );
    // A last line without its newline keeps it so.
    assert_eq!(merge(b"a\nb", &[]).unwrap(), b"a\nb");
    let added = merge(b"a\nb", &parsed(&[("1", 1)])).unwrap();
    assert!(added.starts_with(b"a\nb\n# BEGIN"));
    // Bytes that are not UTF-8, and CRLF lines, survive untouched.
    let odd = b"\xff\xfe junk\r\nssh-rsa AAAA\r\n";
    let merged = merge(odd, &parsed(&[("1", 1)])).unwrap();
    assert!(merged.starts_with(odd));
    assert_eq!(merge(&merged, &[]).unwrap(), odd);
}

#[test]
fn a_damaged_block_is_left_alone() {
    let k = parsed(&[("1", 1)]);
    for bad in [
        format!("{BEGIN}\nx\n"),
        format!("{END}\n{BEGIN}\n{END}\n"),
        format!("{BEGIN}\n{BEGIN}\n{END}\n"),
        format!("{BEGIN}\n{END}\n{BEGIN}\n{END}\n"),
        format!("a\n{END}\n"),
    ] {
        assert!(
            matches!(merge(bad.as_bytes(), &k), Err(KeyError::Unsafe(_))),
            "{bad:?}"
        );
    }
    // A line that merely starts like a marker is not one.
    let lookalike = "# BEGIN ucloud-imposter\n";
    assert!(merge(lookalike.as_bytes(), &k).is_ok());
}

#[test]
fn install_creates_replaces_and_removes() {
    let home = Home::new("install");
    assert_eq!(install(&home.0, &[]).unwrap(), Installed::Nothing);
    assert!(!home.0.join(".ssh").exists(), "nothing made for no keys");
    assert_eq!(
        install(&home.0, &parsed(&[("1", 1)])).unwrap(),
        Installed::Written(1)
    );
    let dir = std::fs::metadata(home.0.join(".ssh")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    let file = std::fs::metadata(home.ak()).unwrap();
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    assert!(home.read().contains("ucloud-key-1"));
    // The user's own lines stay; an old group-readable file comes back 0600.
    let own = format!("ssh-ed25519 AAAAown me\n{}", home.read());
    std::fs::write(home.ak(), &own).unwrap();
    std::fs::set_permissions(home.ak(), std::fs::Permissions::from_mode(0o644)).unwrap();
    install(&home.0, &parsed(&[("2", 2)])).unwrap();
    let now = home.read();
    assert!(now.starts_with("ssh-ed25519 AAAAown me\n"));
    assert!(now.contains("ucloud-key-2") && !now.contains("ucloud-key-1"));
    assert_eq!(std::fs::metadata(home.ak()).unwrap().mode() & 0o777, 0o600);
    install(&home.0, &[]).unwrap();
    assert_eq!(home.read(), "ssh-ed25519 AAAAown me\n");
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(home.0.join(".ssh"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("authorized_keys")]);
}

fn unchanged(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn links_are_never_followed() {
    let home = Home::new("links");
    let elsewhere = home.0.join("elsewhere");
    std::fs::write(&elsewhere, "precious\n").unwrap();
    // A link at ~/.ssh/authorized_keys.
    std::fs::create_dir(home.0.join(".ssh")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, home.ak()).unwrap();
    let refused = install(&home.0, &parsed(&[("1", 1)]));
    assert!(matches!(refused, Err(KeyError::Unsafe(_))), "{refused:?}");
    assert_eq!(unchanged(&elsewhere), b"precious\n");
    assert!(std::fs::symlink_metadata(home.ak())
        .unwrap()
        .file_type()
        .is_symlink());
    // A link at ~/.ssh.
    std::fs::remove_file(home.ak()).unwrap();
    std::fs::remove_dir(home.0.join(".ssh")).unwrap();
    let target = home.0.join("target-dir");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, home.0.join(".ssh")).unwrap();
    let refused = install(&home.0, &parsed(&[("1", 1)]));
    assert!(matches!(refused, Err(KeyError::Unsafe(_))), "{refused:?}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    // A directory where the file should be, a FIFO (which must not hang us).
    std::fs::remove_file(home.0.join(".ssh")).unwrap();
    std::fs::create_dir_all(home.ak()).unwrap();
    assert!(install(&home.0, &parsed(&[("1", 1)])).is_err());
    std::fs::remove_dir(home.ak()).unwrap();
    nix::unistd::mkfifo(&home.ak(), Mode::from_bits_truncate(0o600)).unwrap();
    assert!(matches!(
        install(&home.0, &parsed(&[("1", 1)])),
        Err(KeyError::Unsafe(_))
    ));
}

#[test]
fn a_refusal_changes_nothing() {
    let home = Home::new("refusal");
    install(&home.0, &parsed(&[("1", 1)])).unwrap();
    let before = unchanged(&home.ak());
    let hostile = keys(&[
        ("2", &ed(2)),
        ("3", &format!("{}\n{END}\nssh-rsa AAAA evil", ed(3))),
    ]);
    assert!(parse_all(&hostile).is_err());
    assert_eq!(unchanged(&home.ak()), before);
    // A damaged file is not rewritten either.
    let damaged = format!("{}{BEGIN}\n", String::from_utf8(before.clone()).unwrap());
    std::fs::write(home.ak(), &damaged).unwrap();
    assert!(install(&home.0, &parsed(&[("2", 2)])).is_err());
    assert_eq!(home.read(), damaged);
    // Too large a file is left alone.
    let big = vec![b'#'; MAX_FILE_BYTES as usize + 1];
    std::fs::write(home.ak(), &big).unwrap();
    assert!(install(&home.0, &parsed(&[("2", 2)])).is_err());
    assert_eq!(unchanged(&home.ak()).len(), big.len());
}
