//! After jobs.create answers: which Slurm job was submitted for which UCloud job,
//! written where only the gateway's account may write and the monitor reads
//! (ucloud_wire::binding, ucloud-monitor(8) BINDINGS). Only the gateway sees both
//! UCloud's request and the plugin's answer; the user's own Slurm jobs, however
//! named, carry no such file and are never reported.

use serde_json::Value;
use std::path::Path;
use ucloud_wire::binding;

/// Binds each job of the answer. A job that cannot be bound still runs, but its
/// state never reaches UCloud: that is logged for the admin, and the answer goes
/// out unchanged (the jobs are submitted; refusing now would orphan them).
pub fn record(request: &Value, answer: &[u8]) {
    let dir = ucloud_wire::paths::bindings_dir();
    record_in(Path::new(&dir), request, answer);
}

fn record_in(dir: &Path, request: &Value, answer: &[u8]) {
    let bindings = match binding::from_answer(request, answer, ucloud_wire::now_ms()) {
        Ok(b) => b,
        Err(why) => {
            ucloud_wire::log_err!("ucloud-gateway: jobs.create: no job of this answer is bound, so none is reported to UCloud: {why}");
            return;
        }
    };
    for b in bindings {
        if let Err(e) = binding::write(dir, &b) {
            ucloud_wire::log_err!(
                "ucloud-gateway: jobs.create: UCloud job {} (Slurm {}) is not bound, so it is not reported to UCloud: {}: {e} (the directory must be the gateway account's, mode 2750; see ucloud-check)",
                b.job,
                b.slurm_id,
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_is_bound_once() {
        let dir = std::env::temp_dir().join(format!("gateway-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let request = json!({"items": [{"id": "77", "owner": {"createdBy": "Ann#1"},
            "specification": {"product": {"category": "cpu", "provider": "hpc"}}}]});
        record_in(&dir, &request, br#"{"responses":[{"id":"ann/501"}]}"#);
        let b = binding::read(&dir, 501, "77").unwrap().unwrap();
        assert_eq!((b.job.as_str(), b.created_by.as_str()), ("77", "Ann#1"));
        // The same answer again changes nothing.
        let again = json!({"items": [{"id": "77", "owner": {"createdBy": "Eve#2"}}]});
        record_in(&dir, &again, br#"{"responses":[{"id":"eve/501"}]}"#);
        assert_eq!(
            binding::read(&dir, 501, "77").unwrap().unwrap().created_by,
            "Ann#1"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
