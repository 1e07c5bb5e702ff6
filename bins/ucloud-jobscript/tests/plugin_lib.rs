//! The job plugins' shell half (plugins/plugin-lib.sh, jobs.terminate, jobs.follow,
//! jobs.suspend) with fake Slurm commands first on PATH: how a job of a UCloud
//! project is looked up (by the project's accounts, for members only), what
//! reaches Slurm's command lines, and what a hostile request or table does. No
//! Slurm is needed; the real thing is tested through the stack.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

/// A scratch directory with fake squeue, scancel, scontrol and sacct that log
/// their arguments to `slurm.log` and answer from files of the directory, and a
/// projects table.
struct Fake(PathBuf);

const FAKE_SLURM: &str = r#"#!/bin/sh
printf '%s\n' "$(basename "$0") $*" >> "$FAKE/slurm.log"
tool=$(basename "$0")
case "$tool $*" in
"squeue "*" -A "*) cat "$FAKE/squeue.A" 2>/dev/null ;;
"squeue "*" -u "*) cat "$FAKE/squeue.u" 2>/dev/null ;;
"squeue "*" -j "*) cat "$FAKE/squeue.j" 2>/dev/null ;;
"sacct "*) cat "$FAKE/sacct" 2>/dev/null ;;
"scontrol -o show job "*) cat "$FAKE/show" 2>/dev/null ;;
"scancel "* | "scontrol "*)
    if [ -e "$FAKE/refuse" ]; then
        echo "$tool: error: Kill job error on job id 101: Access/permission denied" >&2
        exit 1
    fi
    ;;
esac
exit 0
"#;

impl Fake {
    fn new(name: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!("plugin-lib-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "projects", "srv/ucp-p1/ucloud-jobs/j1"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        for tool in ["squeue", "scancel", "scontrol", "sacct"] {
            let path = dir.join("bin").join(tool);
            std::fs::write(&path, FAKE_SLURM).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let fake = Fake(dir);
        let drive = fake.path("srv/ucp-p1").display().to_string();
        fake.table(json!({
            "projects": {
                "p-1": {"group": "ucp-p1", "drive": drive,
                        "accounts": {"cpu": "ucp-p1_cpu", "gpu": "ucp-p1_gpu"},
                        "members": ["ann", "bob"]},
                "p-2": {"group": "ucp-p2", "drive": null, "accounts": {"cpu": "ucp-p2_cpu"},
                        "members": ["bob"]},
                "p-semi": {"accounts": {"cpu": "a;b"}, "members": ["ann"]},
                "p-space": {"accounts": {"cpu": "a b"}, "members": ["ann"]},
                "p-dots": {"drive": "/srv/../etc", "accounts": {"cpu": "x"}, "members": ["ann"]},
                "p-dash": {"accounts": {"cpu": "-u"}, "members": ["ann"]}
            },
            "users": {}
        }));
        fake
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn table(&self, table: Value) {
        std::fs::write(self.path("projects/table.json"), table.to_string()).unwrap();
    }

    fn answer(&self, file: &str, text: &str) {
        std::fs::write(self.path(file), text).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("slurm.log")).unwrap_or_default()
    }

    /// Runs `program` (a plugin, or `sh -c SCRIPT`) as the dispatcher would, as
    /// the local account `user`, on `request`.
    fn run(&self, program: &[&str], user: &str, request: &Value) -> Output {
        let file = self.path("request.json");
        std::fs::write(&file, request.to_string()).unwrap();
        let _ = std::fs::remove_file(self.path("slurm.log"));
        let plugins = plugins();
        let mut command = Command::new(program[0]);
        command
            .args(&program[1..])
            .arg(&file)
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.path("bin").display()),
            )
            .env("FAKE", &self.0)
            .env("USER", user)
            .env("UCLOUD_IM_LIBEXEC", &plugins)
            .env("UCLOUD_IM_ETC", self.path("etc"))
            .env("UCLOUD_IM_PROJECTS", self.path("projects"))
            .stdin(Stdio::null());
        command.output().unwrap()
    }

    fn plugin(&self, name: &str, user: &str, request: &Value) -> Output {
        let path = plugins().join(name);
        self.run(&[path.to_str().unwrap()], user, request)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn failure(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    serde_json::from_str(stderr.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{stderr:?}: {e}"))
}

fn code(failure: &Value) -> (u64, &str) {
    (
        failure["status"].as_u64().unwrap_or(0),
        failure["errorCode"].as_str().unwrap_or(""),
    )
}

fn job(id: &str, project: Value) -> Value {
    json!({"id": id, "owner": {"createdBy": "Bob#2", "project": project}})
}

/// `ucloud_jobs_items`, its lines run by an `item` that prints each argument in
/// brackets: what the plugins' eval does with them.
fn items(fake: &Fake, request: &Value) -> Output {
    let script = r#"set -eu
. "$UCLOUD_IM_LIBEXEC/plugin-lib.sh"
lines=$(ucloud_jobs_items) || exit 1
item() { for a in "$@"; do printf '[%s]' "$a"; done; echo; }
eval "$lines""#;
    fake.run(&["sh", "-c", script, "sh"], "ann", request)
}

#[test]
fn the_items_carry_the_project_as_one_quoted_word() {
    let fake = Fake::new("items");
    let out = items(
        &fake,
        &json!({"items": [
            job("j1", json!("p-1")),
            job("j2", Value::Null),
            {"id": "j3", "providerGeneratedId": "ann/77"},
            job("j4", json!("'; touch pwned; '")),
            job("j5", json!("$(touch pwned)\n`id`")),
            {"job": job("j6", json!("p-1")), "requestedTime": {"hours": 1, "minutes": 0, "seconds": 5}}
        ]}),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[j1][][p-1]\n[j2][][]\n[j3][77][]\n[j4][][\'; touch pwned; \']\n\
         [j5][][$(touch pwned)\n`id`]\n[j6][][p-1][3605]\n"
    );
    assert!(!fake.path("pwned").exists());
    for bad in [
        json!({"items": [job("j1", json!(7))]}),
        json!({"items": [job("j1", json!(["p-1"]))]}),
        json!({"items": [job("j1", json!({"id": "p-1"}))]}),
        json!({"items": "j1"}),
        json!({}),
    ] {
        let f = failure(&items(&fake, &bad));
        assert_eq!(code(&f), (400, "BAD_REQUEST"), "{bad}: {f}");
    }
}

#[test]
fn a_member_cancels_a_project_job_found_by_the_projects_accounts() {
    let fake = Fake::new("member");
    fake.answer("squeue.A", "101 RUNNING\n");
    fake.answer("squeue.u", "");
    let request = json!({"items": [job("j1", json!("p-1"))]});
    let out = fake.plugin("jobs.terminate", "ann", &request);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"responses\":[{}]}\n"
    );
    assert_eq!(
        fake.log(),
        "squeue -h -t all -A ucp-p1_cpu,ucp-p1_gpu -n j1 -o %i %T\n\
         squeue -h -t all -A ucp-p1_cpu,ucp-p1_gpu -n j1 -o %i %T\n\
         scancel 101\n"
    );

    // A provider id must name a job found in the project.
    let wrong = json!({"items": [{"id": "j1", "providerGeneratedId": "bob/999",
                                  "owner": {"project": "p-1"}}]});
    let f = failure(&fake.plugin("jobs.terminate", "ann", &wrong));
    assert_eq!(code(&f), (400, "NOT_YOUR_JOB"), "{f}");
    assert!(!fake.log().contains("scancel"));

    // Slurm refuses a plain member: its reason and who may, as a 403.
    fake.answer("refuse", "");
    let f = failure(&fake.plugin("jobs.terminate", "ann", &request));
    assert_eq!(code(&f), (403, "SLURM_REFUSED"), "{f}");
    let why = f["why"].as_str().unwrap();
    assert!(why.contains("Access/permission denied"), "{why}");
    assert!(
        why.contains("Slurm lets only the job's owner and the project's PI and admins (Slurm coordinators of its account) act on it"),
        "{why}"
    );
    let f = failure(&fake.plugin(
        "jobs.suspend",
        "ann",
        &json!({"items": [{"job": job("j1", json!("p-1"))}]}),
    ));
    assert_eq!(code(&f), (403, "SLURM_REFUSED"), "{f}");
    assert!(
        fake.log().contains("scontrol suspend 101\n"),
        "{}",
        fake.log()
    );
}

#[test]
fn an_outsider_is_refused_before_slurm_is_asked() {
    let fake = Fake::new("outsider");
    fake.answer("squeue.A", "101 RUNNING\n");
    fake.answer("squeue.u", "100 RUNNING\n");
    for (plugin, request) in [
        (
            "jobs.terminate",
            json!({"items": [job("j1", json!("p-2"))]}),
        ),
        (
            "jobs.suspend",
            json!({"items": [{"job": job("j1", json!("p-2"))}]}),
        ),
        (
            "jobs.extend",
            json!({"items": [{"job": job("j1", json!("p-2")),
                              "requestedTime": {"hours": 1, "minutes": 0, "seconds": 0}}]}),
        ),
        (
            "jobs.follow",
            json!({"type": "init", "job": job("j1", json!("p-2"))}),
        ),
    ] {
        let f = failure(&fake.plugin(plugin, "ann", &request));
        assert_eq!(code(&f), (403, "NOT_A_MEMBER"), "{plugin}: {f}");
        assert_eq!(fake.log(), "", "{plugin} asked Slurm");
    }
}

#[test]
fn without_the_project_on_the_site_only_the_callers_own_jobs_are_reached() {
    let fake = Fake::new("own");
    fake.answer("squeue.u", "100 RUNNING\n");
    for project in [json!("p-unknown"), Value::Null, json!("")] {
        let out = fake.plugin(
            "jobs.terminate",
            "ann",
            &json!({"items": [job("j1", project.clone())]}),
        );
        assert!(out.status.success(), "{project}: {out:?}");
        assert_eq!(
            fake.log(),
            "squeue -h -t all -u ann -n j1 -o %i %T\n\
             squeue -h -t all -u ann -n j1 -o %i %T\nscancel 100\n",
            "{project}"
        );
    }
    // No table at all (a site without projects): the same.
    std::fs::remove_file(fake.path("projects/table.json")).unwrap();
    let out = fake.plugin(
        "jobs.terminate",
        "ann",
        &json!({"items": [job("j1", json!("p-1"))]}),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(fake.log().starts_with("squeue -h -t all -u ann -n j1"));
}

#[test]
fn hostile_tables_stop_the_call_before_slurm_is_asked() {
    let fake = Fake::new("hostile");
    fake.answer("squeue.A", "101 RUNNING\n");
    for project in ["p-semi", "p-space", "p-dots", "p-dash"] {
        let f = failure(&fake.plugin(
            "jobs.terminate",
            "ann",
            &json!({"items": [job("j1", json!(project))]}),
        ));
        assert_eq!(code(&f), (500, "SITE_CONFIG"), "{project}: {f}");
        assert_eq!(fake.log(), "", "{project} asked Slurm");
    }
    for table in [
        json!({"projects": []}),
        json!({"projects": {"p-1": "x"}}),
        json!({"projects": {"p-1": {"members": "ann", "accounts": {"cpu": "x"}}}}),
        json!({"projects": {"p-1": {"members": ["ann"], "accounts": ["x"]}}}),
        json!({"projects": {"p-1": {"members": ["ann"], "accounts": {"cpu": 7}}}}),
        json!({"projects": {"p-1": {"members": ["ann"], "accounts": {}, "drive": 7}}}),
        json!([]),
    ] {
        fake.table(table.clone());
        let f = failure(&fake.plugin(
            "jobs.terminate",
            "ann",
            &json!({"items": [job("j1", json!("p-1"))]}),
        ));
        assert_eq!(code(&f), (500, "SITE_CONFIG"), "{table}: {f}");
    }
    std::fs::write(fake.path("projects/table.json"), "{\"projects\":").unwrap();
    let f = failure(&fake.plugin(
        "jobs.terminate",
        "ann",
        &json!({"items": [job("j1", json!("p-1"))]}),
    ));
    assert_eq!(code(&f), (500, "SITE_CONFIG"), "{f}");
}

/// The messages jobs.follow streamed (after its head line).
fn streamed(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("UCLOUD-IM/1"), "{out:?}");
    assert_eq!(lines.next(), Some("{\"websocket\":true}"), "{out:?}");
    lines.map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_member_follows_a_project_job_in_the_folder_the_table_names() {
    let fake = Fake::new("follow");
    std::fs::write(fake.path("srv/ucp-p1/ucloud-jobs/j1/stdout.txt"), "hello\n").unwrap();
    std::fs::create_dir_all(fake.path("elsewhere")).unwrap();
    std::fs::write(fake.path("elsewhere/stdout.txt"), "not this\n").unwrap();
    // Running, then done at the first poll.
    fake.answer("squeue.A", "101 RUNNING\n");
    fake.answer("squeue.j", "COMPLETED\n");
    let request = json!({"type": "init", "job": job("j1", json!("p-1"))});
    let out = fake.plugin("jobs.follow", "ann", &request);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        streamed(&out),
        vec![json!({"streamId": "slurm-101", "rank": 0, "stdout": "hello\n", "stderr": null})]
    );
    // The folder came from the table: Slurm was not asked where the files are.
    assert!(!fake.log().contains("scontrol"), "{}", fake.log());

    // Forgotten by the controller: accounting has it (of any member: -a), and its
    // working directory there does not move the folder.
    fake.answer("squeue.A", "");
    let elsewhere = fake.path("elsewhere").display().to_string();
    fake.answer("sacct", &format!("101|ucloud-im|{elsewhere}\n"));
    let out = fake.plugin("jobs.follow", "ann", &request);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(streamed(&out)[0]["stdout"], "hello\n");
    assert!(
        fake.log().contains(
            "sacct -X -P -n -a -A ucp-p1_cpu,ucp-p1_gpu --name j1 -S 1970-01-01 -o JobID,Comment,WorkDir\n"
        ),
        "{}",
        fake.log()
    );
}

#[test]
fn a_personal_job_is_followed_where_slurm_says_as_before() {
    let fake = Fake::new("personal");
    std::fs::create_dir_all(fake.path("home/ucloud-jobs/j1")).unwrap();
    let out_file = fake.path("home/ucloud-jobs/j1/stdout.txt");
    std::fs::write(&out_file, "mine\n").unwrap();
    fake.answer("squeue.u", "100 RUNNING\n");
    fake.answer("squeue.j", "COMPLETED\n");
    fake.answer(
        "show",
        &format!(
            "JobId=100 StdOut={} StdErr={}\n",
            out_file.display(),
            out_file.display()
        ),
    );
    // A project the table does not know is the caller's own job, like a personal one.
    for project in [Value::Null, json!("p-unknown")] {
        let request = json!({"type": "init", "job": job("j1", project)});
        let out = fake.plugin("jobs.follow", "ann", &request);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(streamed(&out)[0]["stdout"], "mine\n");
        assert!(
            fake.log()
                .starts_with("squeue -h -t all -u ann -n j1 -o %i %T\nscontrol -o show job 100\n"),
            "{}",
            fake.log()
        );
    }
}
