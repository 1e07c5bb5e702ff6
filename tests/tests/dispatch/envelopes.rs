//! The envelope on fd 3: hostile, oversized, empty, late, broken off or missing.

use super::*;

// --- envelopes -----------------------------------------------------------------------

#[test]
fn bad_envelopes_are_refused() {
    let _lock = shared();
    let env = Env::new();
    let token = env.token();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not JSON"),
        (b" ".to_vec(), "not JSON"),
        (b"[]".to_vec(), "not a JSON object"),
        (
            envelope_with("../test.probe", "bearer", &token, Some(ALICE), json!({})),
            "not a call name",
        ),
        (
            envelope_with("test/../../probe", "bearer", &token, Some(ALICE), json!({})),
            "not a call name",
        ),
        (
            json!({"v": 2, "call": PROBE, "bearer": token, "request": {}})
                .to_string()
                .into_bytes(),
            "version",
        ),
        (
            json!({"v": 1, "call": PROBE, "bearer": token, "request": {}, "x": 1})
                .to_string()
                .into_bytes(),
            "unknown field",
        ),
        (
            json!({"v": 1, "call": PROBE, "bearer": token, "user": ALICE})
                .to_string()
                .into_bytes(),
            "request is missing",
        ),
        (
            json!({"v": 1, "call": PROBE, "bearer": token, "user": "a\u{0}b", "request": {}})
                .to_string()
                .into_bytes(),
            "control character",
        ),
    ];
    for (envelope, why) in cases {
        env.run(&envelope)
            .refused(64, 400, "BAD_ENVELOPE", why, true);
    }
}

#[test]
fn an_oversized_envelope_is_refused() {
    let _lock = shared();
    let env = Env::new();
    let padding = "x".repeat(8 << 20);
    let envelope = env.envelope(PROBE, Some(ALICE), json!({ "pad": padding }));
    env.run(&envelope)
        .refused(64, 400, "BAD_ENVELOPE", "larger than", true);
}

/// fd 3 closed without a byte: how the gateway lets a spare dispatcher go. Nothing
/// was asked, so nothing runs and nothing is recorded.
#[test]
fn an_empty_envelope_is_no_request() {
    let _lock = shared();
    let env = Env::new();
    let run = env.run(b"");
    assert_eq!(run.output.status.code(), Some(0), "{}", run.stderr());
    assert!(
        run.output.stdout.is_empty(),
        "a plugin ran: {}",
        run.stdout()
    );
    assert!(run.output.stderr.is_empty(), "stderr: {}", run.stderr());
    assert!(run.audit.is_empty(), "audit lines: {:?}", run.audit);
}

/// A dispatcher started ahead of its request waits for the envelope with its 30 s
/// alarm paused (the alarm would kill it otherwise), then decides as usual.
#[test]
fn an_envelope_that_comes_late_is_still_served() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, &env.envelope(PROBE, Some(ALICE), json!({})));
    how.fd3_source = Some("sleep 32; cat \"$1\"".into());
    let run = env.run_with(&how);
    let probe = run.probe();
    let uid = id_of("-u", &env.stack.local_of(ALICE))[0];
    assert_eq!(status_ids(&probe, "Uid"), [uid; 4]);
    assert_eq!(run.audit.len(), 1, "{:?}", run.audit);
    assert_eq!(run.audit[0]["decision"], "allowed");
}

/// Once the envelope has begun, the 30 s alarm runs again: a caller that sends one
/// byte and then nothing cannot keep a root process waiting.
#[test]
fn an_envelope_that_stops_half_way_ends_with_the_alarm() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, b"");
    // The feeder keeps fd 3 open but not the test's stderr (or the run would wait on it).
    how.fd3_source = Some("printf '{'; exec sleep 60 2>/dev/null".into());
    let started = std::time::Instant::now();
    let run = env.run_with(&how);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        run.output.status.signal(),
        Some(14),
        "{:?} {}",
        run.output.status,
        run.stderr()
    );
    let took = started.elapsed().as_secs();
    assert!((29..50).contains(&took), "SIGALRM after {took} s");
    assert!(
        run.output.stdout.is_empty(),
        "a plugin ran: {}",
        run.stdout()
    );
    assert!(run.audit.is_empty(), "audit lines: {:?}", run.audit);
}

#[test]
fn no_envelope_on_fd_3_is_a_usage_error() {
    let _lock = shared();
    let env = Env::new();
    let mut how = Invocation::new(&env, b"");
    how.envelope_fd = false;
    env.run_with(&how)
        .refused(64, 400, "BAD_REQUEST", "fd 3 is not open", true);
}
