//! The stack as UCloud meets it: behind its balancer. Given no `--url`, the simulator
//! goes where the stack's environment points it (`UCLOUD_IM_LB_URL`, TLS verified
//! against `UCLOUD_IM_CA`), and a whole UCloud session (manifest, products, a
//! listing, an upload and a download through the links handed to the browser, a
//! refusal, a real Slurm job and its output over the WebSocket) runs ucloud-lb → the
//! balancer-facing gateway (PROXY v2) → the setuid dispatcher → plugins as the mapped
//! user. That gateway logs the address of the client, never the balancer's.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use ucloud_im_tests::{as_user, job_id, run_as, unique, ScratchDir, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
const BACKEND_CONNECTIONS: &str = r#"ucloud_lb_backend_connections_total{backend="gateway"}"#;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The balancer-facing gateway's log from a point on: socket activation's
/// "Connection from ADDR" lines (the TCP peer: the balancer) and the gateway's own
/// request lines ("... client=ADDR", from the PROXY header).
struct GatewayLog {
    path: PathBuf,
    from: usize,
}

impl GatewayLog {
    fn mark(stack: &Stack) -> GatewayLog {
        let path = PathBuf::from(stack.get("UCLOUD_IM_STACK_LOGS")).join("gateway-lb.log");
        let from = std::fs::metadata(&path).map_or(0, |m| m.len() as usize);
        GatewayLog { path, from }
    }

    fn since(&self) -> String {
        let all = std::fs::read(&self.path).unwrap_or_default();
        String::from_utf8_lossy(all.get(self.from..).unwrap_or(&all)).into_owned()
    }

    /// The gateway writes its line after answering: wait until `calls` each have
    /// one, and return the new part of the log.
    fn wait_for(&self, calls: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.since();
            let missing: Vec<_> = calls
                .iter()
                .filter(|call| requests(&text).iter().all(|r| r.call != **call))
                .collect();
            if missing.is_empty() {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the balancer-facing gateway logged nothing for {missing:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Logged {
    call: String,
    status: String,
    client: Option<String>,
}

/// The gateway's request lines: `ucloud-gateway: METHOD PATH CALL STATUS MSms [client=ADDR] [note]`.
fn requests(log: &str) -> Vec<Logged> {
    log.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line
                .strip_prefix("ucloud-gateway: ")?
                .split_whitespace()
                .collect();
            Some(Logged {
                call: words.get(2)?.to_string(),
                status: words.get(3)?.to_string(),
                client: words
                    .iter()
                    .find_map(|w| w.strip_prefix("client="))
                    .map(String::from),
            })
        })
        .collect()
}

/// The peers socket activation accepted on the balancer-facing socket: the
/// balancer's own end of each connection.
fn tcp_peers(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            l.strip_prefix("Connection from ")?
                .split_whitespace()
                .next()
        })
        .map(String::from)
        .collect()
}

fn browse_body(stack: &Stack, drive: &str, path: &str) -> String {
    json!({
        "resolvedCollection": {"id": drive, "specification": {"title": "Home",
            "product": {"id": "home", "category": "home", "provider": stack.get("UCLOUD_IM_PROVIDER")}}},
        "browse": {"flags": {"path": path}, "itemsPerPage": 50, "next": null,
            "sortBy": "PATH", "sortDirection": "ascending"},
    })
    .to_string()
}

/// A Job as UCloud's core sends it, running `sh -c SCRIPT` for Alice.
fn job(stack: &Stack, id: &str, script: &str) -> Value {
    stack.shell_job(ALICE, id, script, 5)
}

/// `ucloud-sim follow` of `job` through the balancer (its Slurm job cancelled once
/// the stream ends): the stream's lines.
fn follow_to_the_end(stack: &Stack, job: &Value, slurm_id: &str) -> Vec<Value> {
    let followed = sim(stack, &stack_vars(stack))
        .arg("follow")
        .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
        .args(["--state", &stack.get("UCLOUD_IM_STATE")])
        .args(["--user", ALICE])
        .arg(job.to_string())
        .output()
        .expect("ucloud-sim follow");
    let _ = Command::new("scancel").arg(slurm_id).status();
    assert!(followed.status.success(), "{}", text(&followed));
    String::from_utf8_lossy(&followed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The balancer-facing gateway logged, for each of `calls`, the address of the client
/// from the PROXY header: never one of the balancer's own ends, which socket
/// activation logged as the TCP peers.
fn no_client_is_the_balancer(text: &str, calls: &[&str]) {
    let peers = tcp_peers(text);
    assert!(!peers.is_empty(), "no accepted connections logged:\n{text}");
    for r in requests(text) {
        if !calls.contains(&r.call.as_str()) {
            continue;
        }
        let client = r
            .client
            .unwrap_or_else(|| panic!("{} {}: no client address logged", r.call, r.status));
        assert!(
            !peers.contains(&client),
            "{}: the logged client {client} is the balancer's end of the connection",
            r.call
        );
    }
}

/// A UCloud session through the balancer that counts the connections it makes, so
/// that the balancer's counter can be held against them.
struct Session<'s> {
    stack: &'s Stack,
    connections: u64,
}

impl Session<'_> {
    /// `call` (a path under the provider's `/ucloud/PROVIDER/`) as `user`.
    fn call(
        &mut self,
        user: Option<&str>,
        method: &str,
        call: &str,
        body: Option<String>,
    ) -> (u16, Value) {
        self.connections += 1;
        let path = format!("/ucloud/{}/{call}", self.stack.get("UCLOUD_IM_PROVIDER"));
        self.stack.call_public(user, method, &path, body.as_deref())
    }

    /// The link of a createUpload or createDownload answer, which must point at the
    /// balancer.
    fn link<'b>(&self, body: &'b Value, what: &str) -> &'b str {
        let endpoint = body["responses"][0]["endpoint"]
            .as_str()
            .unwrap_or_default();
        assert!(
            endpoint.starts_with(&format!("{}/", self.stack.get("UCLOUD_IM_LB_URL"))),
            "the {what} link is not under the balancer: {body}"
        );
        endpoint
    }
}

/// The simulator in the stack's environment, with exactly the variables given of
/// those it takes defaults from.
fn sim(stack: &Stack, vars: &[(&str, String)]) -> Command {
    let mut command = Command::new(stack.bin("ucloud-sim"));
    for name in ["UCLOUD_IM_LB_URL", "UCLOUD_IM_GATEWAY_URL", "UCLOUD_IM_CA"] {
        command.env_remove(name);
    }
    command.envs(vars.iter().map(|(k, v)| (k, v)));
    command
}

fn stack_vars(stack: &Stack) -> Vec<(&'static str, String)> {
    ["UCLOUD_IM_LB_URL", "UCLOUD_IM_GATEWAY_URL", "UCLOUD_IM_CA"]
        .into_iter()
        .map(|name| (name, stack.get(name)))
        .collect()
}

#[test]
fn a_ucloud_session_runs_through_the_balancer() {
    let stack = Stack::load();
    assert_eq!(
        stack.get("UCLOUD_IM_SLURM"),
        "1",
        "the stack runs no Slurm cluster; rerun scripts/stack up"
    );
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let scratch = ScratchDir::new(&alice, "lb-session");
    as_user(
        &alice,
        &format!(
            "cd {} && printf 'from the login node' > hello.txt",
            scratch.dir
        ),
    );
    let folder = format!("/{drive}/{}", scratch.dir);
    let log = GatewayLog::mark(&stack);
    let before = stack.lb_metric(BACKEND_CONNECTIONS);
    let mut session = Session {
        stack: &stack,
        connections: 0,
    };

    let (status, body) = session.call(None, "GET", "integration/retrieveManifest", None);
    assert_eq!((status, &body["enabled"]), (200, &json!(true)), "{body}");

    let (status, body) = session.call(None, "GET", "jobs/retrieveProducts", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["responses"].as_array().is_some_and(|r| !r.is_empty()),
        "no products: {body}"
    );

    let listing = browse_body(&stack, &drive, &folder);
    let (status, body) = session.call(Some(ALICE), "POST", "files/browse", Some(listing));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["items"][0]["id"],
        json!(format!("{folder}/hello.txt")),
        "{body}"
    );

    // The upload link UCloud hands the browser, followed as given.
    let content = format!("uploaded through the balancer {}", unique("x"));
    let upload = json!({"items": [{"id": format!("{folder}/up.txt"), "type": "FILE",
        "supportedProtocols": ["CHUNKED"], "conflictPolicy": "REJECT"}]});
    let (status, body) = session.call(
        Some(ALICE),
        "POST",
        "files/upload",
        Some(upload.to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let endpoint = session.link(&body, "upload");
    let token = body["responses"][0]["token"].as_str().unwrap_or_default();
    let up = stack.upload_in_one_chunk(endpoint, token, content.len(), &content);
    session.connections += 1;
    assert_eq!(up.status, 200, "{}\n{}", up.head, up.text());
    let written = PathBuf::from(scratch.local("up.txt"));
    assert_eq!(std::fs::read_to_string(&written).unwrap(), content);
    let owner = run_as(&alice, &["stat", "-c", "%U", written.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), alice);

    // The download link, followed as given.
    let download = json!({"items": [{"id": format!("{folder}/hello.txt")}]});
    let (status, body) = session.call(
        Some(ALICE),
        "POST",
        "files/download",
        Some(download.to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let down = stack.follow_link(session.link(&body, "download"), &[]);
    session.connections += 1;
    assert_eq!(
        (down.status, down.text().as_str()),
        (200, "from the login node"),
        "{}",
        down.head
    );

    // Refusals come back through the balancer in UCloud's error form.
    let bob_drive = stack.drive_of(BOB);
    let theirs = browse_body(&stack, &bob_drive, &format!("/{bob_drive}"));
    let (status, body) = session.call(Some(ALICE), "POST", "files/browse", Some(theirs));
    assert!([403, 404].contains(&status), "{status}: {body}");
    assert!(
        body["why"].is_string() && body["errorCode"].is_string(),
        "{body}"
    );

    // A real Slurm job for Alice, and its output over the WebSocket, both through the
    // balancer.
    let marker = job_id();
    let mut job = job(&stack, &marker, &format!("echo {marker}"));
    let jobs = json!({ "items": [job] });
    let (status, body) = session.call(Some(ALICE), "POST", "jobs", Some(jobs.to_string()));
    assert_eq!(status, 200, "jobs.create: {body}");
    let provider_id = body["responses"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_string();
    job["providerGeneratedId"] = json!(provider_id);
    let slurm_id = provider_id.rsplit('/').next().unwrap().to_string();
    let lines = follow_to_the_end(&stack, &job, &slurm_id);
    session.connections += 1;
    let stdout: String = lines
        .iter()
        .filter(|l| l["type"] == "message")
        .filter_map(|l| l["payload"]["stdout"].as_str())
        .collect();
    assert_eq!(stdout, format!("{marker}\n"), "{lines:#?}");

    // Every one of those connections went to the gateway through the balancer (others
    // may use the stack meanwhile: at least ours).
    let through = stack.lb_metric(BACKEND_CONNECTIONS) - before;
    let connections = session.connections;
    assert!(
        through >= connections,
        "{connections} connections made, the balancer passed {through} to the gateway"
    );

    // The balancer-facing gateway served each call, and logged the client's address.
    let calls = [
        "integration.retrieveManifest",
        "jobs.retrieveProducts",
        "files.browse",
        "files.createUpload",
        "files.upload",
        "files.createDownload",
        "files.download",
        "jobs.create",
        "jobs.follow",
    ];
    no_client_is_the_balancer(&log.wait_for(&calls), &calls);
}

/// A client from an address of its own (127.0.0.2; all of 127/8 is loopback): the
/// gateway behind the balancer logs exactly that address and port, although its TCP
/// peer is the balancer on 127.0.0.1.
#[test]
fn the_gateway_logs_the_clients_own_address() {
    let stack = Stack::load();
    let log = GatewayLog::mark(&stack);
    let token = stack.token(&[]);
    let url = format!(
        "{}/ucloud/{}/jobs/retrieveProducts",
        stack.get("UCLOUD_IM_LB_URL"),
        stack.get("UCLOUD_IM_PROVIDER")
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--interface", "127.0.0.2"])
        .args(["--cacert", &stack.get("UCLOUD_IM_CA")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{local_ip}:%{local_port}",
        ])
        .arg(&url)
        .output()
        .expect("curl");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    let (code, client) = said.split_once(' ').unwrap_or(("", ""));
    assert_eq!(code, "200", "{said}");
    assert!(client.starts_with("127.0.0.2:"), "curl went from {client}");

    let text = log.wait_for(&["jobs.retrieveProducts"]);
    assert!(
        requests(&text)
            .iter()
            .any(|r| r.call == "jobs.retrieveProducts"
                && r.status == "200"
                && r.client.as_deref() == Some(client)),
        "the gateway did not log client={client}:\n{text}"
    );
    // The balancer reaches the gateway over its unix socket, and is believed.
    assert!(
        !text.contains("refusing the connection unread"),
        "the gateway refused the balancer:\n{text}"
    );
}

/// Without `--url` the simulator takes the balancer when the stack's environment
/// names it, verifies it against UCLOUD_IM_CA and nothing else, and falls back to the
/// direct gateway; `--url` wins over both.
#[test]
fn the_simulator_defaults_to_the_balancer_and_verifies_it() {
    let stack = Stack::load();
    let manifest = format!(
        "/ucloud/{}/integration/retrieveManifest",
        stack.get("UCLOUD_IM_PROVIDER")
    );
    let call = |vars: &[(&str, String)], extra: &[&str]| {
        sim(&stack, vars)
            .arg("call")
            .args(extra)
            .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
            .args(["--state", &stack.get("UCLOUD_IM_STATE")])
            .args(["GET", &manifest])
            .output()
            .expect("ucloud-sim call")
    };
    let lb = ("UCLOUD_IM_LB_URL", stack.get("UCLOUD_IM_LB_URL"));
    let gateway = ("UCLOUD_IM_GATEWAY_URL", stack.get("UCLOUD_IM_GATEWAY_URL"));
    let ca = ("UCLOUD_IM_CA", stack.get("UCLOUD_IM_CA"));
    let answered = |out: &Output| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("200\n")
    };

    let out = call(&[lb.clone(), gateway.clone(), ca.clone()], &[]);
    assert!(answered(&out), "{}", text(&out));

    // The balancer without a CA to trust: a usage error that says what to give.
    let out = call(&[lb.clone(), gateway.clone()], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("UCLOUD_IM_CA"), "{}", text(&out));

    // Another CA than the stack's: the balancer's certificate is refused.
    let dir = std::env::temp_dir().join(unique("other-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("ca.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=not the stack CA",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", text(&made));
    let out = call(
        &[
            lb.clone(),
            gateway.clone(),
            ("UCLOUD_IM_CA", other.display().to_string()),
        ],
        &[],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "{}",
        text(&out)
    );

    // No balancer named: the direct gateway, plain HTTP.
    let out = call(std::slice::from_ref(&gateway), &[]);
    assert!(answered(&out), "{}", text(&out));
    let out = call(&[("UCLOUD_IM_LB_URL", String::new()), gateway.clone()], &[]);
    assert!(answered(&out), "{}", text(&out));

    // --url wins over the environment.
    let out = call(
        &[
            ("UCLOUD_IM_LB_URL", "https://127.0.0.1:1".into()),
            ca.clone(),
        ],
        &["--url", &gateway.1],
    );
    assert!(answered(&out), "{}", text(&out));

    // Nowhere to go: a usage error naming both variables.
    let out = call(&[], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("UCLOUD_IM_LB_URL") && said.contains("UCLOUD_IM_GATEWAY_URL"),
        "{said}"
    );
}

#[test]
fn the_log_is_read_as_the_gateway_and_socket_activation_write_it() {
    let log = "Connection from 127.0.0.1:38930 to 127.0.0.1:18890\n\
        Spawned /x/ucloud-gateway (/x/ucloud-gateway --proxy-protocol) as PID 15320.\n\
        ucloud-gateway: POST /ucloud/hpc/jobs jobs.create 200 26.1ms client=127.0.0.1:48734\n\
        ucloud-gateway: GET /ucloud-im/health health 200 0.1ms\n\
        ucloud-gateway: GET /ucloud/jobs.provider.hpc/websocket jobs.follow 101 9.6ms client=127.0.0.2:4 stream ended\n";
    let r = requests(log);
    assert_eq!(r.len(), 3);
    assert_eq!(
        (
            r[0].call.as_str(),
            r[0].status.as_str(),
            r[0].client.as_deref()
        ),
        ("jobs.create", "200", Some("127.0.0.1:48734"))
    );
    assert_eq!(r[1].client, None);
    assert_eq!(r[2].client.as_deref(), Some("127.0.0.2:4"));
    assert_eq!(
        tcp_peers(log).into_iter().collect::<Vec<_>>(),
        vec!["127.0.0.1:38930"]
    );
}
