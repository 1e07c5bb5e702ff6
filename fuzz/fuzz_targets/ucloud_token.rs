//! UCloud's bearer tokens (lib/wire token.rs), as the gateway checks every call.
//! Half the inputs are tokens as sent; the other half are claims the fuzzer
//! chooses, signed with a test key, so that the claim rules behind the signature
//! (issuer, role, audience, times, the user claim) see hostile values too.
//! keys/ holds a key pair made for this target only; it signs nothing else.
#![no_main]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use ucloud_wire::token::{self, TokenPolicy, UcloudKey};

const NOW: u64 = 1_700_000_000;

fn keys() -> &'static (UcloudKey, EncodingKey) {
    static KEYS: OnceLock<(UcloudKey, EncodingKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        token::install_crypto_provider();
        let public = UcloudKey::parse(include_bytes!("../keys/ucloud-test.pub")).unwrap();
        let private = EncodingKey::from_rsa_pem(include_bytes!("../keys/ucloud-test.key")).unwrap();
        (public, private)
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let (public, private) = keys();
    let policy = TokenPolicy {
        max_lifetime: 600,
        skew: 30,
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_string(),
            Err(_) => return,
        }
    } else {
        let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
            return;
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, private).unwrap()
    };
    if let Ok(verified) = token::verify(&token, public, &policy, Some("user"), NOW) {
        assert!(verified.expires_at > verified.issued_at);
        assert!(verified.expires_at - verified.issued_at <= policy.max_lifetime);
        assert!(verified.issued_at <= NOW + policy.skew);
        assert!(verified.expires_at + policy.skew > NOW);
    }
    if mode & 2 == 2 {
        let _ = UcloudKey::parse(rest);
    }
});
