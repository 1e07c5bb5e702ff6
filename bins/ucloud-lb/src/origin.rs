//! Relay mode (ucloud-lb.conf(5) `client_ca`): this balancer runs on a gateway's
//! host and takes connections from balancers on other hosts. Each connection's
//! PROXY v2 header says whom it carries, and whoever sends the header decides what
//! the gateway logs, so it is read only from a peer whose certificate the
//! handshake verified against the site's CA; nothing else is read as a header.

use rustls::ServerConnection;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::Instant;
use ucloud_http::proxy_v2::{self, Origin};

/// The header that opens the plaintext of an authenticated connection, read by
/// `deadline`; with whatever of the request came behind it.
pub fn read(
    tls: &mut ServerConnection,
    client: &mut TcpStream,
    deadline: Instant,
) -> Result<(Origin, Vec<u8>), String> {
    // The verifier refuses a handshake without a certificate; a resumed session
    // carries the one of its first handshake. Checked again all the same: a header
    // from an unauthenticated peer must never be believed.
    if tls.peer_certificates().is_none_or(|c| c.is_empty()) {
        return Err("no client certificate: a PROXY header is not believed".into());
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        loop {
            match tls.reader().read(&mut buf) {
                Ok(0) => return Err("closed before a PROXY v2 header".into()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("before a PROXY v2 header: {e}")),
            }
        }
        if let Some((origin, len)) = proxy_v2::parse(&got)? {
            return Ok((origin, got.split_off(len)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no whole PROXY v2 header in time".into());
        }
        client
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match tls.read_tls(client) {
            Ok(0) => return Err("closed before a PROXY v2 header".into()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        if let Err(e) = tls.process_new_packets() {
            while tls.wants_write() && tls.write_tls(client).is_ok() {}
            return Err(format!("TLS: {e}"));
        }
    }
}
