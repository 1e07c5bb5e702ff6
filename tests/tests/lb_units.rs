//! The balancer's units: systemd accepts them, their exposure is printed and held, and
//! the balancer-facing gateway service stays the direct one plus --proxy-protocol.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use ucloud_im_tests::Stack;

const UNITS: [&str; 4] = [
    "ucloud-lb.socket",
    "ucloud-lb.service",
    "ucloud-gateway-lb.socket",
    "ucloud-gateway-lb@.service",
];

/// ucloud-lb needs no privilege; 1.2 on systemd 252.
const LB_MAX_EXPOSURE: f64 = 1.5;

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../units")
        .join(name)
}

fn read_unit(name: &str) -> String {
    std::fs::read_to_string(unit_path(name))
        .unwrap_or_else(|e| panic!("cannot read units/{name}: {e}"))
}

fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_accepts_the_balancer_units_without_a_warning() {
    let stack = Stack::load();
    // verify wants ExecStart= binaries to exist: point them at the stack's.
    let dir = std::env::temp_dir().join(format!("ucloud-lb-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = stack.get("UCLOUD_IM_BIN");
    for name in UNITS {
        let text = read_unit(name).replace("ExecStart=/usr/bin/", &format!("ExecStart={bin}/"));
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

fn exposure(unit: &str) -> f64 {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path(unit))
        .output()
        .expect("cannot run systemd-analyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{stdout}"));
    println!("{unit}: {}", line.trim_start_matches(['→', ' ']));
    line.rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"))
}

#[test]
fn exposure_is_printed_and_the_balancer_stays_near_zero() {
    let lb = exposure("ucloud-lb.service");
    assert!(
        lb <= LB_MAX_EXPOSURE,
        "ucloud-lb.service exposure {lb} > {LB_MAX_EXPOSURE}"
    );
    let gateway = exposure("ucloud-gateway-lb@.service");
    assert!((0.0..=10.0).contains(&gateway));
}

#[test]
fn the_balancer_facing_gateway_is_the_direct_one_plus_the_proxy_flag() {
    let direct = settings(&read_unit("ucloud-gateway@.service"));
    let behind = settings(&read_unit("ucloud-gateway-lb@.service"));
    let strip = |s: &[(String, String)]| -> Vec<(String, String)> {
        s.iter()
            .filter(|(k, _)| k != "ExecStart" && k != "Description")
            .cloned()
            .collect()
    };
    assert_eq!(
        strip(&direct),
        strip(&behind),
        "the two gateway services drifted apart"
    );
    let exec = |s: &[(String, String)]| {
        s.iter()
            .find(|(k, _)| k == "ExecStart")
            .map(|(_, v)| v.clone())
            .expect("ExecStart=")
    };
    assert_eq!(exec(&behind), format!("{} --proxy-protocol", exec(&direct)));
    let socket = settings(&read_unit("ucloud-gateway-lb.socket"));
    assert!(socket.contains(&("Accept".into(), "yes".into())));
    // Only the balancer's group may open it: the PROXY header names the client.
    for (key, value) in [
        ("ListenStream", "/run/ucloud-im/gateway-lb.sock"),
        ("SocketUser", "root"),
        ("SocketGroup", "ucloud-lb"),
        ("SocketMode", "0660"),
    ] {
        assert!(
            socket.contains(&(key.into(), value.into())),
            "ucloud-gateway-lb.socket: {key}={value} expected in {socket:?}"
        );
    }
    assert!(socket.contains(&("TriggerLimitBurst".into(), "0".into())));
    let lb = settings(&read_unit("ucloud-lb.service"));
    assert!(
        lb.contains(&("Type".into(), "notify".into())),
        "sd_notify readiness"
    );
    assert!(lb.contains(&("NoNewPrivileges".into(), "yes".into())));
}
