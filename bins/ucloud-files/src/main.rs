//! ucloud-files: the native file plugins of ucloud-im in one binary. The dispatcher
//! executes it by file descriptor as the mapped user, so the call comes from
//! `UCLOUD_CALL` (argv[0] is whatever the plugin file is called); the request is
//! the JSON file named by argv[1] (`/dev/fd/3`). The answer is one JSON object on
//! stdout; a failure is one `{"status","errorCode","why"}` line on stderr and exit
//! status 1 (doc/contracts.md). See ucloud-files(8).
#![forbid(unsafe_code)]

mod browse;
mod collections;
mod conflict;
mod download;
mod drive;
mod error;
mod folder;
mod fsops;
mod ops;
mod path;
mod resolve;
mod search;
mod session;
mod shares;
mod sshkeys;
mod tree;
mod upload;

use error::Error;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;
use ucloud_wire::Capped;

const USAGE: &str = "\
usage: ucloud-files REQUEST_FILE      (with UCLOUD_CALL set, as the dispatcher runs it)
       ucloud-files --help | --version

The native file plugins of ucloud-im, one binary dispatching on UCLOUD_CALL:
  files.browse             one page of a directory of one of the caller's drives
  files.retrieve           one file's status
  files.createFolder       new folders                        (bulk, one transaction)
  files.move, files.copy   move or copy (recursively)         (bulk, one transaction)
  files.trash              move into the drive's Trash folder (bulk, one transaction)
  files.emptyTrash         empty the Trash folder
  files.delete             delete for good                    (bulk, one transaction)
  files.createDownload     download links;  files.download  serves one (data channel)
  files.createUpload       upload links;    files.upload    takes one chunk (data channel)
                           (a FOLDER item: WEBSOCKET_V2, many files over one WebSocket)
  files.streamingSearch    names holding a query below a folder, streamed in pages
  files.collections.{create,delete,rename,updateAcl,verify}
  shares.create            checks that each shared folder is the caller's own
  shares.delete            nothing to undo (ucloud-share ends access)
  ssh.keyUploaded          the user's UCloud SSH keys into ~/.ssh/authorized_keys

Environment (set by ucloud-dispatch): UCLOUD_CALL, USER (the mapped account; the
drive must be theirs), HOME, UCLOUD_USERNAME, UCLOUD_IM_DRIVES (the drive table directory),
UCLOUD_PUBLIC_URL and UCLOUD_PROVIDER (for links), UCLOUD_TRANSFER_TOKEN.
Prints the response JSON on stdout; on failure one line
  {\"status\":404,\"errorCode\":\"NOT_FOUND\",\"why\":\"...\"}
on stderr and exit status 1. See ucloud-files(8).
";

/// The gateway caps envelopes at 8 MiB; a request cannot be larger.
const MAX_REQUEST: u64 = 8 * 1024 * 1024;

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-files", || USAGE.to_string())
    {
        return done;
    }
    let result = args
        .free_from_str::<String>()
        .map_err(|_| {
            Error::BadRequest("ucloud-files needs the request file as its argument".into())
        })
        .and_then(|file| run(&file));
    match result.and_then(|answer| {
        if answer.is_null() {
            return Ok(());
        }
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
    // The one call that is about the account, not its drives.
    if call == "ssh.keyUploaded" {
        return sshkeys::key_uploaded(&request);
    }
    let table = env("UCLOUD_IM_DRIVES")?;
    let table = std::fs::File::open(&table)
        .map_err(|e| Error::Misconfigured(format!("cannot open the drive table {table}: {e}")))?;
    let ctx = resolve::Ctx { table, user };
    match call.as_str() {
        "files.browse" => browse::run(&request, &ctx.table, &ctx.user),
        "files.retrieve" => ops::retrieve(&ctx, &request),
        "files.createFolder" => ops::create_folder(&ctx, &request),
        "files.move" => ops::move_files(&ctx, &request),
        "files.copy" => ops::copy_files(&ctx, &request),
        "files.trash" => ops::trash(&ctx, &request),
        "files.emptyTrash" => ops::empty_trash(&ctx, &request),
        "files.delete" => ops::delete(&ctx, &request),
        "files.createDownload" => download::create(&ctx, &request),
        "files.createUpload" => upload::create(&ctx, &request),
        // A WebSocket stream: the plugin writes its lines itself.
        "files.streamingSearch" => search::run(&ctx, &request).map(|()| Value::Null),
        // The data channel answers in the framed form itself.
        "files.download" => download::serve(&ctx, &request).map(|()| Value::Null),
        "files.upload" => upload::serve(&ctx, &request).map(|()| Value::Null),
        "shares.create" => shares::create(&ctx, &request),
        "shares.delete" => shares::delete(&request),
        c if c.starts_with("files.collections.") => collections::run(c, &ctx, &request),
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
    let text = ucloud_wire::read_capped(f, MAX_REQUEST).map_err(|e| match e {
        Capped::Io(_) => Error::Internal(format!("the request {e}")),
        Capped::TooLarge(_) => Error::BadRequest(format!("the request {e}")),
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::BadRequest(format!("the request is not JSON: {e}")))
}
