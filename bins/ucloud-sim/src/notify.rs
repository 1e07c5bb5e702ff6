//! The provider notification stream, `GET /api/accounting/notifications` upgraded
//! to a WebSocket, served as the core serves it
//! (core2/pkg/accounting/provider_notifications.go; the frames are
//! [`ucloud_wire::apm`]):
//!
//! 1. The provider's first message (binary; a text message too, as the core reads
//!    either, when it is valid UTF-8 as RFC 6455 wants) is an `Auth` frame: the replay start, the
//!    connection flags (bit 0: wallet frames end in the retired `u64`) and its
//!    access token, which must verify as this provider's; else the connection
//!    closes.
//! 2. Replay: every wallet of the provider updated at or after the replay start
//!    (with an allocation), then every project modified after it that has an
//!    active allocation here.
//! 3. Live: every change the server makes ([`Hub`]) is looked up and sent, a
//!    wallet when an allocation gave to it and its category is not free to use, a
//!    project when it has an active allocation here.
//! 4. `ReplayUser{username}` from the provider replays that user's active wallets
//!    and the projects (with their active wallets) they are a member of.
//!
//! Each event is one message, as the core flushes after each: `User`, `Project`
//! and `Category` frames binding references (numbered from 0 per kind and
//! connection) come before the `Wallet` frames that use them; a changed project is
//! sent again under its reference. No acknowledgements. Unlike the core, which
//! ignores them, anything else from the provider (an unknown op, a second `Auth`,
//! a message that does not decode) closes the connection, so that a mistake shows.

use crate::projects::{self, Change, Wallet};
use crate::store::Store;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ucloud_http::websocket::{self, Decoder, Message, Role};
use ucloud_wire::apm::{self, Frame, FLAG_INCLUDE_RETIRED, WALLET_LOCKED, WALLET_PROJECT};

/// How long the socket may wait in one read: between reads, pending changes are
/// sent (a rustls stream is one object, read and written by one thread).
pub const POLL: Duration = Duration::from_millis(50);
/// A provider that has not authenticated by then is dropped.
const AUTH_WAIT: Duration = Duration::from_secs(30);
/// The provider sends small frames only.
const MAX_MESSAGE: usize = 1 << 20;
const OP_BINARY: u8 = 0x2;

/// The open streams: each gets every change the server makes.
#[derive(Default)]
pub struct Hub {
    streams: Mutex<Vec<Sender<Change>>>,
}

impl Hub {
    pub fn subscribe(&self) -> Receiver<Change> {
        let (tx, rx) = channel();
        self.lock().push(tx);
        rx
    }

    /// Tells every stream; a closed one is dropped.
    pub fn broadcast(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.lock()
            .retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Change>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a stream needs of the server.
pub struct Context<'a> {
    pub provider: &'a str,
    pub store: &'a Mutex<Store>,
    pub hub: &'a Hub,
    /// Whether a token is this provider's access token (`Keys::verify_provider`).
    pub verify: &'a (dyn Fn(&str) -> Result<(), String> + Sync),
}

impl Context<'_> {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The references one connection has bound, and the frames of the message being
/// built (the core's `flush`: users, projects, categories, then wallets).
#[derive(Default)]
struct Conn {
    with_retired: bool,
    users: HashMap<String, u32>,
    projects: HashMap<String, u32>,
    categories: HashMap<String, u32>,
    new_users: Vec<Frame>,
    new_projects: Vec<Frame>,
    new_categories: Vec<Frame>,
    wallets: Vec<Frame>,
}

fn next_ref<V>(map: &HashMap<String, V>) -> u32 {
    map.len() as u32
}

impl Conn {
    fn project_frame(&mut self, reference: u32, project: serde_json::Value, modified: i64) {
        self.new_projects
            .retain(|f| !matches!(f, Frame::Project { reference: r, .. } if *r == reference));
        self.new_projects.push(Frame::Project {
            reference,
            modified_ms: modified,
            json: project.to_string(),
        });
    }

    /// `appendProject(project, forced)`.
    fn bind_project(
        &mut self,
        id: &str,
        project: serde_json::Value,
        modified: i64,
        forced: bool,
    ) -> u32 {
        match self.projects.get(id) {
            Some(&r) => {
                if forced {
                    self.project_frame(r, project, modified);
                }
                r
            }
            None => {
                let r = next_ref(&self.projects);
                self.projects.insert(id.to_string(), r);
                self.project_frame(r, project, modified);
                r
            }
        }
    }

    fn bind_user(&mut self, name: &str) -> u32 {
        if let Some(&r) = self.users.get(name) {
            return r;
        }
        let r = next_ref(&self.users);
        self.users.insert(name.to_string(), r);
        self.new_users.push(Frame::User {
            reference: r,
            username: name.to_string(),
        });
        r
    }

    fn bind_category(&mut self, category: &serde_json::Value) -> u32 {
        let name = category["name"].as_str().unwrap_or_default();
        if let Some(&r) = self.categories.get(name) {
            return r;
        }
        let r = next_ref(&self.categories);
        self.categories.insert(name.to_string(), r);
        self.new_categories.push(Frame::Category {
            reference: r,
            json: category.to_string(),
        });
        r
    }

    /// `appendWallet`: its owner and category bound first. A project wallet whose
    /// project this simulator never created (one set with `/sim/quota` for a
    /// project known only from a job) is not sent: the core has no such wallets.
    fn wallet(&mut self, cx: &Context<'_>, w: &Wallet) {
        let mut flags = 0;
        let workspace = match w.owner["projectId"].as_str() {
            Some(id) => {
                let reference = match self.projects.get(id) {
                    Some(&r) => r,
                    None => match projects::project_json(&cx.store(), id) {
                        Ok(Some((p, modified))) => self.bind_project(id, p, modified, false),
                        _ => return,
                    },
                };
                flags |= WALLET_PROJECT;
                reference
            }
            None => self.bind_user(w.owner["username"].as_str().unwrap_or_default()),
        };
        if w.locked {
            flags |= WALLET_LOCKED;
        }
        let category = self.bind_category(&w.category);
        self.wallets.push(Frame::Wallet {
            workspace,
            category,
            quota: w.quota,
            usage: w.usage,
            flags,
            updated_ms: w.updated_ms,
        });
    }

    /// The message of everything appended since the last one, if anything was.
    fn flush(&mut self) -> Option<Vec<u8>> {
        let mut frames = std::mem::take(&mut self.new_users);
        frames.append(&mut self.new_projects);
        frames.append(&mut self.new_categories);
        frames.append(&mut self.wallets);
        if frames.is_empty() {
            return None;
        }
        Some(apm::encode(&frames, self.with_retired))
    }

    /// One change, looked up now, as the core's loop handles one channel item.
    /// `live`: a change the server made (the core leaves free-to-use wallets out
    /// of those, not of a replay).
    fn change(&mut self, cx: &Context<'_>, change: &Change, live: bool) {
        match change {
            Change::Wallet { category, owner } => {
                let found = projects::wallet(&cx.store(), cx.provider, category, owner);
                if let Ok(Some(w)) = found {
                    if w.allocated && !(live && w.free()) {
                        self.wallet(cx, &w);
                    }
                }
            }
            Change::Project(id) => {
                let (found, active) = {
                    let store = cx.store();
                    (
                        projects::project_json(&store, id),
                        projects::active_here(&store, id),
                    )
                };
                if let (Ok(Some((p, modified))), Ok(true)) = (found, active) {
                    self.bind_project(id, p, modified, true);
                }
            }
        }
    }
}

fn wallet_change(w: &Wallet) -> Change {
    Change::Wallet {
        category: w.category_name().to_string(),
        owner: w.reference(),
    }
}

/// What a replay from `from_ms` sends, in order.
fn replay(cx: &Context<'_>, from_ms: i64) -> Vec<Change> {
    let store = cx.store();
    let mut out: Vec<Change> = projects::wallets(&store, cx.provider)
        .unwrap_or_default()
        .iter()
        .filter(|w| w.updated_ms >= from_ms)
        .map(wallet_change)
        .collect();
    out.extend(
        projects::projects_modified_after(&store, from_ms)
            .unwrap_or_default()
            .into_iter()
            .map(Change::Project),
    );
    out
}

/// What `ReplayUser` sends: the projects of the user with an active wallet here,
/// then the user's and those projects' active wallets. Nothing for a user UCloud
/// does not know.
fn replay_user(cx: &Context<'_>, user: &str) -> Vec<Change> {
    let store = cx.store();
    let known = crate::owners::knows_user(&store, user).unwrap_or(false);
    let member_of = projects::projects_of(&store, user).unwrap_or_default();
    if !known && member_of.is_empty() {
        return Vec::new();
    }
    let active: Vec<Wallet> = projects::wallets(&store, cx.provider)
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w.active)
        .collect();
    let mut wallets: Vec<Change> = active
        .iter()
        .filter(|w| w.owner["username"] == user && w.owner["projectId"].is_null())
        .map(wallet_change)
        .collect();
    let mut out = Vec::new();
    for id in member_of {
        let mine: Vec<Change> = active
            .iter()
            .filter(|w| w.owner["projectId"] == id.as_str())
            .map(wallet_change)
            .collect();
        if !mine.is_empty() {
            out.push(Change::Project(id));
            wallets.extend(mine);
        }
    }
    out.extend(wallets);
    out
}

fn send(stream: &mut impl Write, message: &[u8]) -> Result<(), String> {
    stream
        .write_all(&websocket::encode(OP_BINARY, message, None))
        .and_then(|()| stream.flush())
        .map_err(|e| format!("writing to the stream: {e}"))
}

/// Sends a close frame and ends the session with `why`.
fn close(stream: &mut impl Write, code: u16, why: &str) -> Result<(), String> {
    let _ = stream
        .write_all(&websocket::close(code, why, None))
        .and_then(|()| stream.flush());
    Err(why.to_string())
}

/// Sends each change as its own message.
fn send_all(
    stream: &mut impl Write,
    conn: &mut Conn,
    cx: &Context<'_>,
    changes: &[Change],
    live: bool,
) -> Result<(), String> {
    for change in changes {
        conn.change(cx, change, live);
        if let Some(message) = conn.flush() {
            send(stream, &message)?;
        }
    }
    Ok(())
}

/// One provider's stream, after the 101: `leftover` is what the HTTP reader had
/// read past the request. `stream` must time out its reads (see [`POLL`]): between
/// reads, the changes the server made are sent. Ends `Ok` when the provider closes,
/// `Err` with why the stream was closed otherwise.
pub fn session<S: Read + Write>(
    stream: &mut S,
    leftover: &[u8],
    cx: &Context<'_>,
) -> Result<(), String> {
    let mut decoder = Decoder::new(Role::Server, MAX_MESSAGE);
    decoder.push(leftover);
    let started = Instant::now();
    let mut conn = Conn::default();
    let mut live: Option<Receiver<Change>> = None;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        loop {
            let message = match decoder.next() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return close(stream, e.code, &e.why),
            };
            let data = match message {
                Message::Binary(b) => b,
                Message::Text(t) => t.into_bytes(),
                Message::Ping(p) => {
                    stream
                        .write_all(&websocket::encode(0xA, &p, None))
                        .and_then(|()| stream.flush())
                        .map_err(|e| format!("writing a pong: {e}"))?;
                    continue;
                }
                Message::Pong(_) => continue,
                Message::Close(..) => {
                    let _ = close(stream, websocket::CLOSE_NORMAL, "");
                    return Ok(());
                }
            };
            let frames = match apm::decode(&data, conn.with_retired) {
                Ok(f) => f,
                Err(e) => return close(stream, websocket::CLOSE_PROTOCOL, &format!("{e}")),
            };
            if live.is_none() {
                let Some(Frame::Auth {
                    replay_from_ms,
                    flags,
                    token,
                }) = frames.into_iter().next()
                else {
                    return close(
                        stream,
                        websocket::CLOSE_POLICY,
                        "the first frame must be Auth",
                    );
                };
                if let Err(why) = (cx.verify)(&token) {
                    return close(
                        stream,
                        websocket::CLOSE_POLICY,
                        &format!("not authenticated: {why}"),
                    );
                }
                conn.with_retired = flags & FLAG_INCLUDE_RETIRED != 0;
                // Subscribed before the replay is read, so nothing falls between.
                live = Some(cx.hub.subscribe());
                send_all(stream, &mut conn, cx, &replay(cx, replay_from_ms), false)?;
                continue;
            }
            for frame in frames {
                match frame {
                    Frame::ReplayUser { username } => {
                        send_all(stream, &mut conn, cx, &replay_user(cx, &username), false)?;
                    }
                    other => {
                        return close(
                            stream,
                            websocket::CLOSE_POLICY,
                            &format!("a provider sends only ReplayUser after Auth, not {other:?}"),
                        )
                    }
                }
            }
        }
        match &live {
            Some(rx) => {
                let pending: Vec<Change> = rx.try_iter().collect();
                send_all(stream, &mut conn, cx, &pending, true)?;
            }
            None if started.elapsed() > AUTH_WAIT => {
                return close(stream, websocket::CLOSE_POLICY, "no Auth frame in time");
            }
            None => {}
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("reading the stream: {e}")),
        }
    }
}

#[cfg(test)]
mod tests;
