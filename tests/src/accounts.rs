//! Local accounts and scratch space: commands run as an account, names no other test
//! uses, and accounts and folders in a home made for one test and removed after it.

use crate::Stack;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `args` as the local account `user` (`runuser -u user -- args...`).
pub fn run_as(user: &str, args: &[&str]) -> Output {
    // cwd `/`: the clone may sit in a directory the user cannot enter.
    Command::new("runuser")
        .current_dir("/")
        .args(["-u", user, "--"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run runuser -u {user}: {e}"))
}

/// A name no other test (or earlier run) uses, for files, drives and UCloud users.
pub fn unique(prefix: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{seq}", std::process::id())
}

/// Like [`unique`], short enough for a local account name (useradd takes 32 bytes)
/// and made of what such a name may hold.
pub fn unique_account(prefix: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 100;
    format!(
        "{prefix}{}{}{seq}",
        std::process::id() % 10000,
        nanos % 100000
    )
}

/// The uid of a local account.
pub fn uid_of(user: &str) -> u32 {
    let output = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(output.status.success(), "no local account {user}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// The home directory of a local account.
pub fn home_of(user: &str) -> String {
    let out = Command::new("getent")
        .args(["passwd", user])
        .output()
        .unwrap();
    assert!(out.status.success(), "no local account {user}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(':')
        .nth(5)
        .unwrap()
        .to_string()
}

/// A local account made for one test (useradd, a private home) and removed, with
/// any mapping of `ucloud`, when the test ends, whatever happens.
pub struct ScratchAccount<'s> {
    stack: &'s Stack,
    pub name: String,
    pub ucloud: String,
}

impl<'s> ScratchAccount<'s> {
    /// `prefix` starts the account's name (see [`unique_account`]).
    pub fn new(stack: &'s Stack, prefix: &str, ucloud: &str) -> ScratchAccount<'s> {
        let name = unique_account(prefix);
        let out = Command::new("useradd")
            .args([
                "--create-home",
                "--user-group",
                "--shell",
                "/bin/bash",
                &name,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let account = ScratchAccount {
            stack,
            name,
            ucloud: ucloud.to_string(),
        };
        // Private, as on a site: a browse that works proves it ran as this account.
        std::fs::set_permissions(
            account.home(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        account
    }

    pub fn home(&self) -> String {
        home_of(&self.name)
    }

    pub fn uid(&self) -> u32 {
        uid_of(&self.name)
    }
}

impl Drop for ScratchAccount<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.stack.bin("ucloud-registry"))
            .args(["remove", &self.ucloud])
            .current_dir("/")
            .output();
        let _ = Command::new("userdel")
            .args(["--remove", &self.name])
            .output();
    }
}

/// Runs `script` with `sh -c` as the local account `user`, in its home; it must
/// succeed. Its standard output.
pub fn as_user(user: &str, script: &str) -> String {
    let out = run_as(user, &["sh", "-c", &format!("cd && {script}")]);
    assert!(
        out.status.success(),
        "as {user}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A folder in a user's home, made and removed as that user (whatever the test left
/// in it, even without permissions), for a test's files.
pub struct ScratchDir {
    user: String,
    /// Its name, in the user's home.
    pub dir: String,
    home: String,
}

impl ScratchDir {
    /// `prefix` starts the folder's name (see [`unique`]).
    pub fn new(user: &str, prefix: &str) -> ScratchDir {
        let dir = unique(prefix);
        as_user(user, &format!("mkdir {dir}"));
        ScratchDir {
            user: user.into(),
            home: home_of(user),
            dir,
        }
    }

    /// The absolute path of `rel` inside it.
    pub fn local(&self, rel: &str) -> String {
        format!("{}/{}/{rel}", self.home, self.dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = run_as(
            &self.user,
            &[
                "sh",
                "-c",
                &format!("cd && chmod -R u+rwx {0}; rm -rf {0}", self.dir),
            ],
        );
    }
}
