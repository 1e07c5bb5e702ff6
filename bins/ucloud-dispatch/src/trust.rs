//! The dispatcher's side of the trusted open ([`ucloud_wire::trust`]): its errors,
//! and small files read whole.

use crate::error::Error;
use std::fs::File;
use std::os::fd::OwnedFd;
use ucloud_wire::install::MAX_SMALL_FILE;
use ucloud_wire::read_capped;
pub use ucloud_wire::trust::{forget_judged, open_at, Untrusted, Use};

/// A missing file is a configuration error; anything else untrusted an unsafe
/// installation.
fn error(u: &Untrusted, why: String) -> Error {
    match u {
        Untrusted::Missing(_) => Error::Config(why),
        _ => Error::UnsafeInstallation(why),
    }
}

impl From<Untrusted> for Error {
    fn from(u: Untrusted) -> Error {
        error(&u, u.to_string())
    }
}

/// Opens an absolute path for `how`, the directories on the way judged once per
/// run; the message names `path`.
pub fn open(path: &str, how: Use) -> Result<OwnedFd, Error> {
    ucloud_wire::trust::open_kept(path, how).map_err(|u| error(&u, u.about(path)))
}

/// A small file read whole: larger than [`MAX_SMALL_FILE`] is not configuration.
pub fn read_small(fd: OwnedFd, path: &str) -> Result<String, Error> {
    let bytes = read_capped(File::from(fd), MAX_SMALL_FILE)
        .map_err(|e| Error::Config(format!("{path} {e}")))?;
    String::from_utf8(bytes).map_err(|_| Error::Config(format!("{path} is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_directories_pass_and_tmp_does_not() {
        assert!(open("/usr/bin", Use::Dir).is_ok());
        assert!(open("/etc/passwd", Use::Read).is_ok());
        let tmp = open("/tmp", Use::Dir).expect_err("/tmp is world-writable");
        assert!(tmp.to_string().contains("chmod go-w"), "{tmp}");
        assert!(matches!(
            open("/etc/passwd", Use::Dir),
            Err(Error::UnsafeInstallation(_))
        ));
        assert!(open("/etc/../etc/passwd", Use::Read).is_err());
        let missing = open("/no-such-dir/x", Use::Read).unwrap_err();
        assert!(
            matches!(&missing, Error::Config(m) if m.contains("/no-such-dir does not exist")),
            "{missing}"
        );
        assert!(open("etc/passwd", Use::Read).is_err());
        // /etc/passwd is 0644: not a secret.
        let e = open("/etc/passwd", Use::Secret).unwrap_err();
        assert!(e.to_string().contains("mode 0600"), "{e}");
    }

    #[test]
    fn symlinks_are_refused() {
        // /proc/self is a symlink on every Linux.
        let e = open("/proc/self/status", Use::Read).unwrap_err();
        assert!(e.to_string().contains("/proc/self is a symlink"), "{e}");
    }
}
