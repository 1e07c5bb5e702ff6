//! The monitor's core: what Slurm says about a job, the job's record, and its
//! owner decide which updates UCloud gets. Polls and events feed the same
//! [`Monitor::observe`], so both paths send the same history.
//!
//! Every job's history at UCloud is `IN_QUEUE` (with `outputFolder`), then
//! `RUNNING` if it ever got a node (even when no look saw it running), then one
//! final state; `SUSPENDED` and `newTimeAllocation` updates come in between.

use crate::error::Error;
use crate::events::{Event, Kind};
use crate::jobstate::{self, UState};
use crate::owner::{Lookup, Owners};
use crate::slurm::{self, Observation};
use crate::store::{Record, Standing, Store};
use crate::usage::Rates;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ucloud_wire::outbox::{self, Message, Method};
use ucloud_wire::usage::{self, Report, WalletOwner};

/// After an end event slurmctld shows the job COMPLETING until its epilog is done:
/// look again this often, this many times, then leave it to the poll.
const RECHECK_EVERY: Duration = Duration::from_millis(100);
const RECHECKS: u32 = 50;
/// How far back the accounting sweep looks before its last run.
const SWEEP_OVERLAP_MS: u64 = 10 * 60 * 1000;
/// The first sweep ever looks back this far.
const FIRST_SWEEP_MS: u64 = 3600 * 1000;
const SWEEP_MARK: &str = "sweep";
/// A tagged Slurm job first seen without a binding is looked for again on every
/// tick for this long: the gateway writes the binding right after sbatch returns,
/// and a Slurm hook may be quicker. After that, only each poll looks again.
const BIND_GRACE: Duration = Duration::from_secs(3);
/// At most this many lines a minute about Slurm jobs without a binding.
const UNBOUND_LINES: u32 = 10;
const UNBOUND_WINDOW: Duration = Duration::from_secs(60);
/// The most unbound Slurm jobs remembered as already logged.
const UNBOUND_REMEMBERED: usize = 100_000;

pub struct Monitor {
    store: Store,
    outbox: PathBuf,
    owners: Owners,
    records: HashMap<u64, Record>,
    /// Jobs with committed updates not yet queued.
    dirty: HashSet<u64>,
    /// Tagged jobs seen without a binding within [`BIND_GRACE`], looked at again
    /// on every tick until it passes.
    fresh: HashMap<u64, (Instant, Observation, Option<Kind>)>,
    /// Tagged jobs without a binding that were logged.
    unbound: HashSet<u64>,
    /// The log budget for those: the window's start, lines used, lines held back.
    unbound_log: (Instant, u32, u64),
    /// End events whose job slurmctld still shows COMPLETING.
    rechecks: HashMap<u64, (Instant, u32)>,
    /// Jobs whose refusal was logged (logged once per run).
    told: HashSet<u64>,
    /// What each product category costs.
    rates: Rates,
    /// The last look at every tracked job that has not ended: what the next usage
    /// report charges.
    running: HashMap<u64, Observation>,
}

impl Monitor {
    pub fn new(
        store: Store,
        outbox: PathBuf,
        bindings: PathBuf,
        drives: PathBuf,
        rates: Rates,
    ) -> Result<Monitor, Error> {
        let records = store.load()?;
        let owners = Owners::new(bindings, drives, store.owners_dir());
        // Committed but not queued when the last run stopped: queued now, unchanged.
        let dirty = records
            .values()
            .filter(|r| r.queued < r.updates.len())
            .map(|r| r.slurm_id)
            .collect();
        Ok(Monitor {
            store,
            outbox,
            owners,
            records,
            dirty,
            fresh: HashMap::new(),
            unbound: HashSet::new(),
            unbound_log: (Instant::now(), 0, 0),
            rechecks: HashMap::new(),
            told: HashSet::new(),
            rates,
            running: HashMap::new(),
        })
    }

    /// One poll: one squeue for all jobs; sacct only for tracked jobs slurmctld
    /// has forgotten (the monitor was away longer than MinJobAge).
    pub fn poll(&mut self) -> Result<(), Error> {
        let looks = match slurm::squeue_all() {
            Ok(l) => l,
            Err(why) => {
                ucloud_wire::log_warn!("ucloud-monitor: poll skipped: {why}");
                return Ok(());
            }
        };
        let seen: HashSet<u64> = looks.iter().map(|o| o.slurm_id).collect();
        for look in looks {
            self.observe(look, None)?;
        }
        // Jobs whose final state or final usage is still to be told.
        let missing: HashMap<u64, String> = self
            .records
            .values()
            .filter(|r| r.standing == Standing::Reported && (!r.is_final() || !r.usage_done))
            .filter(|r| !seen.contains(&r.slurm_id))
            .map(|r| (r.slurm_id, r.ucloud_id.clone()))
            .collect();
        if !missing.is_empty() {
            match slurm::sacct(&missing, "") {
                Ok(looks) => {
                    for look in looks {
                        self.observe(look, None)?;
                    }
                }
                Err(why) => {
                    ucloud_wire::log_warn!("ucloud-monitor: sacct for forgotten jobs: {why}")
                }
            }
        }
        self.flush()
    }

    /// Every tagged job the accounting database saw since the last sweep: jobs that
    /// came and went while the monitor was stopped.
    pub fn sweep(&mut self) -> Result<(), Error> {
        let now = ucloud_wire::now_ms();
        let since_ms = match self.store.read_mark(SWEEP_MARK) {
            Some(last) => last.saturating_sub(SWEEP_OVERLAP_MS),
            None => now.saturating_sub(FIRST_SWEEP_MS),
        };
        let since = format!("{}", since_ms / 1000);
        // sacct takes local times; an epoch value is not accepted, so format one.
        let since = slurm_time(&since);
        match slurm::sacct(&HashMap::new(), &since) {
            Ok(looks) => {
                for look in looks {
                    if !self
                        .records
                        .get(&look.slurm_id)
                        .is_some_and(Record::is_done)
                    {
                        self.observe(look, None)?;
                    }
                }
                self.store.write_mark(SWEEP_MARK, now)?;
            }
            Err(why) => ucloud_wire::log_warn!("ucloud-monitor: accounting sweep skipped: {why}"),
        }
        self.flush()
    }

    /// An event from Slurm's hooks: look at that one job now.
    pub fn event(&mut self, event: Event) -> Result<(), Error> {
        match slurm::squeue_one(event.slurm_id) {
            Ok(Some(look)) => self.observe(look, Some(event.kind))?,
            Ok(None) => {}
            Err(why) => ucloud_wire::log_err!("ucloud-monitor: job {}: {why}", event.slurm_id),
        }
        Ok(())
    }

    /// Looks again at jobs whose end event came while slurmctld still showed them
    /// COMPLETING.
    pub fn recheck(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        let due: Vec<u64> = self
            .rechecks
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.event(Event {
                slurm_id: id,
                kind: Kind::End,
            })?;
        }
        Ok(())
    }

    /// When the main loop must wake up next for rechecks or bindings to come.
    pub fn busy(&self) -> bool {
        !self.rechecks.is_empty() || !self.fresh.is_empty() || !self.dirty.is_empty()
    }

    /// Looks again at jobs seen just before the gateway bound them.
    pub fn collect_bindings(&mut self) -> Result<(), Error> {
        let ids: Vec<u64> = self.fresh.keys().copied().collect();
        for id in ids {
            let tracked = self.records.get(&id).map(|r| r.ucloud_id.clone());
            let Some((first, look, kind)) = self.fresh.remove(&id) else {
                continue;
            };
            let bound = !matches!(
                self.owners.lookup(id, &look.name, tracked.as_deref())?,
                Lookup::Unbound
            );
            if bound {
                self.observe(look, kind)?;
            } else if first.elapsed() < BIND_GRACE {
                self.fresh.insert(id, (first, look, kind));
            } else {
                self.log_unbound(&look);
            }
        }
        Ok(())
    }

    /// A tagged Slurm job the module did not submit: ignored, told once per job,
    /// at most [`UNBOUND_LINES`] lines a minute, whoever submits how many.
    fn log_unbound(&mut self, look: &Observation) {
        if self.unbound.len() >= UNBOUND_REMEMBERED {
            self.unbound.clear();
        }
        if !self.unbound.insert(look.slurm_id) {
            return;
        }
        let (start, used, held) = &mut self.unbound_log;
        if start.elapsed() >= UNBOUND_WINDOW {
            if *held > 0 {
                ucloud_wire::log_warn!(
                    "ucloud-monitor: {held} more Slurm jobs tagged like UCloud's but not submitted by ucloud-im were ignored"
                );
            }
            (*start, *used, *held) = (Instant::now(), 0, 0);
        }
        if *used < UNBOUND_LINES {
            *used += 1;
            ucloud_wire::log_warn!(
                "ucloud-monitor: Slurm job {} ({}, named {:?}) is ignored: tagged like UCloud's, but ucloud-im did not submit it (no binding)",
                look.slurm_id,
                look.user,
                look.name
            );
        } else {
            *held += 1;
        }
    }

    pub fn observe(&mut self, look: Observation, kind: Option<Kind>) -> Result<(), Error> {
        let id = look.slurm_id;
        let tracked = match self.records.get(&id) {
            Some(r) if r.standing != Standing::Reported => {
                self.rechecks.remove(&id);
                return Ok(());
            }
            Some(r) if r.is_final() => {
                self.rechecks.remove(&id);
                return self.account(&look);
            }
            Some(r) => Some(r.ucloud_id.clone()),
            None => None,
        };
        let owner = match self.owners.lookup(id, &look.name, tracked.as_deref())? {
            Lookup::Known(owner) => owner,
            Lookup::Unbound => {
                if !self.unbound.contains(&id) {
                    self.fresh
                        .entry(id)
                        .or_insert_with(|| (Instant::now(), look, kind));
                }
                return Ok(());
            }
            Lookup::Unknown(why) => {
                if self.told.insert(id) {
                    ucloud_wire::log_warn!(
                        "ucloud-monitor: Slurm job {id} ({}) is not reported: {why}",
                        look.user,
                    );
                }
                return Ok(());
            }
        };
        // The binding names the UCloud job. The job must still carry that name, so a
        // binding left from before Slurm's job ids started again binds nothing new.
        let job = owner.job.clone();
        if job != look.name {
            if self.told.insert(id) {
                ucloud_wire::log_warn!(
                    "ucloud-monitor: Slurm job {id} ({}) is not reported: it was submitted for UCloud job {job}, but is named {:?}",
                    look.user,
                    look.name
                );
            }
            return Ok(());
        }
        let record = self
            .records
            .entry(id)
            .or_insert_with(|| Record::new(id, &job, &look.user));
        if owner.local != look.user {
            let why = format!(
                "runs as {}, but UCloud job {job} belongs to {} ({})",
                look.user, owner.ucloud, owner.local
            );
            ucloud_wire::log_warn!("ucloud-monitor: Slurm job {id} refused: {why}");
            record.standing = Standing::Refused(why);
            record.touched_ms = ucloud_wire::now_ms();
            self.store.save(record)?;
            return Ok(());
        }
        let Some(mut verdict) = jobstate::verdict(&look.state, id, look.exit) else {
            if self.told.insert(id) {
                ucloud_wire::log_warn!(
                    "ucloud-monitor: Slurm job {id}: state {:?} is not in the table; left as it was",
                    look.state
                );
            }
            return Ok(());
        };
        // slurmctld runs the prolog before it shows the job RUNNING.
        if kind == Some(Kind::Start) && verdict.state == UState::InQueue {
            verdict = jobstate::verdict("RUNNING", id, look.exit).expect("in the table");
        }
        if kind == Some(Kind::End) && !verdict.state.is_final() {
            let tries = self.rechecks.get(&id).map_or(0, |(_, n)| *n);
            if tries < RECHECKS {
                self.rechecks
                    .insert(id, (Instant::now() + RECHECK_EVERY, tries + 1));
            } else {
                self.rechecks.remove(&id);
            }
        } else if verdict.state.is_final() {
            self.rechecks.remove(&id);
        }
        let now = ucloud_wire::now_ms();
        let mut new: Vec<Value> = Vec::new();
        let mut push = |mut update: Value| {
            update["timestamp"] = json!(now);
            new.push(update);
        };
        let mut limit = record.limit;
        if record.updates.is_empty() {
            let queue_text = if verdict.state == UState::InQueue {
                verdict.status.clone()
            } else {
                format!("Your job was submitted to Slurm (Slurm ID {id})")
            };
            push(json!({
                "state": "IN_QUEUE",
                "status": queue_text,
                "outputFolder": format!("/{}/ucloud-jobs/{job}", owner.drive),
            }));
            limit = look.time_limit;
        }
        // The IN_QUEUE just pushed counts as the last state.
        let last = if record.updates.is_empty() {
            Some(UState::InQueue)
        } else {
            record.last_state()
        };
        let ran = record.ever(UState::Running);
        if verdict.state.is_final() {
            if look.started && !ran {
                push(
                    json!({"state": "RUNNING", "status": format!("Your job is running (Slurm ID {id})")}),
                );
            }
            push(json!({"state": verdict.state.as_str(), "status": verdict.status}));
        } else {
            // Once it ran, a look that says "queued" is a prolog not yet through (or
            // a requeue): UCloud keeps RUNNING until the job ends.
            let backwards = verdict.state == UState::InQueue && ran;
            if Some(verdict.state) != last && !backwards {
                push(json!({"state": verdict.state.as_str(), "status": verdict.status}));
            }
            if let (Some(now_limit), Some(old)) = (look.time_limit, limit) {
                if now_limit > old {
                    push(json!({
                        "newTimeAllocation": now_limit * 60_000,
                        "status": format!("Your job's time limit is now {}", minutes_text(now_limit)),
                    }));
                    limit = Some(now_limit);
                }
            }
        }
        if !new.is_empty() {
            record.updates.extend(new);
            record.limit = limit;
            record.touched_ms = now;
            self.store.save(record)?;
            self.dirty.insert(id);
        }
        self.account(&look)
    }

    /// Usage of a tracked job: a job that has not ended waits for the next report
    /// ([`Monitor::report_usage`]); one that ended is charged its final total now.
    fn account(&mut self, look: &Observation) -> Result<(), Error> {
        let id = look.slurm_id;
        let Some(record) = self.records.get(&id) else {
            return Ok(());
        };
        if record.usage_done {
            self.running.remove(&id);
            self.owners.forget(id);
            return Ok(());
        }
        if record.is_final() {
            self.running.remove(&id);
            self.charge(look, true)
        } else {
            self.running.insert(id, look.clone());
            Ok(())
        }
    }

    /// Every job that runs, charged its total so far where it changed: the
    /// report every `--usage-interval`.
    pub fn report_usage(&mut self) -> Result<(), Error> {
        let looks: Vec<Observation> = self.running.values().cloned().collect();
        for look in looks {
            self.charge(&look, false)?;
        }
        Ok(())
    }

    /// Puts the job's total into the outbox (`usage/`, replacing its older total
    /// there), then records it; the final total marks the job's usage done. A
    /// crash in between puts the same total again: a total, never a delta, so
    /// nothing is charged twice.
    fn charge(&mut self, look: &Observation, last: bool) -> Result<(), Error> {
        let id = look.slurm_id;
        let Some(record) = self.records.get(&id) else {
            return Ok(());
        };
        let owner = match self
            .owners
            .lookup(id, &record.ucloud_id, Some(&record.ucloud_id))?
        {
            Lookup::Known(owner) => owner,
            _ => return Ok(()),
        };
        let rate = owner
            .category
            .as_ref()
            .ok_or("UCloud's job names no product category".to_string())
            .and_then(|(c, _)| {
                self.rates
                    .get(c)
                    .ok_or(format!("category {c} is not in the site's product table"))
            });
        let record = self.records.get_mut(&id).expect("looked up above");
        let rate = match rate {
            Ok(rate) => rate,
            Err(why) => {
                if last {
                    ucloud_wire::log_warn!(
                        "ucloud-monitor: job {} (Slurm {id}): no usage reported: {why}",
                        record.ucloud_id
                    );
                    record.usage_done = true;
                    self.store.save(record)?;
                }
                return Ok(());
            }
        };
        let total = rate.units(look);
        let changed = record.usage != Some(total) && (total > 0 || record.usage.is_some());
        if changed {
            let (category, provider) = owner.category.clone().expect("rate found");
            let report = Report {
                owner: WalletOwner::of(&owner.ucloud, owner.project.as_deref()),
                category,
                provider,
                scope: format!("job-{}", record.ucloud_id),
                usage: total,
            };
            crate::store::fenced()?;
            usage::put(&self.outbox, &report).map_err(|e| {
                Error::Setup(format!(
                    "cannot put a usage report in {}: {e} (does {} exist, writable by the outbox group?)",
                    self.outbox.display(),
                    self.outbox.join(usage::USAGE).display()
                ))
            })?;
            ucloud_wire::log_info!(
                "ucloud-monitor: job {} (Slurm {id}): usage {total}{}",
                record.ucloud_id,
                if last { " (final)" } else { "" }
            );
        }
        if changed || last {
            if changed {
                record.usage = Some(total);
            }
            record.usage_done = last;
            self.store.save(record)?;
        }
        Ok(())
    }

    /// Queues every committed, unqueued update as one batch
    /// (`/api/jobs/control/update`), then records that they are queued.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<u64> = self.dirty.iter().copied().collect();
        ids.sort_unstable();
        let mut items = Vec::new();
        for id in &ids {
            let record = &self.records[id];
            for update in &record.updates[record.queued..] {
                items.push(json!({"id": record.ucloud_id, "update": update}));
            }
        }
        if !items.is_empty() {
            crate::store::fenced()?;
            outbox::enqueue(
                &self.outbox,
                &Message {
                    method: Method::Post,
                    path: "/api/jobs/control/update".into(),
                    body: json!({ "items": items }),
                    reply: None,
                },
            )
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot queue job updates in {}: {e} (is the monitor's account in the outbox group?)",
                    self.outbox.display()
                ))
            })?;
        }
        for id in ids {
            let record = self.records.get_mut(&id).expect("dirty ids have records");
            for update in &record.updates[record.queued..] {
                ucloud_wire::log_info!(
                    "ucloud-monitor: job {} (Slurm {id}): {}",
                    record.ucloud_id,
                    update["state"].as_str().unwrap_or("update")
                );
            }
            record.queued = record.updates.len();
            self.store.save(record)?;
        }
        self.dirty.clear();
        Ok(())
    }
}

/// `YYYY-MM-DDTHH:MM:SS` in local time for sacct, from epoch seconds, via date(1)'s
/// rules being unavailable here: sacct also accepts `now-<seconds>`, which is what
/// this returns, so no clock arithmetic on time zones is needed.
fn slurm_time(epoch_secs: &str) -> String {
    let then: u64 = epoch_secs.parse().unwrap_or(0);
    let now = ucloud_wire::now_ms() / 1000;
    format!("now-{}", now.saturating_sub(then).max(1))
}

fn minutes_text(minutes: u64) -> String {
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(state: &str, elapsed: u64) -> Observation {
        Observation {
            slurm_id: 41,
            name: "4711".into(),
            user: "alice".into(),
            state: state.into(),
            exit: crate::jobstate::Exit::default(),
            time_limit: Some(60),
            started: true,
            cpus: 8,
            gpus: 0,
            elapsed,
        }
    }

    /// Running totals at each report when they change, the final one at the end,
    /// each replacing the last in outbox/usage/; a restart changes nothing.
    #[test]
    fn usage_totals_follow_the_job() {
        let dir = std::env::temp_dir().join(format!("monitor-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "outbox/tmp",
            "outbox/queue",
            "outbox/usage",
            "drives",
            "bindings",
            "state",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(
            dir.join("drives/9"),
            r#"{"id":"9","ucloud":"Alice#1","local":"alice","base":"/home/alice","kind":"home"}"#,
        )
        .unwrap();
        let new_monitor = || {
            let store = Store::open(&dir.join("state")).unwrap();
            let _ = ucloud_wire::binding::write(
                &dir.join("bindings"),
                &ucloud_wire::binding::Binding {
                    slurm_id: 41,
                    job: "4711".into(),
                    created_by: "Alice#1".into(),
                    project: Some("P1".into()),
                    category: Some(("cpu".into(), "hpc".into())),
                    at_ms: 1,
                },
            );
            let rates = Rates::parse(br#"{"products":[{"id":"a","category":"cpu"}]}"#).unwrap();
            Monitor::new(
                store,
                dir.join("outbox"),
                dir.join("bindings"),
                dir.join("drives"),
                rates,
            )
            .unwrap()
        };
        let totals = || -> Vec<u64> {
            std::fs::read_dir(dir.join("outbox/usage"))
                .unwrap()
                .map(|e| {
                    let r = usage::Report::from_json(&std::fs::read(e.unwrap().path()).unwrap())
                        .unwrap();
                    assert_eq!(r.owner, WalletOwner::Project("P1".into()));
                    assert_eq!((r.category.as_str(), r.scope.as_str()), ("cpu", "job-4711"));
                    r.usage
                })
                .collect()
        };
        let mut m = new_monitor();
        // Alice's own sbatch, named like her UCloud job: no binding, so no record,
        // no update, no usage, and nothing in the outbox, however often it is seen.
        for _ in 0..3 {
            let mut forged = look("COMPLETED", 600);
            forged.slurm_id = 42;
            m.observe(forged, None).unwrap();
            m.collect_bindings().unwrap();
        }
        m.flush().unwrap();
        assert!(!m.records.contains_key(&42));
        assert_eq!(
            std::fs::read_dir(dir.join("outbox/queue")).unwrap().count(),
            0
        );
        m.observe(look("RUNNING", 5), None).unwrap();
        m.report_usage().unwrap();
        assert!(totals().is_empty(), "nothing to charge yet");
        m.observe(look("RUNNING", 30), None).unwrap();
        m.report_usage().unwrap();
        assert_eq!(totals(), [4]);
        m.observe(look("RUNNING", 40), None).unwrap();
        m.report_usage().unwrap();
        assert_eq!(totals(), [5], "one file per key, the latest total");
        m.observe(look("COMPLETED", 61), None).unwrap();
        assert_eq!(totals(), [8], "the final total at once");
        let record = &m.records[&41];
        assert!(record.usage_done && record.is_final());
        // A restart and another look at the ended job put nothing new.
        std::fs::remove_file(
            std::fs::read_dir(dir.join("outbox/usage"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap();
        let mut again = new_monitor();
        again.observe(look("COMPLETED", 61), None).unwrap();
        again.report_usage().unwrap();
        assert!(totals().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn texts_for_limits_and_times() {
        assert_eq!(minutes_text(90), "1 h 30 min");
        assert_eq!(minutes_text(120), "2 h");
        assert_eq!(minutes_text(5), "5 min");
        let t = slurm_time(&((ucloud_wire::now_ms() / 1000) - 600).to_string());
        assert!(t == "now-600" || t == "now-601", "{t}");
    }
}
