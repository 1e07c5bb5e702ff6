//! The registry socket's one request line, read into a typed request before
//! anything else happens: a line that is not one of these changes nothing and
//! answers a usage error (64). The line and field names are ucloud-registry(8)'s.

use crate::error::Error;
use serde_json::{Map, Value};

/// Longest request line: a name and a ticket are a few hundred bytes.
pub const MAX_REQUEST: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// What a ticket is for, without spending it.
    Preview { ticket: String },
    /// Redeem a ticket for the caller, naming the UCloud user the person confirmed.
    Connect { ticket: String, ucloud: String },
    /// (service account) A ticket for a UCloud user.
    Ticket { ucloud: String },
    /// (service account) UCloud says the user disconnected.
    Unlinked { ucloud: String },
    /// (root) Map a UCloud user to a local account.
    Add { ucloud: String, local: String },
    /// (root) Remove a mapping.
    Remove { ucloud: String },
    /// (anyone) Whether a UCloud user has a current mapping here.
    Mapped { ucloud: String },
}

impl Request {
    /// `line` is what came before and including the first newline.
    pub fn parse(line: &str) -> Result<Request, Error> {
        if !line.ends_with('\n') || line.len() > MAX_REQUEST {
            return Err(usage(format!(
                "the request must be one JSON line of at most {MAX_REQUEST} bytes"
            )));
        }
        let Value::Object(fields) = serde_json::from_str(line)
            .map_err(|e| usage(format!("the request is not JSON: {e}")))?
        else {
            return Err(usage("the request is not a JSON object".into()));
        };
        let text = |key: &str| text(&fields, key);
        Ok(match text("op")?.as_str() {
            "preview" => Request::Preview {
                ticket: text("ticket")?,
            },
            "connect" => Request::Connect {
                ticket: text("ticket")?,
                ucloud: text("ucloud")?,
            },
            "ticket" => Request::Ticket {
                ucloud: text("ucloud")?,
            },
            "unlinked" => Request::Unlinked {
                ucloud: text("ucloud")?,
            },
            "add" => Request::Add {
                ucloud: text("ucloud")?,
                local: text("local")?,
            },
            "remove" => Request::Remove {
                ucloud: text("ucloud")?,
            },
            "mapped" => Request::Mapped {
                ucloud: text("ucloud")?,
            },
            other => return Err(usage(format!("unknown op {other:?}"))),
        })
    }

    /// The request's `op`, which is also its audit action.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Preview { .. } => "preview",
            Request::Connect { .. } => "connect",
            Request::Ticket { .. } => "ticket",
            Request::Unlinked { .. } => "unlinked",
            Request::Add { .. } => "add",
            Request::Remove { .. } => "remove",
            Request::Mapped { .. } => "mapped",
        }
    }

    /// The UCloud user the request names, if it names one (for the audit record).
    pub fn ucloud(&self) -> Option<&str> {
        match self {
            Request::Preview { .. } => None,
            Request::Connect { ucloud, .. }
            | Request::Ticket { ucloud }
            | Request::Unlinked { ucloud }
            | Request::Add { ucloud, .. }
            | Request::Remove { ucloud }
            | Request::Mapped { ucloud } => Some(ucloud),
        }
    }
}

fn usage(why: String) -> Error {
    Error::Usage(why)
}

fn text(fields: &Map<String, Value>, key: &str) -> Result<String, Error> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| usage(format!("the request has no string {key:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_op_reads_its_fields() {
        let r = Request::parse("{\"op\":\"connect\",\"ticket\":\"t\",\"ucloud\":\"u#1\"}\n");
        assert_eq!(
            r.unwrap(),
            Request::Connect {
                ticket: "t".into(),
                ucloud: "u#1".into()
            }
        );
        let r = Request::parse("{\"op\":\"add\",\"ucloud\":\"u#1\",\"local\":\"u\",\"x\":1}\n");
        assert_eq!(r.unwrap().op(), "add");
        let r = Request::parse("{\"op\":\"preview\",\"ticket\":\"t\"}\n").unwrap();
        assert_eq!((r.op(), r.ucloud()), ("preview", None));
        let r = Request::parse("{\"op\":\"mapped\",\"ucloud\":\"u#1\"}\n").unwrap();
        assert_eq!((r.op(), r.ucloud()), ("mapped", Some("u#1")));
        assert!(Request::parse("{\"op\":\"mapped\"}\n").is_err());
    }

    #[test]
    fn malformed_requests_are_usage_errors() {
        let long = format!(
            "{{\"op\":\"preview\",\"ticket\":\"{}\"}}\n",
            "t".repeat(MAX_REQUEST)
        );
        for bad in [
            "",
            "{\"op\":\"connect\"}",
            "not json\n",
            "[1]\n",
            "\"op\"\n",
            "{\"op\":7}\n",
            "{\"op\":\"steal\"}\n",
            "{\"op\":\"preview\"}\n",
            "{\"op\":\"preview\",\"ticket\":7}\n",
            "{\"op\":\"preview\",\"ticket\":null}\n",
            "{\"op\":\"connect\",\"ticket\":\"x\"}\n",
            "{\"op\":\"connect\",\"ticket\":\"x\",\"ucloud\":[]}\n",
            "{\"op\":\"add\",\"ucloud\":\"u#1\"}\n",
            &long,
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{bad:?}: {e}");
        }
    }
}
