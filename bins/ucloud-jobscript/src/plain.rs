//! Small checks and the refusal type the renderer and the project table share.

use serde_json::Value;

/// Why the request is refused: UCloud gets this status, code and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub why: String,
}

/// `^/[A-Za-z0-9/._+-]*$` with no `.` or `..` component.
pub fn is_plain_base(base: &str) -> bool {
    base.starts_with('/')
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
        && !has_dot_component(base)
}

pub fn has_dot_component(path: &str) -> bool {
    path.split('/').any(|c| c == "." || c == "..")
}

pub fn is_slurm_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A value as JSON text, for messages.
pub fn tojson(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
