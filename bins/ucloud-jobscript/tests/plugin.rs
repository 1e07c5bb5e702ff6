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
