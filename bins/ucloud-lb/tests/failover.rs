//! Two login hosts behind ucloud-lb, one of which fails under load: its processes
//! killed (connects refused, open connections closed), or its link down (connects
//! and open connections hang). No new connection may fail while the other host is
//! up, and with `on_marked_down = close` the clients of the failed host get their
//! connections closed (and reconnect) instead of hanging.
//!
//! The hosts are small HTTP servers in this process; the balancer is the built
//! binary; the certificate comes from `openssl` (as scripts/bench-lb-relay makes it).

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The tests load two cores: one at a time, so that their timing means something.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const SERVING: u8 = 0;
const KILLED: u8 = 1;
/// Its link is down: nothing is accepted or answered, nothing is closed.
const CUT_OFF: u8 = 2;
/// Answers one request per connection, then closes it when the next comes,
/// without reading it (as a process that goes away would: the kernel resets).
const ONE_PER_CONNECTION: u8 = 3;

/// A login host: answers every request with its name, keep-alive.
struct Host {
    name: &'static str,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Requests it read and never answered: the only ones a failure may lose.
    unanswered: Arc<AtomicUsize>,
    /// Connections that fill its accept queue once it is cut off.
    queue_fill: Vec<TcpStream>,
}

impl Host {
    fn start(name: &'static str) -> Host {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let mode = Arc::new(AtomicU8::new(SERVING));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let unanswered = Arc::new(AtomicUsize::new(0));
        let (m, o, u) = (mode.clone(), open.clone(), unanswered.clone());
        std::thread::spawn(move || loop {
            match m.load(Relaxed) {
                // Dropping the listener: connects are refused from now on.
                KILLED => return,
                CUT_OFF => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                _ => {}
            }
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    // Kept to close on a kill; a connection closed by its own thread
                    // must have no other copy.
                    if m.load(Relaxed) != ONE_PER_CONNECTION {
                        o.lock().unwrap().push(s.try_clone().unwrap());
                    }
                    let (m, u) = (m.clone(), u.clone());
                    std::thread::spawn(move || serve(name, s, &m, &u));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        });
        Host {
            name,
            addr,
            mode,
            open,
            unanswered,
            queue_fill: Vec::new(),
        }
    }

    /// Its processes die: the listener goes, and the kernel closes every open
    /// connection (a FIN, or a reset when a request waits unread in it).
    fn kill(&self) {
        self.mode.store(KILLED, Relaxed);
        self.open.lock().unwrap().clear();
    }

    /// Its link goes down: connects hang (the accept queue is full, so the kernel
    /// drops new SYNs, as it would never see them), open connections get nothing.
    fn cut_off(&mut self) {
        self.mode.store(CUT_OFF, Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        loop {
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)) {
                Ok(s) => self.queue_fill.push(s),
                Err(_) => break,
            }
            assert!(
                self.queue_fill.len() < 10_000,
                "the accept queue never fills"
            );
        }
    }
}

fn serve(name: &str, mut s: TcpStream, mode: &AtomicU8, unanswered: &AtomicUsize) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Short, so that a kill closes the socket (dropped on return) within it.
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if mode.load(Relaxed) == KILLED {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        got.extend_from_slice(&buf[..n]);
        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            got.drain(..end + 4);
            // Cut off: the request is lost on the way, the answer never comes.
            while mode.load(Relaxed) == CUT_OFF {
                std::thread::sleep(Duration::from_millis(10));
            }
            if mode.load(Relaxed) == KILLED {
                unanswered.fetch_add(1, Relaxed);
                return;
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
            if mode.load(Relaxed) == ONE_PER_CONNECTION {
                s.set_read_timeout(None).unwrap();
                let _ = s.peek(&mut [0u8; 1]);
                // The whole request in, unread: closing now resets.
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a P-256 certificate for 127.0.0.1: `(ca, cert, key)`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(f);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "1", "-subj", "/CN=test-ca", "-keyout"])
            .args([p("ca.key"), "-out".into(), p("ca.pem")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign"]),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-new"])
            .args(ec)
            .args(["-subj", "/CN=127.0.0.1", "-keyout"])
            .args([p("tls.key"), "-out".into(), p("tls.csr")]),
    );
    std::fs::write(
        p("tls.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-in"])
            .args([p("tls.csr"), "-CA".into(), p("ca.pem"), "-CAkey".into()])
            .args([p("ca.key"), "-CAcreateserial".into(), "-extfile".into()])
            .args([p("tls.ext"), "-out".into(), p("tls.pem")]),
    );
    (p("ca.pem"), p("tls.pem"), p("tls.key"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Lb {
    port: u16,
    metrics: u16,
    log: PathBuf,
    child: Child,
    tls: Arc<ClientConfig>,
}

impl Lb {
    /// `backends`: (name, host, extra lines of its section).
    fn start(dir: &Path, global: &str, backends: &[(&Host, &str)]) -> Lb {
        let (ca, cert, key) = certificate(dir);
        let (port, metrics) = (free_port(), free_port());
        let mut conf = format!(
            "listen = 127.0.0.1:{port}\nmetrics = 127.0.0.1:{metrics}\n\
             certificate = {} {}\nhealth_path = /health\nhealth_interval = 0.2\n\
             health_timeout = 0.3\nhealth_fall = 2\nhealth_rise = 1\nconnect_timeout = 0.3\n\
             {global}\n",
            cert.display(),
            key.display()
        );
        for (host, extra) in backends {
            conf += &format!(
                "[backend {}]\naddress = {}\n{extra}\n",
                host.name, host.addr
            );
        }
        let path = dir.join("lb.conf");
        std::fs::write(&path, conf).unwrap();
        let log = dir.join("lb.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ucloud-lb"))
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ucloud-lb");
        let lb = Lb {
            port,
            metrics,
            log,
            child,
            tls: ucloud_http::tls::client_config(&ca).unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", metrics)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ucloud-lb did not come up\n{}",
                lb.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lb
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> std::io::Result<Client> {
        let sock = TcpStream::connect(("127.0.0.1", self.port))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = ClientConnection::new(self.tls.clone(), name).map_err(std::io::Error::other)?;
        Ok(Client {
            s: StreamOwned::new(tls, sock),
        })
    }

    fn metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    s: StreamOwned<ClientConnection, TcpStream>,
}

impl Client {
    /// One request; the name of the host that answered.
    fn get(&mut self) -> std::io::Result<String> {
        self.s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("bad answer {head:?}")))?;
                if got.len() >= end + 4 + len {
                    if !head.starts_with("HTTP/1.1 200") {
                        return Err(std::io::Error::other(head));
                    }
                    return Ok(String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into());
                }
            }
            match self.s.read(&mut buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Requests that failed on a connection made before the failure.
    old_failed: AtomicUsize,
    /// Requests that failed on a connection made after it: none may.
    new_failed: Mutex<Vec<String>>,
    /// Requests that waited out the client's 5 s read timeout.
    hung: AtomicUsize,
    /// Answers from the failed host after it failed.
    from_failed: AtomicUsize,
    /// Connections lost on a host: time from the failure until the client knew.
    noticed: Mutex<Vec<Duration>>,
}

/// `clients` keep-alive clients, each reconnecting when its connection ends, until
/// `stop`; `failed` is when the failure happened (None before).
fn load(
    lb: &Arc<Lb>,
    clients: usize,
    stop: &Arc<AtomicBool>,
    failed: &Arc<Mutex<Option<(Instant, &'static str)>>>,
    tally: &Arc<Tally>,
) -> Vec<JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (lb, stop, failed, tally) =
                (lb.clone(), stop.clone(), failed.clone(), tally.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let made = Instant::now();
                    let mut c = match lb.client() {
                        Ok(c) => c,
                        Err(e) => {
                            tally
                                .new_failed
                                .lock()
                                .unwrap()
                                .push(format!("connect: {e}"));
                            continue;
                        }
                    };
                    while !stop.load(Relaxed) {
                        let fail = *failed.lock().unwrap();
                        match c.get() {
                            Ok(host) => {
                                tally.ok.fetch_add(1, Relaxed);
                                if fail.is_some_and(|(_, name)| name == host) {
                                    tally.from_failed.fetch_add(1, Relaxed);
                                }
                            }
                            Err(e) => {
                                let now = *failed.lock().unwrap();
                                match now {
                                    Some((at, _)) if made > at => {
                                        tally.new_failed.lock().unwrap().push(e.to_string())
                                    }
                                    Some((at, _)) => {
                                        tally.old_failed.fetch_add(1, Relaxed);
                                        tally.noticed.lock().unwrap().push(at.elapsed());
                                    }
                                    None => tally
                                        .new_failed
                                        .lock()
                                        .unwrap()
                                        .push(format!("before the failure: {e}")),
                                }
                                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                                    tally.hung.fetch_add(1, Relaxed);
                                }
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("ucloud-lb-failover-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs 8 clients for a second, fails host `a` with `fail`, runs 3 s more.
fn fail_under_load(name: &str, fail: impl FnOnce(&mut Host)) -> (Arc<Tally>, Arc<Lb>) {
    let _serial = serial();
    let dir = scratch(name);
    let (mut a, b) = (Host::start("a"), Host::start("b"));
    let lb = Arc::new(Lb::start(&dir, "", &[(&a, ""), (&b, "")]));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(Mutex::new(None));
    let tally = Arc::new(Tally::default());
    let clients = load(&lb, 8, &stop, &failed, &tally);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        lb.metric("ucloud_lb_backend_connections_active{backend=\"a\"}") > 0,
        "host a has no clients before it fails"
    );
    *failed.lock().unwrap() = Some((Instant::now(), "a"));
    fail(&mut a);
    let before = tally.ok.load(Relaxed);
    std::thread::sleep(Duration::from_millis(3000));
    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let after = tally.ok.load(Relaxed) - before;
    assert!(after > 100, "too little load after the failure: {after}");
    let new_failed = tally.new_failed.lock().unwrap();
    assert!(
        new_failed.is_empty(),
        "{} request(s) on connections made after the failure failed: {:?}\n{}",
        new_failed.len(),
        &new_failed[..new_failed.len().min(5)],
        lb.log_text()
    );
    // A client loses at most the request it had on host a when it failed, and
    // only if host a had read it.
    let old = tally.old_failed.load(Relaxed);
    assert!(old <= 8, "{old} requests failed on old connections");
    let read = a.unanswered.load(Relaxed);
    if name == "killed" {
        assert!(
            old <= read,
            "{old} requests lost, host a read only {read} of them\n{}",
            lb.log_text()
        );
    }
    assert_eq!(
        tally.hung.load(Relaxed),
        0,
        "a client waited out its timeout"
    );
    assert_eq!(lb.metric("ucloud_lb_backend_up{backend=\"a\"}"), 0);
    eprintln!(
        "{name}: {} requests, {after} after the failure; {old} lost on host a's \
         connections (it read {read} it never answered), noticed after {:?}; {} \
         answered by a after the failure",
        tally.ok.load(Relaxed),
        tally.noticed.lock().unwrap(),
        tally.from_failed.load(Relaxed)
    );
    drop(new_failed);
    drop(b);
    (tally, lb)
}

#[test]
fn a_host_whose_processes_are_killed_fails_no_new_connection() {
    fail_under_load("killed", |a| a.kill());
}

#[test]
fn a_host_whose_link_goes_down_is_cut_and_its_clients_move_to_the_other() {
    let (tally, lb) = fail_under_load("cut-off", |a| a.cut_off());
    // Marked down after two checks (0.2 s apart, 0.3 s each), then cut within the
    // relay's half-second tick: far inside the clients' 5 s.
    for t in tally.noticed.lock().unwrap().iter() {
        assert!(*t < Duration::from_millis(2500), "noticed after {t:?}");
    }
    assert!(lb.metric("ucloud_lb_backend_cut_total{backend=\"a\"}") > 0);
    assert!(
        lb.log_text().contains("on_marked_down = close"),
        "{}",
        lb.log_text()
    );
}

#[test]
fn with_on_marked_down_keep_a_connection_to_a_cut_off_host_stays() {
    let _serial = serial();
    let dir = scratch("keep");
    let (mut a, b) = (Host::start("a"), Host::start("b"));
    // b takes nothing new, so the client lands on a.
    let lb = Lb::start(
        &dir,
        "on_marked_down = keep",
        &[(&a, ""), (&b, "drain = yes")],
    );
    let mut c = lb.client().unwrap();
    assert_eq!(c.get().unwrap(), "a");
    a.cut_off();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lb.metric("ucloud_lb_backend_up{backend=\"a\"}") != 0 {
        assert!(
            Instant::now() < deadline,
            "a never marked down\n{}",
            lb.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    c.s.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let e = c.get().unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the connection ended: {e}"
    );
    assert_eq!(lb.metric("ucloud_lb_backend_cut_total{backend=\"a\"}"), 0);
}

#[test]
fn a_request_a_keep_alive_backend_never_read_goes_to_the_other() {
    let _serial = serial();
    let dir = scratch("unread");
    let (a, b) = (Host::start("a"), Host::start("b"));
    for h in [&a, &b] {
        h.mode.store(ONE_PER_CONNECTION, Relaxed);
    }
    let lb = Lb::start(&dir, "", &[(&a, ""), (&b, "")]);
    let mut c = lb.client().unwrap();
    let first = c.get().unwrap();
    // The first host resets the connection with the request unread: the same
    // client connection gets its answer from the other.
    let second = c.get().unwrap_or_else(|e| panic!("{e}\n{}", lb.log_text()));
    assert_ne!(first, second);
    assert!(
        lb.log_text()
            .contains("went away without reading a request"),
        "{}",
        lb.log_text()
    );
    // Not a sign of a dead backend: both stay in rotation.
    assert_eq!(
        lb.metric(&format!("ucloud_lb_backend_up{{backend=\"{first}\"}}")),
        1
    );
}
