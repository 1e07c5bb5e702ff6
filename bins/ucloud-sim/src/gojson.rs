//! A request body read the way UCloud's core reads it: Go's `encoding/json`
//! decoding into the call's Go type (`rpc.ParseRequestFromBody`). Whatever Go
//! could not decode, the core answers 400; whatever it could, it accepts, reading
//! only the fields its type has. So the simulator decodes every body here, against
//! a [`Ty`] that mirrors the Go type, and works only on the result.
//!
//! Go's rules, as modelled:
//! - keys the type does not have are ignored;
//! - a key matches a field exactly, else case-insensitively (Go folds with Unicode
//!   simple folding, so `ſpec` is `spec`);
//! - a value of the wrong JSON type for its field fails the whole body, also when
//!   other keys decoded;
//! - `null` leaves a plain field at its zero value; only a `util.Option` (and a
//!   pointer) records it as absent; `fnd.Timestamp` fails on it (its
//!   `UnmarshalJSON` parses the literal as an integer);
//! - an integer field takes only an integral literal in range (`1.0`, `1e3`, `"1"`
//!   fail), an unsigned one no negative number.
//!
//! The result is a normalised [`Value`]: every field of every struct present under
//! its Go name, missing ones at their zero value (`""`, `0`, `false`, `{}`, `[]`,
//! `null` for an absent option or a zero timestamp). Three differences from Go
//! remain, each refusing what Go would take: serde_json refuses invalid UTF-8 and
//! lone surrogates, which Go replaces, and reads `-0` as a float, which Go takes as
//! an integer; and of two keys naming one field (`"spec"` and `"Spec"`) the exact
//! one wins, where Go keeps the later one in the text.

use serde_json::{Map, Value};

/// The Go type a value is decoded into.
#[derive(Debug)]
pub enum Ty {
    /// `string` (and string-based enums: Go does not check their values).
    Str,
    Bool,
    /// `int`, `int64`: 64 bits on the core's platforms.
    Int,
    /// `uint64`.
    Uint,
    /// `float64`: no call the simulator serves has one yet.
    #[allow(dead_code)]
    Float,
    /// `fnd.Timestamp`: milliseconds, an integer literal; `null` fails.
    Timestamp,
    /// `any`, `json.RawMessage`: anything.
    Any,
    /// `util.Option[T]`: `null` is absent, anything else decodes as `T`.
    Opt(&'static Ty),
    Slice(&'static Ty),
    /// `map[string]T`.
    Map(&'static Ty),
    /// A struct: its JSON field names (embedded structs flattened, as Go promotes
    /// their fields) and types.
    Struct(&'static [(&'static str, &'static Ty)]),
}

/// Why Go would refuse the body; the core answers 400 "Invalid request supplied".
#[derive(Debug, PartialEq)]
pub struct GoError(pub String);

impl std::fmt::Display for GoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes a body: JSON text, then the type.
pub fn decode(body: &[u8], ty: &Ty) -> Result<Value, GoError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| GoError(format!("the body is not JSON: {e}")))?;
    conform(&value, ty, "")
}

/// The zero value of a type, as the normalised result shows it.
pub fn zero(ty: &Ty) -> Value {
    match ty {
        Ty::Str => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        Ty::Int | Ty::Uint => Value::from(0),
        Ty::Float => Value::from(0.0),
        Ty::Timestamp | Ty::Any | Ty::Opt(_) => Value::Null,
        Ty::Slice(_) => Value::Array(Vec::new()),
        Ty::Map(_) => Value::Object(Map::new()),
        Ty::Struct(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, ty)| (name.to_string(), zero(ty)))
                .collect(),
        ),
    }
}

/// Go's key folding: each character through upper then lower case, so that keys
/// differing only in case (including `ſ`/`s` and the Kelvin sign/`k`) are equal.
pub fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn mismatch(value: &Value, want: &str, at: &str) -> GoError {
    let at = if at.is_empty() { "the body" } else { at };
    let what = match value {
        Value::Number(n) => format!("number {n}"),
        other => kind(other).to_string(),
    };
    GoError(format!("cannot decode {what} into {at}, a Go {want}"))
}

fn child(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

/// `value` decoded into `ty` at path `at`.
pub fn conform(value: &Value, ty: &Ty, at: &str) -> Result<Value, GoError> {
    match (ty, value) {
        (Ty::Opt(_), Value::Null) => Ok(Value::Null),
        (Ty::Opt(inner), v) => conform(v, inner, at),
        (Ty::Timestamp, Value::Number(n)) if n.is_i64() || n.is_u64() => n
            .as_i64()
            .map(Value::from)
            .ok_or_else(|| mismatch(value, "timestamp (int64 milliseconds)", at)),
        (Ty::Timestamp, v) => Err(mismatch(v, "timestamp (int64 milliseconds)", at)),
        (Ty::Any, v) => Ok(v.clone()),
        (_, Value::Null) => Ok(zero(ty)),
        (Ty::Str, Value::String(s)) => Ok(Value::String(s.clone())),
        (Ty::Bool, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (Ty::Int, Value::Number(n)) if n.as_i64().is_some() => Ok(value.clone()),
        (Ty::Uint, Value::Number(n)) if n.as_u64().is_some() => Ok(value.clone()),
        (Ty::Float, Value::Number(n)) => Ok(Value::from(n.as_f64().unwrap_or(0.0))),
        (Ty::Slice(inner), Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| conform(v, inner, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Ty::Map(inner), Value::Object(map)) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), conform(v, inner, &child(at, k))?)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        (Ty::Struct(fields), Value::Object(map)) => {
            let mut out = match zero(ty) {
                Value::Object(m) => m,
                _ => unreachable!("a struct's zero value is an object"),
            };
            let mut exact = vec![false; fields.len()];
            for (key, v) in map {
                let index = fields.iter().position(|(name, _)| name == key).or_else(|| {
                    let folded = fold(key);
                    fields.iter().position(|(name, _)| fold(name) == folded)
                });
                let Some(i) = index else { continue };
                let (name, field_ty) = &fields[i];
                let decoded = conform(v, field_ty, &child(at, name))?;
                let is_exact = name == key;
                if is_exact || !exact[i] {
                    out.insert(name.to_string(), decoded);
                    exact[i] = is_exact;
                }
            }
            Ok(Value::Object(out))
        }
        (Ty::Str, v) => Err(mismatch(v, "string", at)),
        (Ty::Bool, v) => Err(mismatch(v, "bool", at)),
        (Ty::Int, v) => Err(mismatch(v, "int64", at)),
        (Ty::Uint, v) => Err(mismatch(v, "uint64", at)),
        (Ty::Float, v) => Err(mismatch(v, "float64", at)),
        (Ty::Slice(_), v) => Err(mismatch(v, "slice", at)),
        (Ty::Map(_), v) => Err(mismatch(v, "map", at)),
        (Ty::Struct(_), v) => Err(mismatch(v, "struct", at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static INNER: Ty = Ty::Struct(&[("id", &Ty::Str), ("n", &Ty::Int)]);
    static SPEC: Ty = Ty::Struct(&[("title", &Ty::Str), ("labels", &Ty::Map(&Ty::Str))]);
    static T: Ty = Ty::Struct(&[
        ("spec", &SPEC),
        ("providerGeneratedId", &Ty::Opt(&Ty::Str)),
        ("count", &Ty::Int),
        ("size", &Ty::Uint),
        ("ratio", &Ty::Float),
        ("flag", &Ty::Bool),
        ("at", &Ty::Timestamp),
        ("list", &Ty::Slice(&INNER)),
        ("raw", &Ty::Any),
    ]);

    fn ok(text: &str) -> Value {
        decode(text.as_bytes(), &T).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn bad(text: &str) -> String {
        match decode(text.as_bytes(), &T) {
            Ok(v) => panic!("{text} decoded to {v}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn missing_and_unknown_keys() {
        let v = ok(r#"{"specification":{"title":"x"},"extra":[1,{"a":null}]}"#);
        assert_eq!(v["spec"], json!({"title": "", "labels": {}}));
        assert_eq!(v["providerGeneratedId"], Value::Null);
        assert_eq!(
            (&v["count"], &v["flag"], &v["at"]),
            (&json!(0), &json!(false), &Value::Null)
        );
        assert_eq!(v["list"], json!([]));
        assert!(v.get("specification").is_none() && v.get("extra").is_none());
    }

    #[test]
    fn keys_match_without_case_and_exact_wins() {
        let v = ok(r#"{"SPEC":{"TiTlE":"a"},"PROVIDERGENERATEDID":"p"}"#);
        assert_eq!(
            (&v["spec"]["title"], &v["providerGeneratedId"]),
            (&json!("a"), &json!("p"))
        );
        // The long s folds to s, the Kelvin sign to k, as in Go.
        assert_eq!(
            ok("{\"\u{17f}pec\":{\"title\":\"b\"}}")["spec"]["title"],
            "b"
        );
        assert_eq!(fold("\u{212a}"), "k");
        let v = ok(r#"{"Spec":{"title":"folded"},"spec":{"title":"exact"}}"#);
        assert_eq!(v["spec"]["title"], "exact");
        let v = ok(r#"{"spec":{"title":"exact"},"Spec":{"title":"folded"}}"#);
        assert_eq!(v["spec"]["title"], "exact");
        // A wrongly typed duplicate still fails, as Go decodes every key.
        bad(r#"{"spec":{"title":"a"},"SPEC":7}"#);
    }

    #[test]
    fn null_leaves_zero_values_and_options_absent() {
        let v = ok(
            r#"{"spec":null,"count":null,"flag":null,"list":null,"providerGeneratedId":null,"raw":null}"#,
        );
        assert_eq!(v["spec"]["title"], "");
        assert_eq!((&v["count"], &v["list"]), (&json!(0), &json!([])));
        assert_eq!(v["providerGeneratedId"], Value::Null);
        assert_eq!(ok("null")["count"], 0, "a null body is the zero request");
        assert!(bad(r#"{"at":null}"#).contains("timestamp"));
    }

    #[test]
    fn wrong_types_fail() {
        for text in [
            r#"{"spec":"x"}"#,
            r#"{"spec":{"title":5}}"#,
            r#"{"spec":{"labels":{"a":1}}}"#,
            r#"{"spec":{"labels":[]}}"#,
            r#"{"providerGeneratedId":7}"#,
            r#"{"providerGeneratedId":{}}"#,
            r#"{"count":"1"}"#,
            r#"{"count":1.0}"#,
            r#"{"count":1e3}"#,
            r#"{"count":1.5}"#,
            r#"{"count":9223372036854775808}"#,
            r#"{"count":true}"#,
            r#"{"size":-1}"#,
            r#"{"ratio":"1"}"#,
            r#"{"flag":1}"#,
            r#"{"flag":"true"}"#,
            r#"{"at":"1700000000000"}"#,
            r#"{"at":1.5}"#,
            r#"{"list":{}}"#,
            r#"{"list":[{"id":1}]}"#,
            r#"{"list":[7]}"#,
            "[]",
            "\"x\"",
            "7",
        ] {
            bad(text);
        }
        assert!(bad(r#"{"list":[{"id":"a"},{"n":"2"}]}"#).contains("list[1].n"));
    }

    #[test]
    fn numbers_and_anything() {
        let v = ok(
            r#"{"count":-9223372036854775808,"size":18446744073709551615,"ratio":2,"at":-1,"raw":{"x":[1.5]}}"#,
        );
        assert_eq!(v["count"], json!(i64::MIN));
        assert_eq!(v["size"], json!(u64::MAX));
        assert_eq!(v["ratio"], json!(2.0));
        assert_eq!(v["at"], json!(-1));
        assert_eq!(v["raw"], json!({"x": [1.5]}));
        // serde_json reads `-0` as a float, so it fails here where Go takes it.
        bad(r#"{"count":-0}"#);
    }

    #[test]
    fn not_json_fails() {
        for text in ["", "{", "{\"a\":1}x", "{'a':1}", "{\"a\":01}"] {
            bad(text);
        }
    }
}
