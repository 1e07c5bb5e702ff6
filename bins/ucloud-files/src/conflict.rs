//! UCloud's `conflictPolicy`: what to do when the name a call would create exists.

use crate::error::Error;
use crate::path::MAX_NAME;
use nix::fcntl::AtFlags;
use nix::sys::stat::fstatat;
use serde_json::Value;
use std::os::fd::AsFd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Pick a free name: `name(1).ext`, `name(2).ext`, ...
    Rename,
    /// Fail with 409 and change nothing.
    Reject,
    /// Put the new entry in place of the old one.
    Replace,
    /// Folders: merge into the existing folder, renaming clashing entries inside;
    /// files: as `Rename`.
    MergeRename,
}

impl Policy {
    /// UCloud's default when the request has none is `REJECT`.
    pub fn of(item: &Value) -> Result<Policy, Error> {
        match item.get("conflictPolicy") {
            None | Some(Value::Null) => Ok(Policy::Reject),
            Some(Value::String(s)) => match s.as_str() {
                "RENAME" => Ok(Policy::Rename),
                "REJECT" => Ok(Policy::Reject),
                "REPLACE" => Ok(Policy::Replace),
                "MERGE_RENAME" => Ok(Policy::MergeRename),
                other => Err(Error::BadRequest(format!(
                    "conflictPolicy {other:?} is not one of RENAME, REJECT, REPLACE, MERGE_RENAME"
                ))),
            },
            Some(v) => Err(Error::BadRequest(format!(
                "conflictPolicy must be a string, got {v}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Rename => "RENAME",
            Policy::Reject => "REJECT",
            Policy::Replace => "REPLACE",
            Policy::MergeRename => "MERGE_RENAME",
        }
    }
}

pub fn exists(dir: &impl AsFd, name: &str) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
}

/// The `n`th alternative of `name`: the counter goes before the extension, as
/// UCloud's own providers do (`report(1).pdf`). Hidden names keep their dot.
pub fn variant(name: &str, n: u32) -> String {
    let split = name.rfind('.').filter(|&i| i > 0).unwrap_or(name.len());
    let (stem, ext) = name.split_at(split);
    let mut stem = stem.to_string();
    let suffix = format!("({n}){ext}");
    while stem.len() + suffix.len() > MAX_NAME {
        stem.pop();
    }
    format!("{stem}{suffix}")
}

/// A name in `dir` that is free now: `name` itself, or its first free variant.
/// The caller creates it with a no-replace primitive and retries on EEXIST, since
/// another process may take it between this look and that create.
pub fn free_name(dir: &impl AsFd, name: &str) -> Result<String, Error> {
    if !exists(dir, name) {
        return Ok(name.to_string());
    }
    for n in 1..10_000 {
        let candidate = variant(name, n);
        if !exists(dir, &candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::Conflict(format!(
        "{name} and its first 9999 renamed variants all exist"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_keep_the_extension() {
        assert_eq!(variant("report.pdf", 1), "report(1).pdf");
        assert_eq!(variant("a.tar.gz", 2), "a.tar(2).gz");
        assert_eq!(variant("dir", 3), "dir(3)");
        assert_eq!(variant(".bashrc", 1), ".bashrc(1)");
        let long = "x".repeat(MAX_NAME);
        assert_eq!(variant(&long, 12).len(), MAX_NAME);
    }

    #[test]
    fn policies_parse() {
        use serde_json::json;
        assert_eq!(Policy::of(&json!({})).unwrap(), Policy::Reject);
        assert_eq!(
            Policy::of(&json!({"conflictPolicy": "MERGE_RENAME"})).unwrap(),
            Policy::MergeRename
        );
        assert!(Policy::of(&json!({"conflictPolicy": "OVERWRITE"})).is_err());
        assert!(Policy::of(&json!({"conflictPolicy": 1})).is_err());
    }
}
