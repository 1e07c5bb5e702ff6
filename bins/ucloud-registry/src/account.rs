//! Whether a local account may be the target of a UCloud user: the facts come from
//! NSS here, the rule is ucloud-wire's [`account::judge`], the one the dispatcher
//! applies on every request. Checking here too means a bad mapping is never written.

use crate::error::Error;
use nix::unistd::User;
use ucloud_wire::account::{self, Own};
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
    let facts = account::look_up(name.as_str())
        .map_err(Error::Io)?
        .ok_or_else(|| {
            Error::Refused(format!(
                "the local account {name} does not exist on this system (check with `getent passwd`)"
            ))
        })?
        .facts;
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
