//! The simulator on its own: a fresh state dir, keys and certificates made with
//! openssl, `ucloud-sim serve` on a free port, driven through `ucloud-sim call` (so
//! the client side is tested too). Independent of the local stack.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SIM: &str = env!("CARGO_BIN_EXE_ucloud-sim");

struct Fixture {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("ucloud-sim-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p("tls.key"),
            "-out",
            &p("tls.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("tls.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &p("tls.pem"),
            "-extfile",
            &p("ext"),
        ]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &p("signing.pem"),
        ]);
        let mut f = Fixture {
            dir,
            port: free_port(),
            child: None,
        };
        f.init();
        f.start();
        f
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn init(&self) -> String {
        let out = Command::new(SIM)
            .args(["init", "--state", &self.path("state"), "--provider", "hpc"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn start(&mut self) {
        let child = Command::new(SIM)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--cert",
                &self.path("tls.pem"),
                "--key",
                &self.path("tls.key"),
            ])
            .args([
                "--signing-key",
                &self.path("signing.pem"),
                "--state",
                &self.path("state"),
            ])
            .args(["--log", &self.path("calls.log")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the simulator did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// `ucloud-sim call` against the simulator itself, with an explicit token.
    fn call(&self, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut cmd = Command::new(SIM);
        cmd.args([
            "call",
            "--url",
            &self.url(),
            "--ca",
            &self.path("ca.pem"),
            "--token",
            token,
            method,
            path,
        ]);
        if let Some(body) = body {
            cmd.arg(body);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "call failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (status, body) = text.split_once('\n').unwrap();
        let body = body.trim();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap()
        };
        (status.parse().unwrap(), value)
    }

    fn access_token(&self) -> String {
        let refresh = self.init();
        let (status, body) = self.call(
            "none",
            "POST",
            "/auth/providers/refresh",
            Some(&json!({"items": [{"refreshToken": refresh}]}).to_string()),
        );
        assert_eq!(status, 200, "{body}");
        body["responses"][0]["accessToken"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn log(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.path("calls.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn refresh_gives_a_provider_token_that_opens_the_api() {
    let f = Fixture::new("refresh");
    let token = f.access_token();
    let c = claims(&token);
    assert_eq!(
        (c["sub"].as_str(), c["role"].as_str(), c["iss"].as_str()),
        (Some("#P_hpc"), Some("PROVIDER"), Some("cloud.sdu.dk"))
    );
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 600);

    let update = json!({"items": [{"id": "4711", "update": {"state": "RUNNING"}}]}).to_string();
    let (status, body) = f.call(&token, "POST", "/api/jobs/control/update", Some(&update));
    assert_eq!((status, body), (200, json!({"responses": [{}]})));

    let (status, body) = f.call(
        "x",
        "POST",
        "/auth/providers/refresh",
        Some(r#"{"items":[{"refreshToken":"wrong"}]}"#),
    );
    assert_eq!(status, 401);
    assert_eq!(body["errorCode"], "INVALID_REFRESH_TOKEN");
}

#[test]
fn api_calls_without_a_valid_token_are_refused_and_logged() {
    let f = Fixture::new("forged");
    let good = f.access_token();
    // A UCloud bearer token is signed by the same key but is no provider token.
    let out = Command::new(SIM)
        .args([
            "token",
            "--signing-key",
            &f.path("signing.pem"),
            "--state",
            &f.path("state"),
        ])
        .output()
        .unwrap();
    let ucloud = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // The provider token, re-signed by someone else's key.
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &f.path("other.pem"),
    ]);
    let out = Command::new(SIM)
        .args([
            "token",
            "--signing-key",
            &f.path("other.pem"),
            "--state",
            &f.path("state"),
            "--subject",
            "#P_hpc",
            "--role",
            "PROVIDER",
        ])
        .output()
        .unwrap();
    let forged = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut tampered = good.clone();
    tampered.push('A');
    let body = r#"{"items":[{"providerGeneratedId":"x"}]}"#;
    let before = f.log().len();
    for token in [
        ucloud.as_str(),
        forged.as_str(),
        tampered.as_str(),
        "garbage",
    ] {
        let (status, answer) = f.call(
            token,
            "POST",
            "/api/files/collections/control/register",
            Some(body),
        );
        assert_eq!(status, 401, "{token}: {answer}");
        assert_eq!(answer["errorCode"], "UNAUTHORIZED");
    }
    let log = f.log();
    assert_eq!(log.len(), before + 4, "one line per call");
    for (line, token) in log[before..].iter().zip([&ucloud, &forged, &tampered]) {
        assert_eq!(line["status"], 401);
        assert_eq!(line["path"], "/api/files/collections/control/register");
        assert_eq!(line["headers"]["authorization"], format!("Bearer {token}"));
        assert_eq!(line["body"], serde_json::from_str::<Value>(body).unwrap());
    }
    // Nothing was registered by the refused calls: the first real one gets the first id.
    let (status, answer) = f.call(
        &good,
        "POST",
        "/api/files/collections/control/register",
        Some(body),
    );
    assert_eq!(
        (status, answer),
        (200, json!({"responses": [{"id": "100"}]}))
    );
}

#[test]
fn drive_ids_and_jobs_survive_a_restart() {
    let mut f = Fixture::new("restart");
    let token = f.access_token();
    let register = |pg: &str| {
        json!({"items": [{"providerGeneratedId": pg, "specification": {"title": "Home"}, "createdBy": "A#1"}]}).to_string()
    };
    let (_, a) = f.call(
        &token,
        "POST",
        "/api/files/collections/control/register",
        Some(&register("home-a")),
    );
    let (_, b) = f.call(
        &token,
        "POST",
        "/api/files/collections/control/register",
        Some(&register("home-b")),
    );
    assert_ne!(a, b);
    let job = json!({"id": "900", "owner": {"createdBy": "A#1", "project": null}, "specification": {"name": "j"}, "status": {"state": "IN_QUEUE"}, "updates": []});
    let (status, _) = f.call("unused", "POST", "/sim/jobs", Some(&job.to_string()));
    assert_eq!(status, 200);
    let update = json!({"items": [{"id": "900", "update": {"state": "RUNNING", "status": "go"}}]})
        .to_string();
    f.call(&token, "POST", "/api/jobs/control/update", Some(&update));

    f.stop();
    f.start();
    let (_, a2) = f.call(
        &token,
        "POST",
        "/api/files/collections/control/register",
        Some(&register("home-a")),
    );
    assert_eq!(
        a, a2,
        "same providerGeneratedId, same drive id after a restart"
    );
    let (status, got) = f.call(&token, "GET", "/api/jobs/control/retrieve?id=900", None);
    assert_eq!(status, 200);
    assert_eq!(got["owner"]["createdBy"], "A#1");
    assert_eq!(got["status"]["state"], "RUNNING");
    assert_eq!(got["updates"][0]["status"], "go");
    let (status, _) = f.call(&token, "GET", "/api/jobs/control/retrieve?id=901", None);
    assert_eq!(status, 404);
    let (status, _) = f.call(&token, "GET", "/api/nothing/here", None);
    assert_eq!(status, 404);
    let (status, _) = f.call(&token, "GET", "/nothing", None);
    assert_eq!(status, 404);
}

#[test]
fn bearer_tokens_are_cached_like_uclouds() {
    let f = Fixture::new("token");
    let token = |extra: &[&str]| -> String {
        let out = Command::new(SIM)
            .args([
                "token",
                "--signing-key",
                &f.path("signing.pem"),
                "--state",
                &f.path("state"),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let first = token(&[]);
    assert_eq!(first, token(&[]), "reused while more than 3 minutes remain");
    let c = claims(&first);
    assert_eq!(c["sub"], "_UCloud");
    assert_eq!(c["role"], "SERVICE");
    assert_eq!(c["principalType"], "service");
    assert_eq!(c["aud"], json!(["all:write"]));
    // Two tokens minted in the same second are identical: wait for a new iat.
    std::thread::sleep(Duration::from_millis(1100));
    let fresh = token(&["--fresh"]);
    assert_ne!(first, fresh);
    assert_eq!(fresh, token(&[]), "--fresh replaces the cached token");
    let user = token(&["--user", "A#1", "--user-claim", "uname"]);
    assert_eq!(claims(&user)["uname"], "A#1");
    let old = claims(&token(&["--lifetime", "60", "--iat-offset", "-3600"]));
    assert_eq!(
        old["exp"].as_u64().unwrap() - old["iat"].as_u64().unwrap(),
        60
    );
    assert_eq!(fresh, token(&[]), "hostile tokens are never cached");
    let bad = Command::new(SIM)
        .args(["token", "--state", &f.path("state")])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

#[test]
fn call_sends_what_ucloud_sends_and_remembers_jobs() {
    let f = Fixture::new("call");
    let token = f.access_token();
    // `call` aimed at the simulator itself: it logs exactly what arrived.
    let job = json!({"items": [{"id": "321", "specification": {"name": "x"}}]}).to_string();
    let out: Output = Command::new(SIM)
        .args(["call", "--url", &f.url(), "--ca", &f.path("ca.pem")])
        .args([
            "--signing-key",
            &f.path("signing.pem"),
            "--state",
            &f.path("state"),
        ])
        .args([
            "--user",
            "DonnaJensen#4512",
            "POST",
            "/ucloud/hpc/jobs",
            &job,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("404\n"));
    let line = f.log().pop().unwrap();
    assert_eq!(
        line["headers"]["ucloud-username"],
        "RG9ubmFKZW5zZW4jNDUxMg=="
    );
    assert_eq!(line["headers"]["accept-encoding"], "gzip");
    let bearer = line["headers"]["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    assert_eq!(claims(&bearer)["sub"], "_UCloud");
    let (status, got) = f.call(&token, "GET", "/api/jobs/control/retrieve?id=321", None);
    assert_eq!(status, 200);
    assert_eq!(got["owner"]["createdBy"], "DonnaJensen#4512");

    // No HTTP answer at all (nothing listens): exit 1 and a message.
    let out = Command::new(SIM)
        .args([
            "call",
            "--url",
            &format!("https://127.0.0.1:{}", free_port()),
            "--ca",
            &f.path("ca.pem"),
            "--token",
            "t",
            "GET",
            "/",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
    // A CA that did not sign the simulator's certificate: a TLS error, not an answer.
    let out = Command::new(SIM)
        .args([
            "call",
            "--url",
            &f.url(),
            "--ca",
            &f.path("tls.pem"),
            "--token",
            "t",
            "GET",
            "/",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn log_lines_are_whole_under_concurrency() {
    let f = Fixture::new("concurrent");
    let token = f.access_token();
    let before = f.log().len();
    std::thread::scope(|s| {
        for i in 0..8 {
            let f = &f;
            let token = &token;
            s.spawn(move || {
                let update = json!({"items": [{"id": format!("c{i}"), "update": {"status": "x".repeat(5000)}}]}).to_string();
                assert_eq!(f.call(token, "POST", "/api/jobs/control/update", Some(&update)).0, 200);
            });
        }
    });
    let log = f.log();
    assert_eq!(log.len(), before + 8);
    assert!(log[before..].iter().all(|l| l["status"] == 200
        && l["body"]["items"][0]["update"]["status"]
            .as_str()
            .unwrap()
            .len()
            == 5000));
}
