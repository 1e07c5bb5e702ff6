//! `ucloud-sim web`: a job's web interface, the way UCloud opens one. The core's
//! part (core2/pkg/orchestrator/job.go, `JobsOpenInteractiveSession`): the
//! product's support must say `native.web`, then one
//! `JobsProviderOpenInteractiveSessionRequestItem` ({job, rank, sessionType: "WEB",
//! target}) to the provider as the user, and exactly one `OpenSession` of type
//! `web` back, whose `redirectClientTo` the web client opens in a new tab. Then the
//! browser's part: the link, its cookie, and requests with that cookie to the
//! job's host. The job's host (`app-J-R.<web_domain>`) does not resolve: every
//! connection goes to the address of `--url` (the balancer), with the host's name
//! in SNI and Host, as `curl --connect-to` would. Prints one JSON line per step.
//! `--host H --cookie C` skips the opening and uses a given cookie (`none`: no
//! cookie) on host H (hostile tests).

use crate::error::SimError;
use crate::follow::{print, random};
use base64::Engine;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;
use ucloud_http::websocket::{self, Decoder, Message, Role};

pub struct WebArgs<'a> {
    /// Where and as whom the core calls; `unchecked` skips its support check.
    pub core: crate::session::Core<'a>,
    pub job: &'a str,
    pub rank: u32,
    /// A given host and cookie instead of opening a session.
    pub given: Option<(String, Option<String>)>,
    /// Paths to GET with the cookie, on one kept-alive connection.
    pub paths: Vec<String>,
    /// A WebSocket path to open, and a message to have echoed.
    pub websocket: Option<String>,
}

fn fail(why: impl Into<String>) -> SimError {
    SimError::Call(why.into())
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn web(args: &WebArgs<'_>, out: &mut impl Write) -> Result<(), SimError> {
    let (host, cookie) = match &args.given {
        Some(given) => given.clone(),
        None => {
            let link = match open(args)? {
                Ok(link) => link,
                Err(refusal) => return print(out, &refusal),
            };
            let (host, target) = split_link(&link)?;
            let mut tls = connect(args, &host)?;
            let (status, headers, _) = get(&mut tls, &host, &target, None, true)?;
            let cookie = headers
                .iter()
                .filter(|(n, _)| n == "set-cookie")
                .find_map(|(_, v)| v.strip_prefix("ucloud-im-app="))
                .map(|v| v.split(';').next().unwrap_or_default().to_string());
            let attributes: Vec<String> = headers
                .iter()
                .filter(|(n, _)| n == "set-cookie")
                .map(|(_, v)| v.split_once(';').map_or("", |(_, a)| a).trim().to_string())
                .collect();
            let location = headers
                .iter()
                .find(|(n, _)| n == "location")
                .map(|(_, v)| v.clone());
            print(
                out,
                &json!({"link": status, "location": location, "cookie": cookie,
                "cookieAttributes": attributes, "host": host, "target": target}),
            )?;
            (host, cookie)
        }
    };
    if !args.paths.is_empty() {
        let mut tls = connect(args, &host)?;
        for path in &args.paths {
            let (status, _, body) = get(&mut tls, &host, path, cookie.as_deref(), false)?;
            print(
                out,
                &json!({"path": path, "status": status,
                "body": String::from_utf8_lossy(&body)}),
            )?;
        }
    }
    if let Some(path) = &args.websocket {
        let echoed = websocket_echo(args, &host, path, cookie.as_deref())?;
        print(out, &echoed)?;
    }
    Ok(())
}

/// The core's part: the link, or what the core would answer instead.
fn open(args: &WebArgs<'_>) -> Result<Result<String, Value>, SimError> {
    let job: Value = serde_json::from_str(args.job)
        .map_err(|e| SimError::Usage(format!("JOB_JSON is not JSON: {e}")))?;
    let session = match crate::session::open(&args.core, &job, args.rank, "WEB", "web")? {
        Ok(session) => session,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let link = session["redirectClientTo"].as_str().unwrap_or_default();
    if session["type"] != "web" || link.is_empty() || !session["jobId"].is_string() {
        return Ok(Err(json!({"refused": 502,
            "why": format!("the provider's OpenSession is not a web session: {session}")})));
    }
    print(&mut std::io::stdout().lock(), &json!({"session": session}))?;
    Ok(Ok(link.to_string()))
}

/// `https://HOST[:PORT]/TARGET` → (HOST, /TARGET).
fn split_link(link: &str) -> Result<(String, String), SimError> {
    let rest = link
        .strip_prefix("https://")
        .ok_or_else(|| fail(format!("the link {link} is not https")))?;
    let (authority, target) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.split(':').next().unwrap_or_default().to_string();
    Ok((
        host,
        if target.is_empty() {
            "/".into()
        } else {
            target.into()
        },
    ))
}

/// A TLS connection to `--url`'s address, with `host` as the server's name.
fn connect(args: &WebArgs<'_>, host: &str) -> Result<Tls, SimError> {
    let address = args
        .core
        .url
        .strip_prefix("https://")
        .ok_or_else(|| SimError::Usage("web needs an https --url (the balancer)".into()))?
        .trim_end_matches('/');
    let ca = args
        .core
        .ca
        .ok_or_else(|| SimError::Usage("web needs --ca".into()))?;
    let config: Arc<rustls::ClientConfig> =
        ucloud_http::tls::client_config(ca).map_err(|e| fail(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| fail(format!("{host}: {e}")))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| fail(e.to_string()))?;
    let tcp = TcpStream::connect(address).map_err(|e| fail(format!("{address}: {e}")))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| fail(e.to_string()))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

type Response = crate::follow::Head;

/// One GET on a kept-alive connection; the status, headers and body.
fn get(
    tls: &mut Tls,
    host: &str,
    target: &str,
    cookie: Option<&str>,
    close: bool,
) -> Result<Response, SimError> {
    let mut request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ucloud-sim\r\n");
    if let Some(c) = cookie {
        request.push_str(&format!(
            "Cookie: theme=dark; ucloud-im-app={c}; lang=da\r\n"
        ));
    }
    if close {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| fail(format!("sending to {host}: {e}")))?;
    let (status, headers, mut body) = crate::follow::read_head(tls)?;
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    match length {
        Some(n) => {
            while body.len() < n {
                let mut buf = vec![0u8; 64 << 10];
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => body.extend_from_slice(&buf[..k]),
                }
            }
            body.truncate(n);
        }
        None => {
            let _ = tls.read_to_end(&mut body);
        }
    }
    Ok((status, headers, body))
}

/// Opens a WebSocket on `path` with the cookie and has "hello" echoed.
fn websocket_echo(
    args: &WebArgs<'_>,
    host: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<Value, SimError> {
    let mut tls = connect(args, host)?;
    let key = base64::engine::general_purpose::STANDARD.encode(random::<16>()?);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(c) = cookie {
        request.push_str(&format!("Cookie: ucloud-im-app={c}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let (status, _, rest) = crate::follow::read_head(&mut tls)?;
    if status != 101 {
        return Ok(json!({"websocket": status}));
    }
    tls.write_all(&websocket::text("hello", Some(random()?)))
        .map_err(|e| fail(e.to_string()))?;
    let mut decoder = Decoder::new(Role::Client, 1 << 20);
    decoder.push(&rest);
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if let Some(m) = decoder.next().map_err(|e| fail(e.to_string()))? {
            let _ = tls.write_all(&websocket::close(1000, "", Some(random()?)));
            return Ok(match m {
                Message::Text(t) => json!({"websocket": 101, "echo": t}),
                other => json!({"websocket": 101, "unexpected": format!("{other:?}")}),
            });
        }
        match tls.read(&mut buf) {
            Ok(0) => return Ok(json!({"websocket": 101, "closed": true})),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) => return Err(fail(format!("reading: {e}"))),
        }
    }
}
