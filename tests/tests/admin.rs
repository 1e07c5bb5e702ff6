//! What an admin expects of each installed program: `--version`, the dispatcher's
//! build prefix, a configuration check that passes on a correct installation and
//! changes nothing, and service log lines the journal can sort by priority.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use ucloud_im_tests::Stack;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every program the stack installs, where it installed it, and the name it gives.
fn installed(stack: &Stack) -> Vec<(PathBuf, &'static str)> {
    let libexec = PathBuf::from(stack.get("UCLOUD_IM_LIBEXEC"));
    let plugins = PathBuf::from(stack.get("UCLOUD_IM_PLUGIN_DIR"));
    let mut programs: Vec<(PathBuf, &'static str)> = [
        "ucloud-gateway",
        "ucloud-registry",
        "ucloud-sender",
        "ucloud-sim",
        "ucloud-connect",
        "ucloud-lb",
        "ucloud-monitor",
        "ucloud-check",
    ]
    .into_iter()
    .map(|name| (stack.bin(name), name))
    .collect();
    programs.push((
        PathBuf::from(stack.get("UCLOUD_IM_DISPATCH")),
        "ucloud-dispatch",
    ));
    programs.push((libexec.join("ucloud-jobscript"), "ucloud-jobscript"));
    programs.push((libexec.join("ucloud-notify"), "ucloud-notify"));
    // The native file plugin is installed under its calls' names.
    programs.push((plugins.join("files.browse"), "ucloud-files"));
    programs
}

#[test]
fn every_installed_program_tells_its_name_and_version() {
    let stack = Stack::load();
    for (path, name) in installed(&stack) {
        let out = Command::new(&path).arg("--version").output().unwrap();
        assert!(out.status.success(), "{}: {out:?}", path.display());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.lines().next(),
            Some(format!("{name} {VERSION}").as_str()),
            "{}",
            path.display()
        );
        let help = Command::new(&path).arg("--help").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--version"),
            "{} --help does not mention --version",
            path.display()
        );
    }
}

#[test]
fn the_dispatcher_names_the_prefix_it_was_built_for() {
    let stack = Stack::load();
    let out = Command::new(stack.get("UCLOUD_IM_DISPATCH"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "ucloud-dispatch {VERSION}\nprefix: {}\n",
            stack.prefix().display()
        )
    );
}

/// Type, mode, owner, mtime and size of everything below `dir`.
fn tree(dir: &Path) -> Vec<(PathBuf, u32, u32, i64, i64, u64)> {
    let mut seen = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            todo.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        seen.push((
            path,
            meta.mode(),
            meta.uid(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.size(),
        ));
    }
    seen.sort();
    seen
}

#[test]
fn ucloud_check_passes_on_the_installed_stack_and_changes_nothing() {
    let stack = Stack::load();
    let prefix = stack.prefix();
    let watched = [
        prefix.join("etc/ucloud-im"),
        prefix.join("var/lib/ucloud-im/mappings"),
        prefix.join("var/lib/ucloud-im/drives"),
        prefix.join("usr/libexec/ucloud-im"),
    ];
    let key = prefix.join("var/lib/ucloud-im/transfer.key");
    let before: Vec<_> = watched.iter().map(|d| tree(d)).collect();
    let key_before = (fs::read(&key).ok(), tree(&key));
    let out = Command::new(stack.bin("ucloud-check")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.ends_with("ucloud-check: no problems found\n"),
        "{text}"
    );
    assert!(
        text.contains("ok: site.conf, accounts, UCloud key, transfer key"),
        "{text}"
    );
    let after: Vec<_> = watched.iter().map(|d| tree(d)).collect();
    assert_eq!(before, after, "ucloud-check changed the installation");
    assert_eq!(key_before, (fs::read(&key).ok(), tree(&key)));
}

/// Runs `program args` with stderr in a file; with `journal`, `JOURNAL_STREAM`
/// names that file as systemd names the journal's stream.
fn stderr_of(program: &Path, args: &[&str], journal: Option<bool>) -> String {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(ucloud_im_tests::unique("stderr"));
    let err = fs::File::create(&file).unwrap();
    let meta = err.metadata().unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .env_remove("JOURNAL_STREAM");
    match journal {
        Some(true) => cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())),
        // The journal is some other stream: this one was redirected.
        Some(false) => cmd.env(
            "JOURNAL_STREAM",
            format!("{}:{}", meta.dev(), meta.ino() + 1),
        ),
        None => &mut cmd,
    };
    let status = cmd.status().unwrap();
    assert!(
        !status.success(),
        "{} {args:?} should fail",
        program.display()
    );
    let text = fs::read_to_string(&file).unwrap();
    fs::remove_file(&file).unwrap();
    text
}

#[test]
fn service_errors_carry_their_priority_when_stderr_is_the_journal() {
    let stack = Stack::load();
    let lb = stack.bin("ucloud-lb");
    let args = ["--config", "/nonexistent/lb.conf"];
    let journal = stderr_of(&lb, &args, Some(true));
    assert!(journal.starts_with("<3>ucloud-lb: "), "{journal}");
    assert_eq!(journal.lines().count(), 1, "{journal}");
    for plain in [
        stderr_of(&lb, &args, None),
        stderr_of(&lb, &args, Some(false)),
    ] {
        assert_eq!(
            plain,
            journal["<3>".len()..],
            "the prefix is for the journal only"
        );
    }
    let registry = stderr_of(&stack.bin("ucloud-registry"), &["frobnicate"], Some(true));
    assert!(registry.starts_with("<3>ucloud-registry: "), "{registry}");
}
