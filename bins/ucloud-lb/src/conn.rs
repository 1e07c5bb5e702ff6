//! One client connection: the TLS handshake under a deadline, a backend (a refused
//! connect is retried on another: nothing was sent yet), the PROXY header, then bytes
//! both ways until either side is done or the connection sits idle too long.

use crate::backend::{pick, Backend, Lease, Stream};
use crate::proxy_v2;
use crate::state::{Generation, Shared};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustls::ServerConnection;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn serve(shared: &Shared, generation: &Generation, mut client: TcpStream, peer: SocketAddr) {
    let c = &generation.config;
    let local = client.local_addr().unwrap_or(peer);
    let _ = client.set_nodelay(true);
    let _ = client.set_write_timeout(Some(c.idle_timeout));
    let mut tls = match ServerConnection::new(generation.tls.clone()) {
        Ok(tls) => tls,
        Err(e) => return eprintln!("ucloud-lb: {peer}: cannot start TLS: {e}"),
    };
    if let Err(why) = handshake(&mut tls, &mut client, c.handshake_timeout) {
        shared.counters.handshake_errors.fetch_add(1, Relaxed);
        return eprintln!("ucloud-lb: {peer}: TLS handshake failed: {why}");
    }
    let _ = client.set_read_timeout(None);
    let mut tried = Vec::new();
    // What the client sent, kept until the backend answers its first byte: a backend
    // that resets the connection before that never saw the request (it sat in the
    // accept queue of a gateway that went away), so it is safe to send elsewhere.
    let mut unanswered = Some(Vec::new());
    loop {
        let Some((lease, mut backend)) = connect(shared, generation, peer, local, &mut tried)
        else {
            shared.counters.no_backend.fetch_add(1, Relaxed);
            eprintln!("ucloud-lb: {peer}: no backend is available: answered 502");
            return bad_gateway(&mut tls, &mut client);
        };
        let b = &lease.0;
        let _ = backend.set_timeouts(Some(c.idle_timeout));
        let mut moved = (0u64, 0u64);
        let replayed = match unanswered.as_deref() {
            Some(sent) if !sent.is_empty() => backend.write_all(sent).map_err(|_| Ended::Reset),
            _ => Ok(()),
        };
        let outcome = replayed.and_then(|()| {
            let idle = c.idle_timeout;
            relay(
                &mut tls,
                &mut client,
                &mut backend,
                idle,
                &mut moved,
                &mut unanswered,
            )
        });
        b.bytes_in.fetch_add(moved.0, Relaxed);
        b.bytes_out.fetch_add(moved.1, Relaxed);
        shared.counters.bytes_in.fetch_add(moved.0, Relaxed);
        shared.counters.bytes_out.fetch_add(moved.1, Relaxed);
        match outcome {
            Ok(()) => {}
            Err(Ended::Reset) => {
                b.connect_errors.fetch_add(1, Relaxed);
                b.mark_down("it reset a connection before answering");
                eprintln!(
                    "ucloud-lb: {peer}: backend {} reset the connection before answering; \
                     sending the request to another",
                    b.name
                );
                continue;
            }
            Err(Ended::Idle) => {
                shared.counters.idle_timeouts.fetch_add(1, Relaxed);
            }
            // Clients that hang up mid-way are ordinary, not worth a line.
            Err(Ended::ClientGone) => {}
            Err(Ended::Broken(why)) => {
                eprintln!("ucloud-lb: {peer} via {}: connection ended: {why}", b.name);
            }
        }
        return;
    }
}

/// Bigger requests are not kept for a second try.
const REPLAY_LIMIT: usize = 64 * 1024;

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
                eprintln!(
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

enum Ended {
    Idle,
    /// The backend reset the connection before its first byte.
    Reset,
    /// The client reset the connection or stopped reading.
    ClientGone,
    Broken(String),
}

fn client_error(e: io::Error) -> Ended {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Ended::ClientGone,
        _ => Ended::Broken(e.to_string()),
    }
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Ended {
        Ended::Broken(e.to_string())
    }
}

fn relay(
    tls: &mut ServerConnection,
    client: &mut TcpStream,
    backend: &mut Stream,
    idle: Duration,
    moved: &mut (u64, u64),
    unanswered: &mut Option<Vec<u8>>,
) -> Result<(), Ended> {
    let reset = |e: io::Error, unanswered: &Option<Vec<u8>>| {
        let gone = matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe);
        if gone && unanswered.is_some() {
            Ended::Reset
        } else {
            Ended::from(e)
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut client_open = true;
    let idle_ms = PollTimeout::try_from(i32::try_from(idle.as_millis()).unwrap_or(i32::MAX))
        .unwrap_or(PollTimeout::MAX);
    loop {
        flush(tls, client).map_err(client_error)?;
        // Plaintext may already wait in rustls (a request sent with the handshake's
        // last flight): pass it on before waiting for more.
        if client_open {
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => {
                        // close_notify: the client sends no more.
                        client_open = false;
                        backend.shutdown_write();
                        break;
                    }
                    Ok(n) => {
                        if let Some(kept) = unanswered.as_mut() {
                            kept.extend_from_slice(&buf[..n]);
                            if kept.len() > REPLAY_LIMIT {
                                *unanswered = None;
                            }
                        }
                        backend
                            .write_all(&buf[..n])
                            .map_err(|e| reset(e, unanswered))?;
                        moved.0 += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                        client_open = false;
                        backend.shutdown_write();
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (from_client, from_backend) = {
            let mut fds = vec![PollFd::new(backend.as_fd(), PollFlags::POLLIN)];
            if client_open {
                fds.push(PollFd::new(client.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, idle_ms) {
                Ok(0) => return Err(Ended::Idle),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Ended::Broken(e.to_string())),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (fds.get(1).is_some_and(ready), ready(&fds[0]))
        };
        if from_client {
            match tls.read_tls(client) {
                Ok(0) => {
                    client_open = false;
                    backend.shutdown_write();
                }
                Ok(_) => {
                    tls.process_new_packets().map_err(|e| {
                        let _ = flush(tls, client);
                        Ended::Broken(format!("TLS: {e}"))
                    })?;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(client_error(e)),
            }
        }
        if from_backend {
            match backend.read(&mut buf) {
                // The gateway is done: the answer is complete.
                Ok(0) => break,
                Ok(n) => {
                    *unanswered = None;
                    send(tls, client, &buf[..n]).map_err(client_error)?;
                    moved.1 += n as u64;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(reset(e, unanswered)),
            }
        }
    }
    tls.send_close_notify();
    flush(tls, client).map_err(client_error)?;
    Ok(())
}

fn send(tls: &mut ServerConnection, client: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = tls.writer().write(data)?;
        data = &data[n..];
        flush(tls, client)?;
    }
    Ok(())
}
