//! Jobs as UCloud creates them and charges for them.

use crate::stack::checked;
use crate::Stack;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A new UCloud job id, as UCloud's core makes them: a positive decimal number
/// that fits an int64 (the core reads ids with `strconv.ParseInt`). Microseconds
/// since the epoch, bumped past the last one handed out, so that no two calls (from
/// any thread) get the same id and a later run starts above an earlier one. The id
/// also names the job's folder and its Slurm job.
pub fn job_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .expect("the closure always gives a value");
    now.max(previous + 1).to_string()
}

impl Stack {
    /// The stack's compute product (`UCLOUD_IM_JOB_PRODUCT`) as UCloud names it in
    /// a job's specification: id, its category in the installed catalogue (the one
    /// the module registered with UCloud), and the provider.
    pub fn job_product(&self) -> serde_json::Value {
        let id = self.get("UCLOUD_IM_JOB_PRODUCT");
        let path = self.prefix().join("etc/ucloud-im/products/jobs.json");
        let table: serde_json::Value = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_else(|| panic!("{} is missing or not JSON", path.display()));
        let category = table["products"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == id.as_str())
            .map(|p| p["category"].clone())
            .unwrap_or_else(|| panic!("{} has no product {id}", path.display()));
        serde_json::json!({"id": id, "category": category, "provider": self.get("UCLOUD_IM_PROVIDER")})
    }

    /// Makes job `id` one UCloud created, owned by `owner` (in `project`, if any),
    /// for the stack's product (`POST /sim/jobs`), as it is before UCloud ever sends
    /// the job to the provider: only then does UCloud take updates for it.
    pub fn ucloud_knows(&self, id: &str, owner: &str, project: Option<&str>) {
        let job = serde_json::json!({
            "id": id,
            "owner": {"createdBy": owner, "project": project},
            "specification": {"name": "test", "product": self.job_product()},
            "status": {"state": "IN_QUEUE"},
            "updates": []
        });
        let output = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                &self.get("UCLOUD_IM_CA"),
            ])
            .args([
                "-X",
                "POST",
                "-w",
                "\n%{http_code}",
                "--data",
                &job.to_string(),
            ])
            .arg(format!("{}/sim/jobs", self.get("UCLOUD_SIM_URL")))
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        assert_eq!(
            status.trim(),
            "200",
            "POST /sim/jobs for job {id}: {body}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A Job as UCloud's core sends it to `jobs.create`: `owner`'s job `id` running
    /// `sh -c SCRIPT` with the stack's application and product, for `minutes`.
    pub fn shell_job(
        &self,
        owner: &str,
        id: &str,
        script: &str,
        minutes: u64,
    ) -> serde_json::Value {
        let app = self.get("UCLOUD_IM_JOB_APP");
        let (name, version) = app
            .rsplit_once(':')
            .expect("UCLOUD_IM_JOB_APP is name:version");
        let product = self.job_product();
        let words: Vec<serde_json::Value> = ["sh", "-c", script]
            .iter()
            .map(|w| serde_json::json!({"type": "word", "word": w}))
            .collect();
        serde_json::json!({
            "id": id,
            "createdAt": 1_764_000_000_000u64,
            "owner": {"createdBy": owner, "project": null},
            "specification": {
                "product": product,
                "application": {"name": name, "version": version},
                "replicas": 1,
                "parameters": {},
                "resources": [],
                "timeAllocation": {"hours": 0, "minutes": minutes, "seconds": 0}
            },
            "status": {
                "state": "IN_QUEUE",
                "resolvedApplication": {
                    "metadata": {"name": name, "version": version},
                    "invocation": {"invocation": words, "parameters": []}
                },
                "resolvedProduct": {"name": product["id"], "category": product["category"], "cpu": 1, "memoryInGigs": 1, "gpu": 0}
            }
        })
    }

    /// Job `id` of `owner` (in `project`, if any) running `sh -c SCRIPT` on `cpus`
    /// CPUs for at most `minutes`, created as UCloud creates it: the simulator
    /// remembers it and sends it to `jobs.create` through the gateway, which submits
    /// it to Slurm as the owner's account and binds the Slurm job to it (only bound
    /// jobs are reported, ucloud-monitor(8)). Returns the Slurm job id.
    pub fn create_job(
        &self,
        owner: &str,
        id: &str,
        script: &str,
        minutes: u64,
        cpus: u64,
        project: Option<&str>,
    ) -> u64 {
        let mut job = self.shell_job(owner, id, script, minutes);
        job["status"]["resolvedProduct"]["cpu"] = cpus.into();
        job["owner"]["project"] = project.into();
        let body = serde_json::json!({ "items": [job] }).to_string();
        let path = format!("/ucloud/{}/jobs", self.get("UCLOUD_IM_PROVIDER"));
        let (status, answer) = self.call(Some(owner), "POST", &path, Some(&body));
        assert_eq!(status, 200, "jobs.create for job {id}: {answer}");
        answer["responses"][0]["id"]
            .as_str()
            .and_then(|s| s.rsplit('/').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("jobs.create for job {id} named no Slurm job: {answer}"))
    }

    /// A new UCloud project of `members` (UCloud name, role: PI, ADMIN or USER) with
    /// `quota` of the stack's compute category here, as the core has it; returns its
    /// id once ucloud-project has given it a Slurm account with every mapped member
    /// (`table.json`).
    pub fn project_with(&self, members: &[(&str, &str)], quota: u64) -> String {
        let members: Vec<serde_json::Value> = members
            .iter()
            .map(|(u, r)| serde_json::json!({"username": u, "role": r}))
            .collect();
        let (status, created) = self.sim_api(
            "POST",
            "/sim/projects",
            Some(serde_json::json!({"title": "a test project", "members": members})),
            30,
        );
        assert_eq!(status, 200, "POST /sim/projects: {created}");
        let id = created["id"].as_str().expect("a project id").to_string();
        let category = self.job_product()["category"].clone();
        let (status, answer) = self.sim_api(
            "POST",
            "/sim/allocations",
            Some(
                serde_json::json!({"owner": {"type": "project", "projectId": id},
                "category": {"name": category, "provider": self.get("UCLOUD_IM_PROVIDER")},
                "quota": quota}),
            ),
            30,
        );
        assert_eq!(status, 200, "POST /sim/allocations: {answer}");
        let table = std::path::PathBuf::from(self.get("UCLOUD_IM_PROJECTS")).join("table.json");
        let mapped: Vec<String> = members
            .iter()
            .filter_map(|m| m["username"].as_str())
            .filter(|u| self.users().iter().any(|(name, _)| name == u))
            .map(|u| self.local_of(u))
            .collect();
        crate::wait_until("ucloud-project to make the project's account", 30, || {
            let row = std::fs::read(&table)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .map(|t| t["projects"][&id].clone())
                .unwrap_or_default();
            let has = |u: &String| {
                row["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|v| v == u))
            };
            row["accounts"][category.as_str().unwrap_or_default()].is_string()
                && mapped.iter().all(has)
        });
        id
    }

    /// What the simulator (UCloud) charged `owner` under `scope`, and in all in
    /// `category`, from its usage view (`GET /sim/usage`).
    pub fn charged(&self, owner: &str, category: &str, scope: &str) -> (Option<u64>, u64) {
        let url = format!("{}/sim/usage", self.get("UCLOUD_SIM_URL"));
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "10", "--cacert"])
            .arg(self.get("UCLOUD_IM_CA"))
            .arg(&url)
            .output()
            .unwrap();
        let view: serde_json::Value = serde_json::from_str(&checked(&format!("GET {url}"), &out))
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        let find = |list: &str, key: &str, value: &str| {
            view[list]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["owner"] == owner && e[key] == value)
                .and_then(|e| e["usage"].as_u64())
        };
        (
            find("scopes", "scope", scope),
            find("wallets", "category", category).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_plain_decimal_and_never_repeat() {
        let ids: Vec<String> = (0..1000).map(|_| job_id()).collect();
        let mut seen = std::collections::BTreeSet::new();
        for id in &ids {
            let n: i64 = id.parse().unwrap();
            assert!(n > 0 && n.to_string() == *id, "{id}");
            assert!(seen.insert(n), "{id} handed out twice");
        }
    }
}
