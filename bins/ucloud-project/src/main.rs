//! ucloud-project: UCloud projects on this site. Reads what UCloud's notification
//! stream said (the inbox, written by ucloud-sender: untrusted input), folds it
//! into its state, and makes the site match: a Unix group per project of its
//! members mapped here, a Slurm account per project and compute category with an
//! association per member, personal and default accounts, limits from the
//! wallets, and project drives. Only groups and accounts it recorded as its own
//! are ever changed. One audit record per action on stdout, which the unit
//! appends to the audit log. Holds no UCloud credential.
#![forbid(unsafe_code)]

mod act;
mod drive;
mod event;
mod plan;
mod register;
mod runner;
mod site;
mod slurm;
mod state;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use plan::Scope;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::UcloudName;

const HELP: &str = "\
ucloud-project: UCloud projects as Unix groups, Slurm accounts, limits and drives

usage: ucloud-project
       ucloud-project --watch
       ucloud-project --mapped UCLOUD_NAME
       ucloud-project --help | --version

  (none)         one run: fold every event waiting in the inbox
                 (var/lib/ucloud-im/inbox/events) into the state, remove them, and
                 make groups, Slurm accounts, associations, limits and project drives
                 match it
  --watch        run, then wait for a new event (or 60 s) and run again, until
                 SIGTERM; for a machine without systemd's path unit
  --mapped NAME  only what concerns the UCloud user NAME, mapped here by hand
                 (the registry announces a new mapping in the inbox instead):
                 their default association, personal accounts and the
                 memberships of their projects; additions only, quick

Runs as root (ucloud-project.service, started by ucloud-project.path when an
event arrives and by ucloud-project.timer every 10 minutes). Commands, as root,
without a shell: groupadd -g GID NAME, gpasswd -a|-d USER NAME (or the
project_group_hook's add-group, add-member, remove-member), sacctmgr -i
add account|add user|remove user|modify account|modify user|add coordinator|
remove coordinator, and read-only
sacctmgr show and scontrol show assoc_mgr. Never deletes a group, an account or
data; never changes a group or account it did not create. Names: group
<prefix><first 10 letters/digits of the project id>, accounts <group>_<category>,
personal <prefix>u<uid>_<category>. Each project drive is registered with UCloud
(through the outbox: asked for by provider id <provider>-project-<id> first,
registered only when UCloud has none, owned by the project) and its entry, kind
project with the project's gid, written into the drive table. State:
var/lib/ucloud-im/projects/state.json; for the job plugins:
var/lib/ucloud-im/projects/table.json. Prints one audit record per action. See
ucloud-project(8).
";

type Failure = (u8, String);

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-project", || HELP.to_string())
    {
        return done;
    }
    let watch = args.contains("--watch");
    let mapped: Option<String> = match args.opt_value_from_str("--mapped") {
        Ok(m) => m,
        Err(e) => return usage(&format!("--mapped: {e}")),
    };
    let rest = args.finish();
    if !rest.is_empty() {
        return usage(&format!("unexpected arguments {rest:?}"));
    }
    if watch && mapped.is_some() {
        return usage("--watch and --mapped do not go together");
    }
    let outcome = (|| {
        if !nix::unistd::geteuid().is_root() {
            return Err((77, "must run as root (ucloud-project.service)".to_string()));
        }
        let site = Site::load()?;
        let Some(site) = site else {
            eprintln!(
                "ucloud-project: site.conf sets no project_prefix: projects are off, nothing to do"
            );
            return Ok(());
        };
        match (mapped, watch) {
            (Some(name), _) => {
                let user = UcloudName::new(&name).map_err(|e| (64, format!("--mapped: {e}")))?;
                site.mapped(&user)
            }
            (None, true) => site.watch(),
            (None, false) => site.once(),
        }
    })();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, why)) => {
            eprintln!("ucloud-project: {why}");
            ExitCode::from(code)
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("ucloud-project: {why} (see ucloud-project --help)");
    ExitCode::from(64)
}

struct Site {
    config: SiteConfig,
    categories: plan::Categories,
    /// The product project drives are registered with (register.rs).
    drive_product: Option<(String, String)>,
    /// The sender's uid: whose outbox replies are believed.
    sender_uid: Option<u32>,
    dir: PathBuf,
    inbox: PathBuf,
    mappings: PathBuf,
}

impl Site {
    fn load() -> Result<Option<Site>, Failure> {
        let config = SiteConfig::load(&ucloud_wire::paths::site_config())
            .map_err(|e| (78, e.to_string()))?;
        if config.projects.is_none() {
            return Ok(None);
        }
        let table = ucloud_wire::products::Table::load(Path::new(&ucloud_wire::paths::etc_dir()))
            .map_err(|e| (78, e))?;
        let dir = PathBuf::from(ucloud_wire::paths::projects_dir());
        if !dir.exists() {
            std::fs::create_dir(&dir)
                .map_err(|e| (73, format!("cannot make {}: {e}", dir.display())))?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| (73, format!("{}: {e}", dir.display())))?;
        }
        let meta =
            std::fs::symlink_metadata(&dir).map_err(|e| (78, format!("{}: {e}", dir.display())))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err((
                78,
                format!(
                    "{} must be a directory of root's that only root can write",
                    dir.display()
                ),
            ));
        }
        let sender_uid = nix::unistd::User::from_name(&config.sender_user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw());
        Ok(Some(Site {
            categories: site::categories(&table),
            drive_product: register::product(&table),
            sender_uid,
            config,
            dir,
            inbox: ucloud_wire::paths::inbox_dir().into(),
            mappings: ucloud_wire::paths::mappings_dir().into(),
        }))
    }

    fn lock(&self, wait: Option<Duration>) -> Result<nix::fcntl::Flock<File>, Failure> {
        let path = self.dir.join("lock");
        let deadline = wait.map(|w| Instant::now() + w);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| (73, format!("cannot open {}: {e}", path.display())))?;
        loop {
            let arg = match deadline {
                None => nix::fcntl::FlockArg::LockExclusive,
                Some(_) => nix::fcntl::FlockArg::LockExclusiveNonblock,
            };
            match nix::fcntl::Flock::lock(file, arg) {
                Ok(lock) => return Ok(lock),
                Err((f, nix::errno::Errno::EWOULDBLOCK))
                    if deadline.is_some_and(|d| Instant::now() < d) =>
                {
                    file = f;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err((
                        75,
                        "a run is in progress; it or the next one picks this up".into(),
                    ))
                }
                Err((_, e)) => return Err((73, format!("cannot lock {}: {e}", path.display()))),
            }
        }
    }

    fn env<'a>(
        &'a self,
        runner: &'a mut dyn runner::Runner,
        people: &'a dyn Fn(&Scope) -> site::People,
        audit: &'a mut dyn std::io::Write,
    ) -> act::Env<'a> {
        act::Env {
            provider: &self.config.provider,
            config: self.config.projects.as_ref().expect("checked in load"),
            categories: &self.categories,
            inbox: self.inbox.clone(),
            dir: self.dir.clone(),
            runner,
            people,
            group_gid: &site::group_gid,
            gid_taken: &site::gid_taken,
            group_members: &site::group_members,
            drive_owner: 0,
            drives: Some(act::DriveSide {
                outbox: ucloud_wire::paths::outbox_dir().into(),
                table: ucloud_wire::paths::drives_dir().into(),
                lock_dir: ucloud_wire::paths::state_dir().into(),
                product: self.drive_product.clone(),
                wait: Duration::from_secs(5),
                sender: self.sender_uid,
            }),
            audit,
        }
    }

    fn once(&self) -> Result<(), Failure> {
        let _lock = self.lock(None)?;
        let mut runner = runner::System {
            timeout: Duration::from_secs(120),
        };
        let people = |scope: &Scope| site::people(&self.config, &self.mappings, scope);
        let mut audit = act::AuditOut;
        let mut env = self.env(&mut runner, &people, &mut audit);
        let mut state = act::load_state(&self.dir).map_err(|e| (70, e))?;
        if let Err(why) = act::fold_inbox(&mut env, &mut state) {
            // The events stay; what is already known is still made true.
            eprintln!("ucloud-project: {why}");
        }
        let failed = act::reconcile(&mut env, &mut state, &Scope::All).map_err(|e| (74, e))?;
        if failed > 0 {
            eprintln!("ucloud-project: {failed} actions failed (see the audit log); the next run tries again");
        }
        Ok(())
    }

    fn mapped(&self, user: &UcloudName) -> Result<(), Failure> {
        let _lock = self.lock(Some(Duration::from_millis(500)))?;
        let mut runner = runner::System {
            timeout: Duration::from_secs(20),
        };
        let people = |scope: &Scope| site::people(&self.config, &self.mappings, scope);
        if people(&Scope::One(user.clone())).0.is_empty() {
            return Err((
                65,
                format!("{user} is not mapped to a usable local account"),
            ));
        }
        let mut audit = act::AuditOut;
        let mut env = self.env(&mut runner, &people, &mut audit);
        let mut state = act::load_state(&self.dir).map_err(|e| (70, e))?;
        let failed =
            act::reconcile(&mut env, &mut state, &Scope::One(user.clone())).map_err(|e| (74, e))?;
        match failed {
            0 => Ok(()),
            n => Err((
                75,
                format!("{n} actions failed (see the audit log); the next run tries again"),
            )),
        }
    }

    /// Runs until SIGTERM or SIGINT. They are blocked and read from a signalfd
    /// between runs, so a run is never cut off half-way (the commands it starts
    /// get the default signal mask back).
    fn watch(&self) -> Result<(), Failure> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block()
            .map_err(|e| (71, format!("cannot block signals: {e}")))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| (71, format!("cannot make a signalfd: {e}")))?;
        loop {
            if let Err((code, why)) = self.once() {
                if code == 70 || code == 78 {
                    return Err((code, why));
                }
                eprintln!("ucloud-project: {why}");
            }
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = signals.read_signal() {
                    return Ok(());
                }
                let waiting = ucloud_wire::inbox::events(&self.inbox).is_ok_and(|e| !e.is_empty());
                if waiting || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
