//! The user's UCloud SSH keys in `~/.ssh/authorized_keys`: one managed block,
//! written by a process that already is the user (the `ssh.keyUploaded` plugin,
//! `ucloud-connect`), never by root. Two programs install keys, so the rules live
//! here once: what a key may look like, how the block is found and replaced, and
//! how the file is written.
//!
//! Why a block in the user's own file and not an `AuthorizedKeysCommand`: it needs
//! no change to the site's sshd, no root-owned store and no program sshd runs for
//! every login; it is what UCloud's own module does; and the process writing it has
//! no privilege beyond the account it writes for.
//!
//! A key is refused unless it is exactly `TYPE BASE64 [COMMENT]` with a type UCloud
//! accepts and a blob that decodes and names that type: so no option (`command=`,
//! `from=`, `restrict`...) can come before it, no certificate, and nothing that can
//! end the line or the block (newline, CR, NUL, any control character). The
//! comment is dropped; each line is written as `TYPE BASE64 ucloud-key-ID`. One bad
//! key refuses the whole update and nothing is written.
//!
//! The file is replaced atomically (a new file beside it, fsync, rename), mode
//! 0600, through a descriptor of `~/.ssh` opened without following a link: a
//! symbolic link at `~/.ssh` or `~/.ssh/authorized_keys` is refused, never
//! followed. The writer runs as the user, so a planted link could only send the
//! user's own write into another file of the user's; refusing it still keeps the
//! update from landing where sshd does not look.

use base64::Engine;
use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::unlinkat;
use std::fmt;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The key types UCloud's core accepts (core2/pkg/orchestrator/ssh.go
/// `validPrefixes`), matched whole here: the core's prefix match would also let a
/// certificate type or an option-less oddity through.
pub const KEY_TYPES: [&str; 7] = [
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ssh-ed25519@openssh.com",
    "ssh-ed25519",
    "ssh-rsa",
];

/// The longest key line accepted: an RSA key of 16384 bits is about 2.8 KB.
pub const MAX_KEY_BYTES: usize = 8192;
/// The most keys in one update: the core sends one page of at most 1000.
pub const MAX_KEYS: usize = 1000;
/// The largest `authorized_keys` read; a bigger one is left alone.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

pub const BEGIN: &str =
    "# BEGIN ucloud-im: the keys of your UCloud account (replaced on every update)";
pub const END: &str = "# END ucloud-im";
/// What identifies a marker line, whatever follows on it.
const BEGIN_TAG_STR: &str = "# BEGIN ucloud-im";
const END_TAG_STR: &str = "# END ucloud-im";
const BEGIN_TAG: &[u8] = BEGIN_TAG_STR.as_bytes();
const END_TAG: &[u8] = END_TAG_STR.as_bytes();

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The key (or the update) is not acceptable; nothing was changed.
    Refused(String),
    /// The file or its directory is not one to write (a link, another owner,
    /// two blocks); nothing was changed.
    Unsafe(String),
    Io(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Refused(s) | KeyError::Unsafe(s) | KeyError::Io(s) => f.write_str(s),
        }
    }
}

/// One public key as it goes into the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    kind: &'static str,
    blob: String,
    /// UCloud's id of the key (decimal), written as the line's comment.
    id: String,
}

impl AuthorizedKey {
    /// `key` is UCloud's `specification.key`, `id` its `id`.
    pub fn parse(id: &str, key: &str) -> Result<AuthorizedKey, KeyError> {
        let refuse = |why: &str| Err(KeyError::Refused(format!("SSH key {id:?}: {why}")));
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyError::Refused(format!(
                "SSH key id {:?} is not a decimal number as UCloud makes them",
                id.chars().take(40).collect::<String>()
            )));
        }
        if key.len() > MAX_KEY_BYTES {
            return refuse(&format!("longer than {MAX_KEY_BYTES} bytes"));
        }
        if key
            .chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
        {
            return refuse(
                "holds a control character or line separator (newline, CR, NUL, tab...): \
                 a key is one line",
            );
        }
        let key = key.trim_matches(' ');
        if key.contains(BEGIN_TAG_STR) || key.contains(END_TAG_STR) {
            return refuse("holds the marker of the managed block");
        }
        let mut words = key.split(' ').filter(|w| !w.is_empty());
        let (Some(kind), Some(blob)) = (words.next(), words.next()) else {
            return refuse("is not `TYPE BASE64 [COMMENT]`");
        };
        let Some(kind) = KEY_TYPES.iter().copied().find(|t| *t == kind) else {
            return refuse(&format!(
                "starts with {:?}, not a key type ({}): options such as command= or from= \
                 and certificates are not accepted",
                kind.chars().take(40).collect::<String>(),
                KEY_TYPES.join(", ")
            ));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|_| KeyError::Refused(format!("SSH key {id:?}: the key is not base64")))?;
        if embedded_type(&decoded) != Some(kind.as_bytes()) {
            return refuse(&format!("the key's data is not a {kind} key"));
        }
        Ok(AuthorizedKey {
            kind,
            blob: blob.to_string(),
            id: id.to_string(),
        })
    }

    pub fn kind(&self) -> &str {
        self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The line in the block.
    pub fn line(&self) -> String {
        format!("{} {} ucloud-key-{}", self.kind, self.blob, self.id)
    }
}

/// The first string of an SSH public key blob (a big-endian u32 length, then that
/// many bytes): the key's type.
fn embedded_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4usize.checked_add(len)?)
}

/// UCloud's `allKeys` (`[]orc.SshKey`, orchestrators/jobs.go): each key's `id` and
/// `specification.key`. Any bad key refuses them all.
pub fn parse_all(keys: &serde_json::Value) -> Result<Vec<AuthorizedKey>, KeyError> {
    let list = match keys {
        serde_json::Value::Array(l) => l.as_slice(),
        serde_json::Value::Null => &[],
        _ => return Err(KeyError::Refused("allKeys is not a list".into())),
    };
    if list.len() > MAX_KEYS {
        return Err(KeyError::Refused(format!(
            "{} keys; at most {MAX_KEYS} are installed",
            list.len()
        )));
    }
    let mut out: Vec<AuthorizedKey> = Vec::with_capacity(list.len());
    for item in list {
        let id = item["id"].as_str().unwrap_or_default();
        let Some(key) = item["specification"]["key"].as_str() else {
            return Err(KeyError::Refused(format!(
                "SSH key {id:?} has no specification.key string"
            )));
        };
        let key = AuthorizedKey::parse(id, key)?;
        if !out.iter().any(|k| k.kind == key.kind && k.blob == key.blob) {
            out.push(key);
        }
    }
    Ok(out)
}

fn is_marker(line: &[u8], tag: &[u8]) -> bool {
    line.strip_prefix(tag)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b' ' || rest[0] == b':')
}

/// `existing` with its managed block replaced by `keys` (removed when there are
/// none; added at the end when there was none). Every byte outside the block stays
/// as it was. A file with a marker out of place (an END before a BEGIN, a BEGIN
/// without END, two blocks) is not rewritten: it was edited by hand, and guessing
/// what to keep could drop a line the user wants.
pub fn merge(existing: &[u8], keys: &[AuthorizedKey]) -> Result<Vec<u8>, KeyError> {
    let mut lines: Vec<&[u8]> = existing.split(|b| *b == b'\n').collect();
    if lines.last() == Some(&&b""[..]) {
        lines.pop();
    }
    let mut block: Option<(usize, usize)> = None;
    let mut open: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if is_marker(line, BEGIN_TAG) {
            if open.is_some() || block.is_some() {
                return Err(damaged("a second BEGIN line"));
            }
            open = Some(i);
        } else if is_marker(line, END_TAG) {
            let Some(start) = open.take() else {
                return Err(damaged("an END line without a BEGIN line before it"));
            };
            block = Some((start, i));
        }
    }
    if open.is_some() {
        return Err(damaged("a BEGIN line without an END line"));
    }
    let mut new_block: Vec<u8> = Vec::new();
    if !keys.is_empty() {
        new_block.extend_from_slice(BEGIN.as_bytes());
        new_block.push(b'\n');
        for key in keys {
            new_block.extend_from_slice(key.line().as_bytes());
            new_block.push(b'\n');
        }
        new_block.extend_from_slice(END.as_bytes());
        new_block.push(b'\n');
    }
    let mut out = Vec::with_capacity(existing.len() + new_block.len());
    let (before, after) = match block {
        Some((start, end)) => (&lines[..start], &lines[end + 1..]),
        None => (&lines[..], &lines[lines.len()..]),
    };
    for line in before {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(&new_block);
    for line in after {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    // A file that did not end in a newline keeps its last line as it was, unless
    // the block now follows it.
    if !existing.is_empty() && !existing.ends_with(b"\n") && (block.is_some() || keys.is_empty()) {
        out.pop();
    }
    Ok(out)
}

fn damaged(what: &str) -> KeyError {
    KeyError::Unsafe(format!(
        "~/.ssh/authorized_keys has {what} of the ucloud-im block; nothing was changed. \
         Delete the lines from `{BEGIN_TAG_STR}` to `{END_TAG_STR}` and the next update \
         writes the block again"
    ))
}

fn errno(what: &str, e: nix::errno::Errno) -> KeyError {
    match e {
        nix::errno::Errno::ELOOP => KeyError::Unsafe(format!(
            "{what} is a symbolic link: ucloud-im does not follow it; nothing was changed"
        )),
        e => KeyError::Io(format!("{what}: {}", e.desc())),
    }
}

/// Opens `~/.ssh` under `home` without following a link there, creating it 0700
/// when missing. `create` false: a missing directory is None.
fn ssh_dir(home: &std::path::Path, create: bool) -> Result<Option<OwnedFd>, KeyError> {
    let home_fd = openat(
        AT_FDCWD,
        home,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        KeyError::Io(format!(
            "cannot open the home directory {}: {}",
            home.display(),
            e.desc()
        ))
    })?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(&home_fd, ".ssh", flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(nix::errno::Errno::ENOENT) if create => {
            mkdirat(&home_fd, ".ssh", Mode::from_bits_truncate(0o700))
                .map_err(|e| errno("cannot create ~/.ssh", e))?;
            openat(&home_fd, ".ssh", flags, Mode::empty())
                .map(Some)
                .map_err(|e| errno("~/.ssh", e))
        }
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(nix::errno::Errno::ENOTDIR) => Err(KeyError::Unsafe(
            "~/.ssh is not a directory (or is a symbolic link, which ucloud-im does not follow); nothing was changed"
                .into(),
        )),
        Err(e) => Err(errno("~/.ssh", e)),
    }
}

/// What was done.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The file now holds these many keys in its block.
    Written(usize),
    /// No keys and no block, nor file: nothing to do.
    Nothing,
}

/// Replaces the managed block of `home`/.ssh/authorized_keys with `keys`, as the
/// calling process (which must be the account that owns `home`).
pub fn install(home: &std::path::Path, keys: &[AuthorizedKey]) -> Result<Installed, KeyError> {
    let Some(dir) = ssh_dir(home, !keys.is_empty())? else {
        return Ok(Installed::Nothing);
    };
    let me = nix::unistd::geteuid().as_raw();
    let st = fstat(dir.as_fd()).map_err(|e| errno("~/.ssh", e))?;
    if st.st_uid != me {
        return Err(KeyError::Unsafe(format!(
            "~/.ssh belongs to uid {}, not to this account (uid {me}); nothing was changed",
            st.st_uid
        )));
    }
    let existing = read_existing(&dir)?;
    if existing.is_none() && keys.is_empty() {
        return Ok(Installed::Nothing);
    }
    let existing = existing.unwrap_or_default();
    let new = merge(&existing, keys)?;
    if new == existing {
        return Ok(Installed::Written(keys.len()));
    }
    replace(&dir, &new)?;
    Ok(Installed::Written(keys.len()))
}

fn read_existing(dir: &OwnedFd) -> Result<Option<Vec<u8>>, KeyError> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match openat(dir, "authorized_keys", flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(errno("~/.ssh/authorized_keys", e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| errno("~/.ssh/authorized_keys", e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(KeyError::Unsafe(
            "~/.ssh/authorized_keys is not a regular file; nothing was changed".into(),
        ));
    }
    let file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| KeyError::Io(format!("cannot read ~/.ssh/authorized_keys: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(KeyError::Unsafe(format!(
            "~/.ssh/authorized_keys is larger than {MAX_FILE_BYTES} bytes; nothing was changed"
        )));
    }
    Ok(Some(bytes))
}

/// A new file beside the old one, then renamed over it: sshd reads either the old
/// file or the new one, never half of one.
fn replace(dir: &OwnedFd, content: &[u8]) -> Result<(), KeyError> {
    let tmp = format!(".authorized_keys.ucloud-im.{}", std::process::id());
    let _ = unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600))
        .map_err(|e| errno("cannot create a file in ~/.ssh", e))?;
    let mut file = std::fs::File::from(fd);
    let written = file
        .write_all(content)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
        })
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyError::Io(format!("cannot write ~/.ssh/authorized_keys: {e}")))
        .and_then(|()| {
            renameat(dir, tmp.as_str(), dir, "authorized_keys")
                .map_err(|e| errno("cannot replace ~/.ssh/authorized_keys", e))
        });
    if written.is_err() {
        let _ = unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    written?;
    let _ = nix::unistd::fsync(dir);
    Ok(())
}

#[cfg(test)]
mod tests;
