//! ucloud-project's table (`table.json` in the projects directory): which Slurm
//! account a job is charged to and where a project job's folder is. The table is
//! root's, but it is built from what UCloud's notification stream said, so every
//! value read from it is held to the shape it is used in: account names to the
//! plain names a `#SBATCH` line carries unquoted, the drive to a plain absolute
//! path. Only the entries a job needs are read: a bad entry of another project
//! stops nobody else's jobs.
//!
//! ```text
//! {"projects":{"<id>":{"title","group","gid","drive":"/srv/projects/g"|null,
//!    "accounts":{"<category>":"<account>"},"members":["<local user>",...]}},
//!  "users":{"<local user>":{"accounts":{"<category>":"<account>"}}}}
//! ```

use crate::plain::{is_plain_base, is_slurm_name, tojson, Refusal};
use serde_json::Value;

/// What the owner of a job changes about it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Workspace {
    /// `--account`, in place of the product's own `slurm.account`.
    pub account: Option<String>,
    /// The project drive the job folder goes in; None: the caller's home drive.
    pub drive: Option<String>,
    /// The job folder is in the project's drive (a project job of a project with
    /// a drive): the folder, the script and the job's output are made readable by
    /// the project's members (umask 027). A project without a drive puts the
    /// folder in the caller's home, private as a personal job's.
    pub shared: bool,
}

fn site_config(why: String) -> Refusal {
    Refusal {
        status: 500,
        code: "SITE_CONFIG",
        why: format!("the projects table: {why}"),
    }
}

/// `v[key]` when `v` is an object: None when absent or null; an error when `v`
/// has another shape than an object.
fn member<'v>(v: &'v Value, key: &str, what: &str) -> Result<Option<&'v Value>, Refusal> {
    match v {
        Value::Object(map) => Ok(map.get(key).filter(|v| !v.is_null())),
        _ => Err(site_config(format!("{what} is not an object"))),
    }
}

/// An account name of the table, checked to be a plain name that starts with a
/// letter or digit (the plugins pass it to squeue and sacct, never as an option).
fn account_name(v: &Value, what: &str) -> Result<String, Refusal> {
    match v {
        Value::String(s) if is_slurm_name(s) && s.as_bytes()[0].is_ascii_alphanumeric() => {
            Ok(s.clone())
        }
        other => Err(site_config(format!(
            "{what} is {}, not a plain Slurm account name",
            tojson(other)
        ))),
    }
}

/// The project a Job belongs to (`owner.project`, as the core sends it): None for
/// a personal job.
pub fn project_of(job: &Value) -> Result<Option<String>, String> {
    match job.get("owner").and_then(|o| o.get("project")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if p.is_empty() => Ok(None),
        Some(Value::String(p)) => Ok(Some(p.clone())),
        Some(other) => Err(format!(
            "owner.project is {}, not a project id",
            tojson(other)
        )),
    }
}

/// The workspace of a job of `project` (None: personal) for a product of
/// `category`, submitted by the local account `local`. `table` is None when the
/// site has no projects table.
pub fn workspace(
    table: Option<&Value>,
    project: Option<&str>,
    category: Option<&str>,
    local: &str,
) -> Result<Workspace, Refusal> {
    match project {
        Some(project) => project_workspace(table, project, category, local),
        None => personal_workspace(table, category, local),
    }
}

fn project_workspace(
    table: Option<&Value>,
    project: &str,
    category: Option<&str>,
    local: &str,
) -> Result<Workspace, Refusal> {
    let quoted = tojson(&Value::String(project.to_string()));
    let Some(table) = table else {
        return Err(Refusal {
            status: 400,
            code: "NO_PROJECTS",
            why: format!(
                "the job belongs to project {quoted}, and this site runs no project jobs \
                 (it has no projects table: ucloud-project(8) is not set up)"
            ),
        });
    };
    let entry = member(table, "projects", "the table")?
        .map(|projects| member(projects, project, "projects"))
        .transpose()?
        .flatten()
        .ok_or_else(|| Refusal {
            status: 403,
            code: "NOT_ON_SITE",
            why: format!("project {quoted} has no allocation or no members on this site yet"),
        })?;
    let what = format!("projects.{quoted}");
    let members = match member(entry, "members", &what)? {
        None => &[][..],
        Some(Value::Array(list)) => list.as_slice(),
        Some(_) => return Err(site_config(format!("{what}.members is not a list"))),
    };
    if !members.iter().any(|m| m.as_str() == Some(local)) {
        return Err(Refusal {
            status: 403,
            code: "NOT_A_MEMBER",
            why: format!(
                "your account {local} is not a member of project {quoted} on this site \
                 (a member UCloud added a moment ago is added here within one notification)"
            ),
        });
    }
    let no_allocation = || Refusal {
        status: 403,
        code: "NO_ALLOCATION",
        why: format!(
            "project {quoted} has no Slurm account for {} on this site \
             (it has no allocation of that category here)",
            category.map_or("this product's category".into(), |c| format!(
                "category {}",
                tojson(&Value::String(c.into()))
            ))
        ),
    };
    let category = category.ok_or_else(no_allocation)?;
    let account = member(entry, "accounts", &what)?
        .map(|accounts| member(accounts, category, &format!("{what}.accounts")))
        .transpose()?
        .flatten()
        .ok_or_else(no_allocation)?;
    let account = account_name(account, &format!("{what}.accounts.{category}"))?;
    let drive = match member(entry, "drive", &what)? {
        None => None,
        Some(Value::String(d)) if is_plain_base(d) => Some(d.clone()),
        Some(other) => {
            return Err(site_config(format!(
                "{what}.drive is {}, not a plain absolute path without . or ..",
                tojson(other)
            )))
        }
    };
    Ok(Workspace {
        account: Some(account),
        // Group-readable modes only where the group can reach them: in a home
        // drive they would widen nothing but the caller's own files.
        shared: drive.is_some(),
        drive,
    })
}

fn personal_workspace(
    table: Option<&Value>,
    category: Option<&str>,
    local: &str,
) -> Result<Workspace, Refusal> {
    let (Some(table), Some(category)) = (table, category) else {
        return Ok(Workspace::default());
    };
    let what = format!("users.{local}");
    let account = member(table, "users", "the table")?
        .map(|users| member(users, local, "users"))
        .transpose()?
        .flatten()
        .map(|user| member(user, "accounts", &what))
        .transpose()?
        .flatten()
        .map(|accounts| member(accounts, category, &format!("{what}.accounts")))
        .transpose()?
        .flatten()
        .map(|a| account_name(a, &format!("{what}.accounts.{category}")))
        .transpose()?;
    Ok(Workspace {
        account,
        ..Workspace::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> Value {
        json!({
            "projects": {
                "p-1": {"title": "Ocean", "group": "ucp-p1", "gid": 200001,
                        "drive": "/srv/projects/ucp-p1",
                        "accounts": {"cpu": "ucp-p1_cpu"},
                        "members": ["ann", "bob"]},
                "p-nodrive": {"group": "ucp-p2", "drive": null,
                        "accounts": {"cpu": "ucp-p2_cpu"}, "members": ["ann"]},
                "p-space": {"accounts": {"cpu": "ucp p3"}, "members": ["ann"]},
                "p-semi": {"accounts": {"cpu": "a;id"}, "members": ["ann"]},
                "p-dash": {"accounts": {"cpu": "-A"}, "members": ["ann"]},
                "p-dots": {"drive": "/srv/projects/../../etc", "accounts": {"cpu": "x"},
                        "members": ["ann"]},
                "p-rel": {"drive": "srv/p", "accounts": {"cpu": "x"}, "members": ["ann"]},
                "p-quote": {"drive": "/srv/p'x", "accounts": {"cpu": "x"}, "members": ["ann"]},
                "p-members": {"accounts": {"cpu": "x"}, "members": "ann"},
                "p-odd": "not an object"
            },
            "users": {
                "ann": {"accounts": {"cpu": "ucu1000_cpu"}},
                "eve": {"accounts": {"cpu": "$(id)"}},
                "odd": {"accounts": ["cpu"]}
            }
        })
    }

    fn ws(project: Option<&str>, category: &str, local: &str) -> Result<Workspace, Refusal> {
        workspace(Some(&table()), project, Some(category), local)
    }

    #[test]
    fn a_member_gets_the_projects_account_and_drive() {
        assert_eq!(
            ws(Some("p-1"), "cpu", "bob").unwrap(),
            Workspace {
                account: Some("ucp-p1_cpu".into()),
                drive: Some("/srv/projects/ucp-p1".into()),
                shared: true,
            }
        );
        // A project without a drive: the caller's home, private like a personal job.
        assert_eq!(
            ws(Some("p-nodrive"), "cpu", "ann").unwrap(),
            Workspace {
                account: Some("ucp-p2_cpu".into()),
                drive: None,
                shared: false,
            }
        );
    }

    #[test]
    fn outsiders_unknown_projects_and_missing_allocations_are_403s() {
        let cases = [
            (Some("p-1"), "cpu", "eve", "NOT_A_MEMBER"),
            (Some("p-1"), "cpu", "", "NOT_A_MEMBER"),
            (Some("p-nodrive"), "cpu", "bob", "NOT_A_MEMBER"),
            (Some("p-unknown"), "cpu", "ann", "NOT_ON_SITE"),
            (Some("projects"), "cpu", "ann", "NOT_ON_SITE"),
            (Some("p-1"), "gpu", "ann", "NO_ALLOCATION"),
        ];
        for (project, category, local, code) in cases {
            let r = ws(project, category, local).unwrap_err();
            assert_eq!(
                (r.status, r.code),
                (403, code),
                "{project:?} {local}: {}",
                r.why
            );
        }
        let r = workspace(Some(&table()), Some("p-1"), None, "ann").unwrap_err();
        assert_eq!(r.code, "NO_ALLOCATION");
        assert!(ws(Some("p-unknown"), "cpu", "ann")
            .unwrap_err()
            .why
            .contains("has no allocation or no members on this site yet"));
    }

    #[test]
    fn hostile_entries_are_the_sites_error_and_only_for_their_project() {
        for (project, says) in [
            ("p-space", "\"ucp p3\", not a plain Slurm account name"),
            ("p-semi", "\"a;id\""),
            ("p-dash", "\"-A\""),
            ("p-dots", "not a plain absolute path"),
            ("p-rel", "not a plain absolute path"),
            ("p-quote", "not a plain absolute path"),
            ("p-members", "members is not a list"),
            ("p-odd", "\"p-odd\" is not an object"),
        ] {
            let r = ws(Some(project), "cpu", "ann").unwrap_err();
            assert_eq!((r.status, r.code), (500, "SITE_CONFIG"), "{project}");
            assert!(r.why.contains(says), "{project}: {}", r.why);
        }
        // The same table serves the good project and personal jobs.
        assert!(ws(Some("p-1"), "cpu", "ann").is_ok());
        let r = ws(None, "cpu", "eve").unwrap_err();
        assert_eq!(r.code, "SITE_CONFIG");
        assert_eq!(ws(None, "cpu", "odd").unwrap_err().code, "SITE_CONFIG");
    }

    #[test]
    fn personal_jobs_take_the_personal_account_or_nothing() {
        assert_eq!(
            ws(None, "cpu", "ann").unwrap().account.as_deref(),
            Some("ucu1000_cpu")
        );
        assert_eq!(ws(None, "gpu", "ann").unwrap(), Workspace::default());
        assert_eq!(ws(None, "cpu", "bob").unwrap(), Workspace::default());
        assert_eq!(
            workspace(None, None, Some("cpu"), "ann").unwrap(),
            Workspace::default()
        );
        assert_eq!(
            workspace(Some(&json!({})), None, Some("cpu"), "ann").unwrap(),
            Workspace::default()
        );
        assert_eq!(
            workspace(Some(&json!([])), None, Some("cpu"), "ann")
                .unwrap_err()
                .code,
            "SITE_CONFIG"
        );
    }

    #[test]
    fn without_a_table_a_project_job_is_a_clear_400() {
        let r = workspace(None, Some("p-1"), Some("cpu"), "ann").unwrap_err();
        assert_eq!((r.status, r.code), (400, "NO_PROJECTS"));
        assert!(r.why.contains("\"p-1\""), "{}", r.why);
        for not_a_table in [json!("x"), json!(null), json!({"projects": []})] {
            let r = workspace(Some(&not_a_table), Some("p-1"), Some("cpu"), "ann");
            assert!(r.is_err(), "{not_a_table}");
        }
    }

    #[test]
    fn the_owner_project_is_text_or_nothing() {
        assert_eq!(project_of(&json!({})).unwrap(), None);
        assert_eq!(
            project_of(&json!({"owner": {"project": null}})).unwrap(),
            None
        );
        assert_eq!(
            project_of(&json!({"owner": {"project": ""}})).unwrap(),
            None
        );
        assert_eq!(
            project_of(&json!({"owner": {"createdBy": "a", "project": "p"}})).unwrap(),
            Some("p".into())
        );
        for bad in [json!(1), json!(["p"]), json!({"id": "p"}), json!(true)] {
            assert!(project_of(&json!({"owner": {"project": bad}})).is_err());
        }
    }
}
