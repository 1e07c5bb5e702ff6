//! The registry as installed: its units pass systemd-analyze, and the programs have
//! their --help and man pages.

use super::*;

#[test]
fn registry_units_pass_systemd_analyze() {
    let stack = Stack::load();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../units");
    let dir = std::env::temp_dir().join(format!("ucloud-im-registry-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = stack.get("UCLOUD_IM_BIN");
    let units = ["ucloud-registry.socket", "ucloud-registry@.service"];
    for name in units {
        let text =
            std::fs::read_to_string(src.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::fs::write(
            dir.join(name),
            text.replace("ExecStart=/usr/bin/", &format!("ExecStart={bin}/")),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units.map(|u| dir.join(u)))
        .output()
        .expect("cannot run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    let service = std::fs::read_to_string(src.join("ucloud-registry@.service")).unwrap();
    assert!(
        service.contains("StandardInput=socket")
            && service.contains("ExecStart=/usr/bin/ucloud-registry serve")
    );
    let socket = std::fs::read_to_string(src.join("ucloud-registry.socket")).unwrap();
    assert!(
        socket.contains("Accept=yes")
            && socket.contains("SocketMode=0666")
            && socket.contains("TriggerLimitBurst=0")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_and_man_pages() {
    let stack = Stack::load();
    let out = Command::new(connect_bin(&stack))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("registry.sock"),
        "{}",
        text(&out)
    );
    let out = registry(&stack, &["--help"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("serve"),
        "{}",
        text(&out)
    );
    for page in ["ucloud-connect.1", "ucloud-registry.8"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../man")
            .join(page);
        let out = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .output()
            .expect("man");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "{page}: {}",
            text(&out)
        );
        assert!(out.stderr.is_empty(), "{page} warns: {}", text(&out));
    }
}
