//! What the trusted files of an installation must be (the records in them are
//! [`crate::record`]'s): one set of rules for the dispatcher, which enforces them
//! on every request, and for ucloud-check(8), which reports them ahead of time. Pure: the caller opens
//! (the dispatcher on descriptors, never following a link) and hands in what
//! `fstat`/`lstat` said, so both judge a file by the same words.

/// Files larger than this are not configuration (site.conf, a key, a mapping).
pub const MAX_SMALL_FILE: u64 = 64 << 10;
/// The transfer key holds at least this many random bytes.
pub const MIN_TRANSFER_KEY: usize = 32;

/// The type of one path component, from `st_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// The components of an absolute path, refusing `.` and `..`: a trusted path is
/// walked one component at a time, and each must be what it says.
pub fn components(path: &str) -> Result<Vec<&str>, String> {
    if !path.starts_with('/') {
        return Err("not an absolute path".into());
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("contains . or ..".into());
    }
    Ok(parts)
}

/// `walked` is of the kind wanted: every component but a file's last is a
/// directory, and a link is refused wherever it is.
pub fn check_kind(walked: &str, is: FileKind, want: FileKind) -> Result<(), String> {
    if is == FileKind::Symlink {
        return Err(format!("{walked} is a symlink"));
    }
    if is != want {
        let what = if want == FileKind::File {
            "a regular file"
        } else {
            "a directory"
        };
        return Err(format!("{walked} is not {what}"));
    }
    Ok(())
}

/// Root-owned and writable by root alone.
pub fn check_owner(name: &str, uid: u32, mode: u32) -> Result<(), String> {
    if uid != 0 {
        return Err(format!(
            "{name} is owned by uid {uid}, not root: chown root {name}"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{name} is writable by group or others (mode {:04o}): chmod go-w {name}",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The transfer key is a secret: root's alone.
pub fn check_secret_mode(name: &str, mode: u32) -> Result<(), String> {
    if mode & 0o077 != 0 {
        return Err(format!(
            "{name} is readable by group or others (mode {:04o}): chmod 0600 {name}",
            mode & 0o7777
        ));
    }
    Ok(())
}

pub fn check_transfer_key_length(name: &str, len: usize) -> Result<(), String> {
    if len < MIN_TRANSFER_KEY {
        return Err(format!(
            "{name} holds {len} bytes; it needs at least {MIN_TRANSFER_KEY} random bytes"
        ));
    }
    Ok(())
}

/// A plugin runs as the mapped user, so everyone may execute it, and it never
/// carries a set-id bit (ownership is [`check_owner`]'s).
pub fn check_plugin_mode(name: &str, mode: u32) -> Result<(), String> {
    if mode & 0o001 == 0 {
        return Err(format!(
            "{name} is not executable by others (mode {:04o}): chmod 0755 {name}",
            mode & 0o7777
        ));
    }
    if mode & 0o6000 != 0 {
        return Err(format!(
            "{name} is setuid or setgid: plugins run as the user, remove the bit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_absolute_without_dot_components() {
        assert_eq!(
            components("/etc//ucloud-im/").unwrap(),
            ["etc", "ucloud-im"]
        );
        assert!(components("etc/passwd").is_err());
        assert!(components("/etc/../etc/passwd").is_err());
        assert!(components("/etc/./passwd").is_err());
    }

    #[test]
    fn owners_and_modes() {
        assert!(check_owner("/x", 0, 0o100644).is_ok());
        assert!(check_owner("/x", 0, 0o040755).is_ok());
        assert!(check_owner("/x", 1000, 0o100644)
            .unwrap_err()
            .contains("chown root /x"));
        assert!(check_owner("/x", 0, 0o100664)
            .unwrap_err()
            .contains("chmod go-w /x"));
        assert!(check_owner("/x", 0, 0o041777).is_err());
        assert!(check_secret_mode("/k", 0o100600).is_ok());
        assert!(check_secret_mode("/k", 0o100640).is_err());
        assert!(check_transfer_key_length("/k", 31).is_err());
        assert!(check_transfer_key_length("/k", 32).is_ok());
        assert!(check_plugin_mode("/p", 0o100755).is_ok());
        assert!(check_plugin_mode("/p", 0o100750).is_err());
        assert!(check_plugin_mode("/p", 0o104755).is_err());
        assert!(check_plugin_mode("/p", 0o102755).is_err());
    }

    #[test]
    fn kinds() {
        assert_eq!(FileKind::from_mode(0o100644), FileKind::File);
        assert_eq!(FileKind::from_mode(0o040755), FileKind::Dir);
        assert_eq!(FileKind::from_mode(0o120777), FileKind::Symlink);
        assert_eq!(FileKind::from_mode(0o010644), FileKind::Other);
        assert!(check_kind("/a", FileKind::Symlink, FileKind::Dir)
            .unwrap_err()
            .contains("is a symlink"));
        assert!(check_kind("/a", FileKind::Dir, FileKind::File)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(check_kind("/a", FileKind::Other, FileKind::Dir).is_err());
    }
}
