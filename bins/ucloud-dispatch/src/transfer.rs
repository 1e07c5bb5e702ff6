//! Transfer tokens: the credential of the browser-facing data channel
//! (`files.download`, `files.upload`), which carries no UCloud token. The dispatcher
//! mints one for `files.createDownload` / `files.createUpload` (the plugin puts it
//! in the URL it returns) and verifies it when the browser comes back.
//!
//! An HS256 JWT keyed with `{state_dir}/transfer.key` (at least 32 random bytes,
//! root-only): the algorithm is fixed here, never read from the token. It names the
//! UCloud user, the local account and uid it was minted for, the one call it is good
//! for, a random `jti` the plugin can key its session on, and `exp`. It is a bearer
//! credential: anyone holding the URL can use it until it expires.

use crate::checks::{check_owner, open_secure, Kind};
use crate::error::Error;
use crate::mapping::Target;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::io::Read;
use ucloud_wire::install;
use ucloud_wire::names::UcloudName;

/// How long a minted token is good for: UCloud keeps download and upload sessions
/// for up to 48 hours.
pub const LIFETIME_SECS: u64 = 48 * 3600;
const TYPE: &str = "ucloud-im-transfer";

pub struct TransferKey(Vec<u8>);

pub fn key_path() -> String {
    ucloud_wire::paths::transfer_key()
}

pub fn load_key() -> Result<TransferKey, Error> {
    let path = key_path();
    let fd = open_secure(&path, Kind::File).map_err(|e| match e {
        // The installation makes the key; say how, since a missing one stops every
        // upload and download.
        Error::Config(why) if why.ends_with("does not exist") => Error::Config(format!(
            "{why}: the installation makes the transfer key (the package on install, \
             scripts/stack up for the local stack); by hand, as root: \
             (umask 077; head -c 64 /dev/urandom > {path})"
        )),
        e => e,
    })?;
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| Error::Internal(format!("{path}: {e}")))?;
    check_owner(&path, &stat).map_err(Error::UnsafeInstallation)?;
    install::check_secret_mode(&path, stat.st_mode).map_err(Error::UnsafeInstallation)?;
    let mut key = Vec::new();
    std::fs::File::from(fd)
        .take(4096)
        .read_to_end(&mut key)
        .map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?;
    install::check_transfer_key_length(&path, key.len()).map_err(Error::Config)?;
    Ok(TransferKey(key))
}

/// The call a token minted by `call` is good for.
pub fn redeemed_by(call: &str) -> Option<&'static str> {
    match call {
        "files.createDownload" => Some("files.download"),
        "files.createUpload" => Some("files.upload"),
        _ => None,
    }
}

pub fn mint(key: &TransferKey, for_call: &str, target: &Target, now: u64) -> Result<String, Error> {
    let ucloud = target
        .ucloud
        .as_ref()
        .ok_or_else(|| Error::Internal("a transfer token needs a UCloud user".into()))?;
    let claims = json!({
        "typ": TYPE,
        "call": for_call,
        "ucloud": ucloud.as_str(),
        "local": target.name,
        "uid": target.uid.as_raw(),
        "jti": random_id()?,
        "iat": now,
        "exp": now + LIFETIME_SECS,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key.0),
    )
    .map_err(|e| Error::Internal(format!("cannot sign a transfer token: {e}")))
}

/// Whom a valid transfer token was minted for.
#[derive(Debug, PartialEq, Eq)]
pub struct Bound {
    pub ucloud: UcloudName,
    pub local: String,
    pub uid: u32,
}

pub fn verify(token: &str, key: &TransferKey, call: &str, now: u64) -> Result<Bound, Error> {
    let bad = |why: &str| Error::BadToken(format!("transfer token {why}"));
    let header = jsonwebtoken::decode_header(token).map_err(|_| bad("is not a JWT"))?;
    if header.alg != Algorithm::HS256 {
        return Err(bad("does not use HS256"));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims =
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(&key.0), &validation)
            .map_err(|_| bad("signature does not verify"))?
            .claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("typ") != Some(TYPE) {
        return Err(bad("is not a ucloud-im transfer token"));
    }
    if text("call") != Some(call) {
        return Err(bad(&format!("is not for {call}")));
    }
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => {}
        _ => return Err(bad("has expired")),
    }
    let ucloud = text("ucloud")
        .and_then(|u| UcloudName::new(u).ok())
        .ok_or_else(|| bad("names no UCloud user"))?;
    let local = text("local").ok_or_else(|| bad("names no local account"))?;
    let uid = claims
        .get("uid")
        .and_then(Value::as_u64)
        .and_then(|u| u32::try_from(u).ok())
        .ok_or_else(|| bad("names no uid"))?;
    Ok(Bound {
        ucloud,
        local: local.to_string(),
        uid,
    })
}

/// The user's mapping must still lead to the account the token was minted for.
pub fn still_bound(bound: &Bound, target: &Target) -> Result<(), Error> {
    if bound.local == target.name && bound.uid == target.uid.as_raw() {
        return Ok(());
    }
    Err(Error::AccountRefused(format!(
        "the transfer token was issued for {} (uid {}), but {} now maps to {} (uid {})",
        bound.local, bound.uid, bound.ucloud, target.name, target.uid
    )))
}

fn random_id() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};

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
    fn minted_tokens_verify_for_their_call_only() {
        ucloud_wire::token::install_crypto_provider();
        let key = TransferKey(vec![7; 32]);
        let now = 1_800_000_000;
        let token = mint(&key, "files.download", &target(), now).unwrap();
        let bound = verify(&token, &key, "files.download", now + 60).unwrap();
        assert_eq!(
            (bound.ucloud.as_str(), bound.local.as_str(), bound.uid),
            ("AliceHansen#1001", "alice", 1001)
        );
        assert!(verify(&token, &key, "files.upload", now).is_err());
        assert!(verify(&token, &key, "files.download", now + LIFETIME_SECS).is_err());
        assert!(verify(&token, &TransferKey(vec![8; 32]), "files.download", now).is_err());
        let mut other = mint(&key, "files.download", &target(), now).unwrap();
        assert_ne!(token, other, "each token has its own jti");
        other.push('x');
        assert!(verify(&other, &key, "files.download", now).is_err());
        assert!(verify("a.b.c", &key, "files.download", now).is_err());
    }
}
