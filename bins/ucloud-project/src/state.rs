//! What ucloud-project knows and what it made (`projects/state.json`, root 0600):
//! the last state UCloud sent of each project and wallet, and the RECORDED list of
//! the groups and Slurm accounts it created. A group or account is only ever
//! changed when it is in this record, so the file is the module's claim on them:
//! losing it makes every one of them "exists but not recorded", refused until an
//! admin puts the file back. It is therefore parsed strictly, and a file that does
//! not parse stops the run instead of starting afresh.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use ucloud_wire::names::UcloudName;

/// A member's role in a UCloud project (`fndapi.ProjectRole`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Pi,
    Admin,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "PI" => Some(Role::Pi),
            "ADMIN" => Some(Role::Admin),
            "USER" => Some(Role::User),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pi => "PI",
            Role::Admin => "ADMIN",
            Role::User => "USER",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub username: UcloudName,
    pub role: Role,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Project {
    pub title: String,
    pub members: Vec<Member>,
    /// UCloud's `modifiedAt` of the state kept (ms).
    pub modified: i64,
    /// The members' local accounts as the last reconcile found them mapped here:
    /// what table.json lists, so that it can be written without reading every
    /// mapping again.
    pub here: BTreeSet<String>,
}

/// Who a wallet belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    User(UcloudName),
    Project(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wallet {
    pub quota: i64,
    pub usage: i64,
    pub locked: bool,
    /// UCloud's `updatedAt` of this state (ms).
    pub updated: i64,
}

/// A Unix group this program created (or is about to: a record is written
/// before the command that makes what it records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRec {
    pub gid: u32,
    pub project: String,
    /// The local accounts it added and has not removed since.
    pub members: BTreeSet<String>,
    /// Whether the project drive was found (or made) exactly as it must be.
    pub drive: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AccountOwner {
    Project(String),
    /// A personal account: the local account it is for.
    User {
        uid: u32,
        local: String,
    },
    /// site.conf's `slurm_default_account`.
    Default,
}

/// The limits last set on an account, and the wallet state they follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitRec {
    /// The wallet's `updatedAt` the limit was computed for.
    pub wallet: i64,
    /// `GrpTRESMins=cpu=`; None: no TRES limit.
    pub cpu_minutes: Option<u64>,
    pub locked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRec {
    pub owner: AccountOwner,
    /// The product category (None for the default account).
    pub category: Option<String>,
    /// Whether this program created it (the default account may be the site's own:
    /// then it only adds associations to it).
    pub created: bool,
    pub limit: Option<LimitRec>,
    /// Whether the audit log was told once that this account gets no TRES limit.
    pub noted: bool,
    /// Users whose association could not be removed (jobs still ran there):
    /// `MaxSubmitJobs=0` is set on it and its removal retried on every run.
    pub blocked: BTreeSet<String>,
}

/// Where the registration of a project drive with UCloud stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// UCloud was asked whether it has the drive (by its provider id).
    Asked,
    /// UCloud had none: the registration was queued.
    Sent,
}

/// A project drive's registration with UCloud, by group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveReg {
    /// UCloud's id of the drive, once its entry is in the drive table.
    pub id: Option<String>,
    pub pending: Option<Pending>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub projects: BTreeMap<String, Project>,
    pub wallets: BTreeMap<(Owner, String), Wallet>,
    pub groups: BTreeMap<String, GroupRec>,
    pub accounts: BTreeMap<String, AccountRec>,
    /// The project drives' registrations with UCloud, by group.
    pub drives: BTreeMap<String, DriveReg>,
    /// What the audit log was last told about a subject that keeps failing or
    /// being refused, so that the same news is not repeated every run.
    pub notes: BTreeMap<String, String>,
}

const VERSION: i64 = 1;

impl State {
    pub fn project_wallets<'a>(
        &'a self,
        id: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Wallet)> {
        self.wallets
            .iter()
            .filter_map(move |((owner, category), w)| match owner {
                Owner::Project(p) if p == id => Some((category.as_str(), w)),
                _ => None,
            })
    }

    pub fn to_json(&self) -> Value {
        let projects: Map<String, Value> = self
            .projects
            .iter()
            .map(|(id, p)| {
                let members: Vec<Value> = p
                    .members
                    .iter()
                    .map(|m| json!({"username": m.username.as_str(), "role": m.role.as_str()}))
                    .collect();
                (
                    id.clone(),
                    json!({"title": p.title, "members": members, "modifiedAt": p.modified,
                           "here": p.here}),
                )
            })
            .collect();
        let wallets: Vec<Value> = self
            .wallets
            .iter()
            .map(|((owner, category), w)| {
                json!({"owner": owner_json(owner), "category": category, "quota": w.quota,
                       "usage": w.usage, "locked": w.locked, "updatedAt": w.updated})
            })
            .collect();
        let groups: Map<String, Value> = self
            .groups
            .iter()
            .map(|(name, g)| {
                (
                    name.clone(),
                    json!({"gid": g.gid, "project": g.project, "members": g.members,
                           "drive": g.drive}),
                )
            })
            .collect();
        let accounts: Map<String, Value> = self
            .accounts
            .iter()
            .map(|(name, a)| {
                let owner = match &a.owner {
                    AccountOwner::Project(id) => json!({"type": "project", "projectId": id}),
                    AccountOwner::User { uid, local } => {
                        json!({"type": "user", "uid": uid, "local": local})
                    }
                    AccountOwner::Default => json!({"type": "default"}),
                };
                let limit = a.limit.map(|l| {
                    json!({"wallet": l.wallet, "cpuMinutes": l.cpu_minutes, "locked": l.locked})
                });
                (
                    name.clone(),
                    json!({"owner": owner, "category": a.category, "created": a.created,
                           "limit": limit, "noted": a.noted, "blocked": a.blocked}),
                )
            })
            .collect();
        let drives: Map<String, Value> = self
            .drives
            .iter()
            .map(|(group, d)| {
                let pending = d.pending.map(|p| match p {
                    Pending::Asked => "asked",
                    Pending::Sent => "sent",
                });
                (group.clone(), json!({"driveId": d.id, "pending": pending}))
            })
            .collect();
        json!({"version": VERSION, "projects": projects, "wallets": wallets, "groups": groups,
               "accounts": accounts, "drives": drives, "notes": self.notes})
    }

    pub fn from_json(v: &Value) -> Result<State, String> {
        if v["version"].as_i64() != Some(VERSION) {
            return Err(format!("not a version {VERSION} state"));
        }
        let mut state = State::default();
        for (id, p) in obj(&v["projects"], "projects")? {
            let at = |why: String| format!("project {id}: {why}");
            let mut members = Vec::new();
            for m in arr(&p["members"], "members").map_err(at)? {
                let username = UcloudName::new(str_of(&m["username"], "username").map_err(at)?)
                    .map_err(|e| at(e.to_string()))?;
                let role = Role::parse(str_of(&m["role"], "role").map_err(at)?)
                    .ok_or_else(|| at("an unknown role".into()))?;
                members.push(Member { username, role });
            }
            state.projects.insert(
                id.clone(),
                Project {
                    title: str_of(&p["title"], "title").map_err(at)?.to_string(),
                    members,
                    modified: int(&p["modifiedAt"], "modifiedAt").map_err(at)?,
                    here: strings(&p["here"], "here").map_err(at)?,
                },
            );
        }
        for w in arr(&v["wallets"], "wallets")? {
            let owner = owner_of(&w["owner"])?;
            let category = str_of(&w["category"], "category")?.to_string();
            let wallet = Wallet {
                quota: int(&w["quota"], "quota")?,
                usage: int(&w["usage"], "usage")?,
                locked: w["locked"].as_bool().ok_or("a wallet without locked")?,
                updated: int(&w["updatedAt"], "updatedAt")?,
            };
            state.wallets.insert((owner, category), wallet);
        }
        for (name, g) in obj(&v["groups"], "groups")? {
            let at = |why: String| format!("group {name}: {why}");
            let gid = g["gid"]
                .as_u64()
                .and_then(|g| u32::try_from(g).ok())
                .ok_or_else(|| at("no gid".into()))?;
            state.groups.insert(
                name.clone(),
                GroupRec {
                    gid,
                    project: str_of(&g["project"], "project").map_err(at)?.to_string(),
                    members: strings(&g["members"], "members").map_err(at)?,
                    drive: g["drive"].as_bool().unwrap_or(false),
                },
            );
        }
        for (name, a) in obj(&v["accounts"], "accounts")? {
            let at = |why: String| format!("account {name}: {why}");
            let o = &a["owner"];
            let owner = match o["type"].as_str() {
                Some("project") => AccountOwner::Project(
                    str_of(&o["projectId"], "projectId")
                        .map_err(at)?
                        .to_string(),
                ),
                Some("user") => AccountOwner::User {
                    uid: o["uid"]
                        .as_u64()
                        .and_then(|u| u32::try_from(u).ok())
                        .ok_or_else(|| at("no uid".into()))?,
                    local: str_of(&o["local"], "local").map_err(at)?.to_string(),
                },
                Some("default") => AccountOwner::Default,
                _ => return Err(at("an unknown owner".into())),
            };
            let limit = match &a["limit"] {
                Value::Null => None,
                l => Some(LimitRec {
                    wallet: int(&l["wallet"], "wallet").map_err(at)?,
                    cpu_minutes: match &l["cpuMinutes"] {
                        Value::Null => None,
                        n => Some(n.as_u64().ok_or_else(|| at("cpuMinutes".into()))?),
                    },
                    locked: l["locked"].as_bool().unwrap_or(false),
                }),
            };
            state.accounts.insert(
                name.clone(),
                AccountRec {
                    owner,
                    category: a["category"].as_str().map(String::from),
                    created: a["created"].as_bool().unwrap_or(true),
                    limit,
                    noted: a["noted"].as_bool().unwrap_or(false),
                    blocked: strings(&a["blocked"], "blocked").map_err(at)?,
                },
            );
        }
        // Absent in a state written before drives were registered.
        if !v["drives"].is_null() {
            for (group, d) in obj(&v["drives"], "drives")? {
                let at = |why: String| format!("drive of {group}: {why}");
                let id = match &d["driveId"] {
                    Value::Null => None,
                    id => Some(str_of(id, "driveId").map_err(at)?.to_string()),
                };
                let pending = match d["pending"].as_str() {
                    None if d["pending"].is_null() => None,
                    Some("asked") => Some(Pending::Asked),
                    Some("sent") => Some(Pending::Sent),
                    _ => return Err(at("pending is not \"asked\", \"sent\" or null".into())),
                };
                state.drives.insert(group.clone(), DriveReg { id, pending });
            }
        }
        if let Value::Object(notes) = &v["notes"] {
            for (k, n) in notes {
                state
                    .notes
                    .insert(k.clone(), n.as_str().unwrap_or_default().to_string());
            }
        }
        Ok(state)
    }
}

pub fn owner_json(owner: &Owner) -> Value {
    match owner {
        Owner::User(u) => json!({"type": "user", "username": u.as_str()}),
        Owner::Project(p) => json!({"type": "project", "projectId": p}),
    }
}

fn owner_of(v: &Value) -> Result<Owner, String> {
    match v["type"].as_str() {
        Some("user") => Ok(Owner::User(
            UcloudName::new(str_of(&v["username"], "username")?).map_err(|e| e.to_string())?,
        )),
        Some("project") => Ok(Owner::Project(
            str_of(&v["projectId"], "projectId")?.to_string(),
        )),
        _ => Err("a wallet owner that is neither a user nor a project".into()),
    }
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} is not an object"))
}

fn arr<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array().ok_or_else(|| format!("{what} is not a list"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("{what} is not a string"))
}

fn int(v: &Value, what: &str) -> Result<i64, String> {
    v.as_i64()
        .ok_or_else(|| format!("{what} is not a whole number"))
}

fn strings(v: &Value, what: &str) -> Result<BTreeSet<String>, String> {
    match v {
        Value::Null => Ok(BTreeSet::new()),
        _ => arr(v, what)?
            .iter()
            .map(|s| str_of(s, what).map(String::from))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_junk_is_refused() {
        let mut s = State::default();
        let alice = UcloudName::new("Alice#1").unwrap();
        s.projects.insert(
            "p1".into(),
            Project {
                title: "T".into(),
                members: vec![Member {
                    username: alice.clone(),
                    role: Role::Pi,
                }],
                modified: 5,
                here: ["alice".to_string()].into(),
            },
        );
        let w = Wallet {
            quota: i64::MAX,
            usage: -3,
            locked: true,
            updated: 9,
        };
        s.wallets
            .insert((Owner::Project("p1".into()), "cpu".into()), w);
        s.wallets.insert((Owner::User(alice), "cpu".into()), w);
        s.groups.insert(
            "ucp-p1".into(),
            GroupRec {
                gid: 200000,
                project: "p1".into(),
                members: ["alice".to_string()].into(),
                drive: true,
            },
        );
        s.accounts.insert(
            "ucp-p1_cpu".into(),
            AccountRec {
                owner: AccountOwner::Project("p1".into()),
                category: Some("cpu".into()),
                created: true,
                limit: Some(LimitRec {
                    wallet: 9,
                    cpu_minutes: Some(u64::MAX >> 1),
                    locked: false,
                }),
                noted: false,
                blocked: ["bob".to_string()].into(),
            },
        );
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
                noted: true,
                blocked: BTreeSet::new(),
            },
        );
        s.notes.insert("x".into(), "y".into());
        s.drives.insert(
            "ucp-p1".into(),
            DriveReg {
                id: Some("23".into()),
                pending: None,
            },
        );
        s.drives.insert(
            "ucp-p2".into(),
            DriveReg {
                id: None,
                pending: Some(Pending::Sent),
            },
        );
        let back = State::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        for bad in [
            json!({}),
            json!({"version": 2}),
            json!({"version": 1, "projects": [], "wallets": [], "groups": {}, "accounts": {}}),
            json!({"version": 1, "projects": {}, "wallets": [{"owner": {"type": "x"}}], "groups": {}, "accounts": {}}),
            json!({"version": 1, "projects": {}, "wallets": [], "groups": {"g": {"gid": -1}}, "accounts": {}}),
            json!({"version": 1, "projects": {}, "wallets": [], "groups": {}, "accounts": {"a": {"owner": {"type": "root"}}}}),
            json!({"version": 1, "projects": {}, "wallets": [], "groups": {}, "accounts": {}, "drives": []}),
            json!({"version": 1, "projects": {}, "wallets": [], "groups": {}, "accounts": {}, "drives": {"g": {"driveId": 23}}}),
            json!({"version": 1, "projects": {}, "wallets": [], "groups": {}, "accounts": {}, "drives": {"g": {"pending": "later"}}}),
        ] {
            assert!(State::from_json(&bad).is_err(), "{bad}");
        }
    }
}
