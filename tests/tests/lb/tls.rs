//! TLS as clients see it: the stack's balancer serves the chain over TLS 1.3 and
//! 1.2, sessions resume, and ECDSA and RSA certificates each go to the clients that
//! take them.

use super::*;

#[test]
fn the_stack_balancer_serves_the_chain_over_tls_1_3_and_1_2() {
    let stack = Stack::load();
    let url = stack.get("UCLOUD_IM_LB_URL");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    for version in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
        let (code, body) = curl(&stack, &format!("{url}{HEALTH}"), version);
        assert_eq!(code, 200, "{version:?}: {body}");
        assert!(body.contains("ok"), "{body}");
    }
    // ALPN and the negotiated versions, as openssl reports them.
    let host = url.trim_start_matches("https://").to_string();
    for (flag, protocol) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let out = s_client(&stack, &host, &[flag, "-alpn", "http/1.1"], "");
        let all = text(&out.stdout);
        assert!(
            all.contains(&format!("Protocol  : {protocol}"))
                || all.contains(&format!("New, {protocol}")),
            "{flag}: {all}"
        );
        assert!(all.contains("ALPN protocol: http/1.1"), "{flag}: {all}");
        assert!(all.contains("Verify return code: 0 (ok)"), "{flag}: {all}");
    }
    // A real call, token-checked and dispatched, with the client address logged by
    // the balancer-facing gateway from the PROXY header.
    manifest_through(&stack, &url);
    // The gateway logs a request after answering it: give it a moment.
    let log = Path::new(&stack.get("UCLOUD_IM_STACK_LOGS")).join("gateway-lb.log");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let logged = text.lines().any(|l| {
            l.contains("integration.retrieveManifest 200") && l.contains("client=127.0.0.1:")
        });
        if logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer-facing gateway logged no client address:\n{}",
            text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sessions_resume_with_tls_1_3_and_1_2() {
    let stack = Stack::load();
    let host = stack
        .get("UCLOUD_IM_LB_URL")
        .trim_start_matches("https://")
        .to_string();
    let dir = scratch("resume");
    for flag in ["-tls1_3", "-tls1_2"] {
        let session = dir.join(format!("session{flag}"));
        let first = s_client(
            &stack,
            &host,
            &[flag, "-sess_out", session.to_str().unwrap()],
            "",
        );
        assert!(
            text(&first.stdout).contains("New, TLS"),
            "{flag}: {}",
            text(&first.stdout)
        );
        assert!(session.exists(), "{flag}: openssl saved no session");
        let second = s_client(
            &stack,
            &host,
            &[flag, "-sess_in", session.to_str().unwrap()],
            "",
        );
        let all = text(&second.stdout);
        assert!(
            all.contains("Reused, TLS"),
            "{flag}: the session was not resumed:\n{all}"
        );
        assert!(all.contains("HTTP/1.1 200"), "{flag}: {all}");
    }
}

#[test]
fn ecdsa_and_rsa_certificates_each_go_to_the_clients_that_take_them() {
    let stack = Stack::load();
    let dir = scratch("rsa");
    let ca_dir = Path::new(&stack.get("UCLOUD_IM_CA"))
        .parent()
        .unwrap()
        .to_path_buf();
    let (key, csr, pem) = (
        dir.join("rsa.key"),
        dir.join("rsa.csr"),
        dir.join("rsa.pem"),
    );
    let ext = dir.join("ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let made = run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]));
    assert!(made.status.success(), "{}", text(&made.stderr));
    let signed = run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in", csr.to_str().unwrap()])
        .args([
            "-CA",
            ca_dir.join("ca.pem").to_str().unwrap(),
            "-CAkey",
            ca_dir.join("ca.key").to_str().unwrap(),
        ])
        .args([
            "-CAcreateserial",
            "-out",
            pem.to_str().unwrap(),
            "-extfile",
            ext.to_str().unwrap(),
        ]));
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    // Readable by the balancer's group only, as the stack's own key.
    let owned =
        run(Command::new("chown").args([&format!("root:{LB_USER}"), key.to_str().unwrap()]));
    assert!(owned.status.success(), "chown: {}", text(&owned.stderr));
    let moded = run(Command::new("chmod").args(["0640", key.to_str().unwrap()]));
    assert!(moded.status.success(), "chmod: {}", text(&moded.stderr));
    let gw = Gateway::start(&stack, &dir, "gw");
    let rsa = format!("certificate = {} {}", pem.display(), key.display());
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(&stack, p, m, &rsa, &[("gw", gw.address(), "")])
    });
    let host = format!("127.0.0.1:{}", lb.port);
    let ecdsa = text(&s_client(&stack, &host, &[], "").stdout);
    assert!(ecdsa.contains("Peer signature type: ECDSA"), "{ecdsa}");
    let rsa = text(
        &s_client(
            &stack,
            &host,
            &["-sigalgs", "rsa_pss_rsae_sha256:RSA+SHA256"],
            "",
        )
        .stdout,
    );
    assert!(rsa.contains("Peer signature type: RSA"), "{rsa}");
    assert!(rsa.contains("HTTP/1.1 200"), "{rsa}");
}
