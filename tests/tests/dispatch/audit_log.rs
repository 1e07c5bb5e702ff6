//! The audit log: one that cannot be trusted refuses every request, and under a
//! file size limit or a flood of refused calls it keeps whole records only and grows
//! by a bounded amount.

use super::*;

#[test]
fn an_audit_log_that_cannot_be_trusted_refuses_every_request() {
    let _lock = exclusive();
    let env = Env::new();
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    let _guard = ModeGuard::set(&log, 0o644);
    env.run(&env.envelope(PROBE, Some(ALICE), json!({})))
        .refused(
            78,
            500,
            "AUDIT_FAILED",
            "must be owned by root with mode 0600",
            false,
        );
}

// --- the audit log under attack ---------------------------------------------------

/// Every line of the audit log is a whole JSON record, and the log ends in a newline
/// (no fragment for the next record to be glued to).
fn assert_whole_records(log: &Path) {
    // Read under the writers' lock: a record being written is not yet whole.
    let out = Command::new("flock")
        .args(["--shared", "--timeout", "30"])
        .arg(log)
        .arg("cat")
        .arg(log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bytes = out.stdout;
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "the audit log ends in a partial record: {:?}",
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..])
    );
    for line in String::from_utf8(bytes)
        .expect("the audit log is UTF-8")
        .lines()
    {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole record ({e}): {line:?}"));
        assert!(record["decision"].is_string(), "{line}");
    }
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).unwrap().len()
}

/// Whether this process's capability bounding set (which the dispatcher inherits)
/// holds CAP_SYS_RESOURCE, without which no one can raise a hard limit.
fn bounding_set_has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd in /proc/self/status")
        .trim();
    u64::from_str_radix(hex, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

/// The attack of a caller who sets a small soft file-size limit and then has the
/// dispatcher refuse it early (an OPENSSL_*cap variable is refused in step 1): the
/// refusal's record must not be written under that limit, cut short (a limit that
/// ends inside the record) or not at all (a limit below the log's length, whose
/// SIGXFSZ would end the process).
#[test]
fn an_early_refusal_under_a_small_file_size_limit_is_recorded_whole() {
    // The log's length must not move between measuring it and the run.
    let _lock = exclusive();
    let env = Env::new();
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    for inside_the_record in [true, false] {
        let len = log_len(&log);
        let limit = if inside_the_record { len + 20 } else { 0 };
        let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
        how.env = vec![("OPENSSL_ia32cap".into(), "~0x0".into())];
        how.setpriv = vec![
            "prlimit".into(),
            format!("--fsize={limit}:unlimited"),
            "--".into(),
        ];
        let run = env.run_with(&how);
        run.refused(64, 400, "BAD_REQUEST", "OPENSSL_", true);
        assert_eq!(run.audit[0]["errorCode"], "BAD_REQUEST");
        assert_whole_records(&log);
    }
}

/// The same caller with a hard limit too. Where the bounding set holds
/// CAP_SYS_RESOURCE the dispatcher lifts the limit and serves the request; where it
/// does not (this machine's containers), the limit is refused and its record, which
/// cannot fit, is not written at all: never half of it.
#[test]
fn a_hard_file_size_limit_leaves_whole_records_or_none() {
    let _lock = exclusive();
    let env = Env::new();
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    let can_raise = bounding_set_has_sys_resource();
    for inside_the_record in [true, false] {
        let len = log_len(&log);
        let limit = if inside_the_record { len + 20 } else { len / 2 };
        let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
        how.setpriv = vec![
            "prlimit".into(),
            format!("--fsize={limit}:{limit}"),
            "--".into(),
        ];
        let run = env.run_with(&how);
        if can_raise {
            run.probe();
            assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
            assert_eq!(run.audit[0]["decision"], "allowed");
        } else {
            run.refused(64, 400, "BAD_REQUEST", "hard file-size limit", false);
            assert_eq!(log_len(&log), len, "the log changed");
        }
        assert_whole_records(&log);
    }
}

/// Removes a refused caller's count before and after a test.
struct LimitState(PathBuf);

impl LimitState {
    fn of(env: &Env, uid: u32) -> LimitState {
        let path = env
            .stack
            .prefix()
            .join("var/lib/ucloud-im/audit-limit")
            .join(uid.to_string());
        let _ = std::fs::remove_file(&path);
        LimitState(path)
    }
}

impl Drop for LimitState {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the dispatcher `times` times, as fast as a shell can, as real uid `uid` with
/// the gateway's group (so the kernel lets it start); returns its stderr.
fn flood(env: &Env, uid: u32, times: u32) -> String {
    let out = Command::new("setpriv")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={}", env.gateway()))
        .arg("--clear-groups")
        // A shell of its own execs the dispatcher: setpriv would still hold root's
        // capabilities at its exec.
        .args(["/bin/sh", "-c"])
        .arg(format!(
            "i=0; while [ $i -lt {times} ]; do \"$0\" 3</dev/null; i=$((i + 1)); done"
        ))
        .arg(env.get("UCLOUD_IM_DISPATCH"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

/// The attack of item 5: a process of the gateway's group that is not the gateway
/// runs the dispatcher in a loop. Every run is refused (and says so), but the log
/// takes at most a burst of its records per window plus one summary of the rest,
/// and the gateway's own records are written as ever.
#[test]
fn a_flood_of_refused_calls_grows_the_log_by_a_bounded_amount() {
    const BURST: usize = 10;
    const WINDOW: Duration = Duration::from_secs(30);
    const FLOOD: u32 = 300;
    let _lock = shared();
    let env = Env::new();
    // No account: a process root gave that uid and the gateway's group.
    let flooder = 3_900_000 + std::process::id() % 10_000;
    let _state = LimitState::of(&env, flooder);
    let log = PathBuf::from(env.get("UCLOUD_IM_AUDIT_LOG"));
    let of_flooder = |lines: &[String]| -> Vec<Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("a whole record"))
            .filter(|v| v["callerUid"] == json!(flooder))
            .collect()
    };
    let before = env.stack.audit_lines().len();
    let started = Instant::now();
    let stderr = flood(&env, flooder, FLOOD);
    let took = started.elapsed();
    // Each run is still refused and told why.
    assert_eq!(stderr.lines().count(), FLOOD as usize, "{stderr}");
    assert!(
        stderr.lines().all(|l| l.contains("WRONG_CALLER")),
        "{stderr}"
    );
    let records = of_flooder(&env.stack.audit_lines()[before..]);
    let windows = (took.as_secs() / WINDOW.as_secs() + 1) as usize;
    assert!(
        !records.is_empty() && records.len() <= windows * (BURST + 1),
        "{} records of {FLOOD} refusals in {took:?}",
        records.len()
    );
    assert_eq!(records[0]["decision"], "refused");
    assert_eq!(records[0]["errorCode"], "WRONG_CALLER");
    assert_whole_records(&log);

    // The gateway's request is recorded as ever.
    let run = env.run(&env.envelope(PROBE, Some(ALICE), json!({})));
    run.probe();
    assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
    assert_eq!(run.audit[0]["decision"], "allowed");

    // After the window the flooder's next record comes after the count of what was
    // left out, and every refusal is accounted for: written, or counted.
    let last_window = records
        .iter()
        .map(|r| r["time"].as_u64().unwrap())
        .max()
        .unwrap();
    let wait = (last_window + WINDOW.as_millis() as u64 + 500).saturating_sub(now_ms());
    std::thread::sleep(Duration::from_millis(wait));
    let before_last = env.stack.audit_lines().len();
    let stderr = flood(&env, flooder, 1);
    assert!(stderr.contains("WRONG_CALLER"), "{stderr}");
    let last = of_flooder(&env.stack.audit_lines()[before_last..]);
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[0]["decision"], "suppressed", "{last:?}");
    assert_eq!(last[1]["errorCode"], "WRONG_CALLER", "{last:?}");
    let all = of_flooder(&env.stack.audit_lines()[before..]);
    let written = all.iter().filter(|r| r["decision"] == "refused").count() as u64;
    let counted: u64 = all.iter().filter_map(|r| r["suppressed"].as_u64()).sum();
    assert_eq!(written + counted, FLOOD as u64 + 1, "{all:?}");
}
