//! Bearer and transfer tokens: hostile ones refused, transfer tokens only on the
//! data channel, each for one user and one call.

use super::*;

#[test]
fn transfer_tokens_only_on_the_data_channel() {
    let _lock = shared();
    let env = Env::new();
    let envelope = envelope_with(PROBE, "transfer", "abc.def.ghi", Some(ALICE), json!({}));
    env.run(&envelope).refused(
        77,
        400,
        "UNSUPPORTED_CREDENTIAL",
        "transfer tokens are accepted only for",
        true,
    );
}

/// The transfer key the dispatcher signs with. The installer (scripts/stack up) makes
/// it; a test never does, or a missing install step would hide behind it.
fn transfer_key(env: &Env) -> Vec<u8> {
    let path = env.stack.prefix().join("var/lib/ucloud-im/transfer.key");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: the installation must make the transfer key",
            path.display()
        )
    })
}

/// The probe installed under another call's name for one test; whatever was there
/// is put back on drop.
struct ProbeAs {
    path: PathBuf,
    saved: Option<PathBuf>,
}

impl ProbeAs {
    fn install(env: &Env, call: &str) -> ProbeAs {
        let path = env.plugins().join(call);
        // Not `with_extension`: that would give files.createDownload and
        // files.download the same saved name.
        let saved = env.plugins().join(format!("{call}-dispatch-test-saved"));
        let saved = match std::fs::rename(&path, &saved) {
            Ok(()) => Some(saved),
            Err(_) => None,
        };
        std::fs::copy(env.plugins().join(PROBE), &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        ProbeAs { path, saved }
    }
}

impl Drop for ProbeAs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(saved) = &self.saved {
            let _ = std::fs::rename(saved, &self.path);
        }
    }
}

#[test]
fn transfer_tokens_are_minted_for_one_user_and_one_call() {
    let _lock = exclusive();
    let env = Env::new();
    let key = transfer_key(&env);
    let _create = ProbeAs::install(&env, "files.createDownload");
    let _download = ProbeAs::install(&env, "files.download");
    let alice = env.stack.local_of(ALICE);
    let alice_uid = id_of("-u", &alice)[0];

    let created = env
        .run(&env.envelope("files.createDownload", Some(ALICE), json!({})))
        .probe();
    let token = created["env"]["UCLOUD_TRANSFER_TOKEN"]
        .as_str()
        .expect("createDownload gets a transfer token")
        .to_string();

    let download = |user: Option<&str>, token: &str| {
        env.run(&envelope_with(
            "files.download",
            "transfer",
            token,
            user,
            json!({}),
        ))
    };
    let probe = download(None, &token).probe();
    assert_eq!(status_ids(&probe, "Uid"), vec![alice_uid; 4]);
    assert_eq!(probe["env"]["UCLOUD_USERNAME"], ALICE);
    // The data-channel plugin sees the token it was called with, nothing newer.
    assert_eq!(probe["env"]["UCLOUD_TRANSFER_TOKEN"], token.as_str());
    download(Some(ALICE), &token).probe();

    download(Some(BOB), &token).refused(77, 403, "USER_MISMATCH", "the token is for", true);
    env.run(&envelope_with(
        "files.upload",
        "transfer",
        &token,
        None,
        json!({}),
    ))
    .refused(77, 401, "BAD_TOKEN", "is not for files.upload", true);
    env.run(&env.envelope("files.download", Some(ALICE), json!({})))
        .refused(
            77,
            400,
            "UNSUPPORTED_CREDENTIAL",
            "takes a transfer token",
            true,
        );

    let t = now();
    let claims = |exp: u64| {
        json!({"typ": "ucloud-im-transfer", "call": "files.download", "ucloud": ALICE,
               "local": alice, "uid": alice_uid, "jti": "x", "iat": t - 10, "exp": exp})
    };
    download(None, &hs256(&key, &claims(t + 60))).probe();
    download(None, &hs256(&[9u8; 32], &claims(t + 60))).refused(
        77,
        401,
        "BAD_TOKEN",
        "signature does not verify",
        true,
    );
    download(None, &hs256(&key, &claims(t - 1))).refused(77, 401, "BAD_TOKEN", "has expired", true);
    let rs = rs256(&env.get("UCLOUD_SIM_PRIVATE_KEY"), &claims(t + 60));
    download(None, &rs).refused(77, 401, "BAD_TOKEN", "does not use HS256", true);

    // The mapping changed after the token was minted: the token names the old account.
    let mapping = env.mappings().join(hex(ALICE));
    let original = std::fs::read(&mapping).unwrap();
    let bob = env.stack.local_of(BOB);
    let remapped = json!({"ucloud": ALICE, "local": bob, "uid": id_of("-u", &bob)[0]});
    std::fs::write(&mapping, remapped.to_string()).unwrap();
    let run = download(None, &token);
    std::fs::write(&mapping, original).unwrap();
    run.refused(77, 403, "ACCOUNT_REFUSED", "was issued for", true);
}

// --- tokens ----------------------------------------------------------------------------

#[test]
fn hostile_tokens_are_refused() {
    let _lock = shared();
    let env = Env::new();
    let t = now();
    let other_key = Scratch::new(&openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        b"",
    ));
    let public_key_file = std::fs::read(env.etc().join("ucloud_key.pub")).unwrap();
    let public_pem = openssl(
        &["pkey", "-pubout"],
        &std::fs::read(env.get("UCLOUD_SIM_PRIVATE_KEY")).unwrap(),
    );
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(good_claims().to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            env.token_with(&claims_with(&[
                ("iat", json!(t - 1000)),
                ("exp", json!(t - 400)),
            ])),
            "expired",
        ),
        (
            "not yet valid",
            env.token_with(&claims_with(&[("nbf", json!(t + 600))])),
            "not valid yet",
        ),
        (
            "issued in the future",
            env.token_with(&claims_with(&[
                ("iat", json!(t + 600)),
                ("exp", json!(t + 1000)),
            ])),
            "future",
        ),
        (
            "wrong issuer",
            env.token_with(&claims_with(&[("iss", json!("evil.example"))])),
            "issuer",
        ),
        (
            "wrong subject",
            env.token_with(&claims_with(&[("sub", json!("#P_hpc"))])),
            "subject",
        ),
        (
            "provider role",
            env.token_with(&claims_with(&[("role", json!("PROVIDER"))])),
            "role",
        ),
        (
            "too long",
            env.token_with(&claims_with(&[("exp", json!(t + 86_400))])),
            "lifetime",
        ),
        (
            "wrong key",
            rs256(other_key.0.to_str().unwrap(), &good_claims()),
            "signature",
        ),
        ("alg none", unsigned, "not a JWT"),
        (
            "HS256 keyed with the key file",
            hs256(&public_key_file, &good_claims()),
            "not RS256",
        ),
        (
            "HS256 keyed with the PEM",
            hs256(&public_pem, &good_claims()),
            "not RS256",
        ),
        ("garbage", "garbage".into(), "not a JWT"),
    ];
    for (name, token, why) in cases {
        let envelope = envelope_with(PROBE, "bearer", &token, Some(ALICE), json!({}));
        let run = env.run(&envelope);
        assert_eq!(
            run.output.status.code(),
            Some(77),
            "{name}: {}",
            run.stderr()
        );
        run.refused(77, 401, "BAD_TOKEN", why, true);
    }
}
