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

pub fn create(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    for (i, share) in items.iter().enumerate() {
        let what = format!("share {}", i + 1);
        let spec = share
            .get("specification")
            .ok_or_else(|| Error::BadRequest(format!("{what} has no specification")))?;
        let source = resolve::text(spec, "sourceFilePath", &what)?;
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
    }
    // No provider id: the share is known by UCloud's own id.
    Ok(json!({ "responses": vec![Value::Null; items.len()] }))
}

/// UCloud's core does not call this today; when it does, access ends on
/// ucloud-share's next run, which no longer finds the share, so nothing is done here.
pub fn delete(request: &Value) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    Ok(json!({ "responses": vec![json!({}); items.len()] }))
}
