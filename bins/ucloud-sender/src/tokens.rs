//! The provider's access token: exchanged for the refresh token at UCloud, kept in
//! memory only, renewed before it runs out. Each thread that talks to UCloud (the
//! outbox loop, the notification stream) owns one [`Tokens`] with its own
//! connection, so neither waits on the other's retries; UCloud hands out as many
//! access tokens as are asked for, each valid on its own.

use base64::Engine;
use serde_json::{json, Value};
use ucloud_http::client::Client;

/// UCloud renews its tokens when less than this many seconds remain; so do we.
const RENEW_BELOW: u64 = 180;

fn now() -> u64 {
    ucloud_wire::now_ms() / 1000
}

/// The `exp` claim of a JWT, read without verifying it: the token came from UCloud
/// over TLS, and the only use is to know when to ask for the next one.
fn expiry_of(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_u64()
}

pub struct Tokens {
    refresh_token: String,
    /// The access token and when it expires (seconds since the epoch).
    access: Option<(String, u64)>,
}

impl Tokens {
    pub fn new(refresh_token: String) -> Tokens {
        Tokens {
            refresh_token,
            access: None,
        }
    }

    /// Makes the next [`Tokens::access_token`] ask UCloud for a new one (UCloud
    /// refused the current one: revoked, or expired early).
    pub fn forget(&mut self) {
        self.access = None;
    }

    /// An access token with more than [`RENEW_BELOW`] seconds left, asked for over
    /// `client` when the one held is too old.
    pub fn access_token(&mut self, client: &mut Client) -> Result<String, String> {
        if let Some((token, exp)) = &self.access {
            if *exp > now() + RENEW_BELOW {
                return Ok(token.clone());
            }
        }
        let body = json!({"items": [{"refreshToken": self.refresh_token}]}).to_string();
        let response = client
            .send(
                "POST",
                "/auth/providers/refresh",
                &[
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json"),
                ],
                body.as_bytes(),
            )
            .map_err(|e| format!("cannot reach UCloud for an access token: {e}"))?;
        if response.status == 401 || response.status == 403 {
            return Err(format!(
                "UCloud refused the refresh token ({}): check the refresh-token file",
                response.status
            ));
        }
        if response.status != 200 {
            return Err(format!(
                "UCloud answered {} to the token refresh: {}",
                response.status,
                excerpt(&response.body)
            ));
        }
        let token = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v["responses"][0]["accessToken"].as_str().map(String::from))
            .ok_or("UCloud's refresh answer holds no accessToken")?;
        let exp = expiry_of(&token).unwrap_or(now() + 600);
        self.access = Some((token.clone(), exp));
        Ok(token)
    }
}

/// At most 300 characters of an answer, on one line, for a log line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_payload() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"exp":1234}"#));
        assert_eq!(expiry_of(&token), Some(1234));
        assert_eq!(expiry_of("garbage"), None);
        assert_eq!(expiry_of("a.!!!.c"), None);
        assert_eq!(expiry_of(&format!("a.{}.c", b64("[1]"))), None);
    }
}
