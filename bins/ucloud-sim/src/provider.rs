//! The calls `serve` makes to the provider, as the core's `InvokeProvider` makes
//! them (core2/pkg/orchestrator/orchestrator.go): UCloud's own bearer token, the
//! end user (when there is one) in `ucloud-username` as standard base64 of the
//! name, a JSON body, gzip accepted. What the answer means is the caller's
//! business; here only whether one came.

use base64::Engine;
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use ucloud_http::client::{Client, Endpoint};

/// The core gives a provider 5 s; a test machine under load gets more.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One request to the provider at `url`; its status and (decompressed) body, or
/// why there was no answer.
pub fn invoke(
    url: &str,
    ca: Option<&Path>,
    token: &str,
    user: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let endpoint = Endpoint::new(url, ca, TIMEOUT).map_err(|e| e.to_string())?;
    let authorization = format!("Bearer {token}");
    let user_header = user.map(|u| base64::engine::general_purpose::STANDARD.encode(u));
    let mut headers = vec![
        ("Authorization", authorization.as_str()),
        ("Accept-Encoding", "gzip"),
        ("User-Agent", "ucloud-sim"),
    ];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    if let Some(user) = &user_header {
        headers.push(("ucloud-username", user.as_str()));
    }
    let response = Client::new(endpoint)
        .send(method, path, &headers, body)
        .map_err(|e| format!("{method} {url}{path}: {e}"))?;
    let gzip = response
        .header("content-encoding")
        .is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(response.body.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("{method} {path}: the gzip body does not decompress: {e}"))?;
        out
    } else {
        response.body
    };
    Ok((response.status, body))
}
