//! The event socket: ucloud-notify, run by slurmctld as PrologSlurmctld and
//! EpilogSlurmctld, says "job N starts" or "job N ended". Only Slurm's own account
//! may say so: the peer's kernel credentials (SO_PEERCRED) are checked before a
//! byte is read. An event is only a hint to look at job N now; what is reported
//! still comes from Slurm itself (squeue), so even a forged event could not make
//! up a state.

use nix::sys::socket::{getsockopt, sockopt};
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// A sender that has not said its line by then is cut off.
const READ_LIMIT: Duration = Duration::from_millis(500);
const MAX_LINE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// PrologSlurmctld: the job got its nodes and starts.
    Start,
    /// EpilogSlurmctld: the job ended.
    End,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub slurm_id: u64,
    pub kind: Kind,
}

/// One event line: `{"v":1,"event":"start"|"end","job":"42",...}` (ucloud-notify(8)).
pub fn parse(line: &[u8]) -> Result<Event, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    if v["v"] != 1 {
        return Err("unknown version (expected \"v\":1)".into());
    }
    let kind = match v["event"].as_str() {
        Some("start") => Kind::Start,
        Some("end") => Kind::End,
        _ => return Err("\"event\" must be \"start\" or \"end\"".into()),
    };
    let slurm_id = v["job"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("\"job\" must be a Slurm job id")?;
    Ok(Event { slurm_id, kind })
}

/// Serves the socket until the process ends: one short connection per event.
pub fn serve(listener: UnixListener, slurm_uid: u32, events: Sender<Event>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let answer = match handle(&mut stream, slurm_uid) {
            Ok(event) => {
                if events.send(event).is_err() {
                    return;
                }
                "ok\n".to_string()
            }
            Err(why) => {
                ucloud_wire::log_warn!("ucloud-monitor: event refused: {why}");
                format!("refused: {why}\n")
            }
        };
        let _ = stream.write_all(answer.as_bytes());
    }
}

fn handle(stream: &mut UnixStream, slurm_uid: u32) -> Result<Event, String> {
    let creds = getsockopt(&*stream, sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    if creds.uid() != slurm_uid {
        return Err(format!(
            "uid {} (pid {}) is not Slurm's account (uid {slurm_uid}): only slurmctld's hooks send events",
            creds.uid(),
            creds.pid()
        ));
    }
    stream
        .set_read_timeout(Some(READ_LIMIT))
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut limited = (&mut *stream).take(MAX_LINE);
    let mut byte = [0u8; 1];
    loop {
        match limited.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("reading the event: {e}")),
        }
    }
    parse(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_parse() {
        assert_eq!(
            parse(br#"{"v":1,"event":"end","job":"42","name":"J","user":"u","exit":"3:0"}"#),
            Ok(Event {
                slurm_id: 42,
                kind: Kind::End
            })
        );
        for bad in [
            &br#"{"v":2,"event":"end","job":"42"}"#[..],
            br#"{"v":1,"event":"boom","job":"42"}"#,
            br#"{"v":1,"event":"start","job":"x"}"#,
            b"nonsense",
        ] {
            assert!(parse(bad).is_err());
        }
    }

    #[test]
    fn only_the_slurm_account_is_heard() {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = std::env::temp_dir().join(format!("monitor-ev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        // Our own uid plays Slurm's, then another uid.
        let me = nix::unistd::getuid().as_raw();
        let l2 = listener.try_clone().unwrap();
        std::thread::spawn(move || serve(l2, me, tx));
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"v\":1,\"event\":\"start\",\"job\":\"9\"}\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "ok\n");
        assert_eq!(rx.recv().unwrap().slurm_id, 9);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
