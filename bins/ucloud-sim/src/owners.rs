//! The users and projects UCloud knows: a job's owner, a connected user, a project
//! member (`owners/<kind>-<hex>.json`, see [`Store::owner_file`]). The core refuses
//! what names anyone else (`validateOwner`, `rpc.LookupActor`).

use crate::answer::{internal, Answer};
use crate::store::Store;
use serde_json::{json, Value};

/// Records users and projects UCloud knows (a job's owner, a connected user).
pub fn know(store: &Store, user: Option<&str>, project: Option<&str>) -> Result<(), Answer> {
    for (kind, name) in [("user", user), ("project", project)] {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        let file = Store::owner_file(kind, name);
        if store.read(&file).map_err(internal)?.is_none() {
            store.ensure_dir("owners").map_err(internal)?;
            store.write(&file, &json!(name)).map_err(internal)?;
        }
    }
    Ok(())
}

/// Whether UCloud knows the user (`rpc.LookupActor` finds them).
pub fn knows_user(store: &Store, name: &str) -> Result<bool, Answer> {
    known(store, &json!({"type": "user", "username": name}))
}

/// `validateOwner`: by the owner's type, a user or a project UCloud knows.
pub fn known(store: &Store, owner: &Value) -> Result<bool, Answer> {
    let (kind, name) = match owner["type"].as_str() {
        Some("user") => ("user", &owner["username"]),
        Some("project") => ("project", &owner["projectId"]),
        _ => return Ok(false),
    };
    let name = name.as_str().unwrap_or_default();
    if name.is_empty() {
        return Ok(false);
    }
    Ok(store
        .read(&Store::owner_file(kind, name))
        .map_err(internal)?
        .is_some())
}
