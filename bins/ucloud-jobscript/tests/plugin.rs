//! ucloud-jobscript as the jobs.create plugin (installed under the call name) and
//! with --submit: how it answers when it must refuse, which needs no Slurm. The
//! submissions themselves are tested through the stack (tests/tests/jobs.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with the binary linked in as `jobs.create`, a site (one
/// product, one application) and a drive table with one home drive.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("jobscript-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["etc/products", "etc/jobs", "drives", "home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // A symlink, not a copy: a copy is written through a file descriptor that a
        // child forked meanwhile by another test thread may still hold, and then its
        // exec fails with ETXTBSY. The program goes by argv[0]'s name, as installed.
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_ucloud-jobscript"),
            dir.join("jobs.create"),
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/products/jobs.json"),
            r#"{"products":[{"id":"cpu-small","category":"cpu","slurm":{"partition":"small"}}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("etc/jobs/applications.json"),
            r#"{"applications":[{"name":"app","version":"1","modules":[]}]}"#,
        )
        .unwrap();
        let home = dir.join("home").display().to_string();
        std::fs::write(
            dir.join("drives/7"),
            format!(r#"{{"base":"{home}","id":"7","kind":"home","local":"u","title":"Home","ucloud":"U#1"}}"#),
        )
        .unwrap();
        Scratch(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    /// Runs `program` (the copy named jobs.create, or the binary with `args`) on
    /// `request`, with the dispatcher's environment unless `without` names a variable.
    fn run(&self, program: &Path, args: &[&str], request: &str, without: &str) -> Output {
        let file = self.path("request.json");
        std::fs::write(&file, request).unwrap();
        let mut command = Command::new(program);
        command
            .args(args)
            .arg(&file)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("USER", "u")
            .env("UCLOUD_IM_ETC", self.path("etc"))
            .env("UCLOUD_IM_DRIVES", self.path("drives"))
            .env("UCLOUD_USERNAME", "U#1")
            .env_remove(without);
        command.output().unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The failure line: the last line of stderr, as JSON.
fn failure(output: &Output) -> serde_json::Value {
    assert!(!output.status.success(), "{output:?}");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    serde_json::from_str(stderr.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{stderr:?}: {e}"))
}

#[test]
fn as_jobs_create_it_answers_as_the_plugin() {
    let scratch = Scratch::new("plugin");
    let plugin = scratch.path("jobs.create");
    let bad = failure(&scratch.run(&plugin, &[], "not json", ""));
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["errorCode"], "BAD_REQUEST", "{bad}");

    let unknown = r#"{"items":[{"id":"j1","specification":{"product":{"id":"nope"},
        "application":{"name":"app","version":"1"}}}]}"#;
    let refused = failure(&scratch.run(&plugin, &[], unknown, ""));
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["errorCode"], "BAD_JOB", "{refused}");
    assert!(!scratch.path("home/ucloud-jobs/j1").exists());

    let missing = failure(&scratch.run(&plugin, &[], "{}", "UCLOUD_IM_DRIVES"));
    assert_eq!(missing["status"], 500, "{missing}");
    assert!(
        missing["why"]
            .as_str()
            .unwrap()
            .contains("UCLOUD_IM_DRIVES"),
        "{missing}"
    );
}

#[test]
fn submit_mode_answers_like_the_plugin_and_plan_mode_does_not() {
    let scratch = Scratch::new("submit");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_ucloud-jobscript"));
    let etc = scratch.path("etc").display().to_string();
    let drives = scratch.path("drives").display().to_string();
    let options = [
        "--etc",
        &etc,
        "--drives",
        &drives,
        "--user",
        "U#1",
        "--tag",
        "ucloud-im",
    ];
    let mut submit = options.to_vec();
    submit.push("--submit");
    let refused = failure(&scratch.run(&binary, &submit, r#"{"items":[]}"#, ""));
    assert_eq!(refused["errorCode"], "BAD_REQUEST", "{refused}");

    let plan = scratch.run(&binary, &options, r#"{"items":[]}"#, "");
    assert!(plan.status.success(), "{plan:?}");
    assert!(
        String::from_utf8_lossy(&plan.stdout).starts_with("refuse 400 BAD_REQUEST '"),
        "{plan:?}"
    );

    let mut both = submit.clone();
    both.push("--print");
    let usage = scratch.run(&binary, &both, "{}", "");
    assert_eq!(usage.status.code(), Some(64), "{usage:?}");
}

/// The name of the account the tests run as (what the program checks membership of).
fn me() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A job of `project` (JSON: a string or null) for the scratch site's product.
fn owned(id: &str, project: &str) -> String {
    format!(
        r#"{{"id":"{id}","owner":{{"createdBy":"U#1","project":{project}}},
        "specification":{{"product":{{"id":"cpu-small"}},"application":{{"name":"app","version":"1"}}}},
        "status":{{"resolvedApplication":{{"invocation":{{"invocation":[{{"type":"word","word":"true"}}]}}}}}}}}"#
    )
}

/// The scratch site with a projects table (`p-1`: the caller a member, with a drive;
/// `p-2`: someone else's), a setgid project drive and a fake sbatch that records the
/// umask and SLURM_UMASK it was started with.
fn project_site(name: &str) -> Scratch {
    let scratch = Scratch::new(name);
    for sub in ["projects", "bin", "srv/ucp-p1"] {
        std::fs::create_dir_all(scratch.path(sub)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        scratch.path("srv/ucp-p1"),
        std::fs::Permissions::from_mode(0o2770),
    )
    .unwrap();
    let drive = scratch.path("srv/ucp-p1").display().to_string();
    std::fs::write(
        scratch.path("projects/table.json"),
        serde_json::json!({
            "projects": {
                "p-1": {"group": "ucp-p1", "drive": drive, "accounts": {"cpu": "ucp-p1_cpu"},
                        "members": ["someone", me()]},
                "p-2": {"group": "ucp-p2", "drive": null, "accounts": {"cpu": "ucp-p2_cpu"},
                        "members": ["someone"]}
            },
            "users": {me(): {"accounts": {"cpu": "ucu-me_cpu"}}}
        })
        .to_string(),
    )
    .unwrap();
    let log = scratch.path("sbatch.log").display().to_string();
    std::fs::write(
        scratch.path("bin/sbatch"),
        format!(
            "#!/bin/sh\nprintf '%s %s %s\\n' \"$(umask)\" \"${{SLURM_UMASK:-unset}}\" \"$2\" >> '{log}'\necho 4242\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        scratch.path("bin/sbatch"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    scratch
}

/// jobs.create under the dispatcher's umask 077 with a PATH that starts with the
/// fake sbatch.
fn create(scratch: &Scratch, request: &str, projects: Option<&Path>) -> Output {
    let file = scratch.path("request.json");
    std::fs::write(&file, request).unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 077; exec \"$0\" \"$@\""])
        .arg(scratch.path("jobs.create"))
        .arg(&file)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", scratch.path("bin").display()),
        )
        .env("USER", "u")
        .env("UCLOUD_IM_ETC", scratch.path("etc"))
        .env("UCLOUD_IM_DRIVES", scratch.path("drives"))
        .env("UCLOUD_USERNAME", "U#1")
        // What the dispatcher never passes, and must not widen a personal job.
        .env("SLURM_UMASK", "0000");
    if let Some(dir) = projects {
        command.env("UCLOUD_IM_PROJECTS", dir);
    }
    command.output().unwrap()
}

#[test]
fn a_project_job_is_made_and_submitted_with_umask_007_in_the_project_drive() {
    let scratch = project_site("project");
    let projects = scratch.path("projects");
    let out = create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j1", "\"p-1\"")),
        Some(&projects),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"responses":[{"id":"u/4242"}]}"#
    );
    let folder = scratch.path("srv/ucp-p1/ucloud-jobs/j1");
    // The setgid bit comes from the drive: the project's group owns everything in it.
    assert_eq!(mode(&scratch.path("srv/ucp-p1/ucloud-jobs")), 0o2770);
    assert_eq!(mode(&folder), 0o2770);
    assert_eq!(mode(&folder.join("job.sbatch")), 0o660);
    let script = std::fs::read_to_string(folder.join("job.sbatch")).unwrap();
    assert!(
        script.contains("\n#SBATCH --account=ucp-p1_cpu\n"),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "\n#SBATCH --output={}/stdout.txt\n",
            folder.display()
        )),
        "{script}"
    );
    let log = std::fs::read_to_string(scratch.path("sbatch.log")).unwrap();
    assert_eq!(log, format!("0007 0007 {}/job.sbatch\n", folder.display()));

    // A personal job of the same caller: the personal account, the home, umask 077,
    // and the job's SLURM_UMASK left as the environment has it (as before).
    std::fs::remove_file(scratch.path("sbatch.log")).unwrap();
    let out = create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j2", "null")),
        Some(&projects),
    );
    assert!(out.status.success(), "{out:?}");
    let home = scratch.path("home/ucloud-jobs/j2");
    assert_eq!(mode(&home), 0o700);
    let script = std::fs::read_to_string(home.join("job.sbatch")).unwrap();
    assert!(
        script.contains("\n#SBATCH --account=ucu-me_cpu\n"),
        "{script}"
    );
    let log = std::fs::read_to_string(scratch.path("sbatch.log")).unwrap();
    assert!(log.starts_with("0077 0000 "), "{log}");
}

#[test]
fn project_jobs_are_refused_before_anything_is_made() {
    let scratch = project_site("refused");
    let projects = scratch.path("projects");
    let both = |second: &str| format!("{{\"items\":[{},{}]}}", owned("ok", "\"p-1\""), second);

    let outsider = failure(&create(
        &scratch,
        &both(&owned("j", "\"p-2\"")),
        Some(&projects),
    ));
    assert_eq!(
        (outsider["status"].as_u64(), outsider["errorCode"].as_str()),
        (Some(403), Some("NOT_A_MEMBER")),
        "{outsider}"
    );
    let unknown = failure(&create(
        &scratch,
        &both(&owned("j", "\"p-9\"")),
        Some(&projects),
    ));
    assert_eq!(unknown["errorCode"], "NOT_ON_SITE", "{unknown}");
    assert!(!scratch.path("srv/ucp-p1/ucloud-jobs").exists());
    assert!(!scratch.path("sbatch.log").exists());

    // No table (a site without projects): project jobs are a clear 400, personal
    // jobs go on.
    let none = failure(&create(&scratch, &both(&owned("j", "null")), None));
    assert_eq!(
        (none["status"].as_u64(), none["errorCode"].as_str()),
        (Some(400), Some("NO_PROJECTS")),
        "{none}"
    );
    let gone = scratch.path("nothing-here");
    let none = failure(&create(&scratch, &both(&owned("j", "null")), Some(&gone)));
    assert_eq!(none["errorCode"], "NO_PROJECTS", "{none}");
    let personal = create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("p", "null")),
        Some(&gone),
    );
    assert!(personal.status.success(), "{personal:?}");

    // A table that is not JSON is the site's error.
    std::fs::write(scratch.path("projects/table.json"), "{\"projects\":").unwrap();
    let broken = failure(&create(
        &scratch,
        &both(&owned("j", "null")),
        Some(&projects),
    ));
    assert_eq!(
        (broken["status"].as_u64(), broken["errorCode"].as_str()),
        (Some(500), Some("SITE_CONFIG")),
        "{broken}"
    );
}

#[test]
fn a_link_in_place_of_the_projects_job_folder_is_refused() {
    let scratch = project_site("link");
    let projects = scratch.path("projects");
    std::fs::create_dir_all(scratch.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(
        scratch.path("elsewhere"),
        scratch.path("srv/ucp-p1/ucloud-jobs"),
    )
    .unwrap();
    let refused = failure(&create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j1", "\"p-1\"")),
        Some(&projects),
    ));
    assert_eq!(
        (refused["status"].as_u64(), refused["errorCode"].as_str()),
        (Some(500), Some("JOB_FOLDER")),
        "{refused}"
    );
    assert!(std::fs::read_dir(scratch.path("elsewhere"))
        .unwrap()
        .next()
        .is_none());
    assert!(!scratch.path("sbatch.log").exists());
}
