//! ucloud-registry: the admin command for the root-owned mapping store and drive
//! table, and the socket-activated service that connects UCloud users to local
//! accounts. `add` maps a UCloud user to a local account and registers the user's
//! home drive with UCloud through the outbox; `remove` undoes it; `list` shows the
//! store; `sync` records drives whose registration UCloud answered after `add`
//! stopped waiting; `expire` removes mappings older than `mapping_expire_after_ms`;
//! `serve` answers one connection on the registry socket (tickets, see serve.rs).
//! See ucloud-registry(8).
#![forbid(unsafe_code)]

mod account;
mod audit;
mod error;
mod ops;
mod request;
mod serve;
mod sshkeys;
mod store;
mod sys;
mod ticket;
mod ucloud;

use error::Error;
use ops::{Added, Registry};
use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;
use ucloud_wire::config::SiteConfig;

const USAGE: &str = "\
usage: ucloud-registry add <ucloudName> <localUser> [--wait SECONDS]
       ucloud-registry remove <ucloudName>
       ucloud-registry list
       ucloud-registry sync
       ucloud-registry expire
       ucloud-registry serve
       ucloud-registry --help | --version

Keeps the root-owned map from UCloud users to local accounts and the drive table
(UCloud drive id -> local user and base directory). Root only.

  add     check the local account (exists, uid >= min_uid, not root, usable shell,
          none of ucloud-im's own accounts), write the mapping, queue the home drive
          registration for UCloud in the outbox and wait up to SECONDS (default 10)
          for UCloud's answer; without one the drive stays pending for `sync`
  remove  delete the mapping and the user's drives, and tell UCloud
  list    one line per mapping: ucloudName localUser uid driveId|pending
  sync    record the drives of pending mappings that UCloud has answered
  expire  remove mappings older than mapping_expire_after_ms (site.conf) and tell
          UCloud; run it from a timer or cron when expiry is on
  serve   answer one request on the registry socket: the connection on stdin
          (inetd style, systemd Accept=yes) or on fd 3 (LISTEN_FDS); the peer's
          uid decides what it may ask (ucloud-connect(1) is the client)

Exit codes: 0 done (also when add leaves the drive pending), 64 usage, 77 refused,
78 unsafe or misconfigured installation, 70 internal error. See ucloud-registry(8).
";

/// Longer waits are a mistake: `sync` exists for answers that take long.
const MAX_WAIT_SECS: u64 = 3600;

enum Command {
    Add {
        name: String,
        local: String,
        wait: u64,
    },
    Remove {
        name: String,
    },
    List,
    Sync,
    Expire,
    Serve,
}

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-registry", || USAGE.to_string())
    {
        return done;
    }
    let result = parse(args).and_then(|command| {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            return Err(Error::NotRoot {
                euid: euid.as_raw(),
            });
        }
        // Mapping files are 0600 and drive files 0644 whatever the caller's umask.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        run(command)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ucloud_wire::log_err!("ucloud-registry: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn parse(mut args: pico_args::Arguments) -> Result<Command, Error> {
    let usage = |m: String| Error::Usage(m);
    let sub = args.subcommand().map_err(|e| usage(e.to_string()))?;
    let command = match sub.as_deref() {
        Some("add") => {
            let wait = args
                .opt_value_from_str::<_, u64>("--wait")
                .map_err(|e| usage(format!("--wait: {e}")))?
                .unwrap_or(10);
            if wait > MAX_WAIT_SECS {
                return Err(usage(format!("--wait is at most {MAX_WAIT_SECS} seconds")));
            }
            let name = free(&mut args, "the UCloud username")?;
            let local = free(&mut args, "the local account")?;
            Command::Add { name, local, wait }
        }
        Some("remove") => Command::Remove {
            name: free(&mut args, "the UCloud username")?,
        },
        Some("list") => Command::List,
        Some("sync") => Command::Sync,
        Some("expire") => Command::Expire,
        Some("serve") => Command::Serve,
        Some(other) => return Err(usage(format!("unknown command {other:?}"))),
        None => {
            return Err(usage(
                "a command is needed: add, remove, list, sync, expire or serve".into(),
            ))
        }
    };
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(usage(format!("unexpected arguments {rest:?}")));
    }
    Ok(command)
}

fn free(args: &mut pico_args::Arguments, what: &str) -> Result<String, Error> {
    let value: OsString = args
        .free_from_os_str(|s| Ok::<_, std::convert::Infallible>(s.to_os_string()))
        .map_err(|_| Error::Usage(format!("{what} is missing")))?;
    value
        .into_string()
        .map_err(|v| Error::Refused(format!("{what} {v:?} is not UTF-8")))
}

fn site() -> Result<SiteConfig, Error> {
    SiteConfig::load(&ucloud_wire::paths::site_config()).map_err(|e| Error::Config(e.to_string()))
}

fn run(command: Command) -> Result<(), Error> {
    if let Command::Serve = command {
        return serve::serve(connection()?);
    }
    let registry = Registry::site();
    registry.store.prepare()?;
    match command {
        Command::Serve => unreachable!("handled above"),
        Command::Expire => {
            for m in registry.expire(&site()?, ucloud_wire::now_ms())? {
                println!(
                    "expired the mapping of {} to {} (uid {}); UCloud will be told",
                    m.ucloud, m.local, m.uid
                );
            }
        }
        Command::Add { name, local, wait } => {
            let site = site()?;
            match registry.add(&site, &name, &local, Duration::from_secs(wait), None)? {
                Added::Drive(d) => println!(
                    "mapped {name} to {local}; home drive {} at {}",
                    d.id, d.base
                ),
                Added::Pending => println!(
                    "mapped {name} to {local}; the home drive is pending: UCloud has not answered \
                     within {wait} s (`ucloud-registry sync` records it once ucloud-sender has delivered it)"
                ),
            }
        }
        Command::Remove { name } => {
            let m = registry.remove(&name, None)?;
            println!(
                "removed {} (was {} uid {}) and its drives; UCloud will be told",
                m.ucloud, m.local, m.uid
            );
        }
        Command::List => {
            let (rows, problems) = registry.list()?;
            for row in rows {
                let drive = row.drive.as_ref().map_or("pending", |d| d.as_str());
                println!(
                    "{} {} {} {drive}",
                    row.mapping.ucloud, row.mapping.local, row.mapping.uid
                );
            }
            for p in problems {
                ucloud_wire::log_warn!("ucloud-registry: warning: {p}");
            }
        }
        Command::Sync => {
            let synced = registry.sync(&site()?)?;
            for d in &synced.recorded {
                println!("recorded home drive {} of {} at {}", d.id, d.owner, d.base);
            }
            for name in &synced.discarded {
                println!("discarded UCloud's answer for {name}, who is no longer mapped");
            }
            for (name, why) in &synced.pending {
                println!("still pending: {name}: {why}");
            }
        }
    }
    Ok(())
}

/// The connection to serve: the service manager's (a socket unit with Accept=yes),
/// else stdin (inetd style).
fn connection() -> Result<UnixStream, Error> {
    use std::os::fd::AsFd;
    use ucloud_systemd::activation::{check, Error as Passed, Problem};
    let want = ucloud_systemd::Want {
        family: ucloud_systemd::Family::Unix,
        role: ucloud_systemd::Role::Connected,
    };
    let refused = |what: &str, p: Problem| match p {
        Problem::NotSocket => Error::Usage(format!(
            "serve needs a connected unix socket, but {what} {p}: run it from a socket unit \
             with Accept=yes or systemd-socket-activate --inetd -a; people run \
             ucloud-connect instead"
        )),
        Problem::Unusable(_) | Problem::Inspect(_) => Error::Io(format!("{what} {p}")),
        _ => Error::Config(format!("{what} {p}")),
    };
    match ucloud_systemd::take_socket(want) {
        Ok(Some(fd)) => return Ok(UnixStream::from(fd)),
        Ok(None) => {}
        Err(Passed::Descriptor(p)) => return Err(refused("the service manager's socket", p)),
        Err(e) => return Err(Error::Config(e.to_string())),
    }
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(Error::io("cannot duplicate stdin"))?;
    check(fd.as_fd(), want).map_err(|p| refused("stdin", p))?;
    Ok(UnixStream::from(fd))
}
