//! `files.browse`: one page of a directory listing as UCloud's `PageV2<ProviderFile>`.
//!
//! The page token is the offset into the sorted listing. Each page reads the
//! directory again (a plugin keeps no state between calls), so a directory that
//! changes between pages may show an entry twice or skip one, as any offset paging
//! does. Sorting by name needs only the names: then only the page's entries are
//! stat'ed, which keeps a page of a huge directory cheap.

use crate::drive;
use crate::error::Error;
use crate::path;
use crate::tree::{self, Kind};
use nix::sys::stat::FileStat;
use serde_json::{json, Value};
use std::os::fd::AsFd;

pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 250;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Path,
    Size,
    ModifiedAt,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub path: String,
    pub per_page: usize,
    pub offset: usize,
    pub sort: SortBy,
    pub descending: bool,
}

/// Reads the browse request. Keys are in UCloud's documented spelling; the Go core's
/// capitalised `Browse` is accepted too, in case the gateway did not normalise it.
pub fn query(request: &Value) -> Result<Query, Error> {
    let bad = |m: String| Error::BadRequest(m);
    let browse = request
        .get("browse")
        .or_else(|| request.get("Browse"))
        .ok_or_else(|| bad("the request has no \"browse\" object".into()))?;
    let path = browse
        .get("flags")
        .and_then(|f| f.get("path"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad("browse.flags.path is missing (the directory to list)".into()))?;
    let per_page = match browse.get("itemsPerPage") {
        None | Some(Value::Null) => DEFAULT_PAGE,
        Some(v) => match v.as_u64() {
            Some(0) => DEFAULT_PAGE,
            Some(n) => usize::try_from(n).unwrap_or(MAX_PAGE).min(MAX_PAGE),
            None => {
                return Err(bad(format!(
                    "itemsPerPage must be a positive whole number, got {v}"
                )))
            }
        },
    };
    let offset = match browse.get("next") {
        None | Some(Value::Null) => 0,
        Some(Value::String(t))
            if !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()) =>
        {
            t.parse().expect("checked digits")
        }
        Some(v) => {
            return Err(bad(format!(
                "next {v} is not a token this provider gave out"
            )))
        }
    };
    let sort = match browse.get("sortBy").and_then(Value::as_str) {
        None | Some("PATH") => SortBy::Path,
        Some("SIZE") => SortBy::Size,
        Some("MODIFIED_AT") => SortBy::ModifiedAt,
        Some(other) => {
            return Err(bad(format!(
                "sortBy {other:?} is not one of PATH, SIZE, MODIFIED_AT"
            )))
        }
    };
    let descending = match browse.get("sortDirection").and_then(Value::as_str) {
        None | Some("ascending") => false,
        Some("descending") => true,
        Some(other) => {
            return Err(bad(format!(
                "sortDirection {other:?} is not ascending or descending"
            )))
        }
    };
    Ok(Query {
        path: path.to_string(),
        per_page,
        offset,
        sort,
        descending,
    })
}

/// The whole call: `table` is the drive table directory, `user` the caller.
pub fn run(request: &Value, table: &impl AsFd, user: &str) -> Result<Value, Error> {
    let q = query(request)?;
    let target = path::parse(&q.path)?;
    let drive = drive::lookup(table, &target.drive, user)?;
    let shown = target.display();
    let fd = tree::open_below(&drive.base, &target.components, |i| {
        let mut s = format!("/{}", target.drive);
        for c in &target.components[..i] {
            s.push('/');
            s.push_str(c);
        }
        s
    })?;
    let listing = tree::list(fd, &shown)?;
    page(listing, &q, &shown)
}

fn page(listing: tree::Listing, q: &Query, shown: &str) -> Result<Value, Error> {
    let tree::Listing { dir, mut names, .. } = listing;
    let total = names.len();
    let start = q.offset.min(total);
    let end = (start + q.per_page).min(total);
    let entries: Vec<(String, FileStat)> = if q.sort == SortBy::Path {
        names.sort_unstable();
        if q.descending {
            names.reverse();
        }
        let mut out = Vec::with_capacity(end - start);
        for name in names.drain(start..end) {
            if let Some(st) = tree::stat(&dir, &name, shown)? {
                out.push((name, st));
            }
        }
        out
    } else {
        let mut all = Vec::with_capacity(total);
        for name in names {
            if let Some(st) = tree::stat(&dir, &name, shown)? {
                all.push((name, st));
            }
        }
        let key = |st: &FileStat| match q.sort {
            SortBy::Size => st.st_size as i128,
            _ => st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
        };
        // Ties by name, so that pages are stable while the directory is.
        all.sort_unstable_by(|a, b| key(&a.1).cmp(&key(&b.1)).then_with(|| a.0.cmp(&b.0)));
        if q.descending {
            all.reverse();
        }
        let end = end.min(all.len());
        let start = start.min(end);
        all.drain(start..end).collect()
    };
    let items: Vec<Value> = entries
        .iter()
        .map(|(name, st)| provider_file(shown, name, st))
        .collect();
    let next = (end < total).then(|| end.to_string());
    Ok(json!({"itemsPerPage": q.per_page, "items": items, "next": next}))
}

fn ms(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1000).saturating_add(nsec / 1_000_000)
}

/// UCloud's `ProviderFile`. Linux's `fstatat` reports no birth time, so `createdAt`
/// is the modification time.
fn provider_file(dir: &str, name: &str, st: &FileStat) -> Value {
    provider_file_at(&format!("{dir}/{name}"), st)
}

pub fn provider_file_at(id: &str, st: &FileStat) -> Value {
    let modified = ms(st.st_mtime, st.st_mtime_nsec);
    json!({
        "id": id,
        "createdAt": modified,
        "status": {
            "type": Kind::of(st).ucloud(),
            "sizeInBytes": st.st_size,
            "modifiedAt": modified,
            "accessedAt": ms(st.st_atime, st.st_atime_nsec),
            "unixMode": st.st_mode & 0o7777,
            "unixOwner": st.st_uid,
            "unixGroup": st.st_gid,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(browse: Value) -> Value {
        json!({"resolvedCollection": {"id": "18"}, "browse": browse})
    }

    #[test]
    fn queries_get_defaults_and_limits() {
        let q = query(&req(json!({"flags": {"path": "/17"}}))).unwrap();
        assert_eq!(
            q,
            Query {
                path: "/17".into(),
                per_page: 50,
                offset: 0,
                sort: SortBy::Path,
                descending: false
            }
        );
        let q = query(
            &json!({"Browse": {"flags": {"path": "/17/a"}, "itemsPerPage": 1000,
            "next": "250", "sortBy": "SIZE", "sortDirection": "descending"}}),
        )
        .unwrap();
        assert_eq!(
            (q.per_page, q.offset, q.sort, q.descending),
            (250, 250, SortBy::Size, true)
        );
    }

    #[test]
    fn bad_queries_are_refused() {
        for bad in [
            json!({}),
            req(json!({"flags": {}})),
            req(json!({"flags": {"path": 17}})),
            req(json!({"flags": {"path": "/17"}, "itemsPerPage": -1})),
            req(json!({"flags": {"path": "/17"}, "itemsPerPage": "50"})),
            req(json!({"flags": {"path": "/17"}, "next": "-1"})),
            req(json!({"flags": {"path": "/17"}, "next": "../x"})),
            req(json!({"flags": {"path": "/17"}, "next": "99999999999999"})),
            req(json!({"flags": {"path": "/17"}, "sortBy": "NAME"})),
            req(json!({"flags": {"path": "/17"}, "sortDirection": "up"})),
        ] {
            assert!(matches!(query(&bad), Err(Error::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn pages_sort_and_continue() {
        let base = std::env::temp_dir().join(format!(
            "files-browse-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        std::fs::create_dir_all(base.join("d")).unwrap();
        for (name, size) in [("b", 3), ("a", 1), ("c", 2)] {
            std::fs::write(base.join(name), "x".repeat(size)).unwrap();
        }
        let list = |sort: SortBy, descending: bool, per_page: usize, offset: usize| {
            let fd = tree::open_below(base.to_str().unwrap(), &[], |_| "/17".into()).unwrap();
            let l = tree::list(fd, "/17").unwrap();
            let q = Query {
                path: "/17".into(),
                per_page,
                offset,
                sort,
                descending,
            };
            page(l, &q, "/17").unwrap()
        };
        let ids = |v: &Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect()
        };
        let first = list(SortBy::Path, false, 2, 0);
        assert_eq!(ids(&first), ["/17/a", "/17/b"]);
        assert_eq!(first["next"], "2");
        let second = list(SortBy::Path, false, 2, 2);
        assert_eq!(ids(&second), ["/17/c", "/17/d"]);
        assert_eq!(second["next"], Value::Null);
        assert_eq!(second["items"][1]["status"]["type"], "DIRECTORY");
        assert_eq!(
            ids(&list(SortBy::Path, true, 10, 0)),
            ["/17/d", "/17/c", "/17/b", "/17/a"]
        );
        let by_size = list(SortBy::Size, false, 3, 0);
        assert_eq!(ids(&by_size)[..2], ["/17/a", "/17/c"]);
        assert_eq!(by_size["items"][0]["status"]["sizeInBytes"], 1);
        assert_eq!(ids(&list(SortBy::Size, true, 1, 0)), ["/17/d"]);
        assert!(ids(&list(SortBy::Path, false, 10, 99)).is_empty());
        std::fs::remove_dir_all(base).unwrap();
    }
}
