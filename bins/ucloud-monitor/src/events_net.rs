//! Events from another host: when slurmctld runs on a controller and the monitor
//! on a login host, ucloud-notify sends each event as a MUNGE credential over TCP
//! (`--listen`). Peer credentials mean nothing across a network, so munge proves
//! who spoke: the credential must decode (`unmunge`), with munged's own checks
//! passed (key, expiry, clock), and say it was made by Slurm's account. The
//! payload must be a fresh v2 event, and this monitor must not have seen it
//! before: munged's replay cache is per host, and the same event is sent to every
//! monitor. As on the local socket, an event is only a hint to ask Slurm about job
//! N now; it can never make up a state.

use crate::events::{Event, Kind};
use serde_json::Value;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A sender that has not said its line by then is cut off, however it dribbles.
const READ_LIMIT: Duration = Duration::from_secs(1);
/// The credential line's longest allowed form. ucloud-notify keeps its payload
/// well under 2 KiB; base64 and munge's header make that about 3 KiB.
const MAX_LINE: usize = 8192;
/// How long unmunge may take (munged answers in milliseconds).
const UNMUNGE_LIMIT: Duration = Duration::from_secs(2);
/// Connections served at once, in all, and from one address: a peer that opens
/// many slow connections fills only its own share. Each costs a thread and, while
/// unmunge runs, a process and three threads more: 8 stay well inside the unit's
/// TasksMax (64). An event refused as busy is still seen by the next poll; at about
/// 10 ms an unmunge, 8 at once take hundreds of events a second.
const MAX_CONNECTIONS: usize = 8;
const MAX_PER_PEER: usize = 4;
/// How old an event may be (by its `time` against this host's clock), how far
/// ahead of this clock it may be, and how far munge's ENCODE_TIME may be from it.
const MAX_AGE: i64 = 30;
const MAX_AHEAD: i64 = 5;
const MAX_ENCODE_GAP: i64 = 5;
/// Events remembered against replay; when all are still live, new ones are
/// refused (Slurm's poll still sees the job) rather than an old one forgotten.
const REPLAY_CAPACITY: usize = 65_536;
/// How long past its credential's life an event is remembered, for clocks that
/// step; a TTL above an hour counts as an hour (ucloud-notify asks for 60 s).
const REPLAY_MARGIN: i64 = 60;
const MAX_TTL: i64 = 3600;

/// What unmunge said about one credential (unmunge(1), metadata then payload).
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub status: u32,
    pub encode_host: String,
    pub encode_time: i64,
    pub ttl: i64,
    pub uid: u32,
    pub payload: Vec<u8>,
}

/// Reads unmunge's output: `KEY:<spaces>VALUE` lines, a blank line, the payload.
/// Values come as `-N` prints them (`17`) or as names with the number in
/// parentheses (`Replayed credential (17)`, `slurm (64030)`); the number counts.
pub fn parse_unmunge(out: &[u8]) -> Result<Decoded, String> {
    let split = out
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("unmunge's output has no blank line after its metadata")?;
    let meta = std::str::from_utf8(&out[..split]).map_err(|_| "unmunge's metadata is not text")?;
    let payload = out[split + 2..].to_vec();
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for line in meta.lines() {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("unmunge's metadata line {line:?} is not KEY: VALUE"))?;
        let key_ok = !key.is_empty() && key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        if !key_ok || fields.insert(key, value.trim()).is_some() {
            return Err(format!(
                "unmunge's metadata has a bad or repeated key {key:?}"
            ));
        }
    }
    let get = |key: &str| {
        fields
            .get(key)
            .copied()
            .ok_or_else(|| format!("unmunge's metadata lacks {key}"))
    };
    let number = |key: &str| -> Result<i64, String> {
        let value = get(key)?;
        // `Success (0)`, `2024-05-01 10:00:00 +0200 (1714550400)`, or `0`.
        let digits = match value.strip_suffix(')') {
            Some(rest) => rest.rsplit_once('(').map(|(_, n)| n).unwrap_or(""),
            None => value,
        };
        digits
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("unmunge's {key} {value:?} is not a number"))
    };
    let small = |key: &str| -> Result<u32, String> {
        u32::try_from(number(key)?).map_err(|_| format!("unmunge's {key} is out of range"))
    };
    let decoded = Decoded {
        status: small("STATUS")?,
        encode_host: fields
            .get("ENCODE_HOST")
            .map(|h| h.chars().take(100).collect())
            .unwrap_or_default(),
        encode_time: number("ENCODE_TIME")?,
        ttl: number("TTL")?,
        uid: small("UID")?,
        payload,
    };
    number("DECODE_TIME")?;
    small("GID")?;
    if let Some(len) = fields.get("LENGTH") {
        if len.parse::<usize>().ok() != Some(decoded.payload.len()) {
            return Err(format!(
                "unmunge's LENGTH {len} is not the payload's {} bytes",
                decoded.payload.len()
            ));
        }
    }
    Ok(decoded)
}

/// An event that passed every check but the replay cache.
#[derive(Debug, PartialEq)]
pub struct Proven {
    pub event: Event,
    pub host: String,
    /// Until when (unix seconds) it must be remembered against replay.
    pub remember_until: i64,
}

/// Everything but replay: munge's status, who made the credential, and the
/// payload (a v2 event of the right age, made when munge says it was).
pub fn verify(d: &Decoded, slurm_uid: u32, now: i64) -> Result<Proven, String> {
    if d.status != 0 {
        return Err(format!(
            "munge: {} ({})",
            ucloud_wire::munge::status_text(d.status),
            d.status
        ));
    }
    if d.uid != slurm_uid || d.uid == 0 {
        return Err(format!(
            "the credential was made by uid {}, not Slurm's account (uid {slurm_uid}): only slurmctld's hooks send events",
            d.uid
        ));
    }
    let v: Value =
        serde_json::from_slice(&d.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    if v["v"] != 2 {
        return Err("payload: unknown version (expected \"v\":2)".into());
    }
    let kind = match v["event"].as_str() {
        Some("start") => Kind::Start,
        Some("end") => Kind::End,
        _ => return Err("payload: \"event\" must be \"start\" or \"end\"".into()),
    };
    let slurm_id = v["job"]
        .as_str()
        .filter(|s| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|id| *id > 0)
        .ok_or("payload: \"job\" must be a Slurm job id")?;
    let time = v["time"]
        .as_i64()
        .ok_or("payload: \"time\" must be unix seconds")?;
    if time < now - MAX_AGE {
        return Err(format!(
            "stale: the event is {} s old (at most {MAX_AGE})",
            now - time
        ));
    }
    if time > now + MAX_AHEAD {
        return Err(format!(
            "the event is {} s ahead of this host's clock (at most {MAX_AHEAD}): check the clocks",
            time - now
        ));
    }
    if (d.encode_time - time).abs() > MAX_ENCODE_GAP {
        return Err(format!(
            "munge's ENCODE_TIME {} is not the event's time {time}",
            d.encode_time
        ));
    }
    let host = match &v["host"] {
        Value::Null => String::new(),
        Value::String(h) => h.chars().take(100).collect(),
        _ => return Err("payload: \"host\" must be a string".into()),
    };
    Ok(Proven {
        event: Event { slurm_id, kind },
        host,
        remember_until: d.encode_time.max(time) + d.ttl.min(MAX_TTL) + REPLAY_MARGIN,
    })
}

/// The events this monitor already took, by a keyed hash of what munge proved
/// (payload, maker, encode time): any text that decodes to the same is a replay,
/// however its characters differ.
pub struct ReplayCache {
    seen: HashMap<u64, i64>,
    keys: RandomState,
    capacity: usize,
    purged: i64,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            keys: RandomState::new(),
            capacity,
            purged: 0,
        }
    }

    /// Takes the event if it is new; refuses a replay, and a new one when the cache
    /// is full of live events.
    pub fn admit(&mut self, d: &Decoded, until: i64, now: i64) -> Result<(), String> {
        if now - self.purged >= 10 || self.seen.len() >= self.capacity {
            self.seen.retain(|_, until| *until >= now);
            self.purged = now;
        }
        let key = self.keys.hash_one((&d.payload, d.uid, d.encode_time));
        if self.seen.contains_key(&key) {
            return Err("replayed: this event was already received".into());
        }
        if self.seen.len() >= self.capacity {
            return Err("too many recent events to remember; this one is left to the poll".into());
        }
        self.seen.insert(key, until);
        Ok(())
    }
}

/// What every connection of every `--listen` socket shares.
pub struct Shared {
    pub slurm_uid: u32,
    pub unmunge: PathBuf,
    cache: Mutex<ReplayCache>,
    slots: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    pub fn new(slurm_uid: u32, unmunge: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            slurm_uid,
            unmunge,
            cache: Mutex::new(ReplayCache::new(REPLAY_CAPACITY)),
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn take_slot(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = slots.values().sum();
        let mine = slots.entry(ip).or_insert(0);
        if total >= MAX_CONNECTIONS || *mine >= MAX_PER_PEER {
            return None;
        }
        *mine += 1;
        Some(Slot {
            shared: self.clone(),
            ip,
        })
    }
}

/// One connection's place; given back when its thread ends, however it ends.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = slots.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                slots.remove(&self.ip);
            }
        }
    }
}

/// Serves one `--listen` socket until the process ends: each connection on a
/// thread of its own, so a slow peer holds up only itself.
pub fn serve(listener: TcpListener, shared: Arc<Shared>, events: Sender<Event>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, mostly: let some connections end first.
                ucloud_wire::log_warn!("ucloud-monitor: accepting an event connection: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let Some(slot) = shared.take_slot(peer.ip()) else {
            ucloud_wire::log_warn!("ucloud-monitor: event from {peer} refused: busy");
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(b"refused: busy\n");
            continue;
        };
        let (shared, events) = (shared.clone(), events.clone());
        let spawned = std::thread::Builder::new()
            .name("event".into())
            .spawn(move || {
                let _slot = slot;
                connection(stream, peer, &shared, &events);
            });
        if let Err(e) = spawned {
            ucloud_wire::log_warn!("ucloud-monitor: event from {peer} dropped: {e}");
        }
    }
}

fn connection(mut stream: TcpStream, peer: SocketAddr, shared: &Shared, events: &Sender<Event>) {
    let answer = match handle(&mut stream, shared) {
        Ok(event) => match events.send(event) {
            Ok(()) => "ok\n".to_string(),
            Err(_) => "refused: the monitor is stopping\n".to_string(),
        },
        Err(why) => {
            ucloud_wire::log_warn!("ucloud-monitor: event from {peer} refused: {why}");
            format!("refused: {why}\n")
        }
    };
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    let _ = stream.write_all(answer.as_bytes());
}

fn handle(stream: &mut TcpStream, shared: &Shared) -> Result<Event, String> {
    let line = read_line(stream)?;
    if !ucloud_wire::munge::looks_like_credential(&line) {
        return Err("not a MUNGE credential".into());
    }
    let mut input = line;
    input.push(b'\n');
    let done = ucloud_wire::munge::run_bounded(
        &shared.unmunge,
        &["--numeric"],
        &input,
        UNMUNGE_LIMIT,
        64 * 1024,
    )
    .map_err(|e| format!("{}: {e}", shared.unmunge.display()))?;
    if done.stdout.is_empty() {
        // Bad key, bad MAC, garbage: unmunge prints only its error.
        let why = String::from_utf8_lossy(&done.stderr);
        let why: String = why.trim().chars().take(200).collect();
        return Err(format!(
            "munge refused the credential: {}",
            if why.is_empty() {
                "no reason given"
            } else {
                &why
            }
        ));
    }
    let decoded = parse_unmunge(&done.stdout)?;
    let now = unix_now();
    let proven = verify(&decoded, shared.slurm_uid, now)?;
    shared
        .cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(&decoded, proven.remember_until, now)?;
    Ok(proven.event)
}

/// One line, at most [`MAX_LINE`] bytes, within [`READ_LIMIT`] in all.
fn read_line(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = READ_LIMIT
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or("no complete line in time")?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err("the line ended without a newline".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("no complete line in time".into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the event: {e}")),
        };
        match buf[..n].iter().position(|b| *b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&buf[..end]);
                break;
            }
            None => line.extend_from_slice(&buf[..n]),
        }
        if line.len() > MAX_LINE {
            return Err(format!("the line is longer than {MAX_LINE} bytes"));
        }
    }
    if line.len() > MAX_LINE {
        return Err(format!("the line is longer than {MAX_LINE} bytes"));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLURM: u32 = 64030;

    /// unmunge's output as `unmunge --numeric` prints it.
    fn output(status: u32, uid: u32, encode: i64, payload: &str) -> Vec<u8> {
        format!(
            "STATUS:          {status}\nENCODE_HOST:     192.0.2.1\nENCODE_TIME:     {encode}\n\
             DECODE_TIME:     {encode}\nTTL:             60\nCIPHER:          4\nMAC:             5\n\
             ZIP:             0\nUID:             {uid}\nGID:             {uid}\n\
             LENGTH:          {}\n\n{payload}",
            payload.len()
        )
        .into_bytes()
    }

    fn payload(job: &str, time: i64) -> String {
        format!(
            r#"{{"v":2,"event":"start","job":"{job}","name":"J","user":"alice","exit":"","time":{time},"host":"ctl"}}"#
        )
    }

    fn check(out: &[u8], now: i64) -> Result<Proven, String> {
        verify(&parse_unmunge(out)?, SLURM, now)
    }

    #[test]
    fn a_fresh_event_of_slurms_account_is_taken() {
        let now = 1_800_000_000;
        let p = check(&output(0, SLURM, now - 1, &payload("42", now - 1)), now).unwrap();
        assert_eq!(
            p.event,
            Event {
                slurm_id: 42,
                kind: Kind::Start
            }
        );
        assert_eq!(p.host, "ctl");
        assert_eq!(p.remember_until, now - 1 + 60 + REPLAY_MARGIN);
    }

    #[test]
    fn the_named_form_of_unmunge_output_reads_the_same() {
        let now = 1_800_000_000;
        let text = format!(
            "STATUS:          Success (0)\nENCODE_HOST:     ctl (192.0.2.1)\n\
             ENCODE_TIME:     2027-01-15 08:00:00 +0100 ({now})\n\
             DECODE_TIME:     2027-01-15 08:00:00 +0100 ({now})\nTTL:             60\n\
             UID:             slurm ({SLURM})\nGID:             slurm ({SLURM})\n\n{}",
            payload("7", now)
        );
        let d = parse_unmunge(text.as_bytes()).unwrap();
        assert_eq!((d.status, d.uid, d.encode_time), (0, SLURM, now));
        assert_eq!(d.encode_host, "ctl (192.0.2.1)");
        assert!(verify(&d, SLURM, now).is_ok());
    }

    #[test]
    fn wrong_makers_and_munge_refusals_are_refused() {
        let now = 1_800_000_000;
        let good = payload("42", now);
        for (uid, what) in [(0, "root"), (1000, "a user"), (SLURM + 1, "near")] {
            let e = check(&output(0, uid, now, &good), now).unwrap_err();
            assert!(e.contains("not Slurm's account"), "{what}: {e}");
        }
        // Root is refused even where Slurm's account is root.
        assert!(verify(&parse_unmunge(&output(0, 0, now, &good)).unwrap(), 0, now).is_err());
        for (status, text) in [
            (15, "Expired credential"),
            (16, "Rewound credential"),
            (17, "Replayed credential"),
            (14, "Invalid credential"),
            (18, "Unauthorized credential"),
            (99, "Unknown error"),
        ] {
            let e = check(&output(status, SLURM, now, &good), now).unwrap_err();
            assert!(e.contains(text), "{e}");
        }
    }

    #[test]
    fn stale_future_and_mismatched_times_are_refused() {
        let now = 1_800_000_000;
        for (encode, time, why) in [
            (now - 31, now - 31, "stale"),
            (now - 3600, now - 3600, "stale"),
            (now + 6, now + 6, "ahead"),
            (now, now - 6, "ENCODE_TIME"),
            (now - 6, now, "ENCODE_TIME"),
            (0, now, "ENCODE_TIME"),
        ] {
            let e = check(&output(0, SLURM, encode, &payload("1", time)), now).unwrap_err();
            assert!(e.contains(why), "{encode} {time}: {e}");
        }
        // The edges are in.
        assert!(check(&output(0, SLURM, now - 30, &payload("1", now - 30)), now).is_ok());
        assert!(check(&output(0, SLURM, now + 5, &payload("1", now + 5)), now).is_ok());
        assert!(check(&output(0, SLURM, now - 5, &payload("1", now)), now).is_ok());
    }

    #[test]
    fn bad_payloads_are_refused() {
        let now = 1_800_000_000;
        for bad in [
            "".to_string(),
            "not json".into(),
            "[1,2]".into(),
            r#"{"v":1,"event":"start","job":"42"}"#.into(),
            format!(r#"{{"v":"2","event":"start","job":"42","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"boom","job":"42","time":{now}}}"#),
            format!(r#"{{"v":2,"job":"42","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":42,"time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":"0","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":"-4","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":"+4","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":"4 ","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":"99999999999999999999999","time":{now}}}"#),
            format!(r#"{{"v":2,"event":"end","job":"4x","time":{now}}}"#),
            r#"{"v":2,"event":"end","job":"4"}"#.into(),
            format!(r#"{{"v":2,"event":"end","job":"4","time":"{now}"}}"#),
            format!(r#"{{"v":2,"event":"end","job":"4","time":{now}.5}}"#),
            format!(r#"{{"v":2,"event":"end","job":"4","time":{now},"host":7}}"#),
        ] {
            assert!(check(&output(0, SLURM, now, &bad), now).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_metadata_is_refused() {
        let now = 1_800_000_000;
        let good = String::from_utf8(output(0, SLURM, now, &payload("1", now))).unwrap();
        let cases: Vec<String> = vec![
            String::new(),
            "garbage".into(),
            good.replace("\n\n", "\n"),
            good.replace("STATUS:          0\n", ""),
            good.replace("UID:             64030\n", ""),
            good.replace("ENCODE_TIME:     ", "ENCODE_TIME:     x"),
            good.replace("TTL:             60", "TTL:             -60"),
            good.replace("UID:             64030", "UID:             99999999999"),
            good.replace("UID:             64030", "UID:             slurm"),
            good.replace("UID:             64030", "UID:             64030 (0)x"),
            good.replace(
                "STATUS:          0\n",
                "STATUS:          0\nSTATUS:          0\n",
            ),
            good.replace(
                "STATUS:          0\n",
                "STATUS:          0\nUID:             64030\n",
            ),
            good.replace("LENGTH:          ", "LENGTH:          1"),
            good.replace("GID:", "no colon here\nGID:"),
            good.replace("GID:", "gid:"),
            format!("STATUS: 0\n\u{ff}\n\n{}", payload("1", now)),
        ];
        for bad in &cases {
            assert!(parse_unmunge(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let mut raw = good.into_bytes();
        raw.insert(3, 0xff);
        assert!(parse_unmunge(&raw).is_err());
        // A payload holding a second blank line is still one payload.
        let odd = output(0, SLURM, now, "a\n\nb");
        assert_eq!(parse_unmunge(&odd).unwrap().payload, b"a\n\nb");
    }

    #[test]
    fn an_event_is_taken_once_and_the_cache_is_bounded() {
        let now = 1_800_000_000;
        let d = |job: &str| parse_unmunge(&output(0, SLURM, now, &payload(job, now))).unwrap();
        let mut cache = ReplayCache::new(2);
        assert!(cache.admit(&d("1"), now + 120, now).is_ok());
        assert!(cache
            .admit(&d("1"), now + 120, now)
            .unwrap_err()
            .contains("replayed"));
        assert!(cache.admit(&d("2"), now + 120, now).is_ok());
        // Full of live events: a new one is refused, not an old one forgotten.
        assert!(cache
            .admit(&d("3"), now + 120, now)
            .unwrap_err()
            .contains("too many"));
        assert!(cache.admit(&d("1"), now + 120, now + 1).is_err());
        // Once they are past their time they go.
        assert!(cache.admit(&d("3"), now + 300, now + 121).is_ok());
        assert_eq!(cache.seen.len(), 1);
    }

    /// A listener served with a stand-in unmunge that prints `out` whatever it is given.
    fn served(name: &str, out: &[u8]) -> (SocketAddr, std::sync::mpsc::Receiver<Event>) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("monitor-net-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("out"), out).unwrap();
        let fake = dir.join("unmunge");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\ncat >/dev/null\ncat '{}'\n",
                dir.join("out").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Shared::new(SLURM, fake);
        std::thread::spawn(move || serve(listener, shared, tx));
        (addr, rx)
    }

    fn say(addr: SocketAddr, line: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(line);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn the_listener_answers_ok_once_and_refuses_the_replay() {
        let now = unix_now();
        let (addr, rx) = served("ok", &output(0, SLURM, now, &payload("77", now)));
        assert_eq!(say(addr, b"MUNGE:AAAA:\n"), "ok\n");
        assert_eq!(rx.recv().unwrap().slurm_id, 77);
        // Another text, the same proven event: a replay.
        let again = say(addr, b"MUNGE:AAAB:\n");
        assert!(again.starts_with("refused: replayed"), "{again}");
        for junk in [
            &b"hello\n"[..],
            b"MUNGE:AA AA:\n",
            b"MUNGE:AAAA:",
            b"",
            &[b'A'; MAX_LINE + 10],
        ] {
            let a = say(addr, junk);
            assert!(a.starts_with("refused: "), "{a}");
        }
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_slow_peer_is_cut_off_and_does_not_stall_others() {
        let now = unix_now();
        let (addr, rx) = served("slow", &output(0, SLURM, now, &payload("5", now)));
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"MUNGE:").unwrap();
        let t = Instant::now();
        assert_eq!(say(addr, b"MUNGE:AAAA:\n"), "ok\n");
        assert!(t.elapsed() < READ_LIMIT);
        assert_eq!(rx.recv().unwrap().slurm_id, 5);
        let mut answer = String::new();
        slow.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("in time"), "{answer}");
    }

    #[test]
    fn munge_errors_without_metadata_are_refusals() {
        let (addr, _rx) = served("bad", b"");
        let a = say(addr, b"MUNGE:AAAA:\n");
        assert_eq!(
            a,
            "refused: munge refused the credential: no reason given\n"
        );
    }

    /// The whole path with the real munge, where munged runs: a credential made
    /// by this test's own account, which plays Slurm's. Run as root, the listener
    /// must refuse it (root is never Slurm's account here), and the checks after
    /// munge's are shown on munge's real output with the uid taken as Slurm's.
    #[test]
    fn real_munge_when_munged_runs() {
        let munge = std::path::Path::new(ucloud_wire::munge::MUNGE);
        let unmunge = std::path::Path::new(ucloud_wire::munge::UNMUNGE);
        let limit = Duration::from_secs(2);
        match ucloud_wire::munge::run_bounded(munge, &["-n"], b"", limit, 4096) {
            Ok(probe) if probe.code == Some(0) => {}
            _ => {
                eprintln!("munged does not run here: skipped");
                return;
            }
        }
        let me = nix::unistd::getuid().as_raw();
        let now = unix_now();
        let body = payload("31", now);
        let cred =
            ucloud_wire::munge::run_bounded(munge, &["-t", "60"], body.as_bytes(), limit, 8192)
                .unwrap();
        assert_eq!(cred.code, Some(0));
        let mut line = cred.stdout;
        while line.last() == Some(&b'\n') {
            line.pop();
        }
        assert!(ucloud_wire::munge::looks_like_credential(&line));
        line.push(b'\n');

        // What munge itself says, read by our parser.
        let first =
            ucloud_wire::munge::run_bounded(unmunge, &["--numeric"], &line, limit, 65536).unwrap();
        let mut d = parse_unmunge(&first.stdout).unwrap();
        assert_eq!((d.status, d.uid, d.ttl), (0, me, 60));
        assert_eq!(d.payload, body.as_bytes());
        assert!((d.encode_time - now).abs() <= 1);
        // munged's replay cache: a second decode on this host is a refusal.
        let second =
            ucloud_wire::munge::run_bounded(unmunge, &["--numeric"], &line, limit, 65536).unwrap();
        let replayed = parse_unmunge(&second.stdout).unwrap();
        let e = verify(&replayed, me, now).unwrap_err();
        assert!(e.contains("Replayed credential (17)"), "{e}");
        // The checks after munge's, with this account as Slurm's.
        if me == 0 {
            assert!(verify(&d, 0, now)
                .unwrap_err()
                .contains("not Slurm's account"));
            d.uid = SLURM;
        }
        let proven = verify(&d, d.uid, now).unwrap();
        assert_eq!(proven.event.slurm_id, 31);
        let mut cache = ReplayCache::new(8);
        assert!(cache.admit(&d, proven.remember_until, now).is_ok());
        assert!(cache.admit(&d, proven.remember_until, now).is_err());

        // And through the listener, with a fresh credential.
        let fresh =
            ucloud_wire::munge::run_bounded(munge, &["-t", "60"], body.as_bytes(), limit, 8192)
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Shared::new(me, PathBuf::from(ucloud_wire::munge::UNMUNGE));
        std::thread::spawn(move || serve(listener, shared, tx));
        let answer = say(addr, &fresh.stdout);
        if me == 0 {
            assert!(answer.contains("not Slurm's account"), "{answer}");
            assert!(rx.try_recv().is_err());
        } else {
            assert_eq!(answer, "ok\n");
            assert_eq!(rx.recv().unwrap().slurm_id, 31);
            // munged's own replay cache, then ours, refuse it a second time.
            assert!(say(addr, &fresh.stdout).starts_with("refused: "));
        }
    }
}
