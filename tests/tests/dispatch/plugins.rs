//! Which plugins run: none that another user could change, no setuid one, no
//! symlink; a call without one is unsupported; scripts run by fd.

use super::*;

#[test]
fn writable_plugin_dir_or_plugin_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let dir = env.plugins();
    let plugin = dir.join(PROBE);
    let envelope = env.envelope(PROBE, Some(ALICE), json!({}));
    let key = env.etc().join("ucloud_key.pub");
    let site = env.etc().join("site.conf");
    let mappings = env.mappings();
    for (path, mode) in [
        (&dir, 0o775),
        (&dir, 0o757),
        (&plugin, 0o775),
        (&plugin, 0o757),
        (&key, 0o666),
        (&site, 0o664),
        (&mappings, 0o777),
    ] {
        let _guard = ModeGuard::set(path, mode);
        env.run(&envelope).refused(
            78,
            500,
            "UNSAFE_INSTALLATION",
            "writable by group or others",
            true,
        );
    }
    // Restored: it works again.
    env.run(&envelope).probe();
}

#[test]
fn a_setuid_plugin_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let _guard = ModeGuard::set(&env.plugins().join(PROBE), 0o4755);
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(78, 500, "UNSAFE_INSTALLATION", "setuid", true);
}

#[test]
fn a_plugin_that_is_a_symlink_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let link = env.plugins().join("test.symlink");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env.plugins().join(PROBE), &link).unwrap();
    let _placed = Placed(link);
    env.run(&env.envelope("test.symlink", Some(ALICE), json!({})))
        .refused(78, 500, "UNSAFE_INSTALLATION", "is a symlink", true);
}

#[test]
fn a_call_without_a_plugin_is_unsupported_and_audited() {
    let _lock = shared();
    let env = Env::new();
    env.run(&env.envelope("test.nosuchplugin", Some(ALICE), json!({})))
        .refused(
            77,
            404,
            "UNSUPPORTED_CALL",
            "this provider does not implement test.nosuchplugin",
            true,
        );
}

#[test]
fn script_plugins_run_by_fd_and_see_only_their_own_script() {
    let _lock = exclusive();
    let env = Env::new();
    let path = env.plugins().join("test.script");
    std::fs::write(
        &path,
        "#!/bin/sh\nprintf '{\"uid\":\"%s\",\"arg0\":\"%s\",\"arg1\":\"%s\",\"fds\":\"%s\",\"request\":%s}\\n' \
         \"$(id -u)\" \"$0\" \"$1\" \"$(ls /proc/$$/fd | sort -n | tr '\\n' ' ')\" \"$(cat \"$1\")\"\n",
    )
    .unwrap();
    let placed = Placed(path);
    std::fs::set_permissions(&placed.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = env.run(&env.envelope("test.script", Some(ALICE), json!({"a": 1})));
    let out = run.probe();
    let alice = env.stack.local_of(ALICE);
    assert_eq!(out["uid"], json!(id_of("-u", &alice)[0].to_string()));
    assert_eq!(out["request"], json!({"a": 1}));
    // The kernel runs `/bin/sh /dev/fd/4 /dev/fd/3`: fd 4 is the script itself.
    assert_eq!(out["arg0"], "/dev/fd/4");
    assert_eq!(out["arg1"], "/dev/fd/3");
    let fds: Vec<&str> = out["fds"].as_str().unwrap().split_whitespace().collect();
    assert!(!fds.contains(&"42"), "{fds:?}");
    assert!(
        fds.iter().all(|fd| fd.parse::<u32>().unwrap() <= 10),
        "{fds:?}"
    );
}
