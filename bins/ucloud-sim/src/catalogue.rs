//! The product catalogue, as UCloud's core keeps it (core2/pkg/accounting/products.go,
//! `ProductCreate`, `ProductBrowse`, `productsLoad`). A provider fills it for
//! itself only; the core then finds a job's product in it, and its categories are
//! what usage is reported against.
//!
//! What is kept is what the core's database keeps: a category is created with the
//! first product naming it, and later products may change only its product type
//! (taken from the product's own `productType`) and `allowSubAllocations`. Its
//! accounting unit, frequency and `freeToUse` stay as first registered, and the
//! call still answers 200. (The running core's cache shows the product as sent
//! until it restarts; the database, and accounting, keep the old values.)
//!
//! `products.json`: `{"categories":[ProductCategory...],"products":[stored...]}`.

use crate::answer::{fail, internal, ok, Answer};
use crate::gojson;
use crate::gotypes;
use crate::query;
use crate::store::Store;
use serde_json::{json, Map, Value};

const FILE: &str = "products.json";

fn load(store: &Store) -> Result<Value, Answer> {
    Ok(store
        .read(FILE)
        .map_err(internal)?
        .unwrap_or_else(|| json!({"categories": [], "products": []})))
}

fn list(state: &Value, key: &str) -> Vec<Value> {
    state[key].as_array().cloned().unwrap_or_default()
}

/// `products.create`: `POST /api/products/v2`.
pub fn create(store: &Store, provider: &str, body: &[u8]) -> Result<Answer, Answer> {
    let request = gojson::decode(body, &gotypes::PRODUCTS_CREATE)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let items = request["items"].as_array().cloned().unwrap_or_default();
    if items
        .iter()
        .any(|p| p["category"]["provider"].as_str() != Some(provider))
    {
        return Err(fail(
            403,
            "FORBIDDEN",
            format!("forbidden: a product's category.provider is not {provider:?}"),
        ));
    }
    if items.is_empty() {
        return Err(fail(400, "BAD_REQUEST", "no products supplied"));
    }
    let state = load(store)?;
    let mut categories = list(&state, "categories");
    let mut products = list(&state, "products");
    // One transaction: the first failure leaves the catalogue as it was.
    for item in &items {
        let wanted = &item["category"];
        let name = wanted["name"].as_str().unwrap_or_default();
        if let Some(existing) = categories.iter_mut().find(|c| c["name"] == name) {
            // `on conflict (provider, category) do update set product_type,
            // allow_sub_allocations`: nothing else changes.
            existing["productType"] = item["productType"].clone();
            existing["allowSubAllocations"] = wanted["allowSubAllocations"].clone();
            continue;
        }
        let upper = name.to_uppercase();
        if let Some(clash) = categories
            .iter()
            .find(|c| c["name"].as_str().unwrap_or_default().to_uppercase() == upper)
        {
            // The unique index on (upper(provider), upper(category)).
            return Err(fail(
                400,
                "BAD_REQUEST",
                format!(
                    "category {name:?} clashes with the existing category {} (names are unique without case)",
                    clash["name"]
                ),
            ));
        }
        categories.push(json!({
            "name": name,
            "provider": provider,
            "productType": item["productType"],
            "accountingUnit": wanted["accountingUnit"],
            "accountingFrequency": wanted["accountingFrequency"],
            "freeToUse": wanted["freeToUse"],
            "allowSubAllocations": wanted["allowSubAllocations"],
        }));
    }
    for (i, item) in items.iter().enumerate() {
        let key = (&item["name"], &item["category"]["name"]);
        if items[..i]
            .iter()
            .any(|p| (&p["name"], &p["category"]["name"]) == key)
        {
            // One insert may not update the same row twice (Postgres refuses).
            return Err(fail(
                400,
                "BAD_REQUEST",
                format!("product {} of category {} is given twice", key.0, key.1),
            ));
        }
    }
    for item in &items {
        let stored = json!({
            "name": item["name"],
            "category": item["category"]["name"],
            "price": item["price"],
            "description": item["description"],
            "cpu": item["cpu"],
            "gpu": item["gpu"],
            "memoryInGigs": item["memoryInGigs"],
            "cpuModel": item["cpuModel"],
            "gpuModel": item["gpuModel"],
            "memoryModel": item["memoryModel"],
            "fraction": normalize_fraction(&item["fraction"]),
        });
        match products
            .iter_mut()
            .find(|p| p["name"] == item["name"] && p["category"] == item["category"]["name"])
        {
            Some(old) => *old = stored,
            None => products.push(stored),
        }
    }
    products.sort_by(|a, b| {
        let key = |p: &Value| {
            (
                p["category"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    store
        .write(
            FILE,
            &json!({"categories": categories, "products": products}),
        )
        .map_err(internal)?;
    Ok(ok(json!({})))
}

/// `Fraction.Normalize`: anything not positive over positive is 1/1.
fn normalize_fraction(f: &Value) -> Value {
    match (f["numerator"].as_i64(), f["denominator"].as_i64()) {
        (Some(n), Some(d)) if n > 0 && d > 0 => json!({"numerator": n, "denominator": d}),
        _ => json!({"numerator": 1, "denominator": 1}),
    }
}

/// `ProductTypeCCreate`.
fn type_c(product_type: &str) -> &'static str {
    match product_type {
        "COMPUTE" => "compute",
        "STORAGE" => "storage",
        "INGRESS" => "ingress",
        "LICENSE" => "license",
        "INFERENCE" => "inference",
        "NETWORK_IP" => "network_ip",
        "PRIVATE_NETWORK" => "private_network",
        _ => "",
    }
}

/// Go's `omitempty` on the fields that carry it.
fn omit_empty(map: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        let empty = match map.get(*key) {
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Bool(b)) => !b,
            Some(Value::Number(n)) => n.as_f64() == Some(0.0),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            map.remove(*key);
        }
    }
}

/// A category as `accapi.ProductCategory` marshals it (its `omitempty` fields).
pub fn category_json(category: &Value) -> Value {
    let mut c = category.as_object().cloned().unwrap_or_default();
    omit_empty(
        &mut c,
        &[
            "name",
            "provider",
            "productType",
            "accountingFrequency",
            "freeToUse",
            "allowSubAllocations",
        ],
    );
    Value::Object(c)
}

/// A product as `productsLoad` rebuilds it from the database, marshalled as
/// `apm.ProductV2`.
fn product_json(product: &Value, category: &Value) -> Value {
    let product_type = category["productType"].as_str().unwrap_or_default();
    let mut p = json!({
        "type": type_c(product_type),
        "category": category_json(category),
        "name": product["name"],
        "description": product["description"],
        "productType": product_type,
        "price": product["price"],
        "fraction": product["fraction"],
        "hiddenInGrantApplications": false,
        "usage": null,
        "cpu": product["cpu"],
        "cpuModel": product["cpuModel"],
        "memoryInGigs": product["memoryInGigs"],
        "memoryModel": product["memoryModel"],
        "gpu": product["gpu"],
        "gpuModel": product["gpuModel"],
        "balance": 0,
        "maxUsableBalance": 0,
        "pricePerUnit": 0,
    });
    if let Value::Object(map) = &mut p {
        omit_empty(
            map,
            &[
                "cpu",
                "cpuModel",
                "memoryInGigs",
                "memoryModel",
                "gpu",
                "gpuModel",
            ],
        );
    }
    p
}

/// Every product, ordered by provider, category and name, as the core lists them.
pub fn all(store: &Store) -> Result<Vec<Value>, Answer> {
    let state = load(store)?;
    let categories = list(&state, "categories");
    Ok(list(&state, "products")
        .iter()
        .filter_map(|p| {
            categories
                .iter()
                .find(|c| c["name"] == p["category"])
                .map(|c| product_json(p, c))
        })
        .collect())
}

/// The product a reference names (`ProductReference`: id is the product's name).
pub fn find(store: &Store, reference: &Value) -> Result<Option<Value>, Answer> {
    Ok(all(store)?.into_iter().find(|p| {
        p["name"] == reference["id"]
            && p["category"]["name"] == reference["category"]
            && p["category"]["provider"] == reference["provider"]
    }))
}

/// A category as stored, found the way `ProductCategoryRetrieve` finds it: through
/// a product of it.
pub fn category(store: &Store, provider: &str, name: &str) -> Result<Option<Value>, Answer> {
    let state = load(store)?;
    let has_product = list(&state, "products")
        .iter()
        .any(|p| p["category"] == name);
    Ok(list(&state, "categories")
        .into_iter()
        .find(|c| c["name"] == name && c["provider"] == provider && has_product))
}

/// `apm.ProductsBrowseRequest`, as `ParametersToStruct` reads it (the embedded
/// `ProductsFilter`'s fields at the top level).
static BROWSE: gojson::Ty = gojson::Ty::Struct(&[
    ("itemsPerPage", &gojson::Ty::Int),
    ("next", &gojson::Ty::Opt(&gojson::Ty::Str)),
    ("filterName", &gojson::Ty::Opt(&gojson::Ty::Str)),
    ("filterProductType", &gojson::Ty::Opt(&gojson::Ty::Str)),
    ("filterProvider", &gojson::Ty::Opt(&gojson::Ty::Str)),
    ("filterCategory", &gojson::Ty::Opt(&gojson::Ty::Str)),
    ("filterUsable", &gojson::Ty::Opt(&gojson::Ty::Bool)),
    ("includeBalance", &gojson::Ty::Opt(&gojson::Ty::Bool)),
    ("includeMaxBalance", &gojson::Ty::Opt(&gojson::Ty::Bool)),
]);

/// `fnd.ItemsPerPage`.
pub fn items_per_page(n: i64) -> usize {
    match n {
        n if n <= 0 => 50,
        n if n <= 1000 => n as usize,
        _ => 1000,
    }
}

/// `products.browse`: `GET /api/products/v2/browse`, one page of
/// `fnd.PageV2[apm.ProductV2]`; the cursor is `provider@category@name` as the
/// core makes it.
pub fn browse(store: &Store, query_string: Option<&str>) -> Result<Answer, Answer> {
    let request = query::decode(query_string, &BROWSE)
        .map_err(|e| fail(400, "BAD_REQUEST", format!("Invalid request supplied: {e}")))?;
    let per_page = items_per_page(request["itemsPerPage"].as_i64().unwrap_or(0));
    let cursor = request["next"].as_str().and_then(|n| {
        let mut parts = n.splitn(3, '@');
        Some((
            parts.next()?.to_string(),
            parts.next()?.to_string(),
            parts.next()?.to_string(),
        ))
    });
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let applies = |filter: &str, field: &Value| match request[filter].as_str() {
        Some(wanted) => field.as_str() == Some(wanted),
        None => true,
    };
    let mut items = Vec::new();
    for p in all(store)? {
        if items.len() >= per_page {
            break;
        }
        let key = (
            text(&p["category"]["provider"]),
            text(&p["category"]["name"]),
            text(&p["name"]),
        );
        if let Some(c) = &cursor {
            if key <= *c {
                continue;
            }
        }
        let keep = applies("filterName", &p["name"])
            && applies("filterProductType", &p["productType"])
            && applies("filterProvider", &p["category"]["provider"])
            && applies("filterCategory", &p["category"]["name"]);
        if keep {
            items.push(p);
        }
    }
    let next = if items.len() == per_page {
        let last = items.last().expect("a full page has a last item");
        json!(format!(
            "{}@{}@{}",
            text(&last["category"]["provider"]),
            text(&last["category"]["name"]),
            text(&last["name"])
        ))
    } else {
        Value::Null
    };
    Ok(ok(
        json!({"items": items, "next": next, "itemsPerPage": per_page}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sim-cat-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn product(name: &str, category: &str, unit: &str, free: bool) -> Value {
        json!({
            "name": name, "productType": "COMPUTE", "price": 1, "cpu": 4, "memoryInGigs": 8,
            "category": {"name": category, "provider": "hpc", "productType": "COMPUTE",
                         "accountingUnit": {"name": unit, "namePlural": unit, "floatingPoint": false, "displayFrequencySuffix": true},
                         "accountingFrequency": "PERIODIC_MINUTE", "freeToUse": free}
        })
    }

    fn body(items: &[Value]) -> Vec<u8> {
        json!({"items": items}).to_string().into_bytes()
    }

    fn status(a: Result<Answer, Answer>) -> u16 {
        a.unwrap_or_else(|a| a).status
    }

    #[test]
    fn create_keeps_what_the_database_keeps() {
        let dir = scratch("create");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        let a = create(&store, "hpc", &body(&[product("c1", "cpu", "Core", false)])).unwrap();
        assert_eq!((a.status, a.body), (200, json!({})));
        // The unit, frequency and free-to-use change: 200, and dropped.
        let mut changed = product("c1", "cpu", "Hour", true);
        changed["category"]["accountingFrequency"] = json!("PERIODIC_HOUR");
        changed["cpu"] = json!(8);
        assert_eq!(status(create(&store, "hpc", &body(&[changed]))), 200);
        let all = all(&store).unwrap();
        assert_eq!(all.len(), 1);
        let c = &all[0]["category"];
        assert_eq!(c["accountingUnit"]["name"], "Core");
        assert_eq!(c["accountingFrequency"], "PERIODIC_MINUTE");
        assert!(c.get("freeToUse").is_none());
        assert_eq!(all[0]["cpu"], 8, "the product itself is updated");
        assert_eq!(all[0]["type"], "compute");
        assert_eq!(
            all[0]["fraction"],
            json!({"numerator": 1, "denominator": 1})
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refusals_change_nothing() {
        let dir = scratch("refuse");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        create(&store, "hpc", &body(&[product("c1", "cpu", "Core", false)])).unwrap();
        let before = store.read(FILE).unwrap();
        let mut other = product("x", "cpu2", "Core", false);
        other["category"]["provider"] = json!("other");
        let mut wrong_type = product("y", "cpu3", "Core", false);
        wrong_type["cpu"] = json!("4");
        for (b, want) in [
            (body(&[product("a", "new", "Core", false), other]), 403),
            (body(&[]), 400),
            (b"{}".to_vec(), 400),
            (b"null".to_vec(), 400),
            (b"".to_vec(), 400),
            (body(&[wrong_type]), 400),
            (body(&[product("a", "CPU", "Core", false)]), 400),
            (
                body(&[
                    product("d", "new", "Core", false),
                    product("d", "new", "Core", false),
                ]),
                400,
            ),
            (br#"{"items":[{"category":{"provider":7}}]}"#.to_vec(), 400),
        ] {
            assert_eq!(
                status(create(&store, "hpc", &b)),
                want,
                "{}",
                String::from_utf8_lossy(&b)
            );
            assert_eq!(
                store.read(FILE).unwrap(),
                before,
                "{}",
                String::from_utf8_lossy(&b)
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn browse_pages_and_filters() {
        let dir = scratch("browse");
        let (store, _) = Store::init(&dir, "hpc").unwrap();
        let items: Vec<Value> = ["c3", "c1", "c2"]
            .iter()
            .map(|n| product(n, "cpu", "Core", false))
            .chain([product("g1", "gpu", "GPU", false)])
            .collect();
        create(&store, "hpc", &body(&items)).unwrap();
        let page = status_body(browse(&store, Some("itemsPerPage=2")));
        assert_eq!(page["items"][0]["name"], "c1");
        assert_eq!(page["items"][1]["name"], "c2");
        assert_eq!(page["next"], "hpc@cpu@c2");
        let rest = status_body(browse(&store, Some("itemsPerPage=2&next=hpc%40cpu%40c2")));
        assert_eq!(rest["items"][0]["name"], "c3");
        assert_eq!(rest["items"][1]["name"], "g1");
        let gpu = status_body(browse(&store, Some("filterCategory=gpu")));
        assert_eq!(gpu["items"].as_array().unwrap().len(), 1);
        assert_eq!(gpu["next"], Value::Null);
        assert_eq!(gpu["itemsPerPage"], 50);
        let none = status_body(browse(&store, Some("filterProvider=other")));
        assert_eq!(none["items"], json!([]));
        assert_eq!(status(browse(&store, Some("itemsPerPage=x"))), 400);
        assert_eq!(status(browse(&store, Some("filterUsable=maybe"))), 400);
        assert!(category(&store, "hpc", "gpu").unwrap().is_some());
        assert!(category(&store, "hpc", "GPU").unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn status_body(a: Result<Answer, Answer>) -> Value {
        let a = a.unwrap_or_else(|a| a);
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }
}
