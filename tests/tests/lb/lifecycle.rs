//! Reloads under load lose nothing (and a bad file changes nothing); SIGTERM stops
//! accepting and waits for open connections.

use super::*;

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
