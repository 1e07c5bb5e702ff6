//! `GET /ucloud/{P}/websocket?session=…`: a terminal, opened by the browser with
//! the session identifier UCloud handed it (`jobs.interactiveSession` or
//! `jobs.openTerminalInFolder` minted it). No bearer token comes: the identifier is
//! the credential, checked here only for its shape and by the dispatcher for real.
//! The stream runs as follow.rs runs one; what differs is said here: the first
//! message is the web client's `initialize` (frontend-web's Jobs/Shell.tsx), and
//! the client's later messages (`input`, `resize`) go to the plugin's stdin, one
//! payload per line, each answered with a `response` so that the web client's
//! `call` settles. The `usernameHint` the web client adds is not read: the
//! identifier names the user, signed.

use super::follow::{Init, Stream};
use crate::normalise::normalise;
use serde_json::{json, Value};

pub const SHELL: Stream = Stream {
    doing: "a terminal",
    init: |text, site| parse_initialize(text, &site.provider),
    by_browser: true,
    forwards: Some(forward),
};

/// The call every message of the stream names.
fn call_of(provider: &str) -> String {
    format!("jobs.compute.{provider}.shell.open")
}

/// `{"call":"jobs.compute.{P}.shell.open","streamId":…,"payload":{"type":
/// "initialize","sessionIdentifier":…,"cols":C,"rows":R}}`: the stream id and the
/// plugin's request (the payload; the caller compares and then drops the identifier).
fn parse_initialize(text: &str, provider: &str) -> Init {
    let (stream_id, mut payload) = super::shared::first_message(text, &call_of(provider))?;
    if payload["type"].as_str() != Some("initialize")
        || !payload["sessionIdentifier"].is_string()
        || size(&payload).is_none()
    {
        return Err(
            "the first message's payload must be {\"type\":\"initialize\",\
             \"sessionIdentifier\":…,\"cols\":C,\"rows\":R} (1 to 65535 each)"
                .into(),
        );
    }
    normalise(&mut payload);
    Ok((stream_id, payload))
}

/// A terminal size the kernel's winsize can hold.
fn size(payload: &Value) -> Option<(u16, u16)> {
    let dim = |k: &str| {
        payload[k]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    Some((dim("cols")?, dim("rows")?))
}

/// A later message: the line for the plugin and the stream id to answer on, or
/// why the message is refused (the stream is closed with 1008).
pub type Forward = Result<(Vec<u8>, String), String>;

/// `input {data}` or `resize {cols, rows}` (a second `initialize` is a resize, as
/// the web client may send one on reconnecting); the plugin gets a fresh object
/// of only the known fields, never the client's text.
fn forward(text: &str, provider: &str) -> Forward {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if v["call"].as_str() != Some(call_of(provider).as_str()) {
        return Err(format!("a message must call {}", call_of(provider)));
    }
    let stream_id = v["streamId"]
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or("a message needs a streamId (a string of 1 to 256 bytes)")?
        .to_string();
    let p = &v["payload"];
    let line = match p["type"].as_str() {
        Some("input") => match p["data"].as_str() {
            Some(data) => json!({"type": "input", "data": data}),
            None => return Err("an input message needs data (a string)".into()),
        },
        Some("resize" | "initialize") => match size(p) {
            Some((cols, rows)) => json!({"type": "resize", "cols": cols, "rows": rows}),
            None => return Err("a resize needs cols and rows (1 to 65535 each)".into()),
        },
        _ => return Err("a message's payload type must be input or resize".into()),
    };
    let mut line = line.to_string().into_bytes();
    line.push(b'\n');
    Ok((line, stream_id))
}

/// The answer to a forwarded message, which settles the web client's `call`.
pub fn settled(stream_id: &str) -> String {
    json!({"type": "response", "status": 200, "streamId": stream_id, "payload": {}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_clients_initialize() {
        let good = r#"{"call":"jobs.compute.hpc.shell.open","streamId":"0","payload":{"type":"initialize","sessionIdentifier":"abc","cols":80,"rows":24}}"#;
        let (id, req) = parse_initialize(good, "hpc").unwrap();
        assert_eq!((id.as_str(), req["cols"].as_u64()), ("0", Some(80)));
        for bad in [
            r#"{"call":"jobs.compute.other.shell.open","streamId":"0","payload":{"type":"initialize","sessionIdentifier":"a","cols":80,"rows":24}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"0","payload":{"type":"input","data":"x"}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"0","payload":{"type":"initialize","cols":80,"rows":24}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"0","payload":{"type":"initialize","sessionIdentifier":"a","cols":0,"rows":24}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"0","payload":{"type":"initialize","sessionIdentifier":"a","cols":80,"rows":65536}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"0","payload":{"type":"initialize","sessionIdentifier":"a","cols":"80","rows":24}}"#,
            "[]",
        ] {
            assert!(parse_initialize(bad, "hpc").is_err(), "{bad}");
        }
    }

    #[test]
    fn later_messages_become_fresh_lines() {
        let (line, id) = forward(
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"7","payload":{"type":"input","data":"ls\r","extra":1},"bearer":"x"}"#,
            "hpc",
        )
        .unwrap();
        assert_eq!(id, "7");
        assert_eq!(line, b"{\"data\":\"ls\\r\",\"type\":\"input\"}\n");
        let (line, _) = forward(
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"8","payload":{"type":"resize","cols":100,"rows":40}}"#,
            "hpc",
        )
        .unwrap();
        assert_eq!(line, b"{\"cols\":100,\"rows\":40,\"type\":\"resize\"}\n");
        for bad in [
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"8","payload":{"type":"resize","cols":-1,"rows":40}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"8","payload":{"type":"input","data":7}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","streamId":"8","payload":{"type":"exec","data":"x"}}"#,
            r#"{"call":"jobs.compute.hpc.shell.open","payload":{"type":"input","data":"x"}}"#,
            r#"{"call":"files.browse","streamId":"8","payload":{"type":"input","data":"x"}}"#,
            "not json",
        ] {
            assert!(forward(bad, "hpc").is_err(), "{bad}");
        }
        assert!(settled("9").contains("\"status\":200"));
    }
}
