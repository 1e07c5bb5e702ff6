//! The site's product table: `etc/ucloud-im/products/jobs.json` (compute) and
//! `products/files.json` (storage). It is the one source of what the site sells:
//! the `jobs.retrieveProducts` and `files.collections.retrieveProducts` plugins answer
//! from it, `ucloud-jobscript` maps its compute products to Slurm, and `ucloud-sender`
//! registers it with UCloud as `ProductV2` items (UCloud's Go package
//! `provider-integration/shared/pkg/accounting/products.go`).
//!
//! Each file is `{"categories":[Category,...],"products":[Product,...]}`. A category
//! carries what UCloud accounts by (unit, frequency, free to use), a product what it
//! is (CPUs, memory, GPUs, price). The parser is strict: an unknown key is a typo
//! that would otherwise be registered as a default, so it is refused.

use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::Path;

/// The two halves of the table, relative to the configuration directory.
pub const COMPUTE_FILE: &str = "products/jobs.json";
pub const STORAGE_FILE: &str = "products/files.json";

/// More would be a mistake, not a site: UCloud pages its catalogue by 250.
const MAX_PRODUCTS: usize = 1000;
const MAX_NAME: usize = 64;
const MAX_TEXT: usize = 1024;
const FREQUENCIES: [&str; 4] = ["ONCE", "PERIODIC_MINUTE", "PERIODIC_HOUR", "PERIODIC_DAY"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Compute,
    Storage,
}

impl Kind {
    /// `ProductV2.productType` and `ProductCategory.productType`.
    pub fn product_type(self) -> &'static str {
        match self {
            Kind::Compute => "COMPUTE",
            Kind::Storage => "STORAGE",
        }
    }
    /// `ProductV2.type`, the lower-case twin UCloud also reads.
    pub fn type_c(self) -> &'static str {
        match self {
            Kind::Compute => "compute",
            Kind::Storage => "storage",
        }
    }
    fn file(self) -> &'static str {
        match self {
            Kind::Compute => COMPUTE_FILE,
            Kind::Storage => STORAGE_FILE,
        }
    }
    /// Keys of a product that the plugins read and UCloud never sees.
    fn plugin_keys(self) -> &'static [&'static str] {
        match self {
            Kind::Compute => &["slurm", "native"],
            Kind::Storage => &["stats", "collection", "files"],
        }
    }
}

/// What UCloud keeps of a category for good once it has it: the core's
/// `ProductCreate` updates a known category's product type and sub-allocation flag
/// only, and answers 200 whatever else changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    /// `AccountingUnit`: `{name, namePlural, floatingPoint, displayFrequencySuffix}`.
    pub unit: Value,
    pub frequency: String,
    pub free_to_use: bool,
}

impl Terms {
    pub fn to_json(&self) -> Value {
        json!({"accountingUnit": self.unit, "accountingFrequency": self.frequency,
               "freeToUse": self.free_to_use})
    }

    /// The terms of a `ProductCategory` as UCloud shows it (`freeToUse` is
    /// `omitempty` in Go: absent means false).
    pub fn from_category(c: &Value) -> Option<Terms> {
        Some(Terms {
            unit: unit_of(c.get("accountingUnit")?)?,
            frequency: c.get("accountingFrequency")?.as_str()?.to_string(),
            free_to_use: c.get("freeToUse").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// Why `self` (what UCloud has) cannot become `new`, or None when it can.
    pub fn change_refused(&self, new: &Terms) -> Option<String> {
        let mut what = Vec::new();
        if self.unit != new.unit {
            what.push(format!("accountingUnit {} -> {}", self.unit, new.unit));
        }
        if self.frequency != new.frequency {
            what.push(format!(
                "accountingFrequency {} -> {}",
                self.frequency, new.frequency
            ));
        }
        if self.free_to_use != new.free_to_use {
            what.push(format!(
                "freeToUse {} -> {}",
                self.free_to_use, new.free_to_use
            ));
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// An `AccountingUnit` reduced to its four fields, so that two can be compared.
fn unit_of(v: &Value) -> Option<Value> {
    Some(json!({
        "name": v.get("name")?.as_str()?,
        "namePlural": v.get("namePlural")?.as_str()?,
        "floatingPoint": v.get("floatingPoint").and_then(Value::as_bool).unwrap_or(false),
        "displayFrequencySuffix": v.get("displayFrequencySuffix").and_then(Value::as_bool).unwrap_or(false),
    }))
}

#[derive(Clone, Debug, PartialEq)]
pub struct Category {
    pub name: String,
    pub kind: Kind,
    pub terms: Terms,
    pub allow_sub_allocations: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Product {
    pub name: String,
    pub category: String,
    pub description: String,
    pub price: i64,
    pub cpu: i64,
    pub memory_in_gigs: i64,
    pub gpu: i64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub categories: Vec<Category>,
    pub products: Vec<Product>,
}

impl Table {
    /// Both halves from the configuration directory `etc`.
    pub fn load(etc: &Path) -> Result<Table, String> {
        let mut table = Table::default();
        for kind in [Kind::Compute, Kind::Storage] {
            let path = etc.join(kind.file());
            let text =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let value: Value = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
            table
                .add(kind, &value)
                .map_err(|why| format!("{}: {why}", path.display()))?;
        }
        Ok(table)
    }

    pub fn category(&self, name: &str) -> Option<&Category> {
        self.categories.iter().find(|c| c.name == name)
    }

    /// Adds one half; `value` is the parsed file.
    pub fn add(&mut self, kind: Kind, value: &Value) -> Result<(), String> {
        let top = object(value, "the table")?;
        only_keys(top, &["categories", "products"], "the table")?;
        let categories = list(top, "categories")?;
        let products = list(top, "products")?;
        if self.products.len() + products.len() > MAX_PRODUCTS {
            return Err(format!("more than {MAX_PRODUCTS} products"));
        }
        let mut declared = Vec::new();
        for (i, c) in categories.iter().enumerate() {
            let c = category(kind, c).map_err(|why| format!("categories[{i}]: {why}"))?;
            if self.category(&c.name).is_some()
                || declared.iter().any(|d: &Category| d.name == c.name)
            {
                return Err(format!(
                    "category {:?} is declared twice (compute and storage categories share one name space)",
                    c.name
                ));
            }
            declared.push(c);
        }
        let mut used = BTreeSet::new();
        let mut added: Vec<Product> = Vec::new();
        for (i, p) in products.iter().enumerate() {
            let p = product(kind, p).map_err(|why| format!("products[{i}]: {why}"))?;
            if !declared.iter().any(|c| c.name == p.category) {
                return Err(format!(
                    "products[{i}] ({}): its category {:?} is not in this file's categories",
                    p.name, p.category
                ));
            }
            if added
                .iter()
                .any(|q| q.name == p.name && q.category == p.category)
            {
                return Err(format!(
                    "product {:?} of category {:?} is listed twice",
                    p.name, p.category
                ));
            }
            used.insert(p.category.clone());
            added.push(p);
        }
        if let Some(unused) = declared.iter().find(|c| !used.contains(&c.name)) {
            return Err(format!(
                "category {:?} has no products (UCloud learns a category only with its products)",
                unused.name
            ));
        }
        self.categories.extend(declared);
        self.products.extend(added);
        Ok(())
    }

    /// The table as UCloud's `ProductV2` items, every category's `provider` set.
    pub fn to_product_v2(&self, provider: &str) -> Vec<Value> {
        self.products
            .iter()
            .map(|p| {
                let c = self
                    .category(&p.category)
                    .expect("a product's category is checked when the table is read");
                let mut v = json!({
                    "type": c.kind.type_c(),
                    "category": {
                        "name": c.name,
                        "provider": provider,
                        "productType": c.kind.product_type(),
                        "accountingUnit": c.terms.unit,
                        "accountingFrequency": c.terms.frequency,
                        "freeToUse": c.terms.free_to_use,
                        "allowSubAllocations": c.allow_sub_allocations,
                    },
                    "name": p.name,
                    "description": p.description,
                    "productType": c.kind.product_type(),
                    "price": p.price,
                    "hiddenInGrantApplications": false,
                });
                if c.kind == Kind::Compute {
                    v["cpu"] = json!(p.cpu);
                    v["memoryInGigs"] = json!(p.memory_in_gigs);
                    v["gpu"] = json!(p.gpu);
                }
                v
            })
            .collect()
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be a JSON object"))
}

fn list<'a>(top: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match top.get(key) {
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("{key:?} must be a list")),
        None => Err(format!("{key:?} is missing")),
    }
}

fn only_keys(m: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{what} has an unknown key {k:?} (known: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// Letters, digits, `_.-`, starting with a letter or digit: these names become parts
/// of UCloud's paths and of Slurm's and the drive table's identifiers.
fn name(m: &Map<String, Value>, key: &str) -> Result<String, String> {
    let s = m
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{key:?} must be a string"))?;
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(format!(
            "{key} {s:?} must be 1-{MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit"
        ));
    }
    Ok(s.to_string())
}

fn text(m: &Map<String, Value>, key: &str) -> Result<String, String> {
    let s = m
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{key:?} must be a string"))?;
    if s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(format!(
            "{key} must be 1-{MAX_TEXT} bytes of text without control characters"
        ));
    }
    Ok(s.to_string())
}

fn flag(m: &Map<String, Value>, key: &str, default: Option<bool>) -> Result<bool, String> {
    match (m.get(key), default) {
        (Some(Value::Bool(b)), _) => Ok(*b),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(format!("{key:?} is missing (true or false)")),
        (Some(_), _) => Err(format!("{key:?} must be true or false")),
    }
}

/// A whole number in `min..=max`; UCloud stores these as 32-bit (CPUs, memory,
/// GPUs) or 64-bit (price) integers.
fn number(m: &Map<String, Value>, key: &str, min: i64, max: i64) -> Result<i64, String> {
    let v = m
        .get(key)
        .ok_or_else(|| format!("{key:?} is missing (a whole number, {min}-{max})"))?;
    match v.as_i64() {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{key} must be a whole number from {min} to {max}, not {v}"
        )),
    }
}

fn category(kind: Kind, v: &Value) -> Result<Category, String> {
    let m = object(v, "a category")?;
    only_keys(
        m,
        &[
            "name",
            "accountingUnit",
            "accountingFrequency",
            "freeToUse",
            "allowSubAllocations",
        ],
        "a category",
    )?;
    let name = name(m, "name")?;
    let u = object(
        m.get("accountingUnit").unwrap_or(&Value::Null),
        "accountingUnit",
    )?;
    only_keys(
        u,
        &[
            "name",
            "namePlural",
            "floatingPoint",
            "displayFrequencySuffix",
        ],
        "accountingUnit",
    )?;
    let unit = json!({
        "name": text(u, "name")?,
        "namePlural": text(u, "namePlural")?,
        "floatingPoint": flag(u, "floatingPoint", None)?,
        "displayFrequencySuffix": flag(u, "displayFrequencySuffix", None)?,
    });
    let frequency = m
        .get("accountingFrequency")
        .and_then(Value::as_str)
        .filter(|f| FREQUENCIES.contains(f))
        .ok_or_else(|| {
            format!(
                "category {name:?}: accountingFrequency must be one of {}",
                FREQUENCIES.join(", ")
            )
        })?;
    if kind == Kind::Compute && frequency == "ONCE" {
        return Err(format!(
            "category {name:?}: compute is charged over time; accountingFrequency ONCE is for storage quotas"
        ));
    }
    Ok(Category {
        kind,
        terms: Terms {
            unit,
            frequency: frequency.to_string(),
            free_to_use: flag(m, "freeToUse", Some(false))?,
        },
        allow_sub_allocations: flag(m, "allowSubAllocations", Some(true))?,
        name,
    })
}

fn product(kind: Kind, v: &Value) -> Result<Product, String> {
    let m = object(v, "a product")?;
    let mut known = vec!["id", "category", "description", "price"];
    if kind == Kind::Compute {
        known.extend(["cpu", "memoryInGigs", "gpu"]);
    }
    known.extend(kind.plugin_keys());
    only_keys(m, &known, "a product")?;
    let id = name(m, "id")?;
    let at = |why: String| format!("product {id:?}: {why}");
    let description = match m.get("description") {
        None => String::new(),
        Some(_) => text(m, "description").map_err(at)?,
    };
    let (cpu, memory_in_gigs, gpu) = match kind {
        Kind::Compute => (
            number(m, "cpu", 1, i32::MAX as i64).map_err(at)?,
            number(m, "memoryInGigs", 0, i32::MAX as i64).map_err(at)?,
            number(m, "gpu", 0, i32::MAX as i64).map_err(at)?,
        ),
        Kind::Storage => (0, 0, 0),
    };
    Ok(Product {
        category: name(m, "category").map_err(at)?,
        description,
        // Zero would make a product free in a category that is not.
        price: number(m, "price", 1, i64::MAX).map_err(at)?,
        cpu,
        memory_in_gigs,
        gpu,
        name: id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute() -> Value {
        json!({
            "categories": [{"name": "cpu",
                "accountingUnit": {"name": "Core", "namePlural": "Core",
                                   "floatingPoint": false, "displayFrequencySuffix": true},
                "accountingFrequency": "PERIODIC_MINUTE"}],
            "products": [{"id": "cpu-small", "category": "cpu", "cpu": 1, "memoryInGigs": 1,
                          "gpu": 0, "price": 1, "slurm": {"partition": "small"}}]
        })
    }

    fn storage() -> Value {
        json!({
            "categories": [{"name": "home",
                "accountingUnit": {"name": "GB", "namePlural": "GB",
                                   "floatingPoint": false, "displayFrequencySuffix": false},
                "accountingFrequency": "ONCE"}],
            "products": [{"id": "home", "category": "home", "price": 1,
                          "files": {"trashSupported": true}}]
        })
    }

    fn both(c: &Value, s: &Value) -> Result<Table, String> {
        let mut t = Table::default();
        t.add(Kind::Compute, c)?;
        t.add(Kind::Storage, s)?;
        Ok(t)
    }

    #[test]
    fn the_table_becomes_product_v2_items() {
        let t = both(&compute(), &storage()).unwrap();
        let items = t.to_product_v2("hpc");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["type"], "compute");
        assert_eq!(items[0]["productType"], "COMPUTE");
        assert_eq!(items[0]["category"]["provider"], "hpc");
        assert_eq!(
            items[0]["category"]["accountingFrequency"],
            "PERIODIC_MINUTE"
        );
        assert_eq!(items[0]["category"]["freeToUse"], false);
        assert_eq!(items[0]["category"]["allowSubAllocations"], true);
        assert_eq!(items[0]["cpu"], 1);
        assert_eq!(items[1]["productType"], "STORAGE");
        assert!(items[1].get("cpu").is_none());
        assert!(
            items[0].get("slurm").is_none(),
            "plugin keys stay at the site"
        );
    }

    #[test]
    fn hostile_tables_are_refused_with_the_reason() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("must be a JSON object", Box::new(|v| *v = json!([]))),
            (
                "\"products\" is missing",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("products");
                }),
            ),
            ("unknown key \"extra\"", Box::new(|v| v["extra"] = json!(1))),
            (
                "unknown key \"memoryInGig\"",
                Box::new(|v| v["products"][0]["memoryInGig"] = json!(4)),
            ),
            (
                "accountingFrequency must be one of",
                Box::new(|v| v["categories"][0]["accountingFrequency"] = json!("WEEKLY")),
            ),
            (
                "ONCE is for storage",
                Box::new(|v| v["categories"][0]["accountingFrequency"] = json!("ONCE")),
            ),
            (
                "\"floatingPoint\" is missing",
                Box::new(|v| {
                    v["categories"][0]["accountingUnit"]
                        .as_object_mut()
                        .unwrap()
                        .remove("floatingPoint");
                }),
            ),
            (
                "not in this file's categories",
                Box::new(|v| v["products"][0]["category"] = json!("gpu")),
            ),
            (
                "has no products",
                Box::new(|v| {
                    let mut c = v["categories"][0].clone();
                    c["name"] = json!("idle");
                    v["categories"].as_array_mut().unwrap().push(c);
                }),
            ),
            (
                "listed twice",
                Box::new(|v| {
                    let p = v["products"][0].clone();
                    v["products"].as_array_mut().unwrap().push(p);
                }),
            ),
            (
                "declared twice",
                Box::new(|v| {
                    let c = v["categories"][0].clone();
                    v["categories"].as_array_mut().unwrap().push(c);
                }),
            ),
            (
                "price must be a whole number",
                Box::new(|v| v["products"][0]["price"] = json!(0)),
            ),
            (
                "price must be a whole number",
                Box::new(|v| v["products"][0]["price"] = json!(1.5)),
            ),
            (
                "cpu must be a whole number",
                Box::new(|v| v["products"][0]["cpu"] = json!(-1)),
            ),
            (
                "cpu must be a whole number",
                Box::new(|v| v["products"][0]["cpu"] = json!(1u64 << 40)),
            ),
            (
                "\"gpu\" is missing",
                Box::new(|v| {
                    v["products"][0].as_object_mut().unwrap().remove("gpu");
                }),
            ),
            (
                "id \"../x\" must be",
                Box::new(|v| v["products"][0]["id"] = json!("../x")),
            ),
            (
                "name \"\" must be",
                Box::new(|v| v["categories"][0]["name"] = json!("")),
            ),
            (
                "without control characters",
                Box::new(|v| v["products"][0]["description"] = json!("a\nb")),
            ),
            (
                "\"freeToUse\" must be true or false",
                Box::new(|v| v["categories"][0]["freeToUse"] = json!("yes")),
            ),
        ];
        for (want, change) in cases {
            let mut c = compute();
            change(&mut c);
            let err = both(&c, &storage()).expect_err(want);
            assert!(err.contains(want), "wanted {want:?}, got {err:?}");
        }
        // Storage has no CPUs: a CPU count there is a mistake, not a default.
        let mut s = storage();
        s["products"][0]["cpu"] = json!(4);
        assert!(both(&compute(), &s)
            .unwrap_err()
            .contains("unknown key \"cpu\""));
        // One name space for both halves.
        let mut s = storage();
        s["categories"][0]["name"] = json!("cpu");
        s["products"][0]["category"] = json!("cpu");
        assert!(both(&compute(), &s).unwrap_err().contains("declared twice"));
    }

    #[test]
    fn only_unit_frequency_and_free_to_use_are_terms() {
        let t = both(&compute(), &storage()).unwrap();
        let old = t.category("cpu").unwrap().terms.clone();
        assert_eq!(old.change_refused(&old), None);
        let mut new = old.clone();
        new.frequency = "PERIODIC_HOUR".into();
        new.free_to_use = true;
        let why = old.change_refused(&new).unwrap();
        assert!(
            why.contains("accountingFrequency PERIODIC_MINUTE -> PERIODIC_HOUR"),
            "{why}"
        );
        assert!(why.contains("freeToUse false -> true"), "{why}");
        // UCloud's view (freeToUse omitted when false) reads as the same terms.
        let shown = json!({"accountingUnit": old.unit, "accountingFrequency": "PERIODIC_MINUTE"});
        assert_eq!(Terms::from_category(&shown), Some(old));
    }
}
