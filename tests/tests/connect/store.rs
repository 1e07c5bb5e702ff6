//! The mapping store: old mappings expire, and concurrent redemptions never corrupt
//! it.

use super::*;

/// Mappings older than mapping_expire_after_ms stop working and UCloud is told: by
/// `ucloud-registry expire`, and by the sweep at the start of any registry connection.
#[test]
fn old_mappings_expire() {
    let stack = Stack::load();
    let (status, manifest) = stack.call(
        None,
        "GET",
        &format!(
            "/ucloud/{}/integration/retrieveManifest",
            stack.get("UCLOUD_IM_PROVIDER")
        ),
        None,
    );
    assert_eq!(status, 200, "{manifest}");
    let max_age = manifest["expireAfterMs"].as_u64().unwrap_or_else(|| {
        panic!("the stack sets mapping_expire_after_ms; rerun scripts/stack up ({manifest})")
    });

    let by_cli = unique_account("FrankExpire#");
    let by_sweep = unique_account("GraceExpire#");
    let frank = ScratchAccount::new(&stack, "ctest-", &by_cli);
    let grace = ScratchAccount::new(&stack, "ctest-", &by_sweep);
    // Whoever expires it first (this test's trigger, or another registry connection
    // running at the same moment), it must be gone, audited, and UCloud told.
    let expired = |name: &str| {
        stack.audit_lines().iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["action"] == "expire" && v["ucloudUser"] == name && v["decision"] == "allowed"
            })
        })
    };
    let out = stack.registry(&["add", &by_cli, &frank.name, "--wait", "0"]);
    assert!(out.status.success(), "{}", described(&out));
    backdate(&stack, &by_cli, max_age + 1000);
    let out = stack.registry(&["expire"]);
    assert!(out.status.success(), "{}", described(&out));
    assert!(stack.mapping_of(&by_cli).is_none(), "expire left {by_cli}");
    assert!(expired(&by_cli), "no audit line for the expiry of {by_cli}");

    // A fresh mapping is not touched; once old, any registry connection expires it.
    let out = stack.registry(&["add", &by_sweep, &grace.name, "--wait", "0"]);
    assert!(out.status.success(), "{}", described(&out));
    let _ = redeem_as(&stack, Some(&grace.name), "not-a-ticket", &["--yes"]);
    assert!(
        stack.mapping_of(&by_sweep).is_some(),
        "a fresh mapping expired"
    );
    backdate(&stack, &by_sweep, max_age + 1000);
    let _ = redeem_as(&stack, Some(&grace.name), "not-a-ticket", &["--yes"]);
    assert!(
        stack.mapping_of(&by_sweep).is_none(),
        "the socket's sweep left {by_sweep}"
    );
    assert!(
        expired(&by_sweep),
        "no audit line for the expiry of {by_sweep}"
    );
    for name in [&by_cli, &by_sweep] {
        assert_heard(&stack, "clearConnection", name);
        let (status, refusal) = browse(&stack, name, "1");
        assert!((400..500).contains(&status), "{status} {refusal}");
    }
}

/// Rewrites a mapping's `created` (atomically, as the registry writes) to `age_ms` ago.
fn backdate(stack: &Stack, ucloud: &str, age_ms: u64) {
    let mut m = stack
        .mapping_of(ucloud)
        .unwrap_or_else(|| panic!("{ucloud} is not mapped"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    m["created"] = json!(now - age_ms);
    let dir = stack.state_dir().join("mappings");
    let tmp = dir.join(format!(".test-{}", hex(ucloud)));
    std::fs::write(&tmp, m.to_string()).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, dir.join(hex(ucloud))).unwrap();
}

/// Two people race with one ticket, and two more with their own tickets at once:
/// one ticket maps once, and the store holds exactly the winners, all valid.
#[test]
fn concurrent_redemptions_never_corrupt_the_store() {
    let stack = Stack::load();
    let shared = unique_account("HeidiRace#");
    let (first, second) = (
        ScratchAccount::new(&stack, "ctest-", &shared),
        ScratchAccount::new(&stack, "ctest-", &shared),
    );
    let own: Vec<ScratchAccount> = (0..2)
        .map(|i| ScratchAccount::new(&stack, "ctest-", &unique_account(&format!("IvanRace{i}#"))))
        .collect();
    let ticket = mint(&stack, &shared);
    let own_tickets: Vec<String> = own.iter().map(|p| mint(&stack, &p.ucloud)).collect();
    let bin = connect_bin(&stack);
    let spawn = |user: &str, ticket: &str| {
        let mut child = Command::new("runuser")
            .current_dir("/")
            .args(["-u", user, "--", &bin, "--yes"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{ticket}\n").as_bytes()).unwrap();
        child
    };
    let children = vec![
        spawn(&first.name, &ticket),
        spawn(&second.name, &ticket),
        spawn(&own[0].name, &own_tickets[0]),
        spawn(&own[1].name, &own_tickets[1]),
    ];
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let shared_wins = outs[..2].iter().filter(|o| o.status.success()).count();
    assert_eq!(
        shared_wins,
        1,
        "{} / {}",
        described(&outs[0]),
        described(&outs[1])
    );
    assert!(
        outs[2].status.success() && outs[3].status.success(),
        "{} / {}",
        described(&outs[2]),
        described(&outs[3])
    );
    let winner = if outs[0].status.success() {
        &first.name
    } else {
        &second.name
    };
    assert_eq!(stack.mapping_of(&shared).unwrap()["local"], winner.as_str());
    for (p, _) in own.iter().zip(&own_tickets) {
        assert_eq!(
            stack.mapping_of(&p.ucloud).unwrap()["local"],
            p.name.as_str()
        );
    }
    let list = stack.registry(&["list"]);
    assert!(
        list.status.success() && list.stderr.is_empty(),
        "the store has bad files: {}",
        described(&list)
    );
    let leftovers: Vec<String> = std::fs::read_dir(stack.state_dir().join("mappings"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
