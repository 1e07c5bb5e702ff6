//! Whether a local account may run a plugin for a UCloud user: one rule for the
//! registry (before it writes a mapping) and the dispatcher (on every request), so
//! that a rule changed here changes for both. The callers gather the facts from NSS;
//! this judges them and changes nothing (Open OnDemand's nginx_stage checks, with
//! the stricter of the two former copies wherever they differed). [`look_up`]
//! gathers the facts the same way for both.

use crate::config::SiteConfig;
use nix::unistd::{getgrouplist, Gid, User};
use std::ffi::CString;
use std::fmt;
use std::path::{Component, Path};

/// What NSS says about an account, as plain data so the rule can be tested without
/// creating accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Every group the account's processes would get (getgrouplist).
    pub groups: Vec<u32>,
    pub shell: String,
    pub home: String,
    /// The name NSS gives for `uid`.
    pub name_of_uid: Option<String>,
}

/// An account as NSS reports it: the entry, its groups as getgrouplist gives them
/// (what a process of the account gets), and the facts the rule judges.
pub struct Account {
    pub user: User,
    pub groups: Vec<Gid>,
    pub facts: Facts,
}

/// `Ok(None)`: no account has that name. A lookup that fails is an error, never
/// "no such account" or "no name for the uid": the rule then fails closed.
pub fn look_up(name: &str) -> Result<Option<Account>, String> {
    let Some(user) = User::from_name(name).map_err(|e| format!("cannot look up {name}: {e}"))?
    else {
        return Ok(None);
    };
    let name_of_uid = User::from_uid(user.uid)
        .map_err(|e| format!("cannot look up uid {}: {e}", user.uid))?
        .map(|u| u.name);
    let cname = CString::new(name).map_err(|_| format!("the name {name:?} holds a NUL"))?;
    let groups = getgrouplist(&cname, user.gid)
        .map_err(|e| format!("cannot list the groups of {name}: {e}"))?;
    let facts = Facts {
        name: name.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
        shell: user.shell.to_string_lossy().into_owned(),
        home: user.dir.to_string_lossy().into_owned(),
        name_of_uid,
    };
    Ok(Some(Account {
        user,
        groups,
        facts,
    }))
}

/// The site's own accounts (service, gateway, sender) as NSS resolved them: none of
/// them is ever a mapping target, by name or by a uid it shares with another name.
#[derive(Clone, Debug, Default)]
pub struct Own {
    pub uids: Vec<u32>,
}

/// Why an account is refused; its text follows "the local account NAME".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoRoundTrip { uid: u32, back: Option<String> },
    Root,
    GroupRoot,
    BelowMinUid { uid: u32, min: u32 },
    DisabledShell(String),
    OwnAccount,
    Home(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoRoundTrip { uid, back } => write!(
                f,
                "does not round-trip through NSS: uid {uid} belongs to {back:?}; \
                 give every account its own uid"
            ),
            Refusal::Root => f.write_str("is root or in group root, never a mapping target"),
            Refusal::GroupRoot => f.write_str(
                "is a member of group root (gid 0): a plugin never runs with it, \
                 so it is never a mapping target",
            ),
            Refusal::BelowMinUid { uid, min } => write!(
                f,
                "has uid {uid}, below min_uid {min} in site.conf (system accounts are never mapped)"
            ),
            Refusal::DisabledShell(shell) => write!(
                f,
                "has the disabled shell {shell} (disabled_shells in site.conf)"
            ),
            Refusal::OwnAccount => f.write_str(
                "is one of ucloud-im's own accounts (service_user, gateway_user or sender_user)",
            ),
            Refusal::Home(home) => write!(
                f,
                "has the home directory {home:?}; its home drive needs an absolute path \
                 below / without . or .."
            ),
        }
    }
}

/// The rule, in the order a person fixing an account meets the reasons.
pub fn judge(account: &Facts, site: &SiteConfig, own: &Own) -> Result<(), Refusal> {
    if account.name_of_uid.as_deref() != Some(account.name.as_str()) {
        return Err(Refusal::NoRoundTrip {
            uid: account.uid,
            back: account.name_of_uid.clone(),
        });
    }
    if account.uid == 0 || account.gid == 0 {
        return Err(Refusal::Root);
    }
    if account.uid < site.min_uid {
        return Err(Refusal::BelowMinUid {
            uid: account.uid,
            min: site.min_uid,
        });
    }
    if site.disabled_shells.contains(&account.shell) {
        return Err(Refusal::DisabledShell(account.shell.clone()));
    }
    let own_names = [&site.service_user, &site.gateway_user, &site.sender_user];
    if own_names
        .iter()
        .any(|own| !own.is_empty() && **own == account.name)
        || own.uids.contains(&account.uid)
    {
        return Err(Refusal::OwnAccount);
    }
    if !plain_home(&account.home) {
        return Err(Refusal::Home(account.home.clone()));
    }
    if account.groups.contains(&0) {
        return Err(Refusal::GroupRoot);
    }
    Ok(())
}

/// Absolute, below `/`, and without `.` or `..`: the home drive's base directory.
fn plain_home(home: &str) -> bool {
    let home = Path::new(home);
    home.is_absolute()
        && home.components().count() > 1
        && home
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_up_reports_what_nss_says_and_fails_closed() {
        let root = look_up("root").unwrap().expect("root exists");
        assert_eq!((root.facts.uid, root.facts.gid), (0, 0));
        assert!(root.facts.groups.contains(&0));
        assert_eq!(root.facts.name_of_uid.as_deref(), Some("root"));
        assert!(look_up("no-such-account-here").unwrap().is_none());
        // A name NSS cannot hold names no account (never a panic).
        assert!(look_up("nul\0inside").unwrap().is_none());
    }

    fn site() -> SiteConfig {
        SiteConfig::parse(
            "provider = hpc\ngateway_user = ucloud-gw\nservice_user = ucloud-svc\n\
             sender_user = ucloud-send\n",
        )
        .unwrap()
    }

    fn alice() -> Facts {
        Facts {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![1001, 100],
            shell: "/bin/bash".into(),
            home: "/home/alice".into(),
            name_of_uid: Some("alice".into()),
        }
    }

    fn own() -> Own {
        Own {
            uids: vec![997, 998, 999],
        }
    }

    #[test]
    fn a_normal_account_passes() {
        assert_eq!(judge(&alice(), &site(), &own()), Ok(()));
    }

    #[test]
    fn hostile_accounts_are_refused_with_the_reason() {
        let named = |name: &str| Facts {
            name: name.into(),
            name_of_uid: Some(name.into()),
            ..alice()
        };
        let cases: Vec<(Facts, &str)> = vec![
            (
                Facts {
                    uid: 0,
                    gid: 0,
                    ..alice()
                },
                "is root",
            ),
            (Facts { gid: 0, ..alice() }, "is root"),
            (
                Facts {
                    groups: vec![1001, 0],
                    ..alice()
                },
                "member of group root",
            ),
            (
                Facts {
                    uid: 999,
                    ..alice()
                },
                "below min_uid",
            ),
            (
                Facts {
                    shell: "/usr/sbin/nologin".into(),
                    ..alice()
                },
                "disabled shell",
            ),
            (
                Facts {
                    name_of_uid: Some("mallory".into()),
                    ..alice()
                },
                "round-trip",
            ),
            (
                Facts {
                    name_of_uid: None,
                    ..alice()
                },
                "round-trip",
            ),
            (
                Facts {
                    name_of_uid: Some("Alice".into()),
                    ..alice()
                },
                "round-trip",
            ),
            // Each of the site's own accounts, by name even with a normal uid.
            (named("ucloud-svc"), "own accounts"),
            (named("ucloud-gw"), "own accounts"),
            (named("ucloud-send"), "own accounts"),
            (
                Facts {
                    home: "/".into(),
                    ..alice()
                },
                "home directory",
            ),
            (
                Facts {
                    home: "home/alice".into(),
                    ..alice()
                },
                "home directory",
            ),
            (
                Facts {
                    home: "/home/../etc".into(),
                    ..alice()
                },
                "home directory",
            ),
            (
                Facts {
                    home: String::new(),
                    ..alice()
                },
                "home directory",
            ),
        ];
        for (facts, why) in cases {
            let refusal = judge(&facts, &site(), &own()).unwrap_err();
            assert!(refusal.to_string().contains(why), "{facts:?}: {refusal}");
        }
    }

    #[test]
    fn an_alias_of_an_own_account_is_refused_by_uid() {
        // A second name for the sender's uid, listed first so it round-trips.
        let own = Own { uids: vec![1001] };
        let refusal = judge(&alice(), &site(), &own).unwrap_err();
        assert_eq!(refusal, Refusal::OwnAccount);
    }

    #[test]
    fn an_unset_own_account_matches_no_name() {
        let site =
            SiteConfig::parse("provider = hpc\ngateway_user = ucloud-gw\nservice_user = s\n")
                .unwrap();
        assert_eq!(judge(&alice(), &site, &Own::default()), Ok(()));
    }
}
