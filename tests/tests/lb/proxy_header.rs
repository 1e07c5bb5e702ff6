//! The PROXY header: only the balancer may send one to the gateway, and a gateway
//! behind TCP believes none.

use super::*;

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
