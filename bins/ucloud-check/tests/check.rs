//! ucloud-check against whole installations built below a scratch root (`--root`):
//! one that is right, and one broken or hostile piece at a time. Every run must
//! leave the tree exactly as it was, the broken piece included.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const CHECK: &str = env!("CARGO_BIN_EXE_ucloud-check");

/// An RSA public key as UCloud hands it out (base64 DER, no armour).
const RSA_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx3TK9yoy+cxbiJ1fQTm7F7ywZj9CFylM7fZmzyvZVria0Hnzox1vQ5bqov+LNRtGSiXU3lXQ7iUmhrwJ49l3jz9D4KSdoCXiAMLV4DhMCOva6uRzb8+Ju3lWWZY7HxtPp/6ZA0dIpSN48aQ61ruVKc5738NregCRSZtIkWX/Ij7fKT+GhZUXpUUcNOBRL6b+MFBBZB+pvY6f2X3E/RHw1bGD8n6kpY2JCCU4RPdSHwDXj9CrF6mE8t7ZAS0LaRwFXNqDUuPkYBX/IMWZyvvwJMtgyQD8RMWHeb87ORsy+DYqoMY+6z0CwQtQ4nSK6cYRgM2PVHSRg2KeO1OCcQCqwwIDAQAB";
/// A P-256 key: well-formed, but not the kind UCloud signs with.
const EC_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEG5VvqK71ey1smABq0pbZ0EWo6Aq15bykZXuxZaKTnbYKTJ66g+9rp3U/uLGWNkU20SUhRSi27E7r1IDYxeH2sg==";

const SITE: &str = "\
# test installation
provider = hpc
gateway_user = daemon
service_user = nobody
min_uid = 1000
";

/// The hex file name of a UCloud name (mappings/<hex>).
fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

/// mode, uid, gid, mtime (s, ns), contents or link target.
type Entry = (u32, u32, u32, i64, i64, Vec<u8>);

struct Install {
    root: PathBuf,
}

impl Install {
    /// A complete, correct installation below a fresh root-owned directory. Not
    /// below the clone: ucloud-check walks every directory above the prefix, as the
    /// dispatcher does, and a clone below /tmp (1777) would fail it; /run is root's.
    fn new() -> Install {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = Path::new("/run").join(format!(
            "ucloud-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let install = Install { root };
        for dir in [
            "",
            "etc",
            "etc/ucloud-im",
            "var",
            "var/lib",
            "var/lib/ucloud-im",
            "var/lib/ucloud-im/drives",
            "var/log",
            "var/log/ucloud-im",
            "usr",
            "usr/libexec",
            "usr/libexec/ucloud-im",
            "usr/libexec/ucloud-im/plugins",
        ] {
            install.dir(dir, 0o755);
        }
        install.dir("var/lib/ucloud-im/mappings", 0o700);
        install.dir("var/lib/ucloud-im/audit-limit", 0o700);
        // The gateway's (site.conf: daemon), read by the monitor's group.
        install.dir("var/lib/ucloud-im/bindings", 0o2750);
        let daemon = nix_uid("daemon");
        chown(
            install.path("var/lib/ucloud-im/bindings"),
            Some(daemon),
            None,
        )
        .unwrap();
        install.file("etc/ucloud-im/site.conf", SITE, 0o644);
        install.file(
            "etc/ucloud-im/ucloud_key.pub",
            &format!("{RSA_KEY}\n"),
            0o644,
        );
        install.file("var/lib/ucloud-im/transfer.key", &"k".repeat(64), 0o600);
        let alice = "AliceHansen#1001";
        install.file(
            &format!("var/lib/ucloud-im/mappings/{}", hex(alice)),
            &format!(r#"{{"ucloud":"{alice}","local":"nobody","uid":65534,"created":1}}"#),
            0o600,
        );
        install.file(
            "var/lib/ucloud-im/drives/17",
            &format!(r#"{{"id":"17","ucloud":"{alice}","local":"nobody","base":"/nonexistent"}}"#),
            0o644,
        );
        install.file(
            "usr/libexec/ucloud-im/plugins/files.browse",
            "#!/bin/sh\necho '{}'\n",
            0o755,
        );
        install.file("usr/libexec/ucloud-im/ucloud-dispatch", "binary", 0o4750);
        install.file("var/log/ucloud-im/audit.log", "", 0o600);
        install
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn shown(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn dir(&self, rel: &str, mode: u32) {
        let path = self.path(rel);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn file(&self, rel: &str, text: &str, mode: u32) {
        let path = self.path(rel);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn chmod(&self, rel: &str, mode: u32) {
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Every entry below the root: kind and mode, owner, mtime, contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, Entry> {
        let mut seen = BTreeMap::new();
        let mut todo = vec![self.root.clone()];
        while let Some(path) = todo.pop() {
            let meta = fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_file() {
                fs::read(&path).unwrap()
            } else if meta.is_dir() {
                for entry in fs::read_dir(&path).unwrap() {
                    todo.push(entry.unwrap().path());
                }
                Vec::new()
            } else {
                fs::read_link(&path)
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .unwrap_or_default()
            };
            seen.insert(
                path,
                (
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    contents,
                ),
            );
        }
        seen
    }

    /// Runs the check on this root; asserts it changed nothing.
    fn check(&self) -> (i32, String) {
        let before = self.snapshot();
        let out = Command::new(CHECK)
            .arg("--root")
            .arg(&self.root)
            .output()
            .unwrap();
        assert_eq!(
            self.snapshot(),
            before,
            "ucloud-check changed the installation"
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
        )
    }

    /// The check fails, and its first line is `expected`.
    fn first_problem(&self) -> String {
        let (status, out) = self.check();
        assert_eq!(status, 1, "{out}");
        out.lines().next().unwrap().to_string()
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[test]
fn a_correct_installation_passes() {
    let install = Install::new();
    let (status, out) = install.check();
    assert_eq!(status, 0, "{out}");
    assert_eq!(
        out,
        "ok: site.conf, accounts, UCloud key, transfer key, 1 mapping(s), 1 drive(s), \
         bindings, 1 plugin(s), dispatcher, audit log, audit limit\nucloud-check: no problems found\n"
    );
}

#[test]
fn a_bad_site_conf_line_is_named_by_its_number() {
    let install = Install::new();
    install.file(
        "etc/ucloud-im/site.conf",
        &format!("{SITE}\nmni_uid = 5\nmin_uid = x\n"),
        0o644,
    );
    assert_eq!(
        install.first_problem(),
        format!(
            "{}:7: unknown key \"mni_uid\": fix it (see ucloud-im-site.conf(5))",
            install.shown("etc/ucloud-im/site.conf")
        )
    );
    install.file(
        "etc/ucloud-im/site.conf",
        "provider = hpc\ngateway_user = daemon\n",
        0o644,
    );
    assert_eq!(
        install.first_problem(),
        format!(
            "{}: service_user is not set: fix it (see ucloud-im-site.conf(5))",
            install.shown("etc/ucloud-im/site.conf")
        )
    );
}

#[test]
fn an_account_that_does_not_exist_is_named_with_its_line() {
    let install = Install::new();
    install.file(
        "etc/ucloud-im/site.conf",
        &format!("{SITE}sender_user = no-such-account-here\n"),
        0o644,
    );
    let line = install.first_problem();
    assert!(
        line.starts_with(&format!(
            "{}:6: sender_user no-such-account-here is not an account on this system: create it",
            install.shown("etc/ucloud-im/site.conf")
        )),
        "{line}"
    );
}

#[test]
fn a_wrong_ucloud_key_is_refused() {
    let install = Install::new();
    install.file("etc/ucloud-im/ucloud_key.pub", EC_KEY, 0o644);
    let line = install.first_problem();
    let path = install.shown("etc/ucloud-im/ucloud_key.pub");
    assert!(
        line.starts_with(&format!("{path}: key file does not hold an RSA public key")),
        "{line}"
    );
    install.file("etc/ucloud-im/ucloud_key.pub", "not-a-key!", 0o644);
    assert!(install
        .first_problem()
        .starts_with(&format!("{path}: key file is neither PEM nor base64 DER")));
    // Writable by others: whoever can write it can sign as UCloud.
    install.file("etc/ucloud-im/ucloud_key.pub", RSA_KEY, 0o666);
    assert_eq!(
        install.first_problem(),
        format!("{path}: is writable by group or others (mode 0666): chmod go-w {path}")
    );
}

#[test]
fn a_world_writable_plugin_dir_is_refused_and_left_alone() {
    let install = Install::new();
    install.chmod("usr/libexec/ucloud-im/plugins", 0o777);
    let dir = install.shown("usr/libexec/ucloud-im/plugins");
    assert_eq!(
        install.first_problem(),
        format!("{dir}: is writable by group or others (mode 0777): chmod go-w {dir}")
    );
    assert_eq!(
        fs::metadata(install.path("usr/libexec/ucloud-im/plugins"))
            .unwrap()
            .mode()
            & 0o7777,
        0o777
    );
    // A parent's fault is the parent's line.
    install.chmod("usr/libexec/ucloud-im/plugins", 0o755);
    install.chmod("usr/libexec", 0o775);
    let parent = install.shown("usr/libexec");
    assert_eq!(
        install.first_problem(),
        format!("{parent}: is writable by group or others (mode 0775): chmod go-w {parent}")
    );
}

#[test]
fn hostile_plugins_are_refused() {
    let install = Install::new();
    let plugin = |name: &str| install.shown(&format!("usr/libexec/ucloud-im/plugins/{name}"));
    symlink(
        "/bin/sh",
        install.path("usr/libexec/ucloud-im/plugins/files.copy"),
    )
    .unwrap();
    install.file("usr/libexec/ucloud-im/plugins/files.move", "x", 0o4755);
    install.file("usr/libexec/ucloud-im/plugins/files.trash", "x", 0o750);
    install.file("usr/libexec/ucloud-im/plugins/files.delete", "x", 0o775);
    let (status, out) = install.check();
    assert_eq!(status, 1, "{out}");
    for expected in [
        format!(
            "{}: is a symlink: install the plugin as a file",
            plugin("files.copy")
        ),
        format!(
            "{}: is setuid or setgid: plugins run as the user, remove the bit",
            plugin("files.move")
        ),
        format!(
            "{}: is not executable by others (mode 0750): chmod 0755 {}",
            plugin("files.trash"),
            plugin("files.trash")
        ),
        format!(
            "{}: is writable by group or others (mode 0775): chmod go-w {}",
            plugin("files.delete"),
            plugin("files.delete")
        ),
    ] {
        assert!(out.lines().any(|l| l == expected), "{expected}\nin\n{out}");
    }
    assert!(out.ends_with("ucloud-check: 4 problems found\n"), "{out}");
}

#[test]
fn the_transfer_key_must_be_secret_and_long_enough() {
    let install = Install::new();
    let path = install.shown("var/lib/ucloud-im/transfer.key");
    install.chmod("var/lib/ucloud-im/transfer.key", 0o640);
    assert_eq!(
        install.first_problem(),
        format!("{path}: is readable by group or others (mode 0640): chmod 0600 {path}")
    );
    install.file("var/lib/ucloud-im/transfer.key", "short", 0o600);
    assert!(install.first_problem().starts_with(&format!(
        "{path}: holds 5 bytes; it needs at least 32 random bytes"
    )));
    fs::remove_file(install.path("var/lib/ucloud-im/transfer.key")).unwrap();
    assert_eq!(
        install.first_problem(),
        format!("{path}: does not exist: make it: (umask 077; head -c 64 /dev/urandom > {path})")
    );
}

#[test]
fn forged_mappings_and_drives_are_refused() {
    let install = Install::new();
    let alice = install.shown(&format!(
        "var/lib/ucloud-im/mappings/{}",
        hex("AliceHansen#1001")
    ));
    // A mapping file that names another user than its file name.
    install.file(
        &format!("var/lib/ucloud-im/mappings/{}", hex("AliceHansen#1001")),
        r#"{"ucloud":"BobNielsen#2002","local":"nobody","uid":65534}"#,
        0o600,
    );
    assert!(install.first_problem().starts_with(&format!(
        "{alice}: does not name UCloud user AliceHansen#1001"
    )));
    // A mapping someone else owns.
    install.file(
        &format!("var/lib/ucloud-im/mappings/{}", hex("AliceHansen#1001")),
        r#"{"ucloud":"AliceHansen#1001","local":"nobody","uid":65534}"#,
        0o600,
    );
    chown(
        install.path(&format!(
            "var/lib/ucloud-im/mappings/{}",
            hex("AliceHansen#1001")
        )),
        Some(65534),
        None,
    )
    .unwrap();
    assert_eq!(
        install.first_problem(),
        format!("{alice}: is owned by uid 65534, not root: chown root {alice}")
    );
    let install = Install::new();
    install.file(
        "var/lib/ucloud-im/drives/17",
        r#"{"id":"17","ucloud":"AliceHansen#1001","local":"nobody","base":"relative"}"#,
        0o644,
    );
    assert!(install.first_problem().starts_with(&format!(
        "{}: base \"relative\" is not an absolute path",
        install.shown("var/lib/ucloud-im/drives/17")
    )));
}

#[test]
fn a_dispatcher_without_its_setuid_bit_is_a_problem() {
    let install = Install::new();
    install.chmod("usr/libexec/ucloud-im/ucloud-dispatch", 0o755);
    let path = install.shown("usr/libexec/ucloud-im/ucloud-dispatch");
    assert_eq!(
        install.first_problem(),
        format!("{path}: is not setuid (mode 0755): chmod u+s {path}")
    );
}

/// The uid of a local account, from the passwd database.
fn nix_uid(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A bindings directory anyone but the gateway could write would let them make the
/// monitor report their own Slurm jobs as UCloud's.
#[test]
fn bindings_only_the_gateway_may_write_are_required() {
    let install = Install::new();
    let path = install.shown("var/lib/ucloud-im/bindings");
    install.chmod("var/lib/ucloud-im/bindings", 0o2770);
    assert_eq!(
        install.first_problem(),
        format!("{path}: is writable by group or others (mode 2770): anyone there could make the monitor report their Slurm jobs: chmod 2750 {path}")
    );
    install.chmod("var/lib/ucloud-im/bindings", 0o2750);
    chown(
        install.path("var/lib/ucloud-im/bindings"),
        Some(nix_uid("nobody")),
        None,
    )
    .unwrap();
    assert_eq!(
        install.first_problem(),
        format!(
            "{path}: belongs to uid {}, not to the gateway's account daemon: chown daemon {path}",
            nix_uid("nobody")
        )
    );
    fs::remove_dir(install.path("var/lib/ucloud-im/bindings")).unwrap();
    assert!(install.first_problem().starts_with(&format!(
        "{path}: does not exist: no job is reported to UCloud"
    )));
}

#[test]
fn a_tree_nobody_installed_says_what_to_do() {
    let install = Install::new();
    fs::remove_dir_all(install.path("etc")).unwrap();
    fs::remove_dir_all(install.path("var/lib/ucloud-im/mappings")).unwrap();
    fs::remove_dir_all(install.path("var/lib/ucloud-im/audit-limit")).unwrap();
    let (status, out) = install.check();
    assert_eq!(status, 1, "{out}");
    let etc = install.shown("etc");
    // Both files below the missing etc/ are one problem.
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with(&format!("{etc}: does not exist")))
            .count(),
        1,
        "{out}"
    );
    let mappings = install.shown("var/lib/ucloud-im/mappings");
    assert!(
        out.contains(&format!(
            "{mappings}: does not exist: ucloud-registry makes it on its first add"
        )),
        "{out}"
    );
    let limit = install.shown("var/lib/ucloud-im/audit-limit");
    assert!(
        out.contains(&format!(
            "{limit}: does not exist: the records of refused callers are not limited without it"
        )),
        "{out}"
    );
}

#[test]
fn usage_and_non_root_are_refused_with_their_own_status() {
    let run = |cmd: &mut Command| -> Output { cmd.output().unwrap() };
    let out = run(Command::new(CHECK).arg("--frobnicate"));
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("see --help"));
    let out = run(Command::new(CHECK).args(["--root", "relative/dir"]));
    assert_eq!(out.status.code(), Some(64));
    let out = run(Command::new("setpriv").args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        CHECK,
    ]));
    assert_eq!(out.status.code(), Some(77));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run it as root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn version_names_the_program_and_the_workspace_version() {
    let out = Command::new(CHECK).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("ucloud-check {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(CHECK).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("--version") && help.contains("--root DIR"),
        "{help}"
    );
}
