//! End-to-end tests of ucloud-dispatch: the real binary the stack installed root-owned
//! `4750` (group: the gateway's), run as the real gateway account with an envelope on fd 3, executing the
//! real `test.probe` plugin. Every hostile case checks the refusal line, the exit
//! code, that no plugin ran (the probe prints to stdout) and that the audit log got
//! exactly the one line for that run (found by pid: bash and setpriv exec, so the
//! dispatcher keeps the pid of the spawned child).
//!
//! Tests that change the installation (modes, mapping files, site.conf, extra plugins)
//! take the write side of `INSTALL`, the others the read side.
#![forbid(unsafe_code)]

mod audit_log;
mod caller;
mod envelopes;
mod mapping;
mod plugins;
mod running_as_the_user;
mod site_conf;
mod tokens;

use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ucloud_im_tests::{base64url, hex, home_of, hs256, openssl, rs256, Stack};

static INSTALL: RwLock<()> = RwLock::new(());
static SEQ: AtomicUsize = AtomicUsize::new(0);

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
const PROBE: &str = "test.probe";

fn shared() -> RwLockReadGuard<'static, ()> {
    INSTALL.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    INSTALL.write().unwrap_or_else(|e| e.into_inner())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A scratch file only root can read, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(contents: &[u8]) -> Scratch {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!(
            "dispatch-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        file.write_all(contents).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// --- tokens ----------------------------------------------------------------------

fn good_claims() -> Value {
    let t = now();
    json!({"sub": "_UCloud", "role": "SERVICE", "principalType": "service",
           "iss": "cloud.sdu.dk", "aud": ["all:write"], "iat": t - 10, "exp": t + 590})
}

fn claims_with(changes: &[(&str, Value)]) -> Value {
    let mut claims = good_claims();
    for (key, value) in changes {
        claims[*key] = value.clone();
    }
    claims
}

// --- running the dispatcher ----------------------------------------------------

struct Env {
    stack: Stack,
}

impl Env {
    fn new() -> Env {
        Env {
            stack: Stack::load(),
        }
    }

    fn get(&self, key: &str) -> String {
        self.stack.get(key)
    }

    fn token(&self) -> String {
        rs256(&self.get("UCLOUD_SIM_PRIVATE_KEY"), &good_claims())
    }

    fn token_with(&self, claims: &Value) -> String {
        rs256(&self.get("UCLOUD_SIM_PRIVATE_KEY"), claims)
    }

    fn envelope(&self, call: &str, user: Option<&str>, request: Value) -> Vec<u8> {
        envelope_with(call, "bearer", &self.token(), user, request)
    }

    fn etc(&self) -> PathBuf {
        self.stack.prefix().join("etc/ucloud-im")
    }

    fn mappings(&self) -> PathBuf {
        self.stack.prefix().join("var/lib/ucloud-im/mappings")
    }

    fn plugins(&self) -> PathBuf {
        PathBuf::from(self.get("UCLOUD_IM_PLUGIN_DIR"))
    }

    fn gateway(&self) -> String {
        self.get("UCLOUD_IM_GATEWAY_USER")
    }

    /// The installed dispatcher, as the gateway account, envelope on fd 3.
    fn run(&self, envelope: &[u8]) -> Run {
        self.run_with(&Invocation::new(self, envelope))
    }

    fn run_with(&self, how: &Invocation) -> Run {
        let envelope = Scratch::new(&how.envelope);
        let secret = Scratch::new(b"the caller's secret");
        let mut script = String::from("exec ");
        match &how.fd3_source {
            // Closed, not merely not given: the test runner may have inherited an
            // fd 3 (flock(1) hands the command its lock there).
            _ if !how.envelope_fd => script.push_str("3<&- "),
            None => script.push_str("3<\"$1\" "),
            // A pipe fed by a command (which may wait, as a spare's does).
            Some(source) => script.push_str(&format!("3< <({source}) ")),
        }
        script.push_str("42<\"$2\"; shift 2; exec \"$@\"");
        let mut command = Command::new("/bin/bash");
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(how.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("-c")
            .arg(script)
            .arg("dispatch-test")
            .arg(&envelope.0)
            .arg(&secret.0);
        match &how.user {
            Some(user) => {
                command
                    .arg("setpriv")
                    .arg(format!("--reuid={user}"))
                    .arg(format!("--regid={user}"))
                    .arg("--init-groups")
                    .args(&how.setpriv);
            }
            None => {
                command.args(&how.setpriv);
            }
        }
        command.arg(&how.program);
        let before = self.stack.audit_lines().len();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start bash");
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        let audit = self.stack.audit_lines()[before..]
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["pid"] == json!(pid))
            .collect();
        Run { output, audit }
    }
}

fn envelope_with(
    call: &str,
    kind: &str,
    token: &str,
    user: Option<&str>,
    request: Value,
) -> Vec<u8> {
    let mut v = json!({"v": 1, "call": call, kind: token, "request": request});
    if let Some(user) = user {
        v["user"] = json!(user);
    }
    v.to_string().into_bytes()
}

struct Invocation {
    envelope: Vec<u8>,
    /// The account to become with setpriv (None: run `setpriv` args as given).
    user: Option<String>,
    setpriv: Vec<String>,
    env: Vec<(String, String)>,
    program: PathBuf,
    envelope_fd: bool,
    /// A shell command whose output is fd 3 (a pipe then); `$1` is the envelope's file.
    fd3_source: Option<String>,
}

impl Invocation {
    fn new(env: &Env, envelope: &[u8]) -> Invocation {
        Invocation {
            envelope: envelope.to_vec(),
            user: Some(env.gateway()),
            setpriv: Vec::new(),
            env: Vec::new(),
            program: PathBuf::from(env.get("UCLOUD_IM_DISPATCH")),
            envelope_fd: true,
            fd3_source: None,
        }
    }
}

struct Run {
    output: Output,
    audit: Vec<Value>,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// The probe's report: the plugin ran.
    fn probe(&self) -> Value {
        assert!(
            self.output.status.success(),
            "the dispatcher failed: {:?} {}",
            self.output.status,
            self.stderr()
        );
        serde_json::from_str(self.stdout().trim())
            .unwrap_or_else(|e| panic!("probe output is not JSON ({e}): {}", self.stdout()))
    }

    /// A refusal: one failure line on stderr, the exit code, no plugin output, and
    /// (when the dispatcher had root) exactly one audit line saying refused.
    fn refused(&self, exit: i32, status: u64, code: &str, why_contains: &str, audited: bool) {
        let stderr = self.stderr();
        assert_eq!(
            self.output.status.code(),
            Some(exit),
            "exit code; stderr: {stderr}"
        );
        assert!(
            self.output.stdout.is_empty(),
            "a plugin ran: {}",
            self.stdout()
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one failure line, got {stderr:?}");
        let line: Value = serde_json::from_str(lines[0])
            .unwrap_or_else(|_| panic!("stderr is not a JSON line: {stderr}"));
        assert_eq!(line["status"], json!(status), "{stderr}");
        assert_eq!(line["errorCode"], json!(code), "{stderr}");
        let why = line["why"].as_str().unwrap_or_default();
        assert!(
            why.contains(why_contains),
            "why {why:?} lacks {why_contains:?}"
        );
        if audited {
            assert_eq!(self.audit.len(), 1, "audit lines: {:?}", self.audit);
            assert_eq!(self.audit[0]["decision"], "refused");
            assert_eq!(self.audit[0]["errorCode"], json!(code));
        } else {
            assert!(self.audit.is_empty(), "audit lines: {:?}", self.audit);
        }
    }
}

fn request() -> Value {
    json!({"items": [{"id": "/17/x", "label": "ÆØÅ \"quoted\""}]})
}

// --- the positive case ------------------------------------------------------------

fn status_ids(probe: &Value, field: &str) -> Vec<u32> {
    probe["status"][field]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

fn id_of(flag: &str, user: &str) -> Vec<u32> {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Changes a mode for the length of a test and puts it back, even on panic.
struct ModeGuard {
    path: PathBuf,
    mode: u32,
}

impl ModeGuard {
    fn set(path: &Path, mode: u32) -> ModeGuard {
        let old = std::fs::metadata(path).unwrap().mode() & 0o7777;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        ModeGuard {
            path: path.to_path_buf(),
            mode: old,
        }
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(self.mode)).unwrap();
    }
}

/// A file placed into the installation for one test, removed on drop.
struct Placed(PathBuf);

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// --- mapping ---------------------------------------------------------------------

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
