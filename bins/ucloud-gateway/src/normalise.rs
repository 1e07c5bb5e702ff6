//! Object keys in UCloud's documented spelling. UCloud's Go core decodes keys
//! case-insensitively and sends some capitalised (`Browse`, `Flags`); plugins should
//! not have to accept both. The rule, applied once, here:
//!
//! * a key whose first letter is upper case, and whose spelling with that letter
//!   lower-cased is a known UCloud field name ([`KNOWN`]), is renamed to that spelling
//!   (unless the object already has the lower-case key: then both stay as sent);
//! * every other key is left as it is;
//! * the values of user-defined maps ([`USER_MAPS`]: job parameters, labels, ...)
//!   are never entered (whatever the case of their own key, which is lowered like
//!   a known name), so a parameter named `Input` keeps its name.

use serde_json::{Map, Value};

/// UCloud field names the core may send capitalised.
const KNOWN: &[&str] = &[
    "acl",
    "application",
    "browse",
    "category",
    "conflictPolicy",
    "createdAt",
    "createdBy",
    "entity",
    "expectedDifferentState",
    "expectedState",
    "flags",
    "id",
    "items",
    "itemsPerPage",
    "job",
    "name",
    "newId",
    "newTitle",
    "next",
    "oldId",
    "output",
    "outputFolder",
    "owner",
    "path",
    "permissions",
    "product",
    "project",
    "provider",
    "providerGeneratedId",
    "replicas",
    "requestedTime",
    "resolvedApplication",
    "resolvedCollection",
    "resolvedNewCollection",
    "resolvedOldCollection",
    "resolvedProduct",
    "resources",
    "retrieve",
    "sortBy",
    "sortDirection",
    "specification",
    "state",
    "status",
    "supportedProtocols",
    "timeAllocation",
    "title",
    "type",
    "updates",
    "username",
    "version",
    "hours",
    "minutes",
    "seconds",
    "readOnly",
    "value",
    "query",
    "includeOthers",
    "includeUpdates",
    "includeSupport",
    "includeProduct",
    "includeSizes",
    "includeTimestamps",
    "includeUnixInfo",
    "includeMetadata",
    "filterProvider",
    "filterProductId",
    "filterProductCategory",
    "filterState",
    "filterApplication",
    "mode",
    "responses",
    "rights",
    "added",
    "deleted",
    "group",
    "projectId",
    "user",
    "collection",
    "support",
    "timestamp",
    "newTimeAllocation",
    "resolvedSupport",
    "icon",
    "sizeInBytes",
    "modifiedAt",
    "accessedAt",
];

/// Keys whose value is a map with names chosen by users: never descended into.
const USER_MAPS: &[&str] = &[
    "parameters",
    "labels",
    "annotations",
    "environment",
    "metadata",
    "variables",
];

/// Normalises `value` in place.
pub fn normalise(value: &mut Value) {
    match value {
        Value::Object(map) => normalise_object(map),
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn normalise_object(map: &mut Map<String, Value>) {
    // Most requests are already in the right spelling: look before rebuilding.
    if map
        .keys()
        .any(|k| renamed(k).is_some_and(|new| !map.contains_key(&new)))
    {
        let old = std::mem::take(map);
        let twins: Vec<String> = old
            .keys()
            .filter_map(|k| {
                renamed(k)
                    .filter(|new| old.contains_key(new))
                    .map(|_| k.clone())
            })
            .collect();
        for (key, value) in old {
            let new = if twins.contains(&key) {
                None
            } else {
                renamed(&key)
            };
            map.insert(new.unwrap_or(key), value);
        }
    }
    for (key, value) in map.iter_mut() {
        let plain = renamed(key);
        if !USER_MAPS.contains(&plain.as_deref().unwrap_or(key)) {
            normalise(value);
        }
    }
}

/// The documented spelling of a capitalised known key.
fn renamed(key: &str) -> Option<String> {
    let mut chars = key.chars();
    let first = chars.next()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    let lowered: String = std::iter::once(first.to_ascii_lowercase())
        .chain(chars)
        .collect();
    (KNOWN.contains(&lowered.as_str()) || USER_MAPS.contains(&lowered.as_str())).then_some(lowered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_core_capitals_are_lowered() {
        let mut v = json!({"ResolvedCollection": {"Id": "17"}, "Browse": {"Flags": {"Path": "/17/x"}, "ItemsPerPage": 50}});
        normalise(&mut v);
        assert_eq!(
            v,
            json!({"resolvedCollection": {"id": "17"}, "browse": {"flags": {"path": "/17/x"}, "itemsPerPage": 50}})
        );
    }

    #[test]
    fn user_maps_and_unknown_keys_are_untouched() {
        let mut v = json!({"Items": [{"Specification": {"Parameters": {"Input": {"Type": "text"}}, "Labels": {"Owner": "x"}}, "Custom": {"Path": 1}}]});
        normalise(&mut v);
        assert_eq!(
            v,
            json!({"items": [{"specification": {"parameters": {"Input": {"Type": "text"}}, "labels": {"Owner": "x"}}, "Custom": {"path": 1}}]})
        );
        let mut v = json!({"parameters": {"Name": {"Path": "/1/a"}}});
        normalise(&mut v);
        assert_eq!(v, json!({"parameters": {"Name": {"Path": "/1/a"}}}));
    }

    #[test]
    fn an_existing_lower_case_key_wins() {
        let mut v = json!({"Browse": 1, "browse": 2});
        normalise(&mut v);
        assert_eq!(v, json!({"Browse": 1, "browse": 2}));
        let mut v = json!({"browse": 2, "Browse": 1});
        normalise(&mut v);
        assert_eq!(v["browse"], 2);
    }
}
