//! Backends coming and going: a killed gateway leaves the rotation without failing a
//! request, a drained one takes no new connections, none up is a 502; sockets from
//! the service manager and a unix socket backend.

use super::*;

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
    // systemd-socket-activate binds after it is spawned: wait for the socket, not
    // for the balancer (which takes it over, already listening).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, body) = curl(&stack, &format!("https://127.0.0.1:{port}{HEALTH}"), &[]);
    let _ = lb.kill();
    let _ = lb.wait();
    assert_eq!(code, 200, "{body}");
}
