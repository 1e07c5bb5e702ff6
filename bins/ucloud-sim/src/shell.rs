//! `ucloud-sim shell`: a terminal in a job, the way UCloud does it. First the
//! core's part (core2/pkg/orchestrator/job.go, `JobsOpenInteractiveSession`): it
//! refuses a product whose support does not say `native.terminal`, then sends the
//! provider one `JobsProviderOpenInteractiveSessionRequestItem` ({job, rank,
//! sessionType: "SHELL", target}) as the user and expects exactly one `OpenSession`
//! back. Then the browser's part (frontend-web Jobs/Shell.tsx): a WebSocket to
//! `{domain}/ucloud/{P}/websocket?session=…&usernameHint=…` WITHOUT any token,
//! `initialize {sessionIdentifier, cols, rows}`, then one `input` per stdin line
//! (with the Enter key's "\r"), or the line itself as the payload when it is a
//! JSON object (`{"type":"resize",...}`). Every message received is printed as a
//! JSON line, as follow prints them; the end is `{"close":CODE,"reason":…}`.
//! `--session ID` skips the core's part and reuses an identifier (hostile tests).

use crate::error::SimError;
use crate::follow::{print, random};
use base64::Engine;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use ucloud_http::client::{Endpoint, Stream};
use ucloud_http::websocket::{self, Decoder, Message, Role};

pub struct ShellArgs<'a> {
    /// Where and as whom the core calls; `unchecked` skips its support check.
    pub core: crate::session::Core<'a>,
    pub job: &'a str,
    pub rank: u32,
    pub cols: u16,
    pub rows: u16,
    /// Connect with this identifier instead of asking for one.
    pub session: Option<String>,
    /// After stdin ends, wait this long for the shell's last output before closing.
    pub linger: Duration,
    /// Instead of typing stdin: this many keystroke round trips, timed.
    pub bench: Option<usize>,
    /// A terminal in this folder (a UCloud path) instead of in the job.
    pub folder: Option<String>,
    /// The simulator's state (the drives), for a folder.
    pub store: Option<&'a crate::store::Store>,
}

fn fail(why: impl Into<String>) -> SimError {
    SimError::Call(why.into())
}

pub fn shell(args: &ShellArgs<'_>, out: &mut impl Write) -> Result<(), SimError> {
    let (provider, opened) = match &args.folder {
        Some(folder) => {
            let store = args
                .store
                .ok_or_else(|| SimError::Usage("--folder needs --state (the drives)".into()))?;
            match crate::session::open_folder(&args.core, store, folder)? {
                Ok((provider, session)) => (provider, checked(args, session)),
                Err(refusal) => return print(out, &refusal),
            }
        }
        None => {
            let job: Value = serde_json::from_str(args.job)
                .map_err(|e| SimError::Usage(format!("JOB_JSON is not JSON: {e}")))?;
            let provider = crate::session::job_provider(&job)?;
            let opened = match args.session {
                Some(_) => Ok(Ok((String::new(), String::new()))),
                None => open(args, &job),
            };
            (provider, opened)
        }
    };
    let (identifier, domain) = match (&args.session, opened?) {
        (Some(id), _) => (id.clone(), String::new()),
        (None, Ok(opened)) => opened,
        (None, Err(refusal)) => return print(out, &refusal),
    };
    let base = if domain.is_empty() {
        args.core.url
    } else {
        domain.as_str()
    };
    connect(args, base, &provider, &identifier, out)
}

/// The core's part: the session identifier and domain, or what the core would
/// answer instead.
fn open(args: &ShellArgs<'_>, job: &Value) -> Result<Result<(String, String), Value>, SimError> {
    match crate::session::open(&args.core, job, args.rank, "SHELL", "terminal")? {
        Ok(session) => checked(args, session),
        Err(refusal) => Ok(Err(refusal)),
    }
}

/// An `OpenSession` as Go decodes it, and of type shell for the rank asked for:
/// its identifier and domain (printed as `{"session":…}`), or the core's 502.
fn checked(
    args: &ShellArgs<'_>,
    session: Value,
) -> Result<Result<(String, String), Value>, SimError> {
    // Go's json.Unmarshal into OpenSession: each field of its type, or an error.
    let text = |k: &str| match &session[k] {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    };
    let shaped = session["type"] == "shell"
        && session["rank"]
            .as_i64()
            .is_some_and(|r| r == i64::from(args.rank))
        && ["jobId", "domainOverride", "sessionIdentifier"]
            .iter()
            .all(|k| text(k).is_some());
    let identifier = text("sessionIdentifier").unwrap_or_default();
    if !shaped || identifier.is_empty() {
        return Ok(Err(json!({"refused": 502,
            "why": format!("the provider's OpenSession is not a shell session: {session}")})));
    }
    print(&mut std::io::stdout().lock(), &json!({"session": session}))?;
    Ok(Ok((identifier, text("domainOverride").unwrap_or_default())))
}

/// The browser's part.
fn connect(
    args: &ShellArgs<'_>,
    base: &str,
    provider: &str,
    identifier: &str,
    out: &mut impl Write,
) -> Result<(), SimError> {
    let endpoint = Endpoint::new(base, args.core.ca, Duration::from_secs(30))
        .map_err(|e| fail(e.to_string()))?;
    let mut stream = endpoint.connect().map_err(|e| fail(e.to_string()))?;
    // btoa(): standard base64, as the web client puts it in the URL unescaped.
    let hint = base64::engine::general_purpose::STANDARD.encode(args.core.user);
    let key = base64::engine::general_purpose::STANDARD.encode(random::<16>()?);
    let request = format!(
        "GET {}/ucloud/{provider}/websocket?session={identifier}&usernameHint={hint} HTTP/1.1\r\n\
         Host: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\nOrigin: https://cloud.sdu.dk\r\n\r\n",
        endpoint.url.base,
        endpoint.url.authority()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("sending the upgrade: {e}")))?;
    let (status, rest) = read_head(&mut stream)?;
    if status != 101 {
        let body = String::from_utf8_lossy(&rest).into_owned();
        let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
        return print(out, &json!({"http": status, "body": body}));
    }
    let call = format!("jobs.compute.{provider}.shell.open");
    let init = json!({"call": call, "streamId": "0", "payload": {"type": "initialize",
        "sessionIdentifier": identifier, "cols": args.cols, "rows": args.rows}});
    send(&mut stream, &init)?;
    set_tick(&stream)?;
    if let Some(rounds) = args.bench {
        let times = keystrokes(&mut stream, &call, &rest, rounds)?;
        return print(out, &json!({"keystroke_us": times}));
    }
    let lines = stdin_lines();
    let mut decoder = Decoder::new(Role::Client, 16 << 20);
    decoder.push(&rest);
    let mut next_id = 1u64;
    let mut input_done: Option<Instant> = None;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        while let Some(m) = decoder.next().map_err(|e| fail(e.to_string()))? {
            match m {
                Message::Text(t) => {
                    print(out, &serde_json::from_str(&t).unwrap_or(Value::String(t)))?
                }
                Message::Ping(p) => {
                    let pong = websocket::encode(0xA, &p, Some(random()?));
                    stream.write_all(&pong).map_err(|e| fail(e.to_string()))?;
                }
                Message::Close(code, reason) => {
                    let _ = stream.write_all(&websocket::close(
                        code.unwrap_or(1000),
                        "",
                        Some(random()?),
                    ));
                    return print(out, &json!({"close": code, "reason": reason}));
                }
                Message::Binary(_) | Message::Pong(_) => {}
            }
        }
        loop {
            match lines.try_recv() {
                Ok(line) => {
                    let payload = match serde_json::from_str::<Value>(&line) {
                        Ok(v @ Value::Object(_)) => v,
                        _ => json!({"type": "input", "data": format!("{line}\r")}),
                    };
                    let message = json!({"call": call, "streamId": next_id.to_string(),
                        "payload": payload});
                    next_id += 1;
                    send(&mut stream, &message)?;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    let since = *input_done.get_or_insert_with(Instant::now);
                    if since.elapsed() >= args.linger {
                        // The browser closes the tab: the close frame ends the session.
                        let close = websocket::close(1000, "", Some(random()?));
                        stream.write_all(&close).map_err(|e| fail(e.to_string()))?;
                        input_done = Some(Instant::now() + Duration::from_secs(3600));
                    }
                    break;
                }
            }
        }
        match read_tick(&mut stream, &mut buf)? {
            Some(0) => return print(out, &json!({"close": null, "reason": "connection closed"})),
            Some(n) => decoder.push(&buf[..n]),
            None => {}
        }
    }
}

/// `--bench`: the shell becomes `cat` on its terminal, then one key at a time is
/// sent and timed until the terminal's echo of it comes back (microseconds).
fn keystrokes(
    stream: &mut Stream,
    call: &str,
    rest: &[u8],
    rounds: usize,
) -> Result<Vec<u64>, SimError> {
    let mut decoder = Decoder::new(Role::Client, 16 << 20);
    decoder.push(rest);
    let mut buf = vec![0u8; 16 << 10];
    let mut screen = String::new();
    // Waits for output that holds `marker`, collecting it; answers pings.
    let mut wait_for = |stream: &mut Stream, marker: &str, screen: &mut String| {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            while let Some(m) = decoder.next().map_err(|e| fail(e.to_string()))? {
                match m {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or_default();
                        screen.push_str(v["payload"]["data"].as_str().unwrap_or_default());
                    }
                    Message::Ping(p) => {
                        let pong = websocket::encode(0xA, &p, Some(random()?));
                        stream.write_all(&pong).map_err(|e| fail(e.to_string()))?;
                    }
                    Message::Close(code, why) => {
                        return Err(fail(format!("closed ({code:?}) while waiting: {why}")))
                    }
                    _ => {}
                }
            }
            if screen.contains(marker) {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(fail(format!(
                    "no {marker:?} within 30 s; the screen: {screen:?}"
                )));
            }
            match read_tick(stream, &mut buf)? {
                Some(0) => return Err(fail("the connection closed")),
                Some(n) => decoder.push(&buf[..n]),
                None => {}
            }
        }
    };
    let mut id = 1u64;
    let mut key = |stream: &mut Stream, data: &str| {
        id += 1;
        let m = json!({"call": call, "streamId": id.to_string(),
            "payload": {"type": "input", "data": data}});
        send(stream, &m)
    };
    // Typed ahead of the shell, keys echo twice; so cat first, then a line.
    key(stream, "exec cat\r")?;
    wait_for(stream, "exec cat", &mut screen)?;
    std::thread::sleep(Duration::from_millis(500));
    key(stream, "ready\r")?;
    wait_for(stream, "ready\r\nready", &mut screen)?;
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // A different key each time, so that an echo is never mistaken for the last.
        let k = char::from(b'a' + (i % 26) as u8).to_string();
        screen.clear();
        let started = Instant::now();
        key(stream, &k)?;
        wait_for(stream, &k, &mut screen)?;
        times.push(started.elapsed().as_micros() as u64);
    }
    Ok(times)
}

/// One read that may come back empty-handed after the read timeout (`None`).
fn read_tick(stream: &mut Stream, buf: &mut [u8]) -> Result<Option<usize>, SimError> {
    match stream.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(fail(format!("reading: {e}"))),
    }
}

fn send(stream: &mut Stream, message: &Value) -> Result<(), SimError> {
    let frame = websocket::text(&message.to_string(), Some(random()?));
    stream
        .write_all(&frame)
        .and_then(|()| stream.flush())
        .map_err(|e| fail(format!("sending: {e}")))
}

/// Reads come back every 20 ms, so that stdin's lines go out while the shell is quiet.
fn set_tick(stream: &Stream) -> Result<(), SimError> {
    let tick = Some(Duration::from_millis(20));
    let set = match stream {
        Stream::Plain(s) => s.set_read_timeout(tick),
        Stream::Tls(s) => s.sock.set_read_timeout(tick),
    };
    set.map_err(|e| fail(e.to_string()))
}

fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The status and whatever followed the head.
fn read_head(stream: &mut impl Read) -> Result<(u16, Vec<u8>), SimError> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(fail("the server closed the connection before answering")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(fail(format!("reading the response: {e}"))),
        }
        if got.len() > 64 << 10 {
            return Err(fail("the response head is larger than 64 KiB"));
        }
    };
    let status = String::from_utf8_lossy(&got[..end])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail("the response has no status line"))?;
    let mut rest = got[end + 4..].to_vec();
    // A refusal's body: read what comes within the read timeout.
    if status != 101 {
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if rest.ends_with(b"}") || rest.ends_with(b"}\n") {
                break;
            }
        }
    }
    Ok((status, rest))
}
