//! ucloud-share: folder shares on this site. Each run (a timer) asks UCloud, through
//! the outbox, for every share of this provider, decides from that answer alone
//! (plan.rs) and carries the decisions out: registers the drive the recipient will
//! see and tells UCloud where the share is; while a share is approved, grants the
//! recipient's account access to the folder (POSIX ACLs set as the sharer, so nobody
//! gets more than the sharer has) through a root-owned gate (a bind mount, so the
//! recipient never needs a way through the sharer's home) and a drive-table entry
//! that lapses unless renewed; when it is not, takes all of that away, revocations
//! first. One audit record per action on stdout, which the unit appends to the
//! audit log. Holds no UCloud credential.
#![deny(unsafe_code)]

mod act;
mod facts;
mod plan;
mod site;
mod store;
mod ucloud;

use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
ucloud-share: give shared folders to their recipients while UCloud says so

usage: ucloud-share [--wait SECONDS] [--grace SECONDS]
       ucloud-share --close-all
       ucloud-share --help | --version

  --wait S    how long to wait for UCloud's list of shares (through ucloud-sender)
              before acting without it (default 20)
  --grace S   how long a granted share lasts without UCloud confirming it (default 60)
  --close-all end every grant, whatever UCloud says, and unmount every gate: before
              the package is removed or the state directory is deleted

One run: asks UCloud for this provider's shares (GET /api/shares/control/browse,
through the outbox), then for each share: registers the drive its recipient will
see (product `share`) and tells UCloud where the share is available; while UCloud
says APPROVED and both users have accounts here, sets POSIX ACLs for the
recipient's account on the folder and everything in it (as the sharer, never
following a link), bind-mounts the folder at var/lib/ucloud-im/share-gates/<id>
and writes the recipient's drive-table entry; otherwise removes the entry,
unmounts the gate and removes the ACL entries, in that order. Run as root by
ucloud-share.timer every 10 seconds. Prints one audit record per action.
See ucloud-share(8).
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-share", || HELP.to_string())
    {
        return done;
    }
    if args.contains("--close-all") {
        let rest = args.finish();
        if !rest.is_empty() {
            eprintln!("ucloud-share: unexpected arguments {rest:?} (see ucloud-share --help)");
            return ExitCode::from(64);
        }
        return match act::close_all() {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, why)) => {
                eprintln!("ucloud-share: {why}");
                ExitCode::from(code)
            }
        };
    }
    let secs = |args: &mut pico_args::Arguments, key: &'static str, default: u64| {
        args.opt_value_from_str::<_, u64>(key)
            .map(|v| Duration::from_secs(v.unwrap_or(default)))
            .map_err(|e| format!("{key}: {e}"))
    };
    let options = (|| {
        let wait = secs(&mut args, "--wait", 20)?;
        let grace = secs(&mut args, "--grace", 60)?;
        let rest = args.finish();
        if !rest.is_empty() {
            return Err(format!("unexpected arguments {rest:?}"));
        }
        Ok(act::Options { wait, grace })
    })();
    let options = match options {
        Ok(o) => o,
        Err(why) => {
            eprintln!("ucloud-share: {why} (see ucloud-share --help)");
            return ExitCode::from(64);
        }
    };
    match act::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, why)) => {
            eprintln!("ucloud-share: {why}");
            ExitCode::from(code)
        }
    }
}
