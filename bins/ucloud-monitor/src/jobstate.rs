//! Slurm's job states and what UCloud is told about them: the table of
//! ucloud-monitor(8), in code. One place decides the UCloud state and the text a
//! person reads, so that the polling and the event path can never disagree.

/// UCloud's JobState.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UState {
    InQueue,
    Running,
    Suspended,
    Success,
    Failure,
    Expired,
}

impl UState {
    pub fn as_str(self) -> &'static str {
        match self {
            UState::InQueue => "IN_QUEUE",
            UState::Running => "RUNNING",
            UState::Suspended => "SUSPENDED",
            UState::Success => "SUCCESS",
            UState::Failure => "FAILURE",
            UState::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<UState> {
        [
            UState::InQueue,
            UState::Running,
            UState::Suspended,
            UState::Success,
            UState::Failure,
            UState::Expired,
        ]
        .into_iter()
        .find(|u| u.as_str() == s)
    }

    /// UCloud accepts nothing after one of these.
    pub fn is_final(self) -> bool {
        matches!(self, UState::Success | UState::Failure | UState::Expired)
    }
}

/// What Slurm says about a job, as far as UCloud cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub state: UState,
    /// The text UCloud shows the job's owner.
    pub status: String,
}

/// How a job ended, from Slurm's exit code (`exit:signal` from sacct, the raw wait
/// status from squeue): for the text only, never for the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Exit {
    pub code: i32,
    pub signal: i32,
}

impl Exit {
    /// A raw wait status, as `squeue -O exit_code` prints it (768 = exit 3).
    pub fn from_wait_status(raw: &str) -> Option<Exit> {
        let w: i32 = raw.trim().parse().ok()?;
        Some(Exit {
            code: (w >> 8) & 0xff,
            signal: w & 0x7f,
        })
    }

    /// `3:0` as sacct and scontrol print it.
    pub fn from_pair(pair: &str) -> Option<Exit> {
        let (code, signal) = pair.trim().split_once(':')?;
        Some(Exit {
            code: code.parse().ok()?,
            signal: signal.parse().ok()?,
        })
    }

    fn describe(self) -> String {
        if self.signal != 0 {
            format!("it was killed by signal {}", self.signal)
        } else {
            format!("it exited with code {}", self.code)
        }
    }
}

/// Maps one Slurm state (the first word: `CANCELLED by 0` is CANCELLED) to what
/// UCloud is told. `None`: a state this table does not know; the job is left as it
/// was reported and the state is logged.
pub fn verdict(slurm_state: &str, slurm_id: u64, exit: Exit) -> Option<Verdict> {
    let word = slurm_state.split_whitespace().next().unwrap_or_default();
    let (state, status) = match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" => (
            UState::InQueue,
            format!("Your job is in the queue (Slurm ID {slurm_id})"),
        ),
        "RUNNING" | "COMPLETING" | "RESIZING" | "SIGNALING" | "STAGE_OUT" => (
            UState::Running,
            format!("Your job is running (Slurm ID {slurm_id})"),
        ),
        "SUSPENDED" | "STOPPED" => (
            UState::Suspended,
            format!("Your job is suspended (Slurm ID {slurm_id})"),
        ),
        "COMPLETED" => (
            UState::Success,
            "Your job finished successfully (exit code 0)".to_string(),
        ),
        "CANCELLED" => (
            UState::Success,
            format!("Your job was cancelled before it finished (Slurm ID {slurm_id})"),
        ),
        "FAILED" | "SPECIAL_EXIT" => (
            UState::Failure,
            format!("Your job failed: {}", exit.describe()),
        ),
        "OUT_OF_MEMORY" => (
            UState::Failure,
            "Your job failed: it ran out of memory".to_string(),
        ),
        "NODE_FAIL" => (
            UState::Failure,
            "Your job failed: a node it ran on failed".to_string(),
        ),
        "BOOT_FAIL" => (
            UState::Failure,
            "Your job failed: its node could not be started".to_string(),
        ),
        "PREEMPTED" => (
            UState::Failure,
            "Your job was stopped to make room for a job of higher priority".to_string(),
        ),
        "REVOKED" => (
            UState::Failure,
            "Your job was revoked by Slurm (it runs on another cluster)".to_string(),
        ),
        "TIMEOUT" => (
            UState::Expired,
            "Your job reached its time limit and was stopped".to_string(),
        ),
        "DEADLINE" => (
            UState::Expired,
            "Your job could not finish before its deadline".to_string(),
        ),
        _ => return None,
    };
    Some(Verdict { state, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(slurm: &str) -> Option<UState> {
        verdict(slurm, 42, Exit::default()).map(|v| v.state)
    }

    #[test]
    fn the_table_of_the_man_page() {
        for s in ["PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD"] {
            assert_eq!(state(s), Some(UState::InQueue), "{s}");
        }
        for s in ["RUNNING", "COMPLETING", "SIGNALING"] {
            assert_eq!(state(s), Some(UState::Running), "{s}");
        }
        assert_eq!(state("SUSPENDED"), Some(UState::Suspended));
        assert_eq!(state("COMPLETED"), Some(UState::Success));
        assert_eq!(state("CANCELLED by 1001"), Some(UState::Success));
        for s in [
            "FAILED",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "BOOT_FAIL",
            "PREEMPTED",
        ] {
            assert_eq!(state(s), Some(UState::Failure), "{s}");
        }
        assert_eq!(state("TIMEOUT"), Some(UState::Expired));
        assert_eq!(state("DEADLINE"), Some(UState::Expired));
        assert_eq!(state("NO_SUCH_STATE"), None);
        assert_eq!(state(""), None);
    }

    #[test]
    fn texts_are_for_people() {
        let v = verdict("PENDING", 42, Exit::default()).unwrap();
        assert_eq!(v.status, "Your job is in the queue (Slurm ID 42)");
        let failed = verdict("FAILED", 7, Exit::from_wait_status("768").unwrap()).unwrap();
        assert_eq!(failed.status, "Your job failed: it exited with code 3");
        let killed = verdict("FAILED", 7, Exit::from_pair("0:9").unwrap()).unwrap();
        assert_eq!(killed.status, "Your job failed: it was killed by signal 9");
    }

    #[test]
    fn exit_codes_parse_in_both_forms() {
        assert_eq!(
            Exit::from_wait_status("768"),
            Some(Exit { code: 3, signal: 0 })
        );
        assert_eq!(
            Exit::from_wait_status("9"),
            Some(Exit { code: 0, signal: 9 })
        );
        assert_eq!(Exit::from_pair("3:0"), Some(Exit { code: 3, signal: 0 }));
        assert_eq!(Exit::from_pair("x"), None);
        assert!(UState::Expired.is_final() && !UState::Suspended.is_final());
        assert_eq!(UState::parse("EXPIRED"), Some(UState::Expired));
    }
}
