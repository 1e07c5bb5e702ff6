//! The record of every request the simulator receives: one JSON object per line,
//! each written with one write(2) on an `O_APPEND` descriptor, so lines from
//! concurrent connections never interleave and a reader sees whole lines.

use serde_json::{json, Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

pub struct CallLog {
    file: File,
}

/// What one line says about a request.
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub status: u16,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// Why a request was refused, when it was.
    pub error: Option<&'a str>,
}

/// The body as the log shows it: parsed JSON, else the text, `null` when empty.
pub fn body_value(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

impl CallLog {
    pub fn open(path: &Path) -> Result<CallLog, crate::error::SimError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                crate::error::SimError::Setup(format!(
                    "cannot open the log {}: {e}",
                    path.display()
                ))
            })?;
        Ok(CallLog { file })
    }

    pub fn line(entry: &Entry<'_>) -> Vec<u8> {
        let mut headers = Map::new();
        for (name, value) in entry.headers {
            let name = name.to_ascii_lowercase();
            match headers.get_mut(&name) {
                // A repeated header keeps every value, comma-joined as HTTP allows.
                Some(Value::String(old)) => {
                    old.push_str(", ");
                    old.push_str(value);
                }
                _ => {
                    headers.insert(name, json!(value));
                }
            }
        }
        let mut line = json!({
            "time": ucloud_wire::now_ms(),
            "method": entry.method,
            "path": entry.path,
            "query": entry.query,
            "status": entry.status,
            "headers": headers,
            "body": body_value(entry.body),
        });
        if let Some(error) = entry.error {
            line["error"] = json!(error);
        }
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    pub fn append(&self, entry: &Entry<'_>) {
        let bytes = Self::line(entry);
        // One write(2): with O_APPEND the kernel places it whole at the end.
        match (&self.file).write(&bytes) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => eprintln!(
                "ucloud-sim: short write to the call log ({n} of {})",
                bytes.len()
            ),
            Err(e) => eprintln!("ucloud-sim: cannot write the call log: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_json_object_each() {
        let headers = vec![
            ("Authorization".to_string(), "Bearer abc".to_string()),
            ("x-a".to_string(), "1".to_string()),
            ("X-A".to_string(), "2".to_string()),
        ];
        let line = CallLog::line(&Entry {
            method: "POST",
            path: "/api/x",
            query: Some("id=1"),
            status: 401,
            headers: &headers,
            body: b"{\"a\":\n1}",
            error: Some("no token"),
        });
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["headers"]["authorization"], "Bearer abc");
        assert_eq!(v["headers"]["x-a"], "1, 2");
        assert_eq!(v["body"], json!({"a": 1}));
        assert_eq!(v["query"], "id=1");
        assert_eq!(v["error"], "no token");
        assert_eq!(body_value(b"not json"), json!("not json"));
        assert_eq!(body_value(b""), Value::Null);
    }
}
