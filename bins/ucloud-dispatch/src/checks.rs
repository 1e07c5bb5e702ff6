//! Self-checks: the dispatcher runs as root with the capabilities it needs, and every
//! file it trusts is root-owned and writable by root alone, all the way up from `/`
//! (sudo-rs `secure_open`, OpenSSH's chroot checks). Files are opened component by
//! component without following symlinks and checked on the open descriptor, so what
//! is checked is what is read.

use crate::error::Error;
use caps::{CapSet, Capability};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, FileStat, Mode};
use nix::unistd::geteuid;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::paths;
use ucloud_wire::token::UcloudKey;

use ucloud_wire::install::{self, FileKind, MAX_SMALL_FILE};

pub fn privileges() -> Result<(), Error> {
    if !geteuid().is_root() {
        let no_new_privs = nix::sys::prctl::get_no_new_privs().unwrap_or(false);
        return Err(Error::NotRoot {
            no_new_privs,
            euid: geteuid().as_raw(),
        });
    }
    for (cap, name) in [
        (Capability::CAP_SETUID, "CAP_SETUID"),
        (Capability::CAP_SETGID, "CAP_SETGID"),
        (Capability::CAP_SETPCAP, "CAP_SETPCAP"),
    ] {
        if !caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
            return Err(Error::MissingCapability(name));
        }
    }
    Ok(())
}

/// What the installation gives the dispatcher, every piece checked.
pub struct Installation {
    pub site: SiteConfig,
    pub key_file: File,
    pub mappings: OwnedFd,
    pub plugins: OwnedFd,
}

pub fn site_config() -> Result<SiteConfig, Error> {
    let text = read_small(
        open_secure(&paths::site_config(), Kind::File)?,
        &paths::site_config(),
    )?;
    Ok(SiteConfig::parse(&text)?)
}

/// The rest of the installation, once the caller is known to be the gateway.
pub fn installation(site: SiteConfig) -> Result<Installation, Error> {
    Ok(Installation {
        site,
        key_file: File::from(open_secure(&paths::ucloud_public_key(), Kind::File)?),
        mappings: open_secure(&paths::mappings_dir(), Kind::Dir)?,
        plugins: open_secure(&paths::plugin_dir(), Kind::Dir)?,
    })
}

pub fn ucloud_key(file: File) -> Result<UcloudKey, Error> {
    let text = read_small(OwnedFd::from(file), &paths::ucloud_public_key())?;
    UcloudKey::parse(text.as_bytes())
        .map_err(|e| Error::Config(format!("{}: {e}", paths::ucloud_public_key())))
}

pub fn read_small(fd: OwnedFd, path: &str) -> Result<String, Error> {
    let mut text = String::new();
    File::from(fd)
        .take(MAX_SMALL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::Config(format!("cannot read {path}: {e}")))?;
    if text.len() as u64 > MAX_SMALL_FILE {
        return Err(Error::Config(format!(
            "{path} is larger than {MAX_SMALL_FILE} bytes"
        )));
    }
    Ok(text)
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Opens an absolute path, refusing symlinks anywhere in it and any component that is
/// not root-owned or is writable by group or others. Files come back readable,
/// directories as `O_PATH` handles for `openat`.
pub fn open_secure(path: &str, kind: Kind) -> Result<OwnedFd, Error> {
    // Name the file asked for, unless the message already starts with it.
    let unsafe_path = |why: String| {
        Error::UnsafeInstallation(if why.starts_with(path) {
            why
        } else {
            format!("{path}: {why}")
        })
    };
    let parts = install::components(path).map_err(unsafe_path)?;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut current = nix::fcntl::open("/", dir_flags, Mode::empty())
        .map_err(|e| unsafe_path(format!("cannot open /: {e}")))?;
    check_owner(
        "/",
        &fstat(&current).map_err(|e| unsafe_path(e.to_string()))?,
    )
    .map_err(unsafe_path)?;
    let mut walked = String::new();
    for (index, part) in parts.iter().enumerate() {
        walked.push('/');
        walked.push_str(part);
        let last = index + 1 == parts.len();
        let flags = if last && kind == Kind::File {
            // O_NONBLOCK: a FIFO planted here must not hang the open.
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
        } else {
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
        };
        let next = openat(&current, *part, flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ELOOP => unsafe_path(format!("{walked} is a symlink")),
            nix::errno::Errno::ENOENT => Error::Config(format!("{path}: {walked} does not exist")),
            e => unsafe_path(format!("cannot open {walked}: {e}")),
        })?;
        let stat = fstat(&next).map_err(|e| unsafe_path(e.to_string()))?;
        let want = if last && kind == Kind::File {
            FileKind::File
        } else {
            FileKind::Dir
        };
        install::check_kind(&walked, FileKind::from_mode(stat.st_mode), want)
            .map_err(unsafe_path)?;
        check_owner(&walked, &stat).map_err(unsafe_path)?;
        current = next;
    }
    Ok(current)
}

/// Root-owned and writable by root alone (the rule is ucloud-wire's, shared with
/// ucloud-check(8)).
pub fn check_owner(name: &str, stat: &FileStat) -> Result<(), String> {
    install::check_owner(name, stat.st_uid, stat.st_mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_directories_pass_and_tmp_does_not() {
        assert!(open_secure("/usr/bin", Kind::Dir).is_ok());
        assert!(open_secure("/etc/passwd", Kind::File).is_ok());
        let tmp = open_secure("/tmp", Kind::Dir).expect_err("/tmp is world-writable");
        assert!(tmp.to_string().contains("chmod go-w"), "{tmp}");
        assert!(matches!(
            open_secure("/etc/passwd", Kind::Dir),
            Err(Error::UnsafeInstallation(_))
        ));
        assert!(open_secure("/etc/../etc/passwd", Kind::File).is_err());
        assert!(matches!(
            open_secure("/no-such-dir/x", Kind::File),
            Err(Error::Config(_))
        ));
        assert!(open_secure("etc/passwd", Kind::File).is_err());
    }

    #[test]
    fn symlinks_are_refused() {
        // /proc/self is a symlink on every Linux.
        let e = open_secure("/proc/self/status", Kind::File).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }
}
