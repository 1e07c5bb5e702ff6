//! ucloud-jobscript: the part of the jobs.create plugin a shell is slow at. Run by
//! the plugin as the calling user, it reads the request (UCloud's jobs), the site's
//! product and application tables and the caller's drives, checks every job,
//! renders each one's batch script, makes the job folders with the scripts in them,
//! and prints one line per job for the plugin to `eval`:
//!
//!   submit 'ID' 'FOLDER'            (with --print: submit 'ID' 'FOLDER' 'SCRIPT')
//!   refuse STATUS CODE 'WHY'        (the only line; nothing was made)
//!
//! A job of a UCloud project (`owner.project`) is checked against ucloud-project's
//! table: the caller must be a member, the project's Slurm account for the
//! product's category goes into the script, the folder into the project's drive
//! (under its root-owned sticky ucloud-jobs), and the folder and the job are made
//! with umask 027: the members read them, only the caller writes them.
//!
//! sbatch gets each script on its standard input, never by the path of job.sbatch
//! (which is written for the record): what runs is what was checked here.
//!
//! Every value is single-quoted. With --submit (or when it is the plugin itself,
//! run under the call name jobs.create) it also submits the jobs and answers as a
//! plugin: one process fewer per request than a shell plugin running it, ~1 ms of
//! the 5 the chain may add to sbatch. See ucloud-jobscript(8) and ucloud-im-jobs(7).
#![forbid(unsafe_code)]

mod plain;
mod projects;
mod render;
mod submit;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, mkdirat, umask, Mode as FileMode};
use nix::unistd::geteuid;
use render::{shell_quote, Planned, Refusal, Site};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ucloud_wire::record::{Drive, DriveOwner};

const HELP: &str = "\
usage: ucloud-jobscript --etc DIR --drives DIR [--projects DIR] --user UCLOUD_NAME --tag TAG
                        [--print|--submit] REQUEST_FILE
       jobs.create REQUEST_FILE   (installed as the plugin; the rest from the environment)
       ucloud-jobscript -h|--help|--version

Run by the jobs.create plugin as the calling user. Checks the jobs of REQUEST_FILE
({\"items\":[Job,...]}) against DIR/products/jobs.json, DIR/jobs/applications.json
and the caller's rows of the drive table, makes <home>/ucloud-jobs/<job id>/ with
its job.sbatch for each job, and prints one line per job:
  submit 'ID' 'FOLDER'
or, when a job is refused (then nothing is made), the one line
  refuse STATUS CODE 'WHY'
--print makes nothing and adds each script: submit 'ID' 'FOLDER' 'SCRIPT'.
--projects DIR: ucloud-project's DIR/table.json (missing: the site has no projects).
A job with owner.project goes to that project's Slurm account for the product's
category (403 NOT_ON_SITE, NOT_A_MEMBER or NO_ALLOCATION otherwise), its folder
into <project drive>/ucloud-jobs/<job id>/, made and submitted with umask 027
(members read, only the caller writes). That ucloud-jobs must be root's, sticky,
and no link (ucloud-project makes it; 500 JOB_FOLDER otherwise). A project without
a drive puts the folder in the caller's home, private as a personal job's.
A personal job takes the caller's personal account from the table when it has one.
--submit also runs `sbatch --parsable` with each script on its standard input
(job.sbatch is the record, never what runs) and answers as a plugin:
{\"responses\":[{\"id\":\"USER/SLURMID\"},...]} on stdout, or, after cancelling what it
submitted and removing the folders, {\"status\":S,\"errorCode\":C,\"why\":W} on stderr
and exit 1. Run as jobs.create it is that plugin: --submit with --etc, --drives
and --user from UCLOUD_IM_ETC, UCLOUD_IM_DRIVES and UCLOUD_USERNAME, --projects from
UCLOUD_IM_PROJECTS when set, --tag ucloud-im.
Exit 0 with one of those; 64 on a wrong command line. See ucloud-jobscript(8).
";

/// The largest request or table read (UCloud's bulk requests are far smaller).
const MAX_INPUT: u64 = 8 << 20;

struct Args {
    etc: PathBuf,
    drives: PathBuf,
    /// ucloud-project's directory; None: the site has no projects.
    projects: Option<PathBuf>,
    user: String,
    tag: String,
    mode: Mode,
    request: PathBuf,
}

#[derive(PartialEq, Eq)]
enum Mode {
    /// Make the folders, print the plan.
    Plan,
    /// Make nothing, print the plan with the scripts.
    Print,
    /// Make the folders, submit, answer as the plugin.
    Submit,
}

/// The tag of every job submitted through UCloud (the plugins' `ucloud_jobs_tag`).
const TAG: &str = "ucloud-im";

fn main() -> ExitCode {
    if !plugin_name() && std::env::args_os().skip(1).any(|a| a == "--version") {
        println!("ucloud-jobscript {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(why) if plugin_name() => {
            return fail(&Refusal {
                status: 500,
                code: "PLUGIN_FAILED",
                why: format!("jobs.create: {why}"),
            })
        }
        Err(why) => {
            eprintln!("ucloud-jobscript: {why} (try --help)");
            return ExitCode::from(64);
        }
    };
    if args.mode == Mode::Submit {
        let user = std::env::var("USER").unwrap_or_default();
        let answer = run(&args).and_then(|jobs| submit::submit_all(&jobs, &user, own_umask()));
        return match answer {
            Ok(answer) => write_lines(&[answer]),
            Err(refusal) => fail(&refusal),
        };
    }
    let lines = match run(&args) {
        Ok(jobs) if args.mode == Mode::Print => jobs
            .iter()
            .map(|j| {
                format!(
                    "submit {} {} {}",
                    shell_quote(&j.id),
                    shell_quote(&j.folder),
                    shell_quote(&j.script)
                )
            })
            .collect(),
        Ok(jobs) => jobs
            .iter()
            .map(|j| format!("submit {} {}", shell_quote(&j.id), shell_quote(&j.folder)))
            .collect(),
        Err(refusal) => vec![format!(
            "refuse {} {} {}",
            refusal.status,
            refusal.code,
            shell_quote(&refusal.why)
        )],
    };
    write_lines(&lines)
}

fn write_lines(lines: &[String]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = lines
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ucloud-jobscript: cannot write the answer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The plugin's failure line (ucloud-im-protocol(7)): the last line of stderr.
fn fail(refusal: &Refusal) -> ExitCode {
    let line = serde_json::json!({
        "status": refusal.status,
        "errorCode": refusal.code,
        "why": refusal.why,
    });
    eprintln!("{line}");
    ExitCode::FAILURE
}

/// Installed as the jobs.create plugin: the dispatcher runs it as `jobs.create
/// /dev/fd/3`, with the directories and the caller in the environment.
fn plugin_name() -> bool {
    std::env::args_os()
        .next()
        .is_some_and(|argv0| Path::new(&argv0).file_name() == Some("jobs.create".as_ref()))
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        return Ok(None);
    }
    if plugin_name() {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set (the dispatcher sets it)"))
        };
        let rest = args.finish();
        let [request] = rest.as_slice() else {
            return Err("expected one REQUEST_FILE argument".into());
        };
        return Ok(Some(Args {
            etc: env("UCLOUD_IM_ETC")?.into(),
            drives: env("UCLOUD_IM_DRIVES")?.into(),
            projects: env("UCLOUD_IM_PROJECTS").ok().map(PathBuf::from),
            user: env("UCLOUD_USERNAME")?,
            tag: TAG.into(),
            mode: Mode::Submit,
            request: request.into(),
        }));
    }
    let need =
        |v: Result<Option<String>, pico_args::Error>, name: &str| -> Result<String, String> {
            v.map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{name} is missing"))
        };
    let etc = need(args.opt_value_from_str("--etc"), "--etc")?;
    let drives = need(args.opt_value_from_str("--drives"), "--drives")?;
    let projects: Option<String> = args
        .opt_value_from_str("--projects")
        .map_err(|e| e.to_string())?;
    let user = need(args.opt_value_from_str("--user"), "--user")?;
    let tag = need(args.opt_value_from_str("--tag"), "--tag")?;
    let mode = match (args.contains("--print"), args.contains("--submit")) {
        (false, false) => Mode::Plan,
        (true, false) => Mode::Print,
        (false, true) => Mode::Submit,
        (true, true) => return Err("--print and --submit exclude each other".into()),
    };
    let rest = args.finish();
    let [request] = rest.as_slice() else {
        return Err("expected one REQUEST_FILE after the options".into());
    };
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        || tag.is_empty()
    {
        return Err(format!("--tag {tag:?} must be a plain name"));
    }
    Ok(Some(Args {
        etc: etc.into(),
        drives: drives.into(),
        projects: projects.filter(|p| !p.is_empty()).map(PathBuf::from),
        user,
        tag,
        mode,
        request: request.into(),
    }))
}

fn site_config(why: String) -> Refusal {
    Refusal {
        status: 500,
        code: "SITE_CONFIG",
        why,
    }
}

/// A JSON file of at most MAX_INPUT bytes.
fn read_json(path: &Path) -> Result<Value, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    parse_json(file, path)
}

fn parse_json(file: std::fs::File, path: &Path) -> Result<Value, String> {
    let text =
        ucloud_wire::read_capped(file, MAX_INPUT).map_err(|e| format!("{} {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// ucloud-project's table, or None when the site has none (no directory given, or
/// no table in it: a site without projects, where personal jobs go on as ever).
fn projects_table(dir: Option<&Path>) -> Result<Option<Value>, Refusal> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let path = dir.join("table.json");
    match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(site_config(format!("cannot open {}: {e}", path.display()))),
        Ok(file) => parse_json(file, &path).map(Some).map_err(site_config),
    }
}

/// The local account the jobs will run as: the passwd name of the real uid, which
/// is what sbatch submits as and Slurm checks the account's associations for,
/// whatever the environment or the drive table say.
fn local_account() -> Result<String, Refusal> {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        Ok(None) => Err(site_config(format!("uid {uid} has no passwd entry"))),
        Err(e) => Err(site_config(format!("cannot look up uid {uid}: {e}"))),
    }
}

/// `key` of a site table, a list (absent: empty).
fn table(etc: &Path, file: &str, key: &str) -> Result<Vec<Value>, Refusal> {
    let path = etc.join(file);
    let value = read_json(&path).map_err(site_config)?;
    match value.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => Ok(list.clone()),
        Some(_) => Err(site_config(format!(
            "{}: {key} is not a list",
            path.display()
        ))),
    }
}

/// The caller's entries of the drive table, by id: their own drives, and the
/// drives of the projects whose group this process is in (the groups the
/// dispatcher gave this request, so a member removed from the group has no
/// project drive here). An entry the table's reader cannot use is the site's
/// error, whoever it belongs to: the caller's might be it.
fn drives_of(dir: &Path, user: &str) -> Result<Vec<Drive>, Refusal> {
    let (drives, problems) = ucloud_wire::record::drive_table(dir).map_err(|e| {
        site_config(format!(
            "cannot read the drive table {}: {e}",
            dir.display()
        ))
    })?;
    if let Some(problem) = problems.into_iter().next() {
        return Err(site_config(format!("drive table: {problem}")));
    }
    Ok(callers_drives(
        drives,
        user,
        &ucloud_wire::record::process_groups(),
    ))
}

/// The drives of UCloud user `user` (by name; a project's by group).
fn callers_drives(drives: Vec<Drive>, user: &str, groups: &[u32]) -> Vec<Drive> {
    drives
        .into_iter()
        .filter(|d| match &d.owner {
            DriveOwner::User { ucloud, .. } => ucloud.as_str() == user,
            DriveOwner::Project { gid, .. } => groups.contains(gid),
        })
        .collect()
}

/// The checked jobs, their folders made unless --print.
fn run(args: &Args) -> Result<Vec<Planned>, Refusal> {
    let request = read_json(&args.request).map_err(|why| Refusal {
        status: 400,
        code: "BAD_REQUEST",
        why,
    })?;
    let products = table(&args.etc, "products/jobs.json", "products")?;
    let applications = table(&args.etc, "jobs/applications.json", "applications")?;
    let drives = drives_of(&args.drives, &args.user)?;
    let projects = projects_table(args.projects.as_deref())?;
    // Without a table the local name decides nothing: no lookup.
    let local = match projects {
        Some(_) => local_account()?,
        None => String::new(),
    };
    let site = Site {
        products: &products,
        applications: &applications,
        drives: &drives,
        user: &args.user,
        local: &local,
        projects: projects.as_ref(),
        tag: &args.tag,
    };
    let jobs = render::plan(&request, &site)?;
    if args.mode != Mode::Print {
        make_folders(&jobs, own_umask())?;
    }
    Ok(jobs)
}

/// The umask the program was started with (the dispatcher's 077).
fn own_umask() -> FileMode {
    let own = umask(FileMode::from_bits_truncate(0o077));
    umask(own);
    own
}

/// Each job's folder with its job.sbatch, all or none: a folder that already exists
/// means that job was submitted before, and it is never submitted twice. A job in
/// a project drive is made with umask 027 (folder 2750 with the setgid bit of the
/// drive's ucloud-jobs, script 0640), the others under the caller's umask.
/// job.sbatch is the record of what was submitted; sbatch is given the script
/// itself (submit.rs), never this file.
fn make_folders(jobs: &[Planned], own: FileMode) -> Result<(), Refusal> {
    let result = make_folders_under(jobs, own);
    umask(own);
    result
}

fn make_folders_under(jobs: &[Planned], own: FileMode) -> Result<(), Refusal> {
    let mut made: Vec<&Path> = Vec::new();
    for job in jobs {
        submit::umask_for(job.shared, own);
        let result = if job.shared {
            make_in_project_drive(job, &mut made)
        } else {
            make_in_home(job, &mut made)
        };
        if let Err(refusal) = result {
            for folder in &made {
                let _ = std::fs::remove_dir_all(folder);
            }
            return Err(refusal);
        }
    }
    Ok(())
}

fn job_folder(why: String) -> Refusal {
    Refusal {
        status: 500,
        code: "JOB_FOLDER",
        why,
    }
}

fn submitted_before(job: &Planned, whose: &str) -> Refusal {
    Refusal {
        status: 409,
        code: "ALREADY_EXISTS",
        why: format!(
            "job {} already has a folder ({}){whose}: it was submitted before",
            job.id, job.folder
        ),
    }
}

/// A personal drive's job: `<home>/ucloud-jobs` is the caller's own, made when
/// missing; nobody else can write in it.
fn make_in_home<'j>(job: &'j Planned, made: &mut Vec<&'j Path>) -> Result<(), Refusal> {
    let folder = Path::new(&job.folder);
    if let Some(parent) = folder.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| job_folder(format!("cannot make {}: {e}", parent.display())))?;
    }
    match std::fs::create_dir(folder) {
        Ok(()) => made.push(folder),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(submitted_before(job, ""))
        }
        Err(e) => return Err(job_folder(format!("cannot make {}: {e}", job.folder))),
    }
    std::fs::write(folder.join("job.sbatch"), &job.script)
        .map_err(|e| job_folder(format!("cannot write {}/job.sbatch: {e}", job.folder)))
}

/// A project drive's job. Every member writes in the drive and in its
/// ucloud-jobs, so nothing there is taken by name twice: ucloud-jobs is opened
/// once (not through a link) and must be root's and sticky (members then add
/// folders but never rename or remove each other's); the job's folder is made in
/// it and opened by that descriptor, checked to be the caller's own and writable by
/// the caller alone; job.sbatch is made new in it by that descriptor. The folder is
/// new, the caller's and not group-writable, so nobody else can put a stdout.txt
/// or stderr.txt (a link to one of the caller's files, say) there before the job
/// starts: slurmstepd makes them as the caller.
fn make_in_project_drive<'j>(job: &'j Planned, made: &mut Vec<&'j Path>) -> Result<(), Refusal> {
    let folder = Path::new(&job.folder);
    let (Some(parent), Some(name)) = (folder.parent(), folder.file_name()) else {
        return Err(job_folder(format!(
            "{} is not a job folder's path",
            job.folder
        )));
    };
    let jobs_dir = open_jobs_dir(parent)?;
    let rwx = FileMode::from_bits_truncate(0o777);
    match mkdirat(&jobs_dir, name, rwx) {
        Ok(()) => made.push(folder),
        Err(Errno::EEXIST) => {
            // Job ids are predictable, so another member can make the next one's
            // folder first: say so, so that the site can find who.
            let whose = match nix::sys::stat::fstatat(&jobs_dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            {
                Ok(st) if st.st_uid != geteuid().as_raw() => {
                    format!(" that is not yours (uid {} made it)", st.st_uid)
                }
                _ => String::new(),
            };
            return Err(submitted_before(job, &whose));
        }
        Err(e) => return Err(job_folder(format!("cannot make {}: {e}", job.folder))),
    }
    let dir = openat(
        &jobs_dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        FileMode::empty(),
    )
    .map_err(|e| job_folder(format!("cannot open {}: {e}", job.folder)))?;
    let st = fstat(&dir).map_err(|e| job_folder(format!("cannot look at {}: {e}", job.folder)))?;
    if st.st_uid != geteuid().as_raw() || st.st_mode & 0o022 != 0 {
        return Err(job_folder(format!(
            "{} is not the folder this job made (owner uid {}, mode {:o})",
            job.folder,
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    let script = openat(
        &dir,
        "job.sbatch",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        FileMode::from_bits_truncate(0o666),
    )
    .map_err(|e| job_folder(format!("cannot make {}/job.sbatch: {e}", job.folder)))?;
    std::fs::File::from(script)
        .write_all(job.script.as_bytes())
        .map_err(|e| job_folder(format!("cannot write {}/job.sbatch: {e}", job.folder)))
}

/// `<project drive>/ucloud-jobs`, opened: ucloud-project makes it
/// `root:<project group> 3770`, and nothing else will do. It is never made here:
/// made by a member, it would be that member's, who could then rename the others'
/// job folders and put their own in their place.
fn open_jobs_dir(dir: &Path) -> Result<std::fs::File, Refusal> {
    let refuse = |detail: String| {
        job_folder(format!(
            "the project drive's ucloud-jobs folder is missing or not root's sticky folder; \
             ucloud-project makes it ({}: {detail})",
            dir.display()
        ))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(dir)
        .map_err(|e| {
            refuse(match e.raw_os_error().map(Errno::from_raw) {
                // Linux says ENOTDIR for a link opened with O_DIRECTORY: ask which.
                Some(Errno::ELOOP | Errno::ENOTDIR) => match std::fs::symlink_metadata(dir) {
                    Ok(meta) if meta.file_type().is_symlink() => "a symbolic link".into(),
                    _ => "not a directory".into(),
                },
                _ => e.to_string(),
            })
        })?;
    let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
    if !meta.is_dir() {
        return Err(refuse("not a directory".into()));
    }
    if meta.uid() != 0 {
        return Err(refuse(format!("owned by uid {}, not root", meta.uid())));
    }
    if meta.mode() & 0o1000 == 0 {
        return Err(refuse(format!(
            "mode {:o}, without the sticky bit",
            meta.mode() & 0o7777
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucloud_wire::names::{DriveId, LocalName, UcloudName};

    #[test]
    fn a_caller_has_their_own_drives_and_the_projects_whose_group_they_are_in() {
        let home = |id: &str, who: &str, local: &str| {
            Drive::home(
                DriveId::new(id).unwrap(),
                UcloudName::new(who).unwrap(),
                LocalName::new(local).unwrap(),
                format!("/home/{local}"),
            )
        };
        let project = |id: &str, gid: u32| {
            Drive::project(
                DriveId::new(id).unwrap(),
                format!("p-{gid}"),
                gid,
                format!("/proj/{gid}"),
                "P".into(),
            )
        };
        let table = vec![
            home("7", "Ann#1", "ann"),
            home("9", "Bob#2", "bob"),
            project("8", 200001),
            project("10", 200002),
        ];
        let ids = |ds: Vec<Drive>| ds.iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ids(callers_drives(table.clone(), "Ann#1", &[1001, 200001])),
            ["7", "8"]
        );
        // Removed from the project's group: its drive is gone with it.
        assert_eq!(ids(callers_drives(table.clone(), "Ann#1", &[1001])), ["7"]);
        // A group opens no one's home; a name opens no project's drive.
        assert_eq!(
            ids(callers_drives(table.clone(), "Carl#3", &[1001, 200002])),
            ["10"]
        );
        assert!(callers_drives(table, "p-200001", &[]).is_empty());
    }
}
