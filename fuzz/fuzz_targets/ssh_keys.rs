//! UCloud's SSH keys and the user's authorized_keys (lib/wire sshkeys.rs): a key
//! from UCloud (bytes before the first NUL) and the file it goes into (the rest).
//! An accepted key is one line of a known type that reads back as itself; merging
//! it in and out again leaves every byte outside the block as it was (a final
//! newline aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ucloud_wire::sshkeys::{merge, AuthorizedKey, BEGIN, END, KEY_TYPES};

/// A file the block was added to gains a final newline it may have lacked.
fn norm(bytes: Vec<u8>) -> Vec<u8> {
    bytes
        .strip_suffix(b"\n")
        .map(<[u8]>::to_vec)
        .unwrap_or(bytes)
}

fuzz_target!(|input: &[u8]| {
    let (key, file) = match input.iter().position(|b| *b == 0) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &b""[..]),
    };
    let without = merge(file, &[]);
    let Ok(text) = std::str::from_utf8(key) else {
        return;
    };
    let Ok(parsed) = AuthorizedKey::parse("17", text) else {
        return;
    };
    let line = parsed.line();
    assert!(!line.contains(|c: char| c.is_control()), "{line:?}");
    assert!(KEY_TYPES.contains(&parsed.kind()));
    assert!(!line.contains("# BEGIN") && !line.contains("# END"));
    assert_eq!(AuthorizedKey::parse("17", &line).unwrap(), parsed);
    if let Ok(with) = merge(file, std::slice::from_ref(&parsed)) {
        let text = String::from_utf8_lossy(&with);
        assert!(
            text.contains(&format!("{BEGIN}\n{line}\n{END}")),
            "{text:?}"
        );
        let out = merge(&with, &[]).expect("the block it wrote is in shape");
        assert_eq!(norm(out), norm(without.expect("as the file was")));
    } else {
        assert!(without.is_err(), "a file merge takes out it must take in");
    }
});
