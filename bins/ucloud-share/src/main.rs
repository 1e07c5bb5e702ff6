//! ucloud-share: keeps the local side of UCloud's folder shares. This entry
//! point answers `--help` and `--version` only; the steps it will order live in
//! the library (walk, gate, privilege).
#![forbid(unsafe_code)]

use std::process::ExitCode;

const HELP: &str = "\
ucloud-share: the local side of UCloud's folder shares

usage: ucloud-share [-h | --help] [--version]

For each share UCloud reports as approved, gives the recipient's local account
access to the shared folder (POSIX ACL entries set as the sharer, on what she
owns) and a root-owned bind mount that reaches it; takes both away when the
share ends.
";

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-share", || HELP.to_string())
    {
        return done;
    }
    eprintln!("ucloud-share: nothing to do yet (see ucloud-share --help)");
    ExitCode::from(64)
}
