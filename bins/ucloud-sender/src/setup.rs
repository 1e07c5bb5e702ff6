//! What the sender checks before it sends anything: it runs as `sender_user`, knows
//! where UCloud is, and its refresh token is protected (only root may write it, no
//! one but root and the sender's group may read it).

use crate::error::SendError;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::paths;

pub struct Setup {
    pub ucloud_url: String,
    pub ucloud_ca: PathBuf,
    pub refresh_token: String,
    pub outbox: PathBuf,
    pub provider: String,
    /// The inbox, where the notification stream goes, when the site uses UCloud
    /// projects (site.conf sets `project_prefix`); `None`: the stream is not read.
    pub inbox: Option<PathBuf>,
    /// site.conf `lease_seconds` and `clock_skew_seconds`.
    pub lease_timing: ucloud_wire::lease::Timing,
}

pub fn load() -> Result<Setup, SendError> {
    let config =
        SiteConfig::load(&paths::site_config()).map_err(|e| SendError::Setup(e.to_string()))?;
    if config.sender_user.is_empty() {
        return Err(SendError::Setup(format!(
            "sender_user is not set in {}",
            paths::site_config()
        )));
    }
    check_account(&config.sender_user)?;
    if config.ucloud_url.is_empty() || config.ucloud_ca.is_empty() {
        return Err(SendError::Setup(format!(
            "ucloud_url and ucloud_ca must be set in {}",
            paths::site_config()
        )));
    }
    let (token_file, owner) = match std::env::var_os("CREDENTIALS_DIRECTORY") {
        // systemd's LoadCredential= hands the service its own private copy.
        Some(dir) => (
            Path::new(&dir).join("refresh-token"),
            nix::unistd::geteuid().as_raw(),
        ),
        None => (PathBuf::from(paths::refresh_token()), 0),
    };
    let refresh_token = read_token(&token_file, owner)?;
    Ok(Setup {
        lease_timing: config.lease_timing(),
        ucloud_url: config.ucloud_url,
        ucloud_ca: PathBuf::from(config.ucloud_ca),
        refresh_token,
        outbox: PathBuf::from(paths::outbox_dir()),
        provider: config.provider,
        inbox: config
            .projects
            .is_some()
            .then(|| PathBuf::from(paths::inbox_dir())),
    })
}

/// The sender holds the one credential that speaks for the provider: it runs as its
/// own account, never as root and never as anyone else.
fn check_account(sender_user: &str) -> Result<(), SendError> {
    let euid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_name(sender_user)
        .map_err(|e| SendError::Setup(format!("cannot look up sender_user {sender_user:?}: {e}")))?
        .ok_or_else(|| SendError::Setup(format!("sender_user {sender_user:?} does not exist")))?;
    if euid.is_root() {
        return Err(SendError::Setup(format!(
            "refusing to run as root: run ucloud-sender as {sender_user} (its service unit does)"
        )));
    }
    if euid != user.uid {
        return Err(SendError::Setup(format!(
            "running as uid {euid}, but site.conf's sender_user is {sender_user} (uid {})",
            user.uid
        )));
    }
    Ok(())
}

/// Mode rules for the refresh token file, apart from reading it.
pub fn check_token_metadata(
    path: &Path,
    meta: &std::fs::Metadata,
    owner: u32,
) -> Result<(), SendError> {
    let shown = path.display();
    let kind = meta.file_type();
    if kind.is_symlink() || !kind.is_file() || kind.is_fifo() {
        return Err(SendError::Setup(format!(
            "{shown} must be a regular file, not a link or a device"
        )));
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != owner {
        return Err(SendError::Setup(format!(
            "{shown} is owned by uid {}; it must be owned by uid {owner} (chown root:<sender group>, mode 0440)",
            meta.uid()
        )));
    }
    if mode & 0o004 != 0 {
        return Err(SendError::Setup(format!(
            "{shown} is readable by everyone (mode {mode:04o}): chmod 0440, group of the sender"
        )));
    }
    if mode & 0o022 != 0 {
        return Err(SendError::Setup(format!(
            "{shown} is writable by group or others (mode {mode:04o}): chmod 0440"
        )));
    }
    Ok(())
}

fn read_token(path: &Path, owner: u32) -> Result<String, SendError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        SendError::Setup(format!(
            "cannot stat the refresh token {}: {e}",
            path.display()
        ))
    })?;
    check_token_metadata(path, &meta, owner)?;
    let text = std::fs::read_to_string(path).map_err(|e| {
        SendError::Setup(format!(
            "cannot read the refresh token {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SendError::Setup(format!(
            "{} does not hold a refresh token (one line of printable text)",
            path.display()
        )));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn loose_modes_are_refused() {
        let path = std::env::temp_dir().join(format!("sender-token-{}", std::process::id()));
        std::fs::write(&path, "secret\n").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        for (mode, ok) in [
            (0o440, true),
            (0o400, true),
            (0o444, false),
            (0o460, false),
            (0o442, false),
            (0o640, true),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(
                check_token_metadata(&path, &meta, me).is_ok(),
                ok,
                "{mode:o}"
            );
        }
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(
            check_token_metadata(&path, &meta, me + 1).is_err(),
            "wrong owner"
        );
        let link = path.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(check_token_metadata(&link, &meta, me).is_err(), "symlink");
        std::fs::remove_file(link).unwrap();
        std::fs::remove_file(path).unwrap();
    }
}
