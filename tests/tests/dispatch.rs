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

use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ucloud_im_tests::{home_of, Stack};

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

// --- tokens, made here so that hostile ones can be made too ---------------------

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tests need the openssl command");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

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

fn rs256(key_file: &str, claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let signature = openssl(
        &["dgst", "-sha256", "-sign", key_file],
        signing_input.as_bytes(),
    );
    format!("{signing_input}.{}", b64url(&signature))
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mac = openssl(
        &[
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex}"),
            "-binary",
        ],
        signing_input.as_bytes(),
    );
    format!("{signing_input}.{}", b64url(&mac))
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

#[test]
fn the_plugin_runs_as_the_mapped_user_with_nothing_else() {
    let _lock = shared();
    let env = Env::new();
    let local = env.stack.local_of(ALICE);
    let run = env.run(&env.envelope(PROBE, Some(ALICE), request()));
    let probe = run.probe();

    let uid = id_of("-u", &local)[0];
    let gid = id_of("-g", &local)[0];
    assert_eq!(status_ids(&probe, "Uid"), vec![uid; 4]);
    assert_eq!(status_ids(&probe, "Gid"), vec![gid; 4]);
    let mut groups = status_ids(&probe, "Groups");
    let mut want = id_of("-G", &local);
    groups.sort();
    want.sort();
    assert_eq!(groups, want);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(probe["status"][cap], "0000000000000000", "{cap}");
    }
    assert_eq!(probe["status"]["NoNewPrivs"], "1");
    assert_eq!(probe["status"]["Umask"], "0077");

    let fds = probe["fds"].as_object().unwrap();
    let numbers: Vec<&str> = fds.keys().map(String::as_str).collect();
    assert_eq!(numbers, ["0", "1", "2", "3"], "open fds: {fds:?}");
    let request_fd = fds["3"].as_str().unwrap();
    assert!(
        request_fd.starts_with("/memfd:ucloud-request"),
        "fd 3 is {request_fd}"
    );

    let home = home_of(&local);
    assert_eq!(probe["cwd"], json!(home));
    assert_eq!(probe["argv"], json!([PROBE, "/dev/fd/3"]));
    let sent: Value = serde_json::from_str(probe["request"].as_str().unwrap()).unwrap();
    assert_eq!(sent, request());

    let prefix = env.stack.prefix();
    let libexec = prefix.join("usr/libexec/ucloud-im");
    let site = std::fs::read_to_string(env.etc().join("site.conf")).unwrap();
    let public_url = site
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("public_url")?
                .trim()
                .strip_prefix('=')
        })
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let expected = json!({
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": local,
        "LOGNAME": local,
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
        "UCLOUD_CALL": PROBE,
        "UCLOUD_PROVIDER": env.get("UCLOUD_IM_PROVIDER"),
        "UCLOUD_USERNAME": ALICE,
        "UCLOUD_PUBLIC_URL": public_url,
        "UCLOUD_IM_LIBEXEC": libexec.to_string_lossy(),
        "UCLOUD_IM_ETC": env.etc().to_string_lossy(),
        "UCLOUD_IM_DRIVES": prefix.join("var/lib/ucloud-im/drives").to_string_lossy(),
    });
    assert_eq!(probe["env"], expected);

    assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
    let audit = &run.audit[0];
    assert_eq!(audit["decision"], "allowed");
    assert_eq!(audit["call"], PROBE);
    assert_eq!(audit["ucloudUser"], ALICE);
    assert_eq!(audit["localUser"], json!(local));
    assert_eq!(audit["uid"], json!(uid));
}

#[test]
fn each_user_gets_their_own_account() {
    let _lock = shared();
    let env = Env::new();
    let bob = env.stack.local_of(BOB);
    let probe = env.run(&env.envelope(PROBE, Some(BOB), json!({}))).probe();
    assert_eq!(status_ids(&probe, "Uid"), vec![id_of("-u", &bob)[0]; 4]);
    assert_eq!(probe["env"]["UCLOUD_USERNAME"], BOB);
}

#[test]
fn a_secret_fd_and_a_hostile_environment_do_not_reach_the_plugin() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.env = vec![
        ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
        ("LD_LIBRARY_PATH".into(), "/tmp".into()),
        ("PATH".into(), "/tmp/evil:/usr/bin:/bin".into()),
        ("BASH_FUNC_ls%%".into(), "() { echo pwned; }".into()),
        ("UCLOUD_USERNAME".into(), BOB.into()),
        ("HOME".into(), "/root".into()),
    ];
    let run = env.run_with(&how);
    let probe = run.probe();
    let fds = probe["fds"].as_object().unwrap();
    assert!(!fds.contains_key("42"), "fd 42 reached the plugin: {fds:?}");
    assert!(
        fds.values()
            .all(|t| !t.as_str().unwrap().contains("dispatch-test")),
        "{fds:?}"
    );
    let plugin_env = probe["env"].as_object().unwrap();
    for key in ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_FUNC_ls%%"] {
        assert!(!plugin_env.contains_key(key), "{key} reached the plugin");
    }
    assert_eq!(plugin_env["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(plugin_env["UCLOUD_USERNAME"], ALICE);
    assert_ne!(plugin_env["HOME"], "/root");
}

// --- the caller and the installation ------------------------------------------------

#[test]
fn only_the_gateway_account_may_call() {
    let _lock = shared();
    let env = Env::new();
    let bob = env.stack.local_of(BOB);
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    // Any other account cannot even start it (4750 root:<gateway group>): the
    // kernel refuses the exec, so nothing runs and nothing is audited. The exec comes
    // from a shell running as that account: setpriv itself still holds root's
    // capabilities when it execs, and CAP_DAC_OVERRIDE would let it through.
    let as_shell = ["/bin/sh".to_string(), "-c".into(), "exec \"$0\"".into()];
    how.user = Some(bob.clone());
    how.setpriv = as_shell.to_vec();
    let run = env.run_with(&how);
    assert_eq!(run.output.status.code(), Some(126), "{}", run.stderr());
    assert!(
        run.stderr().contains("Permission denied"),
        "{}",
        run.stderr()
    );
    assert!(run.output.stdout.is_empty() && run.audit.is_empty());
    // An account given the gateway's group but not its uid gets past the kernel and
    // is refused by the dispatcher itself.
    how.user = None;
    how.setpriv = vec![
        "setpriv".into(),
        format!("--reuid={bob}"),
        format!("--regid={}", env.gateway()),
        "--clear-groups".into(),
    ];
    how.setpriv.extend(as_shell);
    env.run_with(&how)
        .refused(77, 403, "WRONG_CALLER", "only the gateway account", true);
    how.setpriv.clear();
    // Root is no gateway either.
    how.user = None;
    env.run_with(&how)
        .refused(77, 403, "WRONG_CALLER", "only the gateway account", true);
}

#[test]
fn no_new_privs_is_named_as_the_reason() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.setpriv = vec!["--no-new-privs".into()];
    env.run_with(&how).refused(
        78,
        500,
        "DISPATCHER_NOT_PRIVILEGED",
        "no_new_privs is set",
        false,
    );
}

#[test]
fn a_bounding_set_without_cap_setuid_is_a_clear_error() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.setpriv = vec!["--bounding-set=-setuid".into()];
    // Still root (euid 0), so the refusal is audited.
    env.run_with(&how).refused(
        78,
        500,
        "DISPATCHER_NOT_PRIVILEGED",
        "lacks CAP_SETUID",
        true,
    );
}

/// A copy of the dispatcher in a root-owned directory with the given owner and mode.
struct Copy {
    dir: PathBuf,
}

impl Copy {
    fn new(env: &Env, owner: &str, mode: u32) -> (Copy, PathBuf) {
        let dir = PathBuf::from(format!(
            "/var/tmp/dispatch-copy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("ucloud-dispatch");
        std::fs::copy(env.get("UCLOUD_IM_DISPATCH"), &copy).unwrap();
        let status = Command::new("chown")
            .arg(owner)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
        (Copy { dir }, copy)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_binary_without_setuid_or_not_owned_by_root_refuses() {
    let _lock = shared();
    let env = Env::new();
    let bob = env.stack.local_of(BOB);
    for (owner, mode) in [("root:root", 0o755), (bob.as_str(), 0o4755)] {
        let (_copy, program) = Copy::new(&env, owner, mode);
        let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
        how.program = program;
        env.run_with(&how).refused(
            78,
            500,
            "DISPATCHER_NOT_PRIVILEGED",
            "not running as root",
            false,
        );
    }
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

#[test]
fn writable_plugin_dir_or_plugin_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let dir = env.plugins();
    let plugin = dir.join(PROBE);
    let envelope = env.envelope(PROBE, Some(ALICE), json!({}));
    let key = env.etc().join("ucloud_key.pub");
    let site = env.etc().join("site.conf");
    let mappings = env.mappings();
    for (path, mode) in [
        (&dir, 0o775),
        (&dir, 0o757),
        (&plugin, 0o775),
        (&plugin, 0o757),
        (&key, 0o666),
        (&site, 0o664),
        (&mappings, 0o777),
    ] {
        let _guard = ModeGuard::set(path, mode);
        env.run(&envelope).refused(
            78,
            500,
            "UNSAFE_INSTALLATION",
            "writable by group or others",
            true,
        );
    }
    // Restored: it works again.
    env.run(&envelope).probe();
}

#[test]
fn a_setuid_plugin_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let _guard = ModeGuard::set(&env.plugins().join(PROBE), 0o4755);
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(78, 500, "UNSAFE_INSTALLATION", "setuid", true);
}

/// A file placed into the installation for one test, removed on drop.
struct Placed(PathBuf);

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_plugin_that_is_a_symlink_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let link = env.plugins().join("test.symlink");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env.plugins().join(PROBE), &link).unwrap();
    let _placed = Placed(link);
    env.run(&env.envelope("test.symlink", Some(ALICE), json!({})))
        .refused(78, 500, "UNSAFE_INSTALLATION", "is a symlink", true);
}

#[test]
fn a_call_without_a_plugin_is_unsupported_and_audited() {
    let _lock = shared();
    let env = Env::new();
    env.run(&env.envelope("test.nosuchplugin", Some(ALICE), json!({})))
        .refused(
            77,
            404,
            "UNSUPPORTED_CALL",
            "this provider does not implement test.nosuchplugin",
            true,
        );
}

#[test]
fn script_plugins_run_by_fd_and_see_only_their_own_script() {
    let _lock = exclusive();
    let env = Env::new();
    let path = env.plugins().join("test.script");
    std::fs::write(
        &path,
        "#!/bin/sh\nprintf '{\"uid\":\"%s\",\"arg0\":\"%s\",\"arg1\":\"%s\",\"fds\":\"%s\",\"request\":%s}\\n' \
         \"$(id -u)\" \"$0\" \"$1\" \"$(ls /proc/$$/fd | sort -n | tr '\\n' ' ')\" \"$(cat \"$1\")\"\n",
    )
    .unwrap();
    let placed = Placed(path);
    std::fs::set_permissions(&placed.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = env.run(&env.envelope("test.script", Some(ALICE), json!({"a": 1})));
    let out = run.probe();
    let alice = env.stack.local_of(ALICE);
    assert_eq!(out["uid"], json!(id_of("-u", &alice)[0].to_string()));
    assert_eq!(out["request"], json!({"a": 1}));
    // The kernel runs `/bin/sh /dev/fd/4 /dev/fd/3`: fd 4 is the script itself.
    assert_eq!(out["arg0"], "/dev/fd/4");
    assert_eq!(out["arg1"], "/dev/fd/3");
    let fds: Vec<&str> = out["fds"].as_str().unwrap().split_whitespace().collect();
    assert!(!fds.contains(&"42"), "{fds:?}");
    assert!(
        fds.iter().all(|fd| fd.parse::<u32>().unwrap() <= 10),
        "{fds:?}"
    );
}

#[test]
fn an_audit_log_that_cannot_be_trusted_refuses_every_request() {
    let _lock = exclusive();
    let env = Env::new();
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    let _guard = ModeGuard::set(&log, 0o644);
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(
            78,
            500,
            "AUDIT_FAILED",
            "must be owned by root with mode 0600",
            false,
        );
}

#[test]
fn service_calls_run_as_the_service_account() {
    let _lock = shared();
    let env = Env::new();
    let service = env.get("UCLOUD_IM_SERVICE_USER");
    // The stack's own (shell) plugin: no user, and a UCloud user in the envelope
    // does not change who it runs as.
    for user in [None, Some(ALICE)] {
        let run = env.run(&env.envelope("integration.retrieveManifest", user, json!({})));
        assert!(run.output.status.success(), "{}", run.stderr());
        let body: Value = serde_json::from_str(run.stdout().trim()).unwrap();
        assert_eq!(body["enabled"], true, "{body}");
        assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
        assert_eq!(run.audit[0]["decision"], "allowed");
        assert_eq!(run.audit[0]["localUser"], json!(service));
        assert_eq!(run.audit[0]["uid"], json!(id_of("-u", &service)[0]));
    }
}

// --- mapping ---------------------------------------------------------------------

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A mapping file written into the stack's store for one test, made just now.
fn place_mapping(env: &Env, ucloud: &str, local: &str, uid: u32) -> Placed {
    place_mapping_made_at(env, ucloud, local, uid, now_ms())
}

fn place_mapping_made_at(env: &Env, ucloud: &str, local: &str, uid: u32, created: u64) -> Placed {
    let path = env.mappings().join(hex(ucloud));
    std::fs::write(
        &path,
        json!({"ucloud": ucloud, "local": local, "uid": uid, "created": created}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Placed(path)
}

#[test]
fn refused_mapping_targets() {
    let _lock = exclusive();
    let env = Env::new();
    let nologin = env.get("UCLOUD_IM_NOLOGIN_USER");
    let service = env.get("UCLOUD_IM_SERVICE_USER");
    let alice = env.stack.local_of(ALICE);
    let cases = [
        ("DtestRoot#1", "root".to_string(), 0, "is root"),
        (
            "DtestDaemon#2",
            "daemon".to_string(),
            id_of("-u", "daemon")[0],
            "below min_uid",
        ),
        (
            "DtestService#3",
            service.clone(),
            id_of("-u", &service)[0],
            "below min_uid",
        ),
        (
            "DtestNologin#4",
            nologin.clone(),
            id_of("-u", &nologin)[0],
            "disabled shell",
        ),
        ("DtestStale#5", alice, 4242, "was mapped with uid 4242"),
        (
            "DtestGone#6",
            "dtest-nosuchuser".to_string(),
            5555,
            "does not exist",
        ),
    ];
    for (ucloud, local, uid, why) in cases {
        let _placed = place_mapping(&env, ucloud, &local, uid);
        env.run(&env.envelope(PROBE, Some(ucloud), json!({})))
            .refused(77, 403, "ACCOUNT_REFUSED", why, true);
    }
}

#[test]
fn an_expired_mapping_no_longer_works() {
    let _lock = exclusive();
    let env = Env::new();
    let expire: u64 = std::fs::read_to_string(env.stack.prefix().join("etc/ucloud-im/site.conf"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.split_once('=')
                .filter(|(k, _)| k.trim() == "mapping_expire_after_ms")
        })
        .map(|(_, v)| v.trim().parse().unwrap())
        .expect("the stack's site.conf sets mapping_expire_after_ms");
    let bob = env.stack.local_of(BOB);
    let uid = id_of("-u", &bob)[0];
    let old = now_ms() - expire - 1000;
    {
        let _placed = place_mapping_made_at(&env, "DtestExpired#8", &bob, uid, old);
        env.run(&env.envelope(PROBE, Some("DtestExpired#8"), json!({})))
            .refused(77, 403, "NOT_MAPPED", "has expired", true);
    }
    let _placed = place_mapping_made_at(&env, "DtestFresh#9", &bob, uid, old + 60_000);
    let probe = env
        .run(&env.envelope(PROBE, Some("DtestFresh#9"), json!({})))
        .probe();
    assert_eq!(status_ids(&probe, "Uid"), vec![uid; 4]);
}

#[test]
fn a_mapping_file_naming_another_user_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let path = env.mappings().join(hex("DtestSwap#7"));
    let alice = env.stack.local_of(ALICE);
    let body = json!({"ucloud": ALICE, "local": alice, "uid": id_of("-u", &alice)[0]});
    std::fs::write(&path, body.to_string()).unwrap();
    let _placed = Placed(path);
    env.run(&env.envelope(PROBE, Some("DtestSwap#7"), json!({})))
        .refused(78, 500, "MISCONFIGURED", "does not name UCloud user", true);
}

#[test]
fn unmapped_users_and_missing_users_are_refused() {
    let _lock = shared();
    let env = Env::new();
    env.run(&env.envelope(PROBE, Some("../../etc/passwd"), json!({})))
        .refused(77, 403, "NOT_MAPPED", "has no local account", true);
    env.run(&env.envelope(PROBE, None, json!({}))).refused(
        77,
        400,
        "USER_REQUIRED",
        "needs a UCloud user",
        true,
    );
}

// --- envelopes -----------------------------------------------------------------------

#[test]
fn bad_envelopes_are_refused() {
    let _lock = shared();
    let env = Env::new();
    let token = env.token();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not JSON"),
        (b" ".to_vec(), "not JSON"),
        (b"[]".to_vec(), "not a JSON object"),
        (
            envelope_with("../test.probe", "bearer", &token, Some(ALICE), json!({})),
            "not a call name",
        ),
        (
            envelope_with("test/../../probe", "bearer", &token, Some(ALICE), json!({})),
            "not a call name",
        ),
        (
            json!({"v": 2, "call": PROBE, "bearer": token, "request": {}})
                .to_string()
                .into_bytes(),
            "version",
        ),
        (
            json!({"v": 1, "call": PROBE, "bearer": token, "request": {}, "x": 1})
                .to_string()
                .into_bytes(),
            "unknown field",
        ),
        (
            json!({"v": 1, "call": PROBE, "bearer": token, "user": ALICE})
                .to_string()
                .into_bytes(),
            "request is missing",
        ),
        (
            json!({"v": 1, "call": PROBE, "bearer": token, "user": "a\u{0}b", "request": {}})
                .to_string()
                .into_bytes(),
            "control character",
        ),
    ];
    for (envelope, why) in cases {
        env.run(&envelope)
            .refused(64, 400, "BAD_ENVELOPE", why, true);
    }
}

#[test]
fn an_oversized_envelope_is_refused() {
    let _lock = shared();
    let env = Env::new();
    let padding = "x".repeat(8 << 20);
    let envelope = env.envelope(PROBE, Some(ALICE), json!({ "pad": padding }));
    env.run(&envelope)
        .refused(64, 400, "BAD_ENVELOPE", "larger than", true);
}

/// fd 3 closed without a byte: how the gateway lets a spare dispatcher go. Nothing
/// was asked, so nothing runs and nothing is recorded.
#[test]
fn an_empty_envelope_is_no_request() {
    let _lock = shared();
    let env = Env::new();
    let run = env.run(b"");
    assert_eq!(run.output.status.code(), Some(0), "{}", run.stderr());
    assert!(
        run.output.stdout.is_empty(),
        "a plugin ran: {}",
        run.stdout()
    );
    assert!(run.output.stderr.is_empty(), "stderr: {}", run.stderr());
    assert!(run.audit.is_empty(), "audit lines: {:?}", run.audit);
}

/// A dispatcher started ahead of its request waits for the envelope with its 30 s
/// alarm paused (the alarm would kill it otherwise), then decides as usual.
#[test]
fn an_envelope_that_comes_late_is_still_served() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.fd3_source = Some("sleep 32; cat \"$1\"".into());
    let run = env.run_with(&how);
    let probe = run.probe();
    let uid = id_of("-u", &env.stack.local_of(ALICE))[0];
    assert_eq!(status_ids(&probe, "Uid"), [uid; 4]);
    assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
    assert_eq!(run.audit[0]["decision"], "allowed");
}

/// Once the envelope has begun, the 30 s alarm runs again: a caller that sends one
/// byte and then nothing cannot keep a root process waiting.
#[test]
fn an_envelope_that_stops_half_way_ends_with_the_alarm() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, b"");
    // The feeder keeps fd 3 open but not the test's stderr (or the run would wait on it).
    how.fd3_source = Some("printf '{'; exec sleep 60 2>/dev/null".into());
    let started = std::time::Instant::now();
    let run = env.run_with(&how);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        run.output.status.signal(),
        Some(14),
        "{:?} {}",
        run.output.status,
        run.stderr()
    );
    let took = started.elapsed().as_secs();
    assert!((29..50).contains(&took), "SIGALRM after {took} s");
    assert!(
        run.output.stdout.is_empty(),
        "a plugin ran: {}",
        run.stdout()
    );
    assert!(run.audit.is_empty(), "audit lines: {:?}", run.audit);
}

#[test]
fn no_envelope_on_fd_3_is_a_usage_error() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, b"");
    how.envelope_fd = false;
    env.run_with(&how)
        .refused(64, 400, "BAD_REQUEST", "fd 3 is not open", true);
}

#[test]
fn transfer_tokens_only_on_the_data_channel() {
    let _lock = shared();
    let env = Env::new();
    let envelope = envelope_with(PROBE, "transfer", "abc.def.ghi", Some(ALICE), json!({}));
    env.run(&envelope).refused(
        77,
        400,
        "UNSUPPORTED_CREDENTIAL",
        "transfer tokens are accepted only for",
        true,
    );
}

/// The transfer key the dispatcher signs with. The installer (scripts/stack up) makes
/// it; a test never does, or a missing install step would hide behind it.
fn transfer_key(env: &Env) -> Vec<u8> {
    let path = env.stack.prefix().join("var/lib/ucloud-im/transfer.key");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the installation must make the transfer key",
            path.display()
        )
    })
}

/// The probe installed under another call's name for one test; whatever was there
/// is put back on drop.
struct ProbeAs {
    path: PathBuf,
    saved: Option<PathBuf>,
}

impl ProbeAs {
    fn install(env: &Env, call: &str) -> ProbeAs {
        let path = env.plugins().join(call);
        // Not `with_extension`: that would give files.createDownload and
        // files.download the same saved name.
        let saved = env.plugins().join(format!("{call}-dispatch-test-saved"));
        let saved = match std::fs::rename(&path, &saved) {
            Ok(()) => Some(saved),
            Err(_) => None,
        };
        std::fs::copy(env.plugins().join(PROBE), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ProbeAs { path, saved }
    }
}

impl Drop for ProbeAs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(saved) = &self.saved {
            let _ = std::fs::rename(saved, &self.path);
        }
    }
}

#[test]
fn transfer_tokens_are_minted_for_one_user_and_one_call() {
    let _lock = exclusive();
    let env = Env::new();
    let key = transfer_key(&env);
    let _create = ProbeAs::install(&env, "files.createDownload");
    let _download = ProbeAs::install(&env, "files.download");
    let alice = env.stack.local_of(ALICE);
    let alice_uid = id_of("-u", &alice)[0];

    let created = env
        .run(&env.envelope("files.createDownload", Some(ALICE), json!({})))
        .probe();
    let token = created["env"]["UCLOUD_TRANSFER_TOKEN"]
        .as_str()
        .expect("createDownload gets a transfer token")
        .to_string();

    let download = |user: Option<&str>, token: &str| {
        env.run(&envelope_with(
            "files.download",
            "transfer",
            token,
            user,
            json!({}),
        ))
    };
    let probe = download(None, &token).probe();
    assert_eq!(status_ids(&probe, "Uid"), vec![alice_uid; 4]);
    assert_eq!(probe["env"]["UCLOUD_USERNAME"], ALICE);
    // The data-channel plugin sees the token it was called with, nothing newer.
    assert_eq!(probe["env"]["UCLOUD_TRANSFER_TOKEN"], token.as_str());
    download(Some(ALICE), &token).probe();

    download(Some(BOB), &token).refused(77, 403, "USER_MISMATCH", "the token is for", true);
    env.run(&envelope_with(
        "files.upload",
        "transfer",
        &token,
        None,
        json!({}),
    ))
    .refused(77, 401, "BAD_TOKEN", "is not for files.upload", true);
    env.run(&env.envelope("files.download", Some(ALICE), json!({})))
        .refused(
            77,
            400,
            "UNSUPPORTED_CREDENTIAL",
            "takes a transfer token",
            true,
        );

    let t = now();
    let claims = |exp: u64| {
        json!({"typ": "ucloud-im-transfer", "call": "files.download", "ucloud": ALICE,
               "local": alice, "uid": alice_uid, "jti": "x", "iat": t - 10, "exp": exp})
    };
    download(None, &hs256(&key, &claims(t + 60))).probe();
    download(None, &hs256(&[9u8; 32], &claims(t + 60))).refused(
        77,
        401,
        "BAD_TOKEN",
        "signature does not verify",
        true,
    );
    download(None, &hs256(&key, &claims(t - 1))).refused(77, 401, "BAD_TOKEN", "has expired", true);
    let rs = rs256(&env.get("UCLOUD_SIM_PRIVATE_KEY"), &claims(t + 60));
    download(None, &rs).refused(77, 401, "BAD_TOKEN", "does not use HS256", true);

    // The mapping changed after the token was minted: the token names the old account.
    let mapping = env.mappings().join(hex(ALICE));
    let original = std::fs::read(&mapping).unwrap();
    let bob = env.stack.local_of(BOB);
    let remapped = json!({"ucloud": ALICE, "local": bob, "uid": id_of("-u", &bob)[0]});
    std::fs::write(&mapping, remapped.to_string()).unwrap();
    let run = download(None, &token);
    std::fs::write(&mapping, original).unwrap();
    run.refused(77, 403, "ACCOUNT_REFUSED", "was issued for", true);
}

// --- tokens ----------------------------------------------------------------------------

#[test]
fn hostile_tokens_are_refused() {
    let _lock = shared();
    let env = Env::new();
    let t = now();
    let other_key = Scratch::new(&openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        b"",
    ));
    let public_key_file = std::fs::read(env.etc().join("ucloud_key.pub")).unwrap();
    let public_pem = openssl(
        &["pkey", "-pubout"],
        &std::fs::read(env.get("UCLOUD_SIM_PRIVATE_KEY")).unwrap(),
    );
    let unsigned = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(good_claims().to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            env.token_with(&claims_with(&[
                ("iat", json!(t - 1000)),
                ("exp", json!(t - 400)),
            ])),
            "expired",
        ),
        (
            "not yet valid",
            env.token_with(&claims_with(&[("nbf", json!(t + 600))])),
            "not valid yet",
        ),
        (
            "issued in the future",
            env.token_with(&claims_with(&[
                ("iat", json!(t + 600)),
                ("exp", json!(t + 1000)),
            ])),
            "future",
        ),
        (
            "wrong issuer",
            env.token_with(&claims_with(&[("iss", json!("evil.example"))])),
            "issuer",
        ),
        (
            "wrong subject",
            env.token_with(&claims_with(&[("sub", json!("#P_hpc"))])),
            "subject",
        ),
        (
            "provider role",
            env.token_with(&claims_with(&[("role", json!("PROVIDER"))])),
            "role",
        ),
        (
            "too long",
            env.token_with(&claims_with(&[("exp", json!(t + 86_400))])),
            "lifetime",
        ),
        (
            "wrong key",
            rs256(other_key.0.to_str().unwrap(), &good_claims()),
            "signature",
        ),
        ("alg none", unsigned, "not a JWT"),
        (
            "HS256 keyed with the key file",
            hs256(&public_key_file, &good_claims()),
            "not RS256",
        ),
        (
            "HS256 keyed with the PEM",
            hs256(&public_pem, &good_claims()),
            "not RS256",
        ),
        ("garbage", "garbage".into(), "not a JWT"),
    ];
    for (name, token, why) in cases {
        let envelope = envelope_with(PROBE, "bearer", &token, Some(ALICE), json!({}));
        let run = env.run(&envelope);
        assert_eq!(
            run.output.status.code(),
            Some(77),
            "{name}: {}",
            run.stderr()
        );
        run.refused(77, 401, "BAD_TOKEN", why, true);
    }
}

// --- strict mode --------------------------------------------------------------------

/// site.conf with extra lines for one test, put back on drop.
struct SiteConf {
    path: PathBuf,
    original: Vec<u8>,
}

impl SiteConf {
    fn append(env: &Env, extra: &str) -> SiteConf {
        let path = env.etc().join("site.conf");
        let original = std::fs::read(&path).unwrap();
        let mut text = original.clone();
        text.extend_from_slice(extra.as_bytes());
        let tmp = path.with_extension("conf.dispatch-test");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        SiteConf { path, original }
    }
}

impl Drop for SiteConf {
    fn drop(&mut self) {
        let tmp = self.path.with_extension("conf.dispatch-test");
        std::fs::write(&tmp, &self.original).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

#[test]
fn strict_mode_takes_the_user_from_the_signed_claim_only() {
    let _lock = exclusive();
    let env = Env::new();
    let _site = SiteConf::append(&env, "\nuser_mode = strict\nuser_claim = ucloudUsername\n");
    let with_alice = env.token_with(&claims_with(&[("ucloudUsername", json!(ALICE))]));

    // No claim: the header alone proves nothing.
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(77, 400, "USER_REQUIRED", "no ucloudUsername claim", true);
    // A header that contradicts the claim.
    env.run(&envelope_with(
        PROBE,
        "bearer",
        &with_alice,
        Some(BOB),
        json!({}),
    ))
    .refused(77, 403, "USER_MISMATCH", "the token is for", true);
    // The claim alone is enough.
    let probe = env
        .run(&envelope_with(
            PROBE,
            "bearer",
            &with_alice,
            None,
            json!({}),
        ))
        .probe();
    assert_eq!(probe["env"]["UCLOUD_USERNAME"], ALICE);
    let alice = env.stack.local_of(ALICE);
    assert_eq!(status_ids(&probe, "Uid"), vec![id_of("-u", &alice)[0]; 4]);
}

#[test]
fn a_broken_site_conf_is_a_configuration_error() {
    let _lock = exclusive();
    let env = Env::new();
    let _site = SiteConf::append(&env, "\nmni_uid = 5\n");
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(78, 500, "MISCONFIGURED", "unknown key", true);
}

// --- the audit log under attack ---------------------------------------------------

/// Every line of the audit log is a whole JSON record, and the log ends in a newline
/// (no fragment for the next record to be glued to).
fn assert_whole_records(log: &Path) {
    // Read under the writers' lock: a record being written is not yet whole.
    let out = Command::new("flock")
        .args(["--shared", "--timeout", "30"])
        .arg(log)
        .arg("cat")
        .arg(log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = out.stdout;
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "the audit log ends in a partial record: {:?}",
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..])
    );
    for line in String::from_utf8(bytes)
        .expect("the audit log is UTF-8")
        .lines()
    {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole record ({e}): {line:?}"));
        assert!(record["decision"].is_string(), "{line}");
    }
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).unwrap().len()
}

/// Whether this process's capability bounding set (which the dispatcher inherits)
/// holds CAP_SYS_RESOURCE, without which no one can raise a hard limit.
fn bounding_set_has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

/// The attack of a caller who sets a small soft file-size limit and then has the
/// dispatcher refuse it early (an OPENSSL_*cap variable is refused in step 1): the
/// refusal's record must not be written under that limit, cut short (a limit that
/// ends inside the record) or not at all (a limit below the log's length, whose
/// SIGXFSZ would end the process).
#[test]
fn an_early_refusal_under_a_small_file_size_limit_is_recorded_whole() {
    // The log's length must not move between measuring it and the run.
    let _lock = exclusive();
    let env = Env::new();
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    for inside_the_record in [true, false] {
        let len = log_len(&log);
        let limit = if inside_the_record { len + 20 } else { 0 };
        let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
        how.env = vec![("OPENSSL_ia32cap".into(), "~0x0".into())];
        how.setpriv = vec![
            "prlimit".into(),
            format!("--fsize={limit}:unlimited"),
            "--".into(),
        ];
        let run = env.run_with(&how);
        run.refused(64, 400, "BAD_REQUEST", "OPENSSL_", true);
        assert_eq!(run.audit[0]["errorCode"], "BAD_REQUEST");
        assert_whole_records(&log);
    }
}

/// The same caller with a hard limit too. Where the bounding set holds
/// CAP_SYS_RESOURCE the dispatcher lifts the limit and serves the request; where it
/// does not (this machine's containers), the limit is refused and its record, which
/// cannot fit, is not written at all: never half of it.
#[test]
fn a_hard_file_size_limit_leaves_whole_records_or_none() {
    let _lock = exclusive();
    let env = Env::new();
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    let can_raise = bounding_set_has_sys_resource();
    for inside_the_record in [true, false] {
        let len = log_len(&log);
        let limit = if inside_the_record { len + 20 } else { len / 2 };
        let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
        how.setpriv = vec![
            "prlimit".into(),
            format!("--fsize={limit}:{limit}"),
            "--".into(),
        ];
        let run = env.run_with(&how);
        if can_raise {
            run.probe();
            assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
            assert_eq!(run.audit[0]["decision"], "allowed");
        } else {
            run.refused(64, 400, "BAD_REQUEST", "hard file-size limit", false);
            assert_eq!(log_len(&log), len, "the log changed");
        }
        assert_whole_records(&log);
    }
}

/// Removes a refused caller's count before and after a test.
struct LimitState(PathBuf);

impl LimitState {
    fn of(env: &Env, uid: u32) -> LimitState {
        let path = env
            .stack
            .prefix()
            .join("var/lib/ucloud-im/audit-limit")
            .join(uid.to_string());
        let _ = std::fs::remove_file(&path);
        LimitState(path)
    }
}

impl Drop for LimitState {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the dispatcher `times` times, as fast as a shell can, as real uid `uid` with
/// the gateway's group (so the kernel lets it start); returns its stderr.
fn flood(env: &Env, uid: u32, times: u32) -> String {
    let out = Command::new("setpriv")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={}", env.gateway()))
        .arg("--clear-groups")
        // A shell of its own execs the dispatcher: setpriv would still hold root's
        // capabilities at its exec.
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "i=0; while [ $i -lt {times} ]; do \"$0\" 3</dev/null; i=$((i + 1)); done"
        ))
        .arg(env.get("UCLOUD_IM_DISPATCH"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// The attack of item 5: a process of the gateway's group that is not the gateway
/// runs the dispatcher in a loop. Every run is refused (and says so), but the log
/// takes at most a burst of its records per window plus one summary of the rest,
/// and the gateway's own records are written as ever.
#[test]
fn a_flood_of_refused_calls_grows_the_log_by_a_bounded_amount() {
    const BURST: usize = 10;
    const WINDOW: Duration = Duration::from_secs(30);
    const FLOOD: u32 = 300;
    let _lock = shared();
    let env = Env::new();
    // No account: a process root gave that uid and the gateway's group.
    let flooder = 3_900_000 + std::process::id() % 10_000;
    let _state = LimitState::of(&env, flooder);
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    let of_flooder = |lines: &[String]| -> Vec<Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("a whole record"))
            .filter(|v| v["callerUid"] == json!(flooder))
            .collect()
    };
    let before = env.stack.audit_lines().len();
    let started = Instant::now();
    let stderr = flood(&env, flooder, FLOOD);
    let took = started.elapsed();
    // Each run is still refused and told why.
    assert_eq!(stderr.lines().count(), FLOOD as usize, "{stderr}");
    assert!(
        stderr.lines().all(|l| l.contains("WRONG_CALLER")),
        "{stderr}"
    );
    let records = of_flooder(&env.stack.audit_lines()[before..]);
    let windows = (took.as_secs() / WINDOW.as_secs() + 1) as usize;
    assert!(
        !records.is_empty() && records.len() <= windows * (BURST + 1),
        "{} records of {FLOOD} refusals in {took:?}",
        records.len()
    );
    assert_eq!(records[0]["decision"], "refused");
    assert_eq!(records[0]["errorCode"], "WRONG_CALLER");
    assert_whole_records(&log);

    // The gateway's request is recorded as ever.
    let run = env.run(&env.envelope(PROBE, Some(ALICE), json!({})));
    run.probe();
    assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
    assert_eq!(run.audit[0]["decision"], "allowed");

    // After the window the flooder's next record comes after the count of what was
    // left out, and every refusal is accounted for: written, or counted.
    let last_window = records
        .iter()
        .map(|r| r["time"].as_u64().unwrap())
        .max()
        .unwrap();
    let wait = (last_window + WINDOW.as_millis() as u64 + 500).saturating_sub(now_ms());
    std::thread::sleep(Duration::from_millis(wait));
    let before_last = env.stack.audit_lines().len();
    let stderr = flood(&env, flooder, 1);
    assert!(stderr.contains("WRONG_CALLER"), "{stderr}");
    let last = of_flooder(&env.stack.audit_lines()[before_last..]);
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[0]["decision"], "suppressed", "{last:?}");
    assert_eq!(last[1]["errorCode"], "WRONG_CALLER", "{last:?}");
    let all = of_flooder(&env.stack.audit_lines()[before..]);
    let written = all.iter().filter(|r| r["decision"] == "refused").count() as u64;
    let counted: u64 = all.iter().filter_map(|r| r["suppressed"].as_u64()).sum();
    assert_eq!(written + counted, FLOOD as u64 + 1, "{all:?}");
}
