//! The systemd units in units/: systemd itself must accept them, their exposure scores
//! must not creep up, the gateway's must keep the setuid dispatcher working, and each
//! service keeps the settings its confinement rests on.
//!
//! `systemd-analyze verify` insists that ExecStart= binaries exist, and on this machine
//! they live in the stack's prefix, not in /usr/bin: the units are checked as copies
//! whose ExecStart= points at the installed stack binaries, nothing else changed.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use ucloud_im_tests::Stack;

/// One unit of units/ and the exposure bound we publish for it (0 best, 10 worst),
/// for the services `systemd-analyze security` scores.
struct Unit {
    name: &'static str,
    max_exposure: Option<f64>,
}

const fn unit(name: &'static str, max_exposure: Option<f64>) -> Unit {
    Unit { name, max_exposure }
}

/// Every unit the tests check, with its bound:
/// - the gateway cannot go lower than about 6 without no_new_privs, which would break
///   the setuid dispatcher; the balancer-facing one is the same service, only held to
///   the scale;
/// - ucloud-du: 1.2 on systemd 252 with its one capability;
/// - ucloud-share: 4.5 on systemd 252: root with four capabilities and no mount
///   namespace (its gates must be seen by everyone);
/// - ucloud-lb needs no privilege: 1.2 on systemd 252;
/// - ucloud-monitor: 1.5 on systemd 252: the Slurm clients need the network, nothing
///   else is open.
/// - ucloud-project: 2.7 on systemd 252: root with five file capabilities, /etc
///   writable (groupadd), and the network for sacctmgr.
const UNITS: [Unit; 20] = [
    unit("ucloud-gateway.socket", None),
    unit("ucloud-gateway@.service", Some(6.5)),
    unit("ucloud-sender.service", Some(2.0)),
    unit("ucloud-registry.socket", None),
    unit("ucloud-registry@.service", None),
    unit("ucloud-registry-expire.service", None),
    unit("ucloud-registry-expire.timer", None),
    unit("ucloud-du.service", Some(2.0)),
    unit("ucloud-du.timer", None),
    unit("ucloud-share.service", Some(5.0)),
    unit("ucloud-share.timer", None),
    unit("ucloud-lb.socket", None),
    unit("ucloud-lb.service", Some(1.5)),
    unit("ucloud-gateway-lb.socket", None),
    unit("ucloud-gateway-lb@.service", Some(10.0)),
    unit("ucloud-monitor.socket", None),
    unit("ucloud-monitor.service", Some(2.5)),
    unit("ucloud-project.service", Some(3.0)),
    unit("ucloud-project.path", None),
    unit("ucloud-project.timer", None),
];

/// Directives that turn no_new_privs on for a service with User= (or defeat setuid).
const IMPLY_NO_NEW_PRIVS: [&str; 18] = [
    "NoNewPrivileges",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "RestrictSUIDSGID",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectClock",
    "ProtectHostname",
    "PrivateDevices",
    "MemoryDenyWriteExecute",
    "LockPersonality",
    "DynamicUser",
    "PrivateUsers",
    "PrivateNetwork",
];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units")
}

fn read_unit(name: &str) -> String {
    let path = source_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `Key=value` settings of a unit, comments and section headers left out.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value_of(text: &str, key: &str) -> Vec<String> {
    settings(text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

/// Copies of the units into a fresh directory, with ExecStart= on the stack's binaries.
fn staged_units(stack: &Stack) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ucloud-im-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = stack.get("UCLOUD_IM_BIN");
    for name in UNITS.map(|u| u.name) {
        let text = read_unit(name).replace("ExecStart=/usr/bin/", &format!("ExecStart={bin}/"));
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

#[test]
fn systemd_accepts_the_units_without_a_warning() {
    let stack = Stack::load();
    let dir = staged_units(&stack);
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(UNITS.map(|u| dir.join(u.name)))
        .output()
        .expect("cannot run systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify found problems ({}):\n{stderr}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gateway_unit_keeps_setuid_working() {
    let unit = read_unit("ucloud-gateway@.service");
    for (key, value) in settings(&unit) {
        assert!(
            !IMPLY_NO_NEW_PRIVS.contains(&key.as_str()),
            "ucloud-gateway@.service sets {key}={value}, which turns on no_new_privs \
             (or defeats setuid): the dispatcher could never become root"
        );
    }
    let mut caps: Vec<String> = value_of(&unit, "CapabilityBoundingSet")
        .join(" ")
        .split_whitespace()
        .map(String::from)
        .collect();
    caps.sort();
    assert_eq!(caps, ["CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID"]);
    assert_eq!(value_of(&unit, "User"), ["ucloud-gw"]);
    assert_eq!(value_of(&unit, "StandardInput"), ["socket"]);
    assert_eq!(value_of(&unit, "StandardOutput"), ["socket"]);
    assert_eq!(value_of(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(value_of(&unit, "CollectMode"), ["inactive-or-failed"]);
    // Plugins write users' files and the dispatcher the audit log, under ProtectSystem.
    let writable = value_of(&unit, "ReadWritePaths").join(" ");
    assert!(writable.contains("/home") && writable.contains("/var/log/ucloud-im"));
}

#[test]
fn socket_cannot_be_taken_down_by_a_burst_of_connections() {
    let unit = read_unit("ucloud-gateway.socket");
    assert_eq!(value_of(&unit, "Accept"), ["yes"]);
    assert_eq!(value_of(&unit, "TriggerLimitBurst"), ["0"]);
    let max: u32 = value_of(&unit, "MaxConnections")
        .first()
        .expect("MaxConnections= must be sized, not left at 64")
        .parse()
        .expect("MaxConnections= is a number");
    assert!(max > 64, "MaxConnections={max}");
}

#[test]
fn sender_unit_has_no_way_to_privilege() {
    let unit = read_unit("ucloud-sender.service");
    assert_eq!(value_of(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(value_of(&unit, "CapabilityBoundingSet"), [""]);
    assert_eq!(value_of(&unit, "User"), ["ucloud-send"]);
    assert_eq!(
        value_of(&unit, "ReadWritePaths"),
        [
            "/var/lib/ucloud-im/outbox",
            "/var/lib/ucloud-im/leases/sender",
            "-/var/lib/ucloud-im/inbox"
        ]
    );
}

fn exposure(unit: &str) -> f64 {
    let path = source_dir().join(unit);
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("cannot run systemd-analyze");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level for {unit} in:\n{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    println!("{unit}: {}", line.trim_start_matches(['→', ' ']));
    let score = line
        .rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    assert!((0.0..=10.0).contains(&score), "{line}");
    score
}

#[test]
fn exposure_stays_within_the_published_bounds() {
    for Unit { name, max_exposure } in UNITS {
        let Some(max) = max_exposure else { continue };
        let score = exposure(name);
        assert!(score <= max, "{name} exposure {score} > {max}");
    }
}

/// Every unit in units/, by file name (not the generator beside them).
fn all_units() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(source_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != GENERATOR)
        .collect();
    names.sort();
    names
}

#[test]
fn every_unit_that_runs_for_good_starts_at_boot_once_enabled() {
    // Sockets and timers start their services; these services run on their own.
    for name in all_units() {
        let long_running = matches!(
            name.as_str(),
            "ucloud-sender.service" | "ucloud-monitor.service" | "ucloud-lb.service"
        );
        let wakes =
            name.ends_with(".socket") || name.ends_with(".timer") || name.ends_with(".path");
        if wakes || long_running {
            let unit = read_unit(&name);
            assert!(
                !value_of(&unit, "WantedBy").is_empty(),
                "{name} has no [Install] WantedBy=: `systemctl enable` would do nothing"
            );
        }
    }
}

#[test]
fn direct_gateway_socket_listens_on_loopback_only() {
    // It takes plain HTTP without a PROXY header; a site moves it with a drop-in.
    // (The balancer-facing one is a unix socket: see
    // the_balancer_facing_gateway_is_the_direct_one_plus_the_proxy_flag.)
    let name = "ucloud-gateway.socket";
    let listen = value_of(&read_unit(name), "ListenStream");
    assert!(
        !listen.is_empty() && listen.iter().all(|l| l.starts_with("127.0.0.1:")),
        "{name} listens on {listen:?}"
    );
}

#[test]
fn every_writable_path_of_the_units_is_made_by_the_package() {
    let tmpfiles_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/tmpfiles.conf");
    let tmpfiles = std::fs::read_to_string(&tmpfiles_path).unwrap();
    let made: Vec<&str> = tmpfiles
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            // A directory, or a file (a lock) a unit may write alone.
            matches!(fields.next(), Some("d" | "f"))
                .then(|| fields.next())
                .flatten()
        })
        .collect();
    for name in all_units() {
        for paths in value_of(&read_unit(&name), "ReadWritePaths") {
            for path in paths.split_whitespace().map(|p| p.trim_start_matches('-')) {
                // Users' homes are the site's; /etc the system's (ucloud-project's
                // groupadd rewrites /etc/group).
                if path == "/home" || path == "/etc" {
                    continue;
                }
                assert!(
                    made.contains(&path),
                    "{name}: ReadWritePaths={path} is made by no `d` or `f` line of packaging/tmpfiles.conf"
                );
            }
        }
    }
}

#[test]
fn gateway_manual_lists_every_directive_a_setuid_dispatcher_cannot_live_with() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../man/ucloud-gateway.8");
    let text = std::fs::read_to_string(page).unwrap();
    let hardening = text
        .split(".SH HARDENING")
        .nth(1)
        .and_then(|rest| rest.split("\n.SH ").next())
        .expect("ucloud-gateway(8) has a HARDENING section");
    for directive in IMPLY_NO_NEW_PRIVS {
        assert!(
            hardening.contains(&format!("{directive}=")),
            "ucloud-gateway(8), HARDENING, does not name {directive}="
        );
    }
}

/// ucloud-du's one privilege is reading metadata everywhere: exactly
/// CAP_DAC_READ_SEARCH, ambient, nothing it could gain, nowhere to write but the
/// outbox (and its own state), and its audit record appended by systemd. (Its
/// exposure bound is in `UNITS`.)
#[test]
fn du_unit_holds_one_capability_and_writes_nothing_else() {
    let unit = read_unit("ucloud-du.service");
    assert_eq!(value_of(&unit, "User"), ["ucloud-du"]);
    assert_eq!(value_of(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(
        value_of(&unit, "CapabilityBoundingSet"),
        ["CAP_DAC_READ_SEARCH"]
    );
    assert_eq!(
        value_of(&unit, "AmbientCapabilities"),
        ["CAP_DAC_READ_SEARCH"]
    );
    assert_eq!(value_of(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(value_of(&unit, "ProtectHome"), ["read-only"]);
    assert_eq!(
        value_of(&unit, "ReadWritePaths"),
        ["/var/lib/ucloud-im/outbox"]
    );
    assert_eq!(
        value_of(&unit, "StandardOutput"),
        ["append:/var/log/ucloud-im/audit.log"]
    );
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

/// The monitor runs as its own account, can gain nothing, and writes reports
/// through the outbox's group. (Its exposure bound is in `UNITS`.)
#[test]
fn the_monitor_service_is_confined() {
    let text = read_unit("ucloud-monitor.service");
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

/// The registry is socket-activated, one instance per connection, which anyone may
/// open: it asks the kernel who is calling. (systemd's verdict on the units is
/// systemd_accepts_the_units_without_a_warning's.)
#[test]
fn registry_units_pass_systemd_analyze() {
    let service = read_unit("ucloud-registry@.service");
    assert!(
        service.contains("StandardInput=socket")
            && service.contains("ExecStart=/usr/bin/ucloud-registry serve")
    );
    let socket = read_unit("ucloud-registry.socket");
    assert!(
        socket.contains("Accept=yes")
            && socket.contains("SocketMode=0666")
            && socket.contains("TriggerLimitBurst=0")
    );
}

const GENERATOR: &str = "ucloud-im-generator";

/// Runs the generator on a site.conf holding `conf`; the drop-ins it wrote, by unit.
fn generate(conf: &str) -> (Vec<(String, String)>, String) {
    let dir = std::env::temp_dir().join(format!(
        "ucloud-im-generator-{}-{}",
        std::process::id(),
        conf.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("site.conf"), conf).unwrap();
    let output = Command::new(source_dir().join(GENERATOR))
        .arg(dir.join("out"))
        .arg(dir.join("early"))
        .arg(dir.join("late"))
        .env("UCLOUD_IM_SITE_CONF", dir.join("site.conf"))
        .output()
        .unwrap();
    assert!(output.status.success(), "a generator never fails the boot");
    let mut dropins = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("out")) {
        for entry in entries {
            let entry = entry.unwrap();
            let unit = entry.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(entry.path()).unwrap() {
                dropins.push((
                    unit.clone(),
                    std::fs::read_to_string(file.unwrap().path()).unwrap(),
                ));
            }
        }
    }
    dropins.sort();
    let _ = std::fs::remove_dir_all(&dir);
    (
        dropins,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_generator_makes_project_base_writable_and_refuses_what_a_unit_cannot_take() {
    let (dropins, _) =
        generate("provider = hpc\nproject_base = /srv/old\nproject_base = /srv/projects/ \n");
    let units: Vec<&str> = dropins.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        units,
        [
            "ucloud-gateway-lb@.service.d",
            "ucloud-gateway@.service.d",
            "ucloud-project.service.d"
        ]
    );
    for (unit, text) in &dropins {
        // The last setting wins, as in site.conf's own parser.
        assert_eq!(
            value_of(text, "ReadWritePaths"),
            ["-/srv/projects"],
            "{unit}"
        );
        assert!(text.contains("[Service]"));
    }
    for (conf, why) in [
        ("provider = hpc\n", ""),
        ("project_base =\n", ""),
        ("project_base = relative/dir\n", "not an absolute path"),
        ("project_base = /srv/a b\n", "cannot take"),
        ("project_base = /srv/%n\n", "cannot take"),
        ("project_base = /srv/../etc\n", "cannot take"),
        ("project_base = /srv/x\\\nReadWritePaths=/\n", "cannot take"),
    ] {
        let (dropins, stderr) = generate(conf);
        assert!(dropins.is_empty(), "{conf:?}: {dropins:?}");
        assert!(stderr.contains(why), "{conf:?}: {stderr}");
    }
}
