//! `files.collections.*` other than retrieveProducts (a shell plugin reading the
//! site's product table): drives on this provider are made by the site (the home
//! drive when a user is mapped, more in the registry's drive table), so users can
//! neither create, delete, rename nor share them. Those calls are refused with a
//! reason; verify, which UCloud uses to check its view against the provider's,
//! answers for the caller's own drives.

use crate::error::Error;
use crate::resolve::{self, Ctx};
use serde_json::{json, Value};
use ucloud_wire::names::DriveId;

pub fn run(call: &str, ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    match call {
        "files.collections.create" => Err(Error::BadRequest(
            "drives on this provider are made by the site: a home drive for each mapped user, \
             others by the administrator; ask your site's support for a project or scratch drive"
                .into(),
        )),
        "files.collections.delete" => Err(Error::BadRequest(
            "drives on this provider are removed by the site, not by users".into(),
        )),
        "files.collections.rename" => Err(Error::BadRequest(
            "drives on this provider keep the title the site gave them".into(),
        )),
        "files.collections.updateAcl" => Err(Error::BadRequest(
            "this provider does not share drives through UCloud ACLs (aclModifiable is false); \
             access follows the Unix permissions on the system"
                .into(),
        )),
        "files.collections.verify" => verify(ctx, request),
        other => Err(Error::Unsupported(format!(
            "ucloud-files does not implement {other}"
        ))),
    }
}

/// Every drive UCloud lists must be one of the caller's in the drive table.
fn verify(ctx: &Ctx, request: &Value) -> Result<Value, Error> {
    let items = resolve::items(request)?;
    for (i, item) in items.iter().enumerate() {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::BadRequest(format!("item {}: \"id\" is missing", i + 1)))?;
        let id = DriveId::new(id).map_err(|e| Error::BadRequest(format!("item {}: {e}", i + 1)))?;
        crate::drive::lookup(&ctx.table, &id, &ctx.user)?;
    }
    Ok(json!({}))
}
