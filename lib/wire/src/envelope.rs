//! The request envelope the gateway writes to the dispatcher's fd 3, then closes:
//! one JSON object,
//! `{"v":1,"call":"files.browse","bearer":"<JWT>","user":"DonnaJensen#4512","request":{...}}`,
//! with `transfer` instead of `bearer` on the data channel, and no `user` for calls
//! without one. At most [`MAX_ENVELOPE`] bytes.

use crate::calls;
use crate::names::UcloudName;
use serde_json::{json, Map, Value};
use std::fmt;

pub const ENVELOPE_VERSION: u64 = 1;
pub const MAX_ENVELOPE: usize = 8 << 20;
/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN: usize = 16 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// UCloud's bearer token.
    Bearer(String),
    /// A transfer token the dispatcher issued (data channel).
    Transfer(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub call: String,
    pub credential: Credential,
    pub user: Option<UcloudName>,
    pub request: Value,
}

#[derive(Debug, PartialEq, Eq)]
pub struct EnvelopeError(pub String);

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad envelope: {}", self.0)
    }
}

impl std::error::Error for EnvelopeError {}

fn bad(message: impl Into<String>) -> EnvelopeError {
    EnvelopeError(message.into())
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut map = Map::new();
        map.insert("v".into(), json!(ENVELOPE_VERSION));
        map.insert("call".into(), json!(self.call));
        match &self.credential {
            Credential::Bearer(t) => map.insert("bearer".into(), json!(t)),
            Credential::Transfer(t) => map.insert("transfer".into(), json!(t)),
        };
        if let Some(user) = &self.user {
            map.insert("user".into(), json!(user.as_str()));
        }
        map.insert("request".into(), self.request.clone());
        serde_json::to_vec(&Value::Object(map)).expect("a JSON value always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(bad(format!("larger than {MAX_ENVELOPE} bytes")));
        }
        let Value::Object(mut map) =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?
        else {
            return Err(bad("not a JSON object"));
        };
        if map.get("v").and_then(Value::as_u64) != Some(ENVELOPE_VERSION) {
            return Err(bad(format!("version must be {ENVELOPE_VERSION}")));
        }
        let call = match map.remove("call") {
            Some(Value::String(call)) if calls::is_valid_call_name(&call) => call,
            _ => return Err(bad("call is missing or not a call name")),
        };
        let token = |map: &mut Map<String, Value>, key: &str| match map.remove(key) {
            None => Ok(None),
            Some(Value::String(t)) if !t.is_empty() && t.len() <= MAX_TOKEN => Ok(Some(t)),
            Some(_) => Err(bad(format!(
                "{key} must be a non-empty string of at most {MAX_TOKEN} bytes"
            ))),
        };
        let credential = match (token(&mut map, "bearer")?, token(&mut map, "transfer")?) {
            (Some(t), None) => Credential::Bearer(t),
            (None, Some(t)) => Credential::Transfer(t),
            _ => return Err(bad("exactly one of bearer and transfer is required")),
        };
        let user = match map.remove("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(u)) => Some(UcloudName::new(&u).map_err(|e| bad(e.0))?),
            Some(_) => return Err(bad("user must be a string")),
        };
        let request = map
            .remove("request")
            .ok_or_else(|| bad("request is missing"))?;
        map.remove("v");
        if let Some(extra) = map.keys().next() {
            return Err(bad(format!("unknown field {extra:?}")));
        }
        Ok(Envelope {
            call,
            credential,
            user,
            request,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            call: "files.browse".into(),
            credential: Credential::Bearer("a.b.c".into()),
            user: Some(UcloudName::new("DonnaJensen#4512").unwrap()),
            request: json!({"browse": {"flags": {"path": "/1/x"}}}),
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let t = Envelope {
            credential: Credential::Transfer("t".into()),
            user: None,
            ..sample()
        };
        assert_eq!(Envelope::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn hostile_envelopes_are_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"[]",
            b"{\"v\":2,\"call\":\"files.browse\",\"bearer\":\"x\",\"request\":{}}",
            b"{\"v\":1,\"call\":\"../../bin/sh\",\"bearer\":\"x\",\"request\":{}}",
            b"{\"v\":1,\"call\":\"files.browse\",\"request\":{}}",
            b"{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"x\",\"transfer\":\"y\",\"request\":{}}",
            b"{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"\",\"request\":{}}",
            b"{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"x\"}",
            b"{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"x\",\"user\":\"a\\u0000b\",\"request\":{}}",
            b"{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"x\",\"user\":7,\"request\":{}}",
            b"{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"x\",\"request\":{},\"extra\":1}",
        ];
        for case in cases {
            assert!(
                Envelope::decode(case).is_err(),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        let long = format!(
            "{{\"v\":1,\"call\":\"files.browse\",\"bearer\":\"{}\",\"request\":{{}}}}",
            "x".repeat(MAX_TOKEN + 1)
        );
        assert!(Envelope::decode(long.as_bytes()).is_err());
        assert!(Envelope::decode(&vec![b' '; MAX_ENVELOPE + 1]).is_err());
    }
}
