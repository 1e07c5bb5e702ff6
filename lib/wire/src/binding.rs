//! Which Slurm job stands for which UCloud job. A Slurm job's name and comment are
//! free text its owner chooses, so they cannot say which UCloud job it is: any
//! local user can submit a job named and tagged like one. What ties them is the
//! binding the gateway writes when jobs.create answers: the gateway runs as the
//! module's own account, has UCloud's request (job id, owner, project, product) and
//! the plugin's answer (the Slurm job id of each job), and writes one small file
//! per Slurm job into a directory only its account may write (`bindings/`, group
//! the monitor's, `2750`). The monitor reports a Slurm job only with such a file,
//! and only when the job runs as the local account of the UCloud owner it names.
//!
//! The plugin runs as the calling user, who can therefore choose which of their
//! own Slurm jobs the answer names; that is one of their own jobs standing for the
//! UCloud job UCloud just sent them, once, which the job script they control could
//! do anyway. A file is named by the Slurm job id and the UCloud job id together
//! and never replaced. The UCloud job id comes from UCloud's request, not from the
//! plugin: a user who answers with Slurm job ids not yet given out (they are
//! sequential) binds them to their own UCloud job only, and cannot keep another
//! user's job, which later gets that id, from being bound to its own; a Slurm id
//! used again (the id space wrapped, slurmctld's state reset) binds anew.

use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The longest UCloud name, project id or product name taken into a binding.
const MAX_TEXT: usize = 256;

/// A UCloud job id as jobs.create accepts it (it becomes a Slurm job name and a
/// directory name).
pub fn is_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub slurm_id: u64,
    /// The UCloud job the Slurm job was submitted for.
    pub job: String,
    /// The UCloud user who created it (UCloud's `owner.createdBy`).
    pub created_by: String,
    /// The project that pays, if any.
    pub project: Option<String>,
    /// The product's category and provider, as UCloud sent them.
    pub category: Option<(String, String)>,
    /// When the gateway wrote it (ms since the epoch).
    pub at_ms: u64,
}

fn text(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|s| !s.is_empty() && s.len() <= MAX_TEXT)
        .map(String::from)
}

impl Binding {
    pub fn to_json(&self) -> Value {
        json!({
            "slurm": self.slurm_id,
            "job": self.job,
            "createdBy": self.created_by,
            "project": self.project,
            "category": self.category.as_ref().map(|c| &c.0),
            "provider": self.category.as_ref().map(|c| &c.1),
            "at": self.at_ms,
        })
    }

    pub fn from_json(bytes: &[u8]) -> Option<Binding> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let job = text(&v["job"]).filter(|j| is_job_id(j))?;
        Some(Binding {
            slurm_id: v["slurm"].as_u64()?,
            job,
            created_by: text(&v["createdBy"])?,
            project: text(&v["project"]),
            category: text(&v["category"]).zip(text(&v["provider"])),
            at_ms: v["at"].as_u64().unwrap_or(0),
        })
    }
}

/// The bindings of one jobs.create call: UCloud's request (`{"items":[Job,...]}`)
/// paired, item by item, with the plugin's answer
/// (`{"responses":[{"id":"USER/SLURMID"},...]}`). An answer that does not pair
/// with the request binds nothing.
pub fn from_answer(request: &Value, answer: &[u8], now_ms: u64) -> Result<Vec<Binding>, String> {
    let answer: Value =
        serde_json::from_slice(answer).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let items = request["items"]
        .as_array()
        .ok_or("the request has no \"items\"")?;
    let responses = answer["responses"]
        .as_array()
        .ok_or("the answer has no \"responses\"")?;
    if items.len() != responses.len() {
        return Err(format!(
            "{} jobs asked for, {} answered",
            items.len(),
            responses.len()
        ));
    }
    let mut out: Vec<Binding> = Vec::with_capacity(items.len());
    for (job, response) in items.iter().zip(responses) {
        let id = job["id"]
            .as_str()
            .filter(|id| is_job_id(id))
            .ok_or_else(|| format!("job id {} is not one jobs.create takes", job["id"]))?;
        let provider_id = response["id"]
            .as_str()
            .ok_or_else(|| format!("job {id}: the answer gives no id"))?;
        let slurm = provider_id.rsplit('/').next().unwrap_or("");
        let slurm_id = slurm
            .parse::<u64>()
            .ok()
            .filter(|_| slurm.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("job {id}: {provider_id:?} names no Slurm job id"))?;
        let created_by = text(&job["owner"]["createdBy"])
            .ok_or_else(|| format!("job {id}: the request names no owner"))?;
        let product = &job["specification"]["product"];
        if out.iter().any(|b| b.slurm_id == slurm_id || b.job == id) {
            return Err(format!("job {id} or Slurm job {slurm_id} comes twice"));
        }
        out.push(Binding {
            slurm_id,
            job: id.to_string(),
            created_by,
            project: text(&job["owner"]["project"]),
            category: text(&product["category"]).zip(text(&product["provider"])),
            at_ms: now_ms,
        });
    }
    Ok(out)
}

/// The file binding Slurm job `slurm_id` to UCloud job `job` (an [`is_job_id`]).
pub fn file(dir: &Path, slurm_id: u64, job: &str) -> PathBuf {
    dir.join(format!("{slurm_id}.{job}.json"))
}

/// Writes the binding, readable by the directory's group (the monitor), whole or
/// not at all, and never over an existing one (`AlreadyExists`).
pub fn write(dir: &Path, binding: &Binding) -> io::Result<()> {
    if !is_job_id(&binding.job) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a UCloud job id", binding.job),
        ));
    }
    let tmp = dir.join(format!(".{}.{}.tmp", binding.slurm_id, std::process::id()));
    let result = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)?;
        // The mode given at creation is cut by the umask (0077 in the gateway's unit).
        f.set_permissions(fs::Permissions::from_mode(0o640))?;
        f.write_all(binding.to_json().to_string().as_bytes())?;
        f.sync_all()?;
        // A link fails where the name exists: an existing binding is never replaced.
        fs::hard_link(&tmp, file(dir, binding.slurm_id, &binding.job))
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// The binding of Slurm job `slurm_id` to UCloud job `job` (the name the Slurm job
/// carries); `Ok(None)` when there is none, or `job` is no UCloud job id.
pub fn read(dir: &Path, slurm_id: u64, job: &str) -> Result<Option<Binding>, String> {
    if !is_job_id(job) {
        return Ok(None);
    }
    let path = file(dir, slurm_id, job);
    match fs::read(&path) {
        Ok(bytes) => match Binding::from_json(&bytes) {
            Some(b) if b.slurm_id == slurm_id && b.job == job => Ok(Some(b)),
            _ => Err(format!("{} is not a binding", path.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Value {
        json!({"items": [
            {"id": "41", "owner": {"createdBy": "Ann#1", "project": null},
             "specification": {"product": {"id": "c1", "category": "cpu", "provider": "hpc"}}},
            {"id": "42", "owner": {"createdBy": "Ann#1", "project": "P9"},
             "specification": {"product": {"id": "c1", "category": "cpu", "provider": "hpc"}}},
        ]})
    }

    #[test]
    fn job_ids_are_what_jobs_create_accepts() {
        assert!(is_job_id("4711"));
        assert!(is_job_id("a.b-c_d"));
        for bad in ["", "-x", ".x", "a b", "a/b", "a|b", &"x".repeat(65)] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }

    #[test]
    fn an_answer_pairs_with_its_request() {
        let answer = br#"{"responses":[{"id":"ann/1001"},{"id":"ann/1002"}]}"#;
        let b = from_answer(&request(), answer, 7).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].slurm_id, b[0].job.as_str()), (1001, "41"));
        assert_eq!(b[1].project.as_deref(), Some("P9"));
        assert_eq!(b[1].category, Some(("cpu".into(), "hpc".into())));
        let back = Binding::from_json(b[1].to_json().to_string().as_bytes()).unwrap();
        assert_eq!(back, b[1]);
    }

    #[test]
    fn answers_that_do_not_pair_bind_nothing() {
        for bad in [
            &br#"{"responses":[{"id":"ann/1001"}]}"#[..],
            br#"{"responses":[{"id":"ann/1001"},{"id":"ann/1001"}]}"#,
            br#"{"responses":[{"id":"ann/1001"},{"id":"ann/x1"}]}"#,
            br#"{"responses":[{"id":"ann/1001"},{"id":"ann/+5"}]}"#,
            br#"{"responses":[{"id":"ann/1001"},null]}"#,
            br#"not json"#,
        ] {
            assert!(
                from_answer(&request(), bad, 0).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut twice = request();
        twice["items"][1]["id"] = json!("41");
        assert!(from_answer(&twice, br#"{"responses":[{"id":"a/1"},{"id":"a/2"}]}"#, 0).is_err());
        let mut odd = request();
        odd["items"][0]["id"] = json!("../x");
        assert!(from_answer(&odd, br#"{"responses":[{"id":"a/1"},{"id":"a/2"}]}"#, 0).is_err());
    }

    #[test]
    fn a_binding_is_never_replaced_and_a_squatted_slurm_id_binds_anew() {
        let dir = std::env::temp_dir().join(format!("wire-binding-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let b = from_answer(
            &request(),
            br#"{"responses":[{"id":"a/5"},{"id":"a/6"}]}"#,
            1,
        )
        .unwrap();
        write(&dir, &b[0]).unwrap();
        let mut again = b[0].clone();
        again.created_by = "Eve#9".into();
        let err = write(&dir, &again).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(read(&dir, 5, "41").unwrap(), Some(b[0].clone()));
        // Slurm id 5 bound to job 41 first (a user answering with an id not yet
        // given out) does not keep job 42, which then got id 5, from its binding.
        let mut later = b[1].clone();
        later.slurm_id = 5;
        write(&dir, &later).unwrap();
        assert_eq!(read(&dir, 5, "42").unwrap(), Some(later));
        assert_eq!(read(&dir, 5, "41").unwrap(), Some(b[0].clone()));
        assert_eq!(read(&dir, 6, "42").unwrap(), None);
        assert_eq!(read(&dir, 5, "../41").unwrap(), None);
        let mode = fs::metadata(file(&dir, 5, "41"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
        // A file under another job's name is no binding of this one.
        fs::copy(file(&dir, 5, "41"), file(&dir, 9, "41")).unwrap();
        assert!(read(&dir, 9, "41").is_err());
        let mut odd = b[0].clone();
        odd.job = "../x".into();
        assert_eq!(
            write(&dir, &odd).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 3, "no temporary left");
        fs::remove_dir_all(dir).unwrap();
    }
}
