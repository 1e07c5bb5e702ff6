//! Registering the site's products with UCloud: the product table
//! (`etc/ucloud-im/products/{jobs,files}.json`, lib/wire's `products`) becomes
//! `POST /api/products/v2` (Go: `accounting.ProductsCreate`,
//! `BulkRequest[ProductV2]`), at start-up and whenever the table changes.
//!
//! UCloud's core keeps a category's accounting unit, frequency and free-to-use flag
//! for good: a registration that changes them is answered 200 and the old terms
//! stay (`core2/pkg/accounting/products.go`, `ProductCreate`: `on conflict (provider,
//! category) do update set product_type, allow_sub_allocations` only). So the sender
//! refuses such a change itself, before anything is sent, against both what UCloud
//! shows (`GET /api/products/v2/browse?filterProvider=`) and its own record of what
//! it registered (`outbox/replies/products-registered.json`): UCloud's in-memory
//! catalogue shows the new terms until the core restarts, so its word alone is not
//! enough. A table UCloud already holds exactly is not sent again.

use crate::deliver::Sender;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use ucloud_wire::outbox::{self, Method};
use ucloud_wire::products::{Table, Terms, COMPUTE_FILE, STORAGE_FILE};

pub const CREATE: &str = "/api/products/v2";
pub const BROWSE: &str = "/api/products/v2/browse";
/// The sender's record of the categories it registered, beside the replies.
pub const RECORD: &str = "products-registered.json";
/// UCloud's largest page.
const PAGE: usize = 250;
/// A browse that never ends is UCloud misbehaving, not a catalogue.
const MAX_PAGES: usize = 100;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How one registration ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// UCloud holds the table now; how many products were sent (0: it had them all).
    Registered(usize),
    /// The table is wrong or changes what UCloud keeps for good: nothing was sent,
    /// and nothing will be until the table changes.
    Refused(String),
    /// UCloud could not be asked: try again later.
    Retry(String),
}

/// What to do, decided from the table, the record and UCloud's catalogue.
#[derive(Debug, PartialEq)]
pub enum Plan {
    Nothing,
    Send(Vec<Value>),
}

/// The categories' terms the sender registered, by category name.
pub type Record = BTreeMap<String, Terms>;

/// The projection of a `ProductV2` that registration sets: what UCloud answers
/// beyond it (balance, usage, fraction) is the core's, and `omitempty` fields it
/// leaves out read as their zero.
fn registered_part(p: &Value) -> Value {
    let c = &p["category"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    json!({
        "name": p["name"], "description": p["description"].as_str().unwrap_or(""),
        "productType": p["productType"], "price": n(&p["price"]),
        "cpu": n(&p["cpu"]), "memoryInGigs": n(&p["memoryInGigs"]), "gpu": n(&p["gpu"]),
        "hiddenInGrantApplications": p["hiddenInGrantApplications"].as_bool().unwrap_or(false),
        "category": {
            "name": c["name"], "provider": c["provider"],
            "terms": Terms::from_category(c).map(|t| t.to_json()),
            "allowSubAllocations": c["allowSubAllocations"].as_bool().unwrap_or(false),
        },
    })
}

/// The decision, without I/O. `existing` is UCloud's catalogue for this provider.
pub fn plan(
    table: &Table,
    provider: &str,
    record: &Record,
    existing: &[Value],
) -> Result<Plan, String> {
    for category in &table.categories {
        let new = &category.terms;
        let name = &category.name;
        let refuse = |old: &Terms, whose: &str| {
            old.change_refused(new).map(|what| {
                format!(
                    "category {name:?} would change {what} ({whose}); UCloud keeps a category's \
                     accounting unit, frequency and free-to-use flag for good (it answers 200 and \
                     keeps the old ones), so nothing was registered: give the changed products a \
                     new category name, or restore the old terms in the table"
                )
            })
        };
        if let Some(why) = record
            .get(name)
            .and_then(|old| refuse(old, "registered before"))
        {
            return Err(why);
        }
        let theirs = existing
            .iter()
            .filter(|p| p["category"]["name"].as_str() == Some(name))
            .filter_map(|p| Terms::from_category(&p["category"]));
        for old in theirs {
            if let Some(why) = refuse(&old, "UCloud has it so") {
                return Err(why);
            }
        }
    }
    let items = table.to_product_v2(provider);
    let held: Vec<Value> = existing.iter().map(registered_part).collect();
    if items.iter().all(|i| held.contains(&registered_part(i))) {
        return Ok(Plan::Nothing);
    }
    Ok(Plan::Send(items))
}

/// `?filterProvider=...&itemsPerPage=...&next=...`: the browse request's query, as
/// UCloud's `rpc.ParametersToStruct` reads `ProductsBrowseRequest` (fields flattened,
/// names with a lower-case first letter).
fn browse_path(provider: &str, next: Option<&str>) -> String {
    let mut path = format!(
        "{BROWSE}?filterProvider={}&itemsPerPage={PAGE}",
        ucloud_wire::outbox::query_value(provider)
    );
    if let Some(next) = next {
        path.push_str("&next=");
        path.push_str(&ucloud_wire::outbox::query_value(next));
    }
    path
}

/// A `PageV2[ProductV2]`: its items and the next page's cursor.
fn parse_page(body: &[u8]) -> Result<(Vec<Value>, Option<String>), String> {
    let page: Value = serde_json::from_slice(body)
        .map_err(|e| format!("UCloud's product page is not JSON: {e}"))?;
    let items = page["items"]
        .as_array()
        .ok_or("UCloud's product page has no items list")?
        .clone();
    Ok((items, page["next"].as_str().map(str::to_string)))
}

pub fn read_record(path: &Path) -> Result<Record, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let broken = |why: &str| {
        format!(
            "{} is not the sender's record of registered categories ({why}); \
             remove it only if UCloud's catalogue is known to match the table",
            path.display()
        )
    };
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| broken("not JSON"))?;
    let categories = v["categories"]
        .as_object()
        .ok_or_else(|| broken("no categories"))?;
    categories
        .iter()
        .map(|(name, t)| {
            Terms::from_category(t)
                .map(|t| (name.clone(), t))
                .ok_or_else(|| broken("a category without terms"))
        })
        .collect()
}

fn record_json(record: &Record) -> Value {
    let categories: serde_json::Map<String, Value> = record
        .iter()
        .map(|(n, t)| (n.clone(), t.to_json()))
        .collect();
    json!({ "categories": categories })
}

/// Modification time and size of both halves: a change to either is a new table.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(etc: &Path) -> Stamp {
    [COMPUTE_FILE, STORAGE_FILE]
        .iter()
        .map(|f| {
            std::fs::metadata(etc.join(f))
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

pub struct Registrar {
    etc: PathBuf,
    provider: String,
    outbox: PathBuf,
    /// The table's stamp when it was last registered or refused.
    done: Option<Stamp>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Registrar {
    pub fn new(etc: PathBuf, provider: String, outbox: PathBuf) -> Registrar {
        Registrar {
            etc,
            provider,
            outbox,
            done: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    fn record_path(&self) -> PathBuf {
        self.outbox.join(outbox::REPLIES).join(RECORD)
    }

    /// Registers the table if it changed since it was last handled and a retry is due.
    /// Cheap when nothing changed: two `stat`s.
    pub fn tick(&mut self, sender: &mut Sender) -> Option<Outcome> {
        let now = stamp(&self.etc);
        if self.done.as_ref() == Some(&now) {
            return None;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let outcome = self.register(sender);
        match &outcome {
            Outcome::Registered(0) => ucloud_wire::log_info!(
                "ucloud-sender: products: UCloud already holds the product table ({} and {})",
                COMPUTE_FILE,
                STORAGE_FILE
            ),
            Outcome::Registered(n) => {
                ucloud_wire::log_info!(
                    "ucloud-sender: products: registered {n} products with UCloud"
                )
            }
            Outcome::Refused(why) => ucloud_wire::log_err!("ucloud-sender: products: {why}"),
            Outcome::Retry(why) => ucloud_wire::log_warn!(
                "ucloud-sender: products: not registered yet, again in {} s: {why}",
                self.backoff.as_secs()
            ),
        }
        if let Outcome::Retry(_) = outcome {
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        } else {
            // Handled: until the table changes again, there is nothing more to do.
            self.done = Some(now);
            self.retry_at = None;
            self.backoff = FIRST_BACKOFF;
        }
        Some(outcome)
    }

    /// Blocks until the table is registered or refused, or with `tries` set, gives up
    /// after that many attempts. Products come before anything else the sender
    /// delivers: UCloud resolves a drive or a job by its product.
    pub fn settle(&mut self, sender: &mut Sender, tries: Option<u32>) -> Outcome {
        let mut attempts = 0;
        loop {
            if let Some(outcome) = self.tick(sender) {
                attempts += 1;
                match outcome {
                    Outcome::Retry(why) if tries.is_some_and(|t| attempts >= t) => {
                        return Outcome::Retry(why)
                    }
                    Outcome::Retry(_) => {}
                    done => return done,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn register(&mut self, sender: &mut Sender) -> Outcome {
        let table = match Table::load(&self.etc) {
            Ok(t) => t,
            Err(why) => return Outcome::Refused(format!("the product table is refused: {why}")),
        };
        let mut record = match read_record(&self.record_path()) {
            Ok(r) => r,
            Err(why) => return Outcome::Refused(why),
        };
        let existing = match self.browse(sender) {
            Ok(items) => items,
            Err(why) => return Outcome::Retry(why),
        };
        let sent = match plan(&table, &self.provider, &record, &existing) {
            Err(why) => return Outcome::Refused(why),
            Ok(Plan::Nothing) => 0,
            Ok(Plan::Send(items)) => {
                let n = items.len();
                match sender.call(Method::Post, CREATE, &json!({ "items": items })) {
                    Err(why) => return Outcome::Retry(why),
                    Ok((status, _)) if (200..300).contains(&status) => n,
                    Ok((status, body)) => {
                        return Outcome::Refused(format!(
                            "UCloud refused the products ({status}): {}",
                            String::from_utf8_lossy(&body)
                                .chars()
                                .take(300)
                                .collect::<String>()
                        ))
                    }
                }
            }
        };
        for c in &table.categories {
            record.insert(c.name.clone(), c.terms.clone());
        }
        if let Err(e) = crate::deliver::write_atomically(
            &self.outbox,
            outbox::REPLIES,
            RECORD,
            record_json(&record).to_string().as_bytes(),
        ) {
            // UCloud has the products; only the safeguard against a later silent
            // change is missing, and UCloud's catalogue still holds the terms.
            ucloud_wire::log_warn!(
                "ucloud-sender: products: cannot write {}: {e}",
                self.record_path().display()
            );
        }
        Outcome::Registered(sent)
    }

    /// UCloud's catalogue for this provider, every page.
    fn browse(&self, sender: &mut Sender) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = browse_path(&self.provider, next.as_deref());
            let (status, body) = sender.call(Method::Get, &path, &Value::Null)?;
            if !(200..300).contains(&status) {
                return Err(format!(
                    "UCloud answered {status} to the product browse: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ));
            }
            let (page, cursor) = parse_page(&body)?;
            items
                .extend(page.into_iter().filter(|p| {
                    p["category"]["provider"].as_str() == Some(self.provider.as_str())
                }));
            match cursor {
                Some(c) if Some(&c) != next.as_ref() => next = Some(c),
                _ => return Ok(items),
            }
        }
        Err(format!(
            "UCloud's product browse went on for more than {MAX_PAGES} pages"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucloud_wire::products::Kind;

    fn table(frequency: &str, free: bool, price: i64) -> Table {
        let mut t = Table::default();
        t.add(
            Kind::Compute,
            &json!({
                "categories": [{"name": "cpu",
                    "accountingUnit": {"name": "Core", "namePlural": "Core",
                                       "floatingPoint": false, "displayFrequencySuffix": true},
                    "accountingFrequency": frequency, "freeToUse": free}],
                "products": [{"id": "cpu-small", "category": "cpu", "cpu": 1,
                              "memoryInGigs": 1, "gpu": 0, "price": price}]
            }),
        )
        .unwrap();
        t
    }

    /// What UCloud's browse shows for what it was sent: Go drops `omitempty` zeros
    /// and adds its own fields.
    fn as_ucloud_shows(items: &[Value]) -> Vec<Value> {
        items
            .iter()
            .map(|i| {
                let mut v = i.clone();
                if v["category"]["freeToUse"] == false {
                    v["category"].as_object_mut().unwrap().remove("freeToUse");
                }
                if v["gpu"] == 0 {
                    v.as_object_mut().unwrap().remove("gpu");
                }
                v["balance"] = json!(0);
                v["usage"] = Value::Null;
                v["fraction"] = json!({"numerator": 1, "denominator": 1});
                v
            })
            .collect()
    }

    #[test]
    fn a_new_table_is_sent_and_the_same_table_twice_is_not() {
        let t = table("PERIODIC_MINUTE", false, 1);
        let Plan::Send(items) = plan(&t, "hpc", &Record::new(), &[]).unwrap() else {
            panic!("nothing to send for an empty catalogue")
        };
        assert_eq!(items[0]["category"]["provider"], "hpc");
        let held = as_ucloud_shows(&items);
        assert_eq!(
            plan(&t, "hpc", &Record::new(), &held).unwrap(),
            Plan::Nothing
        );
        // A new price is a change UCloud takes: sent.
        let dearer = table("PERIODIC_MINUTE", false, 2);
        assert!(matches!(
            plan(&dearer, "hpc", &Record::new(), &held).unwrap(),
            Plan::Send(_)
        ));
    }

    #[test]
    fn a_change_of_terms_is_refused_before_anything_is_sent() {
        let t = table("PERIODIC_MINUTE", false, 1);
        let record: Record = [("cpu".to_string(), t.categories[0].terms.clone())].into();
        let held = as_ucloud_shows(&t.to_product_v2("hpc"));
        for (frequency, free, want) in [
            (
                "PERIODIC_HOUR",
                false,
                "accountingFrequency PERIODIC_MINUTE -> PERIODIC_HOUR",
            ),
            ("PERIODIC_MINUTE", true, "freeToUse false -> true"),
        ] {
            let changed = table(frequency, free, 1);
            // Against the record alone (UCloud's memory already shows the new terms)...
            let why = plan(
                &changed,
                "hpc",
                &record,
                &as_ucloud_shows(&changed.to_product_v2("hpc")),
            )
            .unwrap_err();
            assert!(
                why.contains(want) && why.contains("registered before"),
                "{why}"
            );
            // ...and against UCloud's catalogue alone (the record was lost).
            let why = plan(&changed, "hpc", &Record::new(), &held).unwrap_err();
            assert!(
                why.contains(want) && why.contains("UCloud has it so"),
                "{why}"
            );
            assert!(why.contains("new category name"), "{why}");
        }
        let mut unit = t.clone();
        unit.categories[0].terms.unit["name"] = json!("GPU");
        let why = plan(&unit, "hpc", &record, &held).unwrap_err();
        assert!(why.contains("accountingUnit"), "{why}");
    }

    #[test]
    fn records_and_pages_are_read_strictly() {
        let dir = std::env::temp_dir().join(format!("sender-products-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(RECORD);
        assert!(read_record(&path).unwrap().is_empty(), "no record yet");
        let t = table("PERIODIC_MINUTE", false, 1);
        let record: Record = [("cpu".to_string(), t.categories[0].terms.clone())].into();
        std::fs::write(&path, record_json(&record).to_string()).unwrap();
        assert_eq!(read_record(&path).unwrap(), record);
        for bad in ["", "[]", "{\"categories\":{\"cpu\":{}}}"] {
            std::fs::write(&path, bad).unwrap();
            assert!(read_record(&path)
                .unwrap_err()
                .contains("not the sender's record"));
        }
        std::fs::remove_dir_all(dir).unwrap();

        assert_eq!(
            browse_path("hpc", Some("hpc@cpu@a b&c")),
            "/api/products/v2/browse?filterProvider=hpc&itemsPerPage=250&next=hpc%40cpu%40a%20b%26c"
        );
        assert!(parse_page(b"{\"items\":[],\"next\":null}")
            .unwrap()
            .1
            .is_none());
        assert!(parse_page(b"{\"next\":\"x\"}").is_err());
        assert!(parse_page(b"<html>").is_err());
    }
}
