//! What a job costs, in the unit its product category declares: the CPUs (or
//! GPUs) Slurm allocated times the seconds it ran, counted in whole periods of the
//! category's frequency (core-minutes for `PERIODIC_MINUTE`), rounded down, as
//! UCloud's own modules count. The rates come from the site's product table
//! (`products/jobs.json`): a product's optional
//! `"usage": {"per": "cpu"|"gpu", "frequency": "PERIODIC_MINUTE"|"PERIODIC_HOUR"|"PERIODIC_DAY"}`,
//! by default per CPU and minute.

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
        let mut rates: HashMap<String, Rate> = HashMap::new();
        for p in products {
            let category = p["category"]
                .as_str()
                .ok_or_else(|| format!("product {} has no category", p["id"]))?;
            let per_gpu = match p["usage"]["per"].as_str() {
                None | Some("cpu") => false,
                Some("gpu") => true,
                Some(other) => {
                    return Err(format!(
                        "product {}: usage.per {other:?} is neither \"cpu\" nor \"gpu\"",
                        p["id"]
                    ))
                }
            };
            let period = match p["usage"]["frequency"].as_str() {
                None | Some("PERIODIC_MINUTE") => 60,
                Some("PERIODIC_HOUR") => 3600,
                Some("PERIODIC_DAY") => 86400,
                Some(other) => {
                    return Err(format!(
                        "product {}: usage.frequency {other:?} is not PERIODIC_MINUTE, PERIODIC_HOUR or PERIODIC_DAY",
                        p["id"]
                    ))
                }
            };
            let rate = Rate { per_gpu, period };
            // UCloud counts per category: every product of one must count alike.
            if let Some(old) = rates.insert(category.to_string(), rate) {
                if old != rate {
                    return Err(format!(
                        "the products of category {category} count usage differently; a category has one unit and frequency"
                    ));
                }
            }
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
                eprintln!(
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
            br#"{"products":[
                {"id":"a","category":"cpu"},
                {"id":"b","category":"cpu","usage":{"per":"cpu","frequency":"PERIODIC_MINUTE"}},
                {"id":"g","category":"gpu","usage":{"per":"gpu","frequency":"PERIODIC_HOUR"}}]}"#,
        )
        .unwrap();
        let cpu = rates.get("cpu").unwrap();
        assert_eq!(cpu.units(&look(4, 0, 90)), 6);
        assert_eq!(cpu.units(&look(1, 0, 59)), 0);
        let gpu = rates.get("gpu").unwrap();
        assert_eq!(gpu.units(&look(8, 2, 5400)), 3);
        assert!(rates.get("other").is_none());
    }

    #[test]
    fn bad_tables_are_refused() {
        for bad in [
            &br#"{"products":[{"id":"a","category":"c","usage":{"per":"ram"}}]}"#[..],
            br#"{"products":[{"id":"a","category":"c","usage":{"frequency":"ONCE"}}]}"#,
            br#"{"products":[{"id":"a","category":"c"},{"id":"b","category":"c","usage":{"per":"gpu"}}]}"#,
            br#"{"products":[{"id":"a"}]}"#,
            b"{}",
        ] {
            assert!(Rates::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
