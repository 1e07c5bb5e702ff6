//! The inbox's event files, read as untrusted input (anyone in the sender's group
//! can write one) and folded into the state. Events are states, not changes: a
//! later one replaces an earlier one, a replayed one changes nothing, and one older
//! than what is kept (by UCloud's `modifiedAt` / `updatedAt`) is refused.
//! Nothing here decides anything about this site: names of local accounts come
//! from the mapping store only, later (plan.rs).

use crate::plan::Categories;
use crate::state::{Member, Owner, Project, Role, State, Wallet};
use serde_json::Value;
use std::collections::BTreeSet;
use ucloud_wire::names::UcloudName;

/// More members than any project has; a file claiming more is refused.
pub const MAX_MEMBERS: usize = 100_000;
const MAX_TITLE: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Project {
        id: String,
        project: Project,
    },
    Wallet {
        owner: Owner,
        category: String,
        wallet: Wallet,
        /// The owning project as the stream last sent it, with its id.
        project: Option<(String, Project)>,
    },
    /// The registry mapped this user: nothing to fold, but a reason to run.
    Mapped(UcloudName),
}

/// A UCloud project id as this module accepts it: 1 to 64 of `[A-Za-z0-9_-]`
/// (UCloud's are UUIDs). It becomes part of a group name only through
/// [`crate::plan::group_name`], and never part of a path or a command otherwise.
pub fn valid_project_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `fndapi.Project`: its id, `specification.title` and `status.members`.
pub fn project_of(v: &Value) -> Result<(String, Project), String> {
    let id = v["id"].as_str().ok_or("a project without an id")?;
    if !valid_project_id(id) {
        return Err(format!(
            "project id {:?} is not 1 to 64 of A-Z a-z 0-9 _ -",
            clip(id)
        ));
    }
    let title = match &v["specification"]["title"] {
        Value::Null => "",
        Value::String(t) => t,
        _ => return Err(format!("project {id}: the title is not a string")),
    };
    if title.len() > MAX_TITLE || title.chars().any(char::is_control) {
        return Err(format!(
            "project {id}: the title is longer than {MAX_TITLE} bytes or holds control characters"
        ));
    }
    let listed = match &v["status"]["members"] {
        Value::Null => &[][..],
        Value::Array(m) => m.as_slice(),
        _ => return Err(format!("project {id}: status.members is not a list")),
    };
    if listed.len() > MAX_MEMBERS {
        return Err(format!("project {id}: more than {MAX_MEMBERS} members"));
    }
    let mut seen = BTreeSet::new();
    let mut members = Vec::new();
    for m in listed {
        let name = m["username"]
            .as_str()
            .ok_or_else(|| format!("project {id}: a member without a username"))?;
        let username = UcloudName::new(name).map_err(|e| format!("project {id}: {e}"))?;
        let role = m["role"].as_str().and_then(Role::parse).ok_or_else(|| {
            format!("project {id}: member {username} has no role PI, ADMIN or USER")
        })?;
        if seen.insert(username.clone()) {
            members.push(Member { username, role });
        }
    }
    Ok((
        id.to_string(),
        Project {
            title: title.to_string(),
            members,
            modified: 0,
            here: BTreeSet::new(),
        },
    ))
}

/// One event file's JSON. `provider` is this site's; `categories` the product
/// categories it sells.
pub fn parse(v: &Value, provider: &str, categories: &Categories) -> Result<Event, String> {
    match v["type"].as_str() {
        Some("project") => {
            let (id, mut project) = project_of(&v["project"])?;
            project.modified = time(v, "modifiedAt")?;
            Ok(Event::Project { id, project })
        }
        Some("wallet") => {
            let o = &v["owner"];
            let owner = match o["type"].as_str() {
                Some("user") => Owner::User(
                    UcloudName::new(
                        o["username"]
                            .as_str()
                            .ok_or("a user owner without a username")?,
                    )
                    .map_err(|e| e.to_string())?,
                ),
                Some("project") => {
                    let id = o["projectId"]
                        .as_str()
                        .ok_or("a project owner without a projectId")?;
                    if !valid_project_id(id) {
                        return Err(format!(
                            "project id {:?} is not 1 to 64 of A-Z a-z 0-9 _ -",
                            clip(id)
                        ));
                    }
                    Owner::Project(id.to_string())
                }
                _ => return Err("a wallet whose owner is neither a user nor a project".into()),
            };
            let c = &v["category"];
            let name = c["name"]
                .as_str()
                .ok_or("a wallet without a category name")?;
            let from = c["provider"].as_str().unwrap_or_default();
            if from != provider {
                return Err(format!(
                    "a wallet of provider {:?}, not this site's ({provider})",
                    clip(from)
                ));
            }
            if !categories.contains_key(name) {
                return Err(format!(
                    "a wallet of category {:?}, which this site does not sell",
                    clip(name)
                ));
            }
            let number = |key: &str| {
                v[key]
                    .as_i64()
                    .ok_or_else(|| format!("the wallet's {key} is not a whole number"))
            };
            let wallet = Wallet {
                quota: number("quota")?,
                usage: number("usage")?,
                locked: v["locked"]
                    .as_bool()
                    .ok_or("the wallet's locked is not true or false")?,
                updated: time(v, "updatedAt")?,
            };
            let project = match &v["project"] {
                Value::Null => None,
                p => {
                    let (id, mut project) = project_of(p)?;
                    if owner != Owner::Project(id.clone()) {
                        return Err(format!("a wallet that carries project {id}, not its owner"));
                    }
                    project.modified = p["modifiedAt"].as_i64().unwrap_or(0);
                    Some((id, project))
                }
            };
            Ok(Event::Wallet {
                owner,
                category: name.to_string(),
                wallet,
                project,
            })
        }
        Some("mapped") => Ok(Event::Mapped(
            UcloudName::new(v["username"].as_str().ok_or("a nudge without a username")?)
                .map_err(|e| e.to_string())?,
        )),
        Some(other) => Err(format!("an event of unknown type {:?}", clip(other))),
        None => Err("an event without a type".into()),
    }
}

/// How far ahead of this host's clock a time may be: UCloud's clock may run a
/// little ahead; a time far in the future would freeze the state it stamps (every
/// later, real change would look older), so it is refused.
const MAX_AHEAD_MS: i64 = 10 * 60 * 1000;

fn time(v: &Value, key: &str) -> Result<i64, String> {
    let t = v[key]
        .as_i64()
        .ok_or_else(|| format!("{key} is not a time in milliseconds"))?;
    let now = ucloud_wire::now_ms() as i64;
    if t > now.saturating_add(MAX_AHEAD_MS) {
        return Err(format!(
            "{key} {t} is more than 10 minutes ahead of this host's clock ({now})"
        ));
    }
    Ok(t)
}

/// At most 64 characters of a string from a file, for a message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Folds one event into the state; an error says why it changed nothing.
pub fn fold(state: &mut State, event: Event) -> Result<(), String> {
    match event {
        Event::Project { id, project } => put_project(state, id, project),
        Event::Wallet {
            owner,
            category,
            wallet,
            project,
        } => {
            if let Some((id, p)) = project {
                // The stream sends a project before its wallets; the copy in a
                // wallet only fills in a project not known yet.
                if !state.projects.contains_key(&id) {
                    put_project(state, id, p)?;
                }
            }
            let key = (owner, category);
            if let Some(kept) = state.wallets.get(&key) {
                if kept.updated > wallet.updated {
                    return Err(format!(
                        "an older wallet state (updatedAt {} before the {} kept)",
                        wallet.updated, kept.updated
                    ));
                }
            }
            state.wallets.insert(key, wallet);
            Ok(())
        }
        Event::Mapped(_) => Ok(()),
    }
}

fn put_project(state: &mut State, id: String, mut project: Project) -> Result<(), String> {
    if let Some(kept) = state.projects.get(&id) {
        if kept.modified > project.modified {
            return Err(format!(
                "an older state of project {id} (modifiedAt {} before the {} kept)",
                project.modified, kept.modified
            ));
        }
        project.here = kept.here.clone();
    }
    state.projects.insert(id, project);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_far_in_the_future_is_refused() {
        let soon = ucloud_wire::now_ms() as i64 + 60_000;
        assert_eq!(time(&serde_json::json!({"t": soon}), "t"), Ok(soon));
        let far = ucloud_wire::now_ms() as i64 + 11 * 60_000;
        assert!(time(&serde_json::json!({"t": far}), "t").is_err());
        assert!(time(&serde_json::json!({"t": i64::MAX}), "t").is_err());
        assert!(time(&serde_json::json!({"t": "1"}), "t").is_err());
    }
    use crate::plan::Category;
    use serde_json::json;

    fn categories() -> Categories {
        [(
            "cpu".to_string(),
            Category {
                compute: true,
                minutes: Some(60),
            },
        )]
        .into()
    }

    fn project_event(id: &str, at: i64, members: Value) -> Value {
        json!({"type": "project", "modifiedAt": at, "project": {"id": id,
               "specification": {"title": "Physics"}, "status": {"members": members}}})
    }

    #[test]
    fn events_of_every_kind_parse() {
        let c = categories();
        let p = parse(
            &project_event(
                "p1",
                5,
                json!([{"username": "A#1", "role": "PI"}, {"username": "A#1", "role": "USER"}]),
            ),
            "hpc",
            &c,
        )
        .unwrap();
        let Event::Project { id, project } = p else {
            panic!()
        };
        assert_eq!(
            (id.as_str(), project.modified, project.members.len()),
            ("p1", 5, 1)
        );
        let w = json!({"type": "wallet", "owner": {"type": "user", "username": "A#1"},
                       "category": {"name": "cpu", "provider": "hpc"}, "quota": i64::MAX,
                       "usage": -5, "locked": false, "updatedAt": 7, "project": null});
        assert!(matches!(
            parse(&w, "hpc", &c).unwrap(),
            Event::Wallet {
                wallet: Wallet {
                    quota: i64::MAX,
                    usage: -5,
                    ..
                },
                ..
            }
        ));
        assert!(matches!(
            parse(&json!({"type": "mapped", "username": "A#1"}), "hpc", &c).unwrap(),
            Event::Mapped(_)
        ));
    }

    #[test]
    fn hostile_events_are_refused() {
        let c = categories();
        let wallet = |patch: Value| {
            let mut w = json!({"type": "wallet", "owner": {"type": "project", "projectId": "p1"},
                               "category": {"name": "cpu", "provider": "hpc"}, "quota": 10,
                               "usage": 0, "locked": false, "updatedAt": 7});
            for (k, v) in patch.as_object().unwrap() {
                w[k] = v.clone();
            }
            w
        };
        let cases = [
            json!({}),
            json!({"type": "grant"}),
            json!({"type": 3}),
            project_event("../../etc", 1, json!([])),
            project_event("p1;rm -rf /", 1, json!([])),
            project_event("", 1, json!([])),
            project_event(&"a".repeat(65), 1, json!([])),
            project_event("p1", 1, json!("all")),
            project_event("p1", 1, json!([{"username": "A#1", "role": "ROOT"}])),
            project_event("p1", 1, json!([{"username": "A\u{0}", "role": "PI"}])),
            project_event("p1", 1, json!([{"role": "PI"}])),
            json!({"type": "project", "project": {"id": "p1"}}),
            json!({"type": "project", "modifiedAt": 1, "project": {"id": "p1", "specification": {"title": "a\nb"}}}),
            wallet(json!({"category": {"name": "cpu", "provider": "other"}})),
            wallet(json!({"category": {"name": "gpu", "provider": "hpc"}})),
            wallet(json!({"category": {"name": "x".repeat(40), "provider": "hpc"}})),
            wallet(json!({"quota": 1.5})),
            wallet(json!({"quota": u64::MAX})),
            wallet(json!({"usage": "10"})),
            wallet(json!({"locked": "no"})),
            wallet(json!({"owner": {"type": "project", "projectId": "a/b"}})),
            wallet(json!({"owner": {"type": "group", "id": "x"}})),
            wallet(json!({"project": {"id": "p2"}})),
            json!({"type": "mapped"}),
            json!({"type": "mapped", "username": ""}),
        ];
        for bad in cases {
            assert!(parse(&bad, "hpc", &c).is_err(), "{bad}");
        }
        let many: Vec<Value> = (0..=MAX_MEMBERS)
            .map(|i| json!({"username": format!("U#{i}"), "role": "USER"}))
            .collect();
        assert!(parse(&project_event("p1", 1, Value::Array(many)), "hpc", &c).is_err());
    }

    #[test]
    fn an_older_state_never_replaces_a_newer_one() {
        let c = categories();
        let mut s = State::default();
        let ev = |at, who: &str| {
            parse(
                &project_event("p1", at, json!([{"username": who, "role": "PI"}])),
                "hpc",
                &c,
            )
            .unwrap()
        };
        fold(&mut s, ev(10, "New#1")).unwrap();
        s.projects
            .get_mut("p1")
            .unwrap()
            .here
            .insert("newone".into());
        assert!(fold(&mut s, ev(9, "Old#1")).is_err());
        assert_eq!(s.projects["p1"].members[0].username.as_str(), "New#1");
        // A replay of the same state is normal.
        fold(&mut s, ev(10, "New#1")).unwrap();
        assert!(
            s.projects["p1"].here.contains("newone"),
            "kept across updates"
        );
        let w = |at, quota| {
            parse(
                &json!({"type": "wallet", "owner": {"type": "project", "projectId": "p1"},
                          "category": {"name": "cpu", "provider": "hpc"}, "quota": quota,
                          "usage": 0, "locked": false, "updatedAt": at}),
                "hpc",
                &c,
            )
            .unwrap()
        };
        fold(&mut s, w(20, 100)).unwrap();
        assert!(fold(&mut s, w(19, 5)).is_err());
        let key = (Owner::Project("p1".into()), "cpu".to_string());
        assert_eq!(s.wallets[&key].quota, 100);
        fold(&mut s, w(21, 5)).unwrap();
        assert_eq!(s.wallets[&key].quota, 5);
    }
}
