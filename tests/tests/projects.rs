//! UCloud projects on the site, end to end: a project made at the simulator (UCloud)
//! with an allocation here reaches the module through UCloud's notification stream
//! (the sender writes it to the inbox), and ucloud-project turns it into a Unix
//! group, a Slurm account with an association per mapped member, a limit from the
//! allocation and a project drive. Real Slurm and slurmdbd decide what a job may do;
//! nothing is faked.

use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use ucloud_im_tests::{job_id, run_as, wait_until, ScratchAccount, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn stack() -> Stack {
    let stack = Stack::with_slurm();
    stack.get("UCLOUD_IM_PROJECTS");
    stack
}

/// A `/sim/...` call that must succeed; its answer.
fn sim(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = stack.sim_api(method, path, body.clone(), 30);
    assert_eq!(status, 200, "{method} {path} {body:?}: {answer}");
    answer
}

/// ucloud-project's published table (`table.json`).
fn table(stack: &Stack) -> Value {
    let path = PathBuf::from(stack.get("UCLOUD_IM_PROJECTS")).join("table.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// The project's row of the table once `ready` holds for it (ucloud-project acts
/// within a second or two of the simulator's change).
fn project_row(stack: &Stack, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let mut row = Value::Null;
    wait_until(what, 20, || {
        row = table(stack)["projects"][id].clone();
        !row.is_null() && ready(&row)
    });
    row
}

fn members(row: &Value) -> Vec<String> {
    let mut m: Vec<String> = row["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    m.sort();
    m
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The local accounts in the Unix group `group`, sorted.
fn group_members(group: &str) -> Vec<String> {
    let line = output("getent", &["group", group]);
    let mut m: Vec<String> = line
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    m.sort();
    m
}

/// The users with an association in the Slurm account, sorted.
fn associations(account: &str) -> Vec<String> {
    let text = output(
        "sacctmgr",
        &[
            "-nP",
            "show",
            "assoc",
            &format!("account={account}"),
            "format=user",
        ],
    );
    let mut users: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    users.sort();
    users
}

/// A limit of the Slurm account's own association, as sacctmgr prints it.
fn account_limit(account: &str, field: &str) -> String {
    output(
        "sacctmgr",
        &[
            "-nP",
            "show",
            "assoc",
            &format!("account={account}"),
            "user=",
            &format!("format={field}"),
        ],
    )
    .lines()
    .next()
    .unwrap_or("")
    .trim()
    .to_string()
}

fn slurm_field(slurm_id: u64, key: &str) -> String {
    let text = output("scontrol", &["-o", "show", "job", &slurm_id.to_string()]);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("scontrol shows no {key} for job {slurm_id}: {text}"))
        .to_string()
}

/// A project of Alice (PI) and Bob (USER) with `quota` core-minutes of the stack's
/// compute category here; its id and its row once both members are in.
fn alice_and_bobs_project(stack: &Stack, quota: u64) -> (String, Value) {
    let created = sim(
        stack,
        "POST",
        "/sim/projects",
        Some(json!({"title": "Protein folding", "members": [
            {"username": ALICE, "role": "PI"}, {"username": BOB, "role": "USER"}]})),
    );
    let id = created["id"]
        .as_str()
        .expect("the project's id")
        .to_string();
    let category = stack.job_product()["category"].clone();
    sim(
        stack,
        "POST",
        "/sim/allocations",
        Some(json!({"owner": {"type": "project", "projectId": id},
            "category": {"name": category, "provider": stack.get("UCLOUD_IM_PROVIDER")},
            "quota": quota})),
    );
    let (alice, bob) = (stack.local_of(ALICE), stack.local_of(BOB));
    let mut want = vec![alice, bob];
    want.sort();
    let row = project_row(stack, &id, "both members in the project's table row", |r| {
        members(r) == want && r["accounts"].as_object().is_some_and(|a| !a.is_empty())
    });
    (id, row)
}

/// Reports `usage` as the project's total in `category`, as the provider's monitor
/// does (`POST /api/accounting/v2/reportUsage` under the provider's access token).
fn report_usage(stack: &Stack, project: &str, category: &str, usage: u64) {
    let refresh = std::fs::read_to_string(stack.prefix().join("etc/ucloud-im/refresh-token"))
        .expect("the provider's refresh token");
    let curl = |path: &str, token: Option<&str>, body: Value| -> Value {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "30",
            "--cacert",
            &stack.get("UCLOUD_IM_CA"),
        ])
        .args(["-X", "POST", "--data", &body.to_string()]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c
            .arg(format!("{}{path}", stack.get("UCLOUD_SIM_URL")))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let answer = curl(
        "/auth/providers/refresh",
        None,
        json!({"items": [{"refreshToken": refresh.trim()}]}),
    );
    let token = answer["responses"][0]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {answer}"))
        .to_string();
    let answer = curl(
        "/api/accounting/v2/reportUsage",
        Some(&token),
        json!({"items": [{"isDeltaCharge": false,
            "owner": {"type": "project", "username": "", "projectId": project},
            "categoryIdV2": {"name": category, "provider": stack.get("UCLOUD_IM_PROVIDER")},
            "usage": usage, "description": {"scope": null, "description": null}}]}),
    );
    assert!(answer["responses"].is_array(), "reportUsage: {answer}");
}

fn category(stack: &Stack) -> String {
    stack.job_product()["category"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_project_becomes_a_group_and_a_slurm_account_and_members_act_on_each_others_jobs() {
    let stack = stack();
    let (alice, bob) = (stack.local_of(ALICE), stack.local_of(BOB));
    let (project, row) = alice_and_bobs_project(&stack, 100_000);
    let group = row["group"].as_str().unwrap().to_string();
    let prefix = stack.get("UCLOUD_IM_PROJECT_PREFIX");
    assert!(group.starts_with(&prefix), "{group} lacks {prefix}");
    let mut both = vec![alice.clone(), bob.clone()];
    both.sort();
    assert_eq!(group_members(&group), both, "the project's group");
    let account = row["accounts"][category(&stack)]
        .as_str()
        .expect("a Slurm account for the compute category")
        .to_string();
    assert!(account.starts_with(&prefix), "{account}");
    let assoc = associations(&account);
    assert!(
        assoc.contains(&alice) && assoc.contains(&bob),
        "associations of {account}: {assoc:?}"
    );

    // Bob's job for the project runs under the project's account.
    let id = job_id();
    stack.ucloud_knows(&id, BOB, Some(&project));
    let slurm_id = stack.create_job(BOB, &id, "sleep 300", 10, 1, Some(&project));
    assert_eq!(slurm_field(slurm_id, "Account"), account);
    assert_eq!(
        slurm_field(slurm_id, "UserId").split('(').next().unwrap(),
        bob
    );
    wait_until("Bob's project job to run", 30, || {
        slurm_field(slurm_id, "JobState") == "RUNNING"
    });

    // A user outside the project cannot stop it, whatever the request says.
    let outsider_name = format!("CarlOutsider#{}", std::process::id());
    let outsider = ScratchAccount::new(&stack, "ucim-carl", &outsider_name);
    let out = stack.registry(&["add", &outsider_name, &outsider.name, "--wait", "15"]);
    assert!(out.status.success(), "{}", ucloud_im_tests::described(&out));
    let mut job = stack.shell_job(BOB, &id, "sleep 300", 10);
    job["owner"]["project"] = json!(project);
    let terminate = format!("/ucloud/{}/jobs/terminate", stack.get("UCLOUD_IM_PROVIDER"));
    let request = json!({"items": [job]}).to_string();
    let (status, body) = stack.call(Some(&outsider_name), "POST", &terminate, Some(&request));
    assert_eq!(status, 403, "the outsider's terminate: {body}");
    assert_eq!(
        slurm_field(slurm_id, "JobState"),
        "RUNNING",
        "the outsider's terminate touched the job"
    );

    // Alice, the project's PI, stops Bob's job.
    let (status, body) = stack.call(Some(ALICE), "POST", &terminate, Some(&request));
    assert_eq!(
        status, 200,
        "Alice's terminate of Bob's project job: {body}"
    );
    wait_until("Bob's job cancelled", 20, || {
        slurm_field(slurm_id, "JobState") == "CANCELLED"
    });
    drop(outsider);
}

#[test]
fn the_allocation_is_a_slurm_limit_and_a_locked_wallet_stops_new_jobs() {
    let stack = stack();
    let bob = stack.local_of(BOB);
    let (project, row) = alice_and_bobs_project(&stack, 30);
    let account = row["accounts"][category(&stack)]
        .as_str()
        .unwrap()
        .to_string();
    // 30 core-minutes left of the allocation, on top of what Slurm counted so far (none).
    let limit = account_limit(&account, "GrpTRESMins");
    assert_eq!(limit, "cpu=30", "{account}'s GrpTRESMins");

    // A job that would need more than what is left waits, held by Slurm itself.
    let big = job_id();
    stack.ucloud_knows(&big, BOB, Some(&project));
    let slurm_id = stack.create_job(BOB, &big, "sleep 60", 60, 1, Some(&project));
    wait_until("Slurm to hold the job over the limit", 20, || {
        slurm_field(slurm_id, "Reason") == "AssocGrpCPUMinutesLimit"
    });
    assert_eq!(slurm_field(slurm_id, "JobState"), "PENDING");
    let out = Command::new("scancel")
        .arg(slurm_id.to_string())
        .output()
        .unwrap();
    assert!(out.status.success());

    // Usage reported past the quota (as the provider reports it) locks the wallet;
    // Slurm then refuses new jobs on the project's account.
    report_usage(&stack, &project, &category(&stack), 31);
    wait_until("the project's account to refuse new jobs", 20, || {
        account_limit(&account, "GrpSubmit") == "0"
    });
    let refused = run_as(
        &bob,
        &[
            "sbatch",
            &format!("--account={account}"),
            "--chdir=/tmp",
            "--output=/dev/null",
            "--wrap=true",
        ],
    );
    assert!(!refused.status.success(), "sbatch on a locked account");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("policy"), "Slurm's reason: {why}");
}

#[test]
fn a_removed_member_loses_group_association_and_drive() {
    let stack = stack();
    let (alice, bob) = (stack.local_of(ALICE), stack.local_of(BOB));
    let (project, row) = alice_and_bobs_project(&stack, 1000);
    let group = row["group"].as_str().unwrap().to_string();
    let account = row["accounts"][category(&stack)]
        .as_str()
        .unwrap()
        .to_string();
    let drive = PathBuf::from(row["drive"].as_str().expect("a project drive"));
    // Both members can use the drive, through the group.
    let file = drive.join(format!("bob-{}", std::process::id()));
    let wrote = run_as(
        &bob,
        &[
            "sh",
            "-c",
            &format!("umask 007; echo hello > '{}'", file.display()),
        ],
    );
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );
    let read = run_as(&alice, &["cat", &file.display().to_string()]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "hello\n");

    // The drive is UCloud's too: registered with the project as its owner, and file
    // calls on it work for both members, with what one makes shared with the other.
    let row = project_row(&stack, &project, "the project drive registered", |r| {
        r["driveId"].is_string()
    });
    let drive_id = row["driveId"].as_str().unwrap().to_string();
    let drives: Value = serde_json::from_slice(
        &std::fs::read(PathBuf::from(stack.get("UCLOUD_IM_STATE")).join("drives.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        drives["drives"][&drive_id]["owner"]["project"], project,
        "UCloud's drive {drive_id}: {}",
        drives["drives"][&drive_id]
    );
    let folder_call = |user: &str, name: &str| {
        let body =
            json!({"items": [{"id": format!("/{drive_id}/{name}"), "conflictPolicy": "REJECT"}]});
        let path = format!("/ucloud/{}/files/folder", stack.get("UCLOUD_IM_PROVIDER"));
        stack.call(Some(user), "POST", &path, Some(&body.to_string()))
    };
    let made = format!("from-bob-{}", std::process::id());
    let (status, body) = folder_call(BOB, &made);
    assert_eq!(status, 200, "Bob's folder in the project drive: {body}");
    let meta = std::fs::metadata(drive.join(&made)).unwrap();
    assert_eq!(
        meta.gid(),
        row["gid"].as_u64().unwrap() as u32,
        "the project's group"
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o2770,
        "umask 007 in a setgid drive"
    );
    let browse = json!({
        "resolvedCollection": {"id": drive_id, "specification": {"title": "x",
            "product": {"id": "home", "category": "home", "provider": stack.get("UCLOUD_IM_PROVIDER")}}},
        "browse": {"flags": {"path": format!("/{drive_id}")}, "itemsPerPage": 50, "next": null,
            "sortBy": "PATH", "sortDirection": "ascending"},
    });
    let path = format!("/ucloud/{}/files/browse", stack.get("UCLOUD_IM_PROVIDER"));
    let (status, listing) = stack.call(Some(ALICE), "POST", &path, Some(&browse.to_string()));
    assert_eq!(status, 200, "Alice browses the project drive: {listing}");
    assert!(listing.to_string().contains(&made), "{listing}");

    sim(
        &stack,
        "DELETE",
        &format!(
            "/sim/projects/{project}/members/{}",
            BOB.replace('#', "%23")
        ),
        None,
    );
    project_row(&stack, &project, "Bob gone from the project's row", |r| {
        members(r) == [alice.clone()]
    });
    assert_eq!(group_members(&group), std::slice::from_ref(&alice));
    assert!(!associations(&account).contains(&bob));
    // A new process of Bob's has no access any more (the kernel decides).
    let denied = run_as(&bob, &["ls", &drive.display().to_string()]);
    assert!(
        !denied.status.success(),
        "Bob still lists the project drive"
    );
    // Nor through UCloud: the next file call of Bob's is refused.
    let (status, body) = folder_call(BOB, "after-removal");
    assert!(
        (400..500).contains(&status),
        "Bob's folder after his removal: {status} {body}"
    );
    assert!(!drive.join("after-removal").exists());
    // The data stays.
    assert!(file.exists());
}

#[test]
fn a_member_who_connects_later_joins_the_group_and_the_account() {
    let stack = stack();
    let alice = stack.local_of(ALICE);
    let newcomer_name = format!("DanLate#{}", std::process::id());
    let newcomer = ScratchAccount::new(&stack, "ucim-dan", &newcomer_name);
    // UCloud knows Dan as a member before he ever connects to this site.
    let created = sim(
        &stack,
        "POST",
        "/sim/projects",
        Some(json!({"title": "Late joiner", "members": [
            {"username": ALICE, "role": "PI"}, {"username": newcomer_name, "role": "ADMIN"}]})),
    );
    let project = created["id"].as_str().unwrap().to_string();
    sim(
        &stack,
        "POST",
        "/sim/allocations",
        Some(json!({"owner": {"type": "project", "projectId": project},
            "category": {"name": category(&stack), "provider": stack.get("UCLOUD_IM_PROVIDER")},
            "quota": 1000})),
    );
    let row = project_row(&stack, &project, "the project with Alice alone", |r| {
        members(r) == [alice.clone()]
    });
    let group = row["group"].as_str().unwrap().to_string();
    assert!(!group_members(&group).contains(&newcomer.name));

    // He connects: the registry announces him, and he is in before `add` returns.
    let out = stack.registry(&["add", &newcomer_name, &newcomer.name, "--wait", "15"]);
    assert!(out.status.success(), "{}", ucloud_im_tests::described(&out));
    let mut both = vec![alice.clone(), newcomer.name.clone()];
    both.sort();
    let row = project_row(&stack, &project, "Dan in the project's row", |r| {
        members(r) == both
    });
    assert_eq!(group_members(&group), both);
    let account = row["accounts"][category(&stack)]
        .as_str()
        .unwrap()
        .to_string();
    assert!(associations(&account).contains(&newcomer.name));
    // As an admin of the project he coordinates its account in Slurm.
    let coordinators = output(
        "sacctmgr",
        &[
            "-nP",
            "show",
            "account",
            "where",
            &format!("name={account}"),
            "withcoord",
            "format=Coordinators",
        ],
    );
    assert!(
        coordinators.contains(&newcomer.name) && coordinators.contains(&alice),
        "coordinators of {account}: {coordinators}"
    );
    // And he has the site's default association, which Slurm requires of everyone.
    assert!(associations("ucloud").contains(&newcomer.name));
}
