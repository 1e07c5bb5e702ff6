//! site.conf: strict mode takes the user from the signed claim alone; a broken file
//! is a configuration error.

use super::*;

// --- strict mode --------------------------------------------------------------------

/// site.conf with extra lines for one test, put back on drop.
struct SiteConf {
    path: PathBuf,
    original: Vec<u8>,
}

impl SiteConf {
    fn append(env: &Env, extra: &str) -> SiteConf {
        let path = env.etc().join("site.conf");
        let original = std::fs::read(&path).unwrap();
        let mut text = original.clone();
        text.extend_from_slice(extra.as_bytes());
        let tmp = path.with_extension("conf.dispatch-test");
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        SiteConf { path, original }
    }
}

impl Drop for SiteConf {
    fn drop(&mut self) {
        let tmp = self.path.with_extension("conf.dispatch-test");
        std::fs::write(&tmp, &self.original).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

#[test]
fn strict_mode_takes_the_user_from_the_signed_claim_only() {
    let _lock = exclusive();
    let env = Env::new();
    let _site = SiteConf::append(&env, "\nuser_mode = strict\nuser_claim = ucloudUsername\n");
    let with_alice = env.token_with(&claims_with(&[("ucloudUsername", json!(ALICE))]));

    // No claim: the header alone proves nothing.
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(77, 400, "USER_REQUIRED", "no ucloudUsername claim", true);
    // A header that contradicts the claim.
    env.run(&envelope_with(
        PROBE,
        "bearer",
        &with_alice,
        Some(BOB),
        json!({}),
    ))
    .refused(77, 403, "USER_MISMATCH", "the token is for", true);
    // The claim alone is enough.
    let probe = env
        .run(&envelope_with(
            PROBE,
            "bearer",
            &with_alice,
            None,
            json!({}),
        ))
        .probe();
    assert_eq!(probe["env"]["UCLOUD_USERNAME"], ALICE);
    let alice = env.stack.local_of(ALICE);
    assert_eq!(status_ids(&probe, "Uid"), vec![id_of("-u", &alice)[0]; 4]);
}

#[test]
fn a_broken_site_conf_is_a_configuration_error() {
    let _lock = exclusive();
    let env = Env::new();
    let _site = SiteConf::append(&env, "\nmni_uid = 5\n");
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(78, 500, "MISCONFIGURED", "unknown key", true);
}
