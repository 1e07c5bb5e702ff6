//! ucloud-connect and ucloud-registry as installed: their --help and man pages.

use super::*;

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
        described(&out)
    );
    let out = stack.registry(&["--help"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("serve"),
        "{}",
        described(&out)
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
            described(&out)
        );
        assert!(out.stderr.is_empty(), "{page} warns: {}", described(&out));
    }
}
