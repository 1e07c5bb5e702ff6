//! What both upgrades do alike: check the upgrade request, refuse it with an
//! ordinary HTTP answer, switch protocols, and read the client in short waits so
//! that a reader thread notices when the session ends.

use crate::conn::ClientIn;
use crate::connection::Connection;
use crate::error::Reject;
use crate::launch::{judge, Started, Stdin};
use crate::respond;
use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use ucloud_http::server::Request;
use ucloud_http::websocket as ws;
use ucloud_wire::calls::Call;
use ucloud_wire::envelope::Envelope;
use ucloud_wire::error::Failure;

/// How often a reader looks up from a quiet socket to see if it must stop.
pub const READER_TICK: Duration = Duration::from_millis(250);

/// How an upgrade ended, for the log: the status and a note.
pub type Ended = (u16, String);

/// Sends the close an upgrade ends with once its plugin is done, and says which:
/// normal when the plugin succeeded (what is complete is complete, whatever the
/// client did after), the client's own code when it broke the stream, else the
/// plugin's failure (a refusal as a policy close, the rest as internal).
pub fn finish(
    out: &mut impl Write,
    child: &mut Child,
    stderr: JoinHandle<Vec<u8>>,
    client_end: Option<(String, Option<u16>)>,
) -> (u16, String) {
    let status = child.wait();
    let text = stderr.join().unwrap_or_default();
    let (code, why) = match (status, client_end) {
        (Ok(s), _) if s.success() => (ws::CLOSE_NORMAL, "complete".to_string()),
        (_, Some((how, Some(code)))) => (code, how),
        _ => {
            let failure = Failure::from_stderr(&text, 4096);
            let code = if failure.status < 500 || failure.status == 507 {
                ws::CLOSE_POLICY
            } else {
                ws::CLOSE_INTERNAL
            };
            (code, failure.why)
        }
    };
    let _ = out.write_all(&ws::close(code, &why, None));
    (code, why)
}

/// Runs an accepted upgrade to its end: one thread reads the client (its
/// `client` part), one reads the plugin's answers (`plugin`), and this one relays
/// their events (`relay`) and says how it ended; the readers are then told to stop,
/// and one still sending is unblocked by the channel's end. `capacity` bounds
/// the events in flight, so a client that floods pings while not reading loses
/// some answers instead of growing this process.
pub fn pump<E: Send>(
    capacity: usize,
    client: impl FnOnce(SyncSender<E>, &AtomicBool) + Send,
    plugin: impl FnOnce(SyncSender<E>) + Send,
    relay: impl FnOnce(&Receiver<E>) -> String,
) -> String {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (client_tx, stop_ref) = (tx.clone(), &stop);
        scope.spawn(move || client(client_tx, stop_ref));
        scope.spawn(move || plugin(tx));
        let note = relay(&rx);
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        note
    })
}

/// A plugin serving an accepted upgrade.
pub struct Live {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    pub stderr: JoinHandle<Vec<u8>>,
}

/// Starts the call's dispatcher and waits for the plugin's first line, its `ready`
/// (`is_ready` judges it): the dispatcher has verified the token and the plugin
/// has found the session. Only then is the WebSocket accepted, so a client that is
/// not who the token says gets an ordinary HTTP refusal and never a byte buffered.
pub fn start(
    conn: &Connection,
    call: &'static Call,
    envelope: &Envelope,
    accept: &str,
    out: &mut impl Write,
    is_ready: fn(&[u8]) -> bool,
) -> Result<Live, Ended> {
    let Started { mut child, stderr } =
        match conn.launcher.launch(call, envelope.encode(), Stdin::Open) {
            Ok(started) => started,
            Err(why) => return Err(refuse(out, Reject::DispatchFailed(why))),
        };
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut first = Vec::new();
    let ready = (&mut stdout).take(64).read_until(b'\n', &mut first).is_ok() && is_ready(&first);
    if !ready {
        drop(child.stdin.take());
        let reject = judge(call.name, child.wait(), stderr).unwrap_or_else(|| {
            Reject::DispatchFailed("the plugin ended before it was ready".into())
        });
        return Err(refuse(out, reject));
    }
    switch_protocols(out, accept)?;
    Ok(Live {
        child,
        stdout,
        stderr,
    })
}

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
