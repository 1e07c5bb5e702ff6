//! `ssh.keyUploaded`: UCloud's core sends every SSH key its user has
//! (`SshProviderKeyUploaded`, orchestrators/ssh.go: `{username, allKeys: []SshKey}`
//! → `util.Empty`) each time the user adds or deletes one. The plugin already runs
//! as the user's account, so it writes the keys into that account's own
//! `~/.ssh/authorized_keys` block (the rules are `ucloud_wire::sshkeys`'s) and
//! nowhere else. The core sends the update once and does not retry; a refusal
//! leaves the file as it was.

use crate::error::Error;
use serde_json::{json, Value};
use ucloud_wire::sshkeys::{self, Installed, KeyError};

pub fn key_uploaded(request: &Value) -> Result<Value, Error> {
    let acting = std::env::var("UCLOUD_USERNAME").map_err(|_| {
        Error::Misconfigured("UCLOUD_USERNAME is not set (ssh.keyUploaded runs for a user)".into())
    })?;
    let home = std::env::var("HOME")
        .map_err(|_| Error::Misconfigured("HOME is not set (set by ucloud-dispatch)".into()))?;
    update(&acting, std::path::Path::new(&home), request)
}

/// The keys of `request` into `home`, for the UCloud user `acting`.
pub fn update(acting: &str, home: &std::path::Path, request: &Value) -> Result<Value, Error> {
    let Some(named) = request.get("username").and_then(Value::as_str) else {
        return Err(Error::BadRequest(
            "ssh/keyUploaded needs {\"username\": \"...\", \"allKeys\": [...]}".into(),
        ));
    };
    // The dispatcher mapped the user the request acts for; keys of anyone else
    // have no place in this account.
    if named != acting {
        return Err(Error::PermissionDenied(format!(
            "the request acts for {acting} but carries the SSH keys of {named:?}; nothing was changed"
        )));
    }
    let keys =
        sshkeys::parse_all(request.get("allKeys").unwrap_or(&Value::Null)).map_err(refusal)?;
    match sshkeys::install(home, &keys).map_err(refusal)? {
        Installed::Written(_) | Installed::Nothing => Ok(json!({})),
    }
}

fn refusal(e: KeyError) -> Error {
    match e {
        KeyError::Refused(why) => Error::BadRequest(format!("{why}; nothing was changed")),
        KeyError::Unsafe(why) => Error::Unsafe(why),
        KeyError::Io(why) => Error::Internal(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> String {
        use base64::Engine;
        let mut blob = vec![0, 0, 0, 11];
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&[0, 0, 0, 32]);
        blob.extend_from_slice(&[seed; 32]);
        format!(
            "ssh-ed25519 {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    fn request(user: &str, keys: &[(&str, String)]) -> Value {
        json!({"username": user, "allKeys": keys.iter().map(|(id, k)| json!({
            "id": id, "owner": user, "createdAt": 0, "fingerprint": "",
            "specification": {"title": "laptop", "key": k}})).collect::<Vec<_>>()})
    }

    #[test]
    fn only_the_acting_users_keys_and_refusals_change_nothing() {
        let home = std::env::temp_dir().join(format!("files-sshkeys-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let ak = home.join(".ssh/authorized_keys");
        let alice = "AliceHansen#1001";
        update(alice, &home, &request(alice, &[("1", key(1))])).unwrap();
        let before = std::fs::read(&ak).unwrap();
        assert!(String::from_utf8_lossy(&before).contains("ucloud-key-1"));
        let refused = [
            (request("BobNielsen#2002", &[("2", key(2))]), 403),
            (json!({"allKeys": []}), 400),
            (
                request(
                    alice,
                    &[("2", key(2)), ("3", format!("{}\nssh-rsa X", key(3)))],
                ),
                400,
            ),
            (
                request(alice, &[("2", format!("command=\"id\" {}", key(2)))]),
                400,
            ),
        ];
        for (bad, status) in refused {
            let e = update(alice, &home, &bad).unwrap_err();
            assert_eq!(e.failure().status, status, "{bad}: {e}");
            assert_eq!(
                std::fs::read(&ak).unwrap(),
                before,
                "{bad} changed the file"
            );
        }
        // An empty list takes the block away.
        update(alice, &home, &request(alice, &[])).unwrap();
        assert!(std::fs::read(&ak).unwrap().is_empty());
        std::fs::remove_dir_all(home).unwrap();
    }
}
