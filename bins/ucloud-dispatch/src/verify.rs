//! Checks the credential itself, never trusting the gateway's check, and decides
//! which UCloud user (if any) the request is for.
//!
//! header mode: the user comes from the envelope (UCloud's unsigned `UCloud-Username`
//! header). A valid token proves the request comes from UCloud, not for whom.
//! strict mode: the user comes only from the token's signed claim; an envelope user
//! that differs is refused.

use crate::error::Error;
use crate::transfer;
use ucloud_wire::calls;
use ucloud_wire::config::{SiteConfig, UserMode};
use ucloud_wire::envelope::{Credential, Envelope};
use ucloud_wire::names::UcloudName;
use ucloud_wire::token::{self, UcloudKey};

/// A request whose credential verified.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// The UCloud user the request is for, when it names one.
    pub user: Option<UcloudName>,
    pub expires_at: u64,
    /// For a transfer token: the account it was minted for.
    pub bound: Option<ucloud_wire::transfer::Claims>,
}

pub fn credential(
    envelope: &Envelope,
    key: &UcloudKey,
    site: &SiteConfig,
    now: u64,
) -> Result<Verified, Error> {
    let call = &envelope.call;
    let bearer = match (&envelope.credential, calls::is_transfer_call(call)) {
        (Credential::Transfer(t), true) => return transfer_token(envelope, t, now),
        (Credential::Bearer(t), false) => Ok(t),
        (Credential::Bearer(_), true) => Err(format!(
            "{call} is a data-channel call: it takes a transfer token, not a UCloud token"
        )),
        (Credential::Transfer(_), false) => Err(format!(
            "transfer tokens are accepted only for {}, not for {call}",
            calls::TRANSFER_CALLS.join(" and ")
        )),
    };
    let bearer = bearer.map_err(Error::UnsupportedCredential)?;
    let token = token::verify(bearer, key, &site.token_policy(), site.user_claim(), now)
        .map_err(|e| Error::BadToken(e.to_string()))?;
    let user = match (&site.user_mode, token.user) {
        (UserMode::Header, _) => envelope.user.clone(),
        (UserMode::Strict { .. }, None) => None,
        (UserMode::Strict { claim }, Some(signed)) => {
            let signed = UcloudName::new(&signed)
                .map_err(|e| Error::BadToken(format!("token claim {claim}: {e}")))?;
            match &envelope.user {
                Some(header) if *header != signed => {
                    return Err(Error::user_mismatch(header, &signed))
                }
                _ => Some(signed),
            }
        }
    };
    if user.is_none() && !calls::is_service_call(&envelope.call) {
        let why = match &site.user_mode {
            UserMode::Header => "the request names none".into(),
            UserMode::Strict { claim } => {
                format!("the token has no {claim} claim (user_mode = strict)")
            }
        };
        return Err(Error::UserRequired(format!(
            "{call} needs a UCloud user and {why}"
        )));
    }
    Ok(Verified {
        user,
        expires_at: token.expires_at,
        bound: None,
    })
}

/// The data channel: the dispatcher's own token names the user; an envelope user
/// (from the request's headers) must agree with it.
fn transfer_token(envelope: &Envelope, token: &str, now: u64) -> Result<Verified, Error> {
    let key = transfer::load_key()?;
    let bound = transfer::verify(token, &key, &envelope.call, now)?;
    if let Some(header) = &envelope.user {
        if *header != bound.ucloud {
            return Err(Error::user_mismatch(header, &bound.ucloud));
        }
    }
    Ok(Verified {
        user: Some(bound.ucloud.clone()),
        expires_at: 0,
        bound: Some(bound),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tests need the openssl command");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    }

    const NOW: u64 = 1_800_000_000;

    fn site(extra: &str) -> SiteConfig {
        SiteConfig::parse(&format!(
            "provider = hpc\ngateway_user = gw\nservice_user = svc\n{extra}"
        ))
        .unwrap()
    }

    fn envelope(call: &str, user: Option<&str>, token: &str) -> Envelope {
        Envelope {
            call: call.into(),
            credential: Credential::Bearer(token.into()),
            user: user.map(|u| UcloudName::new(u).unwrap()),
            request: json!({}),
        }
    }

    #[test]
    fn the_user_mode_decides_where_the_user_comes_from() {
        token::install_crypto_provider();
        let private = openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            b"",
        );
        let key = UcloudKey::parse(&openssl(&["pkey", "-pubout"], &private)).unwrap();
        let sign = |extra: &[(&str, &str)]| {
            let mut claims = json!({"sub": "_UCloud", "role": "SERVICE", "iss": "cloud.sdu.dk",
                                    "aud": ["all:write"], "iat": NOW - 10, "exp": NOW + 590});
            for (k, v) in extra {
                claims[*k] = json!(v);
            }
            let key = EncodingKey::from_rsa_pem(&private).unwrap();
            jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
                .unwrap()
        };
        let plain = sign(&[]);
        let alice = sign(&[("ucloudUsername", "Alice#1")]);
        let header = site("");
        let strict = site("user_mode = strict\n");
        let user_of = |r: Result<Verified, Error>| r.map(|v| v.user.map(|u| u.to_string()));

        // header mode: the envelope's user, whatever the token says.
        let v = credential(
            &envelope("files.browse", Some("Bob#2"), &alice),
            &key,
            &header,
            NOW,
        );
        assert_eq!(user_of(v), Ok(Some("Bob#2".into())));
        let v = credential(&envelope("files.browse", None, &plain), &key, &header, NOW);
        assert!(matches!(v, Err(Error::UserRequired(_))));
        let v = credential(
            &envelope("jobs.retrieveProducts", None, &plain),
            &key,
            &header,
            NOW,
        );
        assert_eq!(user_of(v), Ok(None));

        // strict mode: only the signed claim.
        let v = credential(
            &envelope("files.browse", Some("Bob#2"), &plain),
            &key,
            &strict,
            NOW,
        );
        assert!(matches!(v, Err(Error::UserRequired(_))));
        let v = credential(
            &envelope("files.browse", Some("Bob#2"), &alice),
            &key,
            &strict,
            NOW,
        );
        assert!(matches!(v, Err(Error::UserMismatch(_))));
        let v = credential(&envelope("files.browse", None, &alice), &key, &strict, NOW);
        assert_eq!(user_of(v), Ok(Some("Alice#1".into())));
        let v = credential(
            &envelope("jobs.retrieveProducts", None, &plain),
            &key,
            &strict,
            NOW,
        );
        assert_eq!(user_of(v), Ok(None));

        // The token is checked in both modes.
        let v = credential(
            &envelope("files.browse", Some("Bob#2"), &plain),
            &key,
            &header,
            NOW + 3600,
        );
        assert!(matches!(v, Err(Error::BadToken(_))));
        let mut transfer = envelope("files.browse", Some("Bob#2"), &plain);
        transfer.credential = Credential::Transfer("x".into());
        assert!(matches!(
            credential(&transfer, &key, &header, NOW),
            Err(Error::UnsupportedCredential(_))
        ));
        let v = credential(
            &envelope("files.download", Some("Bob#2"), &plain),
            &key,
            &header,
            NOW,
        );
        assert!(matches!(v, Err(Error::UnsupportedCredential(_))));
    }
}
