//! One client connection, up to the relay: the TLS handshake under a deadline, a
//! whole request head under another (no gateway is connected before, so idle and
//! slow clients hold none), a place on a backend within the client's share (a
//! refused or timed-out connect is retried on another: nothing was sent yet), the
//! PROXY header;
//! then the relay (relay.rs) moves the bytes both ways until either side is done or
//! the connection sits idle too long.

use crate::backend::{Backend, Stream};
use crate::relay::{Handover, Pending, Relay};
use crate::state::{Generation, Lease, Reserved, Shared, Slot};
use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use ucloud_http::proxy_v2::{self, Origin};

pub fn serve(slot: Slot, generation: Arc<Generation>, mut client: TcpStream, peer: SocketAddr) {
    let shared = slot.shared.clone();
    let c = &generation.config;
    let local = client.local_addr().unwrap_or(peer);
    let _ = client.set_nodelay(true);
    let _ = client.set_write_timeout(Some(c.idle_timeout));
    let mut tls = match ServerConnection::new(generation.tls.clone()) {
        Ok(tls) => tls,
        Err(e) => return ucloud_wire::log_err!("ucloud-lb: {peer}: cannot start TLS: {e}"),
    };
    if let Err(why) = handshake(&mut tls, &mut client, c.handshake_timeout) {
        shared.counters.handshake_errors.fetch_add(1, Relaxed);
        if c.client_ca.is_some() {
            return ucloud_wire::log_warn!(
                "ucloud-lb: {peer}: TLS handshake failed: {why} (a relay serves only \
                 balancers with a certificate from its client_ca)"
            );
        }
        return ucloud_wire::log_warn!("ucloud-lb: {peer}: TLS handshake failed: {why}");
    }
    // Relay mode: the client is the one the balancer in front names.
    let (mut peer, mut local, mut own, mut early) = (peer, local, false, Vec::new());
    if c.client_ca.is_some() {
        let deadline = Instant::now() + c.request_timeout;
        match crate::origin::read(&mut tls, &mut client, deadline) {
            Ok((Origin::Client { source, dest }, rest)) => {
                (peer, local, early) = (source, dest, rest)
            }
            Ok((Origin::Own, rest)) => (own, early) = (true, rest),
            Err(why) => {
                shared.counters.handshake_errors.fetch_add(1, Relaxed);
                return ucloud_wire::log_warn!("ucloud-lb: {peer}: refused: {why}");
            }
        }
    }
    let head = match read_head(&mut tls, &mut client, c.request_timeout, early) {
        Ok(head) => head,
        Err(Head::Gone) => return,
        Err(Head::Late) => {
            shared.counters.request_timeouts.fetch_add(1, Relaxed);
            return answer(
                &mut tls,
                &mut client,
                408,
                "REQUEST_TIMEOUT",
                &format!(
                    "no complete request head within {} s",
                    c.request_timeout.as_secs_f64()
                ),
            );
        }
    };
    let _ = client.set_read_timeout(None);
    // What the client sent, kept until the backend answers (and then each next
    // request, until its answer): a backend that resets the connection before that
    // never read the request (it sat in the accept queue of a gateway that went
    // away, or in the socket of a process that died), so it is safe to send
    // elsewhere.
    attach(Pending {
        tls,
        client,
        slot,
        generation,
        peer,
        local,
        own,
        tried: Vec::new(),
        unanswered: Some(head),
    });
}

/// The relay gave a connection back: its backend went away without reading what
/// the client sent since its last answer. Runs on a thread of its own, like `serve`.
pub fn retry(h: Handover) {
    let Handover {
        conn,
        backend,
        lease,
    } = h;
    // The client's place goes back before it asks for another.
    drop((backend, lease));
    attach(conn);
}

/// Why no request head came.
enum Head {
    /// The client closed, reset, or broke TLS: nothing to answer.
    Gone,
    /// Not complete within `request_timeout`.
    Late,
}

/// Heads larger than this go to the gateway as they are (it refuses them).
const HEAD_LIMIT: usize = 64 * 1024;

/// The plaintext up to the end of the first request head (and whatever came with
/// it), read by one deadline however the client cuts it up.
fn read_head(
    tls: &mut ServerConnection,
    client: &mut TcpStream,
    limit: Duration,
    mut head: Vec<u8>,
) -> Result<Vec<u8>, Head> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => return Err(Head::Gone),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(Head::Gone),
            }
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= HEAD_LIMIT {
            return Ok(head);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Head::Late);
        }
        if client.set_read_timeout(Some(left)).is_err() {
            return Err(Head::Gone);
        }
        match tls.read_tls(client) {
            Ok(0) => return Err(Head::Gone),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(Head::Gone),
        }
        if tls.process_new_packets().is_err() {
            let _ = flush(tls, client);
            return Err(Head::Gone);
        }
    }
}

/// Finds a backend that takes the connection (sending it what the client said so
/// far, if anything) and hands both to the relay; a 502 when none does.
fn attach(mut p: Pending) {
    let shared = p.slot.shared.clone();
    let generation = p.generation.clone();
    let idle = generation.config.idle_timeout;
    let until = Instant::now() + generation.config.queue_timeout;
    // Relay mode passes the balancer in front's own connections on as such.
    let header = if p.own {
        proxy_v2::local()
    } else {
        proxy_v2::proxy(p.peer, p.local)
    };
    loop {
        let (lease, mut backend) =
            match connect(&shared, &generation, p.peer, &header, &mut p.tried, until) {
                Ok(got) => got,
                Err(Reserved::Busy) => {
                    shared.counters.busy.fetch_add(1, Relaxed);
                    ucloud_wire::log_warn!(
                        "ucloud-lb: {}: no place on a gateway within {} s: answered 502",
                        p.peer,
                        generation.config.queue_timeout.as_secs_f64()
                    );
                    // 502 like an outage, not 503: UCloud answers a 503 with
                    // integration/init.
                    return answer(
                        &mut p.tls,
                        &mut p.client,
                        502,
                        "BUSY",
                        "every gateway place open to this client is taken; try again",
                    );
                }
                Err(_) => {
                    shared.counters.no_backend.fetch_add(1, Relaxed);
                    ucloud_wire::log_err!(
                        "ucloud-lb: {}: no backend is available: answered 502",
                        p.peer
                    );
                    return bad_gateway(&mut p.tls, &mut p.client);
                }
            };
        if let Some(sent) = p.unanswered.as_deref().filter(|s| !s.is_empty()) {
            let _ = backend.set_timeouts(Some(idle));
            if let Err(e) = backend.write_all(sent) {
                let b = &lease.0;
                b.connect_errors.fetch_add(1, Relaxed);
                b.mark_down(&format!("resending a request: {e}"));
                continue;
            }
        }
        let _ = backend.set_timeouts(None);
        let _ = p.client.set_write_timeout(None);
        relay().hand_over(Handover {
            conn: p,
            backend,
            lease,
        });
        return;
    }
}

static RELAY: OnceLock<Relay> = OnceLock::new();

/// Starts the relay thread; once, before the first connection is accepted.
pub fn start_relay() -> io::Result<()> {
    let relay = Relay::start(retry)?;
    let _ = RELAY.set(relay);
    Ok(())
}

fn relay() -> &'static Relay {
    RELAY
        .get()
        .expect("start_relay runs before the first connection")
}

fn handshake(
    tls: &mut ServerConnection,
    client: &mut TcpStream,
    limit: Duration,
) -> Result<(), String> {
    // One deadline for the whole handshake, so a client dripping a byte at a time
    // cannot stretch it.
    let deadline = Instant::now() + limit;
    while tls.is_handshaking() {
        flush(tls, client).map_err(|e| e.to_string())?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("not done within {} s", limit.as_secs_f64()));
        }
        client
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match tls.read_tls(client) {
            Ok(0) => return Err("client closed the connection".into()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
        if let Err(e) = tls.process_new_packets() {
            // Tell the client why (an alert), best effort.
            let _ = flush(tls, client);
            return Err(e.to_string());
        }
    }
    flush(tls, client).map_err(|e| e.to_string())
}

fn flush(tls: &mut ServerConnection, client: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(client)?;
    }
    Ok(())
}

/// A backend that took the connection, with the PROXY header already sent; the
/// error is `NoBackend` or `Busy`.
fn connect(
    shared: &Arc<Shared>,
    generation: &Generation,
    peer: SocketAddr,
    header: &[u8],
    tried: &mut Vec<usize>,
    until: Instant,
) -> Result<(Lease, Stream), Reserved> {
    let c = &generation.config;
    loop {
        let (i, lease) = match shared.reserve(peer.ip(), c, &generation.backends, tried, until) {
            Reserved::Got(i, lease) => (i, lease),
            other => return Err(other),
        };
        tried.push(i);
        let b: &Arc<Backend> = &generation.backends[i];
        match b.connect(c.connect_timeout) {
            Ok(mut s) => {
                if b.proxy_protocol.load(Relaxed) {
                    let _ = s.set_timeouts(Some(c.connect_timeout));
                    if let Err(e) = s.write_all(header).and_then(|()| s.flush()) {
                        b.connect_errors.fetch_add(1, Relaxed);
                        b.mark_down(&format!("sending the PROXY header: {e}"));
                        continue;
                    }
                }
                return Ok((lease, s));
            }
            Err(e) => {
                b.connect_errors.fetch_add(1, Relaxed);
                if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
                    let (rise, fall) = (c.health_rise, c.health_fall);
                    b.record(false, rise, fall, &format!("connect timed out: {e}"));
                } else {
                    b.mark_down(&format!("connect: {e}"));
                }
                ucloud_wire::log_warn!(
                    "ucloud-lb: {peer}: backend {} refused ({e}); trying another",
                    b.name
                );
            }
        }
    }
}

/// UCloud retries 449 and 503 through integration/init, so an outage is a 502.
fn bad_gateway(tls: &mut ServerConnection, client: &mut TcpStream) {
    answer(
        tls,
        client,
        502,
        "NO_BACKEND",
        "no integration gateway is available behind the load balancer",
    );
}

/// Answers with an error in UCloud's form and closes the connection.
fn answer(tls: &mut ServerConnection, client: &mut TcpStream, status: u16, code: &str, why: &str) {
    // Read what the client sent first, briefly: closing with unread bytes would
    // reset the connection before the client sees the answer.
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    if tls.read_tls(client).is_ok() {
        let _ = tls.process_new_packets();
        let mut sink = [0u8; 4096];
        while matches!(tls.reader().read(&mut sink), Ok(n) if n > 0) {}
    }
    let body = format!(r#"{{"why":"{why}","errorCode":"{code}"}}"#);
    let reason = if status == 408 {
        "Request Timeout"
    } else {
        "Bad Gateway"
    };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.writer().write_all(answer.as_bytes());
    tls.send_close_notify();
    let _ = flush(tls, client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    // Until the client closes too, but not for a client that keeps dripping.
    let until = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    while Instant::now() < until && matches!(client.read(&mut sink), Ok(n) if n > 0) {}
}
