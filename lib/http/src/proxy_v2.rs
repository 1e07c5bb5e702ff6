//! The PROXY protocol v2 header (haproxy.org proxy-protocol.txt, section 2.2) that
//! names the real client: ucloud-lb writes it to a gateway (or to a relay
//! ucloud-lb on the gateway's host), and the gateway and a relay read it. One
//! parser for both readers, so they cannot disagree on what a header means.

use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// `PROXY` command: a TCP client `source` that connected to our `dest`.
pub fn proxy(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // AF_INET, STREAM
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            // Mixed families (a v4 client on a dual-stack socket) travel as v6.
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
                SocketAddr::V6(v6) => *v6.ip(),
            };
            h.push(0x21); // AF_INET6, STREAM
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    h
}

/// `LOCAL` command: a connection of the balancer's own (health checks).
pub fn local() -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    h
}

/// Far above what an address block with a few TLVs needs; a bigger claim is hostile.
const MAX_LEN: usize = 512;

/// Whom a header speaks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    /// A TCP client `source` that connected to `dest`.
    Client {
        source: SocketAddr,
        dest: SocketAddr,
    },
    /// The sender's own connection (`LOCAL`: its health checks), or an address
    /// family with nothing to pass on (unspecified, unix).
    Own,
}

/// The header at the start of `bytes`: `Ok(None)` while it is incomplete,
/// `Ok(Some((origin, length)))` once whole (`length` bytes are the header's).
pub fn parse(bytes: &[u8]) -> Result<Option<(Origin, usize)>, String> {
    let sig = bytes.len().min(SIGNATURE.len());
    if bytes[..sig] != SIGNATURE[..sig] {
        return Err("the connection does not start with a PROXY v2 header".into());
    }
    if bytes.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return Err(format!("PROXY header version {version}, expected 2"));
    }
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if len > MAX_LEN {
        return Err(format!(
            "PROXY header claims {len} bytes of addresses (at most {MAX_LEN})"
        ));
    }
    let Some(block) = bytes.get(16..16 + len) else {
        return Ok(None);
    };
    let origin = match (command, bytes[13]) {
        (0, _) => Origin::Own,
        (1, 0x11) => {
            let a = block.get(..12).ok_or("PROXY v2 IPv4 block too short")?;
            let ip = |o: &[u8]| IpAddr::from([o[0], o[1], o[2], o[3]]);
            let port = |o: &[u8]| u16::from_be_bytes([o[0], o[1]]);
            Origin::Client {
                source: SocketAddr::new(ip(&a[0..4]), port(&a[8..10])),
                dest: SocketAddr::new(ip(&a[4..8]), port(&a[10..12])),
            }
        }
        (1, 0x21) => {
            let a = block.get(..36).ok_or("PROXY v2 IPv6 block too short")?;
            let ip = |o: &[u8]| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(o);
                let ip = Ipv6Addr::from(octets);
                ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)
            };
            let port = |o: &[u8]| u16::from_be_bytes([o[0], o[1]]);
            Origin::Client {
                source: SocketAddr::new(ip(&a[0..16]), port(&a[32..34])),
                dest: SocketAddr::new(ip(&a[16..32]), port(&a[34..36])),
            }
        }
        (1, 0x00 | 0x31 | 0x32) => Origin::Own,
        (1, family) => {
            return Err(format!(
                "PROXY v2 address family/protocol {family:#04x} is not TCP"
            ))
        }
        (command, _) => return Err(format!("PROXY v2 command {command} is unknown")),
    };
    Ok(Some((origin, 16 + len)))
}

/// Reads exactly one header from `input`, never a byte of what follows it (the
/// gateway hands the rest of the stream to its HTTP reader).
pub fn read_header(input: &mut impl Read) -> Result<Origin, String> {
    let mut head = vec![0u8; 16];
    input
        .read_exact(&mut head)
        .map_err(|e| format!("no PROXY v2 header: {e}"))?;
    // The fixed part is checked first, so a hostile length is refused unread.
    if let Some((origin, _)) = parse(&head)? {
        return Ok(origin);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    head.resize(16 + len, 0);
    input
        .read_exact(&mut head[16..])
        .map_err(|e| format!("PROXY v2 header cut short: {e}"))?;
    match parse(&head)? {
        Some((origin, _)) => Ok(origin),
        None => Err("PROXY v2 header incomplete after its stated length".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_we_send_parses_back_whatever_way_it_is_cut() {
        let (source, dest) = (
            "192.0.2.7:40000".parse().unwrap(),
            "198.51.100.1:443".parse().unwrap(),
        );
        let mut bytes = proxy(source, dest);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for cut in 0..28 {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse(&bytes),
            Ok(Some((Origin::Client { source, dest }, 28)))
        );
        let v6: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        let h = proxy(v6, dest);
        let mapped = SocketAddr::new(dest.ip(), 443);
        assert_eq!(
            parse(&h),
            Ok(Some((
                Origin::Client {
                    source: v6,
                    dest: mapped
                },
                52
            )))
        );
        assert_eq!(parse(&local()), Ok(Some((Origin::Own, 16))));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0, 12]);
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        let mut udp = SIGNATURE.to_vec();
        udp.extend_from_slice(&[0x21, 0x12, 0, 12]);
        udp.extend_from_slice(&[0; 12]);
        let mut command = SIGNATURE.to_vec();
        command.extend_from_slice(&[0x2f, 0x11, 0, 0]);
        let cases: [(&[u8], &str); 7] = [
            (b"GET / HTTP/1.1\r\n\r\n", "does not start"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "does not start"),
            (&long, "at most 512"),
            (&v1, "version 1"),
            (&short, "too short"),
            (&udp, "not TCP"),
            (&command, "unknown"),
        ];
        for (bytes, words) in cases {
            let why = parse(bytes).unwrap_err();
            assert!(why.contains(words), "{bytes:?}: {why}");
        }
    }

    #[test]
    fn ipv4_header_is_28_bytes_in_network_order() {
        let h = proxy(
            "192.0.2.7:40000".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[24..26], &40000u16.to_be_bytes());
        assert_eq!(&h[26..28], &443u16.to_be_bytes());
    }

    #[test]
    fn ipv6_and_local() {
        let h = proxy(
            "[2001:db8::1]:5".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(local().len(), 16);
        assert_eq!(local()[12], 0x20);
    }
}
