//! A balancer on another host than the gateway: the edge ucloud-lb reaches a relay
//! ucloud-lb on the gateway's host over mutual TLS (certificates from a site CA of
//! the test's own), and the relay hands each connection to the gateway's unix socket
//! with the client address the edge named. Real processes, real TLS, real clients
//! (curl, openssl s_client); the refusals are the attacks: a PROXY header from a
//! peer without the site's certificate must never reach the gateway's log.

use super::{manifest_through, run, scratch, serial, text, Gateway, Lb, LB_USER};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ucloud_im_tests::Stack;

/// What the attacks claim to be: it must never show in a gateway's log.
const FORGED: &str = "203.0.113.66";

fn ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

/// Waits until `what` holds of the file's text, for at most `secs`.
fn wait_for(file: &Path, secs: u64, what: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = std::fs::read_to_string(file).unwrap_or_default();
        if what(&t) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Test certificates (P-256) in `dir`: what a site makes once with its own CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// `NAME.pem` and `NAME.key`, a self-signed CA.
    fn ca(&self, name: &str) {
        ok(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .args(["-keyout", &self.path(&format!("{name}.key"))])
            .args(["-out", &self.path(&format!("{name}.pem"))]));
    }

    /// `NAME.pem` and `NAME.key` issued by `ca`, for `usage` (serverAuth with an IP
    /// 127.0.0.1 name, or clientAuth); the key readable by the balancer's group only.
    fn leaf(&self, name: &str, ca: &str, usage: &str) {
        let (key, csr) = (
            self.path(&format!("{name}.key")),
            self.path(&format!("{name}.csr")),
        );
        ok(Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes"])
            .args(["-subj", &format!("/CN={name}")])
            .args(["-keyout", &key, "-out", &csr]));
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        ok(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in", &csr])
            .args(["-CA", &self.path(&format!("{ca}.pem"))])
            .args(["-CAkey", &self.path(&format!("{ca}.key"))])
            .args(["-CAcreateserial", "-extfile", &ext])
            .args(["-out", &self.path(&format!("{name}.pem"))]));
        ok(Command::new("chown").args([&format!("root:{LB_USER}"), &key]));
        ok(Command::new("chmod").args(["0640", &key]));
    }

    /// The site CA with a relay (server) and an edge (client) certificate, and a
    /// rogue CA with the same two: what an attacker could make himself.
    fn site(dir: &Path) -> Pki {
        let pki = Pki::new(dir);
        for ca in ["site-ca", "rogue-ca"] {
            pki.ca(ca);
        }
        pki.leaf("relay", "site-ca", "serverAuth");
        pki.leaf("edge", "site-ca", "clientAuth");
        pki.leaf("rogue-relay", "rogue-ca", "serverAuth");
        pki.leaf("rogue-edge", "rogue-ca", "clientAuth");
        pki
    }
}

/// A balancer of these tests in `dir`, named `name`, without the stack's
/// certificate: the relay and the edge each bring their own.
fn balancer(stack: &Stack, dir: &Path, name: &str, config: &str) -> Lb {
    Lb::start_named(stack, dir, name, |port, metrics| {
        format!(
            "listen = 127.0.0.1:{port}\nmetrics = 127.0.0.1:{metrics}\n\
             health_interval = 0.3\nhealth_rise = 1\n{config}"
        )
    })
}

/// A relay in front of `backend` (a gateway's socket), taking balancers with a
/// certificate from the site CA.
fn relay(stack: &Stack, dir: &Path, pki: &Pki, cert: &str, backend: &str) -> Lb {
    let config = format!(
        "certificate = {0}.pem {0}.key\nclient_ca = {1}\n\
         [backend gateway]\naddress = {backend}\nproxy_protocol = yes\n",
        pki.path(cert),
        pki.path("site-ca.pem"),
    );
    balancer(stack, dir, &format!("relay-{cert}"), &config)
}

/// An edge balancer with the stack's public certificate, whose one backend is the
/// relay on `port`, reached with the site's client certificate.
fn edge(stack: &Stack, dir: &Path, pki: &Pki, port: u16, extra: &str) -> Lb {
    let etc = stack.get("UCLOUD_IM_ETC");
    let config = format!(
        "certificate = {etc}/lb/tls.pem {etc}/lb/tls.key\n\
         [backend relay]\naddress = 127.0.0.1:{port}\nproxy_protocol = yes\n\
         tls_ca = {ca}\ntls_certificate = {cert}.pem {cert}.key\n{extra}\n",
        ca = pki.path("site-ca.pem"),
        cert = pki.path("edge"),
    );
    balancer(stack, dir, &format!("edge-{port}"), &config)
}

/// curl through the edge from the loopback address `from`: (status, body).
fn curl(stack: &Stack, port: u16, from: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--interface", from])
        .args(["--cacert", &stack.get("UCLOUD_IM_CA")])
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}")));
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    match code.trim().parse() {
        Ok(0) | Err(_) => (0, format!("curl: {}", text(&out.stderr).trim())),
        Ok(code) => (code, body.to_string()),
    }
}

/// A PROXY v2 header naming `FORGED` as the client, then a request.
fn forged_request() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 66, 127, 0, 0, 1]);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h.extend_from_slice(b"GET /forged/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    h
}

/// openssl s_client to the relay on `port` that sends `forged_request()`, with
/// `args` (a client certificate, or none); what it printed.
fn s_client(pki: &Pki, port: u16, args: &[String]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-CAfile", &pki.path("site-ca.pem"), "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&forged_request())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

#[test]
fn the_gateway_sees_the_real_client_through_edge_relay_and_unix_socket() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("remote-chain");
    let pki = Pki::site(&dir);
    let gw = Gateway::start(&stack, &dir, "gw");
    let relay = relay(
        &stack,
        &dir,
        &pki,
        "relay",
        &format!("unix:{}", gw.sock.display()),
    );
    let edge = edge(&stack, &dir, &pki, relay.port, "");
    // A client the edge sees at 127.0.0.5, the relay sees the edge (127.0.0.1).
    let (code, body) = curl(&stack, edge.port, "127.0.0.5", "/ucloud-im/health", &[]);
    assert_eq!(
        code,
        200,
        "{body}\nedge:\n{}\nrelay:\n{}",
        edge.log_text(),
        relay.log_text()
    );
    let (code, _) = curl(&stack, edge.port, "127.0.0.5", "/no/such/call", &[]);
    assert!((400..500).contains(&code), "{code}");
    let log = wait_for(&gw.log, 5, |t| t.contains("/no/such/call"));
    let line = log
        .lines()
        .find(|l| l.contains("/no/such/call"))
        .unwrap_or_else(|| panic!("the gateway logged no request:\n{log}"));
    assert!(line.contains("client=127.0.0.5:"), "{line}");
    // A real call, token-checked and dispatched, through both balancers.
    let url = format!("https://127.0.0.1:{}", edge.port);
    manifest_through(&stack, &url);
    let log = wait_for(&gw.log, 5, |t| {
        t.contains("integration.retrieveManifest 200")
    });
    assert!(
        log.lines()
            .any(|l| l.contains("integration.retrieveManifest 200")
                && l.contains("client=127.0.0.1:")),
        "{log}"
    );
    // The edge's health checks pass through the relay as the balancers' own
    // (LOCAL), which the relay takes without a complaint.
    assert!(
        !relay.log_text().contains("refused"),
        "{}",
        relay.log_text()
    );
}

/// A backend that answers every request with `size` bytes, or, for a body sent to
/// it, with the number of bytes it read: enough to push data both ways.
fn bulk_backend(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { return };
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let head_end = loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
                // The relay's PROXY header (28 bytes for IPv4) comes first.
                if let Some(i) = got.windows(4).skip(28).position(|w| w == b"\r\n\r\n") {
                    break i + 28 + 4;
                }
            };
            let head = text(&got[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let reply = match length {
                Some(len) => {
                    let mut read = got.len() - head_end;
                    while read < len {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                    }
                    let body = read.to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes()
                }
                None => {
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 24 << 20)
                        .into_bytes();
                    r.extend((0..24u32 << 20).map(|i| (i % 251) as u8));
                    r
                }
            };
            let _ = s.write_all(&reply);
            let _ = s.shutdown(Shutdown::Write);
        });
    }
}

#[test]
fn bulk_data_crosses_the_mutual_tls_hop_both_ways() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("remote-bulk");
    let pki = Pki::site(&dir);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || bulk_backend(listener));
    let relay = relay(&stack, &dir, &pki, "relay", &backend);
    let edge = edge(&stack, &dir, &pki, relay.port, "");
    let out = dir.join("down");
    let (code, _) = curl(
        &stack,
        edge.port,
        "127.0.0.1",
        "/big",
        &["-o", out.to_str().unwrap()],
    );
    assert_eq!(
        code,
        200,
        "edge:\n{}\nrelay:\n{}",
        edge.log_text(),
        relay.log_text()
    );
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), 24 << 20);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8),
        "the bytes changed"
    );
    let up = dir.join("up");
    std::fs::write(&up, vec![7u8; 16 << 20]).unwrap();
    let (code, body) = curl(
        &stack,
        edge.port,
        "127.0.0.1",
        "/upload",
        &[
            "--data-binary",
            &format!("@{}", up.display()),
            "-H",
            "Expect:",
        ],
    );
    assert_eq!(
        (code, body.as_str()),
        (200, "16777216"),
        "{}",
        edge.log_text()
    );
}

#[test]
fn a_header_from_a_peer_without_the_site_certificate_is_not_believed() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("remote-refuse");
    let pki = Pki::site(&dir);
    let gw = Gateway::start(&stack, &dir, "gw");
    let relay = relay(
        &stack,
        &dir,
        &pki,
        "relay",
        &format!("unix:{}", gw.sock.display()),
    );
    let cert = |name: &str| {
        vec![
            "-cert".to_string(),
            pki.path(&format!("{name}.pem")),
            "-key".to_string(),
            pki.path(&format!("{name}.key")),
        ]
    };
    // TLS without a client certificate.
    let said = s_client(&pki, relay.port, &[]);
    assert!(!said.contains("HTTP/1.1"), "{said}");
    let log = wait_for(&relay.log, 5, |t| t.contains("no certificates"));
    assert!(
        log.contains("TLS handshake failed: peer sent no certificates"),
        "{log}"
    );
    // TLS with a certificate the attacker issued himself.
    let said = s_client(&pki, relay.port, &cert("rogue-edge"));
    assert!(!said.contains("HTTP/1.1"), "{said}");
    let log = wait_for(&relay.log, 5, |t| t.contains("UnknownIssuer"));
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    // Plain TCP, the header first as the gateway's socket once took it.
    let mut plain = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain.write_all(&forged_request()).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!text(&answer).contains("HTTP/1.1"), "{}", text(&answer));
    let log = wait_for(&relay.log, 5, |t| {
        t.matches("TLS handshake failed").count() >= 3
    });
    assert_eq!(log.matches("TLS handshake failed").count(), 3, "{log}");
    assert!(
        log.contains("a relay serves only balancers with a certificate"),
        "{log}"
    );
    // Nothing of the three reached the gateway.
    std::thread::sleep(Duration::from_millis(300));
    let seen = gw.log_text();
    assert!(
        !seen.contains(FORGED) && !seen.contains("/forged/path"),
        "{seen}"
    );
    // The control: the same bytes with the site's certificate are believed, so the
    // checks above could fail.
    let said = s_client(&pki, relay.port, &cert("edge"));
    assert!(said.contains("HTTP/1.1 4"), "{said}\n{}", relay.log_text());
    let seen = wait_for(&gw.log, 5, |t| t.contains("/forged/path"));
    assert!(seen.contains(&format!("client={FORGED}:40000")), "{seen}");
}

#[test]
fn the_edge_refuses_a_relay_whose_certificate_does_not_verify() {
    let _serial = serial();
    let stack = Stack::load();
    let dir = scratch("remote-verify");
    let pki = Pki::site(&dir);
    let gw = Gateway::start(&stack, &dir, "gw");
    let backend = format!("unix:{}", gw.sock.display());
    // A relay with a certificate from another CA: whoever answers on that address.
    let rogue = relay(&stack, &dir, &pki, "rogue-relay", &backend);
    let edge1 = edge(&stack, &dir, &pki, rogue.port, "");
    let (code, body) = curl(&stack, edge1.port, "127.0.0.1", "/no/such/call", &[]);
    assert_eq!(code, 502, "{body}");
    let log = wait_for(&edge1.log, 5, |t| t.contains("UnknownIssuer"));
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "{log}"
    );
    // The site's relay under a name its certificate does not carry.
    let good = relay(&stack, &dir, &pki, "relay", &backend);
    let edge2 = edge(&stack, &dir, &pki, good.port, "tls_name = gw9.site.example");
    let (code, body) = curl(&stack, edge2.port, "127.0.0.1", "/no/such/call", &[]);
    assert_eq!(code, 502, "{body}");
    let wrong = "certificate not valid for name \"gw9.site.example\"";
    let log = wait_for(&edge2.log, 5, |t| t.contains(wrong));
    assert!(log.contains(wrong), "{log}");
    assert!(
        !gw.log_text().contains("/no/such/call"),
        "{}",
        gw.log_text()
    );
}
