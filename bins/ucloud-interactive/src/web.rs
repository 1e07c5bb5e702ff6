//! A job's web interface. UCloud's link (made by jobs.interactiveSession) brings
//! the browser to `https://app-<job>-<rank>.<web_domain>/ucloud/<P>/app/authorize`
//! with a single-use token; `authorize` answers with the cookie the dispatcher
//! minted from it (a token for jobs.web, bound to the same job, rank and port).
//! Every later connection to that host shows the cookie, and `proxy` connects to
//! the application: after checking that the host is the cookie's, that the job is
//! the caller's and running, and that a process of the caller's listens on the
//! port, it relays the connection's bytes (the gateway has already taken the
//! cookie out of each request) until either side closes.

use crate::error::Error;
use crate::{listener, slurm};
use nix::unistd::User;
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::Duration;
use ucloud_wire::transfer::{self, Subject};

/// The cookie's name on every job's web host (the gateway strips it).
use ucloud_wire::transfer::APP_COOKIE as COOKIE;

/// The job, rank and port the dispatcher bound `token` (for `call`) to, after
/// checking the host the gateway read (`request.app`) is that job and rank.
fn bound_app(
    request: &[u8],
    token: Option<&str>,
    call: &str,
    now: u64,
) -> Result<(String, u32, u16), Error> {
    let Some(Subject::Web { id, rank, port }) = crate::session::subject(token, call, now)? else {
        return Err(Error::BadRequest("the token names no web interface".into()));
    };
    let v: Value = serde_json::from_slice(request)
        .map_err(|e| Error::BadRequest(format!("the request is not JSON: {e}")))?;
    let host = (v["app"]["job"].as_str(), v["app"]["rank"].as_u64());
    if host != (Some(id.as_str()), Some(u64::from(rank))) {
        return Err(Error::WrongApp(format!(
            "this link or cookie is for job {id}'s rank {rank}, not for this host: open \
             the application from UCloud"
        )));
    }
    Ok((id, rank, port))
}

/// The link's answer: the cookie, host-only (no Domain), and a redirect to the
/// application's root.
pub fn authorize(request: &[u8], token: Option<&str>, now: u64) -> Result<(), Error> {
    let (_, _, _) = bound_app(request, token, "jobs.web", now)?;
    let cookie = token.expect("checked by bound_app");
    let head = serde_json::json!({"status": 302, "headers": [
        ["Location", "/"],
        ["Set-Cookie", format!("{COOKIE}={cookie}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            transfer::APP_LIFETIME_SECS)],
        ["Cache-Control", "no-store"],
        ["Content-Type", "text/plain; charset=utf-8"],
    ]});
    let body = b"Opening the application...\n";
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "{}\n{head}\n{{\"data\":{}}}\n",
        ucloud_wire::answer::MAGIC,
        body.len()
    )
    .and_then(|()| out.write_all(body))
    .and_then(|()| out.write_all(b"{\"end\":true}\n"))
    .and_then(|()| out.flush())
    .map_err(|e| Error::Start(format!("cannot answer: {e}")))
}

/// One client connection to the application: `ready` once connected, then its
/// bytes both ways.
pub fn proxy(request: &[u8], token: Option<&str>, now: u64, me: &User) -> Result<(), Error> {
    let (id, rank, port) = bound_app(request, token, "jobs.web", now)?;
    let place = slurm::locate(&id, rank, &me.name)?;
    let address = listener::check(&place, port)?;
    let target = (address.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Unreachable(format!("cannot resolve {address}")))?;
    let app = TcpStream::connect_timeout(&target, Duration::from_secs(10)).map_err(|e| {
        Error::Unreachable(format!(
            "cannot connect to port {port} at {}: {e}",
            place.node
        ))
    })?;
    let _ = app.set_nodelay(true);
    // Plain files on duplicates of fds 0 and 1 (the gateway's pipes), copied with
    // read and write: not std::io::copy, whose splice(2) from a socket into a pipe
    // keeps the pipe locked while it waits for the socket, so that the gateway
    // could read nothing (not even `ready`) until the application spoke.
    let dup = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|e| Error::Start(format!("dup: {e}")))
    };
    let stdin = dup(std::io::stdin().as_fd())?;
    let mut stdout = dup(std::io::stdout().as_fd())?;
    stdout
        .write_all(b"ready\n")
        .map_err(|e| Error::Start(format!("cannot answer: {e}")))?;
    let mut to_app = app.try_clone().map_err(|e| Error::Start(e.to_string()))?;
    let requests = std::thread::spawn(move || {
        let mut stdin = stdin;
        let _ = pump(&mut stdin, &mut to_app);
        // The client has sent all it will: the application sees its end.
        let _ = to_app.shutdown(Shutdown::Write);
    });
    let mut from_app = app;
    let _ = pump(&mut from_app, &mut stdout);
    drop(requests);
    Ok(())
}

/// Copies until EOF or an error, each read written whole at once.
fn pump(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(call: &str, subject: Option<&str>) -> String {
        crate::session::test_token(call, subject)
    }

    #[test]
    fn a_cookie_serves_its_own_job_and_rank_only() {
        let now = 1_800_000_010;
        let host = br#"{"app":{"job":"77","rank":1}}"#;
        let good = token("jobs.web", Some("web/77/1/8888"));
        assert_eq!(
            bound_app(host, Some(&good), "jobs.web", now).unwrap(),
            ("77".into(), 1, 8888)
        );
        let cases: [(&[u8], Option<String>, &str); 7] = [
            (
                br#"{"app":{"job":"78","rank":1}}"#,
                Some(good.clone()),
                "WRONG_APP",
            ),
            (
                br#"{"app":{"job":"77","rank":0}}"#,
                Some(good.clone()),
                "WRONG_APP",
            ),
            (
                br#"{"app":{"job":77,"rank":1}}"#,
                Some(good.clone()),
                "WRONG_APP",
            ),
            (
                host,
                Some(token("jobs.shell", Some("job/77/1"))),
                "BAD_REQUEST",
            ),
            (
                host,
                Some(token("jobs.web", Some("job/77/1"))),
                "BAD_REQUEST",
            ),
            (host, None, "BAD_REQUEST"),
            (b"not json", Some(good.clone()), "BAD_REQUEST"),
        ];
        for (request, tok, code) in cases {
            let e = bound_app(request, tok.as_deref(), "jobs.web", now).unwrap_err();
            assert_eq!(e.failure().error_code, code, "{e}");
        }
        // Expired: a working day, then no more.
        let later = now + transfer::APP_LIFETIME_SECS;
        assert!(bound_app(host, Some(&good), "jobs.web", later).is_err());
    }
}
