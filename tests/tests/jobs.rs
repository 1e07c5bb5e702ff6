//! Slurm jobs through the local stack: the simulator sends jobs the way UCloud does,
//! the chain runs the jobs.* plugins as the mapped users, and a real one-node Slurm
//! cluster (scripts/slurm) runs the jobs. Nothing is faked: sbatch, squeue, scancel
//! and scontrol are Debian's, and the jobs really run as ucim-alice.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use ucloud_im_tests::{job_id, run_as, uid_of, unique, wait_until, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn provider_path(stack: &Stack, rest: &str) -> String {
    format!("/ucloud/{}/{rest}", stack.get("UCLOUD_IM_PROVIDER"))
}

fn home_of(user: &str) -> PathBuf {
    let output = Command::new("getent")
        .args(["passwd", user])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&output.stdout).into_owned();
    PathBuf::from(
        line.trim()
            .split(':')
            .nth(5)
            .unwrap_or_else(|| panic!("no account {user}")),
    )
}

fn job_folder(user: &str, id: &str) -> PathBuf {
    home_of(user).join("ucloud-jobs").join(id)
}

/// A Job as UCloud's core sends it to jobs.create: `invocation` is the application's
/// invocation, `parameters` the values the user gave.
fn job(stack: &Stack, id: &str, invocation: Value, parameters: Value, cpu: u64) -> Value {
    let app = stack.get("UCLOUD_IM_JOB_APP");
    let (name, version) = app
        .rsplit_once(':')
        .expect("UCLOUD_IM_JOB_APP is name:version");
    let product = stack.job_product();
    let definitions: Vec<Value> = parameters
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| json!({"name": key, "type": value["type"], "optional": true}))
        .collect();
    json!({
        "id": id,
        "createdAt": 1_764_000_000_000u64,
        "owner": {"createdBy": ALICE, "project": null},
        "permissions": null,
        "updates": [],
        "specification": {
            "product": product,
            "application": {"name": name, "version": version},
            "name": "test job",
            "replicas": 1,
            "parameters": parameters,
            "resources": [],
            "timeAllocation": {"hours": 0, "minutes": 10, "seconds": 0}
        },
        "status": {
            "state": "IN_QUEUE",
            "resolvedApplication": {
                "metadata": {"name": name, "version": version},
                "invocation": {"invocation": invocation, "parameters": definitions}
            },
            "resolvedProduct": {"name": product["id"], "category": product["category"], "cpu": cpu, "memoryInGigs": 1, "gpu": 0}
        }
    })
}

fn words(words: &[&str]) -> Vec<Value> {
    words
        .iter()
        .map(|w| json!({"type": "word", "word": w}))
        .collect()
}

fn create(stack: &Stack, user: &str, jobs: &[Value]) -> (u16, Value) {
    let body = json!({ "items": jobs }).to_string();
    stack.call(
        Some(user),
        "POST",
        &provider_path(stack, "jobs"),
        Some(&body),
    )
}

/// `scontrol -o show job ID` as `KEY=value` pairs (values hold no spaces for our jobs).
fn show_job(slurm_id: &str) -> std::collections::BTreeMap<String, String> {
    let output = Command::new("scontrol")
        .args(["-o", "show", "job", slurm_id])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scontrol show job {slurm_id}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every job Slurm knows with this name, as `slurmId state user` lines.
fn slurm_jobs_named(name: &str) -> Vec<String> {
    let output = Command::new("squeue")
        .args(["-h", "-t", "all", "-n", name, "-o", "%i %T %u"])
        .output()
        .unwrap();
    assert!(output.status.success(), "squeue failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn state_of(slurm_id: &str) -> String {
    show_job(slurm_id)
        .get("JobState")
        .cloned()
        .unwrap_or_default()
}

/// The Slurm id inside the provider id jobs.create returned (`<user>/<slurmId>`).
fn slurm_id_of(response: &Value) -> String {
    let provider_id = response["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {response}"));
    let slurm_id = provider_id.rsplit('/').next().unwrap().to_string();
    assert!(
        !slurm_id.is_empty() && slurm_id.bytes().all(|b| b.is_ascii_digit()),
        "provider id {provider_id:?} holds no Slurm id"
    );
    slurm_id
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Slurm job `slurm_id` is `alice`'s, named `id` and tagged, with the product's
/// resources (2 CPUs), running in `folder`.
fn submitted_as(slurm_id: &str, alice: &str, id: &str, folder: &Path) {
    let shown = show_job(slurm_id);
    let field = |key: &str| shown.get(key).cloned().unwrap_or_default();
    assert_eq!(
        field("UserId"),
        format!("{alice}({})", uid_of(alice)),
        "{shown:?}"
    );
    assert_eq!(field("JobName"), id);
    assert_eq!(field("Comment"), "ucloud-im");
    assert_eq!(field("CPUs/Task"), "2");
    assert_eq!(field("MinMemoryNode"), "1G");
    assert_eq!(field("TimeLimit"), "00:10:00");
    assert_eq!(field("Partition"), "small");
    // `--nodes=1` reads back as the range 1-1 once the job runs.
    assert!(
        ["1", "1-1"].contains(&field("NumNodes").as_str()),
        "{shown:?}"
    );
    assert_eq!(Path::new(&field("WorkDir")), folder);
}

/// The job's folder and what the job wrote are `alice`'s, the folder closed to others.
fn private_to(alice: &str, folder: &Path, stdout: &Path) {
    for path in [folder, stdout, &folder.join("job.sbatch")] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            meta.uid(),
            uid_of(alice),
            "{} is not Alice's",
            path.display()
        );
    }
    assert_eq!(
        std::fs::metadata(folder).unwrap().mode() & 0o077,
        0,
        "job folder open to others"
    );
}

#[test]
fn alice_runs_a_real_slurm_job_that_bob_cannot_stop_and_she_can() {
    let stack = Stack::with_slurm();
    let id = job_id();
    let invocation = json!(words(&["sh", "-c", "echo job-started; sleep 300"]));
    let (status, body) = create(&stack, ALICE, &[job(&stack, &id, invocation, json!({}), 2)]);
    assert_eq!(status, 200, "jobs.create: {body}");
    let responses = body["responses"].as_array().expect("responses: a list");
    assert_eq!(responses.len(), 1, "{body}");
    let slurm_id = slurm_id_of(&responses[0]);

    // The Slurm job is Alice's, named and tagged, with the product's resources.
    let alice = stack.local_of(ALICE);
    let folder = job_folder(&alice, &id);
    submitted_as(&slurm_id, &alice, &id, &folder);

    // Its output lands in Alice's job folder, written by Alice.
    let stdout = folder.join("stdout.txt");
    wait_until("the job's first line", 30, || {
        read(&stdout).contains("job-started")
    });
    private_to(&alice, &folder, &stdout);

    // The same job id again is refused, and nothing new is submitted.
    let again = job(&stack, &id, json!(words(&["true"])), json!({}), 1);
    let (status, body) = create(&stack, ALICE, &[again]);
    assert_eq!(status, 409, "a second create of {id}: {body}");
    assert_eq!(
        slurm_jobs_named(&id).len(),
        1,
        "{:?}",
        slurm_jobs_named(&id)
    );

    // Bob cannot stop it: not by its UCloud id, not with its provider id either.
    let terminate = provider_path(&stack, "jobs/terminate");
    for item in [
        json!({"id": id}),
        json!({"id": id, "providerGeneratedId": responses[0]["id"]}),
    ] {
        let request = json!({ "items": [item] }).to_string();
        let (status, body) = stack.call(Some(BOB), "POST", &terminate, Some(&request));
        assert!(
            status == 404 || status == 400,
            "Bob's terminate: {status} {body}"
        );
        assert!(
            body["why"].as_str().is_some_and(|w| !w.is_empty()),
            "{body}"
        );
        assert_eq!(
            state_of(&slurm_id),
            "RUNNING",
            "Bob's terminate touched the job"
        );
    }
    // Bob cannot reach it with scancel either (Slurm's own check, as a cross-check).
    let output = run_as(&stack.local_of(BOB), &["scancel", &slurm_id]);
    assert!(!output.status.success(), "Bob's scancel succeeded");

    // Alice's own provider id must name the job found by name: a wrong one is refused.
    let wrong = json!({"items": [{"id": id, "providerGeneratedId": format!("{alice}/999999")}]});
    let (status, body) = stack.call(Some(ALICE), "POST", &terminate, Some(&wrong.to_string()));
    assert_eq!(status, 400, "{body}");
    assert_eq!(state_of(&slurm_id), "RUNNING");

    // What Slurm does not let an ordinary user do is refused with Slurm's reason.
    let extend = json!({"items": [{"job": {"id": id}, "requestedTime": {"hours": 1, "minutes": 0, "seconds": 0}}]});
    let (status, body) = stack.call(
        Some(ALICE),
        "POST",
        &provider_path(&stack, "jobs/extend"),
        Some(&extend.to_string()),
    );
    assert_eq!(status, 400, "extend: {body}");
    assert!(body["why"].as_str().unwrap().contains("denied"), "{body}");
    assert_eq!(show_job(&slurm_id)["TimeLimit"], "00:10:00");
    let suspend = json!({"items": [{"job": {"id": id}}]}).to_string();
    for call in ["jobs/suspend", "jobs/unsuspend"] {
        let (status, body) = stack.call(
            Some(ALICE),
            "POST",
            &provider_path(&stack, call),
            Some(&suspend),
        );
        assert_eq!(status, 400, "{call}: {body}");
        assert!(body["why"].as_str().unwrap().contains("denied"), "{body}");
    }
    assert_eq!(state_of(&slurm_id), "RUNNING");

    // Alice stops it, without providerGeneratedId, as UCloud may send it.
    let request = json!({"items": [{"id": id}]}).to_string();
    let (status, body) = stack.call(Some(ALICE), "POST", &terminate, Some(&request));
    assert_eq!(status, 200, "Alice's terminate: {body}");
    assert_eq!(body, json!({"responses": [{}]}));
    wait_until("the job to be CANCELLED", 20, || {
        state_of(&slurm_id) == "CANCELLED"
    });
    // Terminating a job that already ended is no error.
    let (status, body) = stack.call(Some(ALICE), "POST", &terminate, Some(&request));
    assert_eq!(status, 200, "second terminate: {body}");
    let _ = std::fs::remove_dir_all(&folder);
}

#[test]
fn hostile_parameter_values_stay_literal_text() {
    let stack = Stack::with_slurm();
    let id = job_id();
    let canary = std::env::temp_dir().join(format!("ucim-canary-{id}"));
    let c = canary.display().to_string();
    let values = [
        format!("$(touch {c}-dollar)"),
        format!("`touch {c}-tick`"),
        format!("'; touch {c}-quote; echo '"),
        format!("\"; touch {c}-dquote; echo \""),
        format!("line one\ntouch {c}-newline"),
        "--help".to_string(),
        "-n".to_string(),
        "${HOME} * ~ \\ |&;<>".to_string(),
    ];
    let mut parameters = serde_json::Map::new();
    let mut invocation = words(&["printf", "[%s]\\n"]);
    for (index, value) in values.iter().enumerate() {
        let name = format!("p{index}");
        parameters.insert(name.clone(), json!({"type": "text", "value": value}));
        invocation.push(json!({"type": "var", "variableNames": [name],
            "isPrefixVariablePartOfArg": false, "isSuffixVariablePartOfArg": false}));
    }
    // Prefixes and flags from the application are words too: glued, split, and a flag.
    parameters.insert("glued".into(), json!({"type": "integer", "value": 42}));
    invocation.push(
        json!({"type": "var", "variableNames": ["glued"], "prefixGlobal": "--entries",
        "prefixVariable": "--entry", "suffixVariable": "--next",
        "isPrefixVariablePartOfArg": true, "isSuffixVariablePartOfArg": false}),
    );
    parameters.insert("flag".into(), json!({"type": "boolean", "value": true}));
    invocation.push(json!({"type": "bool_flag", "variableName": "flag", "flag": "--verbose"}));
    invocation.push(json!({"type": "var", "variableNames": ["absent"], "prefixGlobal": "--never"}));

    let (status, body) = create(
        &stack,
        ALICE,
        &[job(&stack, &id, json!(invocation), json!(parameters), 1)],
    );
    assert_eq!(status, 200, "jobs.create: {body}");
    let slurm_id = slurm_id_of(&body["responses"][0]);
    let folder = job_folder(&stack.local_of(ALICE), &id);
    wait_until("the job to finish", 60, || {
        !["PENDING", "CONFIGURING", "RUNNING", "COMPLETING"].contains(&state_of(&slurm_id).as_str())
    });
    assert_eq!(
        state_of(&slurm_id),
        "COMPLETED",
        "stderr: {}",
        read(&folder.join("stderr.txt"))
    );
    let mut expected: String = values.iter().map(|v| format!("[{v}]\n")).collect();
    expected.push_str("[--entries]\n[--entry42]\n[--next]\n[--verbose]\n");
    assert_eq!(read(&folder.join("stdout.txt")), expected);
    assert_eq!(read(&folder.join("stderr.txt")), "");
    for suffix in ["dollar", "tick", "quote", "dquote", "newline"] {
        let path = format!("{c}-{suffix}");
        assert!(
            !Path::new(&path).exists(),
            "{path} exists: a value was executed"
        );
    }
    let _ = std::fs::remove_dir_all(&folder);
}

#[test]
fn slurm_refusals_are_400s_with_slurms_reason_and_leave_nothing_behind() {
    let stack = Stack::with_slurm();
    let alice = stack.local_of(ALICE);

    // More CPUs than any partition has: sbatch refuses at submit time.
    let id = job_id();
    let (status, body) = create(
        &stack,
        ALICE,
        &[job(&stack, &id, json!(words(&["true"])), json!({}), 64)],
    );
    assert_eq!(status, 400, "{body}");
    let why = body["why"].as_str().unwrap_or_default();
    assert!(
        why.contains("More processors requested than permitted"),
        "{body}"
    );
    assert!(
        !job_folder(&alice, &id).exists(),
        "a refused job left its folder"
    );
    assert!(slurm_jobs_named(&id).is_empty());

    // One bad job in a bulk request: the good one before it is cancelled and removed.
    let good = job_id();
    let bad = job_id();
    let (status, body) = create(
        &stack,
        ALICE,
        &[
            job(&stack, &good, json!(words(&["sleep", "300"])), json!({}), 1),
            job(&stack, &bad, json!(words(&["true"])), json!({}), 64),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        !job_folder(&alice, &good).exists(),
        "the good job's folder stayed"
    );
    assert!(!job_folder(&alice, &bad).exists());
    for line in slurm_jobs_named(&good) {
        assert!(
            line.contains("CANCELLED"),
            "the good job was not cancelled: {line}"
        );
    }

    // An application the site did not enable is refused before anything is made.
    let id = job_id();
    let mut unknown = job(&stack, &id, json!(words(&["true"])), json!({}), 1);
    unknown["specification"]["application"] = json!({"name": "not-enabled", "version": "1"});
    let (status, body) = create(&stack, ALICE, &[unknown]);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["why"].as_str().unwrap().contains("not enabled"),
        "{body}"
    );
    assert!(!job_folder(&alice, &id).exists());

    // A job id that could leave the jobs directory is refused by the provider
    // (UCloud never sends one: it goes unchecked, past the simulator's own refusal).
    let escape =
        json!({"items": [job(&stack, "../../etc", json!(words(&["true"])), json!({}), 1)]});
    let (status, body) = stack.call_unchecked(
        Some(ALICE),
        "POST",
        &provider_path(&stack, "jobs"),
        Some(&escape.to_string()),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        !body["why"]
            .as_str()
            .unwrap_or_default()
            .contains("UCloud would send no such"),
        "the simulator refused it, not the provider: {body}"
    );
    assert!(slurm_jobs_named("../../etc").is_empty());
}

/// The product table names a partition Slurm does not have: the plugin, run as Alice
/// with that table (the dispatcher's environment, the stack's drive table), gets
/// Slurm's "invalid partition" as a 400 and removes the folder it made.
#[test]
fn an_unknown_partition_is_slurms_400() {
    let stack = Stack::with_slurm();
    let alice = stack.local_of(ALICE);
    let etc = std::env::temp_dir().join(unique("ucim-etc"));
    std::fs::create_dir_all(etc.join("products")).unwrap();
    std::fs::create_dir_all(etc.join("jobs")).unwrap();
    let real_etc = PathBuf::from(stack.get("UCLOUD_IM_ETC"));
    std::fs::copy(
        real_etc.join("jobs/applications.json"),
        etc.join("jobs/applications.json"),
    )
    .unwrap();
    let product = stack.get("UCLOUD_IM_JOB_PRODUCT");
    std::fs::write(
        etc.join("products/jobs.json"),
        json!({"products": [{"id": product, "category": "cpu", "slurm": {"partition": "nosuchpartition"}}]}).to_string(),
    )
    .unwrap();
    let id = job_id();
    let request = etc.join("request.json");
    let body = json!({"items": [job(&stack, &id, json!(words(&["true"])), json!({}), 1)]});
    std::fs::write(&request, body.to_string()).unwrap();
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&etc)
        .status()
        .unwrap();

    let home = home_of(&alice);
    let drives = Path::new(&stack.get("UCLOUD_IM_PREFIX")).join("var/lib/ucloud-im/drives");
    let plugin = Path::new(&stack.get("UCLOUD_IM_PLUGIN_DIR")).join("jobs.create");
    let output = Command::new("runuser")
        .current_dir(&home)
        .args([
            "-u",
            &alice,
            "--",
            "env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
        ])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("USER={alice}"))
        .arg(format!("UCLOUD_USERNAME={ALICE}"))
        .arg(format!(
            "UCLOUD_PROVIDER={}",
            stack.get("UCLOUD_IM_PROVIDER")
        ))
        .arg(format!(
            "UCLOUD_IM_LIBEXEC={}",
            stack.get("UCLOUD_IM_LIBEXEC")
        ))
        .arg(format!("UCLOUD_IM_ETC={}", etc.display()))
        .arg(format!("UCLOUD_IM_DRIVES={}", drives.display()))
        .arg(&plugin)
        .arg(&request)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&etc);
    assert!(
        !output.status.success(),
        "a job for a missing partition was accepted"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failure: Value = serde_json::from_str(stderr.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no failure line ({e}): {stderr}"));
    assert_eq!(failure["status"], json!(400), "{failure}");
    assert!(
        failure["why"]
            .as_str()
            .unwrap()
            .contains("Invalid partition name"),
        "{failure}"
    );
    assert!(
        !job_folder(&alice, &id).exists(),
        "the refused job left its folder"
    );
}

#[test]
fn acl_verify_and_products_answer_as_ucloud_expects() {
    let stack = Stack::with_slurm();
    let items = json!({"items": [{"id": "1"}, {"id": "2"}]}).to_string();
    let (status, body) = stack.call(
        Some(ALICE),
        "POST",
        &provider_path(&stack, "jobs/updateAcl"),
        Some(&items),
    );
    assert_eq!((status, body), (200, json!({"responses": [{}, {}]})));
    let (status, body) = stack.call(
        Some(ALICE),
        "POST",
        &provider_path(&stack, "jobs/verify"),
        Some(&items),
    );
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = stack.call(
        Some(ALICE),
        "POST",
        &provider_path(&stack, "jobs/verify"),
        Some("[1]"),
    );
    assert_eq!(status, 400, "{body}");

    let (status, body) = stack.call(
        None,
        "GET",
        &provider_path(&stack, "jobs/retrieveProducts"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let product = stack.get("UCLOUD_IM_JOB_PRODUCT");
    assert!(
        body["responses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|support| support["product"]["id"] == json!(product)),
        "{product} is not offered: {body}"
    );
    // Slurm does not let users extend their jobs here: UCloud must not offer it.
    for support in body["responses"].as_array().unwrap() {
        assert_eq!(
            support["native"]["timeExtension"],
            json!(false),
            "{support}"
        );
    }
}

/// A file parameter is a UCloud path; the job sees the local path in the caller's
/// drive. A path in someone else's drive, or one that climbs out, is refused.
#[test]
fn file_parameters_become_paths_in_the_callers_own_drives() {
    let stack = Stack::with_slurm();
    let alice = stack.local_of(ALICE);
    let alice_drive = stack.drive_of(ALICE);
    let bob_drive = stack.drive_of(BOB);
    let invocation = json!([
        {"type": "word", "word": "printf"}, {"type": "word", "word": "[%s]\\n"},
        {"type": "var", "variableNames": ["input"]}
    ]);
    let file = |path: String| json!({"input": {"type": "file", "path": path, "readOnly": true}});

    let id = job_id();
    let params = file(format!("/{alice_drive}/data/in put.txt"));
    let (status, body) = create(
        &stack,
        ALICE,
        &[job(&stack, &id, invocation.clone(), params, 1)],
    );
    assert_eq!(status, 200, "{body}");
    let slurm_id = slurm_id_of(&body["responses"][0]);
    let folder = job_folder(&alice, &id);
    wait_until("the job to finish", 60, || {
        state_of(&slurm_id) == "COMPLETED"
    });
    assert_eq!(
        read(&folder.join("stdout.txt")),
        format!("[{}/data/in put.txt]\n", home_of(&alice).display())
    );
    let _ = std::fs::remove_dir_all(&folder);

    for (path, reason) in [
        (
            format!("/{bob_drive}/secret.txt"),
            "not in one of your drives",
        ),
        (format!("/{alice_drive}/../../etc/shadow"), "components"),
        ("relative/path".to_string(), "is not /<driveId>/"),
    ] {
        let id = job_id();
        let (status, body) = create(
            &stack,
            ALICE,
            &[job(&stack, &id, invocation.clone(), file(path.clone()), 1)],
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["why"].as_str().unwrap().contains(reason),
            "{path}: {body}"
        );
        assert!(!job_folder(&alice, &id).exists());
    }
}
