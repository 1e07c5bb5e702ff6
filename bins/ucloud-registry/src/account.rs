//! Whether a local account may be the target of a UCloud user: the facts come from
//! NSS here, the rule is ucloud-wire's [`account::judge`], the one the dispatcher
//! applies on every request. Checking here too means a bad mapping is never written.

use crate::error::Error;
use nix::unistd::{getgrouplist, User};
use std::ffi::CString;
use ucloud_wire::account::{self, Facts, Own};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::LocalName;

/// An account that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: LocalName,
    pub uid: u32,
    pub home: String,
}

pub fn check(name: &LocalName, site: &SiteConfig) -> Result<Account, Error> {
    let user = lookup(name.as_str())?.ok_or_else(|| {
        Error::Refused(format!(
            "the local account {name} does not exist on this system (check with `getent passwd`)"
        ))
    })?;
    let name_of_uid = User::from_uid(user.uid)
        .map_err(|e| Error::Io(format!("cannot look up uid {}: {}", user.uid, e.desc())))?
        .map(|u| u.name);
    let cname = CString::new(name.as_str())
        .map_err(|_| Error::Refused(format!("the local account {name} holds a NUL")))?;
    let groups = getgrouplist(&cname, user.gid)
        .map_err(|e| Error::Io(format!("cannot list the groups of {name}: {}", e.desc())))?;
    let facts = Facts {
        name: name.as_str().to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
        shell: user.shell.to_string_lossy().into_owned(),
        home: user.dir.to_string_lossy().into_owned(),
        name_of_uid,
    };
    let mut own = Own::default();
    for name in [&site.service_user, &site.gateway_user, &site.sender_user] {
        if !name.is_empty() {
            if let Some(u) = lookup(name)? {
                own.uids.push(u.uid.as_raw());
            }
        }
    }
    account::judge(&facts, site, &own)
        .map_err(|why| Error::Refused(format!("the local account {name} {why}")))?;
    Ok(Account {
        name: name.clone(),
        uid: facts.uid,
        home: facts.home,
    })
}

fn lookup(name: &str) -> Result<Option<User>, Error> {
    User::from_name(name)
        .map_err(|e| Error::Io(format!("cannot look up account {name}: {}", e.desc())))
}
