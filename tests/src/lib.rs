//! Helpers for the end-to-end tests: they drive the local stack that `scripts/stack up`
//! started, through the addresses and accounts it wrote to `target/stack/stack.env`.
//!
//! A missing stack is a failure, never a skip: a test that silently skips on a machine
//! without the stack would let a broken chain pass.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

    /// The simulator with none of the variables it takes defaults from: what a
    /// test's own environment holds (a sourced stack.env, say) changes nothing.
    fn sim(&self) -> Command {
        let mut command = Command::new(self.bin("ucloud-sim"));
        for name in ["UCLOUD_IM_LB_URL", "UCLOUD_IM_GATEWAY_URL", "UCLOUD_IM_CA"] {
            command.env_remove(name);
        }
        command
    }

    /// A UCloud bearer token from the simulator; `extra` goes after the fixed options
    /// (e.g. `["--fresh"]`, `["--lifetime", "7200"]`).
    pub fn token(&self, extra: &[&str]) -> String {
        let output = self
            .sim()
            .arg("token")
            .args(["--signing-key", &self.get("UCLOUD_SIM_PRIVATE_KEY")])
            .args(["--state", &self.get("UCLOUD_IM_STATE")])
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ucloud-sim token: {e}"));
        let stdout = checked("ucloud-sim token", &output);
        let token = stdout.trim().to_string();
        assert!(!token.is_empty(), "ucloud-sim token printed nothing");
        token
    }

    /// One call the way UCloud makes it (as `user`, or without a user), in plain HTTP
    /// to the direct gateway (`UCLOUD_IM_GATEWAY_URL`), no balancer in between.
    /// The body is parsed JSON, a JSON string for a text body, `Null` for an empty one.
    pub fn call(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.call_with(user, None, method, path, body)
    }

    /// Like [`Stack::call`], with an explicit bearer token (for hostile tokens).
    pub fn call_with(
        &self,
        user: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.call_direct(&["call"], user, token, method, path, body)
    }

    /// Like [`Stack::call`], but a job creation goes as it is (`ucloud-sim call
    /// --unchecked`): for hostile tests of the provider with jobs UCloud never sends
    /// (an id that is no number, say), which the simulator would otherwise refuse
    /// itself, so that the provider's own refusal would go untested.
    pub fn call_unchecked(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.call_direct(&["call", "--unchecked"], user, None, method, path, body)
    }

    /// `ucloud-sim` with `words`, to the direct gateway.
    fn call_direct(
        &self,
        words: &[&str],
        user: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let url = self.get("UCLOUD_IM_GATEWAY_URL");
        let mut command = self.sim();
        command.args(words).args(["--url", &url]);
        if url.starts_with("https:") {
            command.args(["--ca", &self.get("UCLOUD_IM_CA")]);
        }
        self.sim_call(command, user, token, method, path, body)
    }

    /// One call the way UCloud makes it, to where `ucloud-sim call` goes when given
    /// no `--url` in the stack's environment: the balancer (`UCLOUD_IM_LB_URL`, TLS
    /// verified against `UCLOUD_IM_CA`), as UCloud reaches a site.
    pub fn call_public(
        &self,
        user: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut command = self.sim();
        for name in ["UCLOUD_IM_LB_URL", "UCLOUD_IM_GATEWAY_URL", "UCLOUD_IM_CA"] {
            command.env(name, self.get(name));
        }
        command.arg("call");
        self.sim_call(command, user, None, method, path, body)
    }

    fn sim_call(
        &self,
        mut command: Command,
        user: Option<&str>,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        command
            .args(["--signing-key", &self.get("UCLOUD_SIM_PRIVATE_KEY")])
            .args(["--state", &self.get("UCLOUD_IM_STATE")]);
        if let Some(user) = user {
            command.args(["--user", user]);
        }
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.args([method, path]);
        if let Some(body) = body {
            command.arg(body);
        }
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run ucloud-sim call: {e}"));
        let stdout = checked(&format!("ucloud-sim call {method} {path}"), &output);
        parse_call_output(&stdout)
            .unwrap_or_else(|why| panic!("ucloud-sim call {method} {path}: {why}"))
    }

    /// A whole file sent as one CHUNKED chunk to an upload link, followed as given
    /// ([`Stack::follow_link`]); `data` is curl's `--data-binary` argument
    /// (`@FILE` for a file).
    pub fn upload_in_one_chunk(&self, url: &str, token: &str, size: usize, data: &str) -> Fetched {
        self.follow_link(
            url,
            &[
                "-X",
                "POST",
                "-H",
                &format!("Chunked-Upload-Token: {token}"),
                "-H",
                "Chunked-Upload-Offset: 0",
                "-H",
                &format!("Chunked-Upload-Total-Size: {size}"),
                "--data-binary",
                data,
            ],
        )
    }

    /// Follows a link the way a browser follows one UCloud handed it: the URL as
    /// given (under the stack's public URL: https through the balancer), the server
    /// verified against the stack CA. `args` are curl options placed before the URL
    /// (method, headers, body).
    pub fn follow_link(&self, url: &str, args: &[&str]) -> Fetched {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let heads = std::env::temp_dir().join(format!(
            "ucloud-im-tests-head-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "120",
                "--cacert",
                &self.get("UCLOUD_IM_CA"),
            ])
            .arg("-D")
            .arg(&heads)
            .args(args)
            .arg(url)
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let head = std::fs::read_to_string(&heads).unwrap_or_default();
        let _ = std::fs::remove_file(&heads);
        if !output.status.success() {
            panic!(
                "curl {args:?} {url} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Fetched::new(&head, output.stdout)
            .unwrap_or_else(|why| panic!("curl {args:?} {url}: {why}"))
    }

    /// A link under the public URL (the balancer) rewritten onto the direct gateway
    /// behind it: (`host:port`, `/path?query`), for tests that write every byte of
    /// the plain HTTP/1.1 request themselves. The same program answers both.
    pub fn direct_target(&self, url: &str) -> (String, String) {
        let public = self.get("UCLOUD_IM_LB_URL");
        let target = url
            .strip_prefix(&public)
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or_else(|| panic!("{url} is not under the public URL {public}"));
        let gateway = self.get("UCLOUD_IM_GATEWAY_URL");
        let authority = gateway
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the direct gateway speaks plain http, got {gateway}"));
        (authority.to_string(), target.to_string())
    }

    /// One counter or gauge of the stack's balancer (`UCLOUD_IM_LB_METRICS`), by its
    /// full name with labels.
    pub fn lb_metric(&self, name: &str) -> u64 {
        let url = self.get("UCLOUD_IM_LB_METRICS");
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10", &url])
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let text = checked(&format!("curl {url}"), &output);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} at {url}:\n{text}"))
    }

    /// The stack's compute product (`UCLOUD_IM_JOB_PRODUCT`) as UCloud names it in
    /// a job's specification: id, its category in the installed catalogue (the one
    /// the module registered with UCloud), and the provider.
    pub fn job_product(&self) -> serde_json::Value {
        let id = self.get("UCLOUD_IM_JOB_PRODUCT");
        let path = self.prefix().join("etc/ucloud-im/products/jobs.json");
        let table: serde_json::Value = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| panic!("{} is missing or not JSON", path.display()));
        let category = table["products"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == id.as_str())
            .map(|p| p["category"].clone())
            .unwrap_or_else(|| panic!("{} has no product {id}", path.display()));
        serde_json::json!({"id": id, "category": category, "provider": self.get("UCLOUD_IM_PROVIDER")})
    }

    /// Makes job `id` one UCloud created, owned by `owner` (in `project`, if any),
    /// for the stack's product (`POST /sim/jobs`), as it is before UCloud ever sends
    /// the job to the provider: only then does UCloud take updates for it.
    pub fn ucloud_knows(&self, id: &str, owner: &str, project: Option<&str>) {
        let job = serde_json::json!({
            "id": id,
            "owner": {"createdBy": owner, "project": project},
            "specification": {"name": "test", "product": self.job_product()},
            "status": {"state": "IN_QUEUE"},
            "updates": []
        });
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                &self.get("UCLOUD_IM_CA"),
            ])
            .args([
                "-X",
                "POST",
                "-w",
                "\n%{http_code}",
                "--data",
                &job.to_string(),
            ])
            .arg(format!("{}/sim/jobs", self.get("UCLOUD_SIM_URL")))
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        assert_eq!(
            status.trim(),
            "200",
            "POST /sim/jobs for job {id}: {body}{}",
            String::from_utf8_lossy(&output.stderr)
        );
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

    /// A Job as UCloud's core sends it to `jobs.create`: `owner`'s job `id` running
    /// `sh -c SCRIPT` with the stack's application and product, for `minutes`.
    pub fn shell_job(
        &self,
        owner: &str,
        id: &str,
        script: &str,
        minutes: u64,
    ) -> serde_json::Value {
        let app = self.get("UCLOUD_IM_JOB_APP");
        let (name, version) = app
            .rsplit_once(':')
            .expect("UCLOUD_IM_JOB_APP is name:version");
        let product = self.job_product();
        let words: Vec<serde_json::Value> = ["sh", "-c", script]
            .iter()
            .map(|w| serde_json::json!({"type": "word", "word": w}))
            .collect();
        serde_json::json!({
            "id": id,
            "createdAt": 1_764_000_000_000u64,
            "owner": {"createdBy": owner, "project": null},
            "specification": {
                "product": product,
                "application": {"name": name, "version": version},
                "replicas": 1,
                "parameters": {},
                "resources": [],
                "timeAllocation": {"hours": 0, "minutes": minutes, "seconds": 0}
            },
            "status": {
                "state": "IN_QUEUE",
                "resolvedApplication": {
                    "metadata": {"name": name, "version": version},
                    "invocation": {"invocation": words, "parameters": []}
                },
                "resolvedProduct": {"name": product["id"], "category": product["category"], "cpu": 1, "memoryInGigs": 1, "gpu": 0}
            }
        })
    }
}

/// One HTTP answer as a client received it.
pub struct Fetched {
    /// The final status (an interim `100 Continue` is skipped).
    pub status: u16,
    /// The final response's head: status line and header lines.
    pub head: String,
    pub body: Vec<u8>,
}

impl Fetched {
    /// From curl's `-D` dump, which holds every response head in a row (interim
    /// ones first), and the body.
    fn new(dump: &str, body: Vec<u8>) -> Result<Fetched, String> {
        let head = dump
            .split("\r\n\r\n")
            .filter(|h| h.starts_with("HTTP/"))
            .last()
            .ok_or_else(|| format!("no response head in {dump:?}"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        Ok(Fetched {
            status,
            head: head.to_string(),
            body,
        })
    }

    /// A header's value (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

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

/// Every request the simulator recorded, one JSON object per line of `UCLOUD_SIM_LOG`.
pub fn sim_log(stack: &Stack) -> Vec<serde_json::Value> {
    let path = stack.get("UCLOUD_SIM_LOG");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read the simulator's log {path}: {e}"),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{path} line {}: not JSON ({e}): {line}", index + 1))
        })
        .collect()
}

fn checked(what: &str, output: &Output) -> String {
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

/// `ucloud-sim call` prints the status on the first line and the body after it.
pub fn parse_call_output(stdout: &str) -> Result<(u16, serde_json::Value), String> {
    let (first, body) = stdout.split_once('\n').unwrap_or((stdout, ""));
    let status = first
        .trim()
        .parse::<u16>()
        .map_err(|_| format!("expected a status code on the first line, got {first:?}"))?;
    let body = body.trim();
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.into()))
    };
    Ok((status, value))
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

/// A new UCloud job id, as UCloud's core makes them: a positive decimal number
/// that fits an int64 (the core reads ids with `strconv.ParseInt`). Microseconds
/// since the epoch, bumped past the last one handed out, so that no two calls (from
/// any thread) get the same id and a later run starts above an earlier one. The id
/// also names the job's folder and its Slurm job.
pub fn job_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .expect("the closure always gives a value");
    now.max(previous + 1).to_string()
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

/// One client WebSocket frame (masked, as RFC 6455 requires of a client).
pub fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x81];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The next server WebSocket frame: (opcode, payload).
pub fn ws_server_frame(stream: &mut impl std::io::Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            stream.read_exact(&mut n)?;
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            stream.read_exact(&mut n)?;
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    assert_eq!(head[1] & 0x80, 0, "a server frame is never masked");
    assert!(len < 1 << 20, "a {len}-byte frame");
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}

/// A WebSocket to the direct gateway (plain HTTP), upgraded on `target` (path and
/// query) with `extra` header lines (each ending in CRLF); the response head, and
/// the stream when it is a 101.
pub fn ws_connect(stack: &Stack, target: &str, extra: &str) -> (String, std::net::TcpStream) {
    let url = stack.get("UCLOUD_IM_GATEWAY_URL");
    let authority = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("UCLOUD_IM_GATEWAY_URL {url} is not plain HTTP"))
        .trim_end_matches('/');
    ws_upgrade(authority, target, extra)
}

/// The upgrade itself, to `authority` (host:port).
pub fn ws_upgrade(authority: &str, target: &str, extra: &str) -> (String, std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("cannot connect to {authority}: {e}"));
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let upgrade = format!(
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(upgrade.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

// --- jobs submitted as UCloud submits them ---

impl Stack {
    /// Job `id` of `owner` (in `project`, if any) running `sh -c SCRIPT` on `cpus`
    /// CPUs for at most `minutes`, created as UCloud creates it: the simulator
    /// remembers it and sends it to `jobs.create` through the gateway, which submits
    /// it to Slurm as the owner's account and binds the Slurm job to it (only bound
    /// jobs are reported, ucloud-monitor(8)). Returns the Slurm job id.
    pub fn create_job(
        &self,
        owner: &str,
        id: &str,
        script: &str,
        minutes: u64,
        cpus: u64,
        project: Option<&str>,
    ) -> u64 {
        let mut job = self.shell_job(owner, id, script, minutes);
        job["status"]["resolvedProduct"]["cpu"] = cpus.into();
        job["owner"]["project"] = project.into();
        let body = serde_json::json!({ "items": [job] }).to_string();
        let path = format!("/ucloud/{}/jobs", self.get("UCLOUD_IM_PROVIDER"));
        let (status, answer) = self.call(Some(owner), "POST", &path, Some(&body));
        assert_eq!(status, 200, "jobs.create for job {id}: {answer}");
        answer["responses"][0]["id"]
            .as_str()
            .and_then(|s| s.rsplit('/').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("jobs.create for job {id} named no Slurm job: {answer}"))
    }
}

// --- the stack's services, stopped and started again by the tests that kill them ---

impl Stack {
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

    /// What the simulator (UCloud) charged `owner` under `scope`, and in all in
    /// `category`, from its usage view (`GET /sim/usage`).
    pub fn charged(&self, owner: &str, category: &str, scope: &str) -> (Option<u64>, u64) {
        let url = format!("{}/sim/usage", self.get("UCLOUD_SIM_URL"));
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "10", "--cacert"])
            .arg(self.get("UCLOUD_IM_CA"))
            .arg(&url)
            .output()
            .unwrap();
        let view: serde_json::Value = serde_json::from_str(&checked(&format!("GET {url}"), &out))
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        let find = |list: &str, key: &str, value: &str| {
            view[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["owner"] == owner && e[key] == value)
                .and_then(|e| e["usage"].as_u64())
        };
        (
            find("scopes", "scope", scope),
            find("wallets", "category", category).unwrap_or(0),
        )
    }

    /// The stack's runtime directory (`target/stack`): pids, logs.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(self.get("UCLOUD_IM_STACK_LOGS"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// The pid scripts/stack recorded for `service`.
    pub fn service_pid(&self, service: &str) -> i32 {
        std::fs::read_to_string(self.run_dir().join("pids").join(format!("{service}.pid")))
            .unwrap_or_else(|e| panic!("no pid file for {service}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Starts a service the way scripts/stack does (detached, clean environment,
    /// appending to its log) and records its pid. It outlives the test on purpose:
    /// scripts/stack stops it by that pid, so it is never waited for here.
    #[allow(clippy::zombie_processes)]
    pub fn start_like_the_stack(&self, service: &str, argv: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(PathBuf::from(self.get("UCLOUD_IM_STACK_LOGS")).join(format!("{service}.log")))
            .unwrap();
        let child = Command::new("setsid")
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(
            self.run_dir().join("pids").join(format!("{service}.pid")),
            child.id().to_string(),
        )
        .unwrap();
    }

    /// The monitor again, exactly as scripts/stack starts it (its socket made by
    /// systemd-socket-activate, reports every 5 s), started by one event as Slurm's
    /// account, as the stack does.
    pub fn start_monitor(&self) {
        let socket = self.get("UCLOUD_IM_MONITOR_SOCKET");
        let _ = std::fs::remove_file(&socket);
        let user = self.get("UCLOUD_IM_MONITOR_USER");
        let monitor = self.bin("ucloud-monitor");
        self.start_like_the_stack(
            "monitor",
            &[
                "systemd-socket-activate",
                "-l",
                &socket,
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--bounding-set=-all",
                "--no-new-privs",
                monitor.to_str().unwrap(),
                "--usage-interval",
                "5",
            ],
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !Path::new(&socket).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the monitor's socket did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("chmod").args(["0666", &socket]).status();
        let notify = self.prefix().join("usr/libexec/ucloud-im/ucloud-notify");
        let _ = Command::new("runuser")
            .current_dir("/")
            .args([
                "-u",
                "slurm",
                "--",
                "env",
                "SLURM_SCRIPT_CONTEXT=prolog_slurmctld",
                "SLURM_JOB_ID=0",
            ])
            .arg(notify)
            .args(["--socket", &socket])
            .status();
    }

    /// The sender again, as scripts/stack starts it.
    pub fn start_sender(&self) {
        let user = self.get("UCLOUD_IM_SENDER_USER");
        let sender = self.bin("ucloud-sender");
        self.start_like_the_stack(
            "sender",
            &[
                "setpriv",
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                sender.to_str().unwrap(),
            ],
        );
    }
}

/// `kill SIG PID`, which must succeed.
pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// SIGKILL, then waits (10 s at most) until the process is gone or a zombie.
pub fn kill_and_wait(pid: i32) {
    signal(pid, "-KILL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("sh")
        .arg("-c")
        .arg(format!("ps -o stat= -p {pid} | grep -qv Z"))
        .status()
        .unwrap()
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} does not die"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
    fn call_output_is_status_then_body() {
        assert_eq!(
            parse_call_output("200\n{\"a\":1}\n").unwrap(),
            (200, serde_json::json!({"a": 1}))
        );
        assert_eq!(
            parse_call_output("404\nnot here\n").unwrap(),
            (404, serde_json::json!("not here"))
        );
        assert_eq!(
            parse_call_output("204\n").unwrap(),
            (204, serde_json::Value::Null)
        );
        assert!(parse_call_output("oops\n{}").is_err());
    }

    #[test]
    fn fetched_is_the_final_response() {
        let f = Fetched::new(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n",
            b"hi".to_vec(),
        )
        .unwrap();
        assert_eq!(f.status, 200);
        assert_eq!(f.header("content-type"), Some("text/html"));
        assert_eq!(f.header("content-length"), None);
        assert_eq!(f.text(), "hi");
        assert!(Fetched::new("", Vec::new()).is_err());
    }

    #[test]
    fn job_ids_are_plain_decimal_and_never_repeat() {
        let ids: Vec<String> = (0..1000).map(|_| job_id()).collect();
        let mut seen = std::collections::BTreeSet::new();
        for id in &ids {
            let n: i64 = id.parse().unwrap();
            assert!(n > 0 && n.to_string() == *id, "{id}");
            assert!(seen.insert(n), "{id} handed out twice");
        }
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
