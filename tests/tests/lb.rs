//! ucloud-lb through real clients (curl, openssl s_client) to real gateways: the
//! stack's balancer in front of its balancer-facing gateway, and balancers these tests
//! start themselves in front of gateways they start (three ports, one killed; reloads;
//! hostile clients; nothing up).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ucloud_im_tests::Stack;

const HEALTH: &str = "/ucloud-im/health";

/// The load tests share two cores: one at a time, so that their timing means something.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `curl` to `url` through TLS verified with the stack CA; `(status, body)`.
fn curl(stack: &Stack, url: &str, extra: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &stack.get("UCLOUD_IM_CA"),
        ])
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(url));
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        return (0, format!("curl: {}", text(&out.stderr).trim()));
    }
    (code, body.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// root:ucloud-lb 0660, what the socket unit's SocketGroup= and SocketMode= make.
fn open_to_the_balancer(sock: &Path) {
    let sock = sock.to_str().unwrap();
    let owned = run(Command::new("chown").args([&format!("root:{LB_USER}"), sock]));
    assert!(owned.status.success(), "chown: {}", text(&owned.stderr));
    let moded = run(Command::new("chmod").args(["0660", sock]));
    assert!(moded.status.success(), "chmod: {}", text(&moded.stderr));
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ucloud-lb-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The balancer's account (the stack's): the only peer whose PROXY header a
/// gateway believes, so the tests' balancers run as it too.
const LB_USER: &str = "ucloud-lb";

/// `setpriv` arguments that run a program as the balancer's account.
fn as_balancer() -> [String; 5] {
    [
        "setpriv".into(),
        format!("--reuid={LB_USER}"),
        format!("--regid={LB_USER}"),
        "--init-groups".into(),
        "--".into(),
    ]
}

/// A balancer-facing gateway socket (PROXY v2 required), like the stack's and
/// units/ucloud-gateway-lb.socket: a unix socket made by root and opened to the
/// balancer's group alone, one gateway as its account per connection.
struct Gateway {
    sock: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    fn start(stack: &Stack, dir: &Path, name: &str) -> Gateway {
        Gateway::start_with(stack, dir, name, &[])
    }

    /// With more options of ucloud-gateway, as a unit's ExecStart= would give them.
    fn start_with(stack: &Stack, dir: &Path, name: &str, options: &[&str]) -> Gateway {
        let sock = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&sock);
        let log = dir.join(format!("{name}.log"));
        let user = stack.get("UCLOUD_IM_GATEWAY_USER");
        let child = Command::new("systemd-socket-activate")
            .args(["-l", sock.to_str().unwrap(), "--inetd", "-a", "setpriv"])
            .args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
            ])
            .arg("--bounding-set=-all,+setuid,+setgid,+setpcap")
            .arg(stack.bin("ucloud-gateway"))
            .arg("--proxy-protocol")
            .args(options)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start systemd-socket-activate for a gateway");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "gateway {name} does not listen on {}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // SocketUser=root, SocketGroup=ucloud-lb, SocketMode=0660.
        open_to_the_balancer(&sock);
        Gateway {
            sock,
            child: Some(child),
        }
    }

    fn address(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A ucloud-lb of the test's own, on a free port, with the stack's certificate.
struct Lb {
    port: u16,
    metrics: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Child,
}

fn lb_config(
    stack: &Stack,
    port: u16,
    metrics: u16,
    extra: &str,
    backends: &[(&str, String, &str)],
) -> String {
    let etc = stack.get("UCLOUD_IM_ETC");
    let mut c = format!(
        "listen = 127.0.0.1:{port}\nmetrics = 127.0.0.1:{metrics}\n\
         certificate = {etc}/lb/tls.pem {etc}/lb/tls.key\n\
         health_interval = 0.3\nhealth_fall = 2\nhealth_rise = 2\n{extra}\n"
    );
    for (name, address, more) in backends {
        c.push_str(&format!(
            "[backend {name}]\naddress = {address}\nproxy_protocol = yes\n{more}\n"
        ));
    }
    c
}

impl Lb {
    fn start(stack: &Stack, dir: &Path, config: impl Fn(u16, u16) -> String) -> Lb {
        let (port, metrics) = (free_port(), free_port());
        let conf = dir.join("lb.conf");
        std::fs::write(&conf, config(port, metrics)).unwrap();
        let log = dir.join("lb.log");
        // As the balancer's account, as the stack and ucloud-lb.service run it.
        let child = Command::new("setpriv")
            .args(&as_balancer()[1..])
            .arg(stack.bin("ucloud-lb"))
            .args(["--config", conf.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ucloud-lb");
        let lb = Lb {
            port,
            metrics,
            conf,
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", metrics)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ucloud-lb did not start: {}",
                lb.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lb
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One metric's value, by its full name with labels.
    fn metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics)).expect("metrics address");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }

    fn signal(&self, sig: &str) {
        let out = run(Command::new("kill").args([sig, &self.child.id().to_string()]));
        assert!(out.status.success(), "kill {sig}: {}", text(&out.stderr));
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs health requests through `url` from `threads` clients until `stop`; every
/// status seen, in order.
fn load(
    stack: &Arc<Stack>,
    url: String,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<u16>>> {
    (0..threads)
        .map(|_| {
            let (stack, url, stop) = (stack.clone(), url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (code, body) = curl(&stack, &url, &[]);
                    if code != 200 {
                        eprintln!("{code}: {body}");
                    }
                    seen.push(code);
                }
                seen
            })
        })
        .collect()
}

fn all_statuses(handles: Vec<std::thread::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

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
    let out = run(Command::new(stack.bin("ucloud-sim"))
        .args(["call", "--url", &url, "--ca", &stack.get("UCLOUD_IM_CA")])
        .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
        .args(["--state", &stack.get("UCLOUD_IM_STATE")])
        .args([
            "GET",
            &format!(
                "/ucloud/{}/integration/retrieveManifest",
                stack.get("UCLOUD_IM_PROVIDER")
            ),
        ]));
    let (status, body) =
        ucloud_im_tests::parse_call_output(&text(&out.stdout)).expect("ucloud-sim call output");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], true, "{body}");
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

fn s_client(stack: &Stack, host: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            host,
            "-CAfile",
            &stack.get("UCLOUD_IM_CA"),
            "-ign_eof",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let request = if input.is_empty() {
        format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    } else {
        input.to_string()
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
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

#[test]
fn a_gateway_killed_under_load_fails_no_request_and_leaves_the_rotation() {
    let _serial = serial();
    let stack = Arc::new(Stack::load());
    let dir = scratch("kill");
    let mut gws: Vec<Gateway> = (0..3)
        .map(|i| Gateway::start(&stack, &dir, &format!("gw{i}")))
        .collect();
    let lb = Lb::start(&stack, &dir, |p, m| {
        let backends: Vec<_> = gws
            .iter()
            .enumerate()
            .map(|(i, g)| (["gw0", "gw1", "gw2"][i], g.address(), ""))
            .collect();
        lb_config(&stack, p, m, "", &backends)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&stack, lb.url(HEALTH), 4, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        lb.metric("ucloud_lb_backend_connections_total{backend=\"gw1\"}") > 0,
        "gw1 got no traffic before the kill"
    );
    gws[1].kill();
    let killed = Instant::now();
    // The health interval is 0.3 s with fall 2: out within about 0.6 s (a refused
    // connect takes it out sooner).
    while lb.metric("ucloud_lb_backend_up{backend=\"gw1\"}") != 0 {
        assert!(
            killed.elapsed() < Duration::from_millis(1500),
            "gw1 still in rotation after 1.5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out_after = killed.elapsed();
    let before = lb.metric("ucloud_lb_backend_connections_total{backend=\"gw1\"}");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let statuses = all_statuses(handles);
    assert!(
        statuses.len() > 40,
        "too little load to mean anything: {}",
        statuses.len()
    );
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\n{}",
        failed.len(),
        statuses.len(),
        lb.log_text()
    );
    assert_eq!(
        lb.metric("ucloud_lb_backend_connections_total{backend=\"gw1\"}"),
        before,
        "gw1 got connections after it left the rotation"
    );
    assert_eq!(lb.metric("ucloud_lb_backend_up{backend=\"gw0\"}"), 1);
    eprintln!(
        "{} requests, none failed; gw1 out of rotation {} ms after the kill",
        statuses.len(),
        out_after.as_millis()
    );
}

#[test]
fn reloads_under_load_lose_nothing_and_a_bad_file_changes_nothing() {
    let _serial = serial();
    let stack = Arc::new(Stack::load());
    let dir = scratch("reload");
    let gws: Vec<Gateway> = (0..2)
        .map(|i| Gateway::start(&stack, &dir, &format!("gw{i}")))
        .collect();
    let a = gws[0].address();
    let b = gws[1].address();
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(&stack, p, m, "", &[("a", a.clone(), "")])
    });
    let (port, metrics) = (lb.port, lb.metrics);
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&stack, lb.url(HEALTH), 4, stop.clone());
    let configs = [
        lb_config(
            &stack,
            port,
            metrics,
            "",
            &[("a", a.clone(), ""), ("b", b.clone(), "weight = 3")],
        ),
        lb_config(
            &stack,
            port,
            metrics,
            "",
            &[("a", a.clone(), "drain = yes"), ("b", b.clone(), "")],
        ),
        lb_config(
            &stack,
            port,
            metrics,
            "",
            &[("a", a.clone(), ""), ("b", b.clone(), "")],
        ),
    ];
    for config in &configs {
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(&lb.conf, config).unwrap();
        lb.signal("-HUP");
    }
    std::thread::sleep(Duration::from_millis(400));
    // A broken file: refused, the running configuration stays.
    std::fs::write(
        &lb.conf,
        "certificate = /nonexistent.pem /nonexistent.key\n[backend a]\naddress = 127.0.0.1:1\n",
    )
    .unwrap();
    lb.signal("-HUP");
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::Relaxed);
    let statuses = all_statuses(handles);
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(statuses.len() > 40, "too little load: {}", statuses.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed across reloads: {failed:?}\n{}",
        failed.len(),
        statuses.len(),
        lb.log_text()
    );
    assert_eq!(lb.metric("ucloud_lb_reloads_total"), 3, "{}", lb.log_text());
    assert_eq!(lb.metric("ucloud_lb_reload_failures_total"), 1);
    assert!(
        lb.log_text().contains("reload refused"),
        "{}",
        lb.log_text()
    );
    assert!(
        lb.metric("ucloud_lb_backend_connections_total{backend=\"b\"}") > 0,
        "b never got traffic"
    );
    assert_eq!(curl(&stack, &lb.url(HEALTH), &[]).0, 200);
}

#[test]
fn a_drained_backend_takes_no_new_connections() {
    let stack = Stack::load();
    let dir = scratch("drain");
    let gws: Vec<Gateway> = (0..2)
        .map(|i| Gateway::start(&stack, &dir, &format!("gw{i}")))
        .collect();
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(
            &stack,
            p,
            m,
            "",
            &[
                ("a", gws[0].address(), "drain = yes"),
                ("b", gws[1].address(), ""),
            ],
        )
    });
    for _ in 0..6 {
        assert_eq!(curl(&stack, &lb.url(HEALTH), &[]).0, 200);
    }
    assert_eq!(
        lb.metric("ucloud_lb_backend_connections_total{backend=\"a\"}"),
        0
    );
    assert_eq!(
        lb.metric("ucloud_lb_backend_connections_total{backend=\"b\"}"),
        6
    );
    assert_eq!(lb.metric("ucloud_lb_backend_draining{backend=\"a\"}"), 1);
}

#[test]
fn every_backend_down_is_a_502_in_ucloud_error_form() {
    let stack = Stack::load();
    let dir = scratch("down");
    let nobody = format!("127.0.0.1:{}", free_port());
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(&stack, p, m, "", &[("gone", nobody.clone(), "")])
    });
    for _ in 0..2 {
        let (code, body) = curl(&stack, &lb.url(HEALTH), &[]);
        assert_eq!(code, 502, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert!(
            json["why"].as_str().is_some_and(|w| !w.is_empty()),
            "{json}"
        );
        assert_eq!(json["errorCode"], "NO_BACKEND");
    }
    assert!(
        lb.log_text().contains("no backend is available"),
        "{}",
        lb.log_text()
    );
    assert_eq!(lb.metric("ucloud_lb_backend_up{backend=\"gone\"}"), 0);
}

#[test]
fn hostile_clients_do_not_affect_others() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("hostile");
    let gw = Gateway::start(&stack, &dir, "gw");
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(
            &stack,
            p,
            m,
            "handshake_timeout = 1\nmax_per_client = 30",
            &[("gw", gw.address(), "")],
        )
    });
    let addr = ("127.0.0.1", lb.port);
    let mut held = Vec::new();
    // Garbage instead of a ClientHello.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage")
            .unwrap();
        held.push(s);
    }
    // Half a ClientHello, then silence; and a slowloris dripping one byte at a time.
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        held.push(s);
    }
    let slow = TcpStream::connect(addr).unwrap();
    let dripping = Arc::new(Mutex::new(slow));
    let drip = {
        let s = dripping.clone();
        std::thread::spawn(move || {
            let hello = [
                0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0,
                0, 0,
            ];
            for b in hello {
                if s.lock().unwrap().write_all(&[b]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            false
        })
    };
    // More connections from one address than max_per_client (30, counting the 11 above).
    for _ in 0..40 {
        held.push(TcpStream::connect(addr).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        lb.metric("ucloud_lb_refused_per_client_total") >= 10,
        "{}",
        lb.log_text()
    );
    // Another client (another address) is served meanwhile.
    let (code, body) = curl(&stack, &lb.url(HEALTH), &["--interface", "127.0.0.2"]);
    assert_eq!(code, 200, "{body}\n{}", lb.log_text());
    // The handshake deadline (1 s) frees the places: the same address gets in again.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = drip.join();
    assert!(
        lb.metric("ucloud_lb_handshake_errors_total") >= 11,
        "{}",
        lb.log_text()
    );
    let mut probe = [0u8; 64];
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"\x16\x03\x01\x00\x01\x00").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // The balancer answers garbage with an alert or a close, never a hang.
    let _ = s
        .read(&mut probe)
        .expect("an answer within the handshake deadline");
    drop(held);
    assert_eq!(
        curl(&stack, &lb.url(HEALTH), &[]).0,
        200,
        "{}",
        lb.log_text()
    );
}

#[test]
fn a_burst_of_three_hundred_connections_from_one_address_is_admitted() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("burst");
    let gw = Gateway::start(&stack, &dir, "gw");
    // Defaults for the limits: what a site gets without setting them.
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(&stack, p, m, "", &[("gw", gw.address(), "")])
    });
    let held: Vec<_> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", lb.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lb.metric("ucloud_lb_refused_per_client_total"), 0);
    assert_eq!(lb.metric("ucloud_lb_connections_active"), 300);
    assert_eq!(curl(&stack, &lb.url(HEALTH), &[]).0, 200);
    drop(held);
}

#[test]
fn sigterm_stops_accepting_and_waits_for_open_connections() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("term");
    let gw = Gateway::start(&stack, &dir, "gw");
    let mut lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(
            &stack,
            p,
            m,
            "drain_timeout = 5",
            &[("gw", gw.address(), "")],
        )
    });
    // An open keep-alive connection through the balancer.
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{}", lb.port),
        ])
        .args(["-CAfile", &stack.get("UCLOUD_IM_CA")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin
        .write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut stdout = client.stdout.take().unwrap();
    let mut first = [0u8; 12];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    lb.signal("-TERM");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lb.child.try_wait().unwrap().is_none(),
        "ucloud-lb exited with a connection open"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", lb.port)).is_err(),
        "still accepting after SIGTERM"
    );
    // The open connection still works.
    stdin
        .write_all(
            format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    assert!(text(&rest).contains("HTTP/1.1 200"), "{}", text(&rest));
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(s) = lb.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ucloud-lb did not exit after its last connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", lb.log_text());
    let _ = client.wait();
}

#[test]
fn a_socket_from_the_service_manager_and_a_unix_socket_backend() {
    let stack = Stack::load();
    let dir = scratch("activation");
    let gw = Gateway::start(&stack, &dir, "gw");
    let port = free_port();
    let conf = dir.join("lb.conf");
    let etc = stack.get("UCLOUD_IM_ETC");
    std::fs::write(
        &conf,
        format!(
            "certificate = {etc}/lb/tls.pem {etc}/lb/tls.key\n[backend unix]\naddress = {}\n\
             proxy_protocol = yes\n",
            gw.address()
        ),
    )
    .unwrap();
    // No `listen =`: the socket comes from LISTEN_FDS, like a .socket unit gives it
    // (setpriv execs, so LISTEN_PID names the balancer).
    let mut lb = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}")])
        .args(as_balancer())
        .arg(stack.bin("ucloud-lb"))
        .args(["--config", conf.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (code, body) = curl(&stack, &format!("https://127.0.0.1:{port}{HEALTH}"), &[]);
    let _ = lb.kill();
    let _ = lb.wait();
    assert_eq!(code, 200, "{body}");
}

/// A PROXY v2 header naming `client` (TCP over IPv4), as a forger would write it.
fn forged_header(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// Sends `bytes` to the unix socket `sock` through socat run by `runner` (a
/// command prefix that switches account); what came back, and socat's errors.
fn socat_as(runner: &[String], sock: &str, bytes: &[u8]) -> (Output, String) {
    let mut child = Command::new(&runner[0])
        .args(&runner[1..])
        .args(["socat", "-t", "3", "-"])
        .arg(format!("UNIX-CONNECT:{sock}"))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("socat");
    let _ = child.stdin.take().unwrap().write_all(bytes);
    let out = child.wait_with_output().unwrap();
    let errors = text(&out.stderr);
    (out, errors)
}

/// The attack: a local account that is not the balancer connects to the gateway's
/// balancer-facing socket and sends a PROXY header naming a client of its choosing,
/// to put a false address into the gateway's log. The kernel refuses it the socket
/// (mode 0660, group ucloud-lb); an account that gets past the mode (root, here)
/// is refused by the gateway's peer check before it reads a byte; and the log holds
/// no forged address. The balancer's own account without a header is closed too.
#[test]
fn only_the_balancer_may_send_the_gateway_a_proxy_header() {
    let stack = Stack::load();
    let addr = stack.get("UCLOUD_IM_GATEWAY_LB_ADDR");
    let sock = addr
        .strip_prefix("unix:")
        .unwrap_or_else(|| panic!("the balancer-facing socket {addr} is not a unix socket"));
    let log = Path::new(&stack.get("UCLOUD_IM_STACK_LOGS")).join("gateway-lb.log");
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let mut forged = forged_header([203, 0, 113, 66], 4444);
    forged.extend_from_slice(
        format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    // A local person: the kernel says no.
    let alice = stack.local_of("AliceHansen#1001");
    let runner: Vec<String> = ["runuser", "-u", &alice, "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (out, errors) = socat_as(&runner, sock, &forged);
    assert!(
        !out.status.success() && errors.contains("Permission denied"),
        "{alice} reached the balancer-facing socket: {errors} {}",
        text(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    // Past the file mode: the gateway checks who the peer is and closes unread.
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(&forged);
    let mut answer = Vec::new();
    // Closing with the request unread may reset the connection: closed all the same.
    if let Err(e) = s.read_to_end(&mut answer) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "the gateway must close at once: {e}"
        );
    }
    assert!(
        answer.is_empty(),
        "answered a forged header: {}",
        text(&answer)
    );
    // The balancer's account without a header: closed unanswered.
    let health = format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (out, errors) = socat_as(&as_balancer(), sock, health.as_bytes());
    assert!(
        out.stdout.is_empty(),
        "answered without a header: {}",
        text(&out.stdout)
    );
    assert!(!errors.contains("Permission denied"), "{errors}");
    let deadline = Instant::now() + Duration::from_secs(3);
    let logged = loop {
        let all = std::fs::read_to_string(&log).unwrap_or_default();
        let logged = all.get(before..).unwrap_or_default().to_string();
        if logged.contains("the peer is uid 0")
            && logged.contains("does not start with a PROXY v2 header")
        {
            break logged;
        }
        assert!(
            Instant::now() < deadline,
            "no log line for the refused connections in {}:\n{logged}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !logged.contains("203.0.113.66"),
        "the forged address reached the log:\n{logged}"
    );
}

/// A gateway run for a TCP socket with --proxy-protocol believes no header at all:
/// a TCP peer proves nothing about who it is.
#[test]
fn a_gateway_behind_tcp_believes_no_proxy_header() {
    let stack = Stack::load();
    let dir = scratch("tcp-proxy");
    let port = free_port();
    let log = dir.join("gw.log");
    let user = stack.get("UCLOUD_IM_GATEWAY_USER");
    let mut gw = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--inetd",
            "-a",
            "setpriv",
        ])
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg("--bounding-set=-all,+setuid,+setgid,+setpcap")
        .arg(stack.bin("ucloud-gateway"))
        .arg("--proxy-protocol")
        .current_dir("/")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "no gateway on {port}");
        std::thread::sleep(Duration::from_millis(20));
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut forged = forged_header([203, 0, 113, 66], 4444);
    forged.extend_from_slice(
        format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let _ = s.write_all(&forged);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let deadline = Instant::now() + Duration::from_secs(3);
    let logged = loop {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.contains("only over a unix socket") || Instant::now() > deadline {
            break logged;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = gw.kill();
    let _ = gw.wait();
    assert!(answer.is_empty(), "answered over TCP: {}", text(&answer));
    assert!(logged.contains("only over a unix socket"), "{logged}");
    assert!(!logged.contains("203.0.113.66"), "{logged}");
}

/// An `openssl s_client -quiet` to `port` that sends what the test writes to its
/// stdin and prints what comes back; it exits when the balancer closes.
fn tls_client(stack: &Stack, port: u16) -> Child {
    Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-CAfile", &stack.get("UCLOUD_IM_CA")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client")
}

fn exited_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.try_wait().unwrap().is_some()
}

fn output_of(child: Child) -> String {
    text(&child.wait_with_output().unwrap().stdout)
}

/// The attack of one client on every gateway: connections that hold a gateway
/// without a request (idle after the handshake, or dripping a head), and requests
/// beyond any fair share. None of them holds a gateway for long or leaves another
/// client without one; the limits come from lb.conf.
#[test]
fn one_client_cannot_hold_every_gateway() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("share");
    let gw = Gateway::start(&stack, &dir, "gw");
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(
            &stack,
            p,
            m,
            "request_timeout = 1.5\nidle_timeout = 3\nmax_backend_per_client = 3\nqueue_timeout = 0.5",
            &[("gw", gw.address(), "max_connections = 6")],
        )
    });
    let active = "ucloud_lb_backend_connections_active{backend=\"gw\"}";
    // Ten connections from one address: five idle after the handshake, five
    // dripping a request head one byte at a time.
    let mut idle: Vec<Child> = (0..10).map(|_| tls_client(&stack, lb.port)).collect();
    let drippers: Vec<_> = idle
        .iter_mut()
        .skip(5)
        .map(|c| c.stdin.take().unwrap())
        .collect();
    let drip = std::thread::spawn(move || {
        let mut drippers = drippers;
        let head = b"GET /ucloud-im/health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for b in head.iter().chain(b"a".repeat(40).iter()) {
            for d in drippers.iter_mut() {
                let _ = d.write_all(&[*b]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        lb.metric(active),
        0,
        "connections without a complete request hold a gateway\n{}",
        lb.log_text()
    );
    let (code, body) = curl(&stack, &lb.url(HEALTH), &["--interface", "127.0.0.2"]);
    assert_eq!(code, 200, "{body}\n{}", lb.log_text());
    // All ten are answered 408 and closed at the request deadline, dripping or not.
    for (k, mut c) in idle.into_iter().enumerate() {
        assert!(
            exited_within(&mut c, Duration::from_secs(4)),
            "connection {k} still open past request_timeout"
        );
        let out = output_of(c);
        assert!(out.contains("HTTP/1.1 408"), "connection {k}: {out:?}");
    }
    let _ = drip.join();
    assert!(lb.metric("ucloud_lb_request_timeouts_total") >= 10);
    // Five keep-alive requests from one address: three get a gateway (its share),
    // the others wait queue_timeout and are answered 502 BUSY.
    let mut kept: Vec<Child> = (0..5)
        .map(|_| {
            let mut c = tls_client(&stack, lb.port);
            c.stdin
                .as_mut()
                .unwrap()
                .write_all(format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lb.metric(active), 3, "{}", lb.log_text());
    assert_eq!(lb.metric("ucloud_lb_busy_total"), 2, "{}", lb.log_text());
    // Another client is served meanwhile: the gateway kept places for others.
    let (code, body) = curl(&stack, &lb.url(HEALTH), &["--interface", "127.0.0.2"]);
    assert_eq!(code, 200, "{body}\n{}", lb.log_text());
    // The held ones go at the idle deadline, and their places with them.
    let mut answers = Vec::new();
    for (k, mut c) in kept.drain(..).enumerate() {
        assert!(
            exited_within(&mut c, Duration::from_secs(6)),
            "kept-alive connection {k} still open past idle_timeout"
        );
        answers.push(output_of(c));
    }
    let ok = answers
        .iter()
        .filter(|a| a.contains("HTTP/1.1 200"))
        .count();
    let busy = answers
        .iter()
        .filter(|a| a.contains("HTTP/1.1 502") && a.contains("\"BUSY\""))
        .count();
    assert_eq!((ok, busy), (3, 2), "{answers:?}");
    assert_eq!(lb.metric(active), 0);
    assert!(lb.metric("ucloud_lb_idle_timeouts_total") >= 3);
}

/// The attack on a gateway: a keep-alive connection asking for the token-free
/// health check again and again, through the balancer. Only requests with a
/// credential extend a gateway connection's life, so the gateway closes it at its
/// --idle-timeout (the unit's ExecStart=) all the same, and the balancer with it.
#[test]
fn token_free_requests_do_not_keep_a_gateway_connection_open() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("tokenfree");
    let gw = Gateway::start_with(&stack, &dir, "gw", &["--idle-timeout", "2"]);
    let lb = Lb::start(&stack, &dir, |p, m| {
        lb_config(&stack, p, m, "", &[("gw", gw.address(), "")])
    });
    let mut client = tls_client(&stack, lb.port);
    let mut input = client.stdin.take().unwrap();
    let mut output = client.stdout.take().unwrap();
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = output.read_to_end(&mut all);
        (started.elapsed(), text(&all))
    });
    let request = format!("GET {HEALTH} HTTP/1.1\r\nHost: x\r\n\r\n");
    while started.elapsed() < Duration::from_secs(8) && !reader.is_finished() {
        if input.write_all(request.as_bytes()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(input);
    let _ = client.kill();
    let _ = client.wait();
    let (closed, answers) = reader.join().unwrap();
    let ok = answers.matches("HTTP/1.1 200").count();
    assert!(ok >= 3, "{ok} answers: {answers}");
    assert!(
        closed >= Duration::from_millis(1800) && closed < Duration::from_secs(6),
        "health checks every 0.3 s kept the connection open for {closed:?}: {ok} answers"
    );
}
