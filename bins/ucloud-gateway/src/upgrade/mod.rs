//! Protocol upgrades: a request that turns the rest of the connection into a
//! WebSocket. The two kinds stand side by side, each in its own file: following a
//! job's output (follow.rs, a call that is only a WebSocket) and the WEBSOCKET_V1
//! upload (upload.rs, a call whose body may also come as messages). What they share
//! is in shared.rs. Which calls upgrade, and how, is the call table's `websocket`.
//! The WEBSOCKET_V2 folder upload (folder.rs) shares the upload's endpoint and call;
//! its link says `protocol=WEBSOCKET_V2`. A search (search.rs) is a stream run as
//! follow.rs runs one, and so is a terminal (shell.rs).

mod folder;
mod follow;
mod search;
mod shared;
mod shell;
mod upload;

use crate::conn::{ClientIn, ClientOut};
use crate::connection::Connection;
use crate::respond::Outcome;
use crate::route::Route;
use ucloud_http::server::Request;
use ucloud_wire::calls::{Call, WebSocket};

/// An upgrade request, and its call.
pub enum Upgrade {
    Follow(&'static Call),
    Upload(&'static Call),
    Folder(&'static Call),
}

/// The upgrade `req` asks for, if any.
pub fn wanted(conn: &Connection, req: &Request) -> Option<Upgrade> {
    let asks = req
        .header("upgrade")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    // A GET upgrade on the path of a call that also takes its body as messages.
    if req.method == "GET" && asks {
        if let Some(Route::Call(c)) = conn.route("POST", req) {
            if c.websocket == WebSocket::Also && folder::wanted(req) {
                return Some(Upgrade::Folder(c));
            }
            if c.websocket == WebSocket::Also {
                return Some(Upgrade::Upload(c));
            }
        }
    }
    // A WebSocket-only endpoint, upgrade or not: a plain request is refused there.
    match conn.route(&req.method, req)? {
        Route::Call(c) if c.websocket == WebSocket::Only => Some(Upgrade::Follow(c)),
        _ => None,
    }
}

/// Serves one upgrade request to its end. The connection is over afterwards.
pub fn serve(
    upgrade: Upgrade,
    conn: &Connection,
    req: &Request,
    leftover: Vec<u8>,
    input: &mut ClientIn,
    out: &mut ClientOut,
) -> Outcome {
    let (call, (status, note)) = match upgrade {
        Upgrade::Follow(c) => {
            let stream = match c.name {
                "files.streamingSearch" => &search::SEARCH,
                "jobs.shell" => &shell::SHELL,
                _ => &follow::FOLLOW,
            };
            (c, follow::serve(conn, c, stream, req, leftover, input, out))
        }
        Upgrade::Upload(c) => (c, upload::serve(conn, c, req, leftover, input, out)),
        Upgrade::Folder(c) => (c, folder::serve(conn, c, req, leftover, input, out)),
    };
    Outcome {
        call: call.name,
        status,
        close: true,
        note: Some(note),
    }
}
