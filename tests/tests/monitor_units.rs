//! The monitor's units: systemd accepts them without a warning, and the service's
//! exposure score is printed and held.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use ucloud_im_tests::Stack;

const UNITS: [&str; 2] = ["ucloud-monitor.socket", "ucloud-monitor.service"];
/// 1.5 on systemd 252: the Slurm clients need the network, nothing else is open.
const MAX_EXPOSURE: f64 = 2.5;

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../units")
        .join(name)
}

#[test]
fn systemd_accepts_the_monitor_units_without_a_warning() {
    let stack = Stack::load();
    // verify wants ExecStart= binaries to exist: point them at the stack's.
    let dir = std::env::temp_dir().join(format!("ucloud-monitor-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = stack.get("UCLOUD_IM_BIN");
    for name in UNITS {
        let text = std::fs::read_to_string(unit_path(name))
            .unwrap_or_else(|e| panic!("cannot read units/{name}: {e}"))
            .replace("ExecStart=/usr/bin/", &format!("ExecStart={bin}/"));
        std::fs::write(dir.join(name), text).unwrap();
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.map(|u| dir.join(u)))
        .output()
        .expect("cannot run systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify found problems ({}):\n{stderr}",
        output.status
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_monitor_service_is_confined() {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path("ucloud-monitor.service"))
        .output()
        .expect("cannot run systemd-analyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
    println!(
        "ucloud-monitor.service: {}",
        line.trim_start_matches(['→', ' '])
    );
    let score: f64 = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!(
        score <= MAX_EXPOSURE,
        "exposure {score} > {MAX_EXPOSURE}:\n{stdout}"
    );
    let text = std::fs::read_to_string(unit_path("ucloud-monitor.service")).unwrap();
    for needed in [
        "User=ucloud-mon",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SupplementaryGroups=ucloud-outbox",
    ] {
        assert!(
            text.contains(needed),
            "ucloud-monitor.service lacks {needed:?}"
        );
    }
}
