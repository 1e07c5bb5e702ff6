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

/// Whether the tests run as root, who alone can make the root-owned folders of a
/// project drive (as ucloud-project does) or give a folder to someone else.
fn root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The scratch site with a projects table (`p-1`: the caller a member, with a drive;
/// `p-2`: someone else's, without one), a setgid project drive with ucloud-project's
/// `ucloud-jobs` (root's, 3770) and a fake sbatch that records the umask,
/// SLURM_UMASK and arguments it was started with (sbatch.log) and what it read on
/// its standard input (stdin.log).
fn project_site(name: &str) -> Scratch {
    let scratch = Scratch::new(name);
    for sub in ["projects", "bin", "srv/ucp-p1/ucloud-jobs"] {
        std::fs::create_dir_all(scratch.path(sub)).unwrap();
    }
    chmod(&scratch.path("srv/ucp-p1"), 0o2770);
    chmod(&scratch.path("srv/ucp-p1/ucloud-jobs"), 0o3770);
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
    let stdin = scratch.path("stdin.log").display().to_string();
    std::fs::write(
        scratch.path("bin/sbatch"),
        format!(
            "#!/bin/sh\nprintf '%s %s %s [%s]\\n' \"$(umask)\" \"${{SLURM_UMASK:-unset}}\" \"$#\" \"$*\" >> '{log}'\n\
             cat >> '{stdin}'\necho 4242\n"
        ),
    )
    .unwrap();
    chmod(&scratch.path("bin/sbatch"), 0o755);
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
fn a_project_job_is_made_and_submitted_with_umask_027_in_the_project_drive() {
    if !root() {
        eprintln!("skipped: only root can make a root-owned ucloud-jobs");
        return;
    }
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
    // The setgid bit comes from ucloud-jobs: the project's group owns everything in
    // it, and reads but never writes it.
    assert_eq!(mode(&scratch.path("srv/ucp-p1/ucloud-jobs")), 0o3770);
    assert_eq!(mode(&folder), 0o2750);
    assert_eq!(mode(&folder.join("job.sbatch")), 0o640);
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
    // sbatch got no path: the script came on its standard input, the one recorded.
    let log = std::fs::read_to_string(scratch.path("sbatch.log")).unwrap();
    assert_eq!(log, "0027 0027 1 [--parsable]\n");
    let stdin = std::fs::read_to_string(scratch.path("stdin.log")).unwrap();
    assert_eq!(stdin, script);

    // A personal job of the same caller: the personal account, the home, umask 077,
    // and the job's SLURM_UMASK left as the environment has it (as before).
    std::fs::remove_file(scratch.path("sbatch.log")).unwrap();
    std::fs::remove_file(scratch.path("stdin.log")).unwrap();
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
    assert_eq!(log, "0077 0000 1 [--parsable]\n");
    assert_eq!(
        std::fs::read_to_string(scratch.path("stdin.log")).unwrap(),
        script
    );
    assert_eq!(mode(&home.join("job.sbatch")), 0o600);
}

#[test]
fn a_project_without_a_drive_keeps_the_job_private_in_the_home() {
    let scratch = project_site("nodrive");
    let projects = scratch.path("projects");
    let table = std::fs::read_to_string(projects.join("table.json")).unwrap();
    let mut table: serde_json::Value = serde_json::from_str(&table).unwrap();
    table["projects"]["p-2"]["members"] = serde_json::json!([me()]);
    std::fs::write(projects.join("table.json"), table.to_string()).unwrap();
    let out = create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j3", "\"p-2\"")),
        Some(&projects),
    );
    assert!(out.status.success(), "{out:?}");
    let home = scratch.path("home/ucloud-jobs/j3");
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&home.join("job.sbatch")), 0o600);
    let script = std::fs::read_to_string(home.join("job.sbatch")).unwrap();
    assert!(
        script.contains("\n#SBATCH --account=ucp-p2_cpu\n"),
        "{script}"
    );
    let log = std::fs::read_to_string(scratch.path("sbatch.log")).unwrap();
    assert_eq!(log, "0077 0000 1 [--parsable]\n");
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
    assert!(std::fs::read_dir(scratch.path("srv/ucp-p1/ucloud-jobs"))
        .unwrap()
        .next()
        .is_none());
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

/// A project job with `ucloud-jobs` as `prepare` leaves it: refused with 500
/// JOB_FOLDER saying `says`, nothing made, nothing submitted.
fn refused_for(name: &str, says: &str, prepare: impl FnOnce(&Scratch, &Path)) {
    let scratch = project_site(name);
    let jobs = scratch.path("srv/ucp-p1/ucloud-jobs");
    prepare(&scratch, &jobs);
    let refused = failure(&create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j1", "\"p-1\"")),
        Some(&scratch.path("projects")),
    ));
    assert_eq!(
        (refused["status"].as_u64(), refused["errorCode"].as_str()),
        (Some(500), Some("JOB_FOLDER")),
        "{name}: {refused}"
    );
    let why = refused["why"].as_str().unwrap();
    assert!(
        why.starts_with(
            "the project drive's ucloud-jobs folder is missing or not root's sticky folder; \
             ucloud-project makes it ("
        ),
        "{name}: {why}"
    );
    assert!(why.contains(says), "{name}: {why}");
    assert!(!scratch.path("sbatch.log").exists(), "{name}");
    // Never made by the member, and nothing made in whatever is there.
    assert!(!jobs.join("j1").exists(), "{name}");
    assert!(!scratch.path("elsewhere/j1").exists(), "{name}");
}

#[test]
fn the_projects_ucloud_jobs_must_be_roots_sticky_folder() {
    refused_for("missing", "No such file", |_, jobs| {
        std::fs::remove_dir(jobs).unwrap()
    });
    refused_for("link", "a symbolic link", |scratch, jobs| {
        // A member's own folder put in its place.
        std::fs::create_dir_all(scratch.path("elsewhere")).unwrap();
        chmod(&scratch.path("elsewhere"), 0o3777);
        std::fs::remove_dir(jobs).unwrap();
        std::os::unix::fs::symlink(scratch.path("elsewhere"), jobs).unwrap();
    });
    refused_for("file", "not a directory", |_, jobs| {
        std::fs::remove_dir(jobs).unwrap();
        std::fs::write(jobs, "").unwrap();
    });
    refused_for("sticky", "mode 2770, without the sticky bit", |_, jobs| {
        chmod(jobs, 0o2770)
    });
    if root() {
        refused_for("owner", "owned by uid 65534, not root", |_, jobs| {
            std::os::unix::fs::chown(jobs, Some(65534), None).unwrap()
        });
    }
}

#[test]
fn a_folder_another_member_made_first_is_a_409_naming_them() {
    if !root() {
        eprintln!("skipped: only root can give a folder to someone else");
        return;
    }
    let scratch = project_site("taken");
    let taken = scratch.path("srv/ucp-p1/ucloud-jobs/j1");
    std::fs::create_dir(&taken).unwrap();
    std::os::unix::fs::chown(&taken, Some(65534), None).unwrap();
    let refused = failure(&create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j1", "\"p-1\"")),
        Some(&scratch.path("projects")),
    ));
    assert_eq!(
        (refused["status"].as_u64(), refused["errorCode"].as_str()),
        (Some(409), Some("ALREADY_EXISTS")),
        "{refused}"
    );
    assert!(
        refused["why"]
            .as_str()
            .unwrap()
            .contains("that is not yours (uid 65534 made it)"),
        "{refused}"
    );
    assert!(!scratch.path("sbatch.log").exists());
    assert!(taken.exists());
}

#[test]
fn a_refusing_sbatch_that_reads_nothing_undoes_the_call() {
    let scratch = Scratch::new("refusing");
    std::fs::create_dir_all(scratch.path("bin")).unwrap();
    // Exits before reading its standard input: the write meets a closed pipe, and
    // Slurm's reason still reaches UCloud.
    std::fs::write(
        scratch.path("bin/sbatch"),
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n",
    )
    .unwrap();
    chmod(&scratch.path("bin/sbatch"), 0o755);
    let refused = failure(&create(
        &scratch,
        &format!("{{\"items\":[{}]}}", owned("j1", "null")),
        None,
    ));
    assert_eq!(
        (refused["status"].as_u64(), refused["errorCode"].as_str()),
        (Some(400), Some("SLURM_REFUSED")),
        "{refused}"
    );
    assert_eq!(refused["why"], "Slurm refused job j1: Invalid account");
    assert!(!scratch.path("home/ucloud-jobs/j1").exists());
}
