//! Who the plugin runs as. A UCloud name is looked up as data (the root-owned file
//! `mappings/<hex of the name>`), never used in a path raw; the local account it
//! names is then judged by ucloud-wire's account rule, the registry's too.
//! Calls without a user run as the service account, which no UCloud name can map to.

use crate::error::Error;
use crate::trust::{self, Untrusted, Use};
use nix::unistd::{getuid, Gid, Uid, User};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use ucloud_wire::account::{self, Account, Own};
use ucloud_wire::calls;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::UcloudName;
use ucloud_wire::record::Mapping;

/// The account a plugin runs as, fully resolved.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub groups: Vec<Gid>,
    pub home: PathBuf,
    /// The UCloud user (absent for service calls).
    pub ucloud: Option<UcloudName>,
}

pub fn resolve(
    call: &str,
    user: Option<&UcloudName>,
    site: &SiteConfig,
    mappings: &OwnedFd,
) -> Result<Target, Error> {
    let service = service_account(site)?;
    if calls::is_service_call(call) {
        return service_target(&service.name);
    }
    let user = user.ok_or_else(|| Error::UserRequired(format!("{call} needs a UCloud user")))?;
    let mapping = read_mapping(user, mappings)?;
    if mapping.expired(site.mapping_expire_after_ms, ucloud_wire::now_ms()) {
        return Err(Error::NotMapped(format!(
            "the connection of UCloud user {user} to this provider has expired: connect again in UCloud"
        )));
    }
    let (local, recorded_uid) = (mapping.local.as_str(), mapping.uid);
    let account = look_up(local)?.ok_or_else(|| {
        refused(
            local,
            "does not exist (the mapping is stale: ucloud-registry remove it)",
        )
    })?;
    if account.facts.uid != recorded_uid {
        return Err(refused(local, &format!(
            "has uid {} but was mapped with uid {recorded_uid} (the account was recreated: map it again)",
            account.facts.uid
        )));
    }
    // The caller check made sure the real uid is the gateway's.
    let mut uids = vec![service.uid.as_raw(), getuid().as_raw()];
    if !site.sender_user.is_empty() {
        uids.extend(user_named(&site.sender_user)?.map(|u| u.uid.as_raw()));
    }
    account::judge(&account.facts, site, &Own { uids })
        .map_err(|why| refused(local, &why.to_string()))?;
    Ok(Target::new(account, Some(user.clone())))
}

fn refused(local: &str, why: &str) -> Error {
    Error::AccountRefused(format!("the local account {local} {why}"))
}

fn look_up(name: &str) -> Result<Option<Account>, Error> {
    account::look_up(name).map_err(Error::Internal)
}

/// Only the entry: the full lookup (groups, the uid's name) costs two more file
/// reads, wasted on accounts that are not the target.
fn user_named(name: &str) -> Result<Option<User>, Error> {
    User::from_name(name).map_err(|e| Error::Internal(format!("cannot look up {name}: {e}")))
}

fn service_account(site: &SiteConfig) -> Result<User, Error> {
    let account = user_named(&site.service_user)?.ok_or_else(|| {
        Error::Config(format!(
            "service_user {} is not an account on this system",
            site.service_user
        ))
    })?;
    if account.uid.is_root() || account.gid.as_raw() == 0 {
        return Err(Error::Config(format!(
            "service_user {} is root or in group root",
            site.service_user
        )));
    }
    Ok(account)
}

/// The service account is not a mapping target and so not judged as one, but a
/// plugin never runs with group root either way.
fn service_target(name: &str) -> Result<Target, Error> {
    let service =
        look_up(name)?.ok_or_else(|| Error::Config(format!("service_user {name} disappeared")))?;
    if service.facts.groups.contains(&0) {
        return Err(Error::AccountRefused(format!(
            "{} is a member of group root (gid 0): a plugin never runs with it",
            service.facts.name
        )));
    }
    Ok(Target::new(service, None))
}

impl Target {
    fn new(account: Account, ucloud: Option<UcloudName>) -> Target {
        let Account { user, groups, .. } = account;
        Target {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir,
            ucloud,
        }
    }
}

/// `mappings/<hex>`: root-owned, not writable by group or others, and naming the
/// same UCloud user as its file name (ucloud-wire's [`Mapping`]).
fn read_mapping(user: &UcloudName, mappings: &OwnedFd) -> Result<Mapping, Error> {
    let dir = ucloud_wire::paths::mappings_dir();
    let (fd, _) =
        trust::open_at(mappings, &dir, &user.file_name(), Use::Read).map_err(|u| match u {
            Untrusted::Missing(_) => Error::NotMapped(format!(
                "UCloud user {user} has no local account on this provider: connect it first"
            )),
            u => u.into(),
        })?;
    let path = format!("{dir}/{}", user.file_name());
    let text = trust::read_small(fd, &path)?;
    Mapping::parse(user, text.as_bytes()).map_err(|why| Error::Config(format!("{path}: {why}")))
}
