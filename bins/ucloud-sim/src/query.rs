//! A query string read the way UCloud's core reads one for its GET calls
//! (`rpc.ParseRequestFromQuery` → `rpc.ParametersToStruct`, shared/pkg/rpc/server.go):
//! Go's `url.Values` (pairs split on `&`, `+` a space, a pair with a bad escape or a
//! `;` dropped), then each field of the flat request struct from the first value
//! of its name, an empty value as absent. A value that does not parse as its
//! field's type (`strconv.ParseBool`, `ParseInt`, `ParseUint`) fails the request:
//! 400. A `map[string]string` field takes every `name.KEY` parameter.
//!
//! The result has the shape [`crate::gojson`] gives: every field present, an
//! absent option `null`.

use crate::gojson::{zero, GoError, Ty};
use serde_json::{Map, Value};

/// A query component decoded as Go's `url.QueryUnescape` does, or `None` when it
/// has a bad escape (`%` without two hex digits).
fn unescape(text: &str) -> Option<String> {
    let bytes = ucloud_http::server::percent_decode_bytes(text)?;
    // Go keeps invalid UTF-8 in a string; the simulator replaces it.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Go's `url.ParseQuery`, keeping the pairs it does not drop, in order.
pub fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty() && !p.contains(';'))
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((unescape(k)?, unescape(v)?))
        })
        .collect()
}

/// `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `strconv.ParseInt(s, 10, 64)`: an optional sign, then decimal digits only.
pub fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Rust's parser takes the same sign and digits, and refuses overflow.
    s.parse().ok()
}

fn parse_uint(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn scalar(ty: &Ty, text: &str, name: &str) -> Result<Value, GoError> {
    let bad = || {
        GoError(format!(
            "query parameter {name}={text:?} is not a Go {ty:?}"
        ))
    };
    match ty {
        Ty::Str => Ok(Value::String(text.to_string())),
        Ty::Bool => parse_bool(text).map(Value::Bool).ok_or_else(bad),
        Ty::Int => parse_int(text).map(Value::from).ok_or_else(bad),
        Ty::Uint => parse_uint(text).map(Value::from).ok_or_else(bad),
        Ty::Float => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(bad),
        Ty::Opt(inner) => scalar(inner, text, name),
        // Other kinds are skipped by ParametersToStruct.
        _ => Ok(zero(ty)),
    }
}

/// Decodes `query` (without the `?`) into the flat struct `ty`.
pub fn decode(query: Option<&str>, ty: &Ty) -> Result<Value, GoError> {
    let Ty::Struct(fields) = ty else {
        panic!("a query decodes into a struct");
    };
    let pairs = pairs(query.unwrap_or_default());
    let mut out = Map::new();
    for (name, field_ty) in fields.iter() {
        let value = match field_ty {
            Ty::Map(_) => {
                let prefix = format!("{name}.");
                let mut map = Map::new();
                for (k, v) in &pairs {
                    if let Some(key) = k.strip_prefix(&prefix) {
                        map.entry(key.to_string())
                            .or_insert_with(|| Value::String(v.clone()));
                    }
                }
                Value::Object(map)
            }
            _ => match pairs.iter().find(|(k, _)| k == name) {
                Some((_, v)) if !v.is_empty() => scalar(field_ty, v, name)?,
                _ => zero(field_ty),
            },
        };
        out.insert(name.to_string(), value);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static T: Ty = Ty::Struct(&[
        ("itemsPerPage", &Ty::Int),
        ("next", &Ty::Opt(&Ty::Str)),
        ("includeProduct", &Ty::Bool),
        ("filterUsable", &Ty::Opt(&Ty::Bool)),
        ("filterCreatedAfter", &Ty::Opt(&Ty::Uint)),
        ("filterLabels", &Ty::Map(&Ty::Str)),
    ]);

    #[test]
    fn values_parse_as_go_parses_them() {
        let v = decode(
            Some("itemsPerPage=%2B10&next=a+b%40c&includeProduct=T&filterLabels.k=v&other=x&next=second"),
            &T,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"itemsPerPage": 10, "next": "a b@c", "includeProduct": true,
                   "filterUsable": null, "filterCreatedAfter": null, "filterLabels": {"k": "v"}})
        );
        let empty = decode(Some("itemsPerPage=&filterUsable="), &T).unwrap();
        assert_eq!(
            (&empty["itemsPerPage"], &empty["filterUsable"]),
            (&json!(0), &json!(null))
        );
        assert_eq!(decode(None, &T).unwrap()["next"], json!(null));
        // A pair Go's parser drops is as if absent.
        assert_eq!(
            decode(Some("itemsPerPage=%zz"), &T).unwrap()["itemsPerPage"],
            0
        );
        // Go's unhex takes hex digits only: `%+5` is a bad escape, not 0x05.
        assert_eq!(
            decode(Some("itemsPerPage=%+5"), &T).unwrap()["itemsPerPage"],
            0
        );
        assert_eq!(
            decode(Some("itemsPerPage=5;x=1"), &T).unwrap()["itemsPerPage"],
            0
        );
    }

    #[test]
    fn unparsable_values_fail() {
        for q in [
            "itemsPerPage=1.0",
            "itemsPerPage=1e3",
            "itemsPerPage=0x10",
            "itemsPerPage=1_000",
            "itemsPerPage=9223372036854775808",
            "itemsPerPage=+",
            "includeProduct=yes",
            "filterUsable=TRUE1",
            "filterCreatedAfter=-1",
        ] {
            assert!(decode(Some(q), &T).is_err(), "{q}");
        }
        assert_eq!(parse_int("-42"), Some(-42));
        assert_eq!(parse_int("007"), Some(7));
        assert_eq!(parse_int(" 7"), None);
    }
}
