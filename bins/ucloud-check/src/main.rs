//! ucloud-check: reads the configuration of ucloud-im the way its programs do and
//! reports every problem, changing nothing (`sshd -t`, `visudo -c`). The rules are
//! ucloud-wire's, the ones the dispatcher enforces on each request: this program
//! only finds out ahead of time what the dispatcher would refuse. See ucloud-check(8).
#![forbid(unsafe_code)]

mod check;
mod report;

use report::Report;
use std::process::ExitCode;

const USAGE: &str = "\
usage: ucloud-check [--root DIR]
       ucloud-check --help | --version

Checks the configuration of ucloud-im without changing anything: site.conf, the
accounts it names, UCloud's public key, the transfer key, the mappings, the drive
table, the gateway's job bindings, the plugin directory, the dispatcher and the
audit log, by the same rules the dispatcher enforces (root-owned and not writable by group or others all the way
up from /, no symbolic links, modes, formats). Root only: it reads root-only files.

Prints one line per problem, `path:line: what is wrong: what to do` (`path:` alone
when no line is to blame), `warning:` lines for what works but looks wrong, and a
summary of what is fine.

Options:
  --root DIR    check the installation below DIR (a staged image, a container's
                root) instead of the one this build was made for (@ROOT@)
  -h, --help    print this help
  --version     print the version

Exit codes: 0 no problem, 1 a problem was found, 64 usage, 77 not run as root.
See ucloud-check(8).
";

const EXIT_PROBLEMS: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_NOT_ROOT: u8 = 77;

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) = ucloud_wire::cli::help_or_version(&mut args, "ucloud-check", || {
        USAGE.replace("@ROOT@", shown_root(ucloud_wire::paths::ROOT))
    }) {
        return done;
    }
    let root = match args.opt_value_from_str::<_, String>("--root") {
        Ok(root) => root,
        Err(e) => return usage(&format!("--root: {e}")),
    };
    let rest = args.finish();
    if !rest.is_empty() {
        return usage(&format!("unexpected arguments {rest:?}"));
    }
    let root = match root.as_deref().map(check::Root::given) {
        None => check::Root::built(),
        Some(Ok(root)) => root,
        Some(Err(why)) => return usage(&format!("--root: {why}")),
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "ucloud-check: run it as root: it reads files only root may read (the transfer key, the mappings)"
        );
        return ExitCode::from(EXIT_NOT_ROOT);
    }
    let mut report = Report::default();
    check::everything(&root, &mut report);
    print!("{}", report.text());
    if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    }
}

fn shown_root(root: &str) -> &str {
    if root.is_empty() {
        "/"
    } else {
        root
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("ucloud-check: {why} (see --help)");
    ExitCode::from(EXIT_USAGE)
}
