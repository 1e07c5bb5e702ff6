//! Whether a local account may be the target of a UCloud user. The same rules as the
//! dispatcher applies on every request (Open OnDemand's nginx_stage checks): it
//! exists in NSS, its name round-trips through its uid, it is not root, its uid is
//! at least `min_uid`, its shell is not a disabled one, and it is none of the
//! site's own accounts. Checking here too means a bad mapping is never written.

use crate::error::Error;
use nix::unistd::User;
use std::path::{Component, Path};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::LocalName;

/// An account that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: LocalName,
    pub uid: u32,
    pub home: String,
}

/// What NSS says about an account, as plain data so the rules can be tested
/// without creating accounts.
#[derive(Clone, Debug)]
pub struct Facts {
    pub uid: u32,
    pub gid: u32,
    pub shell: String,
    pub home: String,
    /// The name NSS gives for `uid`.
    pub name_of_uid: Option<String>,
}

pub fn check(name: &LocalName, site: &SiteConfig) -> Result<Account, Error> {
    let user = lookup(name.as_str())?.ok_or_else(|| {
        refused(
            name,
            "does not exist on this system (check with `getent passwd`)",
        )
    })?;
    let name_of_uid = User::from_uid(user.uid)
        .map_err(|e| Error::Io(format!("cannot look up uid {}: {}", user.uid, e.desc())))?
        .map(|u| u.name);
    let facts = Facts {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        shell: user.shell.to_string_lossy().into_owned(),
        home: user.dir.to_string_lossy().into_owned(),
        name_of_uid,
    };
    let mut own_uids = Vec::new();
    for own in [&site.service_user, &site.gateway_user, &site.sender_user] {
        if !own.is_empty() {
            if let Some(u) = lookup(own)? {
                own_uids.push(u.uid.as_raw());
            }
        }
    }
    judge(name, &facts, site, &own_uids)?;
    Ok(Account {
        name: name.clone(),
        uid: facts.uid,
        home: facts.home,
    })
}

/// The rules. `own_uids` are the uids of the site's service, gateway and sender
/// accounts.
pub fn judge(
    name: &LocalName,
    f: &Facts,
    site: &SiteConfig,
    own_uids: &[u32],
) -> Result<(), Error> {
    if f.name_of_uid.as_deref() != Some(name.as_str()) {
        return Err(refused(name, &format!(
            "does not round-trip through NSS: uid {} belongs to {:?}; give every account its own uid",
            f.uid, f.name_of_uid
        )));
    }
    if f.uid == 0 || f.gid == 0 {
        return Err(refused(
            name,
            "is root or in group root, never a mapping target",
        ));
    }
    if f.uid < site.min_uid {
        return Err(refused(
            name,
            &format!(
                "has uid {}, below min_uid {} in site.conf (system accounts are never mapped)",
                f.uid, site.min_uid
            ),
        ));
    }
    if site.disabled_shells.contains(&f.shell) {
        return Err(refused(
            name,
            &format!(
                "has the disabled shell {} (disabled_shells in site.conf)",
                f.shell
            ),
        ));
    }
    let own_names = [&site.service_user, &site.gateway_user, &site.sender_user];
    if own_names.iter().any(|own| own.as_str() == name.as_str()) || own_uids.contains(&f.uid) {
        return Err(refused(
            name,
            "is one of ucloud-im's own accounts (service_user, gateway_user or sender_user)",
        ));
    }
    let home = Path::new(&f.home);
    let plain = home.is_absolute()
        && home.components().count() > 1
        && home
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(refused(name, &format!(
            "has the home directory {:?}; its home drive needs an absolute path below / without . or ..",
            f.home
        )));
    }
    Ok(())
}

fn lookup(name: &str) -> Result<Option<User>, Error> {
    User::from_name(name)
        .map_err(|e| Error::Io(format!("cannot look up account {name}: {}", e.desc())))
}

fn refused(name: &LocalName, why: &str) -> Error {
    Error::Refused(format!("the local account {name} {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteConfig {
        SiteConfig::parse(
            "provider = hpc\ngateway_user = ucloud-gw\nservice_user = ucloud-svc\nsender_user = ucloud-send\n",
        )
        .unwrap()
    }

    fn good() -> Facts {
        Facts {
            uid: 1001,
            gid: 1001,
            shell: "/bin/bash".into(),
            home: "/home/alice".into(),
            name_of_uid: Some("alice".into()),
        }
    }

    #[test]
    fn a_normal_account_passes() {
        let alice = LocalName::new("alice").unwrap();
        judge(&alice, &good(), &site(), &[998, 999]).unwrap();
    }

    #[test]
    fn unsuitable_accounts_are_refused_with_the_reason() {
        let alice = LocalName::new("alice").unwrap();
        let cases: Vec<(Facts, &str)> = vec![
            (
                Facts {
                    uid: 0,
                    gid: 0,
                    name_of_uid: Some("alice".into()),
                    ..good()
                },
                "root",
            ),
            (Facts { gid: 0, ..good() }, "root"),
            (Facts { uid: 999, ..good() }, "below min_uid"),
            (
                Facts {
                    shell: "/usr/sbin/nologin".into(),
                    ..good()
                },
                "disabled shell",
            ),
            (
                Facts {
                    name_of_uid: Some("mallory".into()),
                    ..good()
                },
                "round-trip",
            ),
            (
                Facts {
                    name_of_uid: None,
                    ..good()
                },
                "round-trip",
            ),
            (
                Facts {
                    home: "/".into(),
                    ..good()
                },
                "home directory",
            ),
            (
                Facts {
                    home: "home/alice".into(),
                    ..good()
                },
                "home directory",
            ),
            (
                Facts {
                    home: "/home/../etc".into(),
                    ..good()
                },
                "home directory",
            ),
        ];
        for (facts, why) in cases {
            let err = judge(&alice, &facts, &site(), &[]).unwrap_err();
            assert!(
                matches!(err, Error::Refused(_)) && err.to_string().contains(why),
                "{facts:?}: {err}"
            );
        }
        let err = judge(&alice, &good(), &site(), &[1001]).unwrap_err();
        assert!(err.to_string().contains("own accounts"), "{err}");
        let svc = LocalName::new("ucloud-svc").unwrap();
        let facts = Facts {
            name_of_uid: Some("ucloud-svc".into()),
            ..good()
        };
        assert!(judge(&svc, &facts, &site(), &[]).is_err());
    }
}
