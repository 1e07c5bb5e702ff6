//! What a job costs, in the unit its product category declares: the CPUs (or
//! GPUs) Slurm allocated times the seconds it ran, counted in whole periods of the
//! category's `accountingFrequency` (core-minutes for `PERIODIC_MINUTE`), rounded
//! down, as UCloud's own modules count. The rates come from the site's product
//! table (`products/jobs.json`, lib/wire's products table): a category whose
//! products have GPUs is counted in GPUs, any other in CPUs. A table without
//! categories (older sites) counts every category per CPU and minute.

use crate::slurm::Observation;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    per_gpu: bool,
    /// Seconds in one period of the category's frequency.
    period: u64,
}

impl Rate {
    /// The job's total so far (all of it once it ended).
    pub fn units(&self, look: &Observation) -> u64 {
        let count = if self.per_gpu { look.gpus } else { look.cpus };
        count.saturating_mul(look.elapsed) / self.period
    }
}

/// The rate of every product category the site offers.
#[derive(Debug, Default)]
pub struct Rates(HashMap<String, Rate>);

impl Rates {
    pub fn parse(bytes: &[u8]) -> Result<Rates, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let products = v["products"].as_array().ok_or("no \"products\" list")?;
        let mut periods: HashMap<&str, Option<u64>> = HashMap::new();
        for c in v["categories"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().ok_or("a category has no name")?;
            let period = match c["accountingFrequency"].as_str() {
                Some("PERIODIC_MINUTE") => Some(60),
                Some("PERIODIC_HOUR") => Some(3600),
                Some("PERIODIC_DAY") => Some(86400),
                // Charged once, not by time: nothing a job's run time decides.
                Some("ONCE") => None,
                other => return Err(format!("category {name}: accountingFrequency {other:?}")),
            };
            periods.insert(name, period);
        }
        let mut rates: HashMap<String, Rate> = HashMap::new();
        for p in products {
            let category = p["category"]
                .as_str()
                .ok_or_else(|| format!("product {} has no category", p["id"]))?;
            let period = if v["categories"].is_array() {
                match periods.get(category) {
                    Some(Some(period)) => *period,
                    Some(None) => continue,
                    None => return Err(format!("product {}: no category {category}", p["id"])),
                }
            } else {
                60
            };
            let per_gpu = p["gpu"].as_u64().unwrap_or(0) > 0;
            let rate = rates
                .entry(category.to_string())
                .or_insert(Rate { per_gpu, period });
            rate.per_gpu |= per_gpu;
        }
        Ok(Rates(rates))
    }

    /// The table at `path`; none (nothing is charged, and the log says so) when it
    /// is missing or wrong.
    pub fn load(path: &Path) -> Rates {
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| Rates::parse(&b))
        {
            Ok(rates) => rates,
            Err(why) => {
                ucloud_wire::log_err!(
                    "ucloud-monitor: no usage is reported: the product table {}: {why}",
                    path.display()
                );
                Rates::default()
            }
        }
    }

    pub fn get(&self, category: &str) -> Option<Rate> {
        self.0.get(category).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobstate::Exit;

    fn look(cpus: u64, gpus: u64, elapsed: u64) -> Observation {
        Observation {
            slurm_id: 1,
            name: "J".into(),
            user: "u".into(),
            state: "RUNNING".into(),
            exit: Exit::default(),
            time_limit: None,
            started: true,
            cpus,
            gpus,
            elapsed,
        }
    }

    #[test]
    fn units_follow_the_category() {
        let rates = Rates::parse(
            br#"{"categories":[
                {"name":"cpu","accountingFrequency":"PERIODIC_MINUTE"},
                {"name":"gpu","accountingFrequency":"PERIODIC_HOUR"},
                {"name":"setup","accountingFrequency":"ONCE"}],
               "products":[
                {"id":"a","category":"cpu","cpu":1,"gpu":0},
                {"id":"b","category":"cpu","cpu":2,"gpu":0},
                {"id":"g","category":"gpu","cpu":8,"gpu":2},
                {"id":"s","category":"setup","cpu":1,"gpu":0}]}"#,
        )
        .unwrap();
        let cpu = rates.get("cpu").unwrap();
        assert_eq!(cpu.units(&look(4, 0, 90)), 6);
        assert_eq!(cpu.units(&look(1, 0, 59)), 0);
        let gpu = rates.get("gpu").unwrap();
        assert_eq!(gpu.units(&look(8, 2, 5400)), 3);
        assert!(rates.get("setup").is_none());
        assert!(rates.get("other").is_none());
        // The older table: categories only named by products, per CPU and minute.
        let old = Rates::parse(br#"{"products":[{"id":"a","category":"cpu"}]}"#).unwrap();
        assert_eq!(old.get("cpu").unwrap().units(&look(2, 0, 120)), 4);
    }

    #[test]
    fn bad_tables_are_refused() {
        for bad in [
            &br#"{"categories":[{"name":"c","accountingFrequency":"HOURLY"}],"products":[]}"#[..],
            br#"{"categories":[{"name":"c","accountingFrequency":"PERIODIC_HOUR"}],"products":[{"id":"a","category":"d"}]}"#,
            br#"{"products":[{"id":"a"}]}"#,
            b"{}",
        ] {
            assert!(Rates::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
