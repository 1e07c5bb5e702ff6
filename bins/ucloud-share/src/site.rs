//! Where ucloud-share's inputs and outputs are, and the one fact it takes from the
//! mapping store: the local account a UCloud user may act as, judged by the same
//! account rule the dispatcher applies on every request.

use crate::plan::Account;
use nix::unistd::User;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use ucloud_wire::account::{self, Own};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::UcloudName;
use ucloud_wire::record::{Mapping, MAX_RECORD};

pub(crate) struct Site {
    pub(crate) config: SiteConfig,
    pub(crate) category: String,
    pub(crate) own: Own,
    /// Whose files UCloud's answers are (`sender_user`).
    pub(crate) sender_uid: Option<u32>,
    /// `var/lib/ucloud-im/shares`: the records, root 0700.
    pub(crate) records: PathBuf,
    /// `var/lib/ucloud-im/share-gates`: the mount points, root 0711.
    pub(crate) gates: PathBuf,
    /// `var/lib/ucloud-im/share-consents`: each sharer's own record, root 1733.
    pub(crate) consents: PathBuf,
    pub(crate) drives: PathBuf,
    pub(crate) mappings: PathBuf,
    pub(crate) outbox: PathBuf,
    pub(crate) state: PathBuf,
}

pub(crate) type Failure = (u8, String);

/// The site's configuration and directories; with `shares_on`, also the storage
/// category of the `share` product, without which shares are off.
pub(crate) fn site(shares_on: bool) -> Result<Site, Failure> {
    let config =
        SiteConfig::load(&ucloud_wire::paths::site_config()).map_err(|e| (78, e.to_string()))?;
    let table = ucloud_wire::products::Table::load(Path::new(&ucloud_wire::paths::etc_dir()))
        .map_err(|e| (78, e))?;
    let category = table
        .products
        .iter()
        .find(|p| p.name == "share")
        .filter(|p| {
            table
                .category(&p.category)
                .is_some_and(|c| c.kind == ucloud_wire::products::Kind::Storage)
        })
        .map(|p| p.category.clone())
        .or_else(|| (!shares_on).then(String::new))
        .ok_or((
            78,
            "products/files.json offers no product \"share\": shares are off on this site \
             (see ucloud-share(8))"
                .to_string(),
        ))?;
    let mut uids = Vec::new();
    for name in [
        &config.service_user,
        &config.gateway_user,
        &config.sender_user,
    ] {
        if let Ok(Some(u)) = User::from_name(name) {
            uids.push(u.uid.as_raw());
        }
    }
    let state = PathBuf::from(ucloud_wire::paths::state_dir());
    let sender_uid = User::from_name(&config.sender_user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    let site = Site {
        sender_uid,
        category,
        own: Own { uids },
        records: state.join("shares"),
        gates: state.join("share-gates"),
        consents: state.join("share-consents"),
        drives: ucloud_wire::paths::drives_dir().into(),
        mappings: ucloud_wire::paths::mappings_dir().into(),
        outbox: ucloud_wire::paths::outbox_dir().into(),
        state,
        config,
    };
    // Made by the installer: a missing or loose one is a broken installation.
    for (dir, mode) in [
        (&site.records, 0o700),
        (&site.gates, 0o711),
        (&site.consents, 0o1733),
    ] {
        let meta = fs::symlink_metadata(dir).map_err(|e| {
            (
                78,
                format!(
                    "{}: {e} (the installation makes it, root {mode:o})",
                    dir.display()
                ),
            )
        })?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o7777 != mode {
            return Err((
                78,
                format!(
                    "{} must be a directory, root's, mode {mode:o}",
                    dir.display()
                ),
            ));
        }
    }
    Ok(site)
}

/// The local account a UCloud user is mapped to, if the mapping is current and
/// the account passes the same rule the dispatcher applies on every request.
pub(crate) fn account_of(site: &Site, name: &UcloudName) -> Option<Account> {
    let path = site.mappings.join(name.file_name());
    let text = read_small(&path).ok()?;
    let mapping = Mapping::parse(name, &text).ok()?;
    if mapping.expired(site.config.mapping_expire_after_ms, ucloud_wire::now_ms()) {
        return None;
    }
    let found = account::look_up(mapping.local.as_str()).ok()??;
    if found.facts.uid != mapping.uid {
        return None;
    }
    account::judge(&found.facts, &site.config, &site.own).ok()?;
    Some(Account {
        local: mapping.local,
        uid: mapping.uid,
    })
}

pub(crate) fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    ucloud_wire::read_capped(file, MAX_RECORD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}
