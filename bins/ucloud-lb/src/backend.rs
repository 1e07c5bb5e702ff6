//! The gateways: their live state (health, drain, weight, active connections,
//! counters), the choice of one for a new connection (weighted least-connections),
//! and connecting to it over TCP, a unix socket, or mutual TLS to a relay balancer
//! on a gateway's host.

use crate::config::{Address, BackendConfig, OnMarkedDown};
use crate::tls::Relayed;
use rustls::ClientConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bumped whenever the health checks mark a backend down: the relay looks for
/// connections to cut (`on_marked_down`) only when it has changed.
pub static MARKED_DOWN: AtomicU64 = AtomicU64::new(0);

pub struct Backend {
    pub name: String,
    pub address: Address,
    pub weight: AtomicU32,
    pub proxy_protocol: AtomicBool,
    pub drain: AtomicBool,
    /// Connections to it at once (`max_connections`).
    pub max_connections: AtomicU64,
    pub up: AtomicBool,
    /// Set when a reload removed it: its health checker stops.
    pub retired: AtomicBool,
    /// Consecutive health results: (successes, failures).
    streak: Mutex<(u32, u32)>,
    /// `on_marked_down = close`.
    pub cut_when_down: AtomicBool,
    /// How many times the health checks marked it down: a connection made before
    /// the latest is cut when `cut_when_down`.
    pub downs: AtomicU64,
    /// Connections closed because it was marked down.
    pub cut: AtomicU64,
    pub active: AtomicU64,
    pub connections: AtomicU64,
    pub connect_errors: AtomicU64,
    pub check_failures: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Mutual TLS to a relay (`tls_*` keys); replaced on reload with the files.
    tls: Mutex<Option<Arc<Relayed>>>,
}

impl Backend {
    pub fn new(c: &BackendConfig, tls: Option<Arc<Relayed>>) -> Backend {
        Backend {
            name: c.name.clone(),
            address: c.address.clone(),
            weight: AtomicU32::new(c.weight),
            proxy_protocol: AtomicBool::new(c.proxy_protocol),
            drain: AtomicBool::new(c.drain),
            max_connections: AtomicU64::new(c.max_connections as u64),
            // Up until proven otherwise, so a fresh start serves at once; the first
            // check runs immediately and a refused connect takes it out at once.
            up: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            streak: Mutex::new((0, 0)),
            cut_when_down: AtomicBool::new(c.on_marked_down == OnMarkedDown::Close),
            downs: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            active: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            tls: Mutex::new(tls),
        }
    }

    /// Takes the settings a reload may change.
    pub fn update(&self, c: &BackendConfig, tls: Option<Arc<Relayed>>) {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = tls;
        self.weight.store(c.weight, Relaxed);
        self.proxy_protocol.store(c.proxy_protocol, Relaxed);
        self.drain.store(c.drain, Relaxed);
        self.cut_when_down
            .store(c.on_marked_down == OnMarkedDown::Close, Relaxed);
        self.max_connections
            .store(c.max_connections as u64, Relaxed);
    }

    /// Whether it has a place for one more connection.
    pub fn has_room(&self) -> bool {
        self.active.load(Relaxed) < self.max_connections.load(Relaxed)
    }

    pub fn takes_new(&self) -> bool {
        self.up.load(Relaxed) && !self.drain.load(Relaxed) && self.weight.load(Relaxed) > 0
    }

    /// Records one check result (or a connect that timed out); `rise` successes in
    /// a row bring it up, `fall` failures take it down, and that counts as a down
    /// for `on_marked_down` even when a refused connect took it out before: only a
    /// run of failed checks says the host is gone, not one failed connection.
    /// Logs each change.
    pub fn record(&self, ok: bool, rise: u32, fall: u32, why: &str) {
        let mut streak = self.streak.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            *streak = (streak.0.saturating_add(1), 0);
        } else {
            *streak = (0, streak.1.saturating_add(1));
            self.check_failures.fetch_add(1, Relaxed);
        }
        let up = self.up.load(Relaxed);
        if !up && streak.0 >= rise {
            self.up.store(true, Relaxed);
            ucloud_wire::log_info!("ucloud-lb: backend {} ({}) is up", self.name, self.address);
        } else if !ok && streak.1 >= fall {
            *streak = (0, 0);
            drop(streak);
            self.set_down(why);
            self.downs.fetch_add(1, Relaxed);
            MARKED_DOWN.fetch_add(1, Relaxed);
        }
    }

    /// Passive detection: a refused or failed connect takes it out at once (nobody
    /// listens there); the health checker brings it back after `rise` good checks.
    pub fn mark_down(&self, why: &str) {
        *self.streak.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
        self.set_down(why);
    }

    fn set_down(&self, why: &str) {
        if self.up.swap(false, Relaxed) {
            ucloud_wire::log_err!(
                "ucloud-lb: backend {} ({}) is down: {why}",
                self.name,
                self.address
            );
        }
    }

    pub fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        match &self.address {
            Address::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, timeout)?;
                s.set_nodelay(true)?;
                let tls = self.tls.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match tls {
                    Some(relayed) => Ok(Stream::Tls(Box::new(TlsStream::handshake(
                        &relayed, s, timeout,
                    )?))),
                    None => Ok(Stream::Tcp(s)),
                }
            }
            Address::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
        }
    }
}

/// Weighted least-connections: the fewest active connections per unit of weight,
/// ties broken by rotating the starting point so equal backends share the load.
pub fn pick(backends: &[Arc<Backend>], skip: &[usize], turn: &AtomicUsize) -> Option<usize> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    let start = turn.fetch_add(1, Relaxed) % n;
    let mut best: Option<(usize, u64, u64)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let b = &backends[i];
        if skip.contains(&i) || !b.takes_new() || !b.has_room() {
            continue;
        }
        let (active, weight) = (b.active.load(Relaxed), u64::from(b.weight.load(Relaxed)));
        // active/weight < best_active/best_weight, without division.
        let better = match best {
            None => true,
            Some((_, ba, bw)) => (active + 1) * bw < (ba + 1) * weight,
        };
        if better {
            best = Some((i, active, weight));
        }
    }
    best.map(|(i, _, _)| i)
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and(s.set_write_timeout(t)),
            Stream::Tls(s) => s.sock.set_read_timeout(t).and(s.sock.set_write_timeout(t)),
        }
    }
    pub fn shutdown_write(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            // close_notify ends the stream; TCP stays open for the alert and anything
            // rustls still holds (`flush` sends it when the socket takes it).
            Stream::Tls(s) => {
                s.tls.send_close_notify();
                s.flush()
            }
        };
    }
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tls(s) => s.sock.set_nonblocking(true),
        }
    }
    /// The socket's pending error (SO_ERROR), cleared.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
            Stream::Tls(s) => s.sock.take_error(),
        }
    }
    /// Whether TLS output waits for the socket (only a TLS stream holds any).
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(s) if s.tls.wants_write())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    /// Sends the TLS output rustls holds; WouldBlock while a non-blocking socket is full.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
            Stream::Tls(s) => s.sock.as_fd(),
        }
    }
}

/// A TLS client connection to a relay over TCP, blocking or not. Unlike
/// `rustls::StreamOwned` it never reads the socket while plaintext waits and never
/// takes plaintext while earlier TLS output is stuck, so a non-blocking caller gets
/// WouldBlock exactly when the socket is what it waits for.
pub struct TlsStream {
    tls: ClientConnection,
    sock: TcpStream,
}

impl TlsStream {
    /// The handshake, which checks the relay's certificate. (With TLS 1.3 the relay
    /// judges ours after this returns: a refusal shows as an alert on the first read.)
    fn handshake(r: &Relayed, mut sock: TcpStream, timeout: Duration) -> io::Result<TlsStream> {
        let mut tls = ClientConnection::new(r.config.clone(), r.name.clone())
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let deadline = std::time::Instant::now() + timeout;
        while tls.is_handshaking() {
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "the relay's TLS handshake took too long",
                ));
            }
            tls.complete_io(&mut sock).map_err(|e| {
                io::Error::new(e.kind(), format!("TLS handshake with the relay: {e}"))
            })?;
        }
        Ok(TlsStream { tls, sock })
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                // An end without close_notify is UnexpectedEof: a cut, not an end.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                done => return done,
            }
            // WouldBlock on a non-blocking socket goes to the caller.
            self.tls.read_tls(&mut self.sock)?;
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the relay why (an alert), best effort.
                let _ = self.tls.write_tls(&mut self.sock);
                return Err(io::Error::new(ErrorKind::InvalidData, format!("TLS: {e}")));
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Earlier output first: a full socket stops new plaintext (backpressure).
        self.flush()?;
        let taken = self.tls.writer().write(buf)?;
        if taken == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        // Errors show again on the next call; these bytes are taken.
        let _ = self.flush();
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, weight: u32, active: u64) -> Arc<Backend> {
        let b = Backend::new(
            &BackendConfig {
                name: name.into(),
                address: Address::Tcp("127.0.0.1:1".parse().unwrap()),
                weight,
                proxy_protocol: false,
                drain: false,
                max_connections: 240,
                tls: None,
                on_marked_down: OnMarkedDown::Close,
            },
            None,
        );
        b.active.store(active, Relaxed);
        Arc::new(b)
    }

    #[test]
    fn least_connections_per_weight_wins() {
        let turn = AtomicUsize::new(0);
        let bs = [backend("a", 1, 5), backend("b", 1, 2), backend("c", 1, 9)];
        assert_eq!(pick(&bs, &[], &turn), Some(1));
        assert_eq!(pick(&bs, &[1], &turn), Some(0));
        // Weight 4 with 7 active beats weight 1 with 2 active: 8/4 < 3/1.
        let bs = [backend("a", 1, 2), backend("b", 4, 7)];
        assert_eq!(pick(&bs, &[], &turn), Some(1));
    }

    #[test]
    fn down_drained_and_zero_weight_take_nothing() {
        let turn = AtomicUsize::new(0);
        let bs = [backend("a", 1, 0), backend("b", 1, 0), backend("c", 0, 0)];
        bs[0].mark_down("test");
        bs[1].drain.store(true, Relaxed);
        assert_eq!(pick(&bs, &[], &turn), None);
        bs[1].drain.store(false, Relaxed);
        assert_eq!(pick(&bs, &[], &turn), Some(1));
    }

    #[test]
    fn a_full_backend_takes_nothing() {
        let turn = AtomicUsize::new(0);
        let bs = [backend("a", 1, 240), backend("b", 9, 239)];
        assert_eq!(pick(&bs, &[], &turn), Some(1));
        bs[1].active.store(240, Relaxed);
        assert_eq!(pick(&bs, &[], &turn), None);
    }

    #[test]
    fn equal_backends_share() {
        let turn = AtomicUsize::new(0);
        let bs = [backend("a", 1, 0), backend("b", 1, 0)];
        let picks: Vec<_> = (0..4).map(|_| pick(&bs, &[], &turn).unwrap()).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn rise_and_fall() {
        let b = backend("a", 1, 0);
        b.record(false, 2, 2, "x");
        assert!(b.up.load(Relaxed));
        b.record(false, 2, 2, "x");
        assert!(!b.up.load(Relaxed));
        b.record(true, 2, 2, "");
        assert!(!b.up.load(Relaxed));
        b.record(true, 2, 2, "");
        assert!(b.up.load(Relaxed));
    }

    #[test]
    fn only_failed_checks_count_as_a_down_that_cuts() {
        let b = backend("a", 1, 0);
        // A refused connect takes it out of rotation but cuts nothing: a single
        // failure says little about the connections already open.
        b.mark_down("refused");
        assert!(!b.up.load(Relaxed));
        assert_eq!(b.downs.load(Relaxed), 0);
        // The checks confirm it, though it was out already.
        b.record(false, 2, 2, "x");
        assert_eq!(b.downs.load(Relaxed), 0);
        b.record(false, 2, 2, "x");
        assert_eq!(b.downs.load(Relaxed), 1);
        // Back up, down again: another down.
        b.record(true, 1, 2, "");
        assert!(b.up.load(Relaxed));
        b.record(false, 1, 2, "x");
        b.record(true, 1, 2, "");
        b.record(false, 1, 2, "x");
        assert_eq!(b.downs.load(Relaxed), 1, "failures not in a row");
        b.record(false, 1, 2, "x");
        assert_eq!(b.downs.load(Relaxed), 2);
    }
}
