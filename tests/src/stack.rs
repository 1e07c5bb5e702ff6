//! The running stack as its env file describes it: addresses, accounts, installed
//! binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The running local stack, as described by its env file.
pub struct Stack {
    vars: BTreeMap<String, String>,
}

/// `UCLOUD_IM_STACK_ENV` lets an outside checker point the tests at another env file;
/// by default it is the one `scripts/stack up` writes into this clone.
pub fn env_file() -> PathBuf {
    match std::env::var_os("UCLOUD_IM_STACK_ENV") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/stack/stack.env"),
    }
}

impl Stack {
    pub fn load() -> Stack {
        let path = env_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "run scripts/stack up first: {} missing or unreadable ({e})",
                path.display()
            )
        });
        let vars = parse_env(&text)
            .unwrap_or_else(|why| panic!("{}: {why}; rerun scripts/stack up", path.display()));
        Stack { vars }
    }

    pub fn get(&self, key: &str) -> String {
        match self.vars.get(key) {
            Some(value) => value.clone(),
            None => panic!(
                "{key} is not set in {}; rerun scripts/stack up",
                env_file().display()
            ),
        }
    }

    /// A value the env file may lack (the site's keys, say).
    pub fn try_get(&self, key: &str) -> Option<String> {
        self.vars.get(key).cloned()
    }

    pub fn prefix(&self) -> PathBuf {
        PathBuf::from(self.get("UCLOUD_IM_PREFIX"))
    }

    pub fn bin(&self, program: &str) -> PathBuf {
        Path::new(&self.get("UCLOUD_IM_BIN")).join(program)
    }

    /// `UCLOUD_IM_USERS` as `(ucloudName, localName)` pairs.
    pub fn users(&self) -> Vec<(String, String)> {
        pairs(&self.get("UCLOUD_IM_USERS"))
    }

    pub fn drive_of(&self, ucloud_name: &str) -> String {
        pairs(&self.get("UCLOUD_IM_DRIVES"))
            .into_iter()
            .find(|(name, _)| name == ucloud_name)
            .map(|(_, drive)| drive)
            .unwrap_or_else(|| panic!("UCLOUD_IM_DRIVES has no drive for {ucloud_name}"))
    }

    /// The local account the stack mapped `ucloud_name` to.
    pub fn local_of(&self, ucloud_name: &str) -> String {
        self.users()
            .into_iter()
            .find(|(name, _)| name == ucloud_name)
            .map(|(_, local)| local)
            .unwrap_or_else(|| panic!("UCLOUD_IM_USERS has no user {ucloud_name}"))
    }

    /// The stack's runtime directory (`target/stack`): pids, logs.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(self.get("UCLOUD_IM_STACK_LOGS"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// The stack, for suites that need its real Slurm cluster.
    pub fn with_slurm() -> Stack {
        let stack = Stack::load();
        assert_eq!(
            stack.get("UCLOUD_IM_SLURM"),
            "1",
            "the stack runs no Slurm cluster; rerun scripts/stack up"
        );
        stack
    }

    /// The audit log's lines (read as root, which the tests run as).
    pub fn audit_lines(&self) -> Vec<String> {
        let path = self.get("UCLOUD_IM_AUDIT_LOG");
        match std::fs::read_to_string(&path) {
            Ok(text) => text.lines().map(String::from).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot read the audit log {path}: {e}"),
        }
    }
}

pub(crate) fn checked(what: &str, output: &Output) -> String {
    if !output.status.success() {
        panic!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `A:x B:y` → `[(A, x), (B, y)]`. The right side (a local account or a drive id)
/// never holds a colon, so the last colon is the separator whatever the name holds.
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split_whitespace()
        .map(|item| match item.rsplit_once(':') {
            Some((left, right)) => (left.to_string(), right.to_string()),
            None => panic!("expected NAME:VALUE in stack.env, got {item:?}"),
        })
        .collect()
}

/// Parses the shell-sourceable subset the stack writes: `KEY=value` lines where the
/// value may mix bare text, single-quoted text and `\x` escapes; `#` comments.
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=value", index + 1));
        };
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' => loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => out.push(c),
                        None => return Err(format!("line {}: unterminated quote", index + 1)),
                    }
                },
                '\\' => match chars.next() {
                    Some(c) => out.push(c),
                    None => return Err(format!("line {}: dangling backslash", index + 1)),
                },
                c => out.push(c),
            }
        }
        vars.insert(key.trim().to_string(), out);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_unquote_like_the_shell() {
        let vars =
            parse_env("# stack\nA=plain\nB='two words'\nC='it'\\''s'\nexport D='x#1:y'\n\nE=\n")
                .unwrap();
        assert_eq!(vars["A"], "plain");
        assert_eq!(vars["B"], "two words");
        assert_eq!(vars["C"], "it's");
        assert_eq!(vars["D"], "x#1:y");
        assert_eq!(vars["E"], "");
        assert!(parse_env("A='open\n").is_err());
        assert!(parse_env("no equals\n").is_err());
    }

    #[test]
    fn pairs_split_at_the_last_colon() {
        assert_eq!(
            pairs("AliceHansen#1001:ucim-alice BobNielsen#2002:17"),
            vec![
                ("AliceHansen#1001".to_string(), "ucim-alice".to_string()),
                ("BobNielsen#2002".to_string(), "17".to_string())
            ]
        );
    }
}
