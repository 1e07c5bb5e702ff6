//! `shares.create` and `shares.delete`, as the sharer. UCloud's core tells the
//! provider of a new share before the recipient has seen it
//! (`SharesProviderCreate`, `BulkRequest[Share]` → `BulkResponse[FindByStringId]`,
//! Go: orchestrators/shares.go). What can be checked as the sharer is checked here,
//! so that a share that could never work is refused at once: the folder is in one
//! of the sharer's drives, is a folder (no link on the way), and is the sharer's own
//! (nobody grants what they do not own). Everything else (the recipient's account,
//! the drive UCloud shows the recipient, access itself) is ucloud-share's, which
//! asks UCloud again and trusts nothing said here.

use crate::error::Error;
use crate::resolve::{self, Ctx};
use nix::sys::stat::{fstat, SFlag};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use ucloud_wire::names::UcloudName;

pub fn create(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    let mut consents = Vec::new();
    for (i, share) in items.iter().enumerate() {
        let what = format!("share {}", i + 1);
        let spec = share
            .get("specification")
            .ok_or_else(|| Error::BadRequest(format!("{what} has no specification")))?;
        let source = resolve::text(spec, "sourceFilePath", &what)?;
        let with = resolve::text(spec, "sharedWith", &what)?;
        let with = UcloudName::new(with)
            .map_err(|e| Error::BadRequest(format!("{what}: sharedWith: {e}")))?;
        if !is_mapped(&with)? {
            return Err(Error::BadRequest(format!(
                "{with} has no account on this site: they connect it first (UCloud's \
                 provider page), then the folder can be shared with them"
            )));
        }
        let loc = ctx.resolve(source)?;
        if !loc.drive.is_home() || loc.components.is_empty() {
            return Err(Error::BadRequest(format!(
                "{source} cannot be shared: share a folder inside your home drive"
            )));
        }
        let comps: Vec<&str> = loc.components.iter().map(String::as_str).collect();
        let folder = crate::tree::open_below(&loc.drive.base, &comps, |i| loc.prefix(i))?;
        let st = fstat(&folder).map_err(|e| Error::from_errno(e, &loc.shown()))?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFDIR.bits() {
            return Err(Error::NotADirectory(format!(
                "{source} is not a folder: only folders can be shared"
            )));
        }
        if st.st_uid != nix::unistd::getuid().as_raw() {
            return Err(Error::PermissionDenied(format!(
                "{source} is not yours: only a folder you own can be shared"
            )));
        }
        let id = resolve::text(share, "id", &what)?;
        if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::BadRequest(format!(
                "{what}: id {id:?} is not a share id"
            )));
        }
        consents.push((
            id.to_string(),
            json!({"share": id, "source": source, "sharedWith": with.as_str()}),
        ));
    }
    // Only after every item passed: a refused call records nothing.
    for (id, consent) in consents {
        record_consent(&id, &consent)?;
    }
    // No provider id: the share is known by UCloud's own id.
    Ok(json!({ "responses": vec![Value::Null; items.len()] }))
}

/// The sharer's own word that this share is hers, in a file of her own that
/// ucloud-share grants nothing without: `<id>.<uid>.<random>` in a sticky
/// directory, made new each time (never a file someone else could have put
/// there first), written whole under a dot name and then renamed.
fn record_consent(id: &str, consent: &Value) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = ucloud_wire::paths::share_consents_dir();
    let failed = |e: std::io::Error| Error::Internal(format!("cannot record share {id}: {e}"));
    let random = ucloud_wire::random_hex(8).map_err(failed)?;
    let uid = nix::unistd::getuid().as_raw();
    let tmp = format!("{dir}/.{id}.{uid}.{random}");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(failed)?;
    let written = file
        .write_all(format!("{consent}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, format!("{dir}/{id}.{uid}.{random}")));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(failed)
}

/// Whether `name` has a current mapping, by the registry's `mapped` question, which
/// anyone may ask and which tells nothing but that.
fn is_mapped(name: &UcloudName) -> Result<bool, Error> {
    let socket = ucloud_wire::paths::registry_socket();
    let unavailable =
        |e: std::io::Error| Error::Internal(format!("cannot ask the registry at {socket}: {e}"));
    let mut stream = UnixStream::connect(&socket).map_err(unavailable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(unavailable)?;
    let question = json!({"op": "mapped", "ucloud": name.as_str()});
    stream
        .write_all(format!("{question}\n").as_bytes())
        .map_err(unavailable)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, 64 * 1024))
        .read_line(&mut line)
        .map_err(unavailable)?;
    let answer: Value = serde_json::from_str(&line)
        .map_err(|_| Error::Internal(format!("the registry answered {line:?}")))?;
    answer["mapped"]
        .as_bool()
        .ok_or_else(|| Error::Internal(format!("the registry answered {answer}")))
}

/// UCloud's core does not call this today; when it does, access ends on
/// ucloud-share's next run, which no longer finds the share, so nothing is done here.
pub fn delete(request: &Value) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    Ok(json!({ "responses": vec![json!({}); items.len()] }))
}
