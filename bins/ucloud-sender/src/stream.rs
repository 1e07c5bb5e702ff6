//! UCloud's provider notification stream, read into the inbox.
//!
//! `GET {ucloud_url}/api/accounting/notifications` becomes a WebSocket; the sender
//! opens it with one `Auth` frame (the stored replay start, the retired-usage flag,
//! an access token), then writes every wallet and project the core sends to
//! `inbox/events/` ([`ucloud_wire::inbox`]), in order, and asks for the replays the
//! registry requests in `inbox/replay/`. The core sends no acknowledgements and
//! answers nothing: all the sender can do is store, durably, from when to ask for a
//! replay on the next connection.
//!
//! That replay start moves forward only to a time before which everything has been
//! written: after each message's events are on disk, to `now - margin` (the margin
//! absorbs the difference between UCloud's clock and ours and the time a
//! notification takes to arrive). It does not move while the connection's opening
//! replay may still be arriving: the core sends the replayed wallets and projects
//! in no particular order and with no end marker, so a connection lost halfway
//! through would otherwise skip the rest of the replay. The opening replay counts as
//! over once the stream has been silent for [`Timing::settle`].
//!
//! Anything the core never sends (a frame that does not decode, a reference never
//! bound, a text message, a message over [`MAX_MESSAGE`], a WebSocket protocol
//! error) drops the connection, as UCloud's own module does; the next one replays
//! from the stored time, so nothing of the bad message reaches the inbox and
//! nothing after it is lost.

use base64::Engine;
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ucloud_http::client::{Endpoint, Stream};
use ucloud_http::websocket::{self, Decoder, Message, Role};
use ucloud_wire::apm::{self, Frame, Refs, FLAG_INCLUDE_RETIRED};
use ucloud_wire::inbox;

/// Where the core serves the stream, under `ucloud_url`.
pub const PATH: &str = "/api/accounting/notifications";
/// The largest message taken from the core; a larger one drops the connection.
pub const MAX_MESSAGE: usize = 64 << 20;
/// The largest response head to the upgrade request.
const MAX_HEAD: usize = 16 << 10;
/// Replay requests sent per look at `inbox/replay/`: a flood of them does not stop
/// the thread from reading.
const REQUESTS_PER_TICK: usize = 100;
/// A replay request sent this shortly before a connection ended is sent again on
/// the next one: its answer may have been lost with the connection.
const RESEND_WITHIN: Duration = Duration::from_secs(60);

/// How the stream paces itself. [`Timing::STANDARD`] is what the sender runs with.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// The longest a read waits before the thread looks at replay requests, pings
    /// and the replay start; replay requests are looked for this often.
    pub tick: Duration,
    /// The opening replay counts as over after this much silence.
    pub settle: Duration,
    /// A ping goes out after this much silence ...
    pub ping_after: Duration,
    /// ... and the connection is given up after this much.
    pub dead_after: Duration,
    /// Waits between connections: from `first_backoff`, doubling up to
    /// `max_backoff`, back to `first_backoff` after a connection that lasted
    /// `stable`. A missing inbox is looked for again every `first_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub stable: Duration,
    /// Subtracted from the time of writing when the replay start is stored.
    pub margin_ms: i64,
    /// The replay start is stored at most this often while events arrive ...
    pub store_every: Duration,
    /// ... and this often when none do (so that a quiet site's next connection
    /// does not replay from long ago).
    pub store_idle: Duration,
    /// A lasting problem (no inbox, a replay start that cannot be stored) is
    /// logged at most this often.
    pub log_every: Duration,
}

impl Timing {
    pub const STANDARD: Timing = Timing {
        tick: Duration::from_millis(200),
        settle: Duration::from_secs(10),
        ping_after: Duration::from_secs(30),
        dead_after: Duration::from_secs(90),
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
        stable: Duration::from_secs(60),
        margin_ms: 60_000,
        store_every: Duration::from_secs(1),
        store_idle: Duration::from_secs(60),
        log_every: Duration::from_secs(60),
    };
}

pub struct Options {
    /// UCloud, as the sender's calls reach it (same URL, same CA).
    pub endpoint: Endpoint,
    pub inbox: PathBuf,
    pub timing: Timing,
    /// Set to end [`run`] (tests; the sender runs the stream for its whole life).
    pub stop: Arc<AtomicBool>,
    /// Whether this process may write the inbox now (it holds the sender's lease):
    /// asked before it connects, before each write of events or of the replay
    /// start, and on every turn of a connection, which a `false` ends.
    pub fence: Fence,
}

/// The fencing check the stream asks: `true` while it may act.
pub type Fence = Arc<dyn Fn() -> bool + Send + Sync>;

/// A fence that always allows (the tests).
#[cfg(test)]
pub fn no_fence() -> Fence {
    Arc::new(|| true)
}

/// An access token; `true` asks for a new one rather than the one held (UCloud
/// seemed to refuse it).
pub type TokenSource<'a> = dyn FnMut(bool) -> Result<String, String> + 'a;

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// It never opened (DNS, TCP, TLS, the upgrade).
    Failed(String),
    /// UCloud or the network ended it, or the inbox failed us.
    Lost(String),
    /// UCloud sent what its core never sends.
    Refused(String),
    Stopped,
    /// This process no longer holds the sender's lease.
    Standby,
}

/// Logs at most once per period.
struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    fn new(period: Duration) -> Every {
        Every { period, last: None }
    }
    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= self.period);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }
}

/// Reads the stream into the inbox until `options.stop` is set: connects, reads,
/// reconnects after any end with backoff. Never returns an error: UCloud being
/// away, a missing inbox and a misbehaving server are all waited out.
pub fn run(options: &Options, token: &mut TokenSource<'_>) {
    let timing = options.timing;
    let mut backoff = timing.first_backoff;
    let mut fresh_token = false;
    let mut no_inbox = Every::new(timing.log_every);
    let mut carried: Vec<(Instant, String)> = Vec::new();
    while !options.stop.load(Ordering::SeqCst) {
        if !(options.fence)() {
            // Another host's sender reads the stream; this one waits its turn.
            pause(options, timing.tick);
            continue;
        }
        if let Err(why) = inbox_ready(&options.inbox) {
            if no_inbox.due() {
                ucloud_wire::log_warn!(
                    "ucloud-sender: the notification stream waits for the inbox: {why}"
                );
            }
            pause(options, timing.first_backoff);
            continue;
        }
        let access = match token(fresh_token) {
            Ok(t) => t,
            Err(why) => {
                ucloud_wire::log_warn!(
                    "ucloud-sender: cannot open the notification stream: {why}; next try in {} s",
                    backoff.as_secs_f32()
                );
                pause(options, backoff);
                backoff = (backoff * 2).min(timing.max_backoff);
                continue;
            }
        };
        let mut session = Session::new(options, std::mem::take(&mut carried));
        let end = session.run(&access);
        let lasted = session.opened.map(|t| t.elapsed());
        if lasted.is_some_and(|d| d >= timing.stable) {
            backoff = timing.first_backoff;
        }
        // A core that refuses the token closes the connection without a word; so
        // does one restarting. Either way a new token costs one call.
        fresh_token = matches!(end, End::Lost(_)) && session.messages == 0;
        carried = session.carry_over();
        let next = backoff.as_secs_f32();
        match end {
            End::Stopped => return,
            End::Standby => {
                ucloud_wire::log_info!(
                    "ucloud-sender: notification stream closed: this host no longer holds the sender lease"
                );
                backoff = timing.first_backoff;
                continue;
            }
            End::Failed(why) => ucloud_wire::log_warn!(
                "ucloud-sender: cannot open the notification stream: {why}; next try in {next} s"
            ),
            End::Lost(why) => ucloud_wire::log_warn!(
                "ucloud-sender: notification stream lost after {} s: {why}; reconnecting in {next} s",
                lasted.unwrap_or_default().as_secs()
            ),
            End::Refused(why) => ucloud_wire::log_err!(
                "ucloud-sender: notification stream dropped: {why}; reconnecting in {next} s, replaying from the stored time"
            ),
        }
        pause(options, backoff);
        backoff = (backoff * 2).min(timing.max_backoff);
    }
}

/// Sleeps `d`, waking early when told to stop.
fn pause(options: &Options, d: Duration) {
    let until = Instant::now() + d;
    while !options.stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The inbox directories the stream writes to, or which one is missing.
fn inbox_ready(inbox: &Path) -> Result<(), String> {
    for sub in [inbox::TMP, inbox::EVENTS, inbox::REPLAY] {
        let dir = inbox.join(sub);
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
    }
    Ok(())
}

/// The stored replay start and when to move it.
struct ReplayStart<'a> {
    inbox: &'a Path,
    fence: &'a Fence,
    margin_ms: i64,
    stored: i64,
    /// The connection's opening replay is over: the start may move.
    settled: bool,
    last_store: Instant,
    /// Events were written since the start was last stored.
    pending: bool,
    failing: Every,
}

impl ReplayStart<'_> {
    /// Moves the stored start to `now - margin`, never backwards. Everything the
    /// caller has received is written when it calls this.
    fn advance(&mut self, now_ms: i64) {
        self.last_store = Instant::now();
        self.pending = false;
        let want = now_ms - self.margin_ms;
        if want <= self.stored || !(self.fence)() {
            return;
        }
        match inbox::set_replay_from(self.inbox, want) {
            Ok(()) => self.stored = want,
            Err(e) => {
                if self.failing.due() {
                    ucloud_wire::log_err!(
                        "ucloud-sender: cannot store the replay start in {}: {e}; a reconnect replays from {}",
                        self.inbox.join(inbox::REPLAY_FROM).display(),
                        self.stored
                    );
                }
            }
        }
    }
}

/// One connection.
struct Session<'a> {
    options: &'a Options,
    /// When the upgrade succeeded.
    opened: Option<Instant>,
    /// Data messages taken.
    messages: u64,
    /// The references the core bound on this connection (it numbers them afresh
    /// on each).
    refs: Refs,
    /// Replay requests sent on this connection (when, whom), and those the last
    /// connection may have lost, to send first.
    sent: Vec<(Instant, String)>,
    carried: Vec<(Instant, String)>,
}

impl<'a> Session<'a> {
    fn new(options: &'a Options, carried: Vec<(Instant, String)>) -> Session<'a> {
        Session {
            options,
            opened: None,
            messages: 0,
            refs: Refs::default(),
            sent: Vec::new(),
            carried,
        }
    }

    /// The replay requests worth sending again on the next connection: those
    /// first asked for less than [`RESEND_WITHIN`] ago, each user once.
    fn carry_over(self) -> Vec<(Instant, String)> {
        let mut all = self.carried;
        all.extend(self.sent);
        all.retain(|(t, _)| t.elapsed() < RESEND_WITHIN);
        all.sort_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        all.dedup_by(|a, b| a.1 == b.1);
        all.sort();
        all
    }

    fn run(&mut self, access_token: &str) -> End {
        let timing = self.options.timing;
        let inbox_dir = self.options.inbox.as_path();
        let (mut stream, rest) = match open(&self.options.endpoint) {
            Ok(s) => s,
            Err(why) => return End::Failed(why),
        };
        let stored = match inbox::replay_from(inbox_dir) {
            Ok(ms) => ms,
            Err(e) => {
                ucloud_wire::log_err!(
                    "ucloud-sender: {}: {e}; replaying everything",
                    inbox_dir.join(inbox::REPLAY_FROM).display()
                );
                0
            }
        };
        let auth = apm::encode(
            &[Frame::Auth {
                replay_from_ms: stored,
                flags: FLAG_INCLUDE_RETIRED,
                token: access_token.to_string(),
            }],
            true,
        );
        if let Err(e) = send(&mut stream, 0x2, &auth) {
            return End::Failed(format!("sending the first frame: {e}"));
        }
        // Short reads from here on: the one thread also writes replay requests,
        // pings and pongs, and rustls has a single object for both directions.
        if let Err(e) = socket(&stream).set_read_timeout(Some(timing.tick)) {
            return End::Failed(format!("cannot set the socket's read timeout: {e}"));
        }
        let opened = Instant::now();
        self.opened = Some(opened);
        ucloud_wire::log_info!(
            "ucloud-sender: notification stream open at {}, replaying from {stored} ms",
            self.options.endpoint.url.authority()
        );
        let mut start = ReplayStart {
            inbox: inbox_dir,
            fence: &self.options.fence,
            margin_ms: timing.margin_ms,
            stored,
            settled: false,
            last_store: opened,
            pending: false,
            failing: Every::new(timing.log_every),
        };
        let mut decoder = Decoder::new(Role::Client, MAX_MESSAGE);
        decoder.push(&rest);
        let mut heard = opened;
        let mut pinged = false;
        let mut opening_events = 0usize;
        let mut looked = opened.checked_sub(timing.tick).unwrap_or(opened);
        let mut unremoved: HashSet<PathBuf> = HashSet::new();
        let mut replay_dir = Every::new(timing.log_every);
        let mut buf = vec![0u8; 64 << 10];
        for (asked, user) in std::mem::take(&mut self.carried) {
            if let Err(e) = self.ask_replay(&mut stream, &user, asked) {
                return End::Lost(format!("sending a replay request: {e}"));
            }
        }
        loop {
            if self.options.stop.load(Ordering::SeqCst) {
                let _ = send_close(&mut stream, websocket::CLOSE_GOING_AWAY);
                return End::Stopped;
            }
            if !(self.options.fence)() {
                let _ = send_close(&mut stream, websocket::CLOSE_GOING_AWAY);
                return End::Standby;
            }
            // Messages already buffered first (the upgrade answer may carry some).
            loop {
                let message = match decoder.next() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = send_close(&mut stream, e.code);
                        return End::Refused(format!("a WebSocket error: {e}"));
                    }
                };
                match message {
                    Message::Binary(bytes) => {
                        let events = match apm::decode(&bytes, true)
                            .and_then(|frames| self.refs.apply(frames))
                        {
                            Ok(events) => events,
                            Err(e) => {
                                let _ = send_close(&mut stream, websocket::CLOSE_BAD_DATA);
                                return End::Refused(format!(
                                    "a message of {} bytes that UCloud's core does not send: {e}",
                                    bytes.len()
                                ));
                            }
                        };
                        if !events.is_empty() && !(self.options.fence)() {
                            // Not written: the new holder's stream replays them
                            // from the stored start.
                            let _ = send_close(&mut stream, websocket::CLOSE_GOING_AWAY);
                            return End::Standby;
                        }
                        for event in &events {
                            if let Err(e) = inbox::write_event(inbox_dir, &event.to_json()) {
                                let _ = send_close(&mut stream, websocket::CLOSE_GOING_AWAY);
                                return End::Lost(format!(
                                    "cannot write an event to {}: {e}",
                                    inbox_dir.join(inbox::EVENTS).display()
                                ));
                            }
                        }
                        self.messages += 1;
                        if start.settled {
                            if !events.is_empty() {
                                ucloud_wire::log_info!(
                                    "ucloud-sender: {} event(s) from the notification stream into the inbox",
                                    events.len()
                                );
                            }
                        } else {
                            opening_events += events.len();
                        }
                        start.pending |= !events.is_empty();
                        if start.settled && start.last_store.elapsed() >= timing.store_every {
                            start.advance(ucloud_wire::now_ms() as i64);
                        }
                    }
                    Message::Text(text) => {
                        let _ = send_close(&mut stream, websocket::CLOSE_UNSUPPORTED);
                        return End::Refused(format!(
                            "a text message of {} bytes (the core sends binary ones only)",
                            text.len()
                        ));
                    }
                    Message::Ping(payload) => {
                        if let Err(e) = send(&mut stream, 0xA, &payload) {
                            return End::Lost(format!("answering a ping: {e}"));
                        }
                    }
                    Message::Pong(_) => {}
                    Message::Close(code, reason) => {
                        let _ = send_close(&mut stream, code.unwrap_or(websocket::CLOSE_NORMAL));
                        return End::Lost(format!(
                            "UCloud closed the stream ({}{}{})",
                            code.map_or("no code".to_string(), |c| c.to_string()),
                            if reason.is_empty() { "" } else { ": " },
                            crate::tokens::excerpt(reason.as_bytes())
                        ));
                    }
                }
            }
            match stream.read(&mut buf) {
                Ok(0) => {
                    return End::Lost("UCloud closed the connection without a close frame".into())
                }
                Ok(n) => {
                    decoder.push(&buf[..n]);
                    heard = Instant::now();
                    pinged = false;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return End::Lost(format!("reading: {e}")),
            }
            // Between reads (each waits at most a tick): pings, the replay start,
            // replay requests.
            let silent = heard.elapsed();
            if silent >= timing.dead_after {
                return End::Lost(format!(
                    "UCloud sent nothing for {} s, not even a pong",
                    silent.as_secs()
                ));
            }
            if silent >= timing.ping_after && !pinged {
                if let Err(e) = send(&mut stream, 0x9, b"ucloud-sender") {
                    return End::Lost(format!("sending a ping: {e}"));
                }
                pinged = true;
            }
            if !start.settled && silent >= timing.settle {
                start.settled = true;
                ucloud_wire::log_info!(
                    "ucloud-sender: the notification stream's replay brought {opening_events} event(s) into the inbox"
                );
                start.advance(ucloud_wire::now_ms() as i64);
            } else if start.settled
                && ((start.pending && start.last_store.elapsed() >= timing.store_every)
                    || start.last_store.elapsed() >= timing.store_idle)
            {
                start.advance(ucloud_wire::now_ms() as i64);
            }
            if looked.elapsed() >= timing.tick {
                looked = Instant::now();
                let requests = match inbox::replay_requests(inbox_dir) {
                    Ok(r) => r,
                    Err(e) => {
                        if replay_dir.due() {
                            ucloud_wire::log_warn!(
                                "ucloud-sender: cannot list {}: {e}",
                                inbox_dir.join(inbox::REPLAY).display()
                            );
                        }
                        Vec::new()
                    }
                };
                let waiting = requests
                    .into_iter()
                    .filter(|(path, _)| !unremoved.contains(path))
                    .take(REQUESTS_PER_TICK)
                    .collect::<Vec<_>>();
                for (path, user) in waiting {
                    if let Err(e) = self.ask_replay(&mut stream, user.as_str(), Instant::now()) {
                        return End::Lost(format!("sending a replay request: {e}"));
                    }
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            // Asked for once per connection, not once per tick.
                            ucloud_wire::log_warn!(
                                "ucloud-sender: cannot remove the replay request {}: {e}",
                                path.display()
                            );
                            unremoved.insert(path);
                        }
                    }
                }
            }
        }
    }

    /// Sends one replay request; `asked` is when it was first asked for (a request
    /// carried over from a lost connection keeps its time, so it is not carried
    /// forever).
    fn ask_replay(&mut self, stream: &mut Stream, user: &str, asked: Instant) -> io::Result<()> {
        let frame = apm::encode(
            &[Frame::ReplayUser {
                username: user.to_string(),
            }],
            true,
        );
        send(stream, 0x2, &frame)?;
        self.sent.push((asked, user.to_string()));
        Ok(())
    }
}

/// The TCP socket under a connection, where its timeouts are set.
fn socket(stream: &Stream) -> &TcpStream {
    match stream {
        Stream::Plain(s) => s,
        Stream::Tls(s) => &s.sock,
    }
}

/// One masked frame (RFC 6455 requires the client to mask every frame).
fn send(stream: &mut Stream, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let mut mask = [0u8; 4];
    ucloud_wire::random_bytes(&mut mask)?;
    stream.write_all(&websocket::encode(opcode, payload, Some(mask)))?;
    stream.flush()
}

fn send_close(stream: &mut Stream, code: u16) -> io::Result<()> {
    let mut mask = [0u8; 4];
    ucloud_wire::random_bytes(&mut mask)?;
    stream.write_all(&websocket::close(code, "", Some(mask)))?;
    stream.flush()
}

/// Connects and upgrades to a WebSocket; the bytes that came after the upgrade's
/// answer belong to the stream.
fn open(endpoint: &Endpoint) -> Result<(Stream, Vec<u8>), String> {
    let mut stream = endpoint.connect().map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 16];
    ucloud_wire::random_bytes(&mut nonce).map_err(|e| format!("no random key: {e}"))?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let request = format!(
        "GET {}{PATH} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         User-Agent: ucloud-sender/{}\r\n\r\n",
        endpoint.url.base,
        endpoint.url.authority(),
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending the upgrade request: {e}"))?;
    let (head, rest) = read_head(&mut stream)?;
    check_upgrade(&head, &rest, &key)?;
    Ok((stream, rest))
}

/// The answer's head (without the blank line) and the bytes read after it.
fn read_head(stream: &mut impl Read) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = got.split_off(i + 4);
            got.truncate(i);
            return Ok((got, rest));
        }
        if got.len() > MAX_HEAD {
            return Err(format!(
                "the answer to the upgrade request has a head over {MAX_HEAD} bytes"
            ));
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err("the connection closed before an answer to the upgrade request".into())
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer to the upgrade request: {e}")),
        }
    }
}

/// Checks the answer to the upgrade (RFC 6455 4.1): 101, `Upgrade: websocket`,
/// `Connection: Upgrade`, and the accept value of our key. `body` is what came
/// after a head, shown when the answer is no upgrade.
fn check_upgrade(head: &[u8], body: &[u8], key: &str) -> Result<(), String> {
    let text = std::str::from_utf8(head)
        .map_err(|_| "the answer to the upgrade request is not text".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "not an HTTP answer to the upgrade request: {}",
            crate::tokens::excerpt(status_line.as_bytes())
        ));
    }
    if code != "101" {
        return Err(format!(
            "UCloud answered {code} {} instead of switching to a WebSocket at {PATH}: {}",
            crate::tokens::excerpt(parts.next().unwrap_or_default().as_bytes()),
            crate::tokens::excerpt(&body[..body.len().min(300)])
        ));
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accepts = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "a malformed header line in the upgrade's answer: {}",
                crate::tokens::excerpt(line.as_bytes())
            ));
        };
        let has = |token: &str| {
            value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade |= has("websocket"),
            "connection" => connection |= has("upgrade"),
            "sec-websocket-accept" => accepts.push(value.trim()),
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err("the 101 answer lacks Upgrade: websocket or Connection: Upgrade".into());
    }
    if accepts != [websocket::accept_key(key).as_str()] {
        return Err("the server's Sec-WebSocket-Accept does not match our key".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::net::TcpListener;
    use ucloud_wire::apm::{WALLET_LOCKED, WALLET_PROJECT};
    use ucloud_wire::names::UcloudName;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sender-stream-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [inbox::TMP, inbox::EVENTS, inbox::REPLAY] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    fn fast() -> Timing {
        Timing {
            tick: Duration::from_millis(20),
            settle: Duration::from_millis(300),
            ping_after: Duration::from_secs(20),
            dead_after: Duration::from_secs(40),
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            stable: Duration::from_secs(60),
            margin_ms: 60_000,
            store_every: Duration::from_millis(50),
            store_idle: Duration::from_secs(60),
            log_every: Duration::from_secs(60),
        }
    }

    /// Runs the stream against `listener` with the token "tok"; stop it with the flag.
    fn start(
        listener: &TcpListener,
        inbox: &Path,
        timing: Timing,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let options = Options {
            endpoint: Endpoint::new(&url, None, Duration::from_secs(5)).unwrap(),
            inbox: inbox.to_path_buf(),
            timing,
            stop: stop.clone(),
            fence: no_fence(),
        };
        let thread = std::thread::spawn(move || run(&options, &mut |_| Ok("tok".to_string())));
        (stop, thread)
    }

    /// The core's end of one connection, plain or TLS.
    struct Core<S: Read + Write = TcpStream> {
        tcp: S,
        decoder: Decoder,
    }

    impl Core<TcpStream> {
        fn accept(listener: &TcpListener) -> Core {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Core::upgrade(tcp)
        }
    }

    type TlsCore = Core<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>;

    impl TlsCore {
        fn accept_tls(listener: &TcpListener, config: &Arc<rustls::ServerConfig>) -> TlsCore {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            Core::upgrade(rustls::StreamOwned::new(conn, tcp))
        }
    }

    impl<S: Read + Write> Core<S> {
        /// Answers the upgrade request after checking it.
        fn upgrade(mut tcp: S) -> Core<S> {
            let (head, rest) = read_head(&mut tcp).unwrap();
            let head = String::from_utf8(head).unwrap();
            assert!(
                head.starts_with(&format!("GET {PATH} HTTP/1.1\r\n")),
                "{head}"
            );
            assert!(head.contains("\r\nUpgrade: websocket\r\n"), "{head}");
            assert!(head.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{head}");
            let key = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .to_string();
            assert!(websocket::valid_key(&key), "{key}");
            write!(
                tcp,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                websocket::accept_key(&key)
            )
            .unwrap();
            tcp.flush().unwrap();
            // A server decoder: it refuses unmasked frames, so every frame the
            // sender writes is checked to be masked.
            let mut decoder = Decoder::new(Role::Server, MAX_MESSAGE);
            decoder.push(&rest);
            Core { tcp, decoder }
        }

        fn recv(&mut self) -> Option<Message> {
            let mut buf = [0u8; 4096];
            loop {
                if let Some(m) = self.decoder.next().unwrap() {
                    return Some(m);
                }
                match self.tcp.read(&mut buf) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.decoder.push(&buf[..n]),
                }
            }
        }

        fn frames(&mut self) -> Vec<Frame> {
            match self.recv() {
                Some(Message::Binary(b)) => apm::decode(&b, true).unwrap(),
                other => panic!("expected a binary message, got {other:?}"),
            }
        }

        fn send(&mut self, frames: &[Frame]) {
            self.raw(&websocket::encode(0x2, &apm::encode(frames, true), None));
        }

        fn raw(&mut self, bytes: &[u8]) {
            self.tcp.write_all(bytes).unwrap();
            self.tcp.flush().unwrap();
        }

        /// The sender ended the connection (a close frame or the end of the bytes).
        fn ended(&mut self) -> bool {
            loop {
                match self.recv() {
                    None | Some(Message::Close(..)) => return true,
                    Some(_) => {}
                }
            }
        }
    }

    fn auth(replay_from_ms: i64) -> Vec<Frame> {
        vec![Frame::Auth {
            replay_from_ms,
            flags: FLAG_INCLUDE_RETIRED,
            token: "tok".into(),
        }]
    }

    const DONNA: &str = "DonnaJensen#4512";

    /// What a core sends for a project with a locked cpu wallet and a user's wallet.
    fn sample() -> Vec<Frame> {
        vec![
            Frame::User {
                reference: 0,
                username: DONNA.into(),
            },
            Frame::Project {
                reference: 0,
                modified_ms: 1_700_000_000_000,
                json: json!({"id": "p-1", "specification": {"title": "Rain"},
                    "status": {"members": [{"username": DONNA, "role": "PI"}]}})
                .to_string(),
            },
            Frame::Category {
                reference: 0,
                json: r#"{"name":"cpu","provider":"hpc","productType":"COMPUTE"}"#.into(),
            },
            Frame::Wallet {
                workspace: 0,
                category: 0,
                quota: 1000,
                usage: 10,
                flags: WALLET_PROJECT | WALLET_LOCKED,
                updated_ms: 5,
            },
            Frame::Wallet {
                workspace: 0,
                category: 0,
                quota: 60,
                usage: 0,
                flags: 0,
                updated_ms: 6,
            },
        ]
    }

    fn inbox_events(inbox: &Path) -> Vec<Value> {
        inbox::events(inbox)
            .unwrap()
            .iter()
            .map(|p| inbox::read_event(p).unwrap())
            .collect()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn events_reach_the_inbox_and_the_replay_start_follows() {
        let dir = scratch("events");
        inbox::set_replay_from(&dir, 1234).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // No inbox, no connection: the stream waits for the installer.
        std::fs::remove_dir(dir.join(inbox::EVENTS)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, thread) = start(&listener, &dir, fast());
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "connected without an inbox"
        );
        listener.set_nonblocking(false).unwrap();
        std::fs::create_dir(dir.join(inbox::EVENTS)).unwrap();

        let mut core = Core::accept(&listener);
        assert_eq!(core.frames(), auth(1234));
        core.send(&sample());
        // Pings are answered with the same payload.
        core.raw(&websocket::encode(0x9, b"hi", None));
        assert_eq!(core.recv(), Some(Message::Pong(b"hi".to_vec())));

        // A replay request becomes a ReplayUser frame and goes away.
        let donna = UcloudName::new(DONNA).unwrap();
        inbox::request_replay(&dir, &donna).unwrap();
        assert_eq!(
            core.frames(),
            [Frame::ReplayUser {
                username: DONNA.into()
            }]
        );
        wait_for("the request to be removed", || {
            inbox::replay_requests(&dir).unwrap().is_empty()
        });

        // The events, in order, as the inbox's reader will see them.
        let events = inbox_events(&dir);
        let expected: Vec<Value> = Refs::default()
            .apply(sample())
            .unwrap()
            .iter()
            .map(|e| e.to_json())
            .collect();
        assert_eq!(events, expected);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["type"], "project");
        assert_eq!(events[0]["project"]["id"], "p-1");
        assert_eq!(events[0]["modifiedAt"], 1_700_000_000_000i64);
        assert_eq!(
            events[1],
            json!({"type": "wallet", "owner": {"type": "project", "projectId": "p-1"},
                "category": {"name": "cpu", "provider": "hpc"}, "quota": 1000, "usage": 10,
                "locked": true, "updatedAt": 5, "project": events[0]["project"]})
        );
        assert_eq!(
            events[2]["owner"],
            json!({"type": "user", "username": DONNA})
        );
        assert_eq!(events[2]["locked"], false);

        // Quiet for `settle`: the opening replay is over, the start moves up to
        // now minus the margin.
        let before = ucloud_wire::now_ms() as i64;
        wait_for("the replay start to move", || {
            inbox::replay_from(&dir).unwrap() != 1234
        });
        let stored = inbox::replay_from(&dir).unwrap();
        let after = ucloud_wire::now_ms() as i64;
        assert!(
            (before - 60_000 - 1000..=after - 60_000).contains(&stored),
            "{before} {stored} {after}"
        );

        // The connection ends without a word: the next one replays from the stored
        // start, and asks again for the replay whose answer may have been lost.
        drop(core);
        let mut core = Core::accept(&listener);
        assert_eq!(core.frames(), auth(stored));
        assert_eq!(
            core.frames(),
            [Frame::ReplayUser {
                username: DONNA.into()
            }]
        );
        // A new connection numbers its references afresh: ref 0 is someone else now.
        core.send(&[
            Frame::User {
                reference: 0,
                username: "Other#1".into(),
            },
            Frame::Category {
                reference: 0,
                json: r#"{"name":"gpu","provider":"hpc"}"#.into(),
            },
            Frame::Wallet {
                workspace: 0,
                category: 0,
                quota: 1,
                usage: 0,
                flags: 0,
                updated_ms: 7,
            },
        ]);
        wait_for("the fourth event", || inbox_events(&dir).len() == 4);
        let last = &inbox_events(&dir)[3];
        assert_eq!(last["owner"]["username"], "Other#1");
        assert_eq!(last["category"]["name"], "gpu");
        stop.store(true, Ordering::SeqCst);
        assert!(core.ended());
        thread.join().unwrap();
        // Never backwards, and never before what was stored.
        assert!(inbox::replay_from(&dir).unwrap() >= stored);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn openssl(args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the tests need the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA and a certificate for 127.0.0.1 it signed, in `dir`.
    fn certificates(dir: &Path) {
        let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-new"];
        ca.extend(ec);
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        ca.extend([
            "-keyout",
            &ca_key,
            "-out",
            &ca_pem,
            "-days",
            "2",
            "-subj",
            "/CN=test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&ca);
        let mut csr = vec!["req", "-new"];
        csr.extend(ec);
        let (tls_key, tls_csr) = (p("tls.key"), p("tls.csr"));
        csr.extend([
            "-keyout",
            &tls_key,
            "-out",
            &tls_csr,
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&csr);
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &tls_csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &p("tls.pem"),
            "-extfile",
            &p("ext"),
        ]);
    }

    #[test]
    fn over_tls_reads_wait_briefly_and_writes_go_between_them() {
        let dir = scratch("tls");
        certificates(&dir);
        let server =
            ucloud_http::tls::server_config(&dir.join("tls.pem"), &dir.join("tls.key")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let options = Options {
            endpoint: Endpoint::new(&url, Some(&dir.join("ca.pem")), Duration::from_secs(5))
                .unwrap(),
            inbox: dir.clone(),
            timing: fast(),
            stop: stop.clone(),
            fence: no_fence(),
        };
        let thread = std::thread::spawn(move || run(&options, &mut |_| Ok("tok".to_string())));
        let mut core = TlsCore::accept_tls(&listener, &server);
        assert_eq!(core.frames(), auth(0));
        // Many short reads time out inside rustls before anything comes.
        std::thread::sleep(Duration::from_millis(300));
        core.send(&sample());
        wait_for("the events", || inbox_events(&dir).len() == 3);
        core.raw(&websocket::encode(0x9, b"tls", None));
        assert_eq!(core.recv(), Some(Message::Pong(b"tls".to_vec())));
        let donna = UcloudName::new(DONNA).unwrap();
        inbox::request_replay(&dir, &donna).unwrap();
        assert_eq!(
            core.frames(),
            [Frame::ReplayUser {
                username: DONNA.into()
            }]
        );
        // A message split across TLS records and reads is put back together.
        let whole = websocket::encode(
            0x2,
            &apm::encode(
                &[Frame::Wallet {
                    workspace: 0,
                    category: 0,
                    quota: 2,
                    usage: 1,
                    flags: 0,
                    updated_ms: 9,
                }],
                true,
            ),
            None,
        );
        let (first, second) = whole.split_at(7);
        core.raw(first);
        std::thread::sleep(Duration::from_millis(100));
        core.raw(second);
        wait_for("the fourth event", || inbox_events(&dir).len() == 4);
        assert_eq!(inbox_events(&dir)[3]["quota"], 2);
        stop.store(true, Ordering::SeqCst);
        assert!(core.ended());
        thread.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_messages_drop_the_connection_and_write_nothing() {
        let dir = scratch("hostile");
        inbox::set_replay_from(&dir, 5000).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let timing = Timing {
            settle: Duration::from_secs(600),
            ..fast()
        };
        let (stop, thread) = start(&listener, &dir, timing);
        let binary = |frames: &[Frame]| apm::encode(frames, true);
        let ws = |payload: Vec<u8>| websocket::encode(0x2, &payload, None);
        let category = Frame::Category {
            reference: 0,
            json: r#"{"name":"cpu","provider":"hpc"}"#.into(),
        };
        let user = Frame::User {
            reference: 0,
            username: DONNA.into(),
        };
        let wallet = |workspace| Frame::Wallet {
            workspace,
            category: 0,
            quota: 1,
            usage: 0,
            flags: 0,
            updated_ms: 1,
        };
        let whole = binary(&[category.clone(), user.clone(), wallet(0)]);
        let mut unknown_op = whole.clone();
        unknown_op.push(9);
        let mut oversize = vec![0x82, 127];
        oversize.extend_from_slice(&((MAX_MESSAGE as u64) + 1).to_be_bytes());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a truncated frame", ws(whole[..whole.len() - 2].to_vec())),
            (
                "an unbound reference",
                ws(binary(&[category.clone(), user.clone(), wallet(7)])),
            ),
            ("an unknown op after good frames", ws(unknown_op)),
            (
                "a project that is not JSON",
                ws(binary(&[Frame::Project {
                    reference: 0,
                    modified_ms: 0,
                    json: "nope".into(),
                }])),
            ),
            ("a text message", websocket::text("{}", None)),
            ("an oversize message", oversize),
            (
                "a masked frame from the server",
                websocket::encode(0x2, &whole, Some([1, 2, 3, 4])),
            ),
            (
                "a continuation of nothing",
                websocket::encode(0x0, b"x", None),
            ),
            ("junk", b"\xff\xff\xff\xff".to_vec()),
            ("a close", websocket::close(1011, "restarting", None)),
        ];
        for (what, bytes) in &cases {
            let mut core = Core::accept(&listener);
            assert_eq!(core.frames(), auth(5000), "before {what}");
            core.raw(bytes);
            assert!(core.ended(), "{what}");
        }
        // Still from the stored start, and nothing reached the inbox.
        let mut core = Core::accept(&listener);
        assert_eq!(core.frames(), auth(5000));
        stop.store(true, Ordering::SeqCst);
        assert!(core.ended());
        thread.join().unwrap();
        assert_eq!(inbox_events(&dir), Vec::<Value>::new());
        assert_eq!(inbox::replay_from(&dir).unwrap(), 5000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_replay_start_never_moves_backwards() {
        let dir = scratch("start");
        let fence = no_fence();
        let mut start = ReplayStart {
            inbox: &dir,
            fence: &fence,
            margin_ms: 60_000,
            stored: i64::MAX - 1,
            settled: true,
            last_store: Instant::now(),
            pending: true,
            failing: Every::new(Duration::from_secs(60)),
        };
        start.advance(1_800_000_000_000);
        assert_eq!(start.stored, i64::MAX - 1);
        assert!(!dir.join(inbox::REPLAY_FROM).exists());
        start.stored = 0;
        start.advance(1_800_000_000_000);
        assert_eq!(
            inbox::replay_from(&dir).unwrap(),
            1_800_000_000_000 - 60_000
        );
        // A clock that went back stores nothing older.
        start.advance(1_700_000_000_000);
        assert_eq!(
            inbox::replay_from(&dir).unwrap(),
            1_800_000_000_000 - 60_000
        );
        // Without the inbox the start stays what it was, in memory and on disk.
        std::fs::remove_dir_all(&dir).unwrap();
        start.advance(1_900_000_000_000);
        assert_eq!(start.stored, 1_800_000_000_000 - 60_000);
    }

    #[test]
    fn replay_requests_are_carried_over_for_a_minute_once_each() {
        let dir = scratch("carry");
        let options = Options {
            endpoint: Endpoint::new("http://127.0.0.1:9", None, Duration::from_secs(1)).unwrap(),
            inbox: dir.clone(),
            timing: fast(),
            stop: Default::default(),
            fence: no_fence(),
        };
        let now = Instant::now();
        let ago = |s| now.checked_sub(Duration::from_secs(s)).unwrap();
        let mut session = Session::new(
            &options,
            vec![(ago(61), "old#1".into()), (ago(30), "b#2".into())],
        );
        session.sent = vec![(ago(10), "b#2".into()), (ago(5), "a#3".into())];
        let carried = session.carry_over();
        assert_eq!(
            carried,
            [(ago(10), "b#2".to_string()), (ago(5), "a#3".to_string())]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn upgrade_answers_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = websocket::accept_key(key);
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {accept}"
        );
        assert_eq!(check_upgrade(good.as_bytes(), b"", key), Ok(()));
        let refused =
            |head: &str, body: &[u8]| check_upgrade(head.as_bytes(), body, key).unwrap_err();
        let not_found = refused("HTTP/1.1 404 Not Found\r\nContent-Length: 9", b"not here\n");
        assert!(
            not_found.starts_with("UCloud answered 404 Not Found instead")
                && not_found.ends_with(": not here"),
            "{not_found}"
        );
        assert!(refused(&good.replace(&accept, "AAAA"), b"").contains("does not match"));
        assert!(
            refused(&format!("{good}\r\nSec-WebSocket-Accept: {accept}"), b"")
                .contains("does not match")
        );
        assert!(refused(&good.replace("WebSocket", "h2c"), b"").contains("Upgrade"));
        assert!(refused(&good.replace("keep-alive, Upgrade", "close"), b"").contains("Upgrade"));
        assert!(refused(&format!("{good}\r\nno colon here"), b"").contains("malformed"));
        for junk in [
            "",
            "SSH-2.0-OpenSSH",
            "HTTP/1.1 1o1 X",
            "HTTP/1.1 1011 X",
            "HTTP/2 101",
        ] {
            assert!(
                refused(junk, b"").contains("not an HTTP answer"),
                "{junk:?}"
            );
        }
        assert!(check_upgrade(b"HTTP/1.1 101 \xff", b"", key)
            .unwrap_err()
            .contains("not text"));

        let (head, rest) = read_head(&mut &b"HTTP/1.1 101 X\r\nA: b\r\n\r\n\x82\x00"[..]).unwrap();
        assert_eq!(
            (head.as_slice(), rest.as_slice()),
            (&b"HTTP/1.1 101 X\r\nA: b"[..], &b"\x82\x00"[..])
        );
        assert!(read_head(&mut &b"HTTP/1.1 101 X\r\n"[..])
            .unwrap_err()
            .contains("closed before"));
        let endless = vec![b'a'; MAX_HEAD + 8192];
        assert!(read_head(&mut endless.as_slice())
            .unwrap_err()
            .contains("over"));
    }
}
