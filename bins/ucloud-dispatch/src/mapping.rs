//! Who the plugin runs as. A UCloud name is looked up as data (the root-owned file
//! `mappings/<hex of the name>`), never used in a path raw; the local account it
//! names is then checked through NSS the way Open OnDemand's nginx_stage does.
//! Calls without a user run as the service account, which no UCloud name can map to.

use crate::checks::{check_owner, read_small};
use crate::error::Error;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::{getgrouplist, Gid, Uid, User};
use serde_json::Value;
use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use ucloud_wire::calls;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::{LocalName, UcloudName};

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
        return target(service, None);
    }
    let user = user.ok_or_else(|| Error::UserRequired(format!("{call} needs a UCloud user")))?;
    let mapping = read_mapping(user, mappings)?;
    if expired(
        &mapping,
        site.mapping_expire_after_ms,
        ucloud_wire::now_ms(),
    ) {
        return Err(Error::NotMapped(format!(
            "the connection of UCloud user {user} to this provider has expired: connect again in UCloud"
        )));
    }
    let Mapping {
        local,
        uid: recorded_uid,
        ..
    } = mapping;
    let account = lookup(&local)?.ok_or_else(|| {
        refused(
            &local,
            "does not exist (the mapping is stale: ucloud-registry remove it)",
        )
    })?;
    if account.uid.as_raw() != recorded_uid {
        return Err(refused(&local, &format!(
            "has uid {} but was mapped with uid {recorded_uid} (the account was recreated: map it again)",
            account.uid
        )));
    }
    let back = User::from_uid(account.uid).ok().flatten().map(|u| u.name);
    if back.as_deref() != Some(local.as_str()) {
        return Err(refused(
            &local,
            &format!(
                "does not round-trip through NSS (uid {} is {back:?})",
                account.uid
            ),
        ));
    }
    if account.uid.is_root() || account.gid.as_raw() == 0 {
        return Err(refused(&local, "is root or in group root"));
    }
    if account.uid.as_raw() < site.min_uid {
        return Err(refused(
            &local,
            &format!("has uid {}, below min_uid {}", account.uid, site.min_uid),
        ));
    }
    let shell = account.shell.to_string_lossy().into_owned();
    if site.disabled_shells.contains(&shell) {
        return Err(refused(&local, &format!("has the disabled shell {shell}")));
    }
    if account.uid == service.uid || local == site.service_user || local == site.gateway_user {
        return Err(refused(
            &local,
            "is the service or gateway account, never a mapping target",
        ));
    }
    target(account, Some(user.clone()))
}

fn refused(local: &str, why: &str) -> Error {
    Error::AccountRefused(format!("the local account {local} {why}"))
}

fn lookup(name: &str) -> Result<Option<User>, Error> {
    User::from_name(name)
        .map_err(|e| Error::Internal(format!("cannot look up account {name}: {e}")))
}

fn service_account(site: &SiteConfig) -> Result<User, Error> {
    let account = lookup(&site.service_user)?.ok_or_else(|| {
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

fn target(account: User, ucloud: Option<UcloudName>) -> Result<Target, Error> {
    let cname = CString::new(account.name.as_bytes())
        .map_err(|_| Error::Internal("account name holds a NUL".into()))?;
    let groups = getgrouplist(&cname, account.gid)
        .map_err(|e| Error::Internal(format!("cannot list the groups of {}: {e}", account.name)))?;
    if groups.iter().any(|g| g.as_raw() == 0) {
        return Err(Error::AccountRefused(format!(
            "{} is a member of group root (gid 0): a plugin never runs with it",
            account.name
        )));
    }
    Ok(Target {
        name: account.name,
        uid: account.uid,
        gid: account.gid,
        groups,
        home: account.dir,
        ucloud,
    })
}

/// `mappings/<hex>`: `{"ucloud":"...","local":"...","uid":N,...}`, root-owned, not
/// writable by group or others, and naming the same UCloud user as its file name.
/// What a mapping file says.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    local: String,
    uid: u32,
    /// When it was made (ms); absent in files written by hand.
    created: Option<u64>,
}

/// A mapping older than the site's `mapping_expire_after_ms` no longer works, even
/// before the registry has swept it away. One without a creation time never expires
/// on its own (it was written by an admin).
fn expired(mapping: &Mapping, expire_after_ms: Option<u64>, now_ms: u64) -> bool {
    match (mapping.created, expire_after_ms) {
        (Some(created), Some(after)) => created.saturating_add(after) <= now_ms,
        _ => false,
    }
}

fn read_mapping(user: &UcloudName, mappings: &OwnedFd) -> Result<Mapping, Error> {
    let file = user.file_name();
    let path = format!("{}/{file}", ucloud_wire::paths::mappings_dir());
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(mappings, file.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => {
            return Err(Error::NotMapped(format!(
                "UCloud user {user} has no local account on this provider: connect it first"
            )))
        }
        Err(e) => {
            return Err(Error::UnsafeInstallation(format!(
                "cannot open {path}: {e}"
            )))
        }
    };
    let stat = fstat(&fd).map_err(|e| Error::Internal(format!("{path}: {e}")))?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(Error::UnsafeInstallation(format!(
            "{path} is not a regular file"
        )));
    }
    check_owner(&path, &stat).map_err(Error::UnsafeInstallation)?;
    let text = read_small(fd, &path)?;
    parse_mapping(user, &text).map_err(|why| Error::Config(format!("{path}: {why}")))
}

fn parse_mapping(user: &UcloudName, text: &str) -> Result<Mapping, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("ucloud").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(format!("does not name UCloud user {user}"));
    }
    let local = value
        .get("local")
        .and_then(Value::as_str)
        .ok_or("has no local account")?;
    let local = LocalName::new(local).map_err(|e| e.to_string())?;
    let uid = value
        .get("uid")
        .and_then(Value::as_u64)
        .and_then(|u| u32::try_from(u).ok())
        .ok_or("has no uid")?;
    let created = match value.get("created") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("created must be a time in milliseconds")?),
    };
    Ok(Mapping {
        local: local.as_str().to_string(),
        uid,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_files_must_name_their_user() {
        let alice = UcloudName::new("AliceHansen#1001").unwrap();
        let ok = r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":1}"#;
        let expected = Mapping {
            local: "alice".into(),
            uid: 1001,
            created: Some(1),
        };
        assert_eq!(parse_mapping(&alice, ok).unwrap(), expected);
        for bad in [
            r#"{"ucloud":"BobNielsen#2002","local":"alice","uid":1001}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"../root","uid":1001}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice"}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":-1}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":4294967296}"#,
            r#"{"ucloud":"AliceHansen#1001","local":"alice","uid":1001,"created":"x"}"#,
            "not json",
        ] {
            assert!(parse_mapping(&alice, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mappings_expire_after_the_site_limit() {
        let m = |created| Mapping {
            local: "alice".into(),
            uid: 1001,
            created,
        };
        assert!(!expired(&m(Some(1_000)), None, u64::MAX));
        assert!(!expired(&m(None), Some(10), u64::MAX));
        assert!(!expired(&m(Some(1_000)), Some(10), 1_009));
        assert!(expired(&m(Some(1_000)), Some(10), 1_010));
        assert!(expired(&m(Some(u64::MAX)), Some(u64::MAX), u64::MAX));
    }
}
