//! What to do, decided from facts alone, in two steps with no I/O, so that every
//! rule can be tested with hostile input:
//!
//! 1. [`wanted`]: from the state (what UCloud said), the mapped users and
//!    site.conf, the groups and Slurm accounts there should be, with their
//!    members, and what is refused (names that are invalid or already another
//!    owner's). Its account names are what act.rs then asks Slurm about.
//! 2. [`plan`]: from that and what the system says (NSS, Slurm, the drives), the
//!    actions, removals first. Nothing is adopted: a group or account that exists
//!    but is not in the record is refused, and no one is ever added to a group or
//!    account that is not recorded.

use crate::slurm::{Limits, Slurm};
use crate::state::{AccountOwner, LimitRec, Owner, State, Wallet};
use std::collections::{BTreeMap, BTreeSet};
use ucloud_wire::config::{is_slurm_name, LockedLimit, ProjectConfig};
use ucloud_wire::names::{LocalName, UcloudName};

/// What a product category means for limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Category {
    pub compute: bool,
    /// Minutes per unit when one unit is one core for one accounting period (every
    /// product's price equals its cores): the unit becomes `GrpTRESMins=cpu`.
    /// None: no TRES limit can stand for it.
    pub minutes: Option<u64>,
}

pub type Categories = BTreeMap<String, Category>;

/// A mapped UCloud user, as the mapping store and NSS agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub local: LocalName,
    pub uid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A whole run: everything, removals included.
    All,
    /// `--mapped`: what concerns this one user, additions only.
    One(UcloudName),
}

/// A project's Unix group: the prefix and the first 10 lower-case letters and
/// digits of its id. None when the id has none.
pub fn group_name(prefix: &str, id: &str) -> Option<String> {
    let tail: String = id
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(10)
        .collect();
    let name = format!("{prefix}{tail}");
    (!tail.is_empty() && is_slurm_name(&name)).then_some(name)
}

fn checked(name: String, category: &str) -> Result<String, String> {
    match is_slurm_name(&name) {
        true => Ok(name),
        false => Err(format!(
            "category {:?} makes the account name {:?}, which is not 1 to 32 of a-z 0-9 _ - starting with a letter",
            category.chars().take(64).collect::<String>(),
            name.chars().take(80).collect::<String>()
        )),
    }
}

pub fn project_account(group: &str, category: &str) -> Result<String, String> {
    checked(
        format!("{group}_{}", category.to_ascii_lowercase()),
        category,
    )
}

pub fn personal_account(prefix: &str, uid: u32, category: &str) -> Result<String, String> {
    checked(
        format!("{prefix}u{uid}_{}", category.to_ascii_lowercase()),
        category,
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedAccount {
    pub name: String,
    pub owner: AccountOwner,
    pub category: String,
    /// The associations it should have (local account names).
    pub users: Vec<String>,
    /// Whether associations of others are removed (not in `--mapped`).
    pub exclusive: bool,
    /// The wallet it follows; None for an account nothing wants any more.
    pub wallet: Option<Wallet>,
    pub locked: bool,
    pub minutes: Option<u64>,
    /// Whether it may be created now (someone to use it, an allocation left).
    pub create: bool,
    /// Its Slurm coordinators (a project's PI and admins mapped here, who may act
    /// on every job of the account, as UCloud lets them act on every job of the
    /// project); None: left as they are (accounts that are not a project's).
    pub coordinators: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedProject {
    pub id: String,
    pub group: String,
    pub members: Vec<String>,
    pub exclusive: bool,
    /// Every wallet here is at quota 0: its allocations ended.
    pub left: bool,
    pub accounts: Vec<WantedAccount>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub refusals: Vec<(String, String)>,
    pub projects: Vec<WantedProject>,
    /// Personal accounts, and recorded accounts nothing wants any more.
    pub accounts: Vec<WantedAccount>,
    /// The default account and the users it should have.
    pub default: Option<(String, Vec<String>)>,
    /// Each project's members mapped here, for the state and table.json.
    pub here: BTreeMap<String, BTreeSet<String>>,
}

impl Wanted {
    /// Every account name Slurm is to be asked about.
    pub fn account_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self
            .projects
            .iter()
            .flat_map(|p| p.accounts.iter())
            .chain(self.accounts.iter())
            .map(|a| a.name.clone())
            .collect();
        if let Some((d, _)) = &self.default {
            names.insert(d.clone());
        }
        names.into_iter().collect()
    }

    /// The accounts whose core-minute limit is to be computed again (a new wallet
    /// state since the last one set): those whose usage Slurm is asked for.
    pub fn needs_usage(&self, state: &State) -> Vec<String> {
        self.projects
            .iter()
            .flat_map(|p| p.accounts.iter())
            .chain(self.accounts.iter())
            .filter(|a| a.minutes.is_some())
            .filter(
                |a| match (a.wallet, state.accounts.get(&a.name).and_then(|r| r.limit)) {
                    (Some(w), Some(l)) => l.wallet != w.updated || l.cpu_minutes.is_none(),
                    (Some(_), None) => true,
                    (None, _) => false,
                },
            )
            .map(|a| a.name.clone())
            .collect()
    }
}

/// Step 1. `people` holds the mapped users this run knows (every one in a whole
/// run; in `--mapped`, that user alone).
#[cfg(test)]
pub fn wanted(
    config: &ProjectConfig,
    categories: &Categories,
    state: &State,
    people: &BTreeMap<UcloudName, Person>,
    scope: &Scope,
) -> Wanted {
    wanted_with(
        config,
        categories,
        state,
        people,
        scope,
        *scope == Scope::All,
    )
}

/// [`wanted`], removals only when `exclusive` (a whole run that knows every
/// mapping for sure).
pub fn wanted_with(
    config: &ProjectConfig,
    categories: &Categories,
    state: &State,
    people: &BTreeMap<UcloudName, Person>,
    scope: &Scope,
    exclusive: bool,
) -> Wanted {
    let mut w = Wanted::default();
    // Names handed out in this run: two owners never get one name.
    let mut taken: BTreeMap<String, (AccountOwner, String)> = BTreeMap::new();
    let mut claim = |w: &mut Wanted, name: &str, owner: &AccountOwner, category: &str| {
        let mine = (owner.clone(), category.to_string());
        if let Some(rec) = state.accounts.get(name) {
            if (rec.owner.clone(), rec.category.clone().unwrap_or_default()) != mine {
                w.refusals.push((
                    format!("account {name}"),
                    format!(
                        "the name is recorded for {}, not {}",
                        who(&rec.owner, rec.category.as_deref()),
                        who(owner, Some(category))
                    ),
                ));
                return false;
            }
        }
        match taken.get(name) {
            Some(other) if *other != mine => {
                w.refusals.push((
                    format!("account {name}"),
                    format!(
                        "{} and {} both make this name",
                        who(&other.0, Some(&other.1)),
                        who(owner, Some(category))
                    ),
                ));
                false
            }
            _ => {
                taken.insert(name.to_string(), mine);
                true
            }
        }
    };
    for (id, project) in &state.projects {
        let wallets: Vec<(&str, &Wallet)> = state.project_wallets(id).collect();
        if wallets.is_empty() {
            continue; // no allocation here (yet)
        }
        let members: Vec<String> = project
            .members
            .iter()
            .filter_map(|m| people.get(&m.username))
            .map(|p| p.local.as_str().to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Scope::One(_) = scope {
            if members.is_empty() {
                continue; // not a project of this user's
            }
        }
        let Some(group) = group_name(&config.prefix, id) else {
            w.refusals.push((
                format!("project {id}"),
                "its id has no letters or digits to name a group after".into(),
            ));
            continue;
        };
        if let Some(rec) = state.groups.get(&group) {
            if rec.project != *id {
                w.refusals.push((
                    format!("project {id}"),
                    format!(
                        "its group name {group} is recorded for project {}",
                        rec.project
                    ),
                ));
                continue;
            }
        }
        let managers: Vec<String> = project
            .members
            .iter()
            .filter(|m| matches!(m.role, crate::state::Role::Pi | crate::state::Role::Admin))
            .filter_map(|m| people.get(&m.username))
            .map(|p| p.local.as_str().to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let entry = w.here.entry(id.clone()).or_default();
        entry.extend(members.iter().cloned());
        let left = wallets.iter().all(|(_, w)| w.quota <= 0);
        let owner = AccountOwner::Project(id.clone());
        let mut accounts = Vec::new();
        for (category, wallet) in wallets {
            let Some(c) = categories.get(category).filter(|c| c.compute) else {
                continue;
            };
            let name = match project_account(&group, category) {
                Ok(n) => n,
                Err(why) => {
                    w.refusals.push((format!("project {id}"), why));
                    continue;
                }
            };
            if !claim(&mut w, &name, &owner, category) {
                continue;
            }
            accounts.push(WantedAccount {
                name,
                owner: owner.clone(),
                category: category.to_string(),
                users: if left { Vec::new() } else { members.clone() },
                exclusive,
                wallet: Some(*wallet),
                locked: wallet.locked || left,
                minutes: c.minutes,
                create: !left && !members.is_empty(),
                coordinators: Some(if left { Vec::new() } else { managers.clone() }),
            });
        }
        w.projects.push(WantedProject {
            id: id.clone(),
            group,
            members,
            exclusive,
            left,
            accounts,
        });
    }
    if config.slurm_personal_accounts {
        for ((owner, category), wallet) in &state.wallets {
            let Owner::User(user) = owner else { continue };
            let (Some(person), Some(c)) = (people.get(user), categories.get(category)) else {
                continue;
            };
            if !c.compute {
                continue;
            }
            let name = match personal_account(&config.prefix, person.uid, category) {
                Ok(n) => n,
                Err(why) => {
                    w.refusals.push((format!("user {user}"), why));
                    continue;
                }
            };
            let owner = AccountOwner::User {
                uid: person.uid,
                local: person.local.as_str().to_string(),
            };
            if !claim(&mut w, &name, &owner, category) {
                continue;
            }
            w.accounts.push(WantedAccount {
                name,
                owner,
                category: category.clone(),
                users: vec![person.local.as_str().to_string()],
                exclusive,
                wallet: Some(*wallet),
                locked: wallet.locked || wallet.quota <= 0,
                minutes: c.minutes,
                create: wallet.quota > 0,
                coordinators: None,
            });
        }
    }
    if exclusive {
        // Personal accounts nobody wants any more (the user is no longer mapped,
        // or personal accounts were turned off): locked, their association gone.
        for (name, rec) in &state.accounts {
            if matches!(rec.owner, AccountOwner::User { .. }) && !taken.contains_key(name) {
                w.accounts.push(WantedAccount {
                    name: name.clone(),
                    owner: rec.owner.clone(),
                    category: rec.category.clone().unwrap_or_default(),
                    users: Vec::new(),
                    exclusive: true,
                    wallet: None,
                    locked: true,
                    minutes: None,
                    create: false,
                    coordinators: None,
                });
            }
        }
    }
    if !config.slurm_default_account.is_empty() {
        let users = people
            .values()
            .map(|p| p.local.as_str().to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        w.default = Some((config.slurm_default_account.clone(), users));
    }
    w
}

fn who(owner: &AccountOwner, category: Option<&str>) -> String {
    let c = category.unwrap_or_default();
    match owner {
        AccountOwner::Project(id) => format!("project {id} ({c})"),
        AccountOwner::User { local, .. } => format!("user {local} ({c})"),
        AccountOwner::Default => "the default account".into(),
    }
}

/// What a project drive is found to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveCheck {
    Missing,
    Ok,
    Wrong(String),
}

pub struct Facts<'a> {
    pub config: &'a ProjectConfig,
    pub state: &'a State,
    /// NSS: the gid of a group name.
    pub group_gid: &'a dyn Fn(&str) -> Option<u32>,
    /// NSS: whether a gid has a group.
    pub gid_taken: &'a dyn Fn(u32) -> bool,
    pub slurm: &'a Slurm,
    /// The drive of a group (by name and gid).
    pub drive: &'a dyn Fn(&str, u32) -> DriveCheck,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Refuse {
        subject: String,
        why: String,
    },
    /// Said once: this account gets no TRES limit, and why.
    Note {
        account: String,
        why: String,
    },
    AddGroup {
        group: String,
        gid: u32,
        project: String,
    },
    AddMember {
        group: String,
        user: String,
    },
    RemoveMember {
        group: String,
        user: String,
    },
    AddAccount {
        account: String,
        owner: AccountOwner,
        category: Option<String>,
        description: String,
    },
    Associate {
        account: String,
        users: Vec<String>,
    },
    Dissociate {
        account: String,
        users: Vec<String>,
    },
    /// Slurm coordinators of the account (see [`WantedAccount::coordinators`]).
    Coordinate {
        account: String,
        users: Vec<String>,
    },
    Uncoordinate {
        account: String,
        users: Vec<String>,
    },
    /// A member back in an account whose association was blocked while it
    /// could not be removed.
    Unblock {
        account: String,
        user: String,
    },
    /// `settings` empty: nothing to change in Slurm, only the record.
    SetLimits {
        account: String,
        settings: Vec<String>,
        record: LimitRec,
    },
    MakeDrive {
        group: String,
        gid: u32,
        path: String,
    },
}

/// The limit that lets an account use what is left of its allocation on top of
/// what it has used: `used + max(quota - usage, 0) * minutes`, without overflow
/// and at most i64::MAX (what sacctmgr stores).
pub fn cpu_limit(used: u64, wallet: &Wallet, minutes: u64) -> u64 {
    let left = wallet.quota.saturating_sub(wallet.usage).max(0) as u64;
    used.saturating_add(left.saturating_mul(minutes))
        .min(i64::MAX as u64)
}

/// Step 2.
pub fn plan(wanted: &Wanted, f: &Facts) -> Vec<Action> {
    let mut refuse = Vec::new();
    let mut remove = Vec::new();
    let mut create = Vec::new();
    let mut add = Vec::new();
    let mut limits = Vec::new();
    let mut drives = Vec::new();
    for (subject, why) in &wanted.refusals {
        refuse.push(Action::Refuse {
            subject: subject.clone(),
            why: why.clone(),
        });
    }
    let mut handed: BTreeSet<u32> = BTreeSet::new();
    let recorded_gids: BTreeSet<u32> = f.state.groups.values().map(|g| g.gid).collect();
    for p in &wanted.projects {
        let rec = f.state.groups.get(&p.group);
        let found = (f.group_gid)(&p.group);
        let gid = match (rec, found) {
            (Some(rec), Some(gid)) if gid == rec.gid => Some(rec.gid),
            (Some(rec), Some(gid)) => {
                refuse.push(Action::Refuse {
                    subject: format!("group {}", p.group),
                    why: format!("it has gid {gid}, not the {} recorded: left alone", rec.gid),
                });
                None
            }
            // Recorded, then its creation failed or was cut short: again, same gid.
            (Some(rec), None) => {
                create.push(Action::AddGroup {
                    group: p.group.clone(),
                    gid: rec.gid,
                    project: p.id.clone(),
                });
                Some(rec.gid)
            }
            (None, Some(_)) => {
                refuse.push(Action::Refuse {
                    subject: format!("group {}", p.group),
                    why: format!(
                        "project {}'s group exists but was not made by ucloud-project: it is never adopted",
                        p.id
                    ),
                });
                None
            }
            (None, None) if p.left || p.members.is_empty() => None,
            (None, None) => {
                let free = (f.config.gid_min..=f.config.gid_max).find(|g| {
                    !recorded_gids.contains(g) && !handed.contains(g) && !(f.gid_taken)(*g)
                });
                match free {
                    Some(gid) => {
                        handed.insert(gid);
                        create.push(Action::AddGroup {
                            group: p.group.clone(),
                            gid,
                            project: p.id.clone(),
                        });
                        Some(gid)
                    }
                    None => {
                        refuse.push(Action::Refuse {
                            subject: format!("group {}", p.group),
                            why: format!(
                                "no gid is free in project_gid_min..project_gid_max ({}..{})",
                                f.config.gid_min, f.config.gid_max
                            ),
                        });
                        None
                    }
                }
            }
        };
        if let Some(gid) = gid {
            // A project that left gains nobody, but a member who was removed, or is
            // no longer mapped, still goes: its membership is frozen at the last
            // state UCloud sent (the core sends no more once the allocations ended).
            let had: BTreeSet<String> = rec.map(|r| r.members.clone()).unwrap_or_default();
            let want: BTreeSet<String> = p.members.iter().cloned().collect();
            if p.exclusive {
                for user in had.difference(&want) {
                    remove.push(Action::RemoveMember {
                        group: p.group.clone(),
                        user: user.clone(),
                    });
                }
            }
            if !p.left {
                for user in want.difference(&had) {
                    add.push(Action::AddMember {
                        group: p.group.clone(),
                        user: user.clone(),
                    });
                }
            }
            if !f.config.base.is_empty() {
                match (f.drive)(&p.group, gid) {
                    DriveCheck::Ok => {}
                    DriveCheck::Missing if p.left => {}
                    DriveCheck::Missing => drives.push(Action::MakeDrive {
                        group: p.group.clone(),
                        gid,
                        path: format!("{}/{}", f.config.base, p.group),
                    }),
                    DriveCheck::Wrong(why) => refuse.push(Action::Refuse {
                        subject: format!("drive {}/{}", f.config.base, p.group),
                        why,
                    }),
                }
            }
        }
        for a in &p.accounts {
            account(
                a,
                f,
                &mut refuse,
                &mut remove,
                &mut create,
                &mut add,
                &mut limits,
            );
        }
    }
    for a in &wanted.accounts {
        account(
            a,
            f,
            &mut refuse,
            &mut remove,
            &mut create,
            &mut add,
            &mut limits,
        );
    }
    // The default account first: a user's first association is their Slurm
    // default account.
    let mut first_create = Vec::new();
    let mut first_add = Vec::new();
    if let Some((name, users)) = &wanted.default {
        let exists = f.slurm.accounts.contains(name);
        if !exists {
            match f.state.accounts.get(name) {
                Some(rec) if rec.owner != AccountOwner::Default => refuse.push(Action::Refuse {
                    subject: format!("account {name}"),
                    why: "slurm_default_account names an account recorded for a project or user"
                        .into(),
                }),
                _ => first_create.push(Action::AddAccount {
                    account: name.clone(),
                    owner: AccountOwner::Default,
                    category: None,
                    description: "ucloud default".into(),
                }),
            }
        }
        let have = f.slurm.assocs.get(name).map(|a| &a.users);
        let missing: Vec<String> = users
            .iter()
            .filter(|u| !have.is_some_and(|h| h.contains_key(*u)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            first_add.push(Action::Associate {
                account: name.clone(),
                users: missing,
            });
        }
    }
    let mut all = refuse;
    all.extend(remove);
    all.extend(first_create);
    all.extend(create);
    all.extend(first_add);
    all.extend(add);
    all.extend(limits);
    all.extend(drives);
    all
}

fn account(
    a: &WantedAccount,
    f: &Facts,
    refuse: &mut Vec<Action>,
    remove: &mut Vec<Action>,
    create: &mut Vec<Action>,
    add: &mut Vec<Action>,
    limits: &mut Vec<Action>,
) {
    let rec = f.state.accounts.get(&a.name);
    let exists = f.slurm.accounts.contains(&a.name);
    let empty = Default::default();
    let current = f.slurm.assocs.get(&a.name).unwrap_or(&empty);
    let fresh = match (rec, exists) {
        (None, true) => {
            refuse.push(Action::Refuse {
                subject: format!("account {}", a.name),
                why: "the Slurm account exists but was not made by ucloud-project: it is never adopted".into(),
            });
            return;
        }
        (_, false) if !a.create => return,
        (_, false) => {
            let description = match &a.owner {
                AccountOwner::Project(id) => format!("ucloud project {id}"),
                AccountOwner::User { local, .. } => format!("ucloud user {local}"),
                AccountOwner::Default => "ucloud default".into(),
            };
            create.push(Action::AddAccount {
                account: a.name.clone(),
                owner: a.owner.clone(),
                category: Some(a.category.clone()),
                description,
            });
            true
        }
        (Some(_), true) => false,
    };
    let rec_blocked = rec.map(|r| r.blocked.clone()).unwrap_or_default();
    let want: BTreeSet<&String> = a.users.iter().collect();
    if a.exclusive && !fresh {
        let extra: Vec<String> = current
            .users
            .keys()
            .filter(|u| !want.contains(u))
            .cloned()
            .collect();
        if !extra.is_empty() {
            remove.push(Action::Dissociate {
                account: a.name.clone(),
                users: extra,
            });
        }
    }
    let missing: Vec<String> = a
        .users
        .iter()
        .filter(|u| fresh || !current.users.contains_key(*u))
        .cloned()
        .collect();
    if !missing.is_empty() {
        add.push(Action::Associate {
            account: a.name.clone(),
            users: missing,
        });
    }
    if let Some(wanted) = &a.coordinators {
        let empty = BTreeSet::new();
        let now = match fresh {
            true => &empty,
            false => f.slurm.coordinators.get(&a.name).unwrap_or(&empty),
        };
        let wanted: BTreeSet<&String> = wanted.iter().collect();
        // Removed first, so that a member who lost the role cannot act meanwhile.
        // Removals only in an exclusive run (never in `--mapped`, which sees one user).
        let gone: Vec<String> = now
            .iter()
            .filter(|u| a.exclusive && !wanted.contains(u))
            .cloned()
            .collect();
        if !gone.is_empty() {
            remove.push(Action::Uncoordinate {
                account: a.name.clone(),
                users: gone,
            });
        }
        let new: Vec<String> = wanted
            .iter()
            .filter(|u| !now.contains(**u))
            .map(|u| u.to_string())
            .collect();
        if !new.is_empty() {
            add.push(Action::Coordinate {
                account: a.name.clone(),
                users: new,
            });
        }
    }
    for u in &a.users {
        if rec_blocked.contains(u) && current.users.get(u) == Some(&Some(0)) {
            add.push(Action::Unblock {
                account: a.name.clone(),
                user: u.clone(),
            });
        }
    }
    let now = if fresh {
        Limits::default()
    } else {
        current.limits.clone()
    };
    let kept = rec.and_then(|r| r.limit);
    let cpu = match (a.minutes, a.wallet) {
        (Some(minutes), Some(wallet)) => match kept {
            Some(l) if l.wallet == wallet.updated && l.cpu_minutes.is_some() => l.cpu_minutes,
            _ => {
                let used = if fresh {
                    0
                } else {
                    f.slurm.used.get(&a.name).copied().unwrap_or(0)
                };
                Some(cpu_limit(used, &wallet, minutes))
            }
        },
        // Nothing wants it: whatever limit it has stays.
        (_, None) => now.cpu_minutes,
        (None, Some(_)) => {
            if !rec.is_some_and(|r| r.noted) {
                limits.push(Action::Note {
                    account: a.name.clone(),
                    why: format!(
                        "category {} is not one core per unit (a product whose price is not its CPU count, or no period): no GrpTRESMins; only a locked wallet is enforced",
                        a.category
                    ),
                });
            }
            None
        }
    };
    let mut settings = Vec::new();
    if cpu != now.cpu_minutes {
        settings.push(match cpu {
            Some(n) => format!("GrpTRESMins=cpu={n}"),
            None => "GrpTRESMins=cpu=-1".into(),
        });
    }
    let (lock_key, lock_now, other_key, other_now) = match f.config.locked {
        LockedLimit::Submit => ("GrpSubmitJobs", now.grp_submit, "GrpJobs", now.grp_jobs),
        LockedLimit::Start => ("GrpJobs", now.grp_jobs, "GrpSubmitJobs", now.grp_submit),
    };
    match (a.locked, lock_now) {
        (true, Some(0)) | (false, None) => {}
        (true, _) => settings.push(format!("{lock_key}=0")),
        (false, Some(_)) => settings.push(format!("{lock_key}=-1")),
    }
    // site.conf's slurm_locked may have changed since the other key was set.
    if other_now.is_some() {
        settings.push(format!("{other_key}=-1"));
    }
    let record = LimitRec {
        wallet: a
            .wallet
            .map(|w| w.updated)
            .or(kept.map(|k| k.wallet))
            .unwrap_or(0),
        cpu_minutes: cpu,
        locked: a.locked,
    };
    if !settings.is_empty() || kept != Some(record) {
        limits.push(Action::SetLimits {
            account: a.name.clone(),
            settings,
            record,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::Assocs;
    use crate::state::{AccountRec, GroupRec, Member, Project, Role};

    pub fn config() -> ProjectConfig {
        ProjectConfig {
            prefix: "ucp-".into(),
            gid_min: 200000,
            gid_max: 200009,
            base: "/srv/projects".into(),
            group_hook: String::new(),
            slurm_default_account: "ucloud".into(),
            slurm_personal_accounts: true,
            locked: LockedLimit::Submit,
        }
    }

    fn categories() -> Categories {
        [
            (
                "cpu".to_string(),
                Category {
                    compute: true,
                    minutes: Some(60),
                },
            ),
            (
                "gpu".to_string(),
                Category {
                    compute: true,
                    minutes: None,
                },
            ),
            (
                "storage".to_string(),
                Category {
                    compute: false,
                    minutes: None,
                },
            ),
        ]
        .into()
    }

    const P1: &str = "5d3c7a6e-2f4b-4c1d-9e8f-0a1b2c3d4e5f";

    fn name(s: &str) -> UcloudName {
        UcloudName::new(s).unwrap()
    }

    fn people(list: &[(&str, &str, u32)]) -> BTreeMap<UcloudName, Person> {
        list.iter()
            .map(|(u, l, uid)| {
                (
                    name(u),
                    Person {
                        local: LocalName::new(l).unwrap(),
                        uid: *uid,
                    },
                )
            })
            .collect()
    }

    fn state_with(id: &str, members: &[&str], quota: i64) -> State {
        let mut s = State::default();
        s.projects.insert(
            id.into(),
            Project {
                title: "Physics".into(),
                members: members
                    .iter()
                    .map(|m| Member {
                        username: name(m),
                        role: Role::User,
                    })
                    .collect(),
                modified: 1,
                here: BTreeSet::new(),
            },
        );
        s.wallets.insert(
            (Owner::Project(id.into()), "cpu".into()),
            Wallet {
                quota,
                usage: 10,
                locked: false,
                updated: 100,
            },
        );
        s
    }

    struct World {
        groups: BTreeMap<String, u32>,
        slurm: Slurm,
        drive: DriveCheck,
    }

    impl World {
        fn new() -> World {
            World {
                groups: BTreeMap::new(),
                slurm: Slurm::default(),
                drive: DriveCheck::Missing,
            }
        }
        fn plan(&self, w: &Wanted, state: &State, config: &ProjectConfig) -> Vec<Action> {
            let groups = self.groups.clone();
            let taken: BTreeSet<u32> = groups.values().copied().collect();
            let drive = self.drive.clone();
            plan(
                w,
                &Facts {
                    config,
                    state,
                    group_gid: &|n| groups.get(n).copied(),
                    gid_taken: &|g| taken.contains(&g),
                    slurm: &self.slurm,
                    drive: &|_, _| drive.clone(),
                },
            )
        }
    }

    #[test]
    fn names_follow_the_id_and_refuse_what_slurm_would_not_take() {
        assert_eq!(group_name("ucp-", P1).unwrap(), "ucp-5d3c7a6e2f");
        assert_eq!(group_name("ucp-", "AB-cd").unwrap(), "ucp-abcd");
        assert_eq!(group_name("ucp-", "---"), None);
        assert_eq!(
            project_account("ucp-5d3c7a6e2f", "CPU").unwrap(),
            "ucp-5d3c7a6e2f_cpu"
        );
        for bad in [
            "a b",
            "x;rm -rf",
            "../x",
            "cpu.big",
            "ä",
            &"c".repeat(40),
            "$(id)",
        ] {
            assert!(project_account("ucp-5d3c7a6e2f", bad).is_err(), "{bad}");
        }
        assert_eq!(
            personal_account("ucp-", 1001, "cpu").unwrap(),
            "ucp-u1001_cpu"
        );
    }

    #[test]
    fn a_new_project_gets_its_group_accounts_members_limits_and_drive() {
        let c = config();
        let s = state_with(P1, &["Alice#1", "Bob#2", "Carol#3"], 100);
        let who = people(&[("Alice#1", "alice", 1001), ("Bob#2", "bob", 1002)]);
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        assert!(w.refusals.is_empty(), "{:?}", w.refusals);
        let mut world = World::new();
        world.groups.insert("taken".into(), 200000);
        let actions = world.plan(&w, &s, &c);
        let g = "ucp-5d3c7a6e2f".to_string();
        let a = "ucp-5d3c7a6e2f_cpu".to_string();
        let pair = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            actions,
            vec![
                Action::AddAccount {
                    account: "ucloud".into(),
                    owner: AccountOwner::Default,
                    category: None,
                    description: "ucloud default".into()
                },
                Action::AddGroup {
                    group: g.clone(),
                    gid: 200001,
                    project: P1.into()
                },
                Action::AddAccount {
                    account: a.clone(),
                    owner: AccountOwner::Project(P1.into()),
                    category: Some("cpu".into()),
                    description: format!("ucloud project {P1}")
                },
                Action::Associate {
                    account: "ucloud".into(),
                    users: pair(&["alice", "bob"])
                },
                Action::AddMember {
                    group: g.clone(),
                    user: "alice".into()
                },
                Action::AddMember {
                    group: g.clone(),
                    user: "bob".into()
                },
                Action::Associate {
                    account: a.clone(),
                    users: pair(&["alice", "bob"])
                },
                // 90 core-hours left, none used yet.
                Action::SetLimits {
                    account: a.clone(),
                    settings: vec!["GrpTRESMins=cpu=5400".into()],
                    record: LimitRec {
                        wallet: 100,
                        cpu_minutes: Some(5400),
                        locked: false
                    }
                },
                Action::MakeDrive {
                    group: g.clone(),
                    gid: 200001,
                    path: format!("/srv/projects/{g}")
                },
            ]
        );
        // Carol is not mapped here: her name is nowhere.
        assert!(!format!("{actions:?}").contains("Carol"));
    }

    fn recorded(state: &mut State, members: &[&str]) {
        state.groups.insert(
            "ucp-5d3c7a6e2f".into(),
            GroupRec {
                gid: 200001,
                project: P1.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                drive: true,
            },
        );
        state.accounts.insert(
            "ucp-5d3c7a6e2f_cpu".into(),
            AccountRec {
                owner: AccountOwner::Project(P1.into()),
                category: Some("cpu".into()),
                created: true,
                limit: Some(LimitRec {
                    wallet: 100,
                    cpu_minutes: Some(5400),
                    locked: false,
                }),
                noted: false,
                blocked: BTreeSet::new(),
            },
        );
    }

    fn in_slurm(world: &mut World, users: &[&str], limits: Limits) {
        world.groups.insert("ucp-5d3c7a6e2f".into(), 200001);
        world.slurm.accounts.insert("ucp-5d3c7a6e2f_cpu".into());
        world.slurm.accounts.insert("ucloud".into());
        world.slurm.assocs.insert(
            "ucp-5d3c7a6e2f_cpu".into(),
            Assocs {
                limits,
                users: users.iter().map(|u| (u.to_string(), None)).collect(),
            },
        );
        world.slurm.assocs.insert(
            "ucloud".into(),
            Assocs {
                limits: Limits::default(),
                users: users.iter().map(|u| (u.to_string(), None)).collect(),
            },
        );
        world.drive = DriveCheck::Ok;
    }

    #[test]
    fn a_member_removed_at_ucloud_loses_group_and_association() {
        let c = config();
        let mut s = state_with(P1, &["Alice#1"], 100);
        recorded(&mut s, &["alice", "bob"]);
        let who = people(&[("Alice#1", "alice", 1001), ("Bob#2", "bob", 1002)]);
        let mut world = World::new();
        in_slurm(
            &mut world,
            &["alice", "bob"],
            Limits {
                cpu_minutes: Some(5400),
                ..Default::default()
            },
        );
        world.slurm.assocs.insert(
            "ucloud".into(),
            Assocs {
                limits: Limits::default(),
                users: [("alice".into(), None), ("bob".into(), None)].into(),
            },
        );
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        let actions = world.plan(&w, &s, &c);
        assert_eq!(
            actions,
            vec![
                Action::RemoveMember {
                    group: "ucp-5d3c7a6e2f".into(),
                    user: "bob".into()
                },
                Action::Dissociate {
                    account: "ucp-5d3c7a6e2f_cpu".into(),
                    users: vec!["bob".into()]
                },
            ]
        );
        // In --mapped, nothing is ever removed.
        let w = wanted(
            &c,
            &categories(),
            &s,
            &people(&[("Alice#1", "alice", 1001)]),
            &Scope::One(name("Alice#1")),
        );
        assert!(world.plan(&w, &s, &c).is_empty());
        // Nor when the mappings could not all be read (NSS or the store failed):
        // Bob is not taken for unmapped.
        let w = wanted_with(
            &c,
            &categories(),
            &s,
            &people(&[("Alice#1", "alice", 1001)]),
            &Scope::All,
            false,
        );
        assert!(world.plan(&w, &s, &c).is_empty());
    }

    #[test]
    fn a_wallet_update_changes_the_limit_by_what_slurm_used_and_a_lock_stops_submission() {
        let c = config();
        let mut s = state_with(P1, &["Alice#1"], 100);
        recorded(&mut s, &["alice"]);
        s.wallets.insert(
            (Owner::Project(P1.into()), "cpu".into()),
            Wallet {
                quota: 200,
                usage: 150,
                locked: true,
                updated: 101,
            },
        );
        let who = people(&[("Alice#1", "alice", 1001)]);
        let mut world = World::new();
        in_slurm(
            &mut world,
            &["alice"],
            Limits {
                cpu_minutes: Some(5400),
                ..Default::default()
            },
        );
        world.slurm.used.insert("ucp-5d3c7a6e2f_cpu".into(), 700);
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        assert_eq!(w.needs_usage(&s), vec!["ucp-5d3c7a6e2f_cpu".to_string()]);
        let actions = world.plan(&w, &s, &c);
        let set = Action::SetLimits {
            account: "ucp-5d3c7a6e2f_cpu".into(),
            settings: vec!["GrpTRESMins=cpu=3700".into(), "GrpSubmitJobs=0".into()],
            record: LimitRec {
                wallet: 101,
                cpu_minutes: Some(3700),
                locked: true,
            },
        };
        assert_eq!(actions, vec![set.clone()]);
        // Once set, the next run changes nothing, whatever Slurm used meanwhile.
        let Action::SetLimits { record, .. } = set else {
            panic!()
        };
        s.accounts.get_mut("ucp-5d3c7a6e2f_cpu").unwrap().limit = Some(record);
        world
            .slurm
            .assocs
            .get_mut("ucp-5d3c7a6e2f_cpu")
            .unwrap()
            .limits = Limits {
            cpu_minutes: Some(3700),
            grp_submit: Some(0),
            grp_jobs: None,
        };
        world.slurm.used.insert("ucp-5d3c7a6e2f_cpu".into(), 900);
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        assert!(w.needs_usage(&s).is_empty());
        assert!(world.plan(&w, &s, &c).is_empty());
        // Unlocked: cleared. With slurm_locked = start, GrpJobs instead.
        s.wallets.insert(
            (Owner::Project(P1.into()), "cpu".into()),
            Wallet {
                quota: 200,
                usage: 150,
                locked: false,
                updated: 102,
            },
        );
        let mut start = config();
        start.locked = LockedLimit::Start;
        let w = wanted(&start, &categories(), &s, &who, &Scope::All);
        let actions = world.plan(&w, &s, &start);
        assert_eq!(
            actions,
            vec![Action::SetLimits {
                account: "ucp-5d3c7a6e2f_cpu".into(),
                settings: vec!["GrpTRESMins=cpu=3900".into(), "GrpSubmitJobs=-1".into()],
                record: LimitRec {
                    wallet: 102,
                    cpu_minutes: Some(3900),
                    locked: false
                },
            }]
        );
    }

    #[test]
    fn a_project_that_left_is_locked_and_loses_its_associations_but_keeps_its_group() {
        let c = config();
        let mut s = state_with(P1, &["Alice#1"], 0);
        recorded(&mut s, &["alice"]);
        let who = people(&[("Alice#1", "alice", 1001)]);
        let mut world = World::new();
        in_slurm(
            &mut world,
            &["alice"],
            Limits {
                cpu_minutes: Some(5400),
                ..Default::default()
            },
        );
        world.slurm.used.insert("ucp-5d3c7a6e2f_cpu".into(), 5000);
        s.accounts.get_mut("ucp-5d3c7a6e2f_cpu").unwrap().limit = Some(LimitRec {
            wallet: 100,
            cpu_minutes: Some(5400),
            locked: false,
        });
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        assert!(w.projects[0].left);
        let actions = world.plan(&w, &s, &c);
        assert_eq!(
            actions,
            vec![
                Action::Dissociate {
                    account: "ucp-5d3c7a6e2f_cpu".into(),
                    users: vec!["alice".into()]
                },
                Action::SetLimits {
                    account: "ucp-5d3c7a6e2f_cpu".into(),
                    settings: vec!["GrpSubmitJobs=0".into()],
                    record: LimitRec {
                        wallet: 100,
                        cpu_minutes: Some(5400),
                        locked: true
                    }
                },
            ]
        );
    }

    #[test]
    fn names_of_others_are_refused_never_adopted() {
        let c = config();
        // Another project's id makes the same group name.
        let mut s = state_with("5D3C7A6E-2F4Bxx", &["Alice#1"], 100);
        s.groups.insert(
            "ucp-5d3c7a6e2f".into(),
            GroupRec {
                gid: 200001,
                project: P1.into(),
                members: BTreeSet::new(),
                drive: false,
            },
        );
        let who = people(&[("Alice#1", "alice", 1001)]);
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        assert!(w.projects.is_empty());
        assert!(
            w.refusals[0].1.contains("recorded for project"),
            "{:?}",
            w.refusals
        );
        // A group and an account that exist but were never recorded.
        let s = state_with(P1, &["Alice#1"], 100);
        let mut world = World::new();
        world.groups.insert("ucp-5d3c7a6e2f".into(), 5000);
        world.slurm.accounts.insert("ucp-5d3c7a6e2f_cpu".into());
        world.slurm.accounts.insert("ucloud".into());
        world.slurm.assocs.insert(
            "ucloud".into(),
            Assocs {
                limits: Limits::default(),
                users: [("alice".into(), None)].into(),
            },
        );
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        let actions = world.plan(&w, &s, &c);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert!(
            actions.iter().all(|a| matches!(a, Action::Refuse { .. })),
            "{actions:?}"
        );
        // A category whose name cannot be an account, and another provider's
        // category never gets here (event.rs refuses it).
        let mut s = state_with(P1, &["Alice#1"], 100);
        let mut cats = categories();
        let long = "x".repeat(40);
        cats.insert(
            long.clone(),
            Category {
                compute: true,
                minutes: Some(1),
            },
        );
        s.wallets.insert(
            (Owner::Project(P1.into()), long),
            Wallet {
                quota: 1,
                usage: 0,
                locked: false,
                updated: 1,
            },
        );
        let w = wanted(&c, &cats, &s, &who, &Scope::All);
        assert_eq!(w.refusals.len(), 1);
        assert_eq!(w.projects[0].accounts.len(), 1);
    }

    #[test]
    fn a_blocked_member_who_returns_is_unblocked_and_one_still_there_is_retried() {
        let c = config();
        let mut s = state_with(P1, &["Alice#1"], 100);
        recorded(&mut s, &["alice"]);
        s.accounts.get_mut("ucp-5d3c7a6e2f_cpu").unwrap().blocked =
            ["alice".to_string(), "bob".to_string()].into();
        let who = people(&[("Alice#1", "alice", 1001)]);
        let mut world = World::new();
        in_slurm(
            &mut world,
            &["alice"],
            Limits {
                cpu_minutes: Some(5400),
                ..Default::default()
            },
        );
        let assocs = world.slurm.assocs.get_mut("ucp-5d3c7a6e2f_cpu").unwrap();
        assocs.users.insert("alice".into(), Some(0));
        assocs.users.insert("bob".into(), Some(0));
        world.slurm.assocs.insert(
            "ucloud".into(),
            Assocs {
                limits: Limits::default(),
                users: [("alice".into(), None)].into(),
            },
        );
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        assert_eq!(
            world.plan(&w, &s, &c),
            vec![
                Action::Dissociate {
                    account: "ucp-5d3c7a6e2f_cpu".into(),
                    users: vec!["bob".into()]
                },
                Action::Unblock {
                    account: "ucp-5d3c7a6e2f_cpu".into(),
                    user: "alice".into()
                },
            ]
        );
    }

    #[test]
    fn quotas_at_the_edges_never_overflow() {
        let w = |quota, usage| Wallet {
            quota,
            usage,
            locked: false,
            updated: 0,
        };
        assert_eq!(cpu_limit(0, &w(i64::MAX, 0), 1440), i64::MAX as u64);
        assert_eq!(cpu_limit(u64::MAX, &w(1, 0), 1), i64::MAX as u64);
        assert_eq!(cpu_limit(5, &w(i64::MAX, i64::MIN), 60), i64::MAX as u64);
        assert_eq!(cpu_limit(5, &w(-10, 0), 60), 5);
        assert_eq!(cpu_limit(5, &w(10, 20), 60), 5);
        assert_eq!(cpu_limit(5, &w(i64::MIN, i64::MAX), 60), 5);
        assert_eq!(cpu_limit(5, &w(10, -10), 60), 5 + 20 * 60);
    }

    #[test]
    fn a_category_without_a_core_unit_gets_a_note_once_and_no_limit() {
        let c = config();
        let mut s = state_with(P1, &["Alice#1"], 100);
        s.wallets.clear();
        s.wallets.insert(
            (Owner::Project(P1.into()), "gpu".into()),
            Wallet {
                quota: 5,
                usage: 0,
                locked: false,
                updated: 3,
            },
        );
        let who = people(&[("Alice#1", "alice", 1001)]);
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        let actions = World::new().plan(&w, &s, &c);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Note { account, .. } if account == "ucp-5d3c7a6e2f_gpu")));
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::SetLimits { settings, .. } if !settings.is_empty())),
            "{actions:?}"
        );
    }

    #[test]
    fn personal_accounts_follow_user_wallets_and_go_when_unmapped() {
        let c = config();
        let mut s = State::default();
        s.wallets.insert(
            (Owner::User(name("Alice#1")), "cpu".into()),
            Wallet {
                quota: 2,
                usage: 0,
                locked: false,
                updated: 4,
            },
        );
        let who = people(&[("Alice#1", "alice", 1001)]);
        let w = wanted(&c, &categories(), &s, &who, &Scope::One(name("Alice#1")));
        assert_eq!(w.accounts[0].name, "ucp-u1001_cpu");
        assert_eq!(w.default, Some(("ucloud".into(), vec!["alice".into()])));
        s.accounts.insert(
            "ucp-u1001_cpu".into(),
            AccountRec {
                owner: AccountOwner::User {
                    uid: 1001,
                    local: "alice".into(),
                },
                category: Some("cpu".into()),
                created: true,
                limit: None,
                noted: false,
                blocked: BTreeSet::new(),
            },
        );
        let w = wanted(&c, &categories(), &s, &BTreeMap::new(), &Scope::All);
        assert_eq!(w.accounts.len(), 1);
        assert!(
            w.accounts[0].users.is_empty()
                && w.accounts[0].locked
                && w.accounts[0].wallet.is_none()
        );
    }

    #[test]
    fn five_hundred_members_are_planned_quickly() {
        let c = config();
        let names: Vec<String> = (0..500).map(|i| format!("User{i}#1")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let s = state_with(P1, &refs, 100);
        let list: Vec<(String, String, u32)> = (0..500)
            .map(|i| (format!("User{i}#1"), format!("user{i}"), 2000 + i))
            .collect();
        let who: BTreeMap<UcloudName, Person> = list
            .iter()
            .map(|(u, l, uid)| {
                (
                    name(u),
                    Person {
                        local: LocalName::new(l).unwrap(),
                        uid: *uid,
                    },
                )
            })
            .collect();
        let started = std::time::Instant::now();
        let w = wanted(&c, &categories(), &s, &who, &Scope::All);
        let actions = World::new().plan(&w, &s, &c);
        let took = started.elapsed();
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::AddMember { .. }))
                .count(),
            500
        );
        // One association command per account, not one per member.
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::Associate { .. }))
                .count(),
            2
        );
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");
    }
}
