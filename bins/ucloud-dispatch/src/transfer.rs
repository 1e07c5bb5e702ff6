//! Transfer tokens, the dispatcher's part: the root-only key, the call each create
//! call mints a token for, and the check that a token still fits the mapping. The
//! token itself (claims, mint, verify) is ucloud-wire's [`transfer`] module.

use crate::error::Error;
use crate::mapping::Target;
use crate::trust::{self, Use};
use std::io::Read;
use ucloud_wire::envelope::{Credential, Envelope};
use ucloud_wire::install;
use ucloud_wire::names::LocalName;
use ucloud_wire::transfer::{self, Claims};

pub struct TransferKey(Vec<u8>);

pub fn load_key() -> Result<TransferKey, Error> {
    let path = ucloud_wire::paths::transfer_key();
    let fd = trust::open(&path, Use::Secret).map_err(|e| match e {
        // The installation makes the key; say how, since a missing one stops every
        // upload and download.
        Error::Config(why) if why.ends_with("does not exist") => Error::Config(format!(
            "{why}: the installation makes the transfer key (the package on install, \
             scripts/stack up for the local stack); by hand, as root: \
             (umask 077; head -c 64 /dev/urandom > {path})"
        )),
        e => e,
    })?;
    let mut key = Vec::new();
    std::fs::File::from(fd)
        .take(4096)
        .read_to_end(&mut key)
        .map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?;
    install::check_transfer_key_length(&path, key.len()).map_err(Error::Config)?;
    Ok(TransferKey(key))
}

pub fn mint(
    key: &TransferKey,
    for_call: &str,
    target: &Target,
    now: u64,
    subject: Option<String>,
) -> Result<String, Error> {
    let ucloud = target
        .ucloud
        .clone()
        .ok_or_else(|| Error::Internal("a transfer token needs a UCloud user".into()))?;
    let local = LocalName::new(&target.name)
        .map_err(|e| Error::Internal(format!("a transfer token for {}: {e}", target.name)))?;
    let claims = Claims::new(
        for_call,
        ucloud,
        local,
        target.uid.as_raw(),
        ucloud_wire::random_hex(16)
            .map_err(|e| Error::Internal(format!("cannot read /dev/urandom: {e}")))?,
        now,
        subject,
    );
    transfer::mint(&key.0, &claims).map_err(Error::Internal)
}

pub fn verify(token: &str, key: &TransferKey, call: &str, now: u64) -> Result<Claims, Error> {
    transfer::verify(token, &key.0, call, now)
        .map_err(|why| Error::BadToken(format!("transfer token {why}")))
}

/// The token the plugin gets: for a create call a fresh one for the call it
/// redeems; on the data channel the one it was called with (verified by then),
/// which names the transfer session the create call set up.
pub fn for_plugin(
    envelope: &Envelope,
    target: &Target,
    bound: Option<&Claims>,
) -> Result<Option<String>, Error> {
    // Which call a create call's token is good for is a row of the call table.
    if let Some(for_call) = transfer::minted_for(&envelope.call, &envelope.request) {
        // A session identifier is bound to the one job or folder its request
        // names; a web interface's cookie to what its link was bound to.
        let subject = match (ucloud_wire::calls::is_bound(for_call), bound) {
            (false, _) => None,
            (true, Some(link)) => link.subject.clone(),
            (true, None) => Some(
                transfer::session_subject(&envelope.request)
                    .map_err(|why| Error::Usage(format!("{}: the request {why}", envelope.call)))?,
            ),
        };
        let now = ucloud_wire::now_ms() / 1000;
        return mint(&load_key()?, for_call, target, now, subject).map(Some);
    }
    Ok(match &envelope.credential {
        Credential::Transfer(token) => Some(token.clone()),
        Credential::Bearer(_) => None,
    })
}

/// The user's mapping must still lead to the account the token was minted for.
pub fn still_bound(bound: &Claims, target: &Target) -> Result<(), Error> {
    if bound.local.as_str() == target.name && bound.uid == target.uid.as_raw() {
        return Ok(());
    }
    Err(Error::AccountRefused(format!(
        "the transfer token was issued for {} (uid {}), but {} now maps to {} (uid {})",
        bound.local, bound.uid, bound.ucloud, target.name, target.uid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};
    use ucloud_wire::names::UcloudName;

    fn target() -> Target {
        Target {
            name: "alice".into(),
            uid: Uid::from_raw(1001),
            gid: Gid::from_raw(1001),
            groups: vec![],
            home: "/home/alice".into(),
            ucloud: Some(UcloudName::new("AliceHansen#1001").unwrap()),
        }
    }

    #[test]
    fn minted_tokens_verify_for_their_call_and_account() {
        ucloud_wire::token::install_crypto_provider();
        let key = TransferKey(vec![7; 32]);
        let now = 1_800_000_000;
        let token = mint(&key, "files.download", &target(), now, None).unwrap();
        let bound = verify(&token, &key, "files.download", now + 60).unwrap();
        assert_eq!(
            (bound.ucloud.as_str(), bound.local.as_str(), bound.uid),
            ("AliceHansen#1001", "alice", 1001)
        );
        assert!(still_bound(&bound, &target()).is_ok());
        let moved = Target {
            uid: Uid::from_raw(1002),
            ..target()
        };
        assert!(still_bound(&bound, &moved).is_err());
        assert!(verify(&token, &key, "files.upload", now).is_err());
        let other = mint(&key, "files.download", &target(), now, None).unwrap();
        assert_ne!(token, other, "each token has its own jti");
        let service = Target {
            ucloud: None,
            ..target()
        };
        assert!(mint(&key, "files.download", &service, now, None).is_err());
    }
}
