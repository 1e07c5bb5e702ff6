//! ucloud-files: the native file plugins of ucloud-im in one binary. The dispatcher
//! executes it by file descriptor as the mapped user, so the call comes from
//! `UCLOUD_CALL` (argv[0] is whatever the plugin file is called); the request is
//! the JSON file named by argv[1] (`/dev/fd/3`). The answer is one JSON object on
//! stdout; a failure is one `{"status","errorCode","why"}` line on stderr and exit
//! status 1 (doc/contracts.md). See ucloud-files(8).
#![forbid(unsafe_code)]

mod browse;
mod drive;
mod error;
mod path;
mod tree;

use error::Error;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::ExitCode;

const USAGE: &str = "\
usage: ucloud-files REQUEST_FILE      (with UCLOUD_CALL set, as the dispatcher runs it)
       ucloud-files --help

The native file plugins of ucloud-im, one binary dispatching on UCLOUD_CALL:
  files.browse   one page of a directory of one of the caller's drives

Environment (set by ucloud-dispatch): UCLOUD_CALL, USER (the mapped account; the
drive must be theirs), UCLOUD_IM_DRIVES (the drive table directory).
Prints the response JSON on stdout; on failure one line
  {\"status\":404,\"errorCode\":\"NOT_FOUND\",\"why\":\"...\"}
on stderr and exit status 1. See ucloud-files(8).
";

/// The gateway caps envelopes at 8 MiB; a request cannot be larger.
const MAX_REQUEST: u64 = 8 * 1024 * 1024;

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = args
        .free_from_str::<String>()
        .map_err(|_| {
            Error::BadRequest("ucloud-files needs the request file as its argument".into())
        })
        .and_then(|file| run(&file));
    match result.and_then(|answer| {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &answer)
            .map_err(|e| Error::Internal(format!("cannot write the answer: {e}")))?;
        out.write_all(b"\n")
            .and_then(|()| out.flush())
            .map_err(|e| Error::Internal(format!("cannot write the answer: {e}")))
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", e.failure().line());
            ExitCode::FAILURE
        }
    }
}

fn env(key: &str) -> Result<String, Error> {
    std::env::var(key).map_err(|_| {
        Error::Misconfigured(format!(
            "{key} is not set (ucloud-files runs under ucloud-dispatch)"
        ))
    })
}

fn run(file: &str) -> Result<Value, Error> {
    let call = env("UCLOUD_CALL")?;
    let user = caller()?;
    let request = read_request(file)?;
    match call.as_str() {
        "files.browse" => {
            let table = env("UCLOUD_IM_DRIVES")?;
            let table = std::fs::File::open(&table).map_err(|e| {
                Error::Misconfigured(format!("cannot open the drive table {table}: {e}"))
            })?;
            browse::run(&request, &table, &user)
        }
        other => Err(Error::Unsupported(format!(
            "ucloud-files does not implement {other}"
        ))),
    }
}

/// The account the dispatcher made us: `USER`, which must be the real uid's name.
/// Never root: a listing as root would show what the user may not see.
fn caller() -> Result<String, Error> {
    let uid = nix::unistd::getuid();
    if uid.is_root() || nix::unistd::geteuid().is_root() {
        return Err(Error::Misconfigured(
            "ucloud-files never runs as root".into(),
        ));
    }
    let user = env("USER")?;
    let account = nix::unistd::User::from_uid(uid)
        .map_err(|e| Error::Internal(format!("cannot look up uid {uid}: {}", e.desc())))?;
    match account {
        Some(a) if a.name == user => Ok(user),
        _ => Err(Error::Misconfigured(format!(
            "USER={user} is not the account of uid {uid}"
        ))),
    }
}

fn read_request(file: &str) -> Result<Value, Error> {
    let f = std::fs::File::open(file)
        .map_err(|e| Error::Internal(format!("cannot open the request {file}: {e}")))?;
    let mut text = Vec::new();
    f.take(MAX_REQUEST + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::Internal(format!("cannot read the request: {e}")))?;
    if text.len() as u64 > MAX_REQUEST {
        return Err(Error::BadRequest(format!(
            "the request is larger than {MAX_REQUEST} bytes"
        )));
    }
    serde_json::from_slice(&text)
        .map_err(|e| Error::BadRequest(format!("the request is not JSON: {e}")))
}
