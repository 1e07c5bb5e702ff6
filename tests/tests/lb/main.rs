//! ucloud-lb through real clients (curl, openssl s_client) to real gateways: the
//! stack's balancer in front of its balancer-facing gateway, and balancers these tests
//! start themselves in front of gateways they start (three ports, one killed; reloads;
//! hostile clients; nothing up).

mod backends;
mod hostile_clients;
mod lifecycle;
mod proxy_header;
mod remote;
mod tls;

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

/// A real, signed call of UCloud's through the balancer at `url`, answered by a
/// gateway behind it.
fn manifest_through(stack: &Stack, url: &str) {
    let out = run(Command::new(stack.bin("ucloud-sim"))
        .args(["call", "--url", url, "--ca", &stack.get("UCLOUD_IM_CA")])
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
}

/// A balancer-facing gateway socket (PROXY v2 required), like the stack's and
/// units/ucloud-gateway-lb.socket: a unix socket made by root and opened to the
/// balancer's group alone, one gateway as its account per connection.
struct Gateway {
    sock: PathBuf,
    log: PathBuf,
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
            log,
            child: Some(child),
        }
    }

    fn address(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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
        Lb::start_named(stack, dir, "lb", config)
    }

    /// One of several balancers in `dir`: its files are named after it.
    fn start_named(
        stack: &Stack,
        dir: &Path,
        name: &str,
        config: impl Fn(u16, u16) -> String,
    ) -> Lb {
        let (port, metrics) = (free_port(), free_port());
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config(port, metrics)).unwrap();
        let log = dir.join(format!("{name}.log"));
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
                "{name} did not start: {}",
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
