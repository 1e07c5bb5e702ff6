//! Storage usage through the stack: ucloud-du, run as its unit runs it (its own
//! account, CAP_DAC_READ_SEARCH only, stdout appended to the audit log), measures
//! a user's home drive, and the simulator (UCloud's core's rule) charges the user
//! for the drive's scope in the home category exactly what `du` says is allocated,
//! in whole GB. Data the user hid in a mode-000 directory is counted, a symlink to
//! `/` is not followed, a second run with the same files charges the same total,
//! and a run cut short by its file limit says so and charges no less.
//!
//! With CAP_SYS_ADMIN as a site's drop-in grants it, a drive that is a btrfs
//! subvolume with qgroups is charged its qgroup's referenced bytes (a reflinked
//! copy once, where the walk counts it twice), the capability is gone before the
//! other drives are walked, and without it the same drive is walked.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use ucloud_im_tests::{home_of, run_as, uid_of, unique, unique_account, ScratchAccount, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
const GB: u64 = 1_000_000_000;

/// Waits until UCloud holds `total` for the scope; returns the category's total.
fn wait_charged(stack: &Stack, scope: &str, total: u64) -> u64 {
    wait_charged_to(stack, ALICE, scope, total)
}

fn wait_charged_to(stack: &Stack, owner: &str, scope: &str, total: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now, wallet) = stack.charged(owner, "home", scope);
        if now == Some(total) {
            return wallet;
        }
        assert!(
            Instant::now() < deadline,
            "UCloud holds {now:?} for {scope}, not {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The unit's capabilities: CAP_DAC_READ_SEARCH, and CAP_SYS_ADMIN where the
/// site's drop-in adds it for quotas.
const UNIT_CAPS: &str = "dac_read_search";
const QUOTA_CAPS: &str = "dac_read_search,sys_admin";

/// setpriv to ucloud-du's account with `caps` ambient (and nothing else in any
/// set), as systemd starts the unit.
fn as_du(stack: &Stack, caps: &str) -> Command {
    let user = stack.get("UCLOUD_IM_DU_USER");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
        &format!("--inh-caps=-all,+{}", caps.replace(',', ",+")),
        &format!("--ambient-caps=-all,+{}", caps.replace(',', ",+")),
        &format!("--bounding-set=-all,+{}", caps.replace(',', ",+")),
        "--no-new-privs",
    ])
    .current_dir("/");
    cmd
}

/// ucloud-du as units/ucloud-du.service runs it (scripts/stack's du_run), with
/// `caps`; its whole audit record.
fn du_record(stack: &Stack, caps: &str, args: &[&str]) -> Value {
    let audit = OpenOptions::new()
        .append(true)
        .open(stack.get("UCLOUD_IM_AUDIT_LOG"))
        .unwrap();
    // setpriv execs ucloud-du: the child's pid is the one its record names (the
    // suite's tests run side by side).
    let child = as_du(stack, caps)
        .arg(stack.bin("ucloud-du"))
        .args(args)
        .stdout(audit)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ucloud-du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: Value = stack
        .audit_lines()
        .into_iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|r| r["program"] == "ucloud-du" && r["pid"] == pid)
        .expect("no audit record of this ucloud-du run");
    assert_eq!(record["capability"], true, "{record}");
    assert_eq!(
        record["callerUid"],
        uid_of(&stack.get("UCLOUD_IM_DU_USER")),
        "{record}"
    );
    record
}

/// ucloud-du as the packaged unit runs it; its audit record for the drive.
fn du_run(stack: &Stack, drive: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--drive", drive];
    args.extend_from_slice(extra);
    let record = du_record(stack, UNIT_CAPS, &args);
    let drives = record["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 1, "{record}");
    assert_eq!(drives[0]["drive"], drive, "{record}");
    drives[0].clone()
}

/// `du`'s allocated bytes of the tree, on its filesystem, as root sees it.
fn du(path: &str) -> u64 {
    let out = Command::new("du")
        .args(["-sx", "--block-size=1", path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_drive_is_charged_what_du_counts_once_however_often_it_is_measured() {
    let stack = Stack::load();
    let local = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let scope = format!("drive-{}-{drive}", stack.get("UCLOUD_IM_PROVIDER"));
    let home = home_of(&local);
    let hidden = format!("{home}/{}", unique("du-hidden"));
    let shown = |args: &[&str]| {
        let out = run_as(&local, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // 2.5 GB allocated (fallocate: instant, and real blocks), closed to everyone by
    // its owner; a symlink to / beside it, and a FIFO.
    shown(&["mkdir", &hidden]);
    shown(&["fallocate", "-l", "2500000000", &format!("{hidden}/big")]);
    shown(&["ln", "-s", "/", &format!("{hidden}/root")]);
    shown(&["mkfifo", &format!("{hidden}/fifo")]);
    shown(&["chmod", "000", &hidden]);

    let first = du_run(&stack, &drive, &[]);
    let bytes = du(&home);
    assert!(bytes >= 2_500_000_000, "du says {bytes}");
    assert_eq!(first["truncated"], Value::Null, "{first}");
    assert_eq!(first["unreadable"], 0, "{first}");
    assert_eq!(first["scope"], scope.as_str());
    assert_eq!(first["category"], "home");
    // Nothing else in the home is that large, so GB cut to whole units agree even
    // if another suite adds a file meanwhile.
    assert_eq!(first["usage"], bytes / GB, "{first} (du: {bytes})");
    let wallet = wait_charged(&stack, &scope, bytes / GB);
    assert!(wallet >= bytes / GB);

    // The same files again: the same total, and the category's total unchanged.
    let second = du_run(&stack, &drive, &[]);
    assert_eq!(second["usage"], first["usage"], "{second}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(wait_charged(&stack, &scope, bytes / GB), wallet);

    // A limit cut the walk short: the record says so, and the charge is no less.
    let cut = du_run(&stack, &drive, &["--max-files", "2"]);
    assert_eq!(cut["truncated"], "file limit", "{cut}");
    assert!(cut["bytes"].as_u64().unwrap() < bytes, "{cut}");
    assert_eq!(cut["usage"], bytes / GB, "{cut}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(wait_charged(&stack, &scope, bytes / GB), wallet);

    // The files gone: the drive is charged what is left.
    fs::remove_dir_all(&hidden).unwrap();
    let after = du_run(&stack, &drive, &[]);
    let left = du(&home) / GB;
    assert_eq!(after["usage"], left, "{after}");
    wait_charged(&stack, &scope, left);
}

/// A btrfs filesystem on a loop device with qgroups on, mounted at a scratch
/// directory, and one of its subvolumes mounted at a user's home as the drive;
/// all of it unmounted and detached when the test ends, whatever happens.
struct QuotaHome {
    top: PathBuf,
    home: PathBuf,
    loopdev: String,
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl QuotaHome {
    fn mount(home: &str, owner: &str) -> QuotaHome {
        let top = std::env::temp_dir().join(unique("du-btrfs"));
        fs::create_dir(&top).unwrap();
        let image = top.with_extension("img");
        // Sparse: the filesystem writes its metadata, fallocate's extents cost
        // the image nothing.
        fs::File::create(&image).unwrap().set_len(4 << 30).unwrap();
        let loopdev = sh(&["losetup", "--find", "--show", image.to_str().unwrap()])
            .trim()
            .to_string();
        fs::remove_file(&image).unwrap();
        let guard = QuotaHome {
            top,
            home: PathBuf::from(home),
            loopdev,
        };
        let top = guard.top.to_str().unwrap();
        sh(&["mkfs.btrfs", "-q", &guard.loopdev]);
        sh(&["mount", &guard.loopdev, top]);
        sh(&["btrfs", "quota", "enable", top]);
        sh(&["btrfs", "-q", "subvolume", "create", &format!("{top}/home")]);
        sh(&["mount", "-o", "subvol=home", &guard.loopdev, home]);
        sh(&["chown", &format!("{owner}:{owner}"), home]);
        sh(&["chmod", "0700", home]);
        guard
    }

    /// The referenced bytes of the home subvolume's level-0 qgroup, as
    /// `btrfs qgroup show` prints them after a commit; and its qgroup id.
    fn referenced(&self) -> (u64, String) {
        let top = self.top.to_str().unwrap();
        sh(&["btrfs", "filesystem", "sync", top]);
        let id = format!(
            "0/{}",
            sh(&[
                "btrfs",
                "inspect-internal",
                "rootid",
                self.home.to_str().unwrap()
            ])
            .trim()
        );
        let shown = sh(&["btrfs", "qgroup", "show", "--raw", "-r", top]);
        let bytes = shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no qgroup {id} in {shown}"))
            .parse()
            .unwrap();
        (bytes, id)
    }
}

impl Drop for QuotaHome {
    fn drop(&mut self) {
        for dir in [&self.home, &self.top] {
            let ok = Command::new("umount")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(dir).status();
            }
        }
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
        let _ = fs::remove_dir(&self.top);
    }
}

/// The drive of a new mapping of `ucloud` to `local`, once UCloud answered.
fn registered_drive(stack: &Stack, ucloud: &str, local: &str) -> String {
    let registry = |args: &[&str]| {
        Command::new(stack.bin("ucloud-registry"))
            .args(args)
            .current_dir("/")
            .output()
            .unwrap()
    };
    let out = registry(&["add", ucloud, local, "--wait", "20"]);
    assert!(
        out.status.success(),
        "ucloud-registry add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = registry(&["sync"]);
        let list = String::from_utf8_lossy(&registry(&["list"]).stdout).into_owned();
        let drive = list
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&ucloud))
            .and_then(|f| f.get(3).map(|d| d.to_string()));
        match drive {
            Some(d) if d != "pending" => return d,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            _ => panic!("the drive of {ucloud} is {drive:?}: is the sender running?"),
        }
    }
}

fn drive_in<'r>(record: &'r Value, drive: &str) -> &'r Value {
    record["drives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["drive"] == drive)
        .unwrap_or_else(|| panic!("no drive {drive} in {record}"))
}

/// ucloud-du as the quota drop-in runs it holds exactly CAP_DAC_READ_SEARCH and
/// CAP_SYS_ADMIN, in every set, as its own account.
fn holds_what_the_drop_in_grants(stack: &Stack) {
    let status = as_du(stack, QUOTA_CAPS)
        .args(["cat", "/proc/self/status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let want = format!("{:016x}", (1u64 << 2) | (1u64 << 21));
    for set in ["CapEff:", "CapPrm:", "CapAmb:", "CapBnd:"] {
        assert_eq!(field(set), want, "{set} {status}");
    }
    assert_eq!(
        field("Uid:"),
        uid_of(&stack.get("UCLOUD_IM_DU_USER")).to_string()
    );
}

#[test]
fn a_btrfs_subvolume_drive_is_charged_its_qgroup_and_the_rest_is_walked_without_sys_admin() {
    let stack = Stack::load();
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let ucloud = unique_account("QuotaTest#");
    let user = ScratchAccount::new(&stack, "qtest-", &ucloud);
    let drive = registered_drive(&stack, &ucloud, &user.name);
    let scope = format!("drive-{provider}-{drive}");
    let bob = stack.drive_of(BOB);
    // Declared after the account: unmounted before the account is removed.
    let quota = QuotaHome::mount(&user.home(), &user.name);
    let home = user.home();
    assert_eq!(
        fs::metadata(&home)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap(),
        256,
        "{home} is a subvolume root"
    );

    // 1.5 GB, and a reflinked copy of it: the walk counts 3 GB, the qgroup
    // 1.5 GB (the extents are shared), so the two sources tell apart.
    let as_user = |args: &[&str]| {
        let out = run_as(&user.name, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    as_user(&["fallocate", "-l", "1500000000", &format!("{home}/big")]);
    as_user(&[
        "cp",
        "--reflink=always",
        &format!("{home}/big"),
        &format!("{home}/copy"),
    ]);
    let (referenced, qgroup) = quota.referenced();
    let walked = du(&home);
    assert!(
        referenced / GB == 1 && walked / GB == 3,
        "qgroup {referenced}, du {walked}"
    );

    // The invocation holds exactly what the drop-in grants, as the account.
    holds_what_the_drop_in_grants(&stack);

    let record = du_record(&stack, QUOTA_CAPS, &["--drive", &drive, "--drive", &bob]);
    assert_eq!(record["sysAdmin"]["heldAtStart"], true, "{record}");
    assert_eq!(record["sysAdmin"]["droppedBeforeWalk"], true, "{record}");
    let mine = drive_in(&record, &drive);
    assert_eq!(mine["source"], format!("btrfs qgroup {qgroup}"), "{mine}");
    assert_eq!(mine["bytes"], referenced, "{mine}");
    assert_eq!(mine["usage"], referenced / GB, "{mine}");
    // The other drive, on a filesystem without quotas, is walked and says why.
    let other = drive_in(&record, &bob);
    assert_eq!(other["source"], "walk", "{other}");
    assert!(
        other["walkReason"]
            .as_str()
            .unwrap()
            .contains("no project id"),
        "{other}"
    );
    assert_eq!(other["truncated"], Value::Null, "{other}");
    wait_charged_to(&stack, &ucloud, &scope, referenced / GB);

    // Without CAP_SYS_ADMIN (the packaged unit) the same drive is walked.
    let record = du_record(&stack, UNIT_CAPS, &["--drive", &drive]);
    assert_eq!(record["sysAdmin"]["heldAtStart"], false, "{record}");
    let walked_run = drive_in(&record, &drive);
    assert_eq!(walked_run["source"], "walk", "{walked_run}");
    assert!(
        walked_run["walkReason"]
            .as_str()
            .unwrap()
            .contains("no CAP_SYS_ADMIN"),
        "{walked_run}"
    );
    assert_eq!(walked_run["bytes"], du(&home), "{walked_run}");
    assert_eq!(walked_run["usage"], walked / GB, "{walked_run}");
    wait_charged_to(&stack, &ucloud, &scope, walked / GB);

    // A site may force the walk; the capability is dropped all the same.
    let record = du_record(&stack, QUOTA_CAPS, &["--drive", &drive, "--walk-only"]);
    assert_eq!(record["sysAdmin"]["heldAtStart"], true, "{record}");
    let forced = drive_in(&record, &drive);
    assert_eq!(forced["source"], "walk", "{forced}");
    assert_eq!(forced["walkReason"], "--walk-only", "{forced}");
    drop(quota);
    assert!(
        !Path::new(&home).join("big").exists(),
        "the btrfs home is still mounted"
    );
}
