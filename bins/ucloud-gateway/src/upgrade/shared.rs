//! What both upgrades do alike: check the upgrade request, refuse it with an
//! ordinary HTTP answer, switch protocols, and read the client in short waits so
//! that a reader thread notices when the session ends.

use crate::conn::ClientIn;
use crate::error::Reject;
use crate::respond;
use serde_json::Value;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};
use ucloud_http::server::Request;
use ucloud_http::websocket as ws;

/// How often a reader looks up from a quiet socket to see if it must stop.
pub const READER_TICK: Duration = Duration::from_millis(250);

/// How an upgrade ended, for the log: the status and a note.
pub type Ended = (u16, String);

/// The checks of an RFC 6455 upgrade request; the Sec-WebSocket-Accept value.
pub fn upgrade_accept(req: &Request) -> Result<String, Reject> {
    ws::upgrade_accept(req).map_err(Reject::BadRequest)
}

/// An upgrade refused: an ordinary HTTP answer, and the connection is over.
pub fn refuse(out: &mut impl Write, reject: Reject) -> Ended {
    let failure = reject.failure();
    let _ = respond::send_reject(out, &reject, false, false);
    (failure.status, failure.why)
}

/// The 101 that turns the connection into a WebSocket; `Err` when the client is gone.
pub fn switch_protocols(out: &mut impl Write, accept: &str) -> Result<(), Ended> {
    ws::switch_protocols(out, accept).map_err(|e| (101, format!("client gone: {e}")))
}

/// One read of at most `READER_TICK`: `Ok(None)` when nothing came meanwhile.
pub fn read_tick(input: &mut ClientIn, buf: &mut [u8]) -> io::Result<Option<usize>> {
    input.deadline = Some(Instant::now() + READER_TICK);
    match input.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first message of a stream, `{"call":expected,"streamId":…,"payload":…}`
/// (UCloud's rpc.WSRequestMessage): its stream id and its payload.
pub fn first_message(text: &str, expected: &str) -> Result<(String, Value), String> {
    let mut v: Value =
        serde_json::from_str(text).map_err(|e| format!("the first message is not JSON: {e}"))?;
    if v["call"].as_str() != Some(expected) {
        return Err(format!("the first message must call {expected}"));
    }
    let stream_id = v["streamId"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or("the first message needs a streamId (a string of 1 to 256 bytes)")?
        .to_string();
    Ok((stream_id, v["payload"].take()))
}
