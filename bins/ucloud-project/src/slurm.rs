//! What ucloud-project asks Slurm and how it reads the answers; the commands it
//! changes Slurm with. Only argv vectors: no shell ever sees a name.
//!
//! - `sacctmgr -nP show account where name=A,B format=Account`: which of the
//!   names exist;
//! - `sacctmgr -nP show assoc where accounts=A,B
//!   format=Account,User,GrpTRESMins,GrpSubmit,GrpJobs,MaxSubmit`: each account's
//!   own limits (its line without a user) and its users' associations;
//! - `scontrol -o show assoc_mgr accounts=A,B flags=assoc`: how many core-minutes
//!   each account has used, as slurmctld counts them against `GrpTRESMins`
//!   (`GrpTRESMins=cpu=LIMIT(USED)` on the account's own line). Chosen over
//!   sshare's `GrpTRESRaw` because it is the very number the limit is enforced
//!   against, printed beside the limit in force, for many accounts in one call.

use std::collections::{BTreeMap, BTreeSet};

/// Names per query: keeps every argv far below the kernel's limit.
pub const CHUNK: usize = 100;

/// An association's limits as sacctmgr shows them; None: not set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_minutes: Option<u64>,
    pub grp_submit: Option<i64>,
    pub grp_jobs: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assocs {
    /// The account's own association.
    pub limits: Limits,
    /// Each user's association and its `MaxSubmitJobs` (None: not set).
    pub users: BTreeMap<String, Option<i64>>,
}

/// What Slurm said about the accounts asked after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Slurm {
    pub accounts: BTreeSet<String>,
    pub assocs: BTreeMap<String, Assocs>,
    /// Core-minutes used so far, by account.
    pub used: BTreeMap<String, u64>,
    /// Each account's Slurm coordinators.
    pub coordinators: BTreeMap<String, BTreeSet<String>>,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

pub fn show_accounts(names: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-nP", "show", "account", "where"]);
    argv.push(format!("name={}", names.join(",")));
    argv.push("withcoord".into());
    argv.push("format=Account,Coordinators".into());
    argv
}

/// Makes `users` coordinators of `account`: they may then cancel, hold and change
/// the jobs of the account (what a project's PI and admins may do in UCloud).
pub fn add_coordinators(account: &str, users: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "add", "coordinator"]);
    argv.push(format!("account={account}"));
    argv.push(format!("names={}", users.join(",")));
    argv
}

pub fn remove_coordinators(account: &str, users: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "remove", "coordinator"]);
    argv.push(format!("account={account}"));
    argv.push(format!("names={}", users.join(",")));
    argv
}

pub fn show_assocs(names: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-nP", "show", "assoc", "where"]);
    argv.push(format!("accounts={}", names.join(",")));
    // Sub-accounts too: a coordinator (a project's PI or admin) could make one.
    argv.push("withsubaccounts".into());
    argv.push("format=Account,User,GrpTRESMins,GrpSubmit,GrpJobs,MaxSubmit".into());
    argv
}

pub fn show_usage(names: &[String]) -> Vec<String> {
    let mut argv = s(&["scontrol", "-o", "show", "assoc_mgr"]);
    argv.push(format!("accounts={}", names.join(",")));
    argv.push("flags=assoc".into());
    argv
}

pub fn add_account(name: &str, description: &str) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "add", "account", name]);
    argv.push(format!("Description={description}"));
    argv.push("Organization=ucloud".into());
    argv
}

pub fn add_users(account: &str, users: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "add", "user", &users.join(",")]);
    argv.push(format!("account={account}"));
    argv
}

pub fn remove_users(account: &str, users: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "remove", "user", "where"]);
    argv.push(format!("name={}", users.join(",")));
    argv.push(format!("account={account}"));
    argv
}

/// `MaxSubmitJobs` of one user's association: 0 to stop new jobs, -1 to clear.
pub fn max_submit(account: &str, user: &str, value: i64) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "modify", "user", "where"]);
    argv.push(format!("name={user}"));
    argv.push(format!("account={account}"));
    argv.push("set".into());
    argv.push(format!("MaxSubmitJobs={value}"));
    argv
}

pub fn set_account(account: &str, settings: &[String]) -> Vec<String> {
    let mut argv = s(&["sacctmgr", "-i", "modify", "account", "where"]);
    argv.push(format!("name={account}"));
    argv.push("set".into());
    argv.extend(settings.iter().cloned());
    argv
}

/// `show_accounts`'s answer: `account|coordinator,coordinator` a line.
pub fn parse_accounts(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.split('|').next())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The coordinators in `show_accounts`'s answer, by account.
pub fn parse_coordinators(out: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for line in out.lines() {
        let mut fields = line.split('|').map(str::trim);
        let Some(account) = fields.next().filter(|a| !a.is_empty()) else {
            continue;
        };
        let coordinators = fields
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        all.insert(account.to_string(), coordinators);
    }
    all
}

/// `cpu=N` of a TRES list such as `cpu=100,mem=2000`; None when cpu is not in it.
fn cpu_of(tres: &str) -> Option<u64> {
    tres.split(',')
        .find_map(|t| t.strip_prefix("cpu="))
        .and_then(|n| n.parse().ok())
}

fn number(field: &str) -> Option<i64> {
    field.trim().parse().ok()
}

/// `show_assocs`'s answer. Lines that are not six fields are skipped; a user's
/// partition associations count as one.
pub fn parse_assocs(out: &str) -> BTreeMap<String, Assocs> {
    let mut all: BTreeMap<String, Assocs> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        if f.len() != 6 || f[0].is_empty() {
            continue;
        }
        let entry = all.entry(f[0].to_string()).or_default();
        if f[1].is_empty() {
            entry.limits = Limits {
                cpu_minutes: cpu_of(f[2]),
                grp_submit: number(f[3]),
                grp_jobs: number(f[4]),
            };
        } else {
            entry.users.insert(f[1].to_string(), number(f[5]));
        }
    }
    all
}

/// `show_usage`'s answer: the used core-minutes of each account's own line
/// (`UserName=` empty): `GrpTRESMins=cpu=LIMIT(USED),...`.
pub fn parse_usage(out: &str) -> BTreeMap<String, u64> {
    let mut used = BTreeMap::new();
    for line in out.lines() {
        let mut account = None;
        let mut user = None;
        let mut minutes = None;
        for token in line.split_whitespace() {
            if let Some(a) = token.strip_prefix("Account=") {
                account = Some(a);
            } else if let Some(u) = token.strip_prefix("UserName=") {
                user = Some(u);
            } else if let Some(t) = token.strip_prefix("GrpTRESMins=") {
                minutes = t
                    .split(',')
                    .find_map(|x| x.strip_prefix("cpu="))
                    .and_then(|x| {
                        let inner = x.split_once('(')?.1.strip_suffix(')')?;
                        // Whole minutes; a fraction, if a version prints one, is cut off.
                        inner.split('.').next()?.parse::<u64>().ok()
                    });
            }
        }
        if let (Some(a), Some(""), Some(m)) = (account, user, minutes) {
            used.insert(a.to_string(), m);
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinators_are_read_per_account() {
        let out = "ucloud|\nucp-a_cpu|alice,bob\n|x\nucp-b_cpu\n";
        let c = parse_coordinators(out);
        assert_eq!(c["ucloud"], BTreeSet::new());
        assert_eq!(
            c["ucp-a_cpu"],
            ["alice".to_string(), "bob".to_string()].into()
        );
        assert_eq!(c["ucp-b_cpu"], BTreeSet::new());
        assert_eq!(c.len(), 3);
        assert_eq!(
            parse_accounts(out),
            ["ucloud", "ucp-a_cpu", "ucp-b_cpu"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            add_coordinators("ucp-a_cpu", &["alice".into(), "bob".into()]),
            [
                "sacctmgr",
                "-i",
                "add",
                "coordinator",
                "account=ucp-a_cpu",
                "names=alice,bob"
            ]
        );
    }

    #[test]
    fn sacctmgr_answers_are_read() {
        let out = "ucp-a_cpu||cpu=1200|0||\nucp-a_cpu|alice||||\nucp-a_cpu|bob||||0\nucp-a_cpu|bob||||0\nucp-b_cpu||||0|\ngarbage\n|x||||\n";
        let a = parse_assocs(out);
        assert_eq!(
            a["ucp-a_cpu"].limits,
            Limits {
                cpu_minutes: Some(1200),
                grp_submit: Some(0),
                grp_jobs: None
            }
        );
        assert_eq!(
            a["ucp-a_cpu"].users,
            [("alice".to_string(), None), ("bob".to_string(), Some(0))].into()
        );
        assert_eq!(a["ucp-b_cpu"].limits.grp_jobs, Some(0));
        assert_eq!(a.len(), 2);
        assert_eq!(
            parse_accounts("a\n\n b \n"),
            ["a".to_string(), "b".to_string()].into()
        );
        assert_eq!(cpu_of("mem=5,cpu=7"), Some(7));
        assert_eq!(cpu_of("mem=5"), None);
        assert_eq!(cpu_of("cpu=-1"), None);
    }

    #[test]
    fn scontrol_usage_is_read_from_the_accounts_own_line() {
        let out = "Current Association Manager state\nAssociation Records\n\
ClusterName=c Account=ucp-a_cpu UserName= Partition= Priority=0 ID=3 GrpJobs=N(0) GrpTRESMins=cpu=600(125),mem=N(0) MaxJobs=\n\
ClusterName=c Account=ucp-a_cpu UserName=alice(1001) Partition= GrpTRESMins=cpu=N(125),mem=N(0)\n\
ClusterName=c Account=ucp-b_cpu UserName= Partition= GrpTRESMins=cpu=N(7.9),mem=N(0)\n\
ClusterName=c Account=ucp-c_cpu UserName= GrpTRESMins=cpu=N(x)\n\
Account=evil UserName= GrpTRESMins=cpu=(\n";
        let used = parse_usage(out);
        assert_eq!(
            used,
            [("ucp-a_cpu".to_string(), 125), ("ucp-b_cpu".to_string(), 7)].into()
        );
    }

    #[test]
    fn commands_are_argv_vectors() {
        assert_eq!(
            remove_users("ucp-a_cpu", &["alice".into(), "bob".into()]),
            [
                "sacctmgr",
                "-i",
                "remove",
                "user",
                "where",
                "name=alice,bob",
                "account=ucp-a_cpu"
            ]
        );
        assert_eq!(
            set_account("x", &["GrpSubmitJobs=0".into()]),
            [
                "sacctmgr",
                "-i",
                "modify",
                "account",
                "where",
                "name=x",
                "set",
                "GrpSubmitJobs=0"
            ]
        );
    }
}
