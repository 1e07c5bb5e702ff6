//! `GET /ucloud/jobs.provider.{P}/websocket`: UCloud's core follows a job's output.
//! The upgrade request is checked like any call (bearer token, user from
//! `usernameHint`); after the 101 the core's `init` message becomes the request of
//! one `jobs.follow` dispatcher, whose plugin prints one message payload per line
//! (ucloud-im-protocol(7)). The gateway owns the stream id and the `response` that
//! ends the stream, so a plugin can neither forge nor skip them.
//!
//! Every call that is only a WebSocket runs this way; what differs is said by its
//! [`Stream`]: how its first message is read (search.rs has
//! `files.streamingSearch`'s), who opens it (shell.rs: a browser with a session
//! identifier), and whether later messages go to the plugin (shell.rs: keys in).
//! Those go through a thread of their own that writes the plugin's stdin, so that
//! a plugin slow to read its input never stops its output from flowing; each
//! message counts in the client's backlog until it is written.
//!
//! Three threads meet on one channel: the client's frames, the plugin's lines, and
//! this one, the only writer to the client, which also pings every 30 s. The
//! channel is bounded, so neither side can grow the gateway's memory by sending
//! faster than the other takes: the plugin's reader waits (the plugin then waits
//! on its pipe), and so does the client's past `BACKLOG_FRAMES` messages or
//! `BACKLOG_BYTES` bytes not yet taken. A backlog that does not move for
//! `BACKLOG_WAIT` means a client that sends without reading (each ping wants a
//! pong, which cannot be written while it does not read): it is closed with 1008,
//! and what it still sends is read and dropped, so that it can read the close.

use super::shared::{
    first_message, read_tick, refuse, switch_protocols, upgrade_accept, Ended, READER_TICK,
};
use crate::conn::ClientIn;
use crate::connection::Connection;
use crate::credential::ucloud_user;
use crate::error::Reject;
use crate::launch::{judge, Started, Stdin};
use crate::normalise::normalise;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ucloud_http::server::Request;
use ucloud_http::websocket::{self as ws, Decoder, Message, Role};
use ucloud_wire::answer;
use ucloud_wire::calls::Call;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::envelope::{Credential, Envelope};
use ucloud_wire::names::UcloudName;

/// The largest message the core may send (an init carries one Job).
const MAX_CLIENT_MESSAGE: usize = 1 << 20;
/// The largest line a plugin may print (one batch of output).
const MAX_PLUGIN_LINE: usize = 1 << 20;
const PING_EVERY: Duration = Duration::from_secs(30);
/// Silence (not even a pong) this long means the core is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(75);
/// How long the core may take to send `init` after the upgrade.
const INIT_WITHIN: Duration = Duration::from_secs(30);
/// How long a stopped plugin gets to exit on its own after its stdin closed.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Events the channel holds; the plugin's reader waits when it is full.
const CHANNEL: usize = 64;
/// The most client messages, and bytes of them, queued and not yet taken; past
/// either the client's reader waits. Below `CHANNEL`, so that the bound, not a
/// full channel, is what a flooding client meets.
const BACKLOG_FRAMES: usize = 32;
const BACKLOG_BYTES: usize = 4 << 20;
/// How long a full backlog may stand still before the client is closed (1008).
const BACKLOG_WAIT: Duration = Duration::from_secs(5);

/// A first message read: the stream id and the plugin's request, or why it is refused.
pub type Init = Result<(String, Value), String>;

/// What differs between the calls that are only a WebSocket.
pub struct Stream {
    /// What the stream does for its user, for the refusal of a missing usernameHint.
    pub doing: &'static str,
    /// The first message: the stream id and the plugin's request, or why the
    /// message is refused (the stream is closed with 1008).
    pub init: fn(text: &str, site: &SiteConfig) -> Init,
    /// Opened by a browser with a session identifier in the query (`session`),
    /// which the first message must name too; else by UCloud's core, with its
    /// bearer token and `usernameHint`.
    pub by_browser: bool,
    /// The client's later messages: dropped (`None`), or each made into a line for
    /// the plugin's stdin, with the stream id to answer on (given the provider).
    pub forwards: Option<fn(text: &str, provider: &str) -> super::shell::Forward>,
}

pub const FOLLOW: Stream = Stream {
    doing: "following a job",
    init: |text, site| parse_init(text, &site.provider),
    by_browser: false,
    forwards: None,
};

enum Event {
    Client(Message),
    /// The client broke the protocol: close with this code.
    ClientBad(ws::WsError),
    /// The client's backlog stood full for `BACKLOG_WAIT`: close with this (1008).
    /// Its reader goes on, dropping what comes, to see the client's close.
    ClientFlood(ws::WsError),
    ClientGone(String),
    Line(Vec<u8>),
    /// The plugin's stdout ended (`Err`: it could not be read or a line was too long).
    PluginEof(Result<(), String>),
}

/// The client's messages in the channel, not yet taken by the session.
#[derive(Default)]
struct Backlog {
    frames: AtomicUsize,
    bytes: AtomicUsize,
}

impl Backlog {
    /// Whether a message of `size` fits (one always does into an empty backlog).
    fn has_room(&self, size: usize) -> bool {
        let frames = self.frames.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        frames == 0 || (frames < BACKLOG_FRAMES && bytes + size <= BACKLOG_BYTES)
    }

    fn add(&self, size: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }

    /// Waits until a message of `size` fits and counts it in. `Ok(false)`: `stop`
    /// was set; `Err`: the backlog did not move for `BACKLOG_WAIT`.
    fn wait_and_add(&self, size: usize, stop: &AtomicBool) -> Result<bool, ws::WsError> {
        let since = Instant::now();
        while !self.has_room(size) {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if since.elapsed() >= BACKLOG_WAIT {
                return Err(ws::WsError {
                    code: ws::CLOSE_POLICY,
                    why: format!(
                        "{BACKLOG_FRAMES} messages or {BACKLOG_BYTES} bytes sent without \
                         reading the answers"
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.add(size);
        Ok(true)
    }

    fn take(&self, size: usize) {
        self.frames.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(size, Ordering::Relaxed);
    }
}

/// What a message counts in the backlog: its payload, and a frame's head.
fn size(m: &Message) -> usize {
    14 + match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_, why) => why.len(),
    }
}

/// Serves one upgrade request to its end. The connection is over afterwards.
pub fn serve(
    conn: &Connection,
    call: &'static Call,
    stream: &Stream,
    req: &Request,
    leftover: Vec<u8>,
    input: &mut ClientIn,
    out: &mut impl Write,
) -> Ended {
    let (envelope_parts, accept) = match check_upgrade(conn, req, stream) {
        Ok(ok) => ok,
        Err(reject) => return refuse(out, reject),
    };
    if let Err(ended) = switch_protocols(out, &accept) {
        return ended;
    }
    let (tx, rx) = mpsc::sync_channel(CHANNEL);
    let stop = AtomicBool::new(false);
    let backlog = Arc::new(Backlog::default());
    let note = std::thread::scope(|scope| {
        let client_tx = tx.clone();
        let (stop_ref, backlog_ref): (_, &Backlog) = (&stop, &backlog);
        let reader =
            scope.spawn(move || read_client(input, leftover, client_tx, stop_ref, backlog_ref));
        let mut session = Session {
            out,
            rx: &rx,
            backlog: &backlog,
            last_heard: Instant::now(),
            next_ping: Instant::now() + PING_EVERY,
            reader_done: false,
        };
        let note = session.run(conn, call, stream, envelope_parts, tx);
        stop.store(true, Ordering::Relaxed);
        // The reader may wait on a full channel: empty it until the reader sees `stop`.
        while !reader.is_finished() {
            let _ = rx.recv_timeout(READER_TICK);
        }
        note
    });
    (101, note)
}

/// What the upgrade request contributes to the envelope.
struct Caller {
    credential: Credential,
    user: Option<UcloudName>,
}

fn check_upgrade(
    conn: &Connection,
    req: &Request,
    stream: &Stream,
) -> Result<(Caller, String), Reject> {
    conn.config()?;
    let accept = upgrade_accept(req)?;
    if stream.by_browser {
        let identifier = crate::credential::session_identifier(req, stream.doing)?;
        let caller = Caller {
            credential: Credential::Transfer(identifier),
            user: None,
        };
        return Ok((caller, accept));
    }
    // The token first: an unauthenticated caller learns nothing else.
    let (bearer, verified) = conn.verify_bearer(req)?;
    let named = req
        .query_param("usernameHint")
        .map(|hint| UcloudName::from_hint(&hint).map_err(|e| e.to_string()));
    let Some(user) = ucloud_user(named, &verified)? else {
        return Err(Reject::BadRequest(format!(
            "{} acts for a UCloud user: the query parameter usernameHint is missing",
            stream.doing
        )));
    };
    Ok((
        Caller {
            credential: Credential::Bearer(bearer.to_string()),
            user: Some(user),
        },
        accept,
    ))
}

/// Reads the client's frames until it leaves, breaks the protocol, sends more than
/// the backlog holds, or `stop` is set.
fn read_client(
    input: &mut ClientIn,
    leftover: Vec<u8>,
    tx: SyncSender<Event>,
    stop: &AtomicBool,
    backlog: &Backlog,
) {
    let mut decoder = Decoder::new(Role::Server, MAX_CLIENT_MESSAGE);
    decoder.push(&leftover);
    let mut buf = vec![0u8; 16 << 10];
    let mut flooded = false;
    loop {
        loop {
            match decoder.next() {
                Ok(Some(m)) => {
                    let closing = matches!(m, Message::Close(..));
                    if flooded && !closing {
                        continue;
                    }
                    if flooded {
                        backlog.add(size(&m));
                    } else {
                        match backlog.wait_and_add(size(&m), stop) {
                            Ok(true) => {}
                            Ok(false) => return,
                            Err(e) => {
                                flooded = true;
                                if tx.send(Event::ClientFlood(e)).is_err() {
                                    return;
                                }
                                continue;
                            }
                        }
                    }
                    if tx.send(Event::Client(m)).is_err() || closing {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Event::ClientBad(e));
                    return;
                }
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match read_tick(input, &mut buf) {
                Ok(None) => continue,
                Ok(Some(0)) => {
                    let _ = tx.send(Event::ClientGone("the client closed the connection".into()));
                    return;
                }
                Ok(Some(n)) => {
                    decoder.push(&buf[..n]);
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Event::ClientGone(format!("client gone: {e}")));
                    return;
                }
            }
        }
    }
}

/// Reads the plugin's lines (each at most `MAX_PLUGIN_LINE`) until EOF.
fn read_plugin(stdout: impl Read, tx: SyncSender<Event>) {
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    loop {
        let mut line = Vec::new();
        let got = (&mut reader)
            .take(MAX_PLUGIN_LINE as u64 + 1)
            .read_until(b'\n', &mut line);
        let end = match got {
            Ok(0) => Some(Ok(())),
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                None
            }
            Ok(_) if line.len() > MAX_PLUGIN_LINE => Some(Err(format!(
                "the plugin printed a line longer than {MAX_PLUGIN_LINE} bytes"
            ))),
            // The last line without its newline still counts.
            Ok(_) => None,
            Err(e) => Some(Err(format!("reading the plugin's output: {e}"))),
        };
        if let Some(end) = end {
            let _ = tx.send(Event::PluginEof(end));
            return;
        }
        if tx.send(Event::Line(line)).is_err() {
            return;
        }
    }
}

struct Session<'a, W: Write> {
    out: &'a mut W,
    rx: &'a Receiver<Event>,
    backlog: &'a Arc<Backlog>,
    last_heard: Instant,
    next_ping: Instant,
    /// The client's reader has stopped: no close reply can come.
    reader_done: bool,
}

/// The running plugin (the dispatcher, exec'd into it: same process).
struct Plugin {
    child: Child,
    stdin: Option<ChildStdin>,
    /// For a stream that forwards: the lines for the thread that owns stdin.
    to_stdin: Option<Sender<(Vec<u8>, usize)>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// How the session ends toward the client.
enum End {
    /// Send the stream's final `response`, then close normally.
    Respond(u16, Value),
    /// Close with this code and reason, no `response`.
    Close(u16, String),
    /// The client is gone: nothing more can be sent.
    Gone(String),
}

impl<W: Write> Session<'_, W> {
    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.out
            .write_all(frame)
            .and_then(|()| self.out.flush())
            .map_err(|e| format!("client gone: {e}"))
    }

    /// Waits for the next event, pinging on time and giving up on a silent client.
    fn next(&mut self, deadline: Option<Instant>) -> Result<Event, End> {
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(End::Close(
                    ws::CLOSE_POLICY,
                    "no init message within 30 s".into(),
                ));
            }
            if now.duration_since(self.last_heard) > SILENCE_LIMIT {
                return Err(End::Close(
                    ws::CLOSE_GOING_AWAY,
                    "no answer to pings".into(),
                ));
            }
            if now >= self.next_ping {
                self.send(&ws::encode(0x9, b"", None)).map_err(End::Gone)?;
                self.next_ping = now + PING_EVERY;
            }
            let wake = deadline.map_or(self.next_ping, |d| d.min(self.next_ping));
            match self.rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(event) => {
                    if let Event::Client(m) = &event {
                        self.backlog.take(size(m));
                        self.last_heard = Instant::now();
                    }
                    if matches!(
                        event,
                        Event::Client(Message::Close(..))
                            | Event::ClientBad(_)
                            | Event::ClientGone(_)
                    ) {
                        self.reader_done = true;
                    }
                    return Ok(event);
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(End::Gone("every reader ended".into()))
                }
            }
        }
    }

    /// Answers control frames; returns the text messages (and ends on the rest).
    fn control(&mut self, m: Message) -> Result<Option<String>, End> {
        match m {
            Message::Text(t) => Ok(Some(t)),
            Message::Ping(p) => {
                self.send(&ws::encode(0xA, &p, None)).map_err(End::Gone)?;
                Ok(None)
            }
            Message::Pong(_) => Ok(None),
            Message::Binary(_) => Err(End::Close(
                ws::CLOSE_UNSUPPORTED,
                "this stream carries text messages only".into(),
            )),
            Message::Close(..) => Err(End::Close(ws::CLOSE_NORMAL, "closed by the client".into())),
        }
    }

    fn run(
        &mut self,
        conn: &Connection,
        call: &'static Call,
        stream: &Stream,
        caller: Caller,
        tx: SyncSender<Event>,
    ) -> String {
        let init_by = Instant::now() + INIT_WITHIN;
        let mut provider = String::new();
        let (stream_id, mut request) = loop {
            let event = match self.next(Some(init_by)) {
                Ok(e) => e,
                Err(end) => return self.finish(None, None, end),
            };
            let text = match event {
                Event::Client(m) => match self.control(m) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(end) => return self.finish(None, None, end),
                },
                Event::ClientBad(e) | Event::ClientFlood(e) => {
                    return self.finish(None, None, End::Close(e.code, e.why))
                }
                Event::ClientGone(why) => return self.finish(None, None, End::Gone(why)),
                Event::Line(_) | Event::PluginEof(_) => unreachable!("no plugin yet"),
            };
            let site = match conn.config() {
                Ok(site) => site,
                Err(reject) => {
                    let f = reject.failure();
                    return self.finish(None, None, End::Close(ws::CLOSE_POLICY, f.why));
                }
            };
            provider.clone_from(&site.provider);
            match (stream.init)(&text, site) {
                Ok(init) => break init,
                Err(why) => return self.finish(None, None, End::Close(ws::CLOSE_POLICY, why)),
            }
        };
        if let Credential::Transfer(identifier) = &caller.credential {
            // The identifier in the URL opened the stream; the message must name
            // the same, and the plugin needs neither (the dispatcher hands it over).
            if request["sessionIdentifier"].as_str() != Some(identifier.as_str()) {
                let why = "the first message names another session than the URL".into();
                return self.finish(None, None, End::Close(ws::CLOSE_POLICY, why));
            }
            if let Some(fields) = request.as_object_mut() {
                fields.remove("sessionIdentifier");
            }
        }
        let envelope = Envelope {
            call: call.name.to_string(),
            credential: caller.credential,
            user: caller.user,
            request,
        };
        let mut plugin = match spawn(conn, call, envelope.encode(), tx) {
            Ok(p) => p,
            Err(why) => {
                let f = Reject::DispatchFailed(why).failure();
                return self.finish(None, Some(&stream_id), End::Respond(f.status, f.body()));
            }
        };
        if stream.forwards.is_some() {
            plugin.to_stdin = plugin.stdin.take().map(|stdin| {
                let (to, from) = mpsc::channel();
                let backlog = Arc::clone(self.backlog);
                std::thread::spawn(move || write_plugin(stdin, from, &backlog));
                to
            });
        }
        let end = self.relay(call, stream, &provider, &stream_id, &mut plugin);
        self.finish(Some(plugin), Some(&stream_id), end)
    }

    /// Plugin lines out, client messages in, until one side ends.
    fn relay(
        &mut self,
        call: &Call,
        stream: &Stream,
        provider: &str,
        stream_id: &str,
        plugin: &mut Plugin,
    ) -> End {
        let mut lines_seen = 0usize;
        loop {
            let event = match self.next(None) {
                Ok(e) => e,
                Err(end) => return end,
            };
            match event {
                Event::Client(m) => match self.control(m) {
                    Ok(Some(text)) if stream.forwards.is_none() && is_cancel(&text) => {
                        return End::Close(ws::CLOSE_NORMAL, "cancelled".into())
                    }
                    Ok(Some(text)) if stream.forwards.is_some() => {
                        let forward = stream.forwards.expect("checked");
                        let (line, answer_on) = match forward(&text, provider) {
                            Ok(f) => f,
                            Err(why) => return End::Close(ws::CLOSE_POLICY, why),
                        };
                        // Counted again until the writer has written it.
                        let counted = size(&Message::Text(text));
                        self.backlog.add(counted);
                        let sent = plugin.to_stdin.as_ref().map(|to| to.send((line, counted)));
                        if !matches!(sent, Some(Ok(()))) {
                            self.backlog.take(counted);
                        }
                        let settled = super::shell::settled(&answer_on);
                        if let Err(why) = self.send(&ws::text(&settled, None)) {
                            return End::Gone(why);
                        }
                    }
                    // Anything else the core may say does not concern a follow stream.
                    Ok(_) => {}
                    Err(end) => return end,
                },
                Event::ClientBad(e) | Event::ClientFlood(e) => return End::Close(e.code, e.why),
                Event::ClientGone(why) => return End::Gone(why),
                Event::Line(line) => {
                    lines_seen += 1;
                    let expected = match lines_seen {
                        // The plugin's first two lines (ucloud-im-protocol(7)).
                        1 => Some(answer::MAGIC),
                        2 => Some(answer::WEBSOCKET_HEAD),
                        _ => None,
                    };
                    if let Some(expected) = expected {
                        if line != expected.as_bytes() {
                            return plugin_broke(format!(
                                "line {lines_seen} of the plugin's output is not {expected}"
                            ));
                        }
                        continue;
                    }
                    let payload: Value = match serde_json::from_slice(&line) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => {
                            return plugin_broke(
                                "the plugin printed a line that is not a JSON object".into(),
                            )
                        }
                    };
                    let message =
                        json!({"type": "message", "streamId": stream_id, "payload": payload});
                    if let Err(why) = self.send(&ws::text(&message.to_string(), None)) {
                        return End::Gone(why);
                    }
                }
                Event::PluginEof(Err(why)) => return plugin_broke(why),
                Event::PluginEof(Ok(())) => {
                    drop(plugin.stdin.take());
                    drop(plugin.to_stdin.take());
                    let status = plugin.child.wait();
                    let stderr =
                        std::mem::replace(&mut plugin.stderr, std::thread::spawn(Vec::new));
                    return match judge(call.name, status, stderr) {
                        None if lines_seen >= 2 => End::Respond(200, json!({})),
                        None => {
                            plugin_broke("the plugin exited 0 without its UCLOUD-IM/1 head".into())
                        }
                        Some(reject) => {
                            let f = reject.failure();
                            End::Respond(f.status, f.body())
                        }
                    };
                }
            }
        }
    }

    /// Stops the plugin, tells the client how the stream ended; returns the log note.
    fn finish(&mut self, plugin: Option<Plugin>, stream_id: Option<&str>, end: End) -> String {
        if let Some(plugin) = plugin {
            self.stop(plugin);
        }
        match end {
            End::Respond(status, payload) => {
                let response = json!({
                    "type": "response",
                    "status": status,
                    "streamId": stream_id.unwrap_or_default(),
                    "payload": payload,
                });
                let note = format!("stream ended, status {status}");
                let _ = self
                    .send(&ws::text(&response.to_string(), None))
                    .and_then(|()| self.send(&ws::close(ws::CLOSE_NORMAL, "", None)));
                self.await_close();
                note
            }
            End::Close(code, why) => {
                let _ = self.send(&ws::close(code, &why, None));
                self.await_close();
                format!("closed {code}: {why}")
            }
            End::Gone(why) => why,
        }
    }

    /// Closing its stdin asks the plugin to stop; it gets `STOP_GRACE` to do so,
    /// while its lines are taken and dropped (a plugin waiting on a full pipe could
    /// not see its stdin close). The kill after that is refused once the dispatcher
    /// became the user (EPERM); then the gateway's own exit, right after the
    /// session, ends it (PR_SET_PDEATHSIG).
    fn stop(&mut self, mut plugin: Plugin) {
        drop(plugin.stdin.take());
        drop(plugin.to_stdin.take());
        let until = Instant::now() + STOP_GRACE;
        while Instant::now() < until {
            match plugin.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => match self.rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(Event::Client(m)) => {
                        self.backlog.take(size(&m));
                        if matches!(m, Message::Close(..)) {
                            self.reader_done = true;
                        }
                    }
                    Ok(Event::ClientBad(_) | Event::ClientGone(_)) => self.reader_done = true,
                    _ => {}
                },
            }
        }
        if kill(Pid::from_raw(plugin.child.id() as i32), Signal::SIGKILL).is_ok() {
            let _ = plugin.child.wait();
        }
    }

    /// Gives the client a moment to answer our close, as RFC 6455 asks.
    fn await_close(&mut self) {
        if self.reader_done {
            return;
        }
        let until = Instant::now() + Duration::from_secs(2);
        while let Ok(event) = self
            .rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            if matches!(
                event,
                Event::Client(Message::Close(..)) | Event::ClientGone(_) | Event::ClientBad(_)
            ) {
                return;
            }
        }
    }
}

fn plugin_broke(why: String) -> End {
    let f = Reject::BadOutput(why).failure();
    End::Respond(f.status, f.body())
}

/// `{"call":"jobs.provider.{P}.follow","streamId":"…","payload":{"type":"init",…}}`:
/// the stream id and the request for the plugin (the payload).
fn parse_init(text: &str, provider: &str) -> Result<(String, Value), String> {
    let (stream_id, mut payload) =
        first_message(text, &format!("jobs.provider.{provider}.follow"))?;
    if payload["type"].as_str() != Some("init") || !payload["job"].is_object() {
        return Err("the first message's payload must be {\"type\":\"init\",\"job\":Job}".into());
    }
    normalise(&mut payload);
    Ok((stream_id, payload))
}

/// A cancel in either form the core uses: `{"type":"cancel",…}` or inside `payload`.
fn is_cancel(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .is_ok_and(|v| v["type"] == "cancel" || v["payload"]["type"] == "cancel")
}

/// Starts the dispatcher with the envelope on fd 3; its stdin stays open (the
/// plugin ends when it closes), its stdout feeds `read_plugin`.
fn spawn(
    conn: &Connection,
    call: &Call,
    envelope: Vec<u8>,
    tx: SyncSender<Event>,
) -> Result<Plugin, String> {
    let Started { mut child, stderr } = conn.launcher.launch(call, envelope, Stdin::Open)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || read_plugin(stdout, tx));
    Ok(Plugin {
        stdin: child.stdin.take(),
        to_stdin: None,
        child,
        stderr,
    })
}

/// Writes the forwarded lines to the plugin's stdin, each taken out of the
/// client's backlog once written; ends (closing stdin) when the session drops its
/// sender or the plugin stops reading for good. Not a scoped thread: a plugin that
/// never reads must not keep the session from ending.
fn write_plugin(mut stdin: ChildStdin, lines: Receiver<(Vec<u8>, usize)>, backlog: &Backlog) {
    for (line, counted) in lines {
        let written = stdin.write_all(&line).and_then(|()| stdin.flush());
        backlog.take(counted);
        if written.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_messages() {
        let good = r#"{"call":"jobs.provider.hpc.follow","streamId":"s1","payload":{"type":"init","job":{"id":"42"}}}"#;
        let (id, req) = parse_init(good, "hpc").unwrap();
        assert_eq!(id, "s1");
        assert_eq!(req["job"]["id"], "42");
        for (bad, why) in [
            ("not json", "not JSON"),
            (
                r#"{"call":"jobs.provider.other.follow","streamId":"s","payload":{"type":"init","job":{}}}"#,
                "must call jobs.provider.hpc.follow",
            ),
            (
                r#"{"call":"jobs.provider.hpc.follow","payload":{"type":"init","job":{}}}"#,
                "streamId",
            ),
            (
                r#"{"call":"jobs.provider.hpc.follow","streamId":"s","payload":{"type":"cancel"}}"#,
                "init",
            ),
        ] {
            let e = parse_init(bad, "hpc").unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn cancels_in_both_forms() {
        assert!(is_cancel(r#"{"type":"cancel","streamId":"s"}"#));
        assert!(is_cancel(
            r#"{"call":"jobs.provider.hpc.follow","streamId":"s","payload":{"type":"cancel"}}"#
        ));
        assert!(!is_cancel(r#"{"type":"init"}"#));
        assert!(!is_cancel("cancel"));
    }

    #[test]
    fn the_backlog_waits_and_then_gives_up() {
        let backlog = Backlog::default();
        let stop = AtomicBool::new(false);
        let ping = size(&Message::Ping(vec![1; 125]));
        for _ in 0..BACKLOG_FRAMES {
            assert_eq!(backlog.wait_and_add(ping, &stop), Ok(true));
        }
        assert!(!backlog.has_room(ping));
        // Taken meanwhile: room again.
        backlog.take(ping);
        assert_eq!(backlog.wait_and_add(ping, &stop), Ok(true));
        // Never taken: given up after BACKLOG_WAIT, with 1008.
        let started = Instant::now();
        let e = backlog.wait_and_add(ping, &stop).unwrap_err();
        assert_eq!(e.code, ws::CLOSE_POLICY);
        assert!(started.elapsed() >= BACKLOG_WAIT);
        // The session's end stops the wait.
        stop.store(true, Ordering::Relaxed);
        assert_eq!(backlog.wait_and_add(ping, &stop), Ok(false));
        // Bytes count too: four messages of the largest size fit, a fifth waits;
        // one always fits into an empty backlog.
        let backlog = Backlog::default();
        let big = size(&Message::Text("y".repeat(MAX_CLIENT_MESSAGE - 14)));
        for _ in 0..4 {
            backlog.add(big);
        }
        assert!(!backlog.has_room(big));
        assert!(Backlog::default().has_room(BACKLOG_BYTES * 2));
    }

    #[test]
    fn plugin_lines_are_split_and_bounded() {
        let (tx, rx) = mpsc::sync_channel(8);
        read_plugin(&b"UCLOUD-IM/1\n{\"a\":1}\nlast"[..], tx);
        let got: Vec<_> = rx.iter().collect();
        assert!(matches!(&got[0], Event::Line(l) if l == b"UCLOUD-IM/1"));
        assert!(matches!(&got[1], Event::Line(l) if l == b"{\"a\":1}"));
        assert!(matches!(&got[2], Event::Line(l) if l == b"last"));
        assert!(matches!(&got[3], Event::PluginEof(Ok(()))));
        let (tx, rx) = mpsc::sync_channel(8);
        let long = vec![b'x'; MAX_PLUGIN_LINE + 10];
        read_plugin(&long[..], tx);
        assert!(matches!(rx.recv().unwrap(), Event::PluginEof(Err(_))));
    }
}
