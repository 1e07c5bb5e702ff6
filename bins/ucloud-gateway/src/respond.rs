//! Writing answers: JSON bodies (gzip when the client asks) and UCloud errors, and
//! what the access log says about each.

use crate::error::Reject;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::{self, Write};
use ucloud_http::server::{write_response, Request};

pub const JSON: &str = "application/json; charset=utf-8";

/// What the access log says about one request.
pub struct Outcome {
    /// The call's name, or what the gateway answered itself (`health`, `-`).
    pub call: &'static str,
    pub status: u16,
    /// The connection must close after this answer.
    pub close: bool,
    /// A note for the log (e.g. why a relay broke off).
    pub note: Option<String>,
}

/// What a browser needs to read an answer of the data channel, errors included
/// (without it a failed upload shows only "network error").
pub const DATA_CHANNEL_CORS: &[(&str, &str)] = &[
    ("Access-Control-Allow-Origin", "*"),
    (
        "Access-Control-Expose-Headers",
        "Content-Length, Content-Range, Content-Disposition",
    ),
];

/// Whether `Accept-Encoding` allows gzip (a `q=0` refuses it).
pub fn accepts_gzip(req: &Request) -> bool {
    let Some(value) = req.header("accept-encoding") else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

pub fn gzip(body: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 3 + 64), Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

/// Sends a JSON body as it is or gzipped.
pub fn send_json(
    out: &mut impl Write,
    status: u16,
    body: &[u8],
    gz: bool,
    keep_alive: bool,
) -> io::Result<()> {
    send_json_with(out, status, body, gz, keep_alive, &[])
}

/// Like [`send_json`], with `extra` headers (e.g. [`DATA_CHANNEL_CORS`]).
pub fn send_json_with(
    out: &mut impl Write,
    status: u16,
    body: &[u8],
    gz: bool,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", JSON), ("Vary", "Accept-Encoding")];
    headers.extend_from_slice(extra);
    if !keep_alive {
        headers.push(("Connection", "close"));
    }
    if gz {
        let packed = gzip(body)?;
        headers.push(("Content-Encoding", "gzip"));
        write_response(out, status, &headers, &packed)
    } else {
        write_response(out, status, &headers, body)
    }
}

pub fn send_reject(
    out: &mut impl Write,
    reject: &Reject,
    gz: bool,
    keep_alive: bool,
) -> io::Result<u16> {
    send_reject_with(out, reject, gz, keep_alive, &[])
}

/// Like [`send_reject`], with `extra` headers.
pub fn send_reject_with(
    out: &mut impl Write,
    reject: &Reject,
    gz: bool,
    keep_alive: bool,
    extra: &[(&str, &str)],
) -> io::Result<u16> {
    let failure = reject.failure();
    let body = serde_json::to_vec(&failure.body()).expect("a JSON value always serialises");
    send_json_with(out, failure.status, &body, gz, keep_alive, extra)?;
    Ok(failure.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(accept: Option<&str>) -> Request {
        let headers: Vec<_> = accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        Request::new("GET", "/", &headers)
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&req(Some("gzip"))));
        assert!(accepts_gzip(&req(Some("deflate, GZIP;q=0.5"))));
        assert!(!accepts_gzip(&req(Some("gzip;q=0"))));
        assert!(!accepts_gzip(&req(Some("br"))));
        assert!(!accepts_gzip(&req(None)));
    }

    #[test]
    fn data_channel_errors_carry_cors() {
        let mut out = Vec::new();
        let reject = Reject::Unauthorized("expired".into());
        let status = send_reject_with(&mut out, &reject, false, true, DATA_CHANNEL_CORS).unwrap();
        assert_eq!(status, 401);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Access-Control-Allow-Origin: *\r\n"),
            "{text}"
        );
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read;
        let packed = gzip(b"{\"a\":1}").unwrap();
        let mut out = String::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "{\"a\":1}");
    }
}
