//! One run: folds the inbox's events into the state, gathers the facts, asks
//! plan.rs what to do and does it, one audit record per action on stdout. What
//! an action creates is recorded (and the state written) before the command that
//! creates it runs, so that a run cut short never leaves a group or account of
//! ours that the next run would take for someone else's.

use crate::event;
use crate::plan::{self, Action, Categories, DriveCheck, Scope};
use crate::register;
use crate::runner::Runner;
use crate::slurm::{self, Slurm, CHUNK};
use crate::state::{AccountOwner, AccountRec, DriveReg, GroupRec, Pending, State};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use ucloud_wire::config::{is_slurm_name, ProjectConfig};
use ucloud_wire::names::{DriveId, LocalName};
use ucloud_wire::record::Drive;

/// Events folded per run at most; the rest wait for the next (the path unit
/// starts it again while the directory is not empty).
pub const MAX_EVENTS: usize = 10_000;

/// Everything a run touches, so that tests can put fakes in.
pub struct Env<'a> {
    pub provider: &'a str,
    pub config: &'a ProjectConfig,
    pub categories: &'a Categories,
    pub inbox: PathBuf,
    /// `projects_dir()`: state.json, table.json.
    pub dir: PathBuf,
    pub runner: &'a mut dyn Runner,
    /// The mapped users, and whether that answer is complete (`site::people`).
    pub people: &'a dyn Fn(&Scope) -> crate::site::People,
    pub group_gid: &'a dyn Fn(&str) -> Option<u32>,
    pub gid_taken: &'a dyn Fn(u32) -> bool,
    pub group_members: &'a dyn Fn(&str) -> Option<Vec<String>>,
    /// The owner of project drives: root (0) on a site.
    pub drive_owner: u32,
    /// Where project drives are registered with UCloud and recorded; None: not
    /// registered (tests of other things).
    pub drives: Option<DriveSide>,
    pub audit: &'a mut dyn Write,
}

/// What registering project drives touches.
#[derive(Clone)]
pub struct DriveSide {
    pub outbox: PathBuf,
    /// The drive table (`drives_dir()`).
    pub table: PathBuf,
    /// Where the registry's lock is (`state_dir()`).
    pub lock_dir: PathBuf,
    /// The product (id, category) project drives are registered with; None when
    /// the site's product table offers none (said once in the audit log).
    pub product: Option<(String, String)>,
    /// How long a run waits for UCloud's answer to what it queued before it ends
    /// (the next run picks up a later answer).
    pub wait: std::time::Duration,
    /// The sender's uid (site.conf's `sender_user`): replies of anyone else's are
    /// not believed.
    pub sender: Option<u32>,
}

pub const STATE: &str = "state.json";
pub const TABLE: &str = "table.json";

pub fn load_state(dir: &Path) -> Result<State, String> {
    let path = dir.join(STATE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not JSON ({e}); put back a good copy, it records what ucloud-project made",
            path.display()
        )
    })?;
    State::from_json(&value).map_err(|e| {
        format!(
            "{}: {e}; put back a good copy, it records what ucloud-project made",
            path.display()
        )
    })
}

pub fn save_state(dir: &Path, state: &State) -> Result<(), String> {
    ucloud_wire::record::write_atomic(dir, STATE, &state.to_json(), 0o600)
        .map_err(|e| format!("cannot write {}/{STATE}: {e}", dir.display()))
}

/// Reads, folds and removes the waiting events; whether any were there.
pub fn fold_inbox(env: &mut Env, state: &mut State) -> Result<bool, String> {
    ucloud_wire::inbox::check_dirs(&env.inbox).map_err(|e| e.to_string())?;
    for stray in ucloud_wire::inbox::strays(&env.inbox).unwrap_or_default() {
        // Not an event: removed (a link itself, never what it points at), or the path
        // unit would start this again and again.
        let removed = match std::fs::symlink_metadata(&stray) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&stray),
            _ => std::fs::remove_file(&stray),
        };
        record(
            env.audit,
            "event",
            "refused",
            json!({"file": stray.display().to_string(), "why": "not an event file (a regular *.json)",
                   "removed": removed.is_ok()}),
        );
    }
    let files = ucloud_wire::inbox::events(&env.inbox)
        .map_err(|e| format!("cannot list the inbox {}: {e}", env.inbox.display()))?;
    let files: Vec<PathBuf> = files.into_iter().take(MAX_EVENTS).collect();
    if files.is_empty() {
        return Ok(false);
    }
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let folded = ucloud_wire::inbox::read_event(file)
            .map_err(|e| e.to_string())
            .and_then(|v| event::parse(&v, env.provider, env.categories))
            .and_then(|ev| event::fold(state, ev));
        if let Err(why) = folded {
            record(
                env.audit,
                "event",
                "refused",
                json!({"file": name, "why": why}),
            );
        }
    }
    // Removed only once what they said is safely in the state.
    save_state(&env.dir, state)?;
    for file in &files {
        if let Err(e) = std::fs::remove_file(file) {
            eprintln!("ucloud-project: cannot remove {}: {e}", file.display());
        }
    }
    Ok(true)
}

/// Asks Slurm about `names`, in chunks; None when it does not answer (then no
/// Slurm step is taken this run: without knowing what exists, nothing is created).
fn ask_slurm(
    runner: &mut dyn Runner,
    names: &[String],
    usage: &[String],
) -> (Option<Slurm>, Vec<String>) {
    let mut slurm = Slurm::default();
    let mut problems = Vec::new();
    for chunk in names.chunks(CHUNK) {
        let out = runner.run(&slurm::show_accounts(chunk));
        if !out.ok {
            problems.push(format!("sacctmgr show account: {}", out.why()));
            return (None, problems);
        }
        slurm.accounts.extend(slurm::parse_accounts(&out.stdout));
        slurm
            .coordinators
            .extend(slurm::parse_coordinators(&out.stdout));
        let out = runner.run(&slurm::show_assocs(chunk));
        if !out.ok {
            problems.push(format!("sacctmgr show assoc: {}", out.why()));
            return (None, problems);
        }
        slurm.assocs.extend(slurm::parse_assocs(&out.stdout));
    }
    let existing: Vec<String> = usage
        .iter()
        .filter(|n| slurm.accounts.contains(*n))
        .cloned()
        .collect();
    for chunk in existing.chunks(CHUNK) {
        let out = runner.run(&slurm::show_usage(chunk));
        if out.ok {
            slurm.used.extend(slurm::parse_usage(&out.stdout));
        } else {
            problems.push(format!("scontrol show assoc_mgr: {}", out.why()));
        }
    }
    (Some(slurm), problems)
}

fn is_user(name: &str) -> bool {
    LocalName::new(name).is_ok()
}

/// One reconcile of `scope`; the number of actions that failed.
pub fn reconcile(env: &mut Env, state: &mut State, scope: &Scope) -> Result<usize, String> {
    let (people, complete) = (env.people)(scope);
    // Removals only on a whole run that knows every mapping for sure.
    let exclusive = *scope == Scope::All && complete;
    if *scope == Scope::All && !complete {
        record(
            env.audit,
            "people",
            "refused",
            json!({"why": "the mapping store or NSS could not be read for every user: this run removes nobody"}),
        );
    }
    let wanted = plan::wanted_with(env.config, env.categories, state, &people, scope, exclusive);
    for (id, here) in &wanted.here {
        if let Some(p) = state.projects.get_mut(id) {
            match scope {
                Scope::All => p.here = here.clone(),
                Scope::One(_) => p.here.extend(here.iter().cloned()),
            }
        }
    }
    let names = wanted.account_names();
    let usage = wanted.needs_usage(state);
    let (slurm, problems) = ask_slurm(env.runner, &names, &usage);
    let mut failed = 0;
    for why in &problems {
        failed += 1;
        note(
            env.audit,
            state,
            "query",
            "slurm",
            "failed",
            json!({"error": why}),
            why,
        );
    }
    let slurm_ok = slurm.is_some();
    let slurm = slurm.unwrap_or_default();
    // Accounts Slurm shows under ours that this program never made: sub-accounts a
    // coordinator (a project's PI or admin) added. Never changed (not ours); said,
    // since their users run on the project's allocation (the parent's limits bind
    // them) without being its members here.
    for stray in slurm.assocs.keys().filter(|a| !names.contains(a)) {
        let users: Vec<&String> = slurm.assocs[stray].users.keys().collect();
        let why = "a sub-account under a project's Slurm account that ucloud-project did not make (a coordinator's): left alone; its jobs count against the project's limits";
        note(
            env.audit,
            state,
            "sub-account",
            stray,
            "refused",
            json!({"account": stray, "users": users, "why": why}),
            why,
        );
    }
    // An account whose usage Slurm did not give keeps its limit until it does.
    let no_usage: Vec<&String> = usage
        .iter()
        .filter(|n| slurm.accounts.contains(*n) && !slurm.used.contains_key(*n))
        .collect();
    let base = env.config.base.clone();
    let owner = env.drive_owner;
    let actions = {
        let drive = |group: &str, gid: u32| crate::drive::check(&base, group, gid, owner);
        plan::plan(
            &wanted,
            &plan::Facts {
                config: env.config,
                state,
                group_gid: env.group_gid,
                gid_taken: env.gid_taken,
                slurm: &slurm,
                drive: &drive,
            },
        )
    };
    let actions: Vec<Action> = actions
        .into_iter()
        .filter(|a| slurm_ok || !is_slurm(a))
        .filter(|a| !matches!(a, Action::SetLimits { account, .. } if no_usage.contains(&account)))
        .collect();
    // Recorded before they are made.
    let mut intents = false;
    for a in &actions {
        match a {
            Action::AddGroup {
                group,
                gid,
                project,
            } => {
                intents = true;
                state.groups.entry(group.clone()).or_insert(GroupRec {
                    gid: *gid,
                    project: project.clone(),
                    members: Default::default(),
                    drive: false,
                });
            }
            Action::AddAccount {
                account,
                owner,
                category,
                ..
            } => {
                intents = true;
                state.accounts.entry(account.clone()).or_insert(AccountRec {
                    owner: owner.clone(),
                    category: category.clone(),
                    created: true,
                    limit: None,
                    noted: false,
                    blocked: Default::default(),
                });
            }
            _ => {}
        }
    }
    if intents {
        save_state(&env.dir, state)?;
    }
    for action in actions {
        failed += usize::from(!execute(env, state, action));
    }
    if !base.is_empty() {
        for (name, g) in state.groups.iter_mut() {
            g.drive = crate::drive::check(&base, name, g.gid, owner) == DriveCheck::Ok;
        }
        // A drive made before drives held it gets its ucloud-jobs (ucloud-jobscript
        // refuses project jobs without it).
        let drives: Vec<(String, u32)> = state
            .groups
            .iter()
            .filter(|(_, g)| g.drive)
            .map(|(n, g)| (n.clone(), g.gid))
            .collect();
        for (name, gid) in drives {
            let subject = format!("{base}/{name}/{}", crate::drive::JOBS);
            match crate::drive::ensure_jobs_dir(&base, &name, gid, owner) {
                Ok(false) => {}
                Ok(true) => record(
                    env.audit,
                    "make-jobs-folder",
                    "done",
                    json!({"path": subject, "gid": gid, "mode": "3770"}),
                ),
                Err(why) => {
                    failed += 1;
                    note(
                        env.audit,
                        state,
                        "make-jobs-folder",
                        &subject,
                        "failed",
                        json!({"path": subject, "error": why}),
                        &why,
                    );
                }
            }
        }
        failed += register_drives(env, state)?;
    }
    save_state(&env.dir, state)?;
    publish(&env.dir, state, env.config)?;
    Ok(failed)
}

/// Registers the project drives that exist with UCloud and records them in the
/// drive table (register.rs); waits a little for UCloud's answers, so that a
/// drive is usually registered by the run that made it. The number of steps
/// that failed.
fn register_drives(env: &mut Env, state: &mut State) -> Result<usize, String> {
    let Some(side) = env.drives.clone() else {
        return Ok(0);
    };
    let outbox = register::Outbox {
        dir: side.outbox.clone(),
        sender: side.sender,
    };
    let mut failed = 0;
    // Question, registration, record: at most three answers to wait for.
    for _ in 0..3 {
        let (queued, f) = register_pass(env, state, &side, &outbox)?;
        failed += f;
        if !queued || side.wait.is_zero() {
            break;
        }
        let until = std::time::Instant::now() + side.wait;
        while std::time::Instant::now() < until && !answered(state, &outbox) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    Ok(failed)
}

/// Whether an answer to something pending has come.
fn answered(state: &State, outbox: &register::Outbox) -> bool {
    state
        .drives
        .iter()
        .filter(|(_, d)| d.id.is_none() && d.pending.is_some())
        .any(|(group, _)| {
            outbox.reply(&register::register_tag(group)).is_some()
                || outbox.reply(&register::find_tag(group)).is_some()
        })
        || !outbox.failures().is_empty()
}

/// One pass over the project drives; whether it queued anything, and how many
/// steps failed.
fn register_pass(
    env: &mut Env,
    state: &mut State,
    side: &DriveSide,
    outbox: &register::Outbox,
) -> Result<(bool, usize), String> {
    let failures = outbox.failures();
    let mut queued = false;
    let mut failed = 0;
    let drives: Vec<(String, GroupRec)> = state
        .groups
        .iter()
        .filter(|(_, g)| g.drive)
        .map(|(n, g)| (n.clone(), g.clone()))
        .collect();
    for (group, g) in drives {
        // Registered while the project has an allocation here (and so a row in
        // table.json); a drive whose project left stays as it is.
        let Some(p) = state.projects.get(&g.project) else {
            continue;
        };
        if state.project_wallets(&g.project).next().is_none() {
            continue;
        }
        let title = match p.title.trim() {
            "" => group.clone(),
            t => t.to_string(),
        };
        let project = register::Project {
            id: &g.project,
            group: &group,
            gid: g.gid,
            title: &title,
            base: format!("{}/{group}", env.config.base),
        };
        let subject = format!("drive {}", project.base);
        let fields = json!({"project": g.project, "group": group, "gid": g.gid,
                            "path": project.base});
        let reg = state.drives.get(&group).cloned().unwrap_or_default();
        if let Some(id) = &reg.id {
            // Kept true: the title follows UCloud's, an entry removed comes back.
            let Ok(id) = DriveId::new(id) else {
                continue;
            };
            let drive = Drive::project(
                id.clone(),
                g.project.clone(),
                project.gid,
                project.base.clone(),
                title.clone(),
            );
            match register::put_entry(&side.table, &side.lock_dir, &drive) {
                Ok(false) => {}
                Ok(true) => {
                    let mut fields = fields;
                    fields["drive"] = json!(id.as_str());
                    record(env.audit, "record-drive", "done", fields);
                }
                Err(why) => {
                    failed += 1;
                    let mut fields = fields;
                    fields["error"] = json!(why);
                    note(
                        env.audit,
                        state,
                        "record-drive",
                        &subject,
                        "failed",
                        fields,
                        &why,
                    );
                }
            }
            continue;
        }
        let Some(product) = &side.product else {
            let why = format!(
                "products/files.json offers no storage product {:?} to register project drives with",
                register::PRODUCT
            );
            note(
                env.audit,
                state,
                "register-drive",
                &subject,
                "refused",
                json!({"project": g.project, "group": group, "why": why}),
                &why,
            );
            continue;
        };
        let rtag = register::register_tag(&group);
        let ftag = register::find_tag(&group);
        let registered = outbox
            .reply(&rtag)
            .map(|r| r.and_then(|v| register::parse_register_reply(&v)));
        let found = outbox
            .reply(&ftag)
            .map(|r| r.and_then(|v| register::parse_find_reply(&v, env.provider, &g.project)));
        let refused: Vec<&PathBuf> = [&rtag, &ftag]
            .iter()
            .filter_map(|t| failures.get(*t))
            .collect();
        let why_failed = (!refused.is_empty()).then(|| {
            format!(
                "UCloud refused it (the sender's {}); asking UCloud again",
                refused
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        let step = register::decide(&reg, registered, found, why_failed);
        let entry = state.drives.entry(group.clone()).or_default();
        match step {
            register::Step::Wait => {}
            register::Step::Ask | register::Step::Retry(_) => {
                if let register::Step::Retry(why) = &step {
                    let mut fields = fields.clone();
                    fields["error"] = json!(why);
                    record(env.audit, "register-drive", "failed", fields);
                    for path in refused {
                        let _ = std::fs::remove_file(path);
                    }
                }
                outbox.discard(&ftag);
                let m = register::find_message(env.provider, &project);
                match outbox.send(&m) {
                    Ok(()) => {
                        entry.pending = Some(Pending::Asked);
                        queued = true;
                        let mut fields = fields;
                        fields["step"] = json!("ask");
                        fields["command"] = json!(format!("GET {}", m.path));
                        record(env.audit, "register-drive", "done", fields);
                    }
                    Err(why) => {
                        failed += 1;
                        let mut fields = fields;
                        fields["error"] = json!(why);
                        note(
                            env.audit,
                            state,
                            "register-drive",
                            &subject,
                            "failed",
                            fields,
                            &why,
                        );
                    }
                }
            }
            register::Step::Register => {
                let m = register::register_message(env.provider, product, &project);
                match outbox.send(&m) {
                    Ok(()) => {
                        // Recorded before the question's answer goes: a crash in
                        // between asks again, never registers twice unseen.
                        entry.pending = Some(Pending::Sent);
                        save_state(&env.dir, state)?;
                        outbox.discard(&ftag);
                        queued = true;
                        let mut fields = fields;
                        fields["step"] = json!("register");
                        fields["command"] = json!(format!("POST {}", m.path));
                        fields["providerGeneratedId"] =
                            json!(register::provider_id(env.provider, &g.project));
                        record(env.audit, "register-drive", "done", fields);
                    }
                    Err(why) => {
                        failed += 1;
                        let mut fields = fields;
                        fields["error"] = json!(why);
                        note(
                            env.audit,
                            state,
                            "register-drive",
                            &subject,
                            "failed",
                            fields,
                            &why,
                        );
                    }
                }
            }
            register::Step::Record(id) => {
                let drive = Drive::project(
                    id.clone(),
                    g.project.clone(),
                    project.gid,
                    project.base.clone(),
                    title.clone(),
                );
                match register::put_entry(&side.table, &side.lock_dir, &drive) {
                    Ok(_) => {
                        *entry = DriveReg {
                            id: Some(id.as_str().to_string()),
                            pending: None,
                        };
                        outbox.discard(&rtag);
                        outbox.discard(&ftag);
                        state.notes.remove(&format!("record-drive {subject}"));
                        let mut fields = fields;
                        fields["drive"] = json!(id.as_str());
                        record(env.audit, "record-drive", "done", fields);
                    }
                    Err(why) => {
                        failed += 1;
                        let mut fields = fields;
                        fields["drive"] = json!(id.as_str());
                        fields["error"] = json!(why);
                        note(
                            env.audit,
                            state,
                            "record-drive",
                            &subject,
                            "failed",
                            fields,
                            &why,
                        );
                    }
                }
            }
            register::Step::Refuse(why) => {
                failed += 1;
                let mut fields = fields;
                fields["why"] = json!(why);
                note(
                    env.audit,
                    state,
                    "register-drive",
                    &subject,
                    "refused",
                    fields,
                    &why,
                );
            }
        }
    }
    Ok((queued, failed))
}

fn is_slurm(a: &Action) -> bool {
    matches!(
        a,
        Action::AddAccount { .. }
            | Action::Associate { .. }
            | Action::Dissociate { .. }
            | Action::Coordinate { .. }
            | Action::Uncoordinate { .. }
            | Action::Unblock { .. }
            | Action::SetLimits { .. }
            | Action::Note { .. }
    )
}

/// Runs `argv` for `action` and audits it; whether it worked.
fn command(
    env: &mut Env,
    state: &mut State,
    action: &str,
    subject: &str,
    mut fields: Value,
    argv: Vec<String>,
) -> bool {
    let out = env.runner.run(&argv);
    fields["command"] = json!(argv);
    if out.ok {
        state.notes.remove(&format!("{action} {subject}"));
        record(env.audit, action, "done", fields);
        true
    } else {
        let why = out.why();
        fields["error"] = json!(why);
        note(env.audit, state, action, subject, "failed", fields, &why);
        false
    }
}

/// An audit record for a refusal or failure, written only when it is news: not
/// what the last run said about the same subject.
fn note(
    out: &mut dyn Write,
    state: &mut State,
    action: &str,
    subject: &str,
    decision: &str,
    fields: Value,
    why: &str,
) {
    let key = format!("{action} {subject}");
    if state.notes.get(&key).map(String::as_str) != Some(why) {
        state.notes.insert(key, why.to_string());
        record(out, action, decision, fields);
    }
}

/// Refuses, without running anything, a step whose names are not what they must
/// be: plan.rs checked them already; this is the check right before the call.
fn refuse_names(env: &mut Env, state: &mut State, action: &str, subject: &str, why: &str) -> bool {
    note(
        env.audit,
        state,
        action,
        subject,
        "refused",
        json!({"subject": subject, "why": why}),
        why,
    );
    false
}

fn hook(config: &ProjectConfig, args: &[&str]) -> Vec<String> {
    std::iter::once(config.group_hook.clone())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

fn execute(env: &mut Env, state: &mut State, action: Action) -> bool {
    let local = env.config.group_hook.is_empty();
    let action_kind = matches!(action, Action::Coordinate { .. });
    match action {
        Action::Refuse { subject, why } => {
            note(
                env.audit,
                state,
                "refuse",
                &subject,
                "refused",
                json!({"subject": subject, "why": why}),
                &why,
            );
            true
        }
        Action::Note { account, why } => {
            record(
                env.audit,
                "no-limit",
                "done",
                json!({"account": account, "why": why}),
            );
            if let Some(a) = state.accounts.get_mut(&account) {
                a.noted = true;
            }
            true
        }
        Action::AddGroup {
            group,
            gid,
            project,
        } => {
            if !is_slurm_name(&group) || !(env.config.gid_min..=env.config.gid_max).contains(&gid) {
                return refuse_names(
                    env,
                    state,
                    "add-group",
                    &group,
                    "not a valid group name or gid",
                );
            }
            let argv = match local {
                true => vec![
                    "groupadd".into(),
                    "-g".into(),
                    gid.to_string(),
                    group.clone(),
                ],
                false => hook(env.config, &["add-group", &group, &gid.to_string()]),
            };
            let fields = json!({"group": group, "gid": gid, "project": project});
            command(env, state, "add-group", &group, fields, argv)
        }
        Action::AddMember { group, user } => {
            // Never anyone into a group this program did not make.
            if !state.groups.contains_key(&group) || !is_user(&user) {
                return refuse_names(
                    env,
                    state,
                    "add-member",
                    &format!("{group} {user}"),
                    "the group is not recorded or the user name is invalid",
                );
            }
            let argv = match local {
                true => vec!["gpasswd".into(), "-a".into(), user.clone(), group.clone()],
                false => hook(env.config, &["add-member", &group, &user]),
            };
            let fields = json!({"group": group, "user": user});
            let ok = command(
                env,
                state,
                "add-member",
                &format!("{group} {user}"),
                fields,
                argv,
            );
            if ok {
                if let Some(g) = state.groups.get_mut(&group) {
                    g.members.insert(user);
                }
            }
            ok
        }
        Action::RemoveMember { group, user } => {
            if !state.groups.contains_key(&group) || !is_user(&user) {
                return refuse_names(
                    env,
                    state,
                    "remove-member",
                    &format!("{group} {user}"),
                    "the group is not recorded or the user name is invalid",
                );
            }
            let argv = match local {
                true => vec!["gpasswd".into(), "-d".into(), user.clone(), group.clone()],
                false => hook(env.config, &["remove-member", &group, &user]),
            };
            let fields = json!({"group": group, "user": user});
            let mut ok = command(
                env,
                state,
                "remove-member",
                &format!("{group} {user}"),
                fields,
                argv,
            );
            // Removed by hand meanwhile: what was wanted is true.
            if !ok && (env.group_members)(&group).is_some_and(|m| !m.contains(&user)) {
                ok = true;
            }
            if ok {
                if let Some(g) = state.groups.get_mut(&group) {
                    g.members.remove(&user);
                }
            }
            ok
        }
        Action::AddAccount {
            account,
            owner,
            category,
            description,
        } => {
            if !is_slurm_name(&account) {
                return refuse_names(
                    env,
                    state,
                    "add-account",
                    &account,
                    "not a valid account name",
                );
            }
            let fields =
                json!({"account": account, "owner": owner_json(&owner), "category": category});
            command(
                env,
                state,
                "add-account",
                &account,
                fields,
                slurm::add_account(&account, &description),
            )
        }
        Action::Associate { account, users } => {
            let ours = state.accounts.contains_key(&account)
                || account == env.config.slurm_default_account;
            if !ours || !is_slurm_name(&account) || !users.iter().all(|u| is_user(u)) {
                return refuse_names(
                    env,
                    state,
                    "associate",
                    &account,
                    "the account is not recorded or a user name is invalid",
                );
            }
            let mut ok = true;
            for chunk in users.chunks(CHUNK) {
                let fields = json!({"account": account, "users": chunk});
                ok &= command(
                    env,
                    state,
                    "associate",
                    &account,
                    fields,
                    slurm::add_users(&account, chunk),
                );
            }
            ok
        }
        Action::Dissociate { account, users } => {
            if !state.accounts.contains_key(&account) || !users.iter().all(|u| is_user(u)) {
                return refuse_names(
                    env,
                    state,
                    "dissociate",
                    &account,
                    "the account is not recorded or a user name is invalid",
                );
            }
            let mut ok = true;
            for chunk in users.chunks(CHUNK) {
                let out = env.runner.run(&slurm::remove_users(&account, chunk));
                if out.ok {
                    record(
                        env.audit,
                        "dissociate",
                        "done",
                        json!({"account": account, "users": chunk, "command": slurm::remove_users(&account, chunk)}),
                    );
                    for u in chunk {
                        unblocked(state, &account, u);
                    }
                    continue;
                }
                // One by one: Slurm refuses to remove a user with jobs on the
                // account; the others go, that one is stopped from submitting.
                for user in chunk {
                    ok &= dissociate_one(env, state, &account, user);
                }
            }
            ok
        }
        Action::Coordinate { account, users } | Action::Uncoordinate { account, users } => {
            let (name, argv) = match &action_kind {
                true => ("coordinate", slurm::add_coordinators(&account, &users)),
                false => ("uncoordinate", slurm::remove_coordinators(&account, &users)),
            };
            if !state.accounts.contains_key(&account)
                || !is_slurm_name(&account)
                || users.is_empty()
                || !users.iter().all(|u| is_user(u))
            {
                return refuse_names(
                    env,
                    state,
                    name,
                    &account,
                    "the account is not recorded or a user name is invalid",
                );
            }
            let fields = json!({"account": account, "users": users});
            command(env, state, name, &account, fields, argv)
        }
        Action::Unblock { account, user } => {
            if !state.accounts.contains_key(&account) || !is_user(&user) {
                return refuse_names(
                    env,
                    state,
                    "unblock",
                    &account,
                    "the account is not recorded or a user name is invalid",
                );
            }
            let fields = json!({"account": account, "user": user, "why": "a member again"});
            let ok = command(
                env,
                state,
                "unblock",
                &format!("{account} {user}"),
                fields,
                slurm::max_submit(&account, &user, -1),
            );
            if ok {
                unblocked(state, &account, &user);
            }
            ok
        }
        Action::SetLimits {
            account,
            settings,
            record: limit,
        } => {
            if !state.accounts.contains_key(&account) {
                return refuse_names(
                    env,
                    state,
                    "limits",
                    &account,
                    "the account is not recorded",
                );
            }
            let ok = settings.is_empty()
                || {
                    let fields = json!({"account": account, "settings": settings, "cpuMinutes": limit.cpu_minutes, "locked": limit.locked, "wallet": limit.wallet});
                    command(
                        env,
                        state,
                        "limits",
                        &account,
                        fields,
                        slurm::set_account(&account, &settings),
                    )
                };
            if ok {
                if let Some(a) = state.accounts.get_mut(&account) {
                    a.limit = Some(limit);
                }
            }
            ok
        }
        Action::MakeDrive { group, gid, path } => {
            if !state.groups.contains_key(&group) {
                return refuse_names(env, state, "make-drive", &path, "the group is not recorded");
            }
            let fields = json!({"group": group, "gid": gid, "path": path, "mode": "3770"});
            // Only once NSS has the group with that gid (its groupadd may have failed,
            // or a hook's directory not show it yet): a drive must never go to a gid
            // that is nobody's, or that another group may take.
            if (env.group_gid)(&group) != Some(gid) {
                let why = format!(
                    "the group {group} is not (yet) known with gid {gid}; the next run tries again"
                );
                let mut fields = fields;
                fields["error"] = json!(why);
                note(
                    env.audit,
                    state,
                    "make-drive",
                    &path,
                    "failed",
                    fields,
                    &why,
                );
                return false;
            }
            match crate::drive::make(&env.config.base, &group, gid, env.drive_owner) {
                Ok(()) => {
                    state.notes.remove(&format!("make-drive {path}"));
                    record(env.audit, "make-drive", "done", fields);
                    true
                }
                Err(why) => {
                    let mut fields = fields;
                    fields["error"] = json!(why);
                    note(
                        env.audit,
                        state,
                        "make-drive",
                        &path,
                        "failed",
                        fields,
                        &why,
                    );
                    false
                }
            }
        }
    }
}

fn unblocked(state: &mut State, account: &str, user: &str) {
    if let Some(a) = state.accounts.get_mut(account) {
        a.blocked.remove(user);
    }
}

fn dissociate_one(env: &mut Env, state: &mut State, account: &str, user: &str) -> bool {
    let argv = slurm::remove_users(account, &[user.to_string()]);
    let out = env.runner.run(&argv);
    if out.ok {
        record(
            env.audit,
            "dissociate",
            "done",
            json!({"account": account, "users": [user], "command": argv}),
        );
        unblocked(state, account, user);
        return true;
    }
    let why = out.why();
    let was_blocked = state
        .accounts
        .get(account)
        .is_some_and(|a| a.blocked.contains(user));
    if was_blocked {
        // Stopped already; its removal is tried again next run.
        let fields = json!({"account": account, "users": [user], "command": argv, "error": why});
        note(
            env.audit,
            state,
            "dissociate",
            &format!("{account} {user}"),
            "failed",
            fields,
            &why,
        );
        return false;
    }
    let fields = json!({"account": account, "users": [user], "command": argv, "error": why});
    record(env.audit, "dissociate", "failed", fields);
    let block = slurm::max_submit(account, user, 0);
    let fields = json!({"account": account, "user": user,
        "why": "its association could not be removed (jobs still run there): no new jobs, removal retried every run"});
    let ok = command(
        env,
        state,
        "block",
        &format!("{account} {user}"),
        fields,
        block,
    );
    if ok {
        if let Some(a) = state.accounts.get_mut(account) {
            a.blocked.insert(user.to_string());
        }
    }
    false
}

fn owner_json(owner: &AccountOwner) -> Value {
    match owner {
        AccountOwner::Project(id) => json!({"type": "project", "projectId": id}),
        AccountOwner::User { uid, local } => json!({"type": "user", "uid": uid, "local": local}),
        AccountOwner::Default => json!({"type": "default"}),
    }
}

/// table.json: what the job plugins read, as the user, to pick `--account`.
pub fn table(state: &State, config: &ProjectConfig) -> Value {
    let mut projects = Map::new();
    for (id, p) in &state.projects {
        if state.project_wallets(id).next().is_none() {
            continue;
        }
        let group = state.groups.iter().find(|(_, g)| g.project == *id);
        let accounts: Map<String, Value> = state
            .accounts
            .iter()
            .filter(|(_, a)| a.owner == AccountOwner::Project(id.clone()))
            .filter_map(|(name, a)| Some((a.category.clone()?, json!(name))))
            .collect();
        let drive = group
            .filter(|(_, g)| g.drive && !config.base.is_empty())
            .map(|(name, _)| format!("{}/{name}", config.base));
        let drive_id = group
            .filter(|_| drive.is_some())
            .and_then(|(name, _)| state.drives.get(name))
            .and_then(|d| d.id.clone());
        projects.insert(
            id.clone(),
            json!({
                "title": p.title,
                "group": group.map(|(n, _)| n),
                "gid": group.map(|(_, g)| g.gid),
                "drive": drive,
                "driveId": drive_id,
                "accounts": accounts,
                "members": p.here,
            }),
        );
    }
    let mut users: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (name, a) in &state.accounts {
        if let (AccountOwner::User { local, .. }, Some(category)) = (&a.owner, &a.category) {
            users
                .entry(local.clone())
                .or_default()
                .insert(category.clone(), json!(name));
        }
    }
    let users: Map<String, Value> = users
        .into_iter()
        .map(|(u, accounts)| (u, json!({"accounts": accounts})))
        .collect();
    json!({"projects": projects, "users": users})
}

fn publish(dir: &Path, state: &State, config: &ProjectConfig) -> Result<(), String> {
    ucloud_wire::record::write_atomic(dir, TABLE, &table(state, config), 0o644)
        .map_err(|e| format!("cannot write {}/{TABLE}: {e}", dir.display()))
}

/// One audit record, as a JSON line, under the lock every writer of the audit
/// log takes (the unit appends stdout to it).
pub fn record(out: &mut dyn Write, action: &str, decision: &str, fields: Value) {
    let mut line = json!({
        "time": ucloud_wire::now_ms(),
        "program": "ucloud-project",
        "pid": std::process::id(),
        "action": action,
        "decision": decision,
    });
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            line[k] = v;
        }
    }
    let _ = out
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush());
}

/// stdout, locked as the audit log's writers lock it.
pub struct AuditOut;

impl Write for AuditOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _locked = std::os::fd::AsFd::as_fd(&std::io::stdout())
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| nix::fcntl::Flock::lock(fd, nix::fcntl::FlockArg::LockExclusive).ok());
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Category;
    use crate::plan::Person;
    use crate::runner::fake::Fake;
    use crate::runner::Output;
    use crate::state::{LimitRec, Member, Owner, Project, Role, Wallet};
    use std::collections::BTreeSet;
    use ucloud_wire::config::LockedLimit;
    use ucloud_wire::names::UcloudName;

    const P1: &str = "5d3c7a6e-2f4b-4c1d-9e8f-0a1b2c3d4e5f";
    const G: &str = "ucp-5d3c7a6e2f";
    const A: &str = "ucp-5d3c7a6e2f_cpu";

    fn config(hook: &str) -> ProjectConfig {
        ProjectConfig {
            prefix: "ucp-".into(),
            gid_min: 200000,
            gid_max: 200009,
            base: String::new(),
            group_hook: hook.into(),
            slurm_default_account: "ucloud".into(),
            slurm_personal_accounts: false,
            locked: LockedLimit::Submit,
        }
    }

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

    fn scratch(name: &str) -> (PathBuf, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("ucloud-project-act-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for sub in ["inbox/events", "inbox/tmp", "inbox/replay", "projects"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        sticky(&root.join("inbox"));
        (root.join("inbox"), root.join("projects"))
    }

    /// The inbox as the package makes it (root 3770); the tests run as root.
    fn sticky(inbox: &Path) {
        use std::os::unix::fs::PermissionsExt;
        for sub in ["", "events", "tmp"] {
            std::fs::set_permissions(inbox.join(sub), std::fs::Permissions::from_mode(0o3770))
                .unwrap();
        }
    }

    fn people(scope: &Scope) -> (BTreeMap<UcloudName, Person>, bool) {
        (everyone(scope), true)
    }

    fn everyone(scope: &Scope) -> BTreeMap<UcloudName, Person> {
        let all = [("Alice#1", "alice", 1001), ("Bob#2", "bob", 1002)];
        all.iter()
            .map(|(u, l, uid)| {
                (
                    UcloudName::new(u).unwrap(),
                    Person {
                        local: LocalName::new(l).unwrap(),
                        uid: *uid,
                    },
                )
            })
            .filter(|(u, _)| match scope {
                Scope::All => true,
                Scope::One(one) => one == u,
            })
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Runs one whole run (inbox and reconcile) against `fake`, with `groups`
    /// as NSS; the audit records.
    fn run(
        fake: &mut Fake,
        config: &ProjectConfig,
        dirs: &(PathBuf, PathBuf),
        groups: &[(&str, u32)],
        state: &mut State,
    ) -> Vec<Value> {
        run_with(fake, config, dirs, groups, state, None)
    }

    fn run_with(
        fake: &mut Fake,
        config: &ProjectConfig,
        dirs: &(PathBuf, PathBuf),
        groups: &[(&str, u32)],
        state: &mut State,
        drives: Option<DriveSide>,
    ) -> Vec<Value> {
        let groups: BTreeMap<String, u32> =
            groups.iter().map(|(n, g)| (n.to_string(), *g)).collect();
        let g2 = groups.clone();
        let group_gid = move |n: &str| groups.get(n).copied();
        let gid_taken = move |g: u32| g2.values().any(|x| *x == g);
        let mut audit = Vec::new();
        {
            let cats = categories();
            let mut env = Env {
                provider: "hpc",
                config,
                categories: &cats,
                inbox: dirs.0.clone(),
                dir: dirs.1.clone(),
                runner: fake,
                people: &people,
                group_gid: &group_gid,
                gid_taken: &gid_taken,
                group_members: &|_| None,
                drive_owner: 0,
                drives,
                audit: &mut audit,
            };
            fold_inbox(&mut env, state).unwrap();
            reconcile(&mut env, state, &Scope::All).unwrap();
        }
        String::from_utf8(audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn write_event(inbox: &Path, v: Value) {
        ucloud_wire::inbox::write_event(inbox, &v).unwrap();
    }

    #[test]
    fn events_become_a_group_accounts_associations_and_a_limit() {
        let dirs = scratch("create");
        write_event(
            &dirs.0,
            json!({"type": "project", "modifiedAt": 5, "project": {"id": P1,
            "specification": {"title": "Physics"},
            "status": {"members": [{"username": "Alice#1", "role": "PI"}, {"username": "Bob#2", "role": "USER"},
                                   {"username": "Carol#3", "role": "USER"}]}}}),
        );
        write_event(
            &dirs.0,
            json!({"type": "wallet", "owner": {"type": "project", "projectId": P1},
            "category": {"name": "cpu", "provider": "hpc"}, "quota": 100, "usage": 10, "locked": false,
            "updatedAt": 6, "project": null}),
        );
        write_event(
            &dirs.0,
            json!({"type": "wallet", "owner": {"type": "project", "projectId": P1},
            "category": {"name": "cpu", "provider": "elsewhere"}, "quota": 1, "usage": 0, "locked": false, "updatedAt": 7}),
        );
        std::fs::write(dirs.0.join("events/zz.json"), "{not json").unwrap();
        let mut fake = Fake::new(|_| Output::ok(""));
        let mut state = State::default();
        let audit = run(
            &mut fake,
            &config(""),
            &dirs,
            &[("users", 200000)],
            &mut state,
        );
        assert_eq!(
            fake.calls,
            vec![
                strings(&[
                    "sacctmgr",
                    "-nP",
                    "show",
                    "account",
                    "where",
                    &format!("name=ucloud,{A}"),
                    "withcoord",
                    "format=Account,Coordinators"
                ]),
                strings(&[
                    "sacctmgr",
                    "-nP",
                    "show",
                    "assoc",
                    "where",
                    &format!("accounts=ucloud,{A}"),
                    "withsubaccounts",
                    "format=Account,User,GrpTRESMins,GrpSubmit,GrpJobs,MaxSubmit"
                ]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "add",
                    "account",
                    "ucloud",
                    "Description=ucloud default",
                    "Organization=ucloud"
                ]),
                strings(&["groupadd", "-g", "200001", G]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "add",
                    "account",
                    A,
                    &format!("Description=ucloud project {P1}"),
                    "Organization=ucloud"
                ]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "add",
                    "user",
                    "alice,bob",
                    "account=ucloud"
                ]),
                strings(&["gpasswd", "-a", "alice", G]),
                strings(&["gpasswd", "-a", "bob", G]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "add",
                    "user",
                    "alice,bob",
                    &format!("account={A}")
                ]),
                // Alice is the project's PI: she may act on Bob's jobs.
                strings(&[
                    "sacctmgr",
                    "-i",
                    "add",
                    "coordinator",
                    &format!("account={A}"),
                    "names=alice"
                ]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "modify",
                    "account",
                    "where",
                    &format!("name={A}"),
                    "set",
                    "GrpTRESMins=cpu=5400"
                ]),
            ]
        );
        let refused: Vec<&Value> = audit
            .iter()
            .filter(|a| a["decision"] == "refused")
            .collect();
        assert_eq!(refused.len(), 2, "{audit:?}");
        assert!(refused.iter().all(|r| r["action"] == "event"));
        assert_eq!(audit.iter().filter(|a| a["decision"] == "done").count(), 9);
        assert!(
            ucloud_wire::inbox::events(&dirs.0).unwrap().is_empty(),
            "events are removed"
        );
        let mode = std::fs::metadata(dirs.1.join(STATE)).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let table: Value =
            serde_json::from_slice(&std::fs::read(dirs.1.join(TABLE)).unwrap()).unwrap();
        assert_eq!(
            table["projects"][P1],
            json!({"title": "Physics", "group": G, "gid": 200001, "drive": null,
                   "driveId": null, "accounts": {"cpu": A}, "members": ["alice", "bob"]})
        );
        // A second run with Slurm and NSS as the first left them does nothing.
        let mut fake = Fake::new(|argv| {
            match argv.get(3).map(String::as_str) {
            Some("assoc") => Output::ok(&format!("ucloud|||||\nucloud|alice||||\nucloud|bob||||\n{A}||cpu=5400|||\n{A}|alice||||\n{A}|bob||||\n")),
            Some("account") => Output::ok(&format!("ucloud|\n{A}|alice\n")),
            _ => Output::ok(""),
        }
        });
        let audit = run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(fake.calls.len(), 2, "{:?}", fake.calls);
        assert!(audit.is_empty(), "{audit:?}");
        // A coordinator made a sub-account under the project's: said, left alone.
        let mut fake = Fake::new(|argv| {
            match argv.get(3).map(String::as_str) {
            Some("assoc") => Output::ok(&format!("ucloud|||||\nucloud|alice||||\nucloud|bob||||\n{A}||cpu=5400|||\n{A}|alice||||\n{A}|bob||||\nside|||||\nside|carol||||\n")),
            Some("account") => Output::ok(&format!("ucloud|\n{A}|alice\n")),
            _ => Output::ok(""),
        }
        });
        let audit = run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(
            fake.calls.len(),
            2,
            "nothing is done to it: {:?}",
            fake.calls
        );
        assert_eq!(audit.len(), 1, "{audit:?}");
        assert_eq!(audit[0]["action"], "sub-account");
        assert_eq!(audit[0]["decision"], "refused");
        assert_eq!(audit[0]["users"], json!(["carol"]));
    }

    /// The outbox's queue, as (method, path, body, reply tag).
    fn queued(outbox: &Path) -> Vec<(String, String, Value, Value)> {
        ucloud_wire::outbox::queued(outbox)
            .unwrap()
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                let method = v["method"].as_str().unwrap_or("POST").to_string();
                let path = v["path"].as_str().unwrap().to_string();
                (method, path, v["body"].clone(), v["reply"].clone())
            })
            .collect()
    }

    /// A scratch site with a project base, a drive table and an outbox, and the
    /// drive side of a run over them.
    fn drive_setup(name: &str) -> ((PathBuf, PathBuf), PathBuf, ProjectConfig, DriveSide) {
        let dirs = scratch(name);
        let root = dirs.1.parent().unwrap().to_path_buf();
        for sub in [
            "base",
            "drives",
            "outbox/tmp",
            "outbox/queue",
            "outbox/replies",
            "outbox/failed",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let mut config = config("");
        config.base = root.join("base").to_string_lossy().into_owned();
        let side = DriveSide {
            outbox: root.join("outbox"),
            table: root.join("drives"),
            lock_dir: root.clone(),
            product: Some(("home".into(), "home".into())),
            wait: std::time::Duration::ZERO,
            // The tests write the replies themselves, as this uid.
            sender: Some(nix::unistd::geteuid().as_raw()),
        };
        (dirs, root, config, side)
    }

    #[test]
    fn a_project_drive_is_asked_about_registered_once_and_recorded() {
        if !nix::unistd::geteuid().is_root() {
            return; // the drive is given the project's group
        }
        let (dirs, root, config, side) = drive_setup("register");
        let reply = |tag: &str, v: Value| {
            std::fs::write(
                root.join(format!("outbox/replies/{tag}.json")),
                v.to_string(),
            )
            .unwrap()
        };
        let slurm = || {
            Fake::new(|argv| match argv.get(3).map(String::as_str) {
                Some("assoc") => Output::ok(&format!(
                    "ucloud|alice||||\nucloud|bob||||\n{A}|alice||||\n{A}|bob||||\n"
                )),
                Some("account") => Output::ok(&format!("ucloud\n{A}\n")),
                _ => Output::ok(""),
            })
        };
        let mut state = member_state(&["Alice#1", "Bob#2"], &["alice", "bob"]);
        let nss = [(G, 200001)];
        // 1. The drive is made, and UCloud asked whether it has it.
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        assert!(
            audit.iter().any(|a| a["action"] == "make-drive"),
            "{audit:?}"
        );
        let q = queued(&side.outbox);
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(q[0].0, "GET");
        assert_eq!(
            q[0].1,
            format!("/api/files/collections/control/browse?filterProviderIds=hpc-project-{P1}&itemsPerPage=250")
        );
        assert_eq!(q[0].3, json!(format!("project-find-{G}")));
        assert_eq!(state.drives[G].pending, Some(Pending::Asked));
        // Asked once: no answer yet, nothing more.
        run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        assert_eq!(queued(&side.outbox).len(), 1);
        // 2. UCloud has none: registered, owned by the project, for all its members.
        reply(
            &format!("project-find-{G}"),
            json!({"items": [], "next": null}),
        );
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        let q = queued(&side.outbox);
        assert_eq!(q.len(), 2, "{q:?}");
        let item = &q[1].2["items"][0];
        assert_eq!(q[1].1, "/api/files/collections/control/register");
        assert_eq!(item["project"], json!(P1));
        assert_eq!(item["createdBy"], json!("_ucloud"));
        assert_eq!(item["spec"]["title"], json!("Physics"));
        assert_eq!(
            item["providerGeneratedId"],
            json!(format!("hpc-project-{P1}"))
        );
        assert_eq!(
            (
                item["projectAllRead"].clone(),
                item["projectAllWrite"].clone()
            ),
            (json!(true), json!(true))
        );
        assert!(audit
            .iter()
            .any(|a| a["action"] == "register-drive" && a["step"] == "register"));
        assert_eq!(state.drives[G].pending, Some(Pending::Sent));
        // Never twice: the registration's answer is awaited, not repeated.
        run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        assert_eq!(queued(&side.outbox).len(), 2);
        // 3. UCloud's id: the drive table entry, and table.json's row.
        reply(
            &format!("project-drive-{G}"),
            json!({"responses": [{"id": "23"}]}),
        );
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        assert!(
            audit
                .iter()
                .any(|a| a["action"] == "record-drive" && a["drive"] == "23"),
            "{audit:?}"
        );
        let entry = ucloud_wire::record::Drive::parse(
            &DriveId::new("23").unwrap(),
            &std::fs::read(side.table.join("23")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            entry.owner,
            ucloud_wire::record::DriveOwner::Project {
                project: P1.into(),
                gid: 200001
            }
        );
        assert_eq!(entry.base, format!("{}/{G}", config.base));
        let mode = std::fs::metadata(side.table.join("23"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
        let table: Value =
            serde_json::from_slice(&std::fs::read(dirs.1.join(TABLE)).unwrap()).unwrap();
        assert_eq!(table["projects"][P1]["driveId"], json!("23"));
        assert_eq!(table["projects"][P1]["drive"], json!(entry.base));
        assert!(std::fs::read_dir(side.outbox.join("replies"))
            .unwrap()
            .next()
            .is_none());
        // 4. Done: nothing queued, nothing said.
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        // (The fake Slurm never shows the limit set, so that is set again.)
        let drives: Vec<&Value> = audit
            .iter()
            .filter(|a| a["action"].as_str().is_some_and(|x| x.contains("drive")))
            .collect();
        assert!(drives.is_empty(), "{drives:?}");
        assert_eq!(queued(&side.outbox).len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_refused_registration_leads_back_to_the_question_and_a_forged_id_takes_nothing() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (dirs, root, config, side) = drive_setup("refused");
        let slurm = || {
            Fake::new(|argv| match argv.get(3).map(String::as_str) {
                Some("assoc") => Output::ok(&format!("{A}|alice||||\n")),
                Some("account") => Output::ok(&format!("ucloud\n{A}\n")),
                _ => Output::ok(""),
            })
        };
        let mut state = member_state(&["Alice#1"], &["alice"]);
        state.drives.insert(
            G.into(),
            DriveReg {
                id: None,
                pending: Some(Pending::Sent),
            },
        );
        let nss = [(G, 200001)];
        // The sender moved the registration to failed/ (409: registered before).
        let failed = root.join("outbox/failed/0001.json");
        std::fs::write(
            &failed,
            json!({"path": "/api/files/collections/control/register", "body": {},
                   "reply": format!("project-drive-{G}")})
            .to_string(),
        )
        .unwrap();
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        assert!(
            audit
                .iter()
                .any(|a| a["action"] == "register-drive" && a["decision"] == "failed"),
            "{audit:?}"
        );
        assert!(!failed.exists());
        let q = queued(&side.outbox);
        assert_eq!((q.len(), q[0].0.as_str()), (1, "GET"));
        assert_eq!(state.drives[G].pending, Some(Pending::Asked));
        // UCloud's answer names a drive id that is Alice's home here: nothing
        // is written over it, and the refusal is said.
        let home = r#"{"id":"17","ucloud":"Alice#1","local":"alice","base":"/home/alice"}"#;
        std::fs::write(side.table.join("17"), home).unwrap();
        let pid = format!("hpc-project-{P1}");
        std::fs::write(
            root.join(format!("outbox/replies/project-find-{G}.json")),
            json!({"items": [{"id": "17", "providerGeneratedId": pid,
                              "owner": {"createdBy": "_ucloud", "project": P1}}]})
            .to_string(),
        )
        .unwrap();
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        assert!(
            audit
                .iter()
                .any(|a| a["action"] == "record-drive" && a["decision"] == "failed"),
            "{audit:?}"
        );
        assert_eq!(
            std::fs::read_to_string(side.table.join("17")).unwrap(),
            home
        );
        assert_eq!(state.drives[G].id, None);
        // Said once, not on every run.
        let audit = run_with(
            &mut slurm(),
            &config,
            &dirs,
            &nss,
            &mut state,
            Some(side.clone()),
        );
        // (The fake Slurm never shows the limit set, so that is set again.)
        let drives: Vec<&Value> = audit
            .iter()
            .filter(|a| a["action"].as_str().is_some_and(|x| x.contains("drive")))
            .collect();
        assert!(drives.is_empty(), "{drives:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn member_state(members: &[&str], here: &[&str]) -> State {
        let mut s = State::default();
        s.projects.insert(
            P1.into(),
            Project {
                title: "Physics".into(),
                members: members
                    .iter()
                    .map(|m| Member {
                        username: UcloudName::new(m).unwrap(),
                        role: Role::User,
                    })
                    .collect(),
                modified: 1,
                here: BTreeSet::new(),
            },
        );
        s.wallets.insert(
            (Owner::Project(P1.into()), "cpu".into()),
            Wallet {
                quota: 100,
                usage: 10,
                locked: false,
                updated: 6,
            },
        );
        s.groups.insert(
            G.into(),
            GroupRec {
                gid: 200001,
                project: P1.into(),
                members: here.iter().map(|h| h.to_string()).collect(),
                drive: false,
            },
        );
        s.accounts.insert(
            A.into(),
            AccountRec {
                owner: AccountOwner::Project(P1.into()),
                category: Some("cpu".into()),
                created: true,
                limit: Some(LimitRec {
                    wallet: 6,
                    cpu_minutes: Some(5400),
                    locked: false,
                }),
                noted: false,
                blocked: BTreeSet::new(),
            },
        );
        s
    }

    fn slurm_with(users: &'static str, limits: &'static str) -> impl FnMut(&[String]) -> Output {
        move |argv: &[String]| match argv.get(3).map(String::as_str) {
            Some("assoc") if argv[1] == "-nP" => {
                let mut out =
                    format!("ucloud|||||\nucloud|alice||||\nucloud|bob||||\n{A}||{limits}\n");
                for u in users.split(',').filter(|u| !u.is_empty()) {
                    out.push_str(&format!("{A}|{u}||||\n"));
                }
                Output::ok(&out)
            }
            Some("account") if argv[1] == "-nP" => Output::ok(&format!("ucloud\n{A}\n")),
            Some("assoc_mgr") => Output::ok(&format!(
                "Account={A} UserName= GrpTRESMins=cpu=5400(2000),mem=N(0)\n"
            )),
            _ if argv.iter().any(|a| a == "remove") && argv.iter().any(|a| a.contains("bob")) => {
                Output::failed(
                    " Error with request: Job(s) active, cancel job(s) before remove\n  JobID = 42",
                )
            }
            _ => Output::ok(""),
        }
    }

    #[test]
    fn a_removed_member_with_running_jobs_is_blocked_then_removed() {
        let dirs = scratch("remove");
        let mut state = member_state(&["Alice#1"], &["alice", "bob"]);
        let mut fake = Fake::new(slurm_with("alice,bob", "cpu=5400|||"));
        let audit = run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(
            fake.calls[2..],
            vec![
                strings(&["gpasswd", "-d", "bob", G]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "remove",
                    "user",
                    "where",
                    "name=bob",
                    &format!("account={A}")
                ]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "remove",
                    "user",
                    "where",
                    "name=bob",
                    &format!("account={A}")
                ]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "modify",
                    "user",
                    "where",
                    "name=bob",
                    &format!("account={A}"),
                    "set",
                    "MaxSubmitJobs=0"
                ]),
            ]
        );
        let actions: Vec<(&str, &str)> = audit
            .iter()
            .map(|a| {
                (
                    a["action"].as_str().unwrap(),
                    a["decision"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            [
                ("remove-member", "done"),
                ("dissociate", "failed"),
                ("block", "done")
            ]
        );
        assert!(audit[1]["error"]
            .as_str()
            .unwrap()
            .contains("Job(s) active"));
        assert!(state.accounts[A].blocked.contains("bob"));
        assert!(!state.groups[G].members.contains("bob"));
        // Next run: still running; tried again, blocked already, said once.
        let mut fake = Fake::new(slurm_with("alice,bob", "cpu=5400|||"));
        let audit = run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(fake.calls.len(), 4, "{:?}", fake.calls);
        assert_eq!(audit.len(), 1, "{audit:?}");
        let mut fake = Fake::new(slurm_with("alice,bob", "cpu=5400|||"));
        assert!(run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state).is_empty());
        // The jobs ended: removed, and no longer blocked.
        let mut fake = Fake::new(|argv: &[String]| {
            match argv.get(3).map(String::as_str) {
            Some("assoc") => Output::ok(&format!("ucloud|||||\nucloud|alice||||\nucloud|bob||||\n{A}||cpu=5400|||\n{A}|alice||||\n{A}|bob||||0\n")),
            Some("account") => Output::ok(&format!("ucloud\n{A}\n")),
            _ => Output::ok(""),
        }
        });
        let audit = run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0]["action"], "dissociate");
        assert_eq!(audit[0]["decision"], "done");
        assert!(state.accounts[A].blocked.is_empty());
    }

    #[test]
    fn a_wallet_update_relimits_locks_and_unlocks() {
        let dirs = scratch("limits");
        let mut state = member_state(&["Alice#1", "Bob#2"], &["alice", "bob"]);
        write_event(
            &dirs.0,
            json!({"type": "wallet", "owner": {"type": "project", "projectId": P1},
            "category": {"name": "cpu", "provider": "hpc"}, "quota": 100, "usage": 40, "locked": true, "updatedAt": 9}),
        );
        let mut fake = Fake::new(slurm_with("alice,bob", "cpu=5400|||"));
        run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(
            fake.calls[2..],
            vec![
                strings(&[
                    "scontrol",
                    "-o",
                    "show",
                    "assoc_mgr",
                    &format!("accounts={A}"),
                    "flags=assoc"
                ]),
                // 2000 used + 60 core-hours left.
                strings(&[
                    "sacctmgr",
                    "-i",
                    "modify",
                    "account",
                    "where",
                    &format!("name={A}"),
                    "set",
                    "GrpTRESMins=cpu=5600",
                    "GrpSubmitJobs=0"
                ]),
            ]
        );
        write_event(
            &dirs.0,
            json!({"type": "wallet", "owner": {"type": "project", "projectId": P1},
            "category": {"name": "cpu", "provider": "hpc"}, "quota": 100, "usage": 40, "locked": false, "updatedAt": 10}),
        );
        let mut fake = Fake::new(slurm_with("alice,bob", "cpu=5600|0||"));
        run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(
            fake.calls.last().unwrap(),
            &strings(&[
                "sacctmgr",
                "-i",
                "modify",
                "account",
                "where",
                &format!("name={A}"),
                "set",
                "GrpSubmitJobs=-1"
            ])
        );
        // An older state replayed changes nothing.
        write_event(
            &dirs.0,
            json!({"type": "wallet", "owner": {"type": "project", "projectId": P1},
            "category": {"name": "cpu", "provider": "hpc"}, "quota": 1, "usage": 1, "locked": true, "updatedAt": 8}),
        );
        let mut fake = Fake::new(slurm_with("alice,bob", "cpu=5600|||"));
        let audit = run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(fake.calls.len(), 2, "{:?}", fake.calls);
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0]["decision"], "refused");
    }

    #[test]
    fn a_project_that_left_is_locked_and_its_members_dissociated() {
        let dirs = scratch("left");
        let mut state = member_state(&["Alice#1", "Bob#2"], &["alice", "bob"]);
        write_event(
            &dirs.0,
            json!({"type": "wallet", "owner": {"type": "project", "projectId": P1},
            "category": {"name": "cpu", "provider": "hpc"}, "quota": 0, "usage": 40, "locked": true, "updatedAt": 9}),
        );
        let mut fake = Fake::new(|argv: &[String]| {
            match argv.get(3).map(String::as_str) {
            Some("assoc") if argv[1] == "-nP" => Output::ok(&format!("ucloud|||||\nucloud|alice||||\nucloud|bob||||\n{A}||cpu=5400|||\n{A}|alice||||\n{A}|bob||||\n")),
            Some("account") if argv[1] == "-nP" => Output::ok(&format!("ucloud\n{A}\n")),
            Some("assoc_mgr") => Output::ok(&format!("Account={A} UserName= GrpTRESMins=cpu=5400(3000)\n")),
            _ => Output::ok(""),
        }
        });
        run(&mut fake, &config(""), &dirs, &[(G, 200001)], &mut state);
        assert_eq!(
            fake.calls[3..],
            vec![
                strings(&[
                    "sacctmgr",
                    "-i",
                    "remove",
                    "user",
                    "where",
                    "name=alice,bob",
                    &format!("account={A}")
                ]),
                strings(&[
                    "sacctmgr",
                    "-i",
                    "modify",
                    "account",
                    "where",
                    &format!("name={A}"),
                    "set",
                    "GrpTRESMins=cpu=3000",
                    "GrpSubmitJobs=0"
                ]),
            ]
        );
        // Group and members stay.
        assert_eq!(state.groups[G].members.len(), 2);
    }

    #[test]
    fn the_hook_is_used_when_set_and_a_silent_slurm_stops_only_slurm_steps() {
        let dirs = scratch("hook");
        let mut state = member_state(&["Alice#1"], &[]);
        state.groups.clear();
        state.accounts.clear();
        let mut fake = Fake::new(|argv: &[String]| match argv[0].as_str() {
            "sacctmgr" => Output::failed(
                "sacctmgr: error: Problem talking to the database: Connection refused",
            ),
            _ => Output::ok(""),
        });
        let audit = run(
            &mut fake,
            &config("/usr/local/sbin/ldap-groups"),
            &dirs,
            &[],
            &mut state,
        );
        assert_eq!(
            fake.calls[1..],
            vec![
                strings(&["/usr/local/sbin/ldap-groups", "add-group", G, "200000"]),
                strings(&["/usr/local/sbin/ldap-groups", "add-member", G, "alice"]),
            ]
        );
        assert_eq!(audit[0]["action"], "query");
        assert_eq!(audit[0]["decision"], "failed");
        assert!(state.accounts.is_empty());
        // A failed hook: audited once, retried, the record kept.
        let mut fake = Fake::new(|argv: &[String]| match argv[0].as_str() {
            "sacctmgr" => Output::failed(
                "sacctmgr: error: Problem talking to the database: Connection refused",
            ),
            _ => Output::failed("ldap: server down"),
        });
        state.groups.get_mut(G).unwrap().members.clear();
        let audit = run(
            &mut fake,
            &config("/usr/local/sbin/ldap-groups"),
            &dirs,
            &[],
            &mut state,
        );
        assert_eq!(audit.len(), 2, "{audit:?}");
        assert_eq!(audit[1]["error"], "ldap: server down");
        assert!(state.groups.contains_key(G));
    }
}
