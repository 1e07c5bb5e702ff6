//! Established connections: one thread waits on all of them (epoll) and moves the
//! bytes both ways. A thread per connection woke twice per request and could not
//! batch; here one wakeup serves every connection that is ready. The handshake and
//! the backend connect, which may block, stay on the connection's own short-lived
//! thread (conn.rs), which hands the connection over and ends; a backend that goes
//! away without reading a request sends the connection back there for another
//! backend.
//!
//! Every socket is non-blocking. Backpressure: the client is not read while a
//! backend write is pending, the backend not while the client has TLS output
//! waiting, so neither side's bytes pile up here.

use crate::backend::{Stream, MARKED_DOWN};
use crate::state::{Generation, Lease, Slot};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rustls::ServerConnection;
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection past its handshake, without a backend yet: conn.rs makes one, and
/// gets it back from the relay when its backend reset it before answering.
pub struct Pending {
    pub tls: ServerConnection,
    pub client: TcpStream,
    pub slot: Slot,
    pub generation: Arc<Generation>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Relay mode: a connection of the balancer in front's own (its health check),
    /// passed on as such (PROXY `LOCAL`).
    pub own: bool,
    /// Backends tried for this connection already.
    pub tried: Vec<usize>,
    /// What the client sent since the backend's last byte (all of it, at first),
    /// while that is small: what goes to another backend when this one turns out
    /// never to have read it (see `serve`). None past `REPLAY_LIMIT`.
    pub unanswered: Option<Vec<u8>>,
}

/// A connection past its handshake, with a backend that took it.
pub struct Handover {
    pub conn: Pending,
    pub backend: Stream,
    pub lease: Lease,
}

/// How a relayed connection ended.
pub enum Ended {
    Done,
    Idle,
    /// The backend went away without having read what the client sent since its
    /// last answer: that goes to another backend.
    Reset,
    /// The client reset the connection or stopped reading.
    ClientGone,
    /// Its backend was marked down (`on_marked_down = close`).
    Cut,
    Broken(String),
}

/// Bigger requests are not kept for a second try.
const REPLAY_LIMIT: usize = 64 * 1024;
/// Plaintext waiting for the backend before the client is read no further.
const PENDING_LIMIT: usize = 256 * 1024;
const READ_SIZE: usize = 64 * 1024;
/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// The way into the relay thread.
#[derive(Clone)]
pub struct Relay {
    tx: Sender<Handover>,
    wake: Arc<EventFd>,
}

/// What to do with a connection the relay gives back (a backend reset it before
/// answering): runs on a thread of its own.
pub type Retry = fn(Handover);

impl Relay {
    pub fn start(retry: Retry) -> io::Result<Relay> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let (tx, rx) = channel();
        let thread_wake = wake.clone();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || Loop::new(epoll, thread_wake, rx, retry).run())?;
        Ok(Relay { tx, wake })
    }

    pub fn hand_over(&self, conn: Handover) {
        if self.tx.send(conn).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

/// The epoll token of the wakeup; connection `k` has tokens 2k (client) and 2k+1.
const WAKE: u64 = u64::MAX;

struct Conn {
    h: Handover,
    to_backend: Vec<u8>,
    /// Plaintext from the backend that rustls has not taken yet.
    to_client: Vec<u8>,
    client_open: bool,
    backend_shut: bool,
    backend_done: bool,
    /// Whether epoll still watches the backend (not after its end: a closed socket
    /// would report itself ready again and again).
    backend_watched: bool,
    /// A read found the socket empty (it came up short or would block); cleared
    /// when epoll reports the socket readable. Level-triggered epoll reports a
    /// socket with data at every wait, so skipping the read that would only end in
    /// EAGAIN loses nothing, and saves that call on both sides of every request.
    client_drained: bool,
    backend_drained: bool,
    last: Instant,
    moved: (u64, u64),
    interest: (EpollFlags, EpollFlags),
}

struct Loop {
    epoll: Epoll,
    wake: Arc<EventFd>,
    rx: Receiver<Handover>,
    retry: Retry,
    conns: HashMap<u64, Conn>,
    next: u64,
    buf: Vec<u8>,
    /// `MARKED_DOWN` when connections were last looked at for it.
    downs: u64,
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

fn client_error(e: io::Error) -> Ended {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Ended::ClientGone,
        _ => Ended::Broken(e.to_string()),
    }
}

impl Loop {
    fn new(epoll: Epoll, wake: Arc<EventFd>, rx: Receiver<Handover>, retry: Retry) -> Loop {
        Loop {
            epoll,
            wake,
            rx,
            retry,
            conns: HashMap::new(),
            next: 0,
            buf: vec![0u8; READ_SIZE],
            downs: MARKED_DOWN.load(Relaxed),
        }
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut last_sweep = Instant::now();
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::from(500u16)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    ucloud_wire::log_err!("ucloud-lb: relay: epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    0
                }
            };
            for event in &events[..n] {
                let token = event.data();
                if token == WAKE {
                    let _ = self.wake.read();
                    self.take_new();
                    continue;
                }
                let hangup = event
                    .events()
                    .intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR);
                let client = token % 2 == 0;
                if let Some(conn) = self.conns.get_mut(&(token / 2)) {
                    if client {
                        conn.client_drained = false;
                    } else {
                        conn.backend_drained = false;
                    }
                }
                self.pump(token / 2, hangup && client, hangup && !client);
            }
            let downs = MARKED_DOWN.load(Relaxed);
            if downs != self.downs {
                self.downs = downs;
                self.cut();
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                self.sweep();
            }
        }
    }

    fn take_new(&mut self) {
        while let Ok(h) = self.rx.try_recv() {
            let key = self.next;
            self.next += 1;
            let both = EpollFlags::EPOLLIN;
            let added = h
                .conn
                .client
                .set_nonblocking(true)
                .and_then(|()| set_nonblocking(&h.backend))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    self.epoll
                        .add(h.conn.client.as_fd(), EpollEvent::new(both, key * 2))
                        .map_err(|e| e.to_string())
                })
                .and_then(|()| {
                    self.epoll
                        .add(h.backend.as_fd(), EpollEvent::new(both, key * 2 + 1))
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = added {
                ucloud_wire::log_err!("ucloud-lb: {}: cannot relay: {e}", h.conn.peer);
                continue;
            }
            self.conns.insert(
                key,
                Conn {
                    h,
                    to_backend: Vec::new(),
                    to_client: Vec::new(),
                    client_open: true,
                    backend_shut: false,
                    backend_done: false,
                    backend_watched: true,
                    client_drained: false,
                    backend_drained: false,
                    last: Instant::now(),
                    moved: (0, 0),
                    interest: (both, both),
                },
            );
            // Plaintext may already wait in rustls (a request sent with the
            // handshake's last flight).
            self.pump(key, false, false);
        }
    }

    /// Moves what can move on connection `key`. `client_hung_up`: the client's
    /// socket reported a hangup or an error, so it can take nothing more.
    /// `backend_hung_up`: the backend's did; epoll reports that whatever the
    /// interest, so its end is read now, even past the backpressure (what is left
    /// in a closed socket is at most its receive buffer).
    fn pump(&mut self, key: u64, client_hung_up: bool, backend_hung_up: bool) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last = Instant::now();
        let ended = if backend_hung_up {
            conn.drain_backend(&mut self.buf)
        } else {
            Ok(())
        };
        match ended.and_then(|()| conn.step(&mut self.buf)) {
            Ok(false) if client_hung_up => self.finish(key, Ended::ClientGone),
            Ok(false) => {
                if conn.backend_done && conn.backend_watched {
                    let _ = self.epoll.delete(conn.h.backend.as_fd());
                    conn.backend_watched = false;
                }
                let (client, backend) = conn.wanted();
                if client != conn.interest.0 {
                    let _ = self.epoll.modify(
                        conn.h.conn.client.as_fd(),
                        &mut EpollEvent::new(client, key * 2),
                    );
                    conn.interest.0 = client;
                }
                if conn.backend_watched && backend != conn.interest.1 {
                    let _ = self.epoll.modify(
                        conn.h.backend.as_fd(),
                        &mut EpollEvent::new(backend, key * 2 + 1),
                    );
                    conn.interest.1 = backend;
                }
            }
            Ok(true) => self.finish(key, Ended::Done),
            Err(ended) => self.finish(key, ended),
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now.duration_since(c.last) >= c.h.conn.generation.config.idle_timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.finish(key, Ended::Idle);
        }
    }

    /// Closes the connections whose backend the health checks marked down since
    /// they were made (`on_marked_down = close`): a keep-alive client whose host
    /// vanished gets the close at once and reconnects to one that is up, instead
    /// of waiting on a connection nothing answers (a host whose link went down
    /// neither resets nor closes it).
    fn cut(&mut self) {
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.h.lease.cut())
            .map(|(k, _)| *k)
            .collect();
        let mut by_backend: Vec<(Arc<crate::backend::Backend>, u64)> = Vec::new();
        for key in gone {
            if let Some(c) = self.conns.get(&key) {
                let b = &c.h.lease.0;
                match by_backend.iter_mut().find(|(x, _)| Arc::ptr_eq(x, b)) {
                    Some((_, n)) => *n += 1,
                    None => by_backend.push((b.clone(), 1)),
                }
            }
            self.finish(key, Ended::Cut);
        }
        for (b, n) in by_backend {
            b.cut.fetch_add(n, Relaxed);
            ucloud_wire::log_warn!(
                "ucloud-lb: backend {} is down: closed its {n} connection(s) \
                 (on_marked_down = close)",
                b.name
            );
        }
    }

    /// Gives a connection back to conn.rs for another backend, on a thread of its
    /// own (connecting may block).
    fn hand_back(&self, conn: Conn) {
        let peer = conn.h.conn.peer;
        // Back to blocking for the connection's own thread.
        let _ = conn.h.conn.client.set_nonblocking(false);
        let retry = self.retry;
        let h = conn.h;
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || retry(h));
        if let Err(e) = spawned {
            ucloud_wire::log_err!("ucloud-lb: {peer}: cannot start a thread: {e}");
        }
    }

    fn finish(&mut self, key: u64, ended: Ended) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        let _ = self.epoll.delete(conn.h.conn.client.as_fd());
        if conn.backend_watched {
            let _ = self.epoll.delete(conn.h.backend.as_fd());
        }
        let h = &conn.h;
        let b = &h.lease.0;
        let shared = &h.conn.slot.shared;
        b.bytes_in.fetch_add(conn.moved.0, Relaxed);
        b.bytes_out.fetch_add(conn.moved.1, Relaxed);
        shared.counters.bytes_in.fetch_add(conn.moved.0, Relaxed);
        shared.counters.bytes_out.fetch_add(conn.moved.1, Relaxed);
        let peer = h.conn.peer;
        // Idle or broken: tell the client the stream ends (best effort, no waiting).
        let notify = matches!(ended, Ended::Idle | Ended::Broken(_) | Ended::Cut);
        match ended {
            Ended::Done => {}
            Ended::Reset if conn.moved.1 == 0 => {
                b.connect_errors.fetch_add(1, Relaxed);
                b.mark_down("it reset a connection before answering");
                ucloud_wire::log_warn!(
                    "ucloud-lb: {peer}: backend {} reset the connection before answering; \
                     sending the request to another",
                    b.name
                );
                self.hand_back(conn);
                return;
            }
            Ended::Reset => {
                // A keep-alive connection that answered before: the backend closed it
                // (an idle close that crossed the next request, or a host going
                // away). Not a sign of a dead backend by itself (the checks judge
                // that); the connection may go anywhere but here.
                ucloud_wire::log_warn!(
                    "ucloud-lb: {peer}: backend {} went away without reading a request; \
                     sending it to another",
                    b.name
                );
                let gens = &conn.h.conn.generation.backends;
                let failed: Vec<usize> = (0..gens.len())
                    .filter(|&i| Arc::ptr_eq(&gens[i], b))
                    .collect();
                conn.h.conn.tried = failed;
                self.hand_back(conn);
                return;
            }
            Ended::Idle => {
                shared.counters.idle_timeouts.fetch_add(1, Relaxed);
            }
            // Clients that hang up mid-way are ordinary, not worth a line.
            Ended::ClientGone | Ended::Cut => {}
            Ended::Broken(why) => {
                ucloud_wire::log_warn!("ucloud-lb: {peer} via {}: connection ended: {why}", b.name);
            }
        }
        if notify {
            conn.h.conn.tls.send_close_notify();
            let _ = conn.flush_client();
        }
    }
}

/// Whether `b` opens with an HTTP/1 request line's method and a space: `GET `,
/// `POST `, an extension method of capitals.
/// One GET, HEAD or OPTIONS request and nothing after its head.
fn one_safe_request(kept: &[u8]) -> bool {
    let safe = [&b"GET "[..], b"HEAD ", b"OPTIONS "]
        .iter()
        .any(|m| kept.starts_with(m));
    let head_end = kept.windows(4).position(|w| w == b"\r\n\r\n");
    safe && head_end.is_some_and(|at| at + 4 == kept.len())
}

fn starts_a_request(b: &[u8]) -> bool {
    let method = b.iter().take_while(|c| c.is_ascii_uppercase()).count();
    (1..=20).contains(&method) && b.get(method) == Some(&b' ')
}

/// A read that notes when it found the socket empty: a short read or EAGAIN.
struct Drained<'a, S> {
    s: &'a mut S,
    drained: &'a mut bool,
}

impl<S: Read> Read for Drained<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.s.read(buf);
        match &read {
            Ok(n) if *n < buf.len() => *self.drained = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => *self.drained = true,
            _ => {}
        }
        read
    }
}

fn set_nonblocking(s: &Stream) -> io::Result<()> {
    s.set_nonblocking()
}

impl Conn {
    /// Moves what can move now; Ok(true) when the connection is complete.
    fn step(&mut self, buf: &mut [u8]) -> Result<bool, Ended> {
        loop {
            let mut progress = false;
            progress |= self.read_client(buf)?;
            progress |= self.write_backend()?;
            progress |= self.read_backend(buf)?;
            progress |= self.flush_client()?;
            if self.backend_done && self.to_client.is_empty() && !self.h.conn.tls.wants_write() {
                self.h.conn.tls.send_close_notify();
                self.flush_client()?;
                return Ok(true);
            }
            if !progress {
                return Ok(false);
            }
        }
    }

    /// Reads the client's TLS and queues the plaintext for the backend.
    fn read_client(&mut self, buf: &mut [u8]) -> Result<bool, Ended> {
        let mut progress = false;
        while self.client_open && self.to_backend.len() < PENDING_LIMIT {
            match self.h.conn.tls.reader().read(buf) {
                Ok(0) => {
                    // close_notify: the client sends no more.
                    self.client_open = false;
                    progress = true;
                }
                Ok(n) => {
                    self.take_from_client(&buf[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    self.client_open = false;
                    progress = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if self.client_drained {
                        break;
                    }
                    let mut from = Drained {
                        s: &mut self.h.conn.client,
                        drained: &mut self.client_drained,
                    };
                    match self.h.conn.tls.read_tls(&mut from) {
                        Ok(0) => {
                            self.client_open = false;
                            progress = true;
                        }
                        Ok(_) => {
                            progress = true;
                            if let Err(e) = self.h.conn.tls.process_new_packets() {
                                let _ = self.flush_client();
                                return Err(Ended::Broken(format!("TLS: {e}")));
                            }
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(client_error(e)),
                    }
                }
                Err(e) => return Err(Ended::Broken(e.to_string())),
            }
        }
        Ok(progress)
    }

    /// Queues plaintext for the backend, and keeps a copy for a replay while the
    /// backend has not answered and the request is small.
    fn take_from_client(&mut self, bytes: &[u8]) {
        self.to_backend.extend_from_slice(bytes);
        self.moved.0 += bytes.len() as u64;
        if let Some(kept) = self.h.conn.unanswered.as_mut() {
            kept.extend_from_slice(bytes);
            if kept.len() > REPLAY_LIMIT {
                self.h.conn.unanswered = None;
            }
        }
    }

    fn write_backend(&mut self) -> Result<bool, Ended> {
        let mut progress = false;
        while !self.to_backend.is_empty() {
            match self.h.backend.write(&self.to_backend) {
                Ok(n) => {
                    self.to_backend.drain(..n);
                    progress = true;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(self.backend_error(e)),
            }
        }
        // TLS output to a relay that rustls still holds (only a TLS backend has any).
        match self.h.backend.flush() {
            Err(e) if !would_block(&e) => return Err(self.backend_error(e)),
            _ => {}
        }
        if self.to_backend.is_empty() && !self.client_open && !self.backend_shut {
            self.h.backend.shutdown_write();
            self.backend_shut = true;
            progress = true;
        }
        Ok(progress)
    }

    fn read_backend(&mut self, buf: &mut [u8]) -> Result<bool, Ended> {
        let mut progress = false;
        // Only while the client keeps up: what it has not taken stays in the backend.
        while !self.backend_done
            && !self.backend_drained
            && self.to_client.is_empty()
            && !self.h.conn.tls.wants_write()
        {
            let read = Drained {
                s: &mut self.h.backend,
                drained: &mut self.backend_drained,
            }
            .read(buf);
            match read {
                Ok(0) => {
                    self.backend_ended()?;
                    progress = true;
                }
                Ok(n) => {
                    self.answered();
                    self.moved.1 += n as u64;
                    let taken = self.h.conn.tls.writer().write(&buf[..n]).unwrap_or(0);
                    self.to_client.extend_from_slice(&buf[taken..n]);
                    progress = true;
                    self.flush_client()?;
                }
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(self.backend_error(e)),
            }
        }
        Ok(progress)
    }

    /// Reads a hung-up backend to its end into the client's queue.
    fn drain_backend(&mut self, buf: &mut [u8]) -> Result<(), Ended> {
        while !self.backend_done {
            match self.h.backend.read(buf) {
                Ok(0) => self.backend_ended()?,
                Ok(n) => {
                    self.answered();
                    self.moved.1 += n as u64;
                    self.to_client.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(self.backend_error(e)),
            }
        }
        Ok(())
    }

    /// Writes rustls's TLS output to the client, and feeds it what it did not take.
    fn flush_client(&mut self) -> Result<bool, Ended> {
        let mut progress = false;
        loop {
            while self.h.conn.tls.wants_write() {
                match self.h.conn.tls.write_tls(&mut self.h.conn.client) {
                    Ok(_) => progress = true,
                    Err(e) if would_block(&e) => return Ok(progress),
                    Err(e) => return Err(client_error(e)),
                }
            }
            if self.to_client.is_empty() {
                return Ok(progress);
            }
            let taken = self.h.conn.tls.writer().write(&self.to_client).unwrap_or(0);
            if taken == 0 {
                return Ok(progress);
            }
            self.to_client.drain(..taken);
            progress = true;
        }
    }

    /// The backend answered: what the client sends from now on is kept anew. A
    /// big request that got no copy gets none of its rest either: a partial
    /// request must never go to another backend.
    fn answered(&mut self) {
        if let Some(kept) = self.h.conn.unanswered.as_mut() {
            kept.clear();
        }
    }

    /// Whether what the client sent since the backend's last answer may go to
    /// another backend: it is a whole start of a request (a keep-alive client's
    /// next one; nothing of a WebSocket's frames or a body's middle looks like one)
    /// and the client has every byte of the answers before it.
    fn replayable(&self) -> bool {
        matches!(&self.h.conn.unanswered, Some(kept) if starts_a_request(kept))
            && self.to_client.is_empty()
            && !self.h.conn.tls.wants_write()
    }

    /// Whether none of what the client sent since the last answer was written to
    /// the backend yet.
    fn unsent(&self) -> bool {
        self.h
            .conn
            .unanswered
            .as_ref()
            .is_some_and(|k| self.to_backend.len() >= k.len())
    }

    /// Whether what waits is one request that may run twice without harm: a GET,
    /// HEAD or OPTIONS with nothing after its head. A reset says only that some
    /// bytes went unread, not which: a backend may have acted on a POST and died
    /// with a pipelined request unread, and that POST must not run again elsewhere.
    fn idempotent(&self) -> bool {
        self.h
            .conn
            .unanswered
            .as_ref()
            .is_some_and(|kept| one_safe_request(kept))
    }

    fn backend_error(&self, e: io::Error) -> Ended {
        // A reset means its socket was closed with some of our bytes unread, or
        // before they came; only a request that was never written, or one that may
        // run twice, goes to another backend.
        let gone = matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
        if gone && self.replayable() && (self.unsent() || self.idempotent()) {
            Ended::Reset
        } else {
            Ended::Broken(e.to_string())
        }
    }

    /// The backend's end of the stream. When a request of the client's waits
    /// unanswered, the backend went away (a killed host, a closed keep-alive
    /// connection) and it goes to another backend, if the backend never read it:
    /// none of it was written yet, or the write was answered by a reset (which
    /// the read does not report once the end has come).
    fn backend_ended(&mut self) -> Result<(), Ended> {
        let waiting = self
            .h
            .conn
            .unanswered
            .as_ref()
            .is_some_and(|k| !k.is_empty());
        if waiting && self.replayable() {
            let reset = matches!(self.h.backend.take_error(), Ok(Some(e))
                if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe));
            if self.unsent() || (reset && self.idempotent()) {
                return Err(Ended::Reset);
            }
        }
        self.backend_done = true;
        Ok(())
    }

    /// The events each socket should wake the relay for.
    fn wanted(&self) -> (EpollFlags, EpollFlags) {
        let mut client = EpollFlags::empty();
        if self.client_open && self.to_backend.len() < PENDING_LIMIT {
            client |= EpollFlags::EPOLLIN;
        }
        if self.h.conn.tls.wants_write() || !self.to_client.is_empty() {
            client |= EpollFlags::EPOLLOUT;
        }
        let mut backend = EpollFlags::empty();
        if !self.backend_done && self.to_client.is_empty() && !self.h.conn.tls.wants_write() {
            backend |= EpollFlags::EPOLLIN;
        }
        if !self.to_backend.is_empty() || self.h.backend.wants_write() {
            backend |= EpollFlags::EPOLLOUT;
        }
        (client, backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn only_one_bodiless_safe_request_may_run_twice() {
        for yes in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"HEAD /a HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            assert!(one_safe_request(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"POST /ucloud/hpc/jobs HTTP/1.1\r\n\r\n"[..],
            b"DELETE /x HTTP/1.1\r\n\r\n",
            // A pipelined POST behind a GET, a body, or a head not yet whole.
            b"GET / HTTP/1.1\r\n\r\nPOST /x HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"",
        ] {
            assert!(!one_safe_request(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn only_a_request_line_is_a_start_of_a_request() {
        for yes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST ",
            b"PROPFIND /x",
            b"M-SEARCH",
        ] {
            assert_eq!(starts_a_request(yes), yes != b"M-SEARCH", "{yes:?}");
        }
        for no in [
            &b""[..],
            b"GET",
            b" GET /",
            b"get / HTTP/1.1",
            b"\x81\x85GET ",
            b"{\"json\": 1}",
            b"AAAAAAAAAAAAAAAAAAAAAAAAA /",
            b"\r\nGET / HTTP/1.1",
            &[0xff; 64][..],
        ] {
            assert!(!starts_a_request(no), "{no:?}");
        }
    }

    #[test]
    fn only_a_read_that_finds_the_socket_empty_marks_it_drained() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut drained = false;
        let mut buf = [0u8; 4];
        b.write_all(b"abcdef").unwrap();
        // A full buffer: more may wait.
        let n = Drained {
            s: &mut a,
            drained: &mut drained,
        }
        .read(&mut buf)
        .unwrap();
        assert_eq!((n, drained), (4, false));
        // Short: the socket had no more.
        let n = Drained {
            s: &mut a,
            drained: &mut drained,
        }
        .read(&mut buf)
        .unwrap();
        assert_eq!((n, drained), (2, true));
        drained = false;
        let e = Drained {
            s: &mut a,
            drained: &mut drained,
        }
        .read(&mut buf)
        .unwrap_err();
        assert_eq!((e.kind(), drained), (ErrorKind::WouldBlock, true));
    }
}
