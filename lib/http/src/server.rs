//! The server side of HTTP/1.1: read one request at a time from a byte stream
//! (keeping pipelined leftovers), and write responses.
//!
//! Every limit is enforced while reading, so a hostile peer can make us buffer at
//! most `max_head` bytes of head and `max_body` bytes of body. Errors say which rule
//! was broken; `HttpError::status` gives the status to answer with before closing.

use std::fmt;
use std::io::{self, Read, Write};

/// Size limits for one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, including the blank line.
    pub max_head: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// Decoded body bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 8 * 1024 * 1024,
        }
    }
}

/// One parsed request with its whole body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// Names lower-cased, values as sent (trimmed by the parser), in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

impl Request {
    /// A request made in code, not read from a connection (tests, and what a
    /// program hands itself): no body, keep-alive, header names lower-cased as the
    /// reader stores them.
    pub fn new(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: Vec::new(),
            keep_alive: true,
        }
    }

    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without the query string.
    pub fn path(&self) -> &str {
        match self.target.find('?') {
            Some(i) => &self.target[..i],
            None => &self.target,
        }
    }

    /// The raw query string (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.find('?').map(|i| &self.target[i + 1..])
    }

    /// The first query parameter of that name, percent-decoded (`+` is a space).
    /// `None` also when the value is not valid UTF-8 after decoding.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(self.query()?)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Decoded `key=value` pairs of a query string; pairs that do not decode to UTF-8
/// are skipped (a client cannot smuggle bytes past a check that way).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = match pair.find('=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, ""),
            };
            Some((percent_decode(k)?, percent_decode(v)?))
        })
}

/// Percent-decoding for query components; `None` for a bad escape or non-UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    String::from_utf8(percent_decode_bytes(s)?).ok()
}

/// Percent-decoding to bytes (`+` is a space, as in a form); `None` for a bad
/// escape: `%` not followed by two hex digits.
pub fn percent_decode_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex_val(*b.get(i + 1)?)?;
                let lo = hex_val(*b.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum HttpError {
    /// The peer closed the connection in the middle of a request.
    Closed,
    /// A read timed out (socket receive timeout).
    Timeout,
    /// The request breaks HTTP/1.1; the text says how.
    BadRequest(String),
    /// The head is larger than `max_head` or has more than `max_headers` lines.
    HeadTooLarge,
    /// The body is larger than `max_body`.
    BodyTooLarge,
    Io(io::Error),
}

impl HttpError {
    /// The status to answer with, or `None` when nothing can be answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::BadRequest(_) => Some(400),
            HttpError::HeadTooLarge => Some(431),
            HttpError::BodyTooLarge => Some(413),
            HttpError::Timeout => Some(408),
            HttpError::Closed | HttpError::Io(_) => None,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Closed => write!(f, "the client closed the connection mid-request"),
            HttpError::Timeout => write!(f, "the client was too slow sending the request"),
            HttpError::BadRequest(why) => write!(f, "malformed request: {why}"),
            HttpError::HeadTooLarge => {
                write!(f, "request head too large (too long or too many headers)")
            }
            HttpError::BodyTooLarge => write!(f, "request body too large"),
            HttpError::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

fn bad(why: impl Into<String>) -> HttpError {
    HttpError::BadRequest(why.into())
}

fn from_io(e: io::Error) -> HttpError {
    match e.kind() {
        // SO_RCVTIMEO expiry shows as EAGAIN/EWOULDBLOCK on Linux.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => HttpError::Closed,
        _ => HttpError::Io(e),
    }
}

/// Reads requests from `inner`, buffering; bytes after one request stay for the next.
pub struct Reader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// Whether the last request got an interim `100 Continue`.
    continue_sent: bool,
    /// `copy_body`'s buffer, allocated (and zeroed) once, on the first bulk body.
    bulk: Vec<u8>,
}

const READ_CHUNK: usize = 16 * 1024;
/// One read of a bulk body may take what a pipe of 1 MiB (the upload relay's) holds.
const BULK_CHUNK: usize = 1 << 20;

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            continue_sent: false,
            bulk: Vec::new(),
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes already read from the stream but not yet consumed by a request.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn avail(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    fn fill(&mut self) -> Result<usize, HttpError> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        loop {
            match self.inner.read(&mut self.buf[old..]) {
                Ok(n) => {
                    self.buf.truncate(old + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(from_io(e));
                }
            }
        }
    }

    /// Takes `n` buffered bytes (the caller checked they are there).
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        s
    }

    /// Reads one request. `Ok(None)`: the peer closed the connection cleanly before
    /// sending any byte of a new request.
    pub fn read_request(&mut self, limits: &Limits) -> Result<Option<Request>, HttpError> {
        self.read_request_with(limits, &mut io::sink())
    }

    /// Like `read_request`, and answers `Expect: 100-continue` on `interim` before
    /// reading the body.
    pub fn read_request_with(
        &mut self,
        limits: &Limits,
        interim: &mut dyn Write,
    ) -> Result<Option<Request>, HttpError> {
        match self.read_head(limits, interim)? {
            None => Ok(None),
            Some((mut req, body)) => {
                req.body = self.read_body(body, limits)?;
                Ok(Some(req))
            }
        }
    }

    /// Reads only the head (the request's `body` is empty); the caller then reads
    /// the body with [`Reader::read_body`], e.g. under a different deadline.
    /// Answers `Expect: 100-continue` on `interim`.
    pub fn read_head(
        &mut self,
        limits: &Limits,
        interim: &mut dyn Write,
    ) -> Result<Option<(Request, PendingBody)>, HttpError> {
        self.continue_sent = false;
        let (head_len, req, framing, expect_continue) = loop {
            // Empty lines before a request line are allowed (RFC 9112 2.2).
            while self.avail() >= 2 && &self.buf[self.pos..self.pos + 2] == b"\r\n" {
                self.pos += 2;
            }
            while self.avail() >= 1 && self.buf[self.pos] == b'\n' {
                self.pos += 1;
            }
            if self.avail() > 0 {
                if let Some(parsed) = self.parse_head(limits)? {
                    break parsed;
                }
                if self.avail() >= limits.max_head {
                    return Err(HttpError::HeadTooLarge);
                }
            }
            let had = self.avail();
            if self.fill()? == 0 {
                return if had == 0 {
                    Ok(None)
                } else {
                    Err(HttpError::Closed)
                };
            }
        };
        self.pos += head_len;
        if let Framing::Length(n) = framing {
            // Refuse before the client sends (or we wait for) a body we will not take.
            if n > limits.max_body {
                return Err(HttpError::BodyTooLarge);
            }
        }
        if expect_continue && !matches!(framing, Framing::Length(0)) {
            // A failed interim write is the peer's loss; the body read will tell.
            let _ = interim
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .and_then(|_| interim.flush());
            self.continue_sent = true;
        }
        Ok(Some((req, PendingBody(framing))))
    }

    /// Reads the body announced by a head from [`Reader::read_head`].
    pub fn read_body(&mut self, body: PendingBody, limits: &Limits) -> Result<Vec<u8>, HttpError> {
        match body.0 {
            Framing::Length(n) => self.read_fixed(n, limits),
            Framing::Chunked => self.read_chunked(limits),
        }
    }

    /// Copies an announced body of `n` bytes to `sink` as it arrives, through a
    /// bounded buffer (for bodies too large to hold, e.g. upload chunks). When the
    /// sink stops taking bytes, the rest of the body is read and dropped, so that
    /// the connection stays usable for the next request.
    pub fn copy_body(&mut self, n: usize, sink: &mut dyn Write) -> Result<CopyEnd, HttpError> {
        let mut sink_ok = true;
        // What the head's reads took of the body goes first.
        let early = self.avail().min(n);
        if sink
            .write_all(&self.buf[self.pos..self.pos + early])
            .is_err()
        {
            sink_ok = false;
        }
        self.pos += early;
        let mut left = n - early;
        if left > 0 && self.bulk.is_empty() {
            self.bulk = vec![0; BULK_CHUNK];
        }
        while left > 0 {
            // Never past the body: what follows it is the next request's.
            let want = left.min(BULK_CHUNK);
            let got = match self.inner.read(&mut self.bulk[..want]) {
                Ok(0) => return Err(HttpError::Closed),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(from_io(e)),
            };
            if sink_ok && sink.write_all(&self.bulk[..got]).is_err() {
                sink_ok = false;
            }
            left -= got;
        }
        Ok(if sink_ok {
            CopyEnd::Done
        } else {
            CopyEnd::SinkClosed
        })
    }

    /// Whether the last request got an interim `100 Continue`.
    pub fn continue_sent(&self) -> bool {
        self.continue_sent
    }

    /// `Ok(None)` when the head is not complete yet.
    fn parse_head(
        &self,
        limits: &Limits,
    ) -> Result<Option<(usize, Request, Framing, bool)>, HttpError> {
        let data = &self.buf[self.pos..];
        let window = &data[..data.len().min(limits.max_head)];
        let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut parsed = httparse::Request::new(&mut storage);
        let head_len = match parsed.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
            Err(e) => return Err(bad(format!("cannot parse the request head: {e}"))),
        };
        let method = parsed.method.ok_or_else(|| bad("no method"))?.to_owned();
        let target = parsed.path.ok_or_else(|| bad("no request target"))?;
        if !(target.starts_with('/') || method == "OPTIONS" && target == "*") {
            return Err(bad("the request target must be an absolute path"));
        }
        let version = parsed.version.ok_or_else(|| bad("no HTTP version"))?;
        let mut headers = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| bad(format!("header {} is not UTF-8", h.name)))?;
            headers.push((h.name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let (framing, keep_alive, expect_continue) = semantics(version, &headers, limits)?;
        let req = Request {
            method,
            target: target.to_owned(),
            headers,
            body: Vec::new(),
            keep_alive,
        };
        Ok(Some((head_len, req, framing, expect_continue)))
    }

    fn read_fixed(&mut self, n: usize, limits: &Limits) -> Result<Vec<u8>, HttpError> {
        if n > limits.max_body {
            return Err(HttpError::BodyTooLarge);
        }
        let mut body = Vec::with_capacity(n);
        while body.len() < n {
            if self.avail() == 0 && self.fill()? == 0 {
                return Err(HttpError::Closed);
            }
            let k = self.avail().min(n - body.len());
            body.extend_from_slice(self.take(k));
        }
        Ok(body)
    }

    /// One line (without CRLF) of at most `max` bytes, for chunk sizes and trailers.
    fn read_line(&mut self, max: usize) -> Result<Vec<u8>, HttpError> {
        loop {
            let data = &self.buf[self.pos..];
            if let Some(i) = data.iter().position(|&c| c == b'\n') {
                if i > max {
                    return Err(bad("line in chunked body too long"));
                }
                let mut line = data[..i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if data.len() > max {
                return Err(bad("line in chunked body too long"));
            }
            if self.fill()? == 0 {
                return Err(HttpError::Closed);
            }
        }
    }

    fn read_chunked(&mut self, limits: &Limits) -> Result<Vec<u8>, HttpError> {
        const MAX_LINE: usize = 4096;
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_LINE)?;
            let size = parse_chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if size > limits.max_body - body.len() {
                return Err(HttpError::BodyTooLarge);
            }
            let mut left = size;
            while left > 0 {
                if self.avail() == 0 && self.fill()? == 0 {
                    return Err(HttpError::Closed);
                }
                let k = self.avail().min(left);
                body.extend_from_slice(self.take(k));
                left -= k;
            }
            if !self.read_line(2)?.is_empty() {
                return Err(bad("chunk data not followed by CRLF"));
            }
        }
        // Trailers are skipped, but they count against the head limit.
        let mut trailer_bytes = 0usize;
        loop {
            let line = self.read_line(MAX_LINE)?;
            if line.is_empty() {
                return Ok(body);
            }
            trailer_bytes += line.len() + 2;
            if trailer_bytes > limits.max_head {
                return Err(HttpError::HeadTooLarge);
            }
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

/// How the body of a request whose head was read is framed.
pub struct PendingBody(Framing);

/// How a streamed body ended (see [`Reader::copy_body`]).
#[derive(Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// Every byte reached the sink.
    Done,
    /// The sink stopped taking bytes; the rest was read and dropped.
    SinkClosed,
}

impl PendingBody {
    /// The announced length, for a body with `Content-Length`.
    pub fn length(&self) -> Option<usize> {
        match self.0 {
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        }
    }

    /// Whether the request announced no body at all.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Framing::Length(0))
    }
}

/// Body framing, keep-alive and `Expect` from the version and headers.
fn semantics(
    version: u8,
    headers: &[(String, String)],
    _limits: &Limits,
) -> Result<(Framing, bool, bool), HttpError> {
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut close = false;
    let mut ka = false;
    let mut expect_continue = false;
    for (name, value) in headers {
        match name.as_str() {
            "content-length" => {
                // Several equal values (also comma-joined) are tolerated; differing
                // ones are the request-smuggling pattern.
                for part in value.split(',') {
                    let part = part.trim();
                    if part.is_empty()
                        || !part.bytes().all(|c| c.is_ascii_digit())
                        || part.len() > 18
                    {
                        return Err(bad("invalid Content-Length"));
                    }
                    let n: usize = part.parse().map_err(|_| bad("invalid Content-Length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(bad("conflicting Content-Length headers"));
                    }
                    length = Some(n);
                }
            }
            "transfer-encoding" => {
                te_seen = true;
                let codings: Vec<String> = value
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty())
                    .collect();
                if codings.as_slice() != ["chunked"] || chunked {
                    return Err(bad(format!(
                        "unsupported Transfer-Encoding {value:?} (only a single \"chunked\")"
                    )));
                }
                chunked = true;
            }
            "connection" => {
                for token in value.split(',') {
                    let t = token.trim();
                    if t.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case("keep-alive") {
                        ka = true;
                    }
                }
            }
            "expect" => {
                if value.eq_ignore_ascii_case("100-continue") {
                    expect_continue = true;
                } else {
                    return Err(bad(format!("unsupported Expect {value:?}")));
                }
            }
            _ => {}
        }
    }
    if te_seen && length.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding given"));
    }
    if te_seen && version == 0 {
        return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let keep_alive = match version {
        1 => !close,
        _ => ka && !close,
    };
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::Length(length.unwrap_or(0))
    };
    Ok((framing, keep_alive, expect_continue && version == 1))
}

/// Hex size before an optional `;extension`; rejects signs, spaces in the number,
/// empty sizes and overflow.
fn parse_chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let end = line.iter().position(|&c| c == b';').unwrap_or(line.len());
    let digits = trim_ows(&line[..end]);
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad("invalid chunk size"));
    }
    let mut n = 0usize;
    for &c in digits {
        n = n * 16 + hex_val(c).ok_or_else(|| bad("invalid chunk size"))? as usize;
    }
    Ok(n)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        449 => "Retry With",
        482 => "Bad Signed Intent",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes the status line and headers (without Content-Length) and the blank line.
pub fn write_head(w: &mut impl Write, status: u16, headers: &[(&str, &str)]) -> io::Result<()> {
    let mut head = String::with_capacity(128);
    head.push_str("HTTP/1.1 ");
    head.push_str(&status.to_string());
    head.push(' ');
    head.push_str(reason(status));
    head.push_str("\r\n");
    for (name, value) in headers {
        if !valid_header(name, value) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid response header {name:?}"),
            ));
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

/// Header values from plugins end up here: CR/LF would split the response.
fn valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_graphic() && c != b':')
        && value.bytes().all(|c| c != b'\r' && c != b'\n' && c != 0)
}

/// Writes a whole response; adds `Content-Length`.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 1);
    all.extend(
        headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
            .copied(),
    );
    all.push(("Content-Length", &len));
    // One write for head and small bodies: fewer syscalls, no Nagle stall.
    let mut out = Vec::with_capacity(256 + body.len().min(64 * 1024));
    write_head(&mut out, status, &all)?;
    if body.len() <= 64 * 1024 {
        out.extend_from_slice(body);
        w.write_all(&out)?;
    } else {
        w.write_all(&out)?;
        w.write_all(body)?;
    }
    w.flush()
}

/// Writes one chunk of a chunked body (empty data is skipped: it would end the body).
pub fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")
}

/// Ends a chunked body.
pub fn write_last_chunk(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Vec<Result<Option<Request>, HttpError>> {
        let mut r = Reader::new(input);
        let mut out = Vec::new();
        loop {
            let res = r.read_request(&Limits::default());
            let stop = !matches!(res, Ok(Some(_)));
            out.push(res);
            if stop {
                return out;
            }
        }
    }

    fn one(input: &[u8]) -> Result<Option<Request>, HttpError> {
        Reader::new(input).read_request(&Limits::default())
    }

    /// Feeds one byte per read, to exercise every partial state.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    /// Odd-sized reads, none of them lined up with the body's end, each after an
    /// interrupted one.
    struct Pieces<'a>(&'a [u8], bool);
    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.0.len().min(buf.len()).min(7777);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A streamed body arrives whole, in order, however the reads fall, and the
    /// pipelined request after it is still there to read.
    #[test]
    fn copy_body_takes_exactly_the_body() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = format!(
            "POST /up HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let limits = Limits {
            max_body: 1 << 30,
            ..Limits::default()
        };
        let whole: Box<dyn Read> = Box::new(&wire[..]);
        let pieces: Box<dyn Read> = Box::new(Pieces(&wire[..], false));
        for mut reader in [Reader::new(whole), Reader::new(pieces)] {
            let (_, pending) = reader.read_head(&limits, &mut io::sink()).unwrap().unwrap();
            let n = pending.length().unwrap();
            let mut got = Vec::new();
            assert!(matches!(reader.copy_body(n, &mut got), Ok(CopyEnd::Done)));
            assert!(got == body, "the body came out changed");
            let next = reader.read_request(&Limits::default()).unwrap().unwrap();
            assert_eq!(next.path(), "/next");
        }
        // One byte per read, and a body cut short by the client.
        let mut reader = Reader::new(Trickle(&wire[..wire.len() - 2_000_000]));
        let (_, pending) = reader.read_head(&limits, &mut io::sink()).unwrap().unwrap();
        let n = pending.length().unwrap();
        assert!(matches!(
            reader.copy_body(n, &mut io::sink()),
            Err(HttpError::Closed)
        ));
    }

    #[test]
    fn simple_get_and_accessors() {
        let r = one(b"GET /a/b?x=1&name=Donna%23%204512&p=a+b HTTP/1.1\r\nHost: h\r\nUCloud-Username: QQ==\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query(), Some("x=1&name=Donna%23%204512&p=a+b"));
        assert_eq!(r.query_param("name").as_deref(), Some("Donna# 4512"));
        assert_eq!(r.query_param("p").as_deref(), Some("a b"));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.header("ucloud-username"), Some("QQ=="));
        assert_eq!(r.header("UCLOUD-USERNAME"), Some("QQ=="));
        assert!(r.keep_alive);
        assert!(r.body.is_empty());
    }

    #[test]
    fn bad_percent_escapes_are_not_decoded() {
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None); // not UTF-8
        assert_eq!(percent_decode("%41%42").as_deref(), Some("AB"));
    }

    #[test]
    fn content_length_body_and_pipelining() {
        let input = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /y HTTP/1.1\r\n\r\n";
        let res = read_all(input);
        assert_eq!(res.len(), 3);
        let a = res[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(a.body, b"hello");
        let b = res[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(b.target, "/y");
        assert!(matches!(res[2], Ok(None)));
    }

    #[test]
    fn trickled_input_parses_the_same() {
        let input = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nGET /z HTTP/1.1\r\n\r\n";
        let mut r = Reader::new(Trickle(input));
        let a = r.read_request(&Limits::default()).unwrap().unwrap();
        assert_eq!(a.body, b"abcde");
        let b = r.read_request(&Limits::default()).unwrap().unwrap();
        assert_eq!(b.target, "/z");
        assert!(r.read_request(&Limits::default()).unwrap().is_none());
    }

    #[test]
    fn keep_alive_rules() {
        let r = one(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = one(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let r = one(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn malformed_heads_are_400() {
        for input in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET http://evil/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n",
        ] {
            let e = one(input).unwrap_err();
            assert_eq!(
                e.status(),
                Some(400),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn smuggling_patterns_are_refused() {
        let cases: [&[u8]; 5] = [
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ];
        for input in cases {
            assert_eq!(
                one(input).unwrap_err().status(),
                Some(400),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bad_chunks_are_400() {
        for chunks in [
            &b"g\r\nabc\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"+3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            let mut input = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            input.extend_from_slice(chunks);
            let e = one(&input).unwrap_err();
            assert_eq!(
                e.status(),
                Some(400),
                "{}: {e}",
                String::from_utf8_lossy(chunks)
            );
        }
    }

    #[test]
    fn limits_are_enforced_while_reading() {
        let limits = Limits {
            max_head: 64,
            max_headers: 4,
            max_body: 10,
        };
        // Never ends its head: must stop at max_head, not buffer forever.
        let mut endless = b"GET / HTTP/1.1\r\nX: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 1000));
        let e = Reader::new(&endless[..]).read_request(&limits).unwrap_err();
        assert!(matches!(e, HttpError::HeadTooLarge));
        assert_eq!(e.status(), Some(431));

        let many = b"GET / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
        let e = Reader::new(&many[..]).read_request(&limits).unwrap_err();
        assert_eq!(e.status(), Some(431));

        let big = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            Reader::new(&big[..])
                .read_request(&limits)
                .unwrap_err()
                .status(),
            Some(413)
        );

        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nabcdef\r\n0\r\n\r\n";
        assert_eq!(
            Reader::new(&chunked[..])
                .read_request(&limits)
                .unwrap_err()
                .status(),
            Some(413)
        );
    }

    #[test]
    fn truncated_requests_are_closed_not_none() {
        assert!(matches!(
            one(b"GET / HTTP/1.1\r\nHost"),
            Err(HttpError::Closed)
        ));
        assert!(matches!(
            one(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"),
            Err(HttpError::Closed)
        ));
        assert!(matches!(one(b""), Ok(None)));
        assert!(matches!(one(b"\r\n"), Ok(None)));
    }

    #[test]
    fn expect_continue_is_answered() {
        let input = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        let mut interim = Vec::new();
        let mut r = Reader::new(&input[..]);
        let req = r
            .read_request_with(&Limits::default(), &mut interim)
            .unwrap()
            .unwrap();
        assert_eq!(req.body, b"hi");
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(r.continue_sent());
    }

    #[test]
    fn responses_are_framed() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            404,
            &[("Content-Type", "application/json")],
            b"{}",
        )
        .unwrap();
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
        let mut out = Vec::new();
        assert!(write_response(&mut out, 200, &[("X", "a\r\nSet-Cookie: x")], b"").is_err());
        let mut out = Vec::new();
        write_chunk(&mut out, b"abc").unwrap();
        write_chunk(&mut out, b"").unwrap();
        write_last_chunk(&mut out).unwrap();
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[test]
    fn timeouts_map_to_408() {
        struct Slow;
        impl Read for Slow {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            }
        }
        let e = Reader::new(Slow)
            .read_request(&Limits::default())
            .unwrap_err();
        assert_eq!(e.status(), Some(408));
    }
}
