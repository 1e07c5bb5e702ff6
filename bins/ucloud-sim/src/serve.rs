//! `ucloud-sim serve`: HTTPS, one thread per connection, keep-alive. Every request
//! that reaches HTTP, refused ones included, is written to the call log.

use crate::api::Sim;
use crate::calllog::{CallLog, Entry};
use crate::error::SimError;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use ucloud_http::server::{self, HttpError, Limits, Reader};

/// More connections than this at once are closed at once: the simulator is a test
/// fixture, not a server to be flooded.
const MAX_CONNECTIONS: usize = 256;
const IDLE: Duration = Duration::from_secs(120);

struct Shared {
    sim: Sim,
    log: CallLog,
    tls: Arc<ServerConfig>,
    open: AtomicUsize,
}

pub fn serve(listen: &str, sim: Sim, log: CallLog, tls: Arc<ServerConfig>) -> Result<(), SimError> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| SimError::Setup(format!("cannot listen on {listen}: {e}")))?;
    eprintln!(
        "ucloud-sim: provider {} on https://{}",
        sim.provider,
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let shared = Arc::new(Shared {
        sim,
        log,
        tls,
        open: AtomicUsize::new(0),
    });
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ucloud-sim: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.open.fetch_sub(1, Ordering::SeqCst);
            eprintln!("ucloud-sim: too many connections, closing a new one");
            continue;
        }
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = connection(&shared, stream) {
                    eprintln!("ucloud-sim: connection: {e}");
                }
                shared.open.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("ucloud-sim: cannot start a thread: {e}");
        }
    }
    Ok(())
}

fn connection(shared: &Shared, tcp: TcpStream) -> Result<(), String> {
    tcp.set_read_timeout(Some(IDLE))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(IDLE))
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let conn = ServerConnection::new(Arc::clone(&shared.tls)).map_err(|e| e.to_string())?;
    let mut reader = Reader::new(StreamOwned::new(conn, tcp));
    let limits = Limits::default();
    loop {
        let request = match reader.read_request(&limits) {
            Ok(Some(r)) => r,
            Ok(None) | Err(HttpError::Closed) => return Ok(()),
            Err(e) => {
                if let Some(status) = e.status() {
                    let why = e.to_string();
                    shared.log.append(&Entry {
                        method: "",
                        path: "",
                        query: None,
                        status,
                        headers: &[],
                        body: b"",
                        error: Some(&why),
                    });
                    let body = serde_json::json!({"why": why, "errorCode": "BAD_REQUEST"});
                    let _ = server::write_response(
                        reader.get_mut(),
                        status,
                        &[
                            ("Content-Type", "application/json; charset=utf-8"),
                            ("Connection", "close"),
                        ],
                        body.to_string().as_bytes(),
                    );
                }
                return Err(e.to_string());
            }
        };
        if request.method == "GET"
            && request.path() == "/api/accounting/notifications"
            && request.header("upgrade").is_some()
        {
            return notifications(shared, &mut reader, &request);
        }
        let answer = shared.sim.handle(
            &request.method,
            request.path(),
            request.query(),
            request.header("authorization"),
            &request.body,
        );
        shared.log.append(&Entry {
            method: &request.method,
            path: request.path(),
            query: request.query(),
            status: answer.status,
            headers: &request.headers,
            body: &request.body,
            error: answer.refused.as_deref(),
        });
        eprintln!(
            "ucloud-sim: {} {} {}{}",
            request.method,
            request.path(),
            answer.status,
            answer
                .refused
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
        let body = answer.body.to_string();
        let mut headers = vec![("Content-Type", "application/json; charset=utf-8")];
        if !request.keep_alive {
            headers.push(("Connection", "close"));
        }
        server::write_response(reader.get_mut(), answer.status, &headers, body.as_bytes())
            .map_err(|e| e.to_string())?;
        if !request.keep_alive {
            let stream = reader.get_mut();
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
            return Ok(());
        }
    }
}

/// `GET /api/accounting/notifications` with `Upgrade: websocket`: the provider
/// notification stream ([`crate::notify`]) on this connection until it ends.
fn notifications(
    shared: &Shared,
    reader: &mut Reader<StreamOwned<ServerConnection, TcpStream>>,
    request: &server::Request,
) -> Result<(), String> {
    let accept = ucloud_http::websocket::upgrade_accept(request);
    let refused = accept.as_ref().err().cloned();
    let status = if refused.is_some() { 400 } else { 101 };
    shared.log.append(&Entry {
        method: &request.method,
        path: request.path(),
        query: request.query(),
        status,
        headers: &request.headers,
        body: &request.body,
        error: refused.as_deref(),
    });
    eprintln!(
        "ucloud-sim: GET {} {status}{}",
        request.path(),
        refused
            .as_deref()
            .map(|w| format!(" ({w})"))
            .unwrap_or_default()
    );
    let accept = match accept {
        Ok(a) => a,
        Err(why) => {
            let body = serde_json::json!({"why": why, "errorCode": "BAD_REQUEST"});
            let headers = [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Connection", "close"),
            ];
            return server::write_response(
                reader.get_mut(),
                400,
                &headers,
                body.to_string().as_bytes(),
            )
            .map_err(|e| e.to_string());
        }
    };
    ucloud_http::websocket::switch_protocols(reader.get_mut(), &accept)
        .map_err(|e| e.to_string())?;
    let leftover = reader.buffered().to_vec();
    let stream = reader.get_mut();
    stream
        .sock
        .set_read_timeout(Some(crate::notify::POLL))
        .map_err(|e| e.to_string())?;
    let sim = &shared.sim;
    let verify = |token: &str| sim.keys().verify_provider(token, &sim.provider);
    let cx = crate::notify::Context {
        provider: &sim.provider,
        store: sim.store(),
        hub: &sim.hub,
        verify: &verify,
    };
    let outcome = crate::notify::session(stream, &leftover, &cx);
    eprintln!(
        "ucloud-sim: notification stream ended{}",
        outcome
            .as_ref()
            .err()
            .map(|w| format!(": {w}"))
            .unwrap_or_default()
    );
    Ok(())
}
