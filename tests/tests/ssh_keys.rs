//! UCloud SSH keys through the whole chain, checked by a real `sshd` that each test
//! starts on a loopback port of its own (its host key and configuration in a
//! temporary directory, the default `AuthorizedKeysFile`): the simulator plays the
//! core (a user adds and deletes keys, the core sends `ssh/keyUploaded` to the
//! provider), the key logs the user in to the account it is mapped to, a deleted
//! key no longer does, and hostile updates (sent through the balancer, as UCloud
//! reaches the site) are refused and change nothing. The second test connects a new
//! account with `ucloud-connect`, which installs the keys UCloud had before.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use ucloud_im_tests::{
    as_user, described, run_as, sim_log, unique, unique_account, within, ScratchAccount, Stack,
};

const SSHD: &str = "/usr/sbin/sshd";
const BEGIN: &str = "# BEGIN ucloud-im";
const END: &str = "# END ucloud-im";

/// A directory of the test's own (host key, sshd_config, client keys), removed after it.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(prefix));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Scratch(dir)
    }

    /// A new ed25519 key pair; the path of its private half.
    fn key(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run ssh-keygen (apt-get install openssh-client): {e}")
            });
        assert!(out.status.success(), "ssh-keygen: {}", described(&out));
        path
    }

    /// The public half, as a person pastes it into UCloud.
    fn public(&self, key: &Path) -> String {
        fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An sshd for one account on 127.0.0.1, stopped when dropped.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(dir: &Scratch, user: &str) -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: apt-get install openssh-server (.ci/run does)"
        );
        // sshd's privilege-separated child chroots here; Debian makes it when the
        // service starts, which a test machine may never have done.
        if !Path::new("/run/sshd").is_dir() {
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let host = dir.0.join("host_ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host)
            .output()
            .expect("cannot run ssh-keygen");
        assert!(out.status.success(), "ssh-keygen: {}", described(&out));
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.0.join("sshd_config");
        let base = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
             AuthorizedKeysFile .ssh/authorized_keys\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes yes\nPermitRootLogin no\nAllowUsers {user}\n\
             MaxAuthTries 2\nLogLevel VERBOSE\n",
            host = host.display(),
            pid = dir.0.join("sshd.pid").display(),
        );
        // OpenSSH 9.8 and later hold back a source after failed logins, which
        // this test makes on purpose; older ones know neither option.
        let test = |config: &Path| Command::new(SSHD).arg("-t").arg("-f").arg(config).output();
        for extra in [
            "PerSourcePenalties no\nPerSourcePenaltyExemptList 127.0.0.0/8\n",
            "PerSourcePenaltyExemptList 127.0.0.0/8\n",
            "",
        ] {
            fs::write(&config, format!("{base}{extra}")).unwrap();
            if test(&config).unwrap().status.success() {
                break;
            }
        }
        let check = test(&config).unwrap();
        assert!(check.status.success(), "sshd -t: {}", described(&check));
        let log = dir.0.join("sshd.log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("cannot start sshd");
        let mut sshd = Sshd { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited ({status}): {}", sshd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sshd never listened: {}",
                sshd.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh -p PORT -i key user@127.0.0.1 id -un`, as a person would, with nothing
    /// of root's own ssh configuration, agent or known hosts.
    fn login(&self, user: &str, key: &Path) -> Output {
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=no"])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(["-o", "LogLevel=ERROR", "-p", &self.port.to_string(), "-i"])
            .arg(key)
            .arg(format!("{user}@127.0.0.1"))
            .args(["id", "-un"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ssh (apt-get install openssh-client): {e}"))
    }

    fn assert_logs_in(&self, user: &str, key: &Path) {
        let out = self.login(user, key);
        assert!(
            out.status.success(),
            "{} did not log in as {user}: {}\nsshd: {}",
            key.display(),
            described(&out),
            self.log_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), user);
    }

    fn assert_refused(&self, user: &str, key: &Path) {
        let out = self.login(user, key);
        assert!(
            !out.status.success(),
            "{} logged in as {user}, and must not: {}",
            key.display(),
            described(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            described(&out)
        );
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The simulator's own endpoints, giving up after 90 s.
fn sim(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    stack.sim_api(method, path, body, 90)
}

/// A user adds a key in UCloud; its id, and what the provider answered the core.
fn add_key(stack: &Stack, ucloud: &str, key: &str) -> (String, Value) {
    let body = json!({"username": ucloud, "title": "test", "key": key});
    let (status, answer) = sim(stack, "POST", "/sim/ssh/keys", Some(body));
    assert_eq!(status, 200, "POST /sim/ssh/keys: {answer}");
    let id = answer["id"].as_str().unwrap_or_else(|| panic!("{answer}"));
    (id.to_string(), answer["provider"].clone())
}

fn delete_key(stack: &Stack, id: &str) -> Value {
    let (status, answer) = sim(stack, "DELETE", &format!("/sim/ssh/keys/{id}"), None);
    assert_eq!(status, 200, "DELETE /sim/ssh/keys/{id}: {answer}");
    answer["provider"].clone()
}

/// The provider took the core's update.
fn assert_taken(provider: &Value) {
    assert_eq!(
        (&provider["sent"], &provider["status"]),
        (&json!(true), &json!(200)),
        "the provider's answer to ssh/keyUploaded: {provider}"
    );
}

/// `ssh/keyUploaded` as UCloud sends it, through the balancer.
fn key_uploaded(stack: &Stack, acting: &str, body: &Value) -> (u16, Value) {
    let path = format!(
        "/ucloud/{}/ssh/keyUploaded",
        stack.get("UCLOUD_IM_PROVIDER")
    );
    stack.call_public(Some(acting), "POST", &path, Some(&body.to_string()))
}

fn ssh_key(id: &str, owner: &str, key: &str) -> Value {
    json!({"id": id, "owner": owner, "createdAt": 1, "fingerprint": "",
           "specification": {"title": "t", "key": key}})
}

fn authorized_keys(account: &ScratchAccount) -> String {
    fs::read_to_string(format!("{}/.ssh/authorized_keys", account.home())).unwrap_or_default()
}

/// A mapped scratch account that UCloud knows is connected (so that the core sends
/// it key updates), with a password field sshd does not take for a locked account.
fn mapped<'s>(stack: &'s Stack, prefix: &str, ucloud: &str) -> ScratchAccount<'s> {
    let account = ScratchAccount::new(stack, prefix, ucloud);
    unlock(&account.name);
    let out = stack.registry(&["add", ucloud, &account.name, "--wait", "20"]);
    assert!(
        out.status.success(),
        "ucloud-registry add: {}",
        described(&out)
    );
    assert!(
        within(20, || heard(stack, "approveConnection", ucloud)),
        "the simulator never heard approveConnection for {ucloud}"
    );
    account
}

/// useradd leaves `!` in the password field, which sshd without PAM takes for a
/// locked account; `*` is no password either, and not locked.
fn unlock(name: &str) {
    let out = Command::new("usermod")
        .args(["-p", "*", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "usermod -p: {}", described(&out));
}

fn heard(stack: &Stack, path_part: &str, ucloud: &str) -> bool {
    sim_log(stack).iter().any(|e| {
        let text = e.to_string();
        text.contains(path_part) && text.contains(&json!(ucloud).to_string())
    })
}

#[test]
fn uploaded_keys_log_in_deleted_ones_do_not_and_hostile_ones_change_nothing() {
    let stack = Stack::load();
    let ucloud = unique_account("SshUser#");
    let account = mapped(&stack, "ssh", &ucloud);
    let user = account.name.as_str();
    let dir = Scratch::new("ssh-keys");
    let sshd = Sshd::start(&dir, user);
    let (k1, k2, k3) = (dir.key("k1"), dir.key("k2"), dir.key("k3"));

    // A line of the user's own, which no update may touch.
    as_user(
        user,
        "mkdir -p .ssh && chmod 700 .ssh && printf '# my own line\\n' > .ssh/authorized_keys \
         && chmod 600 .ssh/authorized_keys",
    );
    sshd.assert_refused(user, &k1);

    // Added in UCloud: the core sends all the user's keys; the key logs in.
    let (id1, provider) = add_key(&stack, &ucloud, &dir.public(&k1));
    assert_taken(&provider);
    sshd.assert_logs_in(user, &k1);
    sshd.assert_refused(user, &k2);
    let (id2, provider) = add_key(&stack, &ucloud, &dir.public(&k2));
    assert_taken(&provider);
    sshd.assert_logs_in(user, &k2);
    sshd.assert_logs_in(user, &k1);
    let file = authorized_keys(&account);
    assert!(file.starts_with("# my own line\n"), "{file}");
    assert_eq!(file.matches(BEGIN).count(), 1, "{file}");
    let mode = fs::metadata(format!("{}/.ssh/authorized_keys", account.home())).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&mode), account.uid());

    // Deleted in UCloud: no longer logs in; the other still does.
    assert_taken(&delete_key(&stack, &id1));
    sshd.assert_refused(user, &k1);
    sshd.assert_logs_in(user, &k2);
    let settled = authorized_keys(&account);

    // Hostile updates, as UCloud would send them, through the balancer: each is
    // refused and the file stays byte for byte.
    let k2_text = dir.public(&k2);
    let k3_text = dir.public(&k3);
    let hostile = [
        // Another user's keys, for this account.
        (
            json!({"username": "BobNielsen#2002", "allKeys": [ssh_key("9", "BobNielsen#2002", &k3_text)]}),
            403,
        ),
        // A second line smuggled into a key.
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("{k2_text}\n{k3_text}"))]}),
            400,
        ),
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("{k2_text}\r{k3_text}"))]}),
            400,
        ),
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("{k3_text}\u{0}"))]}),
            400,
        ),
        // Options before the key.
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("command=\"/bin/sh\" {k3_text}"))]}),
            400,
        ),
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("from=\"127.0.0.1\" {k3_text}"))]}),
            400,
        ),
        // The block's end marker, to close it early.
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("{k3_text} {END}"))]}),
            400,
        ),
        // Too long a key, and a good key beside a bad one.
        (
            json!({"username": ucloud, "allKeys": [ssh_key(&id2, &ucloud, &format!("{k3_text} {}", "x".repeat(9000)))]}),
            400,
        ),
        (
            json!({"username": ucloud, "allKeys": [ssh_key("1", &ucloud, &k3_text), ssh_key("2", &ucloud, "ssh-ed25519 not-base64")]}),
            400,
        ),
    ];
    for (body, status) in hostile {
        let (got, answer) = key_uploaded(&stack, &ucloud, &body);
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(
            authorized_keys(&account),
            settled,
            "{body} changed the file"
        );
    }
    sshd.assert_refused(user, &k3);

    // A key the core accepts (it checks only how a key starts) with a second line
    // in it: the provider refuses the update, the core keeps the key and says
    // nothing to the user; the file stays as it was until the key is deleted.
    let (bad, provider) = add_key(&stack, &ucloud, &format!("{k2_text}\n{k3_text}"));
    assert_eq!(provider["status"], 400, "{provider}");
    assert_eq!(authorized_keys(&account), settled);
    sshd.assert_refused(user, &k3);
    sshd.assert_logs_in(user, &k2);
    assert_taken(&delete_key(&stack, &bad));

    // A link planted at authorized_keys is not followed: the update is refused.
    let elsewhere = format!("{}/not-authorized-keys", account.home());
    as_user(
        user,
        "printf keep > not-authorized-keys && cp .ssh/authorized_keys .ssh/saved && \
         ln -sf ../not-authorized-keys .ssh/authorized_keys",
    );
    let (id3, provider) = add_key(&stack, &ucloud, &k3_text);
    assert_eq!(provider["status"], 409, "{provider}");
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "keep");
    as_user(user, "mv -f .ssh/saved .ssh/authorized_keys");

    // The last keys deleted: the block goes, the user's line stays.
    assert_taken(&delete_key(&stack, &id3));
    assert_taken(&delete_key(&stack, &id2));
    sshd.assert_refused(user, &k2);
    assert_eq!(authorized_keys(&account), "# my own line\n");
}

#[test]
fn a_person_who_connects_gets_the_keys_ucloud_already_has() {
    let stack = Stack::load();
    let ucloud = unique_account("SshConnect#");
    let account = ScratchAccount::new(&stack, "sshc", &ucloud);
    unlock(&account.name);
    let user = account.name.as_str();
    let dir = Scratch::new("ssh-connect");
    let sshd = Sshd::start(&dir, user);
    let key = dir.key("before");

    // Added before the user is connected here: the core sends this provider nothing.
    let (id, provider) = add_key(&stack, &ucloud, &dir.public(&key));
    assert_eq!(provider["sent"], false, "{provider}");
    sshd.assert_refused(user, &key);

    let out = run_as(
        &stack.get("UCLOUD_IM_SERVICE_USER"),
        &[
            &stack.bin("ucloud-connect").display().to_string(),
            "--mint-ticket",
            &ucloud,
        ],
    );
    assert!(out.status.success(), "--mint-ticket: {}", described(&out));
    let ticket = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut redeem = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(stack.bin("ucloud-connect"))
        .arg("--yes")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut redeem.stdin.take().unwrap(),
        format!("{ticket}\n").as_bytes(),
    )
    .unwrap();
    let out = redeem.wait_with_output().unwrap();
    assert!(out.status.success(), "ucloud-connect: {}", described(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("ucloud-key-{id}")),
        "{}",
        described(&out)
    );
    sshd.assert_logs_in(user, &key);

    // The registry's record of what it handed over.
    let audit = stack.audit_lines();
    assert!(
        audit.iter().any(|l| l.contains("\"sshKeys\"")
            && l.contains(&json!(ucloud).to_string())
            && l.contains(&json!(id).to_string())),
        "no audit record of the keys handed to {user}"
    );

    // From now on the core's updates reach the account.
    assert_taken(&delete_key(&stack, &id));
    sshd.assert_refused(user, &key);
}
