//! What every program answers first: `--help` and `--version` print and exit 0
//! before any option is read or anything is touched (printing usage is not a side
//! effect, and an admin asking for help on a broken installation still gets it).

use std::process::ExitCode;

/// `Some(ExitCode::SUCCESS)` once `--help` (`-h`) or `--version` was answered;
/// `None` when neither was asked for. `help` is built only when it is printed.
pub fn help_or_version(
    args: &mut pico_args::Arguments,
    program: &str,
    help: impl FnOnce() -> String,
) -> Option<ExitCode> {
    answer(args, program, help, false)
}

/// [`help_or_version`], with `--version` naming on a second line the prefix the
/// paths were fixed under: for the dispatcher, whose paths an admin must be sure of.
pub fn help_or_version_and_prefix(
    args: &mut pico_args::Arguments,
    program: &str,
    help: impl FnOnce() -> String,
) -> Option<ExitCode> {
    answer(args, program, help, true)
}

fn answer(
    args: &mut pico_args::Arguments,
    program: &str,
    help: impl FnOnce() -> String,
    prefix: bool,
) -> Option<ExitCode> {
    if args.contains(["-h", "--help"]) {
        let text = help();
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
        return Some(ExitCode::SUCCESS);
    }
    if args.contains("--version") {
        match prefix {
            true => print!("{}", version(program)),
            false => println!("{program} {}", env!("CARGO_PKG_VERSION")),
        }
        return Some(ExitCode::SUCCESS);
    }
    None
}

/// The version and the prefix every path was fixed under at build time
/// (`UCLOUD_IM_ROOT`): `/` for a site's build, which uses the system's own paths.
pub fn version(program: &str) -> String {
    let prefix = match crate::paths::ROOT {
        "" => "/ (UCLOUD_IM_ROOT unset: the system's own paths)",
        root => root,
    };
    format!(
        "{program} {}\nprefix: {prefix}\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn args(list: &[&str]) -> pico_args::Arguments {
        pico_args::Arguments::from_vec(list.iter().map(OsString::from).collect())
    }

    #[test]
    fn only_help_and_version_are_answered() {
        let mut asked = false;
        for list in [&["--help"][..], &["-h"], &["serve", "--version"]] {
            assert!(help_or_version(&mut args(list), "x", || {
                asked = true;
                "usage\n".into()
            })
            .is_some());
        }
        assert!(asked);
        let mut rest = args(&["serve", "--once"]);
        assert!(help_or_version(&mut rest, "x", || unreachable!()).is_none());
        assert_eq!(rest.finish().len(), 2, "other arguments are left alone");
    }
}
