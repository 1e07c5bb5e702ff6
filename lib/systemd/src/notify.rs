//! Telling the service manager the service's state (sd_notify(3)): one datagram of
//! `NAME=value` lines to the unix socket `NOTIFY_SOCKET` names, a path or, after
//! an '@', an abstract name. Written here rather than linked: the protocol is one
//! `sendto`.

use std::ffi::OsStr;
use std::io::{Error, ErrorKind};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// One line of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// Start-up (or a reload) is done.
    Ready,
    /// A reload has begun; `Ready` ends it.
    Reloading,
    /// Shutting down.
    Stopping,
    /// Free text for `systemctl status`; one line.
    Status(&'a str),
}

/// Sends `states` to the service manager: `Ok(false)` when there is none to tell
/// (`NOTIFY_SOCKET` unset: not started by systemd, or not `Type=notify`). The
/// variable stays, so that a later call can tell again.
pub fn notify(states: &[State<'_>]) -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send(&socket, states)?;
    Ok(true)
}

fn send(socket: &OsStr, states: &[State<'_>]) -> std::io::Result<()> {
    let message = message(states)?;
    let address = address(socket)?;
    let sent = UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    if sent != message.len() {
        return Err(Error::new(
            ErrorKind::WriteZero,
            "NOTIFY_SOCKET: message cut short",
        ));
    }
    Ok(())
}

fn message(states: &[State<'_>]) -> std::io::Result<String> {
    let mut out = String::new();
    for state in states {
        match state {
            State::Ready => out.push_str("READY=1\n"),
            State::Reloading => out.push_str("RELOADING=1\n"),
            State::Stopping => out.push_str("STOPPING=1\n"),
            // A newline would start a line of the text's choosing.
            State::Status(text) if text.contains(['\n', '\0']) => {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "a status is one line of text",
                ))
            }
            State::Status(text) => {
                out.push_str("STATUS=");
                out.push_str(text);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// `@name` is an abstract socket, `/path` a socket file; systemd sets nothing else
/// for a unix socket (vsock addresses are for virtual machines, not services here).
fn address(socket: &OsStr) -> std::io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    let invalid = |why: &str| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={socket:?}: {why}"),
        )
    };
    match bytes.first() {
        Some(b'@') if bytes.len() > 1 => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(socket),
        _ => Err(invalid(
            "neither an absolute path nor @ and an abstract name",
        )),
    }
    .map_err(|e| invalid(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn states_reach_a_socket_file() {
        let dir = std::env::temp_dir().join(format!("ucloud-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        send(
            path.as_os_str(),
            &[State::Ready, State::Status("serving 2 backends")],
        )
        .unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=serving 2 backends\n");
        send(path.as_os_str(), &[State::Reloading]).unwrap();
        assert_eq!(receive(&listener), "RELOADING=1\n");
        drop(listener);
        // Nobody listens any more: the caller hears of it.
        assert!(send(path.as_os_str(), &[State::Stopping]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn states_reach_an_abstract_socket() {
        let name = format!("ucloud-notify-test-{}", std::process::id());
        let bound = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&bound).unwrap();
        send(OsStr::new(&format!("@{name}")), &[State::Stopping]).unwrap();
        assert_eq!(receive(&listener), "STOPPING=1\n");
    }

    #[test]
    fn hostile_addresses_are_refused() {
        let long = format!("/{}", "x".repeat(200));
        for bad in ["", "@", "relative/notify", "vsock:2:1234", "x", &long] {
            let e = send(OsStr::new(bad), &[State::Ready]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_status_cannot_add_lines() {
        for bad in ["ok\nREADY=1", "ok\0", "\n"] {
            assert!(message(&[State::Status(bad)]).is_err(), "{bad:?}");
        }
        assert_eq!(message(&[]).unwrap(), "");
    }
}
