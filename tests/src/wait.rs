//! Waiting for what the stack does in its own time (a delivery, a report, a
//! service coming back), by polling: a test never sleeps for a guessed time.

use std::time::{Duration, Instant};

/// Polls `done` until it holds; fails the test, naming `what`, after `seconds`.
/// The 50 ms between polls catch a state that lasts a moment (a report being sent).
pub fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `done` holds within `seconds` (polled every 200 ms), for tests that
/// assert on the answer themselves.
pub fn within(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done()
}
