//! UCloud's error body, `{"why","errorCode"}`, and the one-line form in which the
//! dispatcher and plugins report a failure on stderr:
//! `{"status":403,"errorCode":"NOT_MAPPED","why":"..."}`.

use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub error_code: String,
    pub why: String,
}

impl Failure {
    pub fn new(status: u16, error_code: &str, why: impl Into<String>) -> Failure {
        Failure {
            status: safe_status(status),
            error_code: error_code.to_string(),
            why: why.into(),
        }
    }

    /// The HTTP body UCloud expects.
    pub fn body(&self) -> Value {
        json!({ "why": self.why, "errorCode": self.error_code })
    }

    /// The single stderr line a failing dispatcher or plugin writes.
    pub fn line(&self) -> String {
        json!({ "status": self.status, "errorCode": self.error_code, "why": self.why }).to_string()
    }

    /// Reads a failure from a child's stderr: its last non-empty line when that is a
    /// failure line; otherwise the whole text (cut to `max` bytes) as the why of a
    /// 500 `PLUGIN_FAILED`.
    pub fn from_stderr(stderr: &[u8], max: usize) -> Failure {
        let text = String::from_utf8_lossy(stderr);
        if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(last.trim()) {
                if let Some(why) = map.get("why").and_then(Value::as_str) {
                    let status = map.get("status").and_then(Value::as_u64).unwrap_or(500);
                    let code = map
                        .get("errorCode")
                        .and_then(Value::as_str)
                        .unwrap_or("PLUGIN_FAILED");
                    return Failure::new(u16::try_from(status).unwrap_or(500), code, why);
                }
            }
        }
        let mut why = text.trim().to_string();
        if why.len() > max {
            let mut cut = max;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
        }
        if why.is_empty() {
            why = "the plugin failed without a message".into();
        }
        Failure::new(500, "PLUGIN_FAILED", why)
    }
}

/// UCloud reads 449 and 503 as "call integration/init and retry": nothing of ours
/// may send them for its own faults, and a status outside 400..=599 is no error.
pub fn safe_status(status: u16) -> u16 {
    match status {
        449 | 503 => 500,
        400..=599 => status,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_line_round_trips() {
        let f = Failure::new(403, "NOT_MAPPED", "no local account");
        assert_eq!(
            Failure::from_stderr(format!("noise\n{}\n\n", f.line()).as_bytes(), 100),
            f
        );
        assert_eq!(
            f.body(),
            json!({"why": "no local account", "errorCode": "NOT_MAPPED"})
        );
    }

    #[test]
    fn retry_statuses_are_never_passed_on() {
        for s in [449, 503, 200, 302, 600, 0] {
            assert_eq!(Failure::new(s, "X", "y").status, 500, "{s}");
        }
        let line = r#"{"status":503,"why":"busy"}"#;
        assert_eq!(Failure::from_stderr(line.as_bytes(), 100).status, 500);
    }

    #[test]
    fn plain_stderr_becomes_a_500_with_the_text() {
        let f = Failure::from_stderr("sbatch: error: Invalid partition\n".as_bytes(), 100);
        assert_eq!(
            (f.status, f.why.as_str()),
            (500, "sbatch: error: Invalid partition")
        );
        assert_eq!(Failure::from_stderr("ééé".as_bytes(), 3).why, "é");
        assert!(!Failure::from_stderr(b"", 10).why.is_empty());
    }
}
