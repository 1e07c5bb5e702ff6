//! Storage usage through the stack: ucloud-du, run as its unit runs it (its own
//! account, CAP_DAC_READ_SEARCH only, stdout appended to the audit log), measures
//! a user's home drive, and the simulator (UCloud's core's rule) charges the user
//! for the drive's scope in the home category exactly what `du` says is allocated,
//! in whole GB. Data the user hid in a mode-000 directory is counted, a symlink to
//! `/` is not followed, a second run with the same files charges the same total,
//! and a run cut short by its file limit says so and charges no less.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::fs::{self, OpenOptions};
use std::process::Command;
use std::time::{Duration, Instant};
use ucloud_im_tests::{home_of, run_as, unique, Stack};

const ALICE: &str = "AliceHansen#1001";
const GB: u64 = 1_000_000_000;

/// Waits until UCloud holds `total` for the scope; returns the category's total.
fn wait_charged(stack: &Stack, scope: &str, total: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now, wallet) = stack.charged(ALICE, "home", scope);
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

/// ucloud-du as units/ucloud-du.service runs it (scripts/stack's du_run); its
/// audit record for the drive.
fn du_run(stack: &Stack, drive: &str, extra: &[&str]) -> Value {
    let user = stack.get("UCLOUD_IM_DU_USER");
    let audit = OpenOptions::new()
        .append(true)
        .open(stack.get("UCLOUD_IM_AUDIT_LOG"))
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
            "--inh-caps=-all,+dac_read_search",
            "--ambient-caps=-all,+dac_read_search",
            "--bounding-set=-all,+dac_read_search",
            "--no-new-privs",
        ])
        .arg(stack.bin("ucloud-du"))
        .args(["--drive", drive])
        .args(extra)
        .current_dir("/")
        .stdout(audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ucloud-du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stack
        .audit_lines()
        .into_iter()
        .rev()
        .find(|l| l.contains("\"program\":\"ucloud-du\""))
        .expect("no audit record of ucloud-du");
    let record: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["capability"], true, "{record}");
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
