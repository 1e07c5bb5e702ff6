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
    /// More `serve` options (`--provider-url`).
    serve_args: Vec<String>,
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
            serve_args: Vec::new(),
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
            .args(&self.serve_args)
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

    fn register_drive(&self, token: &str, pg: &str) -> (u16, Value) {
        let body = json!({"items": [{"providerGeneratedId": pg, "createdBy": "A#1",
            "spec": {"title": "Home", "product": {"id": "home", "category": "home", "provider": "hpc"}}}]});
        self.call(
            token,
            "POST",
            "/api/files/collections/control/register",
            Some(&body.to_string()),
        )
    }

    /// Compute products c1, c2 (category cpu, core-minutes) and the storage product
    /// home.
    fn register_products(&self, token: &str) {
        let body = json!({"items": [product("c1", "cpu", "COMPUTE"), product("c2", "cpu", "COMPUTE"),
                                    product("home", "home", "STORAGE")]});
        let (status, answer) =
            self.call(token, "POST", "/api/products/v2", Some(&body.to_string()));
        assert_eq!((status, answer), (200, json!({})));
    }

    /// `POST /sim/jobs`: a job of A#1 for `product` (category cpu).
    fn sim_job(&self, id: &str, product: &str) -> (u16, Value) {
        let job = json!({"id": id, "owner": {"createdBy": "A#1", "project": null},
            "specification": {"name": "j", "product": {"id": product, "category": "cpu", "provider": "hpc"}},
            "status": {"state": "IN_QUEUE"}, "updates": []});
        self.call("unused", "POST", "/sim/jobs", Some(&job.to_string()))
    }

    /// The owner's usage in a category, from `ucloud-sim usage` (null: none).
    fn usage(&self, owner: &str, category: &str) -> Value {
        let out = Command::new(SIM)
            .args(["usage", "--state", &self.path("state")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let view: Value = serde_json::from_slice(&out.stdout).unwrap();
        view["wallets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["owner"] == owner && w["category"] == category)
            .map(|w| w["usage"].clone())
            .unwrap_or(Value::Null)
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

fn product(name: &str, category: &str, product_type: &str) -> Value {
    json!({"name": name, "productType": product_type, "price": 1, "cpu": 2, "memoryInGigs": 4,
           "category": {"name": category, "provider": "hpc", "productType": product_type,
                        "accountingUnit": {"name": "Core", "namePlural": "Cores", "floatingPoint": false, "displayFrequencySuffix": true},
                        "accountingFrequency": "PERIODIC_MINUTE", "freeToUse": false}})
}

/// One reportUsage body: a total (`isDeltaCharge: false`) for a user.
fn report(user: &str, category: &str, usage: i64, scope: Option<&str>) -> String {
    json!({"items": [{"isDeltaCharge": false, "owner": {"type": "user", "username": user},
        "categoryIdV2": {"name": category, "provider": "hpc"}, "usage": usage,
        "description": {"scope": scope}}]})
    .to_string()
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

    // The token opens the API: an update for a job UCloud does not know is the
    // core's 404, not a 401.
    let update = json!({"items": [{"id": "4711", "update": {"state": "RUNNING"}}]}).to_string();
    let (status, body) = f.call(&token, "POST", "/api/jobs/control/update", Some(&update));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errorCode"], "NOT_FOUND");

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
    let body = r#"{"items":[{"providerGeneratedId":"x","spec":{"title":"Home","product":{"id":"home","category":"home","provider":"hpc"}}}]}"#;
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
fn drives_jobs_products_and_usage_survive_a_restart() {
    let mut f = Fixture::new("restart");
    let token = f.access_token();
    let (_, a) = f.register_drive(&token, "home-a");
    let (_, b) = f.register_drive(&token, "home-b");
    assert_ne!(a, b);
    f.register_products(&token);
    assert_eq!(f.sim_job("900", "c1").0, 200);
    let update = json!({"items": [{"id": "900", "update": {"state": "RUNNING", "status": "go"}}]})
        .to_string();
    let (status, answer) = f.call(&token, "POST", "/api/jobs/control/update", Some(&update));
    assert_eq!((status, answer), (200, json!({})));
    let report = report("A#1", "cpu", 60, Some("job-900"));
    assert_eq!(
        f.call(
            &token,
            "POST",
            "/api/accounting/v2/reportUsage",
            Some(&report)
        )
        .0,
        200
    );

    f.stop();
    f.start();
    // The id stays reserved: registering it again is the core's 409, and the
    // drive is found by its provider id instead.
    let (status, answer) = f.register_drive(&token, "home-a");
    assert_eq!(status, 409, "{answer}");
    let (status, page) = f.call(
        &token,
        "GET",
        "/api/files/collections/control/browse?filterProviderIds=home-a",
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["id"], a["responses"][0]["id"]);
    let (status, got) = f.call(&token, "GET", "/api/jobs/control/retrieve?id=900", None);
    assert_eq!(status, 200);
    assert_eq!(got["owner"]["createdBy"], "A#1");
    assert_eq!(got["status"]["state"], "RUNNING");
    assert_eq!(got["updates"][0]["status"], "go");
    let (_, products) = f.call("none", "GET", "/api/products/v2/browse", None);
    assert_eq!(products["items"].as_array().unwrap().len(), 3);
    assert_eq!(f.usage("A#1", "cpu"), json!(60));
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
    // `call` aimed at the simulator itself: it logs exactly what arrived. The id
    // is no UCloud job id, so this is no job creation UCloud would make: refused
    // here, unless --unchecked sends it as it is (and remembers nothing).
    let job = json!({"items": [{"id": "job-321", "specification": {"name": "x"}}]}).to_string();
    let send = |extra: &[&str]| -> Output {
        Command::new(SIM)
            .args(["call", "--url", &f.url(), "--ca", &f.path("ca.pem")])
            .args([
                "--signing-key",
                &f.path("signing.pem"),
                "--state",
                &f.path("state"),
            ])
            .args(extra)
            .args([
                "--user",
                "DonnaJensen#4512",
                "POST",
                "/ucloud/hpc/jobs",
                &job,
            ])
            .output()
            .unwrap()
    };
    let before = f.log().len();
    let out = send(&[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("400\n"), "{text}");
    assert!(text.contains("not a positive decimal number"), "{text}");
    assert_eq!(f.log().len(), before, "nothing was sent");
    let out = send(&["--unchecked"]);
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
    assert_eq!(line["path"], "/ucloud/hpc/jobs");
    let (status, _) = f.call(&token, "GET", "/api/jobs/control/retrieve?id=job-321", None);
    assert_eq!(status, 404);

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
    f.register_products(&token);
    for i in 0..8 {
        assert_eq!(f.sim_job(&format!("{}", 1000 + i), "c1").0, 200);
    }
    let before = f.log().len();
    std::thread::scope(|s| {
        for i in 0..8 {
            let f = &f;
            let token = &token;
            s.spawn(move || {
                let update = json!({"items": [{"id": format!("{}", 1000 + i), "update": {"status": "x".repeat(5000)}}]}).to_string();
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

/// A provider that supports one compute product (c1 of cpu) and accepts every
/// job: plain HTTP, one request per connection, each request line recorded.
struct FakeProvider {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeProvider {
    fn start() -> FakeProvider {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                record.lock().unwrap().push(line.trim().to_string());
                let answer = if line.contains("/jobs/retrieveProducts") {
                    r#"{"responses":[{"product":{"id":"c1","category":"cpu","provider":"hpc"}}]}"#
                } else {
                    r#"{"responses":[{}]}"#
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        FakeProvider { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// `ucloud-sim call` creating jobs at `url`, as `user`.
fn create_job(f: &Fixture, url: &str, body: &str) -> (u16, Value) {
    let out = Command::new(SIM)
        .args(["call", "--url", url])
        .args([
            "--signing-key",
            &f.path("signing.pem"),
            "--state",
            &f.path("state"),
        ])
        .args(["--user", "B#2", "POST", "/ucloud/hpc/jobs", body])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, body) = text.split_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body.trim()).unwrap(),
    )
}

fn job(id: &str, product: &str) -> String {
    json!({"items": [{"id": id, "owner": {"createdBy": "B#2", "project": null},
        "specification": {"name": "j", "product": {"id": product, "category": "cpu", "provider": "hpc"}}}]})
    .to_string()
}

#[test]
fn a_job_is_created_only_for_a_registered_supported_product() {
    let provider = FakeProvider::start();
    let mut f = Fixture::new("jobs");
    let token = f.access_token();
    // Nothing registered: refused here, never sent.
    let (status, answer) = create_job(&f, &provider.url, &job("5", "c1"));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["why"]
        .as_str()
        .unwrap()
        .starts_with("bad machine type requested"));
    assert!(!provider.seen().iter().any(|l| l.starts_with("POST")));
    f.register_products(&token);
    // c2 is in the catalogue, but the provider does not list it; home is storage.
    for product in ["c2", "home", "c9"] {
        let (status, answer) = create_job(&f, &provider.url, &job("6", product));
        assert_eq!(status, 400, "{product}: {answer}");
    }
    assert!(!provider.seen().iter().any(|l| l.starts_with("POST")));
    let (status, answer) = create_job(&f, &provider.url, &job("7", "c1"));
    assert_eq!((status, answer), (200, json!({"responses": [{}]})));
    let seen = provider.seen();
    assert!(
        seen.contains(&"GET /ucloud/hpc/jobs/retrieveProducts HTTP/1.1".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"POST /ucloud/hpc/jobs HTTP/1.1".to_string()),
        "{seen:?}"
    );
    let (status, got) = f.call(&token, "GET", "/api/jobs/control/retrieve?id=7", None);
    assert_eq!((status, &got["owner"]["createdBy"]), (200, &json!("B#2")));
    for id in ["5", "6"] {
        let (status, _) = f.call(
            &token,
            "GET",
            &format!("/api/jobs/control/retrieve?id={id}"),
            None,
        );
        assert_eq!(status, 404, "a refused job is unknown");
    }

    // /sim/jobs: the catalogue decides; with --provider-url, the provider's support too.
    assert_eq!(f.sim_job("20", "c9").0, 400);
    assert_eq!(f.sim_job("21", "c2").0, 200);
    for bad in [
        json!({"id": "x22", "specification": {"product": {"id": "c1", "category": "cpu", "provider": "hpc"}}}),
        json!({"id": "022", "specification": {"product": {"id": "c1", "category": "cpu", "provider": "hpc"}}}),
        json!({"id": 22}),
        json!({"id": "22", "specification": {"replicas": "1"}}),
        json!([]),
    ] {
        let (status, answer) = f.call("unused", "POST", "/sim/jobs", Some(&bad.to_string()));
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    f.stop();
    f.serve_args = vec!["--provider-url".into(), provider.url.clone()];
    f.start();
    assert_eq!(
        f.sim_job("23", "c2").0,
        400,
        "not supported by the provider"
    );
    assert_eq!(f.sim_job("24", "c1").0, 200);
    for (id, want) in [
        ("20", 404),
        ("22", 404),
        ("23", 404),
        ("21", 200),
        ("24", 200),
    ] {
        let (status, _) = f.call(
            &token,
            "GET",
            &format!("/api/jobs/control/retrieve?id={id}"),
            None,
        );
        assert_eq!(status, want, "job {id}");
    }
}

#[test]
fn products_are_registered_by_their_provider_only() {
    let f = Fixture::new("products");
    let token = f.access_token();
    let browse = || {
        f.call(
            "none",
            "GET",
            "/api/products/v2/browse?itemsPerPage=10",
            None,
        )
        .1
    };
    assert_eq!(browse()["items"], json!([]));
    let mut other = product("x", "xcat", "COMPUTE");
    other["category"]["provider"] = json!("elsewhere");
    let mut fractional = product("y", "ycat", "COMPUTE");
    fractional["price"] = json!(1.5);
    let body = |items: Value| json!({"items": items}).to_string();
    for (token, body, want) in [
        (
            "garbage",
            body(json!([product("c1", "cpu", "COMPUTE")])),
            401,
        ),
        (
            token.as_str(),
            body(json!([product("c1", "cpu", "COMPUTE"), other])),
            403,
        ),
        (token.as_str(), body(json!([])), 400),
        (token.as_str(), "{}".to_string(), 400),
        (token.as_str(), body(json!([fractional])), 400),
        (
            token.as_str(),
            r#"{"items":[{"name":["c1"]}]}"#.to_string(),
            400,
        ),
        (token.as_str(), "not json".to_string(), 400),
    ] {
        let (status, answer) = f.call(token, "POST", "/api/products/v2", Some(&body));
        assert_eq!(status, want, "{body}: {answer}");
        assert_eq!(browse()["items"], json!([]), "{body}");
    }
    f.register_products(&token);
    let listed = browse();
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c1", "c2", "home"]);
    assert_eq!(listed["items"][0]["type"], "compute");
    assert_eq!(
        listed["items"][0]["category"]["accountingUnit"]["name"],
        "Core"
    );
    // The unit, frequency and free-to-use of a category are kept: 200, and dropped.
    let mut changed = product("c1", "cpu", "COMPUTE");
    changed["category"]["accountingUnit"]["name"] = json!("Hour");
    changed["category"]["accountingFrequency"] = json!("PERIODIC_HOUR");
    changed["category"]["freeToUse"] = json!(true);
    changed["description"] = json!("new");
    let (status, _) = f.call(
        &token,
        "POST",
        "/api/products/v2",
        Some(&body(json!([changed]))),
    );
    assert_eq!(status, 200);
    let (_, page) = f.call("none", "GET", "/api/products/v2/browse?filterName=c1", None);
    let c1 = &page["items"][0];
    assert_eq!(c1["description"], "new");
    assert_eq!(c1["category"]["accountingUnit"]["name"], "Core");
    assert_eq!(c1["category"]["accountingFrequency"], "PERIODIC_MINUTE");
    assert!(c1["category"].get("freeToUse").is_none());
    assert_eq!(
        f.call(
            "none",
            "GET",
            "/api/products/v2/browse?itemsPerPage=1.5",
            None
        )
        .0,
        400
    );
    // The call log keeps its documented fields for the new endpoints too.
    let log = f.log();
    let line = log
        .iter()
        .find(|l| l["path"] == "/api/products/v2/browse" && l["query"] == "filterName=c1")
        .expect("the browse is logged");
    assert_eq!(
        (&line["method"], &line["status"]),
        (&json!("GET"), &json!(200))
    );
    assert_eq!(line["headers"]["accept-encoding"], "gzip");
    assert_eq!(line["body"], Value::Null);
    let refused = log.last().unwrap();
    assert_eq!(refused["query"], "itemsPerPage=1.5");
    assert_eq!(refused["status"], 400);
    assert!(refused["error"].as_str().unwrap().contains("itemsPerPage"));
    let created = log
        .iter()
        .rfind(|l| l["path"] == "/api/products/v2" && l["status"] == 200)
        .unwrap();
    assert_eq!(created["body"]["items"][0]["description"], "new");
    assert!(created["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer "));
}

#[test]
fn usage_is_charged_by_the_cores_rule() {
    let f = Fixture::new("usage");
    let token = f.access_token();
    f.register_products(&token);
    f.sim_job("31", "c1");
    let post = |body: &str| f.call(&token, "POST", "/api/accounting/v2/reportUsage", Some(body));
    let (status, answer) = post(&report("A#1", "cpu", 40, Some("job-31")));
    assert_eq!((status, answer), (200, json!({"responses": [true]})));
    // Sent again (a retry, a restarted reporter): nothing more is charged.
    post(&report("A#1", "cpu", 40, Some("job-31")));
    post(&report("A#1", "cpu", 55, Some("job-31")));
    assert_eq!(f.usage("A#1", "cpu"), json!(55));
    let (status, view) = f.call("none", "GET", "/sim/usage", None);
    assert_eq!(status, 200);
    assert_eq!(
        view["scopes"],
        json!([{"owner": "A#1", "scope": "job-31", "usage": 55}])
    );
    let before = view;
    let mut other = report("A#1", "cpu", 1, None);
    other = other.replace(r#""provider":"hpc""#, r#""provider":"elsewhere""#);
    for (body, want) in [
        (report("A#1", "nope", 1, None), 403),
        (report("Nobody#9", "cpu", 1, None), 403),
        (other, 403),
        (report("A#1", "cpu", -1, Some("job-31")), 403),
        (
            report("A#1", "cpu", 1, None).replace(r#""usage":1"#, r#""usage":1.5"#),
            400,
        ),
        (
            report("A#1", "cpu", 1, None).replace(r#""usage":1"#, r#""usage":"1""#),
            400,
        ),
        (r#"{"items":[{"owner":"A#1"}]}"#.to_string(), 400),
        ("{".to_string(), 400),
    ] {
        let (status, answer) = post(&body);
        assert_eq!(status, want, "{body}: {answer}");
        assert_eq!(
            f.call("none", "GET", "/sim/usage", None).1,
            before,
            "{body}"
        );
    }
    // A locked wallet answers false: no error, the usage is recorded.
    let quota = r#"{"owner":"A#1","category":"cpu","quota":60}"#;
    assert_eq!(f.call("none", "POST", "/sim/quota", Some(quota)).0, 200);
    let (status, answer) = post(&report("A#1", "cpu", 61, Some("job-31")));
    assert_eq!((status, answer), (200, json!({"responses": [false]})));
    assert_eq!(f.usage("A#1", "cpu"), json!(61));
}

#[test]
fn connections_and_drives_refuse_what_go_cannot_decode() {
    let f = Fixture::new("hostile");
    let token = f.access_token();
    let approve = "/api/providers/integration/control/approveConnection";
    let (status, answer) = f.call(&token, "POST", approve, Some(r#"{"username":"A#1"}"#));
    assert_eq!((status, answer), (200, json!({})));
    let connections = || std::fs::read_to_string(f.dir.join("state/connections.json")).unwrap();
    let before = connections();
    for body in [r#"{"username":7}"#, r#"{"username":[],"x":1}"#, "[1]", ""] {
        let (status, _) = f.call(&token, "POST", approve, Some(body));
        assert_eq!(status, 400, "{body}");
        assert_eq!(connections(), before);
    }
    let register = "/api/files/collections/control/register";
    let drives = || std::fs::read_to_string(f.dir.join("state/drives.json")).unwrap_or_default();
    let before = drives();
    for (body, want) in [
        (
            r#"{"items":[{"specification":{"title":"Home","product":{"id":"home","category":"home","provider":"hpc"}}}]}"#,
            403,
        ),
        (r#"{"items":[{"spec":{"title":1}}]}"#, 400),
        (r#"{"items":[{"providerGeneratedId":["a"]}]}"#, 400),
        (r#"{"items":"x"}"#, 400),
    ] {
        let (status, answer) = f.call(&token, "POST", register, Some(body));
        assert_eq!(status, want, "{body}: {answer}");
        assert_eq!(drives(), before, "{body}");
    }
}

/// `ucloud-sim call` to the simulator at `url` with the provider's `token`: what a
/// provider's call back to UCloud is.
fn call_back(url: &str, ca: &str, token: &str, method: &str, path: &str, body: &str) -> Value {
    let out = Command::new(SIM)
        .args([
            "call", "--url", url, "--ca", ca, "--token", token, method, path, body,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, body) = text.split_once('\n').unwrap();
    assert_eq!(status, "200", "{method} {path}: {body}");
    serde_json::from_str(body.trim()).unwrap()
}

/// A provider that makes shares as UCloud's own module does: while it answers
/// `POST /ucloud/hpc/shares`, it registers the share's drive (`s-<id>`, product
/// `share`, created by `_ucloud`) and reports it with `shares/control/update`. A
/// share of a folder named `refused` it refuses. Every other request it answers
/// `{"responses":[{}]}`. It records each request line with its `ucloud-username`.
fn share_provider(sim: String, ca: String, token: String) -> FakeProvider {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let (mut length, mut user) = (0, String::new());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                    if name.eq_ignore_ascii_case("ucloud-username") {
                        user = value.trim().to_string();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            record
                .lock()
                .unwrap()
                .push(format!("{} {user}", line.trim()));
            let (status, answer) = if line.starts_with("POST /ucloud/hpc/shares ") {
                let request: Value = serde_json::from_slice(&body).unwrap();
                let share = &request["items"][0];
                let id = share["id"].as_str().unwrap();
                if share["specification"]["sourceFilePath"]
                    .as_str()
                    .unwrap()
                    .ends_with("/refused")
                {
                    (
                        "400 Bad Request",
                        r#"{"why":"File does not exist"}"#.to_string(),
                    )
                } else {
                    // The provider sees the share, pending, while it answers.
                    let got = call_back(
                        &sim,
                        &ca,
                        &token,
                        "GET",
                        &format!("/api/shares/control/retrieve?id={id}"),
                        "",
                    );
                    assert_eq!(got["status"]["state"], "PENDING");
                    let drive = json!({"items": [{"spec": {"title": "x",
                        "product": {"id": "share", "category": "home", "provider": "hpc"}},
                        "providerGeneratedId": format!("s-{id}"), "createdBy": "_ucloud"}]});
                    let got = call_back(
                        &sim,
                        &ca,
                        &token,
                        "POST",
                        "/api/files/collections/control/register",
                        &drive.to_string(),
                    );
                    let drive_id = got["responses"][0]["id"].as_str().unwrap().to_string();
                    let update = json!({"items": [{"id": id, "update": {
                        "shareAvailableAt": format!("/{drive_id}"), "timestamp": 1}}]});
                    call_back(
                        &sim,
                        &ca,
                        &token,
                        "POST",
                        "/api/shares/control/update",
                        &update.to_string(),
                    );
                    ("200 OK", r#"{"responses":[{}]}"#.to_string())
                }
            } else {
                ("200 OK", r#"{"responses":[{}]}"#.to_string())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    FakeProvider { url, seen }
}

#[test]
fn a_share_goes_through_the_provider_and_guards_its_drive() {
    let mut f = Fixture::new("shares");
    let token = f.access_token();
    let approve = "/api/providers/integration/control/approveConnection";
    for user in ["A#1", "B#2"] {
        let body = json!({ "username": user }).to_string();
        assert_eq!(f.call(&token, "POST", approve, Some(&body)).0, 200);
    }
    assert_eq!(f.register_drive(&token, "h-a").0, 200);
    let share = |path: &str| {
        json!({"sharedBy": "A#1", "sharedWith": "B#2", "path": path, "permissions": ["READ"]})
            .to_string()
    };
    // No provider to ask: the core's 503, and no share.
    let (status, answer) = f.call("unused", "POST", "/sim/shares", Some(&share("/100/x")));
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        f.call("unused", "GET", "/sim/shares", None).1,
        json!({"items": []})
    );

    let provider = share_provider(f.url(), f.path("ca.pem"), token.clone());
    f.stop();
    f.serve_args = vec!["--provider-url".into(), provider.url.clone()];
    f.start();
    let (status, answer) = f.call("unused", "POST", "/sim/shares", Some(&share("/100/x")));
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    // A#1, base64: the sharer is the user of the provider's call.
    assert!(
        provider
            .seen()
            .contains(&"POST /ucloud/hpc/shares HTTP/1.1 QSMx".to_string()),
        "{:?}",
        provider.seen()
    );
    let (_, all) = f.call("unused", "GET", "/sim/shares", None);
    assert_eq!(all["items"][0]["id"], json!(id));
    assert_eq!(
        all["items"][0]["status"],
        json!({"shareAvailableAt": "/101", "state": "PENDING"})
    );
    let (status, _) = f.call(
        "unused",
        "POST",
        &format!("/sim/shares/{id}/approve"),
        Some(""),
    );
    assert_eq!(status, 200);
    let (_, page) = f.call(
        &token,
        "GET",
        &format!(
            "/api/files/collections/control/browse?filterProviderIds=s-{id}&includeOthers=true"
        ),
        None,
    );
    assert_eq!(
        page["items"][0]["permissions"]["others"],
        json!([{"entity": {"type": "user", "username": "B#2"}, "permissions": ["READ"]}])
    );

    // On the share's drive, `call` plays the core: B#2 reads, nobody writes.
    let files = |user: &str, op: &str, id: &str| {
        let out = Command::new(SIM)
            .args(["call", "--url", &provider.url])
            .args([
                "--signing-key",
                &f.path("signing.pem"),
                "--state",
                &f.path("state"),
            ])
            .args(["--user", user, "POST", &format!("/ucloud/hpc/files/{op}")])
            .arg(json!({"items": [{"id": id}]}).to_string())
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().next().unwrap().to_string()
    };
    let before = provider.seen().len();
    assert_eq!(files("B#2", "upload", "/101/x"), "403");
    assert_eq!(files("A#1", "download", "/101/x"), "403");
    assert_eq!(provider.seen().len(), before, "refused calls are not sent");
    assert_eq!(files("B#2", "download", "/101/x"), "200");
    // Another drive: the provider decides, as before.
    assert_eq!(files("B#2", "upload", "/100/x"), "200");

    // The provider refuses: its status and why, and no share left.
    let (status, answer) = f.call(
        "unused",
        "POST",
        "/sim/shares",
        Some(&share("/100/refused")),
    );
    assert_eq!(
        (status, &answer["why"]),
        (400, &json!("File does not exist"))
    );
    assert_eq!(
        f.call("unused", "GET", "/sim/shares", None).1["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Rejected: the drive goes with the share.
    let (status, _) = f.call("unused", "DELETE", &format!("/sim/shares/{id}"), None);
    assert_eq!(status, 200);
    let (_, page) = f.call(
        &token,
        "GET",
        &format!("/api/files/collections/control/browse?filterProviderIds=s-{id}"),
        None,
    );
    assert_eq!(page["items"], json!([]));
    assert_eq!(
        f.call("unused", "GET", "/sim/shares", None).1,
        json!({"items": []})
    );
}

#[test]
fn ssh_keys_reach_the_provider_once_per_change_and_only_with_an_allocation() {
    let provider = FakeProvider::start();
    let mut f = Fixture::new("ssh");
    f.stop();
    f.serve_args = vec!["--provider-url".into(), provider.url.clone()];
    f.start();
    let token = f.access_token();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let add = |user: &str, key: &str| {
        let body = json!({"username": user, "title": "t", "key": key}).to_string();
        f.call("unused", "POST", "/sim/ssh/keys", Some(&body))
    };
    let sent = |provider: &FakeProvider| {
        provider
            .seen()
            .iter()
            .filter(|l| l.starts_with("POST /ucloud/hpc/ssh/keyUploaded "))
            .count()
    };
    // Not connected, no compute product: the core sends nothing.
    let (status, answer) = add("A#1", key);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["provider"]["sent"], false, "{answer}");
    assert_eq!(sent(&provider), 0);
    f.register_products(&token);
    let approve = json!({"username": "A#1"}).to_string();
    let path = "/api/providers/integration/control/approveConnection";
    assert_eq!(f.call(&token, "POST", path, Some(&approve)).0, 200);
    let (status, answer) = add("A#1", &format!("  {key} laptop "));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["provider"]["status"], 200, "{answer}");
    assert_eq!(sent(&provider), 1);
    let id = answer["id"].as_str().unwrap().to_string();
    let (status, answer) = add("A#1", "ssh-dss AAAA");
    assert_eq!(
        (status, answer["why"].as_str()),
        (400, Some("Not a valid ssh key"))
    );
    assert_eq!(sent(&provider), 1, "a refused key sends nothing");
    let (status, answer) = f.call("unused", "DELETE", &format!("/sim/ssh/keys/{id}"), None);
    assert_eq!(
        (status, &answer["provider"]["status"]),
        (200, &json!(200)),
        "{answer}"
    );
    assert_eq!(sent(&provider), 2);
    assert_eq!(f.call("unused", "DELETE", "/sim/ssh/keys/999", None).0, 404);
    let (status, list) = f.call("unused", "GET", "/sim/ssh/keys?username=A%231", None);
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");

    // The provider's browse needs the provider's token and shows only connected users' keys.
    let body = Some(r#"{"itemsPerPage":10}"#);
    assert_eq!(
        f.call("bad", "POST", "/api/ssh/control/browse", body).0,
        401
    );
    let (status, page) = f.call(&token, "POST", "/api/ssh/control/browse", body);
    assert_eq!(status, 200, "{page}");
    let owners: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["A#1"]);
    assert_eq!(page["next"], Value::Null);
}

/// The provider's end of the notification stream, over TLS as the module opens it.
struct Stream {
    tls: ucloud_http::client::Stream,
    decoder: ucloud_http::websocket::Decoder,
    refs: ucloud_wire::apm::Refs,
}

impl Stream {
    fn open(f: &Fixture) -> Stream {
        use std::io::{Read, Write};
        ucloud_http::tls::install_provider();
        let endpoint = ucloud_http::client::Endpoint::new(
            &f.url(),
            Some(std::path::Path::new(&f.path("ca.pem"))),
            Duration::from_secs(10),
        )
        .unwrap();
        let mut tls = endpoint.connect().unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET /api/accounting/notifications HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tls.read(&mut byte).unwrap(), 1, "the head ends early");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.contains(&ucloud_http::websocket::accept_key(key)),
            "{head}"
        );
        Stream {
            tls,
            decoder: ucloud_http::websocket::Decoder::new(
                ucloud_http::websocket::Role::Client,
                1 << 24,
            ),
            refs: ucloud_wire::apm::Refs::default(),
        }
    }

    fn send(&mut self, frames: &[ucloud_wire::apm::Frame]) {
        use std::io::Write;
        let payload = ucloud_wire::apm::encode(frames, true);
        let frame = ucloud_http::websocket::encode(0x2, &payload, Some([9, 8, 7, 6]));
        self.tls.write_all(&frame).unwrap();
        self.tls.flush().unwrap();
    }

    fn message(&mut self) -> ucloud_http::websocket::Message {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next().unwrap() {
                return m;
            }
            let n = self.tls.read(&mut buf).expect("a message within 10 s");
            assert!(n > 0, "the stream closed without a close frame");
            self.decoder.push(&buf[..n]);
        }
    }

    fn events(&mut self) -> Vec<ucloud_wire::apm::Event> {
        match self.message() {
            ucloud_http::websocket::Message::Binary(b) => {
                let frames = ucloud_wire::apm::decode(&b, true).unwrap();
                self.refs.apply(frames).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }
}

fn auth(token: &str) -> ucloud_wire::apm::Frame {
    ucloud_wire::apm::Frame::Auth {
        replay_from_ms: 0,
        flags: ucloud_wire::apm::FLAG_INCLUDE_RETIRED,
        token: token.into(),
    }
}

#[test]
fn projects_and_wallets_reach_the_notification_stream() {
    use ucloud_wire::apm::Event;
    let f = Fixture::new("stream");
    let token = f.access_token();
    f.register_products(&token);
    let approve = "/api/providers/integration/control/approveConnection";
    f.call(&token, "POST", approve, Some(r#"{"username":"A#1"}"#));
    let members = json!([{"username": "A#1", "role": "PI"}, {"username": "B#2", "role": "USER"}]);
    let body = json!({"title": "Climate", "members": members}).to_string();
    let (status, created) = f.call("unused", "POST", "/sim/projects", Some(&body));
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // A project job before the project has an allocation: the core's 402.
    let job = |n: &str, by: &str| {
        json!({"id": n, "owner": {"createdBy": by, "project": id},
               "specification": {"name": "j", "product": {"id": "c1", "category": "cpu", "provider": "hpc"}}})
        .to_string()
    };
    assert_eq!(
        f.call("unused", "POST", "/sim/jobs", Some(&job("61", "B#2")))
            .0,
        402
    );
    let alloc = json!({"owner": {"type": "project", "projectId": id},
                       "category": {"name": "cpu", "provider": "hpc"}, "quota": 1000});
    let (status, answer) = f.call(
        "unused",
        "POST",
        "/sim/allocations",
        Some(&alloc.to_string()),
    );
    assert_eq!(status, 200, "{answer}");
    let bad = json!({"owner": {"type": "project", "projectId": id},
                     "category": {"name": "gpu", "provider": "hpc"}, "quota": 1});
    assert_eq!(
        f.call("unused", "POST", "/sim/allocations", Some(&bad.to_string()))
            .0,
        404
    );

    // A token that is not the provider's: the stream closes.
    let mut forged = Stream::open(&f);
    forged.send(&[auth("not-a-token")]);
    assert!(matches!(
        forged.message(),
        ucloud_http::websocket::Message::Close(Some(1008), _)
    ));

    let mut s = Stream::open(&f);
    s.send(&[auth(&token)]);
    let events = s.events();
    let Some(Event::Wallet {
        owner,
        quota,
        locked,
        project,
        ..
    }) = events.last()
    else {
        panic!("{events:?}");
    };
    assert_eq!(owner, &json!({"type": "project", "projectId": id}));
    assert_eq!((*quota, *locked), (1000, false));
    assert_eq!(project.as_ref().unwrap()["status"]["members"], members);
    // The project itself follows, modified after the replay start.
    assert!(matches!(&s.events()[0], Event::Project { .. }));

    // Live: a member joins, one leaves (the name percent-encoded in the path).
    let join = r#"{"username":"C#3","role":"ADMIN"}"#;
    assert_eq!(
        f.call(
            "unused",
            "POST",
            &format!("/sim/projects/{id}/members"),
            Some(join)
        )
        .0,
        200
    );
    let Event::Project { project, .. } = &s.events()[0] else {
        panic!()
    };
    assert_eq!(project["status"]["members"].as_array().unwrap().len(), 3);
    let leave = format!("/sim/projects/{id}/members/B%232");
    assert_eq!(f.call("unused", "DELETE", &leave, None).0, 200);
    let Event::Project { project, .. } = &s.events()[0] else {
        panic!()
    };
    assert_eq!(
        project["status"]["members"],
        json!([{"username": "A#1", "role": "PI"}, {"username": "C#3", "role": "ADMIN"}])
    );
    let pi = format!("/sim/projects/{id}/members/A%231");
    assert_eq!(f.call("unused", "DELETE", &pi, None).0, 400);
    let (status, view) = f.call("unused", "GET", &format!("/sim/projects/{id}"), None);
    assert_eq!(
        (status, &view["status"]["members"]),
        (200, &project["status"]["members"])
    );

    // Jobs of the project: a member's, not an outsider's; usage moves the wallet.
    assert_eq!(
        f.call("unused", "POST", "/sim/jobs", Some(&job("62", "B#2")))
            .0,
        403
    );
    assert_eq!(
        f.call("unused", "POST", "/sim/jobs", Some(&job("63", "C#3")))
            .0,
        200
    );
    let (status, seen) = f.call("unused", "GET", "/sim/jobs/63?actor=A%231", None);
    assert_eq!(status, 200);
    assert_eq!(
        seen["permissions"],
        json!({"myself": ["ADMIN", "READ", "EDIT"], "others": []})
    );
    assert_eq!(
        f.call("unused", "GET", "/sim/jobs/63?actor=B%232", None).0,
        404
    );
    let report = json!({"items": [{"isDeltaCharge": true, "owner": {"type": "project", "projectId": id},
        "categoryIdV2": {"name": "cpu", "provider": "hpc"}, "usage": 1000}]});
    let (status, answer) = f.call(
        &token,
        "POST",
        "/api/accounting/v2/reportUsage",
        Some(&report.to_string()),
    );
    assert_eq!((status, answer), (200, json!({"responses": [false]})));
    let events = s.events();
    assert!(
        matches!(
            &events[..],
            [Event::Wallet {
                usage: 1000,
                locked: true,
                ..
            }]
        ),
        "{events:?}"
    );
    let (_, wallets) = f.call("unused", "GET", "/sim/wallets", None);
    assert_eq!(wallets["items"][0]["locked"], true, "{wallets}");

    // The project leaves the site: its wallet ends at quota 0.
    assert_eq!(
        f.call("unused", "DELETE", &format!("/sim/projects/{id}"), None)
            .0,
        200
    );
    let events = s.events();
    assert!(
        matches!(
            &events[..],
            [Event::Wallet {
                quota: 0,
                locked: true,
                ..
            }]
        ),
        "{events:?}"
    );
    assert!(f
        .log()
        .iter()
        .any(|l| l["path"] == "/api/accounting/notifications" && l["status"] == 101));
}
