//! From a UCloud path in a request to open directory descriptors below the caller's
//! drive. Every operation works on `(parent directory fd, name)` pairs obtained here,
//! so that nothing after the lookup is resolved by path again: a link swapped in
//! mid-operation is met by `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, never followed.

use crate::drive::{self, Drive};
use crate::error::Error;
use crate::path;
use crate::tree;
use serde_json::Value;
use std::fs::File;
use std::os::fd::OwnedFd;

/// What every call needs: the drive table and the caller's account name.
pub struct Ctx {
    pub table: File,
    pub user: String,
}

/// A UCloud path resolved to a drive of the caller's.
pub struct Loc {
    pub drive: Drive,
    pub components: Vec<String>,
}

impl Loc {
    pub fn shown(&self) -> String {
        let mut s = format!("/{}", self.drive.id);
        for c in &self.components {
            s.push('/');
            s.push_str(c);
        }
        s
    }

    /// The UCloud path of the first `i` components.
    pub fn prefix(&self, i: usize) -> String {
        let mut s = format!("/{}", self.drive.id);
        for c in &self.components[..i] {
            s.push('/');
            s.push_str(c);
        }
        s
    }

    /// The same drive, one more name.
    pub fn child(&self, name: &str) -> Loc {
        let mut components = self.components.clone();
        components.push(name.to_string());
        Loc {
            drive: self.drive.clone(),
            components,
        }
    }

    /// The drive's root directory.
    pub fn open_root(&self) -> Result<OwnedFd, Error> {
        tree::open_below(&self.drive.base, &[], |i| self.prefix(i))
    }

    /// The directory holding the last name, and that name. The drive's root has no
    /// parent a user may change: operations on it are refused.
    pub fn open_parent(&self) -> Result<(OwnedFd, &str), Error> {
        let Some((last, dirs)) = self.components.split_last() else {
            return Err(Error::BadRequest(format!(
                "{} is the root of the drive, which cannot be changed by this call",
                self.shown()
            )));
        };
        let comps: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let fd = tree::open_below(&self.drive.base, &comps, |i| self.prefix(i))?;
        Ok((fd, last.as_str()))
    }

    pub fn parent(&self) -> Option<Loc> {
        let (_, dirs) = self.components.split_last()?;
        Some(Loc {
            drive: self.drive.clone(),
            components: dirs.to_vec(),
        })
    }

    /// Whether `other` is this path or below it (same drive).
    pub fn contains(&self, other: &Loc) -> bool {
        self.drive.id == other.drive.id
            && other.components.len() >= self.components.len()
            && other.components[..self.components.len()] == self.components[..]
    }
}

impl Ctx {
    pub fn resolve(&self, ucloud_path: &str) -> Result<Loc, Error> {
        let p = path::parse(ucloud_path)?;
        let drive = drive::lookup(&self.table, &p.drive, &self.user)?;
        Ok(Loc {
            drive,
            components: p.components.iter().map(|c| c.to_string()).collect(),
        })
    }
}

/// A string field of a request object, with a message that names the item.
pub fn text<'a>(item: &'a Value, key: &str, what: &str) -> Result<&'a str, Error> {
    item.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadRequest(format!("{what}: \"{key}\" is missing or not a string")))
}

/// The `items` of a bulk request; at most `MAX_ITEMS`, at least one.
pub fn items(request: &Value) -> Result<&Vec<Value>, Error> {
    const MAX_ITEMS: usize = 1000;
    let items = request
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::BadRequest("the request has no \"items\" list".into()))?;
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(Error::BadRequest(format!(
            "a bulk request needs 1 to {MAX_ITEMS} items, got {}",
            items.len()
        )));
    }
    Ok(items)
}
