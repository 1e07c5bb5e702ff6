//! Clients that misbehave or come in crowds: they do not affect others, cannot hold
//! every gateway, and a burst from one address is still admitted.

use super::*;

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
