//! Self-checks: the dispatcher runs as root with the capabilities it needs, and the
//! installation it trusts (site.conf, UCloud's key, the mapping and plugin
//! directories) is opened the trusted way (trust.rs).

use crate::error::Error;
use crate::trust::{open, read_small, Use};
use caps::{CapSet, Capability};
use nix::unistd::geteuid;
use std::os::fd::OwnedFd;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::paths;
use ucloud_wire::token::UcloudKey;

pub fn privileges() -> Result<(), Error> {
    if !geteuid().is_root() {
        let no_new_privs = nix::sys::prctl::get_no_new_privs().unwrap_or(false);
        return Err(Error::not_root(no_new_privs, geteuid().as_raw()));
    }
    for cap in [
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
        Capability::CAP_SETPCAP,
    ] {
        if !caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
            // Capability's Display is the kernel's name, CAP_SETUID.
            return Err(Error::missing_capability(cap));
        }
    }
    Ok(())
}

/// What the installation gives the dispatcher, every piece checked.
pub struct Installation {
    pub site: SiteConfig,
    pub key: UcloudKey,
    pub mappings: OwnedFd,
    pub plugins: OwnedFd,
}

pub fn site_config() -> Result<SiteConfig, Error> {
    let path = paths::site_config();
    let text = read_small(open(&path, Use::Read)?, &path)?;
    SiteConfig::parse(&text).map_err(|e| Error::Config(e.to_string()))
}

/// The rest of the installation, once the caller is known to be the gateway.
pub fn installation(site: SiteConfig) -> Result<Installation, Error> {
    let key_path = paths::ucloud_public_key();
    let key = read_small(open(&key_path, Use::Read)?, &key_path)?;
    Ok(Installation {
        site,
        key: UcloudKey::parse(key.as_bytes())
            .map_err(|e| Error::Config(format!("{key_path}: {e}")))?,
        mappings: open(&paths::mappings_dir(), Use::Dir)?,
        plugins: open(&paths::plugin_dir(), Use::Dir)?,
    })
}
