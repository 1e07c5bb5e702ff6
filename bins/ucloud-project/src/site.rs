//! The site's side of the facts: site.conf, the product table (which categories
//! are compute and what their unit is), the mapping store (the only source of
//! local account names) and NSS.

use crate::plan::{Categories, Category, Person, Scope};
use nix::unistd::{Gid, Group, User};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use ucloud_wire::account::{self, Own};
use ucloud_wire::config::SiteConfig;
use ucloud_wire::names::UcloudName;
use ucloud_wire::products::{Kind, Table};
use ucloud_wire::record::{Mapping, MAX_RECORD};

/// Minutes in one accounting period.
fn period_minutes(frequency: &str) -> Option<u64> {
    match frequency {
        "PERIODIC_MINUTE" => Some(1),
        "PERIODIC_HOUR" => Some(60),
        "PERIODIC_DAY" => Some(1440),
        _ => None,
    }
}

/// Each category of the table: compute or not, and whether one unit is one core
/// for one period (every product's price is its CPU count).
pub fn categories(table: &Table) -> Categories {
    table
        .categories
        .iter()
        .map(|c| {
            let compute = c.kind == Kind::Compute;
            let products: Vec<_> = table
                .products
                .iter()
                .filter(|p| p.category == c.name)
                .collect();
            let per_core =
                compute && !products.is_empty() && products.iter().all(|p| p.price == p.cpu);
            let minutes = per_core
                .then(|| period_minutes(&c.terms.frequency))
                .flatten();
            (c.name.clone(), Category { compute, minutes })
        })
        .collect()
}

/// The site's own accounts (service, gateway, sender): never a mapping target.
pub fn own(config: &SiteConfig) -> Own {
    let uids = [
        &config.service_user,
        &config.gateway_user,
        &config.sender_user,
    ]
    .into_iter()
    .filter_map(|n| User::from_name(n).ok().flatten())
    .map(|u| u.uid.as_raw())
    .collect();
    Own { uids }
}

fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    ucloud_wire::read_capped(file, MAX_RECORD)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// The local account `name` is mapped to, when the mapping is current and the
/// account passes the rule the dispatcher applies on every request.
/// `Err` when it could not be told (the record or NSS failed), which is not "no".
pub fn person(
    config: &SiteConfig,
    own: &Own,
    mappings: &Path,
    name: &UcloudName,
) -> Result<Option<Person>, ()> {
    let text = match read_small(&mappings.join(name.file_name())) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(()),
    };
    let mapping = Mapping::parse(name, &text).map_err(|_| ())?;
    if mapping.expired(config.mapping_expire_after_ms, ucloud_wire::now_ms()) {
        return Ok(None);
    }
    let Some(found) = account::look_up(mapping.local.as_str()).map_err(|_| ())? else {
        return Ok(None);
    };
    if found.facts.uid != mapping.uid {
        return Ok(None);
    }
    if account::judge(&found.facts, config, own).is_err() {
        return Ok(None);
    }
    Ok(Some(Person {
        local: mapping.local,
        uid: mapping.uid,
    }))
}

/// The mapped users, and whether that is all of them for sure ([`people`]).
pub type People = (BTreeMap<UcloudName, Person>, bool);

/// The mapped users a run considers: all of the store's, or the one of `--mapped`;
/// and whether the answer is complete. A store that cannot be listed, a record that
/// cannot be read or an account NSS could not look up (an LDAP hiccup) makes it
/// incomplete: then nobody may be taken for unmapped, and the run removes nothing.
pub fn people(config: &SiteConfig, mappings: &Path, scope: &Scope) -> People {
    let own = own(config);
    let mut complete = true;
    let names: Vec<UcloudName> = match scope {
        Scope::One(user) => vec![user.clone()],
        Scope::All => match std::fs::read_dir(mappings) {
            Ok(entries) => entries
                .filter_map(|e| match e {
                    Ok(e) => Some(e),
                    Err(_) => {
                        complete = false;
                        None
                    }
                })
                .filter_map(|e| UcloudName::from_file_name(e.file_name().to_str()?).ok())
                .collect(),
            Err(_) => {
                complete = false;
                Vec::new()
            }
        },
    };
    let mut found = BTreeMap::new();
    for n in names {
        match person(config, &own, mappings, &n) {
            Ok(Some(p)) => {
                found.insert(n, p);
            }
            Ok(None) => {}
            Err(()) => complete = false,
        }
    }
    (found, complete)
}

pub fn group_gid(name: &str) -> Option<u32> {
    Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

pub fn gid_taken(gid: u32) -> bool {
    // A failed lookup counts as taken: a gid is handed out only when NSS says free.
    !matches!(Group::from_gid(Gid::from_raw(gid)), Ok(None))
}

pub fn group_members(name: &str) -> Option<Vec<String>> {
    Group::from_name(name).ok().flatten().map(|g| g.mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_core_priced_periodic_compute_categories_get_minutes() {
        let unit = json!({"name": "Core hour", "namePlural": "Core hours", "floatingPoint": false, "displayFrequencySuffix": true});
        let mut t = Table::default();
        t.add(Kind::Compute, &json!({
            "categories": [
                {"name": "cpu", "accountingUnit": unit, "accountingFrequency": "PERIODIC_HOUR"},
                {"name": "gpu", "accountingUnit": unit, "accountingFrequency": "PERIODIC_DAY"},
            ],
            "products": [
                {"id": "cpu-1", "category": "cpu", "description": "d", "price": 1, "cpu": 1, "memoryInGigs": 1, "gpu": 0},
                {"id": "cpu-4", "category": "cpu", "description": "d", "price": 4, "cpu": 4, "memoryInGigs": 1, "gpu": 0},
                {"id": "gpu-1", "category": "gpu", "description": "d", "price": 10, "cpu": 4, "memoryInGigs": 1, "gpu": 1},
            ],
        })).unwrap();
        let c = categories(&t);
        assert_eq!(
            c["cpu"],
            Category {
                compute: true,
                minutes: Some(60)
            }
        );
        assert_eq!(
            c["gpu"],
            Category {
                compute: true,
                minutes: None
            }
        );
    }
}
