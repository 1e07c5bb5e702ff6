//! The balancer-facing mode: the connection must start with a PROXY protocol v2
//! header (haproxy.org proxy-protocol.txt, section 2.2) naming the real client,
//! which the gateway then logs. Anything else ends the connection unanswered: on
//! that socket only the balancer may speak, and it always sends the header.
//!
//! Whoever sends the header decides what the log says, so it is believed only from
//! the balancer itself: over a unix socket (which the socket unit opens to the
//! balancer's group alone) from a peer the kernel names as the balancer's account
//! (SO_PEERCRED). A TCP peer proves nothing of the kind, so it is refused; a
//! balancer on another host reaches a relay ucloud-lb on this host over mutual TLS,
//! and the relay connects here (ucloud-lb.conf(5), ANOTHER HOST).

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike, SockaddrStorage,
};
use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use ucloud_http::proxy_v2::{self, Origin};

/// Who is on the other end of the balancer.
#[derive(Debug, PartialEq, Eq)]
pub enum Peer {
    /// A client the balancer relayed.
    Client(SocketAddr),
    /// The balancer's own connection (its health checks): `LOCAL` command, or an
    /// address family the header may carry but we do not log (unix, unspecified).
    Local,
}

static CLIENT: OnceLock<String> = OnceLock::new();

/// The client of this connection, for the request log (set once, balancer mode only).
pub fn client() -> Option<&'static str> {
    CLIENT.get().map(String::as_str)
}

/// Whether the peer on `fd` is the balancer: a unix socket whose peer runs as
/// `balancer_user`. The error says who it was instead.
pub fn check_peer(fd: &impl AsFd, balancer_user: &str) -> Result<(), String> {
    let local = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()))
        .map_err(|e| format!("cannot tell the socket's kind: {e}"))?;
    if local.family() != Some(AddressFamily::Unix) {
        return Err(format!(
            "a PROXY header is believed only over a unix socket from {balancer_user}; this \
             connection is {:?} (a balancer on another host goes through a relay ucloud-lb \
             on this host: see ucloud-lb.conf(5), ANOTHER HOST)",
            local.family()
        ));
    }
    let peer = getsockopt(fd, sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let balancer = nix::unistd::User::from_name(balancer_user)
        .map_err(|e| format!("cannot look up the balancer's account {balancer_user}: {e}"))?
        .ok_or_else(|| format!("the balancer's account {balancer_user} does not exist"))?;
    if peer.uid() != balancer.uid.as_raw() {
        return Err(format!(
            "the peer is uid {} (pid {}), not the balancer's account {balancer_user} (uid {})",
            peer.uid(),
            peer.pid(),
            balancer.uid
        ));
    }
    Ok(())
}

/// Reads exactly the header (never a byte of the request behind it), with the
/// parser the balancer's relay mode uses too.
pub fn read_header(input: &mut impl Read) -> Result<Peer, String> {
    let peer = match proxy_v2::read_header(input)? {
        Origin::Client { source, .. } => Peer::Client(source),
        Origin::Own => Peer::Local,
    };
    if let Peer::Client(addr) = peer {
        let _ = CLIENT.set(addr.to_string());
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use ucloud_http::proxy_v2::SIGNATURE;

    #[test]
    fn only_the_balancers_account_on_a_unix_socket_is_believed() {
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(check_peer(&a, &me), Ok(()));
        let other = if me == "root" { "nobody" } else { "root" };
        let e = check_peer(&a, other).unwrap_err();
        assert!(e.contains("not the balancer's account"), "{e}");
        let e = check_peer(&a, "no-such-account-here").unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let e = check_peer(&tcp, &me).unwrap_err();
        assert!(e.contains("only over a unix socket"), "{e}");
    }

    fn header(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20 | cmd, fam]);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn ipv4_client_and_the_request_stays_unread() {
        let mut block = vec![192, 0, 2, 7, 127, 0, 0, 1];
        block.extend_from_slice(&40000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let mut bytes = header(1, 0x11, &block);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut input = &bytes[..];
        let peer = read_header(&mut input).unwrap();
        assert_eq!(peer, Peer::Client("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(input, b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn ipv6_mapped_local_and_tlvs() {
        let mut block = Ipv4Addr::new(10, 1, 2, 3)
            .to_ipv6_mapped()
            .octets()
            .to_vec();
        block.extend_from_slice(&[0; 16]);
        block.extend_from_slice(&[0, 80, 1, 187]);
        block.extend_from_slice(&[0x04, 0, 1, 0]); // a NOOP TLV, ignored
        let peer = read_header(&mut &header(1, 0x21, &block)[..]).unwrap();
        assert_eq!(peer, Peer::Client("10.1.2.3:80".parse().unwrap()));
        assert_eq!(
            read_header(&mut &header(0, 0, &[])[..]).unwrap(),
            Peer::Local
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"GET /ucloud-im/health HTTP/1.1\r\n\r\n".to_vec(),
                "does not start",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                "does not start",
            ),
            (SIGNATURE[..8].to_vec(), "no PROXY"),
            (header(1, 0x11, &[1, 2, 3]), "too short"),
            (header(7, 0x11, &[0; 12]), "command 7"),
            (header(1, 0x12, &[0; 12]), "not TCP"),
            (
                {
                    let mut h = header(1, 0x11, &[]);
                    h[14..16].copy_from_slice(&60000u16.to_be_bytes());
                    h
                },
                "at most",
            ),
            (header(1, 0x11, &[0; 12])[..20].to_vec(), "cut short"),
            (
                {
                    let mut h = header(1, 0x11, &[0; 12]);
                    h[12] = 0x11;
                    h
                },
                "version 1",
            ),
        ];
        for (bytes, words) in cases {
            let e = read_header(&mut &bytes[..]).unwrap_err();
            assert!(e.contains(words), "{words}: {e}");
        }
    }
}
