//! One client connection, up to the relay: the TLS handshake under a deadline, a
//! backend (a refused connect is retried on another: nothing was sent yet), the
//! PROXY header; then the relay (relay.rs) moves the bytes both ways until either
//! side is done or the connection sits idle too long.

use crate::backend::{pick, Backend, Lease, Stream};
use crate::proxy_v2;
use crate::relay::{Handover, Relay};
use crate::state::{Generation, Shared, Slot};
use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
        return ucloud_wire::log_warn!("ucloud-lb: {peer}: TLS handshake failed: {why}");
    }
    let _ = client.set_read_timeout(None);
    // What the client sent, kept until the backend answers its first byte: a backend
    // that resets the connection before that never saw the request (it sat in the
    // accept queue of a gateway that went away), so it is safe to send elsewhere.
    attach(Pending {
        tls,
        client,
        slot,
        generation,
        peer,
        local,
        tried: Vec::new(),
        unanswered: Some(Vec::new()),
    });
}

/// The relay gave a connection back: its backend reset it before answering. Runs
/// on a thread of its own, like `serve`.
pub fn retry(h: Handover) {
    attach(h.conn);
}

/// A connection past its handshake, without a backend yet.
pub struct Pending {
    pub tls: ServerConnection,
    pub client: TcpStream,
    pub slot: Slot,
    pub generation: Arc<Generation>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Backends tried for this connection already.
    pub tried: Vec<usize>,
    /// What the client sent, kept until the backend's first byte (see `serve`).
    pub unanswered: Option<Vec<u8>>,
}

/// Finds a backend that takes the connection (sending it what the client said so
/// far, if anything) and hands both to the relay; a 502 when none does.
fn attach(mut p: Pending) {
    let shared = p.slot.shared.clone();
    let generation = p.generation.clone();
    let idle = generation.config.idle_timeout;
    loop {
        let Some((lease, mut backend)) =
            connect(&shared, &generation, p.peer, p.local, &mut p.tried)
        else {
            shared.counters.no_backend.fetch_add(1, Relaxed);
            ucloud_wire::log_err!(
                "ucloud-lb: {}: no backend is available: answered 502",
                p.peer
            );
            return bad_gateway(&mut p.tls, &mut p.client);
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

/// A backend that took the connection, with the PROXY header already sent.
fn connect(
    shared: &Shared,
    generation: &Generation,
    peer: SocketAddr,
    local: SocketAddr,
    tried: &mut Vec<usize>,
) -> Option<(Lease, Stream)> {
    let c = &generation.config;
    loop {
        let i = pick(&generation.backends, tried, &shared.turn)?;
        tried.push(i);
        let b: &Arc<Backend> = &generation.backends[i];
        match b.connect(c.connect_timeout) {
            Ok(mut s) => {
                if b.proxy_protocol.load(Relaxed) {
                    let _ = s.set_timeouts(Some(c.connect_timeout));
                    if let Err(e) = s.write_all(&proxy_v2::proxy(peer, local)) {
                        b.connect_errors.fetch_add(1, Relaxed);
                        b.mark_down(&format!("sending the PROXY header: {e}"));
                        continue;
                    }
                }
                return Some((Lease::new(b.clone()), s));
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
    // Read what the client sent first, briefly: closing with unread bytes would
    // reset the connection before the client sees the answer.
    let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
    if tls.read_tls(client).is_ok() {
        let _ = tls.process_new_packets();
        let mut sink = [0u8; 4096];
        while matches!(tls.reader().read(&mut sink), Ok(n) if n > 0) {}
    }
    let body = r#"{"why":"no integration gateway is available behind the load balancer","errorCode":"NO_BACKEND"}"#;
    let answer = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.writer().write_all(answer.as_bytes());
    tls.send_close_notify();
    let _ = flush(tls, client);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
}
