//! `ucloud-registry serve`: one connection on the registry socket. The kernel says
//! who is on the other end (SO_PEERCRED); that alone decides what they may ask:
//!
//! | caller | may ask |
//! |---|---|
//! | the service account (`service_user`) | `ticket`, `unlinked` |
//! | any local account | `preview`, `connect` (a ticket, for itself) |
//! | root | `add`, `remove` |
//!
//! One request line, one answer line, both JSON (see ucloud-registry(8)):
//! `{"op":"preview","ticket":"..."}` → `{"ok":true,"ucloud":"...","local":"...",...}`,
//! then `{"op":"connect","ticket":"...","ucloud":"..."}` → `{"ok":true,"message":"..."}`;
//! a refusal is `{"ok":false,"status":77,"why":"..."}`. The person sees the first
//! answer and confirms before the second request, which names the UCloud user
//! confirmed: a client cannot connect a ticket without having asked what it is for.

use crate::audit::Record;
use crate::error::Error;
use crate::ops::{Added, Connected, Preview, Registry};
use crate::request::{Request, MAX_REQUEST};
use crate::sshkeys;
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use ucloud_wire::config::SiteConfig;

/// The whole request line must arrive within this, however it is cut up: a
/// per-read timeout would let a client dripping one byte at a time hold this root
/// process (and a place on the socket) for hours.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may block on a client that does not read.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections one account may hold at once (root has no limit). The socket's
/// MaxConnections= (64) is for everyone together, and systemd closes each
/// connection beyond it at once; MaxConnectionsPerSource= means nothing on a unix
/// socket. So the share of one account is counted here, and kept well below the
/// total: one person cannot fill the socket, the service account (every ticket of
/// the connect page goes through it) can take a quarter.
const PERSON_SLOTS: u32 = 2;
const SERVICE_SLOTS: u32 = 16;
/// How long a redemption waits for UCloud to answer the home drive registration.
const DRIVE_WAIT: Duration = Duration::from_secs(10);
/// How long a connecting person waits for UCloud's list of their SSH keys.
const SSH_KEYS_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    Service,
    Person,
}

/// Serves the one request on `stream`. Refusals are answers, not errors: the error
/// is for a connection that could not be served at all.
pub fn serve(stream: UnixStream) -> Result<(), Error> {
    let creds = getsockopt(&stream, sockopt::PeerCredentials).map_err(Error::errno(
        "cannot read the peer credentials of the registry socket",
    ))?;
    let uid = creds.uid();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stream
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .map_err(Error::io("cannot set socket timeouts"))?;
    // Held until the process exits: the kernel drops the lock with the descriptor.
    let _slot = match take_slot(uid) {
        Ok(slot) => slot,
        Err(e) => {
            ucloud_wire::log_warn!("ucloud-registry: uid {uid}: {e}");
            let answer = json!({"ok": false, "status": e.exit_code(), "why": e.to_string()});
            return send_answer(&stream, &answer, uid);
        }
    };
    let line = read_request(&stream, deadline)
        .map_err(Error::io(format!("reading the request of uid {uid}")))?;
    let answer = match answer(&line, uid) {
        Ok(v) => v,
        Err(e) => json!({"ok": false, "status": e.exit_code(), "why": e.to_string()}),
    };
    send_answer(&stream, &answer, uid)
}

/// How long, and how much, a client may still send after its answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Writes the answer line and closes the connection so that the client reads it.
/// Closing a unix socket with unread input in it resets the connection, and a
/// client still writing (a busy answer comes before its request is read) then
/// fails on its write before it reads the answer. So: our half closed first, then
/// what the client still sends is read and dropped until it closes too, for a
/// moment and a bounded amount only.
fn send_answer(mut stream: &UnixStream, answer: &Value, uid: u32) -> Result<(), Error> {
    stream
        .write_all(format!("{answer}\n").as_bytes())
        .map_err(Error::io(format!("answering uid {uid}")))?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    while drained < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// One line, at most MAX_REQUEST bytes, read by `deadline` however slowly it comes.
/// A line cut short (no newline) is returned as it is, for `answer` to refuse.
fn read_request(mut stream: &UnixStream, deadline: Instant) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    while !line.contains(&b'\n') && line.len() < MAX_REQUEST {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("no complete request within {} s", REQUEST_TIMEOUT.as_secs()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let want = buf.len().min(MAX_REQUEST - line.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Only what precedes the first newline is the request.
    if let Some(end) = line.iter().position(|&b| b == b'\n') {
        line.truncate(end + 1);
    }
    String::from_utf8(line)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "the request is not UTF-8"))
}

/// A place among the connections `uid` may hold at once: a lock on one byte of the
/// slot file (an open-file-description lock, so each connection's process holds
/// its own, and the kernel frees it however the process ends).
fn take_slot(uid: u32) -> Result<Option<File>, Error> {
    if uid == 0 {
        return Ok(None);
    }
    let site = SiteConfig::load(&ucloud_wire::paths::site_config())
        .map_err(|e| Error::Config(e.to_string()))?;
    let slots = match role_of(uid, &site)? {
        Role::Service => SERVICE_SLOTS,
        _ => PERSON_SLOTS,
    };
    let path = Path::new(&ucloud_wire::paths::state_dir()).join("registry-connections.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io(format!("cannot open {}", path.display())))?;
    for k in 0..slots {
        if crate::sys::lock_byte(&file, slot_offset(uid, k))
            .map_err(Error::errno(format!("cannot lock {}", path.display())))?
        {
            return Ok(Some(file));
        }
    }
    Err(Error::Busy(format!(
        "uid {uid} already has {slots} registry connection(s) open, the most one account may \
         hold at once; try again when they are done"
    )))
}

fn slot_offset(uid: u32, k: u32) -> i64 {
    i64::from(uid) * i64::from(SERVICE_SLOTS) + i64::from(k)
}

fn answer(line: &str, uid: u32) -> Result<Value, Error> {
    let request = Request::parse(line)?;
    let site = SiteConfig::load(&ucloud_wire::paths::site_config())
        .map_err(|e| Error::Config(e.to_string()))?;
    let mut registry = Registry::site();
    registry.store.prepare()?;
    registry.tickets.prepare()?;
    housekeeping(&registry, &site);
    let role = role_of(uid, &site)?;
    registry.audit.person = role == Role::Person;
    let op = request.op();
    let allowed: &[Role] = match request {
        // Root and the service account are let through to be refused with the
        // reason (ops.rs), which also leaves the ticket valid.
        Request::Preview { .. } | Request::Connect { .. } | Request::Mapped { .. } => {
            &[Role::Root, Role::Service, Role::Person]
        }
        Request::Ticket { .. } | Request::Unlinked { .. } => &[Role::Service],
        Request::Add { .. } | Request::Remove { .. } => &[Role::Root],
    };
    if !allowed.contains(&role) {
        let e = Error::Refused(format!(
            "uid {uid} may not ask for {op}: {}",
            if allowed == [Role::Service] {
                format!("only the service account {} may", site.service_user)
            } else {
                "only root may".to_string()
            }
        ));
        let record = Record {
            action: op,
            ucloud_user: request.ucloud().map(String::from),
            caller: Some(uid),
            ..Default::default()
        };
        registry.audit.refused(&record, &e);
        return Err(e);
    }
    let message = match request {
        Request::Preview { ticket } => {
            return Ok(previewed(registry.preview(&site, &ticket, uid)?))
        }
        Request::Connect { ticket, ucloud } => {
            let done = registry.redeem(&site, &ticket, &ucloud, uid, DRIVE_WAIT)?;
            let (Connected::New(mapping, _) | Connected::Again(mapping)) = &done;
            let keys = sshkeys::fetch(&registry, mapping, uid, SSH_KEYS_WAIT);
            return Ok(
                json!({"ok": true, "message": connected(done), "sshKeys": sshkeys::answer(&keys)}),
            );
        }
        Request::Mapped { ucloud } => {
            return Ok(json!({"ok": true, "mapped": registry.is_mapped(&site, &ucloud)?}));
        }
        Request::Ticket { ucloud } => {
            let ticket = registry.mint_ticket(&ucloud, Some(uid))?;
            return Ok(json!({"ok": true, "ticket": ticket.as_str()}));
        }
        Request::Unlinked { ucloud } => match registry.unlinked(&ucloud, Some(uid))? {
            Some(m) => format!(
                "removed the mapping of {} to {} (uid {}); UCloud will be told",
                m.ucloud, m.local, m.uid
            ),
            None => format!("{ucloud} was not mapped; UCloud will be told again"),
        },
        Request::Add { ucloud, local } => {
            match registry.add(&site, &ucloud, &local, DRIVE_WAIT, Some(uid))? {
                Added::Drive(d) => format!(
                    "mapped {ucloud} to {local}; home drive {} at {}",
                    d.id, d.base
                ),
                Added::Pending => {
                    format!("mapped {ucloud} to {local}; the home drive is pending")
                }
            }
        }
        Request::Remove { ucloud } => {
            let m = registry.remove(&ucloud, Some(uid))?;
            format!(
                "removed {} (was {} uid {}); UCloud will be told",
                m.ucloud, m.local, m.uid
            )
        }
    };
    Ok(json!({"ok": true, "message": message}))
}

fn previewed(p: Preview) -> Value {
    json!({
        "ok": true,
        "ucloud": p.ucloud.as_str(),
        "local": p.local.as_str(),
        "uid": p.uid,
        "again": p.again,
    })
}

fn connected(c: Connected) -> String {
    match c {
        Connected::New(m, Added::Drive(d)) => format!(
            "connected UCloud user {} to your account {} (uid {}); your home drive {} is {}. \
             UCloud has been told: go back to UCloud and reload the page.",
            m.ucloud, m.local, m.uid, d.id, d.base
        ),
        Connected::New(m, Added::Pending) => format!(
            "connected UCloud user {} to your account {} (uid {}). UCloud has been told; \
             your home drive appears in UCloud once UCloud has answered its registration.",
            m.ucloud, m.local, m.uid
        ),
        Connected::Again(m) => format!(
            "UCloud user {} was already connected to your account {}; UCloud has been told again.",
            m.ucloud, m.local
        ),
    }
}

/// Work any connection may trigger, so that a site without a timer still expires
/// old mappings and records late drive answers. Failures are logged, not fatal:
/// they must not keep a person from connecting.
fn housekeeping(registry: &Registry, site: &SiteConfig) {
    match registry.expire(site, ucloud_wire::now_ms()) {
        Ok(expired) => {
            for m in expired {
                ucloud_wire::log_info!(
                    "ucloud-registry: the mapping of {} to {} expired; UCloud will be told",
                    m.ucloud,
                    m.local
                );
            }
        }
        Err(e) => ucloud_wire::log_err!("ucloud-registry: expiring old mappings: {e}"),
    }
    if let Err(e) = registry.sync(site) {
        ucloud_wire::log_err!("ucloud-registry: recording answered drives: {e}");
    }
}

fn role_of(uid: u32, site: &SiteConfig) -> Result<Role, Error> {
    if uid == 0 {
        return Ok(Role::Root);
    }
    let service = nix::unistd::User::from_name(&site.service_user).map_err(Error::errno(
        format!("cannot look up service_user {}", site.service_user),
    ))?;
    Ok(match service {
        Some(s) if s.uid.as_raw() == uid => Role::Service,
        _ => Role::Person,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_different_accounts_never_share_a_byte() {
        assert_eq!(
            slot_offset(1000, SERVICE_SLOTS - 1) + 1,
            slot_offset(1001, 0)
        );
        assert!(slot_offset(u32::MAX, SERVICE_SLOTS - 1) > 0);
    }

    #[test]
    fn a_request_dripped_byte_by_byte_is_cut_at_the_deadline() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let dripper = std::thread::spawn(move || {
            for b in b"{\"op\":\"connect\"" {
                if client.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let e = read_request(&server, started + Duration::from_millis(350)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(server);
        dripper.join().unwrap();
    }

    #[test]
    fn a_client_still_writing_reads_its_answer() {
        // A busy answer goes out before the request is read; the client's write
        // that comes after it must not fail, nor its answer be lost.
        let (server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"{").unwrap();
        let answering = std::thread::spawn(move || {
            send_answer(&server, &json!({"ok": false, "status": 75}), 1000).unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        client.write_all(b"\"op\":\"connect\"}\n").unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "{\"ok\":false,\"status\":75}\n");
        client.shutdown(std::net::Shutdown::Write).unwrap();
        answering.join().unwrap();
    }

    #[test]
    fn a_request_is_read_to_its_first_newline() {
        let (server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"{\"op\":\"x\"}\nmore").unwrap();
        let line = read_request(&server, Instant::now() + Duration::from_secs(1)).unwrap();
        assert_eq!(line, "{\"op\":\"x\"}\n");
    }

    #[test]
    fn a_malformed_request_is_refused_before_anything_is_read_or_changed() {
        // Request::parse's own tests hold the hostile lines; here: it comes first,
        // before the site's configuration or the store is touched.
        for bad in ["not json\n", "{\"op\":\"steal\"}\n"] {
            let e = answer(bad, 1000).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{bad:?}: {e}");
        }
    }
}
