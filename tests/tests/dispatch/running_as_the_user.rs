//! The positive case: the plugin runs as the mapped user (or the service account)
//! with nothing else of the caller's: no other fd, no hostile environment.

use super::*;

#[test]
fn the_plugin_runs_as_the_mapped_user_with_nothing_else() {
    let _lock = shared();
    let env = Env::new();
    let local = env.stack.local_of(ALICE);
    let run = env.run(&env.envelope(PROBE, Some(ALICE), request()));
    let probe = run.probe();

    let uid = id_of("-u", &local)[0];
    let gid = id_of("-g", &local)[0];
    assert_eq!(status_ids(&probe, "Uid"), vec![uid; 4]);
    assert_eq!(status_ids(&probe, "Gid"), vec![gid; 4]);
    let mut groups = status_ids(&probe, "Groups");
    let mut want = id_of("-G", &local);
    groups.sort();
    want.sort();
    assert_eq!(groups, want);
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(probe["status"][cap], "0000000000000000", "{cap}");
    }
    assert_eq!(probe["status"]["NoNewPrivs"], "1");
    assert_eq!(probe["status"]["Umask"], "0077");

    let fds = probe["fds"].as_object().unwrap();
    let numbers: Vec<&str> = fds.keys().map(String::as_str).collect();
    assert_eq!(numbers, ["0", "1", "2", "3"], "open fds: {fds:?}");
    let request_fd = fds["3"].as_str().unwrap();
    assert!(
        request_fd.starts_with("/memfd:ucloud-request"),
        "fd 3 is {request_fd}"
    );

    let home = home_of(&local);
    assert_eq!(probe["cwd"], json!(home));
    assert_eq!(probe["argv"], json!([PROBE, "/dev/fd/3"]));
    let sent: Value = serde_json::from_str(probe["request"].as_str().unwrap()).unwrap();
    assert_eq!(sent, request());

    let prefix = env.stack.prefix();
    let libexec = prefix.join("usr/libexec/ucloud-im");
    let site = std::fs::read_to_string(env.etc().join("site.conf")).unwrap();
    let public_url = site
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("public_url")?
                .trim()
                .strip_prefix('=')
        })
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let expected = json!({
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": local,
        "LOGNAME": local,
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
        "UCLOUD_CALL": PROBE,
        "UCLOUD_PROVIDER": env.get("UCLOUD_IM_PROVIDER"),
        "UCLOUD_USERNAME": ALICE,
        "UCLOUD_PUBLIC_URL": public_url,
        "UCLOUD_IM_LIBEXEC": libexec.to_string_lossy(),
        "UCLOUD_IM_ETC": env.etc().to_string_lossy(),
        "UCLOUD_IM_DRIVES": prefix.join("var/lib/ucloud-im/drives").to_string_lossy(),
        "UCLOUD_IM_PROJECTS": prefix.join("var/lib/ucloud-im/projects").to_string_lossy(),
    });
    assert_eq!(probe["env"], expected);

    assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
    let audit = &run.audit[0];
    assert_eq!(audit["decision"], "allowed");
    assert_eq!(audit["call"], PROBE);
    assert_eq!(audit["ucloudUser"], ALICE);
    assert_eq!(audit["localUser"], json!(local));
    assert_eq!(audit["uid"], json!(uid));
}

#[test]
fn each_user_gets_their_own_account() {
    let _lock = shared();
    let env = Env::new();
    let bob = env.stack.local_of(BOB);
    let probe = env.run(&env.envelope(PROBE, Some(BOB), json!({}))).probe();
    assert_eq!(status_ids(&probe, "Uid"), vec![id_of("-u", &bob)[0]; 4]);
    assert_eq!(probe["env"]["UCLOUD_USERNAME"], BOB);
}

#[test]
fn a_secret_fd_and_a_hostile_environment_do_not_reach_the_plugin() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.env = vec![
        ("LD_PRELOAD".into(), "/tmp/evil.so".into()),
        ("LD_LIBRARY_PATH".into(), "/tmp".into()),
        ("PATH".into(), "/tmp/evil:/usr/bin:/bin".into()),
        ("BASH_FUNC_ls%%".into(), "() { echo pwned; }".into()),
        ("UCLOUD_USERNAME".into(), BOB.into()),
        ("HOME".into(), "/root".into()),
    ];
    let run = env.run_with(&how);
    let probe = run.probe();
    let fds = probe["fds"].as_object().unwrap();
    assert!(!fds.contains_key("42"), "fd 42 reached the plugin: {fds:?}");
    assert!(
        fds.values()
            .all(|t| !t.as_str().unwrap().contains("dispatch-test")),
        "{fds:?}"
    );
    let plugin_env = probe["env"].as_object().unwrap();
    for key in ["LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_FUNC_ls%%"] {
        assert!(!plugin_env.contains_key(key), "{key} reached the plugin");
    }
    assert_eq!(plugin_env["PATH"], "/usr/local/bin:/usr/bin:/bin");
    assert_eq!(plugin_env["UCLOUD_USERNAME"], ALICE);
    assert_ne!(plugin_env["HOME"], "/root");
}

#[test]
fn service_calls_run_as_the_service_account() {
    let _lock = shared();
    let env = Env::new();
    let service = env.get("UCLOUD_IM_SERVICE_USER");
    // The stack's own (shell) plugin: no user, and a UCloud user in the envelope
    // does not change who it runs as.
    for user in [None, Some(ALICE)] {
        let run = env.run(&env.envelope("integration.retrieveManifest", user, json!({})));
        assert!(run.output.status.success(), "{}", run.stderr());
        let body: Value = serde_json::from_str(run.stdout().trim()).unwrap();
        assert_eq!(body["enabled"], true, "{body}");
        assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
        assert_eq!(run.audit[0]["decision"], "allowed");
        assert_eq!(run.audit[0]["localUser"], json!(service));
        assert_eq!(run.audit[0]["uid"], json!(id_of("-u", &service)[0]));
    }
}
