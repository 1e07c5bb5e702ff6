//! UCloud's bearer token: an RS256 JWT with `sub="_UCloud"`, `role="SERVICE"`,
//! `iss="cloud.sdu.dk"`, `aud` containing `all:write`, `iat` and `exp`. The key is
//! allow-listed to RS256: the token's header never chooses the algorithm or the key.
//!
//! What a valid token proves: UCloud signed it within its lifetime. It names no end
//! user (unless a site's UCloud adds a user claim, see [`verify`]), carries no request
//! hash and no `jti`: it is a bearer credential UCloud reuses for many calls, so a
//! stolen token can be replayed until it expires. Transport security (TLS to the
//! balancer) and short lifetimes are the protection.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::fmt;

pub const ISSUER: &str = "cloud.sdu.dk";
pub const SUBJECT: &str = "_UCloud";
pub const ROLE: &str = "SERVICE";
pub const AUDIENCE: &str = "all:write";

/// Install the one JWT crypto provider of this build. Call at the start of `main`.
pub fn install_crypto_provider() {
    // A second install (tests share a process) is harmless: the provider is the same.
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// UCloud's public key for this provider.
pub struct UcloudKey(DecodingKey);

#[derive(Debug, PartialEq, Eq)]
pub struct TokenError(pub String);

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenError {}

fn refuse(message: impl Into<String>) -> TokenError {
    TokenError(message.into())
}

impl UcloudKey {
    /// Reads the key file's contents: PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`), or what
    /// UCloud hands a provider, base64 of the DER SubjectPublicKeyInfo without armour.
    pub fn parse(contents: &[u8]) -> Result<UcloudKey, TokenError> {
        let text = std::str::from_utf8(contents).map_err(|_| refuse("key file is not text"))?;
        let text = text.trim();
        let pem = if text.starts_with("-----BEGIN") {
            text.to_string()
        } else {
            let compact: String = text.split_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .map_err(|_| refuse("key file is neither PEM nor base64 DER"))?;
            let lines: Vec<&str> = compact
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
                .collect();
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            )
        };
        DecodingKey::from_rsa_pem(pem.as_bytes())
            .map(UcloudKey)
            .map_err(|e| refuse(format!("key file does not hold an RSA public key: {e}")))
    }

    pub fn load(path: &str) -> Result<UcloudKey, TokenError> {
        let contents = std::fs::read(path)
            .map_err(|e| refuse(format!("cannot read UCloud key {path}: {e}")))?;
        Self::parse(&contents)
    }
}

/// Limits the site sets on tokens.
#[derive(Clone, Debug)]
pub struct TokenPolicy {
    /// Refuse tokens whose `exp - iat` is longer than this (seconds).
    pub max_lifetime: u64,
    /// Clock difference allowed on `iat`, `nbf` and `exp` (seconds).
    pub skew: u64,
}

/// What a verified token tells us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issued_at: u64,
    pub expires_at: u64,
    /// The value of the requested user claim, when one was asked for and present.
    pub user: Option<String>,
}

/// Verifies a UCloud bearer token at time `now` (seconds since the epoch). With
/// `user_claim`, also returns that claim (a string) when the token carries it.
pub fn verify(
    token: &str,
    key: &UcloudKey,
    policy: &TokenPolicy,
    user_claim: Option<&str>,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| refuse("token is not a JWT"))?;
    if header.alg != Algorithm::RS256 {
        return Err(refuse(format!(
            "token algorithm {:?} is not RS256",
            header.alg
        )));
    }
    let mut validation = Validation::new(Algorithm::RS256);
    // Time and audience are checked below against our own clock and rules.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(token, &key.0, &validation)
        .map_err(|e| refuse(format!("token signature does not verify: {e}")))?;
    let claims = data.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);

    if text("iss") != Some(ISSUER) {
        return Err(refuse(format!("token issuer is not {ISSUER}")));
    }
    if text("sub") != Some(SUBJECT) {
        return Err(refuse(format!("token subject is not {SUBJECT}")));
    }
    if text("role") != Some(ROLE) {
        return Err(refuse(format!("token role is not {ROLE}")));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    if !audience_ok {
        return Err(refuse(format!(
            "token audience does not include {AUDIENCE}"
        )));
    }
    let (Some(iat), Some(exp)) = (number("iat"), number("exp")) else {
        return Err(refuse("token lacks iat or exp"));
    };
    if exp <= iat {
        return Err(refuse("token expires before it was issued"));
    }
    if exp - iat > policy.max_lifetime {
        return Err(refuse(format!(
            "token lifetime {} s exceeds the site's maximum of {} s",
            exp - iat,
            policy.max_lifetime
        )));
    }
    if iat > now + policy.skew {
        return Err(refuse("token is issued in the future"));
    }
    if let Some(nbf) = claims.get("nbf") {
        match nbf.as_u64() {
            Some(nbf) if nbf <= now + policy.skew => {}
            _ => return Err(refuse("token is not valid yet")),
        }
    }
    if exp + policy.skew <= now {
        return Err(refuse("token has expired"));
    }
    let user = match user_claim {
        Some(name) => match claims.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => Some(u.clone()),
            Some(_) => return Err(refuse(format!("token claim {name} is not a string"))),
        },
        None => None,
    };
    Ok(VerifiedToken {
        issued_at: iat,
        expires_at: exp,
        user,
    })
}

/// The `typ` claim of the transfer tokens the dispatcher mints.
pub const TRANSFER_TYPE: &str = crate::transfer::TYPE;

/// A cheap look at a transfer token WITHOUT verifying it ([`crate::transfer::peek`]).
/// The gateway cannot verify these tokens (the key is root's); this only keeps
/// obvious garbage from starting a dispatcher. The dispatcher's check is the one
/// that counts.
pub fn transfer_token_looks_valid(token: &str, now: u64) -> Result<(), TokenError> {
    crate::transfer::peek(token, now).map_err(|why| refuse(format!("the transfer token {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::process::Command;

    struct Keys {
        private_pem: Vec<u8>,
        public_pem: Vec<u8>,
        public_der_b64: Vec<u8>,
    }

    fn openssl(args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the tests need the openssl command");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.unwrap_or(b"")).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl {args:?} failed");
        out.stdout
    }

    fn keys() -> Keys {
        let private_pem = openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            None,
        );
        let public_pem = openssl(&["pkey", "-pubout"], Some(&private_pem));
        let der = openssl(&["pkey", "-pubout", "-outform", "DER"], Some(&private_pem));
        let public_der_b64 = base64::engine::general_purpose::STANDARD
            .encode(der)
            .into_bytes();
        Keys {
            private_pem,
            public_pem,
            public_der_b64,
        }
    }

    const NOW: u64 = 1_800_000_000;
    const POLICY: TokenPolicy = TokenPolicy {
        max_lifetime: 1200,
        skew: 30,
    };

    fn good_claims() -> Value {
        json!({"sub": SUBJECT, "role": ROLE, "principalType": "service", "iss": ISSUER,
               "aud": [AUDIENCE], "iat": NOW - 60, "exp": NOW + 540})
    }

    fn sign(keys: &Keys, claims: &Value) -> String {
        install_crypto_provider();
        let key = EncodingKey::from_rsa_pem(&keys.private_pem).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    fn with(change: &[(&str, Value)]) -> Value {
        let mut claims = good_claims();
        for (k, v) in change {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(*k);
            } else {
                claims[*k] = v.clone();
            }
        }
        claims
    }

    #[test]
    fn ucloud_tokens_verify_with_either_key_form() {
        install_crypto_provider();
        let k = keys();
        let token = sign(&k, &good_claims());
        for form in [&k.public_pem, &k.public_der_b64] {
            let key = UcloudKey::parse(form).unwrap();
            let ok = verify(&token, &key, &POLICY, None, NOW).unwrap();
            assert_eq!(
                (ok.issued_at, ok.expires_at, ok.user),
                (NOW - 60, NOW + 540, None)
            );
        }
    }

    #[test]
    fn every_bad_claim_is_refused() {
        install_crypto_provider();
        let k = keys();
        let key = UcloudKey::parse(&k.public_der_b64).unwrap();
        let cases: Vec<(&str, Value)> = vec![
            (
                "expired",
                with(&[("iat", json!(NOW - 700)), ("exp", json!(NOW - 100))]),
            ),
            (
                "future",
                with(&[("iat", json!(NOW + 100)), ("exp", json!(NOW + 600))]),
            ),
            ("not yet valid", with(&[("nbf", json!(NOW + 100))])),
            ("wrong issuer", with(&[("iss", json!("evil.example"))])),
            ("wrong subject", with(&[("sub", json!("#P_hpc"))])),
            ("provider role", with(&[("role", json!("PROVIDER"))])),
            ("no audience", with(&[("aud", Value::Null)])),
            ("wrong audience", with(&[("aud", json!(["all:read"]))])),
            ("no iat", with(&[("iat", Value::Null)])),
            ("too long", with(&[("exp", json!(NOW + 100_000))])),
            ("exp before iat", with(&[("exp", json!(NOW - 61))])),
        ];
        for (name, claims) in cases {
            let token = sign(&k, &claims);
            assert!(
                verify(&token, &key, &POLICY, None, NOW).is_err(),
                "{name} accepted"
            );
        }
    }

    #[test]
    fn forged_tokens_are_refused() {
        install_crypto_provider();
        let k = keys();
        let other = keys();
        let key = UcloudKey::parse(&k.public_pem).unwrap();
        let good = sign(&k, &good_claims());
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let payload = b64(good_claims().to_string().as_bytes());

        let wrong_key = sign(&other, &good_claims());
        let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        // HS256 keyed with the public key: the classic algorithm confusion.
        let hs_header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let hs = {
            let key = EncodingKey::from_secret(&k.public_pem);
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &good_claims(), &key).unwrap()
        };
        let mut flipped = good.clone().into_bytes();
        let mid = flipped.len() / 2;
        flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for (name, token) in [
            ("wrong key", wrong_key),
            ("alg none", none),
            ("hs256", hs),
            ("hs256 header", format!("{hs_header}.{payload}.AAAA")),
            ("altered", flipped),
            ("garbage", "not a token".into()),
            ("empty", String::new()),
        ] {
            assert!(
                verify(&token, &key, &POLICY, None, NOW).is_err(),
                "{name} accepted"
            );
        }
    }

    #[test]
    fn user_claim_is_returned_only_when_asked() {
        install_crypto_provider();
        let k = keys();
        let key = UcloudKey::parse(&k.public_pem).unwrap();
        let token = sign(&k, &with(&[("ucloudUsername", json!("DonnaJensen#4512"))]));
        assert_eq!(verify(&token, &key, &POLICY, None, NOW).unwrap().user, None);
        let v = verify(&token, &key, &POLICY, Some("ucloudUsername"), NOW).unwrap();
        assert_eq!(v.user.as_deref(), Some("DonnaJensen#4512"));
        let bad = sign(&k, &with(&[("ucloudUsername", json!(7))]));
        assert!(verify(&bad, &key, &POLICY, Some("ucloudUsername"), NOW).is_err());
    }

    #[test]
    fn transfer_token_shape_is_checked_without_the_key() {
        install_crypto_provider();
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
        let mint =
            |claims: Value, alg| jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        let good = mint(
            json!({"typ": TRANSFER_TYPE, "exp": NOW + 10}),
            Algorithm::HS256,
        );
        assert!(transfer_token_looks_valid(&good, NOW).is_ok());
        for bad in [
            mint(
                json!({"typ": TRANSFER_TYPE, "exp": NOW - 1}),
                Algorithm::HS256,
            ),
            mint(json!({"typ": "other", "exp": NOW + 10}), Algorithm::HS256),
            mint(json!({"typ": TRANSFER_TYPE}), Algorithm::HS256),
            mint(
                json!({"typ": TRANSFER_TYPE, "exp": NOW + 10}),
                Algorithm::HS384,
            ),
            "x".into(),
            "a.b.c".into(),
        ] {
            assert!(transfer_token_looks_valid(&bad, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_files_that_are_not_keys_are_refused() {
        assert!(UcloudKey::parse(b"").is_err());
        assert!(UcloudKey::parse(b"!!!").is_err());
        assert!(
            UcloudKey::parse(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }
}
