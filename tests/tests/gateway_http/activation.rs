//! How the gateway is started: on pipes without the privilege to run the
//! dispatcher, and with its connection on fd 3 (LISTEN_FDS).

use super::*;

/// Runs the installed gateway inetd-style on pipes, with extra `setpriv` options.
fn gateway_on_pipes(stack: &Stack, setpriv: &[&str], request: &[u8]) -> std::process::Output {
    let mut child = Command::new("setpriv")
        .args(setpriv)
        .arg(stack.bin("ucloud-gateway"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run setpriv ucloud-gateway");
    child.stdin.take().unwrap().write_all(request).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn no_new_privs_is_reported_as_misconfigured() {
    let stack = Stack::load();
    let out = gateway_on_pipes(&stack, &["--no-new-privs"], &get("/ucloud-im/health", ""));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP/1.1 500 "), "{stdout}");
    assert!(
        stdout.contains("\"errorCode\":\"MISCONFIGURED\""),
        "{stdout}"
    );
    assert!(stdout.contains("no_new_privs is set"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remove NoNewPrivileges="), "{stderr}");
    // The same binary without the flag is healthy (the check is not always on).
    let out = gateway_on_pipes(&stack, &[], &get("/ucloud-im/health", ""));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200 "));
}

#[test]
fn listen_fds_mode_serves_the_connection_on_fd_3() {
    let stack = Stack::load();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    // Without --inetd, systemd-socket-activate passes the connection as fd 3 with
    // LISTEN_FDS=1 and LISTEN_PID, as a socket unit with Accept=yes does.
    let mut activator = Command::new("systemd-socket-activate")
        .args(["-l", &addr, "-a"])
        .arg(stack.bin("ucloud-gateway"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run systemd-socket-activate");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("systemd-socket-activate never listened on {addr}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    conn.send(&get("/ucloud-im/health", ""));
    let first = conn.response();
    conn.send(&get("/ucloud-im/health", "Connection: close\r\n"));
    let second = conn.response();
    let closed = conn.closed();
    let _ = activator.kill();
    let _ = activator.wait();
    assert_eq!(first.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(second.status, 200);
    assert!(closed);
}
