//! The mapping from a UCloud user to a local account: refused targets, expiry,
//! files that name another user, unmapped users.

use super::*;

/// A mapping file written into the stack's store for one test, made just now.
fn place_mapping(env: &Env, ucloud: &str, local: &str, uid: u32) -> Placed {
    place_mapping_made_at(env, ucloud, local, uid, now_ms())
}

fn place_mapping_made_at(env: &Env, ucloud: &str, local: &str, uid: u32, created: u64) -> Placed {
    let path = env.mappings().join(hex(ucloud));
    std::fs::write(
        &path,
        json!({"ucloud": ucloud, "local": local, "uid": uid, "created": created}).to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Placed(path)
}

#[test]
fn refused_mapping_targets() {
    let _lock = exclusive();
    let env = Env::new();
    let nologin = env.get("UCLOUD_IM_NOLOGIN_USER");
    let service = env.get("UCLOUD_IM_SERVICE_USER");
    let alice = env.stack.local_of(ALICE);
    let cases = [
        ("DtestRoot#1", "root".to_string(), 0, "is root"),
        (
            "DtestDaemon#2",
            "daemon".to_string(),
            id_of("-u", "daemon")[0],
            "below min_uid",
        ),
        (
            "DtestService#3",
            service.clone(),
            id_of("-u", &service)[0],
            "below min_uid",
        ),
        (
            "DtestNologin#4",
            nologin.clone(),
            id_of("-u", &nologin)[0],
            "disabled shell",
        ),
        ("DtestStale#5", alice, 4242, "was mapped with uid 4242"),
        (
            "DtestGone#6",
            "dtest-nosuchuser".to_string(),
            5555,
            "does not exist",
        ),
    ];
    for (ucloud, local, uid, why) in cases {
        let _placed = place_mapping(&env, ucloud, &local, uid);
        env.run(&env.envelope(PROBE, Some(ucloud), json!({})))
            .refused(77, 403, "ACCOUNT_REFUSED", why, true);
    }
}

#[test]
fn an_expired_mapping_no_longer_works() {
    let _lock = exclusive();
    let env = Env::new();
    let expire: u64 = std::fs::read_to_string(env.stack.prefix().join("etc/ucloud-im/site.conf"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.split_once('=')
                .filter(|(k, _)| k.trim() == "mapping_expire_after_ms")
        })
        .map(|(_, v)| v.trim().parse().unwrap())
        .expect("the stack's site.conf sets mapping_expire_after_ms");
    let bob = env.stack.local_of(BOB);
    let uid = id_of("-u", &bob)[0];
    let old = now_ms() - expire - 1000;
    {
        let _placed = place_mapping_made_at(&env, "DtestExpired#8", &bob, uid, old);
        env.run(&env.envelope(PROBE, Some("DtestExpired#8"), json!({})))
            .refused(77, 403, "NOT_MAPPED", "has expired", true);
    }
    let _placed = place_mapping_made_at(&env, "DtestFresh#9", &bob, uid, old + 60_000);
    let probe = env
        .run(&env.envelope(PROBE, Some("DtestFresh#9"), json!({})))
        .probe();
    assert_eq!(status_ids(&probe, "Uid"), vec![uid; 4]);
}

#[test]
fn a_mapping_file_naming_another_user_is_refused() {
    let _lock = exclusive();
    let env = Env::new();
    let path = env.mappings().join(hex("DtestSwap#7"));
    let alice = env.stack.local_of(ALICE);
    let body = json!({"ucloud": ALICE, "local": alice, "uid": id_of("-u", &alice)[0]});
    std::fs::write(&path, body.to_string()).unwrap();
    let _placed = Placed(path);
    env.run(&env.envelope(PROBE, Some("DtestSwap#7"), json!({})))
        .refused(78, 500, "MISCONFIGURED", "does not name UCloud user", true);
}

#[test]
fn unmapped_users_and_missing_users_are_refused() {
    let _lock = shared();
    let env = Env::new();
    env.run(&env.envelope(PROBE, Some("../../etc/passwd"), json!({})))
        .refused(77, 403, "NOT_MAPPED", "has no local account", true);
    env.run(&env.envelope(PROBE, None, json!({}))).refused(
        77,
        400,
        "USER_REQUIRED",
        "needs a UCloud user",
        true,
    );
}
