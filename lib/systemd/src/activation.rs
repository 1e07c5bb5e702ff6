//! Socket activation: the socket the service manager opened for this process and
//! named in `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (sd_listen_fds(3)).
//! This is the one file of ucloud-im that reads those variables.
//!
//! Every program of ucloud-im takes at most one socket: a listening one
//! (`Accept=no`: ucloud-lb, ucloud-monitor) or one connection (`Accept=yes`:
//! ucloud-gateway, ucloud-registry). The rules follow sd_listen_fds(3) with
//! `unset_environment` set: the variables are removed whatever the verdict, so that
//! no child (a Slurm client, the dispatcher, a plugin) believes the socket is its
//! own; the descriptor becomes close-on-exec; a count that is not a positive number
//! of descriptors is an error. One rule is ours: a `LISTEN_PID` that is not this
//! process's id in decimal means the socket is meant for another process, even when
//! it is not a number at all (sd_listen_fds calls that an error).

use crate::sys;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The first descriptor the service manager passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// The variables of the protocol, removed once read.
const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The address family a program needs its socket in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 or IPv6.
    Inet,
    Unix,
    Any,
}

/// Whether a program needs a listening socket or one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `Accept=no`: the program accepts the connections itself.
    Listening,
    /// `Accept=yes` (or inetd): the service manager accepted, the program serves.
    Connected,
}

/// The stream socket a program takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub family: Family,
    pub role: Role,
}

/// Why a descriptor is not the socket a program wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The descriptor is not open, or could not be made close-on-exec.
    Unusable(nix::Error),
    /// Handed out once already.
    Taken,
    NotSocket,
    NotStream,
    WrongFamily(Family),
    /// A listening socket where a connection was wanted.
    Listening,
    /// A connection where a listening socket was wanted.
    NotListening,
    /// The kernel would not say what the socket is.
    Inspect(nix::Error),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unusable(e) => write!(f, "cannot be used: {e}"),
            Problem::Taken => f.write_str("was taken already"),
            Problem::NotSocket => f.write_str("is not a socket"),
            Problem::NotStream => {
                f.write_str("is not a stream socket (the unit needs ListenStream=)")
            }
            Problem::WrongFamily(Family::Inet) => f.write_str("is not an IPv4 or IPv6 socket"),
            Problem::WrongFamily(_) => f.write_str("is not a unix socket"),
            Problem::Listening => {
                f.write_str("is a listening socket (its socket unit needs Accept=yes)")
            }
            Problem::NotListening => {
                f.write_str("is a socket that does not listen (its socket unit needs Accept=no)")
            }
            Problem::Inspect(e) => write!(f, "cannot be inspected: {e}"),
        }
    }
}

/// Why the service manager's socket cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The variables are malformed or promise more than one socket.
    Environment(String),
    /// The descriptor is not the socket the program wants.
    Descriptor(Problem),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Environment(m) => f.write_str(m),
            Error::Descriptor(p) => write!(f, "fd {FIRST_FD}, passed by the service manager, {p}"),
        }
    }
}

impl std::error::Error for Error {}

/// The socket the service manager passed to this process, checked against `want`
/// and close-on-exec; `None` when the variables are absent or name another
/// process. Call it first thing in `main`, before anything opens a descriptor.
pub fn take_socket(want: Want) -> Result<Option<OwnedFd>, Error> {
    let [pid, fds, names] =
        VARIABLES.map(|v| std::env::var_os(v).map(|s| s.to_string_lossy().into_owned()));
    for v in VARIABLES {
        std::env::remove_var(v);
    }
    let verdict = judge(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    );
    let Some(count) = verdict.map_err(Error::Environment)? else {
        return Ok(None);
    };
    if count != 1 {
        return Err(Error::Environment(format!(
            "LISTEN_FDS={count}: this program takes exactly one socket"
        )));
    }
    let fd = sys::take_passed(FIRST_FD)
        .ok_or(Error::Descriptor(Problem::Taken))?
        .map_err(|e| Error::Descriptor(Problem::Unusable(e)))?;
    check(fd.as_fd(), want).map_err(Error::Descriptor)?;
    Ok(Some(fd))
}

/// The number of descriptors the variables pass to the process `ours`: `None` when
/// they are absent or meant for another process.
fn judge(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    ours: u32,
) -> Result<Option<u32>, String> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if decimal(pid) != Some(ours) {
        return Ok(None);
    }
    // Past i32::MAX - 3 the descriptors would not even have numbers.
    let count = decimal(fds)
        .filter(|&n| n > 0 && n <= (i32::MAX - FIRST_FD) as u32)
        .ok_or_else(|| format!("LISTEN_FDS={fds:?}: not a positive number of descriptors"))?;
    if let Some(names) = names {
        // systemd writes one name per descriptor, joined by ':'; "" is no name.
        let named = if names.is_empty() {
            0
        } else {
            names.split(':').count()
        };
        if named != count as usize {
            return Err(format!(
                "LISTEN_FDNAMES={names:?} names {named} descriptor(s), LISTEN_FDS={count}"
            ));
        }
    }
    Ok(Some(count))
}

/// Plain decimal digits only: no sign, no spaces.
fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether `fd` is the stream socket `want` describes. Programs that also take a
/// socket another way (inetd style, on stdin) check that one here too.
pub fn check(fd: BorrowedFd<'_>, want: Want) -> Result<(), Problem> {
    use nix::errno::Errno;
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockaddrLike};
    use nix::sys::socket::{SockType, SockaddrStorage};
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(_) => return Err(Problem::NotStream),
        Err(Errno::ENOTSOCK) => return Err(Problem::NotSocket),
        Err(e) => return Err(Problem::Inspect(e)),
    }
    if want.family != Family::Any {
        let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(Problem::Inspect)?;
        let fits = match addr.family() {
            Some(AddressFamily::Inet | AddressFamily::Inet6) => want.family == Family::Inet,
            Some(AddressFamily::Unix) => want.family == Family::Unix,
            _ => false,
        };
        if !fits {
            return Err(Problem::WrongFamily(want.family));
        }
    }
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(Problem::Inspect)?;
    match (want.role, listening) {
        (Role::Listening, false) => Err(Problem::NotListening),
        (Role::Connected, true) => Err(Problem::Listening),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    const US: u32 = 4242;

    fn judged(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
    ) -> Result<Option<u32>, String> {
        judge(pid, fds, names, US)
    }

    #[test]
    fn one_socket_for_this_process_is_taken() {
        assert_eq!(judged(Some("4242"), Some("1"), None), Ok(Some(1)));
        assert_eq!(
            judged(Some("4242"), Some("1"), Some("lb.socket")),
            Ok(Some(1))
        );
        assert_eq!(judged(Some("4242"), Some("2"), Some("a:b")), Ok(Some(2)));
    }

    #[test]
    fn absent_variables_pass_nothing() {
        assert_eq!(judged(None, None, None), Ok(None));
        assert_eq!(judged(Some("4242"), None, None), Ok(None));
        assert_eq!(judged(None, Some("1"), None), Ok(None));
    }

    #[test]
    fn sockets_for_another_process_are_not_ours() {
        for pid in [
            "1",
            "4243",
            "",
            "-4242",
            "+4242",
            " 4242",
            "4242 ",
            "x",
            "99999999999999999999",
        ] {
            assert_eq!(
                judged(Some(pid), Some("1"), None),
                Ok(None),
                "LISTEN_PID={pid:?}"
            );
        }
        // Even malformed counts: they are another process's business.
        assert_eq!(judged(Some("1"), Some("-1"), None), Ok(None));
    }

    #[test]
    fn hostile_counts_are_refused() {
        let huge = (i32::MAX - 2).to_string();
        for fds in [
            "-1",
            "0",
            "",
            "one",
            "1x",
            " 1",
            "+1",
            "0x1",
            "4294967296",
            "99999999999999999999",
            &huge,
        ] {
            let e = judged(Some("4242"), Some(fds), None).unwrap_err();
            assert!(e.contains("LISTEN_FDS"), "LISTEN_FDS={fds:?}: {e}");
        }
        // The highest count whose descriptors still have numbers.
        let most = (i32::MAX - 3) as u32;
        assert_eq!(
            judged(Some("4242"), Some(&most.to_string()), None),
            Ok(Some(most))
        );
    }

    #[test]
    fn names_must_match_the_count() {
        for names in ["", "a:b", ":", "a:b:c"] {
            let e = judged(Some("4242"), Some("1"), Some(names)).unwrap_err();
            assert!(e.contains("LISTEN_FDNAMES"), "{names:?}: {e}");
        }
        assert!(judged(Some("4242"), Some("2"), Some("a")).is_err());
        // Empty names are names (systemd writes "" for an unnamed one among others).
        assert_eq!(judged(Some("4242"), Some("2"), Some(":")), Ok(Some(2)));
    }

    // The only test that touches the process's variables (no other test reads them).
    #[test]
    fn the_variables_are_removed_whatever_the_verdict() {
        let any = want(Family::Any, Role::Connected);
        let ours = std::process::id().to_string();
        let set = |pid: &str, fds: &str, names: &str| {
            std::env::set_var("LISTEN_PID", pid);
            std::env::set_var("LISTEN_FDS", fds);
            std::env::set_var("LISTEN_FDNAMES", names);
        };
        let gone = || VARIABLES.iter().all(|v| std::env::var_os(v).is_none());
        set("1", "1", "x");
        assert!(matches!(take_socket(any), Ok(None)));
        assert!(gone());
        set(&ours, "-1", "x");
        assert!(matches!(take_socket(any), Err(Error::Environment(_))));
        assert!(gone());
        set(&ours, "2", "a:b");
        let e = take_socket(any).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        assert!(gone());
        // Removed, so a second look finds nothing.
        assert!(matches!(take_socket(any), Ok(None)));
    }

    fn want(family: Family, role: Role) -> Want {
        Want { family, role }
    }

    #[test]
    fn listening_sockets_are_told_apart_by_family() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            check(tcp.as_fd(), want(Family::Inet, Role::Listening)),
            Ok(())
        );
        assert_eq!(
            check(tcp.as_fd(), want(Family::Any, Role::Listening)),
            Ok(())
        );
        assert_eq!(
            check(tcp.as_fd(), want(Family::Unix, Role::Listening)),
            Err(Problem::WrongFamily(Family::Unix))
        );
        let dir = std::env::temp_dir().join(format!("ucloud-systemd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let unix = UnixListener::bind(&path).unwrap();
        assert_eq!(
            check(unix.as_fd(), want(Family::Unix, Role::Listening)),
            Ok(())
        );
        assert_eq!(
            check(unix.as_fd(), want(Family::Inet, Role::Listening)),
            Err(Problem::WrongFamily(Family::Inet))
        );
        assert_eq!(
            check(unix.as_fd(), want(Family::Unix, Role::Connected)),
            Err(Problem::Listening)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connections_are_not_listeners() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(
            check(a.as_fd(), want(Family::Unix, Role::Connected)),
            Ok(())
        );
        assert_eq!(
            check(a.as_fd(), want(Family::Unix, Role::Listening)),
            Err(Problem::NotListening)
        );
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        assert_eq!(
            check(c.as_fd(), want(Family::Inet, Role::Connected)),
            Ok(())
        );
        assert_eq!(check(c.as_fd(), want(Family::Any, Role::Connected)), Ok(()));
    }

    #[test]
    fn other_descriptors_are_refused() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            check(file.as_fd(), want(Family::Any, Role::Connected)),
            Err(Problem::NotSocket)
        );
        let (d, _e) = UnixDatagram::pair().unwrap();
        assert_eq!(
            check(d.as_fd(), want(Family::Any, Role::Connected)),
            Err(Problem::NotStream)
        );
    }
}
