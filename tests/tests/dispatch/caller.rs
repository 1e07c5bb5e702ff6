//! The caller and the installation: only the gateway's account may call, and a
//! dispatcher that cannot become root says why.

use super::*;

// --- the caller and the installation ------------------------------------------------

#[test]
fn only_the_gateway_account_may_call() {
    let _lock = shared();
    let env = Env::new();
    let bob = env.stack.local_of(BOB);
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    // Any other account cannot even start it (4750 root:<gateway group>): the
    // kernel refuses the exec, so nothing runs and nothing is audited. The exec comes
    // from a shell running as that account: setpriv itself still holds root's
    // capabilities when it execs, and CAP_DAC_OVERRIDE would let it through.
    let as_shell = ["/bin/sh".to_string(), "-c".into(), "exec \"$0\"".into()];
    how.user = Some(bob.clone());
    how.setpriv = as_shell.to_vec();
    let run = env.run_with(&how);
    assert_eq!(run.output.status.code(), Some(126), "{}", run.stderr());
    assert!(
        run.stderr().contains("Permission denied"),
        "{}",
        run.stderr()
    );
    assert!(run.output.stdout.is_empty() && run.audit.is_empty());
    // An account given the gateway's group but not its uid gets past the kernel and
    // is refused by the dispatcher itself.
    how.user = None;
    how.setpriv = vec![
        "setpriv".into(),
        format!("--reuid={bob}"),
        format!("--regid={}", env.gateway()),
        "--clear-groups".into(),
    ];
    how.setpriv.extend(as_shell);
    env.run_with(&how)
        .refused(77, 403, "WRONG_CALLER", "only the gateway account", true);
    how.setpriv.clear();
    // Root is no gateway either.
    how.user = None;
    env.run_with(&how)
        .refused(77, 403, "WRONG_CALLER", "only the gateway account", true);
}

#[test]
fn no_new_privs_is_named_as_the_reason() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.setpriv = vec!["--no-new-privs".into()];
    env.run_with(&how).refused(
        78,
        500,
        "DISPATCHER_NOT_PRIVILEGED",
        "no_new_privs is set",
        false,
    );
}

#[test]
fn a_bounding_set_without_cap_setuid_is_a_clear_error() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.setpriv = vec!["--bounding-set=-setuid".into()];
    // Still root (euid 0), so the refusal is audited.
    env.run_with(&how).refused(
        78,
        500,
        "DISPATCHER_NOT_PRIVILEGED",
        "lacks CAP_SETUID",
        true,
    );
}

/// A copy of the dispatcher in a root-owned directory with the given owner and mode.
struct Copy {
    dir: PathBuf,
}

impl Copy {
    fn new(env: &Env, owner: &str, mode: u32) -> (Copy, PathBuf) {
        let dir = PathBuf::from(format!(
            "/var/tmp/dispatch-copy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("ucloud-dispatch");
        std::fs::copy(env.get("UCLOUD_IM_DISPATCH"), &copy).unwrap();
        let status = Command::new("chown")
            .arg(owner)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
        (Copy { dir }, copy)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_binary_without_setuid_or_not_owned_by_root_refuses() {
    let _lock = shared();
    let env = Env::new();
    let bob = env.stack.local_of(BOB);
    for (owner, mode) in [("root:root", 0o755), (bob.as_str(), 0o4755)] {
        let (_copy, program) = Copy::new(&env, owner, mode);
        let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
        how.program = program;
        env.run_with(&how).refused(
            78,
            500,
            "DISPATCHER_NOT_PRIVILEGED",
            "not running as root",
            false,
        );
    }
}
