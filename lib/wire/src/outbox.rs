//! The outbox: everything the provider tells UCloud, one file per message, written
//! durably (temporary file, fsync, rename) so that UCloud being down loses nothing.
//! Writers call [`enqueue`]; the sender delivers `queue/` in name order.

use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const TMP: &str = "tmp";
pub const QUEUE: &str = "queue";
pub const REPLIES: &str = "replies";
pub const FAILED: &str = "failed";
/// The longest reply tag: room for a prefix and the file name of any UCloud user.
pub const MAX_TAG: usize = 250;

/// How the sender makes the call: POST with the body (everything the provider tells
/// UCloud), or GET without one (a question, such as the monitor's
/// `/api/jobs/control/retrieve?id=`, whose answer comes back as a reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    #[default]
    Post,
    Get,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Get => "GET",
        }
    }
}

/// One call to UCloud: `{method} {ucloud_url}{path}`, with `body` for a POST.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub method: Method,
    pub path: String,
    pub body: Value,
    /// When set, the sender stores UCloud's answer as `replies/<reply>.json`.
    pub reply: Option<String>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG
        && !tag.starts_with('.')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Message {
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "path": self.path, "body": self.body });
        if let Some(reply) = &self.reply {
            v["reply"] = json!(reply);
        }
        if self.method == Method::Get {
            v["method"] = json!("GET");
        }
        v
    }

    pub fn from_json(bytes: &[u8]) -> io::Result<Message> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let path = v.get("path").and_then(Value::as_str).unwrap_or_default();
        if !path.starts_with("/api/") && !path.starts_with("/auth/") || path.contains("..") {
            return Err(invalid(format!("path {path:?} is not a UCloud API path")));
        }
        let body = v
            .get("body")
            .cloned()
            .ok_or_else(|| invalid("no body".into()))?;
        let reply = match v.get("reply") {
            None | Some(Value::Null) => None,
            Some(Value::String(tag)) if is_valid_tag(tag) => Some(tag.clone()),
            Some(_) => return Err(invalid("reply must be a tag of [A-Za-z0-9_.-]".into())),
        };
        let method = match v.get("method") {
            None | Some(Value::Null) => Method::Post,
            Some(Value::String(m)) if m == "POST" => Method::Post,
            Some(Value::String(m)) if m == "GET" => Method::Get,
            Some(other) => {
                return Err(invalid(format!(
                    "method {other:?} is neither \"GET\" nor \"POST\""
                )))
            }
        };
        Ok(Message {
            method,
            path: path.to_string(),
            body,
            reply,
        })
    }
}

/// Writes `message` into the outbox at `dir`: `tmp/<name>`, fsync, rename into
/// `queue/`, fsync of `queue/`. Returns the queued file's path. Names sort in
/// creation order: milliseconds, then pid, then a per-process counter.
pub fn enqueue(dir: &Path, message: &Message) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    if let Some(tag) = &message.reply {
        if !is_valid_tag(tag) {
            return Err(invalid(format!("reply tag {tag:?} is not [A-Za-z0-9_.-]")));
        }
    }
    let name = format!(
        "{:013}-{:010}-{:06}.json",
        crate::now_ms(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join(TMP).join(&name);
    let queued = dir.join(QUEUE).join(&name);
    let mut file = File::options().write(true).create_new(true).open(&tmp)?;
    file.write_all(message.to_json().to_string().as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &queued)?;
    File::open(dir.join(QUEUE))?.sync_all()?;
    Ok(queued)
}

/// A value for the query of a `GET` message: every byte but the unreserved ones
/// percent-encoded (RFC 3986), as Go's `url.QueryEscape` reads it back.
pub fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The queued messages, oldest first.
pub fn queued(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir.join(QUEUE))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("outbox-{test}-{}", std::process::id()));
        for sub in [TMP, QUEUE] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    #[test]
    fn numbers_in_a_body_survive_the_outbox_exactly() {
        // Found by the records fuzz target: without serde_json's float_roundtrip,
        // a 52-digit number came back from a second read one bit off.
        let text = format!(
            r#"{{"path":"/api/x","body":{{"n":[{},0.1,1e-300]}}}}"#,
            "5".repeat(52)
        );
        let message = Message::from_json(text.as_bytes()).unwrap();
        let again = serde_json::to_vec(&message.to_json()).unwrap();
        assert_eq!(Message::from_json(&again).unwrap().body, message.body);
    }

    #[test]
    fn messages_queue_in_order_and_round_trip() {
        let dir = scratch("order");
        let first = Message {
            method: Method::Post,
            path: "/api/a".into(),
            body: json!({"n": 1}),
            reply: Some("drive-41".into()),
        };
        let second = Message {
            method: Method::Get,
            path: "/api/b".into(),
            body: json!({"n": 2}),
            reply: None,
        };
        enqueue(&dir, &first).unwrap();
        enqueue(&dir, &second).unwrap();
        let paths = queued(&dir).unwrap();
        assert_eq!(paths.len(), 2);
        assert_eq!(
            Message::from_json(&fs::read(&paths[0]).unwrap()).unwrap(),
            first
        );
        assert_eq!(
            Message::from_json(&fs::read(&paths[1]).unwrap()).unwrap(),
            second
        );
        assert_eq!(fs::read_dir(dir.join(TMP)).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_messages_are_refused() {
        let dir = scratch("refusals");
        let bad_tag = Message {
            method: Method::Post,
            path: "/api/a".into(),
            body: json!({}),
            reply: Some("../x".into()),
        };
        assert!(enqueue(&dir, &bad_tag).is_err());
        for text in [
            r#"{"path":"/etc/passwd","body":{}}"#,
            r#"{"path":"/api/../x","body":{}}"#,
            r#"{"path":"/api/a"}"#,
            r#"{"path":"/api/a","body":{},"reply":"a/b"}"#,
            r#"{"path":"/api/a","body":{},"method":"DELETE"}"#,
            r#"{"path":"/api/a","body":{},"method":1}"#,
            "nonsense",
        ] {
            assert!(Message::from_json(text.as_bytes()).is_err(), "{text}");
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
