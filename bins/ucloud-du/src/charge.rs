//! From a drive's measured bytes to the total UCloud is told, in the unit and by
//! the frequency of the drive's storage category (the site's product table).
//!
//! UCloud counts a category charged `ONCE` by capacity: the usage of a scope is
//! what the drive holds now (core2/pkg/accounting `IsCapacityBased`), so every
//! run reports the current size. A `PERIODIC_*` category is counted by time: its
//! usage only grows, by the size held during each period (GB-hours for
//! `PERIODIC_HOUR`), so the drive's running total is kept in its state file and
//! grows by the size measured now times the whole periods since the last run.
//! Either way the report is an absolute total (`isDeltaCharge: false`) for the
//! drive's scope, so a repeated run or a re-sent report never charges twice.
//!
//! Sizes are cut to whole units, as UCloud's own module does (`sizeInGb :=
//! size / 1000000000`, provider-integration/im2/pkg/integrations/k8s/filesystem/
//! monitoring.go).

use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes in one accounting unit, by the unit's name; None for a unit that is not
/// an amount of storage.
pub fn unit_bytes(name: &str) -> Option<u64> {
    Some(match name {
        "B" | "Byte" | "Bytes" | "byte" | "bytes" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "PiB" => 1 << 50,
        _ => return None,
    })
}

/// Seconds in one period of a time-counted frequency; None for `ONCE`.
pub fn period_seconds(frequency: &str) -> Option<u64> {
    match frequency {
        "PERIODIC_MINUTE" => Some(60),
        "PERIODIC_HOUR" => Some(3600),
        "PERIODIC_DAY" => Some(86400),
        _ => None,
    }
}

/// How a category counts: bytes per unit and, when counted by time, the period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub unit: u64,
    pub period_ms: Option<u64>,
}

impl Rule {
    /// The rule of a storage category's terms, or why it cannot be counted.
    pub fn of(terms: &ucloud_wire::products::Terms) -> Result<Rule, String> {
        let name = terms.unit["name"].as_str().unwrap_or("");
        if terms.unit["floatingPoint"] == true {
            return Err(format!(
                "its accounting unit {name:?} is floating point; storage is counted in whole units"
            ));
        }
        let unit = unit_bytes(name).ok_or_else(|| {
            format!("its accounting unit {name:?} is not a size (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        })?;
        Ok(Rule {
            unit,
            period_ms: period_seconds(&terms.frequency).map(|s| s * 1000),
        })
    }
}

/// What is remembered of a drive between runs (`<state>/<drive id>.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// The bytes last charged for (a truncated walk never charges for less).
    pub bytes: u64,
    /// A time-counted category: the running total, and the time it counts up to.
    pub total: u64,
    pub until_ms: u64,
}

impl State {
    pub fn path(dir: &Path, drive: &str) -> PathBuf {
        dir.join(format!("{drive}.json"))
    }

    /// The drive's state; a missing file is a drive never measured. A file that
    /// cannot be read is an error: starting over would charge a periodic total
    /// from zero again.
    pub fn load(dir: &Path, drive: &str) -> Result<State, String> {
        let path = State::path(dir, drive);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            format!(
                "{} is not JSON; move it away to start the drive over",
                path.display()
            )
        })?;
        let n = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("{}: {k} must be a whole number", path.display()))
        };
        Ok(State {
            bytes: n("bytes")?,
            total: n("total")?,
            until_ms: n("untilMs")?,
        })
    }

    /// Through a temporary file, fsync and rename: a crash leaves the old or the new.
    pub fn save(&self, dir: &Path, drive: &str) -> Result<(), String> {
        let path = State::path(dir, drive);
        let tmp = dir.join(format!(".{drive}.{}.tmp", std::process::id()));
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut f = File::create(&tmp).map_err(fail)?;
        f.write_all(
            json!({"bytes": self.bytes, "total": self.total, "untilMs": self.until_ms})
                .to_string()
                .as_bytes(),
        )
        .map_err(fail)?;
        f.sync_all().map_err(fail)?;
        fs::rename(&tmp, &path).map_err(fail)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
    }
}

/// The total to report for a drive measured at `now_ms` holding `bytes` (a lower
/// bound when `truncated`), and the state to keep.
pub fn charge(rule: Rule, old: &State, bytes: u64, truncated: bool, now_ms: u64) -> (u64, State) {
    // A walk cut short knows only that the drive holds at least what it saw:
    // never less than what was charged before (a limit is no way to pay less).
    let bytes = if truncated {
        bytes.max(old.bytes)
    } else {
        bytes
    };
    let units = bytes / rule.unit;
    match rule.period_ms {
        None => (
            units,
            State {
                bytes,
                total: units,
                until_ms: now_ms,
            },
        ),
        Some(period) => {
            if old.until_ms == 0 || old.until_ms > now_ms {
                // The first look (or a clock that went back): the clock starts now.
                let until_ms = if old.until_ms == 0 {
                    now_ms
                } else {
                    old.until_ms
                };
                return (
                    old.total,
                    State {
                        bytes,
                        total: old.total,
                        until_ms,
                    },
                );
            }
            let periods = (now_ms - old.until_ms) / period;
            let total = old.total.saturating_add(units.saturating_mul(periods));
            let until_ms = old.until_ms + periods * period;
            (
                total,
                State {
                    bytes,
                    total,
                    until_ms,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;
    const ONCE: Rule = Rule {
        unit: GB,
        period_ms: None,
    };
    const HOURLY: Rule = Rule {
        unit: GB,
        period_ms: Some(3_600_000),
    };

    #[test]
    fn capacity_is_the_size_now_in_whole_units() {
        let (total, state) = charge(ONCE, &State::default(), 2 * GB + GB / 2, false, 1000);
        assert_eq!(total, 2);
        // The same files again: the same total.
        assert_eq!(charge(ONCE, &state, 2 * GB + GB / 2, false, 9000).0, 2);
        // Files deleted: less.
        assert_eq!(charge(ONCE, &state, GB, false, 9000).0, 1);
        // A truncated walk that saw less charges what was charged before.
        assert_eq!(charge(ONCE, &state, GB, true, 9000).0, 2);
        // One that saw more charges more.
        assert_eq!(charge(ONCE, &state, 5 * GB, true, 9000).0, 5);
    }

    #[test]
    fn periodic_totals_grow_by_whole_periods_and_repeat_runs_add_nothing() {
        let t0 = 1_700_000_000_000;
        let (total, s) = charge(HOURLY, &State::default(), 3 * GB, false, t0);
        assert_eq!((total, s.until_ms), (0, t0));
        // Half an hour later: no whole period yet.
        let (total, s2) = charge(HOURLY, &s, 3 * GB, false, t0 + 1_800_000);
        assert_eq!((total, s2.until_ms), (0, t0));
        // Two and a half hours: two periods of 3 GB, the half kept for later.
        let (total, s3) = charge(HOURLY, &s2, 3 * GB, false, t0 + 9_000_000);
        assert_eq!((total, s3.until_ms), (6, t0 + 7_200_000));
        // Run again at once: the same total.
        assert_eq!(charge(HOURLY, &s3, 3 * GB, false, t0 + 9_000_001).0, 6);
        // A clock that went back charges nothing and keeps the total.
        assert_eq!(charge(HOURLY, &s3, 3 * GB, false, t0).0, 6);
    }

    #[test]
    fn only_sizes_are_units_and_state_survives_a_round_trip() {
        assert_eq!(unit_bytes("GB"), Some(GB));
        assert_eq!(unit_bytes("GiB"), Some(1 << 30));
        assert_eq!(unit_bytes("Core"), None);
        let terms = |name: &str, fp: bool, freq: &str| ucloud_wire::products::Terms {
            unit: json!({"name": name, "namePlural": name, "floatingPoint": fp, "displayFrequencySuffix": false}),
            frequency: freq.into(),
            free_to_use: false,
        };
        assert_eq!(Rule::of(&terms("GB", false, "ONCE")), Ok(ONCE));
        assert_eq!(Rule::of(&terms("GB", false, "PERIODIC_HOUR")), Ok(HOURLY));
        assert!(Rule::of(&terms("GB", true, "ONCE"))
            .unwrap_err()
            .contains("floating"));
        assert!(Rule::of(&terms("Core", false, "ONCE"))
            .unwrap_err()
            .contains("not a size"));

        let dir = std::env::temp_dir().join(format!("ucloud-du-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(State::load(&dir, "7").unwrap(), State::default());
        let s = State {
            bytes: 5,
            total: 6,
            until_ms: 7,
        };
        s.save(&dir, "7").unwrap();
        assert_eq!(State::load(&dir, "7").unwrap(), s);
        fs::write(State::path(&dir, "7"), "garbage").unwrap();
        assert!(State::load(&dir, "7").unwrap_err().contains("not JSON"));
        fs::remove_dir_all(dir).unwrap();
    }
}
