//! ucloud-lb.conf(5): global `key = value` lines, then one `[backend NAME]` section
//! per gateway. `#` starts a comment line. Unknown keys, repeated keys and bad values
//! are errors with the line number: a typo must never fall back to a default.

use crate::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a gateway listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What happens to the connections relayed to a backend when the balancer marks it
/// down (failed health checks, a refused connect, a reset before an answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMarkedDown {
    /// Close them at once: a client whose host vanished reconnects (to a live one)
    /// instead of waiting on a connection nothing will answer.
    Close,
    /// Leave them be: they end on their own, or at `idle_timeout`.
    Keep,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// `[A-Za-z0-9_.-]{1,64}`: it appears in logs and metric labels unquoted.
    pub name: String,
    pub address: Address,
    /// Relative share of new connections; 0 takes none (like `drain`).
    pub weight: u32,
    /// Send a PROXY protocol v2 header first (the gateway's balancer-facing socket).
    pub proxy_protocol: bool,
    /// No new connections; existing ones finish.
    pub drain: bool,
    /// Connections to it at once; below its socket's MaxConnections= (see the budget
    /// in ucloud-lb.conf(5)), so that the socket never refuses the balancer.
    pub max_connections: usize,
    /// Mutual TLS to a relay balancer on the gateway's host (`tls_*` keys).
    pub tls: Option<BackendTls>,
    /// `on_marked_down` of the section, else the global one.
    pub on_marked_down: OnMarkedDown,
}

/// How a balancer reaches a relay on another host: the relay's certificate must
/// verify against `ca` for `name`, and ours (`certificate`) is what the relay checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTls {
    pub ca: PathBuf,
    /// A DNS name or an IP address the relay's certificate must carry.
    pub name: String,
    /// `(certificate chain, key)`.
    pub certificate: (PathBuf, PathBuf),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Bound when the service manager passes no socket.
    pub listen: Option<SocketAddr>,
    /// Prometheus text on `GET /metrics`; keep it on a local address.
    pub metrics: Option<SocketAddr>,
    /// `(certificate chain, key)` pairs; the first the client can verify is used.
    pub certificates: Vec<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub max_per_client: usize,
    /// Connections to gateways one client address holds at once: less than all
    /// backends together, so other clients keep a share.
    pub max_backend_per_client: usize,
    pub handshake_timeout: Duration,
    /// A whole request head must arrive within this after the handshake; no
    /// gateway is connected before it has.
    pub request_timeout: Duration,
    /// How long a complete request waits for a place on a gateway.
    pub queue_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub health_rise: u32,
    pub health_fall: u32,
    pub health_path: String,
    /// The default of the backends' `on_marked_down`.
    pub on_marked_down: OnMarkedDown,
    /// Relay mode: every client must present a certificate issued by this CA (the
    /// balancers on other hosts) and open with a PROXY v2 header, whose address is
    /// then the client's. Without it no client is asked for a certificate and no
    /// header is read.
    pub client_ca: Option<PathBuf>,
    pub backends: Vec<BackendConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            line: 0,
            why: format!("cannot read it: {e}"),
        })?;
        parse(&text).map_err(|(line, why)| Error::Config {
            file: path.to_path_buf(),
            line,
            why,
        })
    }
}

type Fail = (usize, String);
/// A `[backend NAME]` being read: its line, name, and `(line, key, value)`s.
type Section = (usize, String, Vec<(usize, String, String)>);

pub fn parse(text: &str) -> Result<Config, Fail> {
    let mut config = Config {
        listen: None,
        metrics: None,
        certificates: Vec::new(),
        // A UCloud core opens bursts of a few hundred connections from one address.
        max_connections: 4096,
        max_per_client: 512,
        // Half of one gateway's places (240, below its socket's 256).
        max_backend_per_client: 120,
        handshake_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        queue_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(300),
        // A login host on the site's network accepts within milliseconds; a longer
        // wait only delays the try on another one when a host's link is down.
        connect_timeout: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(30),
        health_interval: Duration::from_secs(2),
        health_timeout: Duration::from_secs(2),
        health_rise: 2,
        health_fall: 3,
        health_path: "/ucloud-im/health".to_string(),
        on_marked_down: OnMarkedDown::Close,
        client_ca: None,
        backends: Vec::new(),
    };
    let mut seen: Vec<String> = Vec::new();
    let mut section: Option<Section> = None;
    for (index, raw) in text.lines().enumerate() {
        let n = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_prefix('[') {
            let head = head
                .strip_suffix(']')
                .ok_or((n, "a section line must end with ]".to_string()))?;
            let name = head
                .strip_prefix("backend ")
                .map(str::trim)
                .ok_or((n, format!("unknown section [{head}]: only [backend NAME]")))?;
            if let Some((at, name, keys)) = section.take() {
                config
                    .backends
                    .push(backend(at, name, keys, config.on_marked_down)?);
            }
            check_name(name).map_err(|why| (n, why))?;
            if config.backends.iter().any(|b| b.name == name) {
                return Err((n, format!("backend {name} is defined twice")));
            }
            section = Some((n, name.to_string(), Vec::new()));
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or((n, format!("expected key = value, got {line:?}")))?;
        let (key, value) = (key.trim().to_string(), value.trim().to_string());
        if let Some((_, _, keys)) = section.as_mut() {
            keys.push((n, key, value));
            continue;
        }
        if key != "certificate" {
            if seen.contains(&key) {
                return Err((n, format!("{key} is set twice")));
            }
            seen.push(key.clone());
        }
        global(&mut config, &key, &value).map_err(|why| (n, why))?;
    }
    if let Some((at, name, keys)) = section.take() {
        config
            .backends
            .push(backend(at, name, keys, config.on_marked_down)?);
    }
    if config.certificates.is_empty() {
        return Err((0, "no certificate = CERT.pem KEY.pem line".to_string()));
    }
    if config.backends.is_empty() {
        return Err((0, "no [backend NAME] section".to_string()));
    }
    let places: usize = config.backends.iter().map(|b| b.max_connections).sum();
    if config.max_backend_per_client == 0 || config.max_backend_per_client >= places {
        return Err((
            0,
            format!(
                "max_backend_per_client = {} must be at least 1 and below the backends' \
                 max_connections together ({places}): one client must leave places for others",
                config.max_backend_per_client
            ),
        ));
    }
    if config.health_rise == 0 || config.health_fall == 0 {
        return Err((
            0,
            "health_rise and health_fall must be at least 1".to_string(),
        ));
    }
    Ok(config)
}

fn global(c: &mut Config, key: &str, value: &str) -> Result<(), String> {
    match key {
        "listen" => c.listen = Some(addr(value)?),
        "metrics" => c.metrics = Some(addr(value)?),
        "certificate" => {
            let mut parts = value.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(cert), Some(key), None) => {
                    c.certificates.push((cert.into(), key.into()));
                }
                _ => return Err("certificate = CERT.pem KEY.pem (two paths)".to_string()),
            }
        }
        "max_connections" => c.max_connections = count(value)?,
        "max_per_client" => c.max_per_client = count(value)?,
        "max_backend_per_client" => c.max_backend_per_client = count(value)?,
        "handshake_timeout" => c.handshake_timeout = seconds(value)?,
        "request_timeout" => c.request_timeout = seconds(value)?,
        "queue_timeout" => c.queue_timeout = seconds(value)?,
        "idle_timeout" => c.idle_timeout = seconds(value)?,
        "connect_timeout" => c.connect_timeout = seconds(value)?,
        "drain_timeout" => c.drain_timeout = seconds(value)?,
        "health_interval" => c.health_interval = seconds(value)?,
        "health_timeout" => c.health_timeout = seconds(value)?,
        "health_rise" => c.health_rise = count(value)? as u32,
        "health_fall" => c.health_fall = count(value)? as u32,
        "health_path" => {
            if !value.starts_with('/') || value.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                return Err(format!(
                    "health_path {value:?}: a path starting with /, no spaces"
                ));
            }
            c.health_path = value.to_string();
        }
        "client_ca" => c.client_ca = Some(one_path(value)?),
        "on_marked_down" => c.on_marked_down = on_marked_down(value)?,
        _ => return Err(format!("unknown key {key:?} (see ucloud-lb.conf(5))")),
    }
    Ok(())
}

fn backend(
    at: usize,
    name: String,
    keys: Vec<(usize, String, String)>,
    mut on_down: OnMarkedDown,
) -> Result<BackendConfig, Fail> {
    let (mut address, mut weight, mut proxy, mut drain) = (None, 1, false, false);
    let (mut tls_ca, mut tls_name, mut tls_certificate) = (None, None, None);
    // The gateway socket's MaxConnections= is 256: the rest is for health checks.
    let mut max_connections = 240;
    let mut seen: Vec<String> = Vec::new();
    for (n, key, value) in keys {
        if seen.contains(&key) {
            return Err((n, format!("{key} is set twice in [backend {name}]")));
        }
        seen.push(key.clone());
        let set = match key.as_str() {
            "address" => backend_address(&value).map(|a| address = Some(a)),
            "weight" => count(&value).and_then(|w| {
                u32::try_from(w)
                    .ok()
                    .filter(|w| *w <= 1000)
                    .map(|w| weight = w)
                    .ok_or_else(|| "weight must be 0..=1000".to_string())
            }),
            "proxy_protocol" => boolean(&value).map(|b| proxy = b),
            "drain" => boolean(&value).map(|b| drain = b),
            "max_connections" => count(&value).and_then(|n| {
                (n >= 1)
                    .then(|| max_connections = n)
                    .ok_or_else(|| "max_connections must be at least 1".to_string())
            }),
            "tls_ca" => one_path(&value).map(|p| tls_ca = Some(p)),
            "tls_name" => server_name(&value).map(|v| tls_name = Some(v)),
            "tls_certificate" => two_paths(&value).map(|pair| tls_certificate = Some(pair)),
            "on_marked_down" => on_marked_down(&value).map(|v| on_down = v),
            _ => Err(format!("unknown key {key:?} in [backend {name}]")),
        };
        set.map_err(|why| (n, why))?;
    }
    let address = address.ok_or((at, format!("[backend {name}] has no address")))?;
    let tls = match (tls_ca, tls_certificate, tls_name) {
        (None, None, None) => None,
        (Some(ca), Some(certificate), name_set) => {
            let Address::Tcp(to) = address else {
                return Err((
                    at,
                    format!(
                        "[backend {name}]: tls_* keys are for a TCP address, not a unix socket"
                    ),
                ));
            };
            if !proxy {
                return Err((
                    at,
                    format!(
                        "[backend {name}]: a relay reached over TLS expects the PROXY header: \
                         add proxy_protocol = yes"
                    ),
                ));
            }
            Some(BackendTls {
                ca,
                name: name_set.unwrap_or_else(|| to.ip().to_string()),
                certificate,
            })
        }
        _ => {
            return Err((
                at,
                format!(
                    "[backend {name}]: TLS to a relay needs both tls_ca = CA.pem and \
                     tls_certificate = CERT.pem KEY.pem (tls_name is optional)"
                ),
            ))
        }
    };
    Ok(BackendConfig {
        name,
        address,
        weight,
        proxy_protocol: proxy,
        drain,
        max_connections,
        tls,
        on_marked_down: on_down,
    })
}

fn on_marked_down(value: &str) -> Result<OnMarkedDown, String> {
    match value {
        "close" => Ok(OnMarkedDown::Close),
        "keep" => Ok(OnMarkedDown::Keep),
        _ => Err(format!(
            "on_marked_down {value:?}: use close (cut its connections) or keep"
        )),
    }
}

fn one_path(value: &str) -> Result<PathBuf, String> {
    let mut parts = value.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(p), None) if p.starts_with('/') => Ok(p.into()),
        _ => Err(format!("{value:?}: one absolute path")),
    }
}

fn two_paths(value: &str) -> Result<(PathBuf, PathBuf), String> {
    let mut parts = value.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(cert), Some(key), None) if cert.starts_with('/') && key.starts_with('/') => {
            Ok((cert.into(), key.into()))
        }
        _ => Err(format!("{value:?}: CERT.pem KEY.pem (two absolute paths)")),
    }
}

/// A DNS name (letters, digits, `-` and `.`, as certificates carry them) or an IP
/// address; what TLS can verify and a log can show unquoted.
fn server_name(value: &str) -> Result<String, String> {
    let dns = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if dns || value.parse::<std::net::IpAddr>().is_ok() {
        Ok(value.to_string())
    } else {
        Err(format!("tls_name {value:?}: a DNS name or an IP address"))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backend name {name:?}: use 1-64 of A-Z a-z 0-9 _ . -"
        ))
    }
}

fn addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is no IP:PORT address (e.g. 127.0.0.1:8443, [::1]:8443)"))
}

fn backend_address(value: &str) -> Result<Address, String> {
    match value.strip_prefix("unix:") {
        Some(path) if path.starts_with('/') => Ok(Address::Unix(path.into())),
        Some(_) => Err(format!("{value:?}: a unix socket needs an absolute path")),
        None => addr(value).map(Address::Tcp),
    }
}

fn count(value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is no whole number"))
}

/// Seconds, fractions allowed (`0.5`), at most a day.
fn seconds(value: &str) -> Result<Duration, String> {
    let s: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is no number of seconds"))?;
    if !(0.001..=86400.0).contains(&s) {
        return Err(format!("{value} s is out of range (0.001 to 86400)"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err(format!("{value:?}: use yes or no")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# comment
listen = 127.0.0.1:8443
certificate = /e/ec.pem /e/ec.key
certificate = /e/rsa.pem /e/rsa.key
health_interval = 0.5
[backend gw1]
address = 127.0.0.1:8889
proxy_protocol = yes
weight = 3
[backend gw2]
address = unix:/run/gw.sock
drain = yes
";

    #[test]
    fn a_full_file_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(c.certificates.len(), 2);
        assert_eq!(c.health_interval, Duration::from_millis(500));
        assert_eq!(c.max_per_client, 512);
        assert_eq!(c.max_backend_per_client, 120);
        assert_eq!(c.backends[0].max_connections, 240);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[0].weight, 3);
        assert!(c.backends[0].proxy_protocol && !c.backends[0].drain);
        assert_eq!(c.backends[1].address, Address::Unix("/run/gw.sock".into()));
        assert!(c.backends[1].drain && !c.backends[1].proxy_protocol);
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.on_marked_down, OnMarkedDown::Close);
        assert_eq!(c.backends[0].on_marked_down, OnMarkedDown::Close);
    }

    #[test]
    fn on_marked_down_is_global_with_a_per_backend_override() {
        let c = parse(
            "certificate = /c /k\non_marked_down = keep\n[backend a]\naddress = 1.2.3.4:5\n\
             [backend b]\naddress = 1.2.3.4:6\non_marked_down = close\n",
        )
        .unwrap();
        assert_eq!(c.on_marked_down, OnMarkedDown::Keep);
        assert_eq!(c.backends[0].on_marked_down, OnMarkedDown::Keep);
        assert_eq!(c.backends[1].on_marked_down, OnMarkedDown::Close);
        let bad = [
            ("certificate = a b\non_marked_down = yes\n", 2),
            ("certificate = a b\non_marked_down = Close\n", 2),
            ("certificate = a b\non_marked_down =\n", 2),
            ("certificate = a b\non_marked_down = close keep\n", 2),
            ("certificate = a b\non_marked_down = \u{1b}[2J\n", 2),
            (
                "certificate = a b\non_marked_down = keep\non_marked_down = close\n",
                3,
            ),
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\non_marked_down = drop\n",
                4,
            ),
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\non_marked_down = keep\n\
                 on_marked_down = keep\n",
                5,
            ),
        ];
        for (text, line) in bad {
            let (n, why) = parse(text).unwrap_err();
            assert_eq!(n, line, "{text}: {why}");
            assert!(
                why.contains("on_marked_down") || why.contains("twice"),
                "{text}: {why}"
            );
        }
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\nwieght = 2\n",
                4,
                "unknown key",
            ),
            ("certificate = a b\nlisten = nowhere\n", 2, "IP:PORT"),
            (
                "certificate = a b\nlisten = 1.2.3.4:5\nlisten = 1.2.3.4:6\n",
                3,
                "twice",
            ),
            ("certificate = a\n", 1, "two paths"),
            (
                "certificate = a b\n[backend ../x]\naddress = 1.2.3.4:5\n",
                2,
                "backend name",
            ),
            (
                "certificate = a b\n[backend x]\naddress = unix:rel\n",
                3,
                "absolute",
            ),
            ("certificate = a b\n[backend x]\n", 2, "no address"),
            ("certificate = a b\nidle_timeout = -1\n", 2, "out of range"),
            ("certificate = a b\n[frontend]\n", 2, "unknown section"),
            ("[backend x]\naddress = 1.2.3.4:5\n", 0, "no certificate"),
            ("certificate = a b\n", 0, "no [backend"),
            (
                "certificate = a b\nmax_backend_per_client = 20\n[backend x]\n\
                 address = 1.2.3.4:5\nmax_connections = 20\n",
                0,
                "leave places for others",
            ),
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\nmax_connections = 0\n",
                4,
                "at least 1",
            ),
        ];
        for (text, line, words) in cases {
            let (n, why) = parse(text).unwrap_err();
            assert_eq!(n, line, "{text}: {why}");
            assert!(why.contains(words), "{text}: {why}");
        }
    }

    const EDGE: &str = "certificate = /e/c.pem /e/c.key\n[backend far]\naddress = 10.0.0.12:8444\n\
                        proxy_protocol = yes\ntls_ca = /e/site-ca.pem\n\
                        tls_certificate = /e/edge.pem /e/edge.key\n";

    #[test]
    fn a_relay_and_an_edge_parse() {
        let relay = parse(
            "certificate = /e/c.pem /e/c.key\nclient_ca = /e/site-ca.pem\n\
             [backend gw]\naddress = unix:/run/gw.sock\nproxy_protocol = yes\n",
        )
        .unwrap();
        assert_eq!(relay.client_ca, Some(PathBuf::from("/e/site-ca.pem")));
        assert_eq!(relay.backends[0].tls, None);
        assert_eq!(parse(GOOD).unwrap().client_ca, None);
        let edge = parse(EDGE).unwrap();
        let tls = edge.backends[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca, PathBuf::from("/e/site-ca.pem"));
        // Without tls_name the relay's certificate must name the address's IP.
        assert_eq!(tls.name, "10.0.0.12");
        assert_eq!(tls.certificate.1, PathBuf::from("/e/edge.key"));
        let named = parse(&format!("{EDGE}tls_name = gw1.site.example\n")).unwrap();
        assert_eq!(
            named.backends[0].tls.as_ref().unwrap().name,
            "gw1.site.example"
        );
    }

    #[test]
    fn hostile_tls_keys_are_refused_with_their_line() {
        let cases = [
            // Half a TLS setup must not fall back to plain TCP.
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\nproxy_protocol = yes\n\
                 tls_ca = /ca.pem\n",
                2,
                "needs both",
            ),
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\nproxy_protocol = yes\n\
                 tls_name = gw\n",
                2,
                "needs both",
            ),
            (
                "certificate = a b\n[backend x]\naddress = 1.2.3.4:5\n\
                 tls_ca = /ca.pem\ntls_certificate = /c /k\n",
                2,
                "proxy_protocol = yes",
            ),
            (
                "certificate = a b\n[backend x]\naddress = unix:/run/s\nproxy_protocol = yes\n\
                 tls_ca = /ca.pem\ntls_certificate = /c /k\n",
                2,
                "not a unix socket",
            ),
            (
                "certificate = a b\nclient_ca = relative.pem\n",
                2,
                "absolute",
            ),
            (
                "certificate = a b\nclient_ca = /a.pem /b.pem\n",
                2,
                "one absolute",
            ),
            ("certificate = a b\nclient_ca =\n", 2, "one absolute"),
            (
                "certificate = a b\nclient_ca = /a\nclient_ca = /b\n",
                3,
                "twice",
            ),
            (
                "certificate = a b\n[backend x]\ntls_ca = ca.pem\n",
                3,
                "absolute",
            ),
            (
                "certificate = a b\n[backend x]\ntls_certificate = /c\n",
                3,
                "two absolute",
            ),
            (
                "certificate = a b\n[backend x]\ntls_certificate = /c k\n",
                3,
                "two absolute",
            ),
            (
                "certificate = a b\n[backend x]\ntls_certificate = /c /k /x\n",
                3,
                "two absolute",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = gw\ntls_name = gw\n",
                4,
                "twice",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = a b\n",
                3,
                "DNS name",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = gw..x\n",
                3,
                "DNS name",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = gw\u{1b}[2J\n",
                3,
                "DNS name",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = *.x\n",
                3,
                "DNS name",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = \n",
                3,
                "DNS name",
            ),
            (
                "certificate = a b\n[backend x]\ntls_name = \u{e9}x.example\n",
                3,
                "DNS name",
            ),
        ];
        for (text, line, words) in cases {
            let (n, why) = parse(text).unwrap_err();
            assert_eq!(n, line, "{text}: {why}");
            assert!(why.contains(words), "{text}: {why}");
        }
        let long = format!("{EDGE}tls_name = {}\n", "a".repeat(64));
        assert!(parse(&long).unwrap_err().1.contains("DNS name"));
        let ok_ip = parse(&format!("{EDGE}tls_name = ::1\n")).unwrap();
        assert_eq!(ok_ip.backends[0].tls.as_ref().unwrap().name, "::1");
    }
}
