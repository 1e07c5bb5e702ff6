//! The JWTs the simulator signs, all RS256 with its one signing key:
//! - UCloud's bearer token for calls to the provider (`sub="_UCloud"`,
//!   `role="SERVICE"`), cached in the state dir and reused until less than three
//!   minutes remain, as UCloud does;
//! - the provider's access token (`sub="#P_<provider>"`, `role="PROVIDER"`), handed
//!   out by `/auth/providers/refresh` and checked on every `/api/...` call.

use crate::error::SimError;
use crate::store::Store;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};
use std::path::Path;

pub const ISSUER: &str = "cloud.sdu.dk";
pub const LIFETIME: u64 = 600;
/// UCloud renews its cached token when less than this many seconds remain.
pub const RENEW_BELOW: u64 = 180;
/// Clock difference tolerated when checking a provider token.
const SKEW: u64 = 30;

pub fn now() -> u64 {
    ucloud_wire::now_ms() / 1000
}

/// The signing key, and the public half for checking what it signed.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Keys {
    /// Reads an RSA private key in PEM (PKCS#8 or PKCS#1).
    pub fn load(path: &Path) -> Result<Keys, SimError> {
        let pem = std::fs::read(path).map_err(|e| {
            SimError::Setup(format!(
                "cannot read the signing key {}: {e}",
                path.display()
            ))
        })?;
        let encoding = EncodingKey::from_rsa_pem(&pem).map_err(|e| {
            SimError::Setup(format!(
                "{} is not an RSA private key in PEM: {e}",
                path.display()
            ))
        })?;
        // jsonwebtoken cannot derive a public key; rustls (aws-lc-rs) can.
        let der = ucloud_http::tls::load_key(path).map_err(|e| SimError::Setup(e.to_string()))?;
        let signing = rustls::crypto::aws_lc_rs::sign::RsaSigningKey::new(&der)
            .map_err(|e| SimError::Setup(format!("{}: {e}", path.display())))?;
        use rustls::sign::SigningKey;
        let spki = signing
            .public_key()
            .ok_or_else(|| SimError::Setup("the signing key has no public key".into()))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        let public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        let decoding = DecodingKey::from_rsa_pem(public_pem.as_bytes())
            .map_err(|e| SimError::Setup(format!("cannot use the public key: {e}")))?;
        Ok(Keys { encoding, decoding })
    }

    pub fn sign(&self, claims: &Value) -> Result<String, SimError> {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &self.encoding)
            .map_err(|e| SimError::Setup(format!("cannot sign a token: {e}")))
    }

    /// A provider access token for `/api/...`, valid [`LIFETIME`] seconds.
    pub fn provider_token(&self, provider: &str) -> Result<String, SimError> {
        let iat = now();
        self.sign(&json!({
            "sub": format!("#P_{provider}"),
            "role": "PROVIDER",
            "iss": ISSUER,
            "iat": iat,
            "exp": iat + LIFETIME,
        }))
    }

    /// Checks a provider access token the way UCloud's core does: our signature,
    /// RS256 only, the provider's subject and role, the issuer, and time.
    pub fn verify_provider(&self, token: &str, provider: &str) -> Result<(), String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "the token is not a JWT".to_string())?;
        if header.alg != Algorithm::RS256 {
            return Err(format!("token algorithm {:?} is not RS256", header.alg));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(token, &self.decoding, &validation)
            .map_err(|e| format!("token signature does not verify: {e}"))?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(ISSUER) {
            return Err(format!("token issuer is not {ISSUER}"));
        }
        if text("sub") != Some(format!("#P_{provider}").as_str()) {
            return Err(format!("token subject is not #P_{provider}"));
        }
        if text("role") != Some("PROVIDER") {
            return Err("token role is not PROVIDER".into());
        }
        let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
            return Err("token lacks iat or exp".into());
        };
        let now = now();
        if iat > now + SKEW {
            return Err("token is issued in the future".into());
        }
        if exp + SKEW <= now {
            return Err("token has expired".into());
        }
        Ok(())
    }
}

/// What `ucloud-sim token` may change about UCloud's token. Anything but `user`
/// makes a one-off token that is neither cached nor reused.
#[derive(Default, Clone, Debug)]
pub struct TokenOptions {
    pub user: Option<(String, String)>,
    pub lifetime: Option<u64>,
    pub iat_offset: Option<i64>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub role: Option<String>,
    pub fresh: bool,
}

impl TokenOptions {
    fn hostile(&self) -> bool {
        self.lifetime.is_some()
            || self.iat_offset.is_some()
            || self.issuer.is_some()
            || self.subject.is_some()
            || self.role.is_some()
    }

    fn cache_key(&self) -> String {
        match &self.user {
            None => "service".into(),
            Some((name, claim)) => format!("user:{claim}:{name}"),
        }
    }
}

/// UCloud's claims for a call to the provider.
pub fn ucloud_claims(options: &TokenOptions, now: u64) -> Value {
    let iat = now.saturating_add_signed(options.iat_offset.unwrap_or(0));
    let mut claims = Map::new();
    claims.insert(
        "sub".into(),
        json!(options.subject.as_deref().unwrap_or("_UCloud")),
    );
    claims.insert(
        "role".into(),
        json!(options.role.as_deref().unwrap_or("SERVICE")),
    );
    claims.insert("principalType".into(), json!("service"));
    claims.insert(
        "iss".into(),
        json!(options.issuer.as_deref().unwrap_or(ISSUER)),
    );
    claims.insert("aud".into(), json!(["all:write"]));
    claims.insert("iat".into(), json!(iat));
    claims.insert(
        "exp".into(),
        json!(iat + options.lifetime.unwrap_or(LIFETIME)),
    );
    if let Some((name, claim)) = &options.user {
        claims.insert(claim.clone(), json!(name));
    }
    Value::Object(claims)
}

/// UCloud's bearer token: the cached one while more than [`RENEW_BELOW`] seconds
/// remain, else a new one (cached in turn).
pub fn ucloud_token(
    keys: &Keys,
    store: &Store,
    options: &TokenOptions,
) -> Result<String, SimError> {
    let now = now();
    if options.hostile() {
        return keys.sign(&ucloud_claims(options, now));
    }
    let file = Store::token_file(&options.cache_key());
    if !options.fresh {
        if let Some(cached) = store.read(&file)? {
            let exp = cached["exp"].as_u64().unwrap_or(0);
            if let Some(token) = cached["token"].as_str() {
                if exp > now + RENEW_BELOW {
                    return Ok(token.to_string());
                }
            }
        }
    }
    let claims = ucloud_claims(options, now);
    let token = keys.sign(&claims)?;
    store.write(&file, &json!({"token": token, "exp": claims["exp"]}))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_uclouds_and_overrides_apply() {
        let plain = ucloud_claims(&TokenOptions::default(), 1_000_000);
        assert_eq!(plain["sub"], "_UCloud");
        assert_eq!(plain["role"], "SERVICE");
        assert_eq!(plain["principalType"], "service");
        assert_eq!(plain["iss"], ISSUER);
        assert_eq!(plain["aud"], json!(["all:write"]));
        assert_eq!(
            plain["exp"].as_u64().unwrap() - plain["iat"].as_u64().unwrap(),
            600
        );

        let hostile = TokenOptions {
            user: Some(("A#1".into(), "ucloudUsername".into())),
            lifetime: Some(7200),
            iat_offset: Some(-3600),
            issuer: Some("evil".into()),
            subject: Some("x".into()),
            role: Some("USER".into()),
            fresh: false,
        };
        let c = ucloud_claims(&hostile, 1_000_000);
        assert_eq!(c["iat"], 1_000_000 - 3600);
        assert_eq!(c["exp"], 1_000_000 - 3600 + 7200);
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str(), c["role"].as_str()),
            (Some("evil"), Some("x"), Some("USER"))
        );
        assert_eq!(c["ucloudUsername"], "A#1");
        assert!(hostile.hostile());
        assert_ne!(
            TokenOptions::default().cache_key(),
            TokenOptions {
                user: hostile.user.clone(),
                ..Default::default()
            }
            .cache_key()
        );
    }
}
