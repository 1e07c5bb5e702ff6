//! Tokens: UCloud's bearer tokens from the simulator, and JWTs made here (signed
//! with the openssl command) so that hostile ones can be made too, with the base64
//! encodings they and UCloud's headers are written in.

use crate::stack::checked;
use crate::Stack;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

impl Stack {
    /// A UCloud bearer token from the simulator; `extra` goes after the fixed options
    /// (e.g. `["--fresh"]`, `["--lifetime", "7200"]`).
    pub fn token(&self, extra: &[&str]) -> String {
        let output = self
            .sim()
            .arg("token")
            .args(["--signing-key", &self.get("UCLOUD_SIM_PRIVATE_KEY")])
            .args(["--state", &self.get("UCLOUD_IM_STATE")])
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ucloud-sim token: {e}"));
        let stdout = checked("ucloud-sim token", &output);
        let token = stdout.trim().to_string();
        assert!(!token.is_empty(), "ucloud-sim token printed nothing");
        token
    }
}

/// RFC 4648 base64, padded (the `UCloud-Username` header).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    encode(ABC, bytes, true)
}

/// RFC 4648 base64url without padding (the parts of a JWT, UCloud's `usernameHint`).
pub fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    encode(ABC, bytes, false)
}

fn encode(alphabet: &[u8; 64], bytes: &[u8], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// `openssl ARGS` with `input` on its standard input, which must succeed: its output.
pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tests need the openssl command");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A JWT of `claims` signed RS256 with the private key in `key_file`.
pub fn rs256(key_file: &str, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        base64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let signature = openssl(
        &["dgst", "-sha256", "-sign", key_file],
        signing_input.as_bytes(),
    );
    format!("{signing_input}.{}", base64url(&signature))
}

/// A JWT of `claims` signed HS256 with `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mac = openssl(
        &[
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex}"),
            "-binary",
        ],
        signing_input.as_bytes(),
    );
    format!("{signing_input}.{}", base64url(&mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648() {
        let vectors = [
            ("", "", ""),
            ("f", "Zg==", "Zg"),
            ("fo", "Zm8=", "Zm8"),
            ("foo", "Zm9v", "Zm9v"),
            ("foob", "Zm9vYg==", "Zm9vYg"),
            ("fooba", "Zm9vYmE=", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy", "Zm9vYmFy"),
        ];
        for (plain, padded, url) in vectors {
            assert_eq!(base64(plain.as_bytes()), padded, "{plain}");
            assert_eq!(base64url(plain.as_bytes()), url, "{plain}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
