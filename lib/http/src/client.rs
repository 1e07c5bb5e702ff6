//! A small blocking HTTP/1.1 client: one request at a time over any `Read + Write`
//! stream, responses parsed with httparse, bodies framed by `Content-Length`,
//! chunked transfer coding, or the end of the connection. No redirects, no cookies,
//! no content decoding: the callers (the sender, the simulator's `call`) talk to one
//! known peer and decide themselves what a status means.
//!
//! [`Client`] keeps one connection open across requests (keep-alive) and opens a
//! new one when the peer closed the old one.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Limits on what a peer may make us buffer.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
pub const MAX_BODY: usize = 64 << 20;

/// One response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

impl Response {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The URL is not `http[s]://host[:port][/path]`.
    BadUrl(String),
    /// No TCP connection could be made.
    Connect(String),
    /// The TLS configuration could not be built (or this build has no TLS).
    Tls(String),
    /// The peer closed the connection before sending any byte of a response: on a
    /// reused keep-alive connection that means "open a new one".
    Closed,
    /// The peer was too slow.
    Timeout,
    /// The response breaks HTTP/1.1, or is larger than we accept.
    BadResponse(String),
    Io(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::BadUrl(why) => write!(f, "bad URL: {why}"),
            ClientError::Connect(why) => write!(f, "cannot connect: {why}"),
            ClientError::Tls(why) => write!(f, "TLS: {why}"),
            ClientError::Closed => write!(f, "the server closed the connection without answering"),
            ClientError::Timeout => write!(f, "the server did not answer in time"),
            ClientError::BadResponse(why) => write!(f, "malformed response: {why}"),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

fn from_io(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

fn bad(why: impl Into<String>) -> ClientError {
    ClientError::BadResponse(why.into())
}

/// Sends one request on `stream` and reads its response. `host` is the `Host`
/// header; `Content-Length` is added; `headers` must not hold `Host` or framing
/// headers.
pub fn request<S: Read + Write>(
    stream: &mut S,
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, ClientError> {
    write_request(stream, method, host, path_and_query, headers, body)?;
    read_response(stream, method == "HEAD")
}

fn write_request<S: Write>(
    stream: &mut S,
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), ClientError> {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let clean = |s: &str| s.bytes().all(|b| b != b'\r' && b != b'\n' && b != 0);
    if !token(method) || !path_and_query.starts_with('/') || !token(path_and_query) {
        return Err(ClientError::BadUrl(format!(
            "cannot send {method:?} {path_and_query:?}"
        )));
    }
    let mut head = format!("{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        if !token(name) || !clean(value) || !clean(host) {
            return Err(ClientError::BadUrl(format!("invalid header {name:?}")));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    // One write for the head and a small body: no Nagle stall between them.
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).map_err(from_io)?;
    stream.flush().map_err(from_io)
}

/// Buffered reading of exactly one response: never reads past its end when the
/// framing tells where that is.
struct Input<'a, R: Read> {
    inner: &'a mut R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> Input<'_, R> {
    /// Reads more bytes; `Ok(0)` at EOF. A TLS peer that closes without
    /// close_notify counts as EOF: framing decides whether that was complete.
    fn fill(&mut self) -> Result<usize, ClientError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.inner.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
                Err(e) => return Err(from_io(e)),
            }
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// One CRLF-terminated line (without the CRLF), at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, ClientError> {
        loop {
            if let Some(i) = self.available().windows(2).position(|w| w == b"\r\n") {
                let line = self.available()[..i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.available().len() > max {
                return Err(bad("line too long"));
            }
            if self.fill()? == 0 {
                return Err(bad("connection closed mid-response"));
            }
        }
    }

    fn take(&mut self, n: usize, out: &mut Vec<u8>) -> Result<(), ClientError> {
        let mut left = n;
        while left > 0 {
            if self.available().is_empty() && self.fill()? == 0 {
                return Err(bad("connection closed mid-body"));
            }
            let k = left.min(self.available().len());
            out.extend_from_slice(&self.available()[..k]);
            self.pos += k;
            left -= k;
        }
        Ok(())
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one response. Interim 1xx responses are skipped.
pub fn read_response<R: Read>(stream: &mut R, head_only: bool) -> Result<Response, ClientError> {
    let mut input = Input {
        inner: stream,
        buf: Vec::with_capacity(16 * 1024),
        pos: 0,
    };
    loop {
        let (status, headers, head_len, version) = loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(input.available()) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = parsed.code.ok_or_else(|| bad("no status code"))?;
                    // httparse takes any three digits; a caller reading `status < 300`
                    // as success must never see 000 to 099 (RFC 9110 15: 100 to 599).
                    if !(100..=599).contains(&status) {
                        return Err(bad(format!("status code {status} is not 100 to 599")));
                    }
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect();
                    break (status, headers, len, parsed.version.unwrap_or(1));
                }
                Ok(httparse::Status::Partial) => {
                    if input.available().len() > MAX_HEAD {
                        return Err(bad("response head too large"));
                    }
                    let before = input.available().len();
                    if input.fill()? == 0 {
                        return Err(if before == 0 {
                            ClientError::Closed
                        } else {
                            bad("connection closed mid-head")
                        });
                    }
                }
                Err(e) => return Err(bad(format!("{e}"))),
            }
        };
        input.pos += head_len;
        if (100..200).contains(&status) {
            // 101 would switch protocols: nothing this client asks for.
            if status == 101 {
                return Err(bad("unexpected 101 Switching Protocols"));
            }
            continue;
        }
        let header = |name: &str| {
            headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        let connection = header("connection").join(",").to_ascii_lowercase();
        let close = connection.split(',').any(|t| t.trim() == "close");
        let keep_alive = if version == 0 {
            connection.split(',').any(|t| t.trim() == "keep-alive")
        } else {
            !close
        };
        let te = header("transfer-encoding");
        let lengths = header("content-length");
        let framing = if head_only || status == 204 || status == 304 {
            Framing::None
        } else if !te.is_empty() {
            if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
                return Err(bad(format!("unsupported transfer-encoding {te:?}")));
            }
            Framing::Chunked
        } else if let Some(first) = lengths.first() {
            if lengths.iter().any(|l| l != first) {
                return Err(bad("conflicting content-length headers"));
            }
            if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) || first.len() > 12 {
                return Err(bad(format!("invalid content-length {first:?}")));
            }
            let n: usize = first.parse().map_err(|_| bad("invalid content-length"))?;
            if n > MAX_BODY {
                return Err(bad(format!("body of {n} bytes is larger than {MAX_BODY}")));
            }
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        let mut body = Vec::new();
        let mut reusable = keep_alive;
        match framing {
            Framing::None => {}
            Framing::Length(n) => input.take(n, &mut body)?,
            Framing::Chunked => read_chunked(&mut input, &mut body)?,
            Framing::UntilClose => {
                reusable = false;
                loop {
                    body.extend_from_slice(input.available());
                    input.pos = input.buf.len();
                    if body.len() > MAX_BODY {
                        return Err(bad("body too large"));
                    }
                    if input.fill()? == 0 {
                        break;
                    }
                }
            }
        }
        // Bytes nobody asked for: the connection is out of step, do not reuse it.
        if !input.available().is_empty() {
            reusable = false;
        }
        return Ok(Response {
            status,
            headers,
            body,
            reusable,
        });
    }
}

fn read_chunked<R: Read>(input: &mut Input<'_, R>, body: &mut Vec<u8>) -> Result<(), ClientError> {
    loop {
        let line = input.line(1024)?;
        let end = line.iter().position(|&c| c == b';').unwrap_or(line.len());
        let digits = std::str::from_utf8(&line[..end])
            .map_err(|_| bad("invalid chunk size"))?
            .trim();
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad(format!("invalid chunk size {digits:?}")));
        }
        let size = usize::from_str_radix(digits, 16).map_err(|_| bad("invalid chunk size"))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                if input.line(MAX_HEAD)?.is_empty() {
                    return Ok(());
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        input.take(size, body)?;
        if !input.line(2)?.is_empty() {
            return Err(bad("chunk data longer than its size"));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// `http[s]://host[:port][/base]`: where a peer is. Paths of requests are appended
/// to `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Without a trailing slash; empty for the root.
    pub base: String,
}

impl Url {
    pub fn parse(text: &str) -> Result<Url, ClientError> {
        let badurl = |why: &str| ClientError::BadUrl(format!("{text:?}: {why}"));
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(badurl("must start with http:// or https://"));
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if base.contains(['?', '#']) || base.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(badurl(
                "the base path may hold no query, fragment or spaces",
            ));
        }
        if authority.contains('@') {
            return Err(badurl("user info is not supported"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| badurl("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| badurl("bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(badurl("junk after ]")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host.to_string(), p.parse().map_err(|_| badurl("bad port"))?),
                None => (authority.to_string(), default_port),
            }
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
        if !host_ok || port == 0 {
            return Err(badurl("bad host or port"));
        }
        Ok(Url {
            scheme,
            host,
            port,
            base: base.to_string(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A connection to a peer, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// How to reach a peer: its URL, the TLS client configuration for `https://`, and
/// the time any connect, read or write may take.
#[derive(Clone)]
pub struct Endpoint {
    pub url: Url,
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

impl Endpoint {
    /// An endpoint for `url`; `https://` needs `ca_file`, the CA to trust.
    pub fn new(
        url: &str,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<Endpoint, ClientError> {
        let url = Url::parse(url)?;
        #[cfg(feature = "tls")]
        let tls = match (url.scheme, ca_file) {
            (Scheme::Https, Some(ca)) => {
                Some(crate::tls::client_config(ca).map_err(|e| ClientError::Tls(e.to_string()))?)
            }
            (Scheme::Https, None) => {
                return Err(ClientError::Tls(
                    "an https:// URL needs a CA file to trust".into(),
                ))
            }
            (Scheme::Http, _) => None,
        };
        #[cfg(not(feature = "tls"))]
        {
            let _ = ca_file;
            if url.scheme == Scheme::Https {
                return Err(ClientError::Tls("this build has no TLS support".into()));
            }
        }
        Ok(Endpoint {
            url,
            #[cfg(feature = "tls")]
            tls,
            timeout,
        })
    }

    /// Opens a new connection (TCP, then the TLS handshake for `https://`).
    pub fn connect(&self) -> Result<Stream, ClientError> {
        let addrs: Vec<_> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| ClientError::Connect(format!("{}: {e}", self.url.authority())))?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            ClientError::Connect(match last {
                Some(e) => format!("{}: {e}", self.url.authority()),
                None => format!("{}: no address", self.url.authority()),
            })
        })?;
        tcp.set_read_timeout(Some(self.timeout)).map_err(from_io)?;
        tcp.set_write_timeout(Some(self.timeout)).map_err(from_io)?;
        let _ = tcp.set_nodelay(true);
        match self.url.scheme {
            Scheme::Http => Ok(Stream::Plain(tcp)),
            #[cfg(feature = "tls")]
            Scheme::Https => {
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| ClientError::Tls("no TLS configuration".into()))?;
                let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
                    .map_err(|e| ClientError::Tls(format!("{}: {e}", self.url.host)))?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                // Handshake now, so certificate problems show as TLS errors, not as
                // a failed first request.
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|e| match e.kind() {
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                                ClientError::Timeout
                            }
                            _ => ClientError::Tls(format!("{}: {e}", self.url.authority())),
                        })?;
                }
                Ok(Stream::Tls(Box::new(stream)))
            }
            #[cfg(not(feature = "tls"))]
            Scheme::Https => Err(ClientError::Tls("this build has no TLS support".into())),
        }
    }
}

/// One peer, one kept-alive connection.
pub struct Client {
    endpoint: Endpoint,
    stream: Option<Stream>,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            stream: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one request to `base + path`. A kept-alive connection the peer closed
    /// in the meantime is replaced once; any other failure drops the connection and
    /// is returned.
    pub fn send(
        &mut self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let target = format!("{}{}", self.endpoint.url.base, path_and_query);
        let host = self.endpoint.url.authority();
        let reused = self.stream.is_some();
        let result = self.send_once(method, &host, &target, headers, body);
        let result = match result {
            Err(ClientError::Closed) | Err(ClientError::Io(_)) if reused => {
                self.send_once(method, &host, &target, headers, body)
            }
            other => other,
        };
        match &result {
            Ok(response) if response.reusable => {}
            _ => self.stream = None,
        }
        result
    }

    fn send_once(
        &mut self,
        method: &str,
        host: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.endpoint.connect()?,
        };
        let response = request(&mut stream, method, host, target, headers, body)?;
        self.stream = Some(stream);
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake connection: reads from a canned answer, records what was written.
    struct Duplex {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn duplex(answer: &[u8]) -> Duplex {
        Duplex {
            input: io::Cursor::new(answer.to_vec()),
            output: Vec::new(),
        }
    }

    #[test]
    fn request_is_framed_and_length_body_read() {
        let mut d = duplex(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}");
        let r = request(
            &mut d,
            "POST",
            "h:1",
            "/api/x",
            &[("Content-Type", "application/json")],
            b"{\"a\":1}",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(r.header("x-a"), Some("b"));
        assert!(r.reusable);
        assert_eq!(
            d.output,
            b"POST /api/x HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn chunked_bodies_and_interim_responses() {
        let mut d = duplex(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        );
        let r = request(&mut d, "GET", "h", "/", &[], b"").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"abcde"[..]));
        assert!(r.reusable);
    }

    #[test]
    fn status_codes_outside_100_to_599_are_refused() {
        // Found by the http_response fuzz target: "050" parsed as status 50.
        for line in [
            "HTTP/1.1 050 Odd",
            "HTTP/1.1 000 X",
            "HTTP/1.1 600 X",
            "HTTP/1.1 999 X",
        ] {
            let mut d = duplex(format!("{line}\r\nContent-Length: 0\r\n\r\n").as_bytes());
            let e = request(&mut d, "GET", "h", "/", &[], b"").unwrap_err();
            assert!(e.to_string().contains("is not 100 to 599"), "{line}: {e}");
        }
    }

    #[test]
    fn close_delimited_and_connection_close() {
        let mut d = duplex(b"HTTP/1.1 200 OK\r\n\r\nall of it");
        let r = request(&mut d, "GET", "h", "/", &[], b"").unwrap();
        assert_eq!(r.body, b"all of it");
        assert!(!r.reusable);
        let mut d = duplex(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let r = request(&mut d, "GET", "h", "/", &[], b"").unwrap();
        assert!(r.body.is_empty() && !r.reusable);
    }

    #[test]
    fn broken_responses_are_errors() {
        for answer in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-",
        ] {
            let mut d = duplex(answer);
            let r = request(&mut d, "GET", "h", "/", &[], b"");
            assert!(
                matches!(r, Err(ClientError::BadResponse(_))),
                "{}: {r:?}",
                String::from_utf8_lossy(answer)
            );
        }
        let mut d = duplex(b"");
        assert!(matches!(
            request(&mut d, "GET", "h", "/", &[], b""),
            Err(ClientError::Closed)
        ));
    }

    #[test]
    fn header_injection_is_refused() {
        let mut d = duplex(b"");
        for (path, headers) in [
            ("/a b", vec![]),
            ("no-slash", vec![]),
            ("/", vec![("X", "a\r\nEvil: 1")]),
            ("/", vec![("Bad Name", "v")]),
        ] {
            assert!(matches!(
                request(&mut d, "GET", "h", path, &headers, b""),
                Err(ClientError::BadUrl(_))
            ));
        }
        assert!(d.output.is_empty());
    }

    #[test]
    fn urls() {
        let u = Url::parse("https://127.0.0.1:18443/base/").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.base.as_str()),
            (Scheme::Https, "127.0.0.1", 18443, "/base")
        );
        assert_eq!(u.authority(), "127.0.0.1:18443");
        let u = Url::parse("http://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(u.authority(), "[::1]:80");
        for bad in [
            "ftp://x",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://u@h",
            "http://h/a?b",
            "http://h h",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_replaces_a_connection_the_peer_closed() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // First connection: answers one request, then closes (idle timeout).
            for answer in ["one", "two"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                let body = answer.as_bytes();
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .unwrap();
                s.write_all(body).unwrap();
            }
        });
        let endpoint = Endpoint::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let mut client = Client::new(endpoint);
        assert_eq!(client.send("GET", "/", &[], b"").unwrap().body, b"one");
        // Give the server time to drop the first connection.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(client.send("GET", "/", &[], b"").unwrap().body, b"two");
        server.join().unwrap();
    }
}
