//! What the dispatcher gets for a request (contracts.md, "Gateway → dispatcher"):
//! the envelope of a provider API call, and the request of a data-channel call.

use crate::connection::Connection;
use crate::credential::ucloud_user;
use crate::error::Reject;
use crate::normalise::normalise;
use serde_json::{Map, Value};
use ucloud_http::server::{query_pairs, Request};
use ucloud_wire::calls::{Call, RunsAs};
use ucloud_wire::envelope::{Credential, Envelope};
use ucloud_wire::names::UcloudName;

/// A provider API call: the verified bearer token, the UCloud user, and the request
/// JSON (the query of a GET) after key normalisation.
pub fn api(conn: &Connection, call: &Call, req: &Request) -> Result<Envelope, Reject> {
    let (bearer, verified) = conn.verify_bearer(req)?;
    let named = req
        .header("ucloud-username")
        .map(|v| UcloudName::from_header(v.as_bytes()).map_err(|e| e.to_string()));
    let user = match ucloud_user(named, &verified)? {
        None if call.runs_as != RunsAs::Service => {
            return Err(Reject::BadRequest(format!(
                "{} acts for a UCloud user: the UCloud-Username header is missing",
                call.name
            )))
        }
        user => user,
    };
    let mut request = match req.method.as_str() {
        "GET" => query_object(req, None),
        _ if req.body.iter().all(u8::is_ascii_whitespace) => Value::Object(Map::new()),
        _ => serde_json::from_slice(&req.body)
            .map_err(|e| Reject::BadRequest(format!("the request body is not JSON: {e}")))?,
    };
    normalise(&mut request);
    Ok(Envelope {
        call: call.name.to_string(),
        credential: Credential::Bearer(bearer.to_string()),
        user,
        request,
    })
}

/// A data-channel call with its transfer token (shape-checked; the dispatcher
/// verifies it). `length`: the body's length, for the plugin's `content-length`.
pub fn transfer(call: &Call, req: &Request, token: String, length: Option<usize>) -> Envelope {
    let mut request = transfer_request(req);
    if let Some(n) = length {
        request["headers"]["content-length"] = Value::String(n.to_string());
    }
    Envelope {
        call: call.name.to_string(),
        credential: Credential::Transfer(token),
        user: None,
        request,
    }
}

/// The data channel's request: the method, the query without the token, and the
/// headers a transfer needs.
fn transfer_request(req: &Request) -> Value {
    let mut headers = Map::new();
    for name in [
        "chunked-upload-offset",
        "chunked-upload-total-size",
        "range",
        "content-type",
    ] {
        if let Some(v) = req.header(name) {
            headers.insert(name.to_string(), Value::String(v.to_string()));
        }
    }
    let mut map = Map::new();
    map.insert("method".into(), Value::String(req.method.clone()));
    map.insert("query".into(), query_object(req, Some("token")));
    map.insert("headers".into(), Value::Object(headers));
    Value::Object(map)
}

/// Query parameters as a JSON object of strings (the first of repeated names wins).
fn query_object(req: &Request, skip: Option<&str>) -> Value {
    let mut map = Map::new();
    if let Some(query) = req.query() {
        for (k, v) in query_pairs(query) {
            if Some(k.as_str()) != skip && !map.contains_key(&k) {
                map.insert(k, Value::String(v));
            }
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::transfer_token;

    #[test]
    fn query_and_transfer_requests() {
        // Shaped like the dispatcher's tokens (HS256, our typ, exp in 2286); the
        // signature is not checked here.
        const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXAiOiJ1Y2xvdWQtaW0tdHJhbnNmZXIiLCJleHAiOjk5OTk5OTk5OTl9.c2ln";
        let r = Request::new(
            "GET",
            &format!("/x?id=a%2Fb&id=second&token={TOKEN}&n=1"),
            &[("range", "bytes=0-1")],
        );
        assert_eq!(
            query_object(&r, None),
            serde_json::json!({"id": "a/b", "token": TOKEN, "n": "1"})
        );
        let token = transfer_token(&r).unwrap().unwrap();
        let call = ucloud_wire::calls::find("files.download").unwrap();
        let e = transfer(call, &r, token, None);
        assert_eq!(
            e.request["query"],
            serde_json::json!({"id": "a/b", "n": "1"})
        );
        assert_eq!(e.request["headers"]["range"], "bytes=0-1");
        // The plugin gets the token the dispatcher verified, by that route only.
        assert!(e.request.get("token").is_none());
        assert!(e.request["headers"].get("content-length").is_none());
        let call = ucloud_wire::calls::find("files.upload").unwrap();
        let e = transfer(
            call,
            &Request::new("POST", "/x", &[]),
            TOKEN.into(),
            Some(3),
        );
        assert_eq!(e.request["headers"]["content-length"], "3");
    }
}
