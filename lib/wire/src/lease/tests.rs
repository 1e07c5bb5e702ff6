use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// Short enough for tests, long enough for a loaded machine with two cores.
const FAST: Timing = Timing {
    ttl: Duration::from_millis(300),
    skew: Duration::from_millis(50),
};

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lease-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("sender")).unwrap();
    fs::set_permissions(dir.join("sender"), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn holder(host: &str) -> Holder {
    Holder {
        host: host.into(),
        pid: 4242,
    }
}

fn lease(dir: &Path, host: &str) -> Lease {
    Lease::open(dir, "sender", holder(host), FAST).unwrap()
}

#[test]
fn token_names_are_twenty_digits_and_nothing_else() {
    assert_eq!(Token(7).name(), "00000000000000000007");
    assert_eq!(Token::parse("00000000000000000007"), Some(Token(7)));
    assert_eq!(Token::parse(&Token(u64::MAX).name()), Some(Token(u64::MAX)));
    for bad in [
        "",
        "7",
        "0000000000000000007",
        "000000000000000000007",
        "0000000000000000000a",
        "99999999999999999999",
        "+0000000000000000007",
        "0000000000000000000７",
        ".00000000000000000007.h.1.tmp",
    ] {
        assert_eq!(Token::parse(bad), None, "{bad:?}");
    }
}

fn record() -> Record {
    Record {
        role: "sender".into(),
        token: Token(3),
        holder: holder("login1.example.org"),
        acquired_ms: 1,
        renewed_ms: 2,
        ttl_ms: 10_000,
        released: false,
    }
}

#[test]
fn records_round_trip_and_junk_is_refused() {
    let r = record();
    assert_eq!(Record::parse(r.to_text().as_bytes()).unwrap(), r);
    let text = r.to_text();
    assert!(text.contains("\nhost=login1.example.org\n"), "{text}");
    assert!(text.contains("\ntoken=00000000000000000003\n"), "{text}");
    let bad = [
        String::new(),
        "junk".into(),
        text.replace("ucloud-im lease 1", "ucloud-im lease 2"),
        text.replace("pid=4242", "pid=-1"),
        text.replace("pid=4242", "pid=99999999999"),
        text.replace("pid=4242", "pid="),
        text.replace("renewed_ms=2", "renewed_ms=2x"),
        text.replace("renewed_ms=2", "renewed_ms=999999999999999999999999"),
        text.replace("released=0", "released=yes"),
        text.replace("host=login1.example.org", "host=a b"),
        text.replace("host=login1.example.org", "host="),
        text.replace("role=sender", "role=../x"),
        text.replace("token=00000000000000000003", "token=3"),
        text.replace("\nttl_ms=10000", ""),
        format!("{text}pid=1\n"),
        format!("{text}no equals sign\n"),
    ];
    for b in &bad {
        assert!(Record::parse(b.as_bytes()).is_err(), "{b:?}");
    }
    assert!(Record::parse(b"ucloud-im lease 1\n\xff\xfe").is_err());
}

#[test]
fn the_directory_must_be_ours_and_closed_to_others() {
    let dir = scratch("open");
    assert!(Lease::open(&dir, "sender", holder("a"), FAST).is_ok());
    for role in ["", "../sender", "Sender", "a/b", "-x"] {
        assert!(
            Lease::open(&dir, role, holder("a"), FAST).is_err(),
            "{role:?}"
        );
    }
    let e = Lease::open(&dir, "monitor", holder("a"), FAST).unwrap_err();
    assert!(e.to_string().contains("tmpfiles"), "{e}");
    std::os::unix::fs::symlink(dir.join("sender"), dir.join("usage")).unwrap();
    let e = Lease::open(&dir, "usage", holder("a"), FAST).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    fs::set_permissions(dir.join("sender"), fs::Permissions::from_mode(0o775)).unwrap();
    let e = Lease::open(&dir, "sender", holder("a"), FAST).unwrap_err();
    assert!(e.to_string().contains("writable"), "{e}");
    fs::set_permissions(dir.join("sender"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(Lease::open(&dir, "sender", holder("a b"), FAST).is_err());
    assert!(Timing::new(Duration::from_secs(10), Duration::from_secs(5)).is_err());
    assert!(Timing::new(Duration::ZERO, Duration::ZERO).is_err());
    assert_eq!(Timing::DEFAULT.takeover_bound().as_millis(), 15_333);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn one_holder_then_takeover_once_the_holder_stops_renewing() {
    let dir = scratch("takeover");
    let mut a = lease(&dir, "a");
    let mut b = lease(&dir, "b");
    assert_eq!(a.try_acquire().unwrap(), Some(Token(1)));
    assert_eq!(b.try_acquire().unwrap(), None);
    assert_eq!(a.try_acquire().unwrap(), Some(Token(1)), "held already");
    // Renewing keeps it for longer than one TTL.
    for _ in 0..5 {
        std::thread::sleep(FAST.renew_every());
        assert_eq!(a.renew().unwrap(), Token(1));
        assert_eq!(b.try_acquire().unwrap(), None);
    }
    match b.highest().unwrap() {
        Highest::Live(r) => assert_eq!((r.holder.host.as_str(), r.token), ("a", Token(1))),
        other => panic!("{other:?}"),
    }
    // A stops renewing: it stops believing before B may take over.
    std::thread::sleep(FAST.believed() + Duration::from_millis(5));
    assert_eq!(a.check(), Err(LeaseLost::Expired(Token(1))));
    assert_eq!(b.try_acquire().unwrap(), None, "not stale yet");
    std::thread::sleep(FAST.stale_after() - FAST.believed() + Duration::from_millis(20));
    assert_eq!(b.try_acquire().unwrap(), Some(Token(2)));
    assert_eq!(b.check(), Ok(Token(2)));
    // A comes back: it acts no more, and cannot take the lease back.
    assert!(a.renew().is_err());
    assert_eq!(a.try_acquire().unwrap(), None);
    assert_eq!(a.token(), None);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_holder_that_sees_a_higher_token_stops_at_once() {
    let dir = scratch("fenced");
    let mut a = lease(&dir, "a");
    let mut b = lease(&dir, "b");
    assert_eq!(a.try_acquire().unwrap(), Some(Token(1)));
    // A's file ages behind its back (its host paused with a clock that did not):
    // B takes over while A's own deadline has not passed yet.
    let mut old = read_record(&a.dir, Token(1)).unwrap();
    old.renewed_ms -= 10_000;
    fs::write(a.dir.join(Token(1).name()), old.to_text()).unwrap();
    assert_eq!(b.try_acquire().unwrap(), Some(Token(2)));
    assert_eq!(
        a.check(),
        Err(LeaseLost::Superseded {
            mine: Token(1),
            by: Token(2)
        })
    );
    assert!(a.renew().is_err());
    assert_eq!(b.renew(), Ok(Token(2)));
    // A's renewal did not touch B's file nor make its own the highest.
    assert_eq!(b.tokens().unwrap().last(), Some(&Token(2)));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn release_lets_another_take_over_at_once_and_numbers_are_never_reused() {
    let dir = scratch("release");
    let mut a = lease(&dir, "a");
    let mut b = lease(&dir, "b");
    assert_eq!(a.try_acquire().unwrap(), Some(Token(1)));
    a.release();
    assert_eq!(a.check(), Err(LeaseLost::NotHeld));
    assert!(read_record(&a.dir, Token(1)).unwrap().released);
    assert_eq!(b.try_acquire().unwrap(), Some(Token(2)));
    b.release();
    assert_eq!(a.try_acquire().unwrap(), Some(Token(3)));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_holder_of_this_host_that_no_longer_runs_is_taken_over_at_once() {
    let dir = scratch("dead");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let mut gone = Lease::open(
        &dir,
        "sender",
        Holder {
            host: "here".into(),
            pid: dead,
        },
        FAST,
    )
    .unwrap();
    assert_eq!(gone.try_acquire().unwrap(), Some(Token(1)));
    let mut me = Lease::open(
        &dir,
        "sender",
        Holder {
            host: "here".into(),
            pid: std::process::id(),
        },
        FAST,
    )
    .unwrap();
    assert_eq!(me.try_acquire().unwrap(), Some(Token(2)));
    // A live process of this host is waited for like any holder.
    let mut third = Lease::open(
        &dir,
        "sender",
        Holder {
            host: "here".into(),
            pid: 1,
        },
        FAST,
    )
    .unwrap();
    assert_eq!(third.try_acquire().unwrap(), None);
    // The same pid on another host is another process.
    let mut elsewhere = Lease::open(
        &dir,
        "sender",
        Holder {
            host: "there".into(),
            pid: dead,
        },
        FAST,
    )
    .unwrap();
    assert_eq!(elsewhere.try_acquire().unwrap(), None);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hostile_files_are_passed_over_never_believed() {
    let dir = scratch("hostile");
    let leases = dir.join("sender");
    let mut a = lease(&dir, "a");
    // Names that are not tokens are not looked at.
    for name in [
        "README",
        "123",
        "000000000000000000099",
        "0000000000000000009x",
    ] {
        fs::write(leases.join(name), "x").unwrap();
    }
    fs::create_dir(leases.join(".00000000000000000050.evil.1.tmp")).unwrap();
    assert!(a.tokens().unwrap().is_empty());
    let mut next = 1;
    let mut hostile = |what: &str, make: &dyn Fn(&Path)| {
        let path = leases.join(Token(next).name());
        make(&path);
        match a.highest().unwrap() {
            Highest::Stale(t, why) => assert_eq!(t, Token(next), "{what}: {why}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(a.try_acquire().unwrap(), Some(Token(next + 1)), "{what}");
        a.release();
        next += 2;
    };
    hostile("junk", &|p| fs::write(p, "junk\0\u{1}").unwrap());
    hostile("empty", &|p| fs::write(p, "").unwrap());
    hostile("huge", &|p| {
        let mut text = record().to_text();
        text.push_str(&"#".repeat(MAX_RECORD as usize));
        fs::write(p, text).unwrap()
    });
    hostile("a link to a live record", &|p| {
        let mut r = record();
        r.renewed_ms = wall_ms();
        r.token = Token::parse(p.file_name().unwrap().to_str().unwrap()).unwrap();
        let real = p.with_extension("real");
        fs::write(&real, r.to_text()).unwrap();
        std::os::unix::fs::symlink(&real, p).unwrap();
    });
    hostile("a directory", &|p| fs::create_dir(p).unwrap());
    hostile("a fifo", &|p| {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
    });
    hostile("a record of another token", &|p| {
        let mut r = record();
        r.renewed_ms = wall_ms();
        r.token = Token(999);
        fs::write(p, r.to_text()).unwrap()
    });
    hostile("a record of another role", &|p| {
        let mut r = record();
        r.renewed_ms = wall_ms();
        r.role = "monitor".into();
        r.token = Token::parse(p.file_name().unwrap().to_str().unwrap()).unwrap();
        fs::write(p, r.to_text()).unwrap()
    });
    hostile("a renewal far in the future", &|p| {
        let mut r = record();
        r.renewed_ms = wall_ms() + 3_600_000;
        r.token = Token::parse(p.file_name().unwrap().to_str().unwrap()).unwrap();
        fs::write(p, r.to_text()).unwrap()
    });
    if nix::unistd::geteuid().is_root() {
        hostile("another owner's file", &|p| {
            let mut r = record();
            r.renewed_ms = wall_ms();
            r.token = Token::parse(p.file_name().unwrap().to_str().unwrap()).unwrap();
            fs::write(p, r.to_text()).unwrap();
            nix::unistd::chown(p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        });
    }
    // The last number there can be: a clear error, no overflow.
    fs::write(leases.join(Token(u64::MAX).name()), "x").unwrap();
    let e = a.try_acquire().unwrap_err();
    assert!(e.to_string().contains("highest token"), "{e}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn old_tokens_are_pruned_and_the_last_ones_kept() {
    let dir = scratch("prune");
    let mut a = lease(&dir, "a");
    for _ in 0..(KEEP + 10) {
        a.try_acquire().unwrap().unwrap();
        a.release();
    }
    let tokens = a.tokens().unwrap();
    assert_eq!(tokens.last(), Some(&Token(KEEP + 10)));
    assert!(tokens.len() as u64 <= KEEP + 1, "{tokens:?}");
    let leftovers: Vec<_> = fs::read_dir(a.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fs::remove_dir_all(dir).unwrap();
}

/// Holders in threads that act while they hold, and now and then pause (stop
/// renewing) for longer than the TTL: never two act at once, and the tokens of
/// successive holders rise.
#[test]
fn threads_act_one_at_a_time_through_pauses_and_takeovers() {
    let dir = scratch("threads");
    let inside = Arc::new(AtomicUsize::new(0));
    let acts = Arc::new(AtomicUsize::new(0));
    let highest = Arc::new(AtomicU64::new(0));
    let takeovers = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(4);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (dir, inside, acts, highest, takeovers) = (
                dir.clone(),
                inside.clone(),
                acts.clone(),
                highest.clone(),
                takeovers.clone(),
            );
            std::thread::spawn(move || {
                let mut l = lease(&dir, &format!("host-{i}"));
                let mut rounds = 0u32;
                while Instant::now() < until {
                    if let Some(t) = l.try_acquire().unwrap() {
                        if highest.fetch_max(t.0, Ordering::SeqCst) < t.0 {
                            takeovers.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let mut last_renewal = Instant::now();
                    while l.check().is_ok() && Instant::now() < until {
                        // The work: 5 ms, well inside the 2 x skew a check allows.
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two act at once");
                        acts.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        rounds += 1;
                        if rounds.is_multiple_of(40 + i * 7) {
                            // A pause: no renewal for longer than the lease lasts.
                            std::thread::sleep(FAST.stale_after() + Duration::from_millis(100));
                        }
                        if last_renewal.elapsed() >= FAST.renew_every() {
                            let _ = l.renew();
                            last_renewal = Instant::now();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(acts.load(Ordering::SeqCst) > 50);
    assert!(
        takeovers.load(Ordering::SeqCst) >= 3,
        "{} takeovers",
        takeovers.load(Ordering::SeqCst)
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn keepers_hand_over_within_the_bound() {
    let dir = scratch("keeper");
    let a = Keeper::spawn(lease(&dir, "a"), "test", None).unwrap();
    assert_eq!(a.check(), Ok(Token(1)));
    let b = Keeper::spawn(lease(&dir, "b"), "test", None).unwrap();
    // Held across several TTLs while renewed.
    assert_eq!(b.wait_held(FAST.ttl * 3), None);
    assert_eq!(a.check(), Ok(Token(1)));
    // A hangs: B holds within TTL + skew + one try (plus slack for a busy machine).
    a.stop_renewing();
    let stopped = Instant::now();
    let got = b.wait_held(FAST.takeover_bound() + Duration::from_millis(300));
    assert_eq!(got, Some(Token(2)));
    assert!(stopped.elapsed() >= FAST.ttl, "{:?}", stopped.elapsed());
    assert!(a.check().is_err());
    // A clean stop hands over at once.
    b.release();
    let c = Keeper::spawn(lease(&dir, "c"), "test", None).unwrap();
    assert_eq!(c.check(), Ok(Token(3)));
    c.release();
    fs::remove_dir_all(dir).unwrap();
}

/// Processes, not threads: a child holds; the parent cannot take the lease until
/// the child is killed and its lease goes stale.
#[test]
fn a_killed_process_is_taken_over_after_the_ttl() {
    let dir = scratch("process");
    let leases = dir.join("sender");
    // The child: a shell that makes token 1 as the lease would (write, link)
    // and renews it until killed.
    let script = format!(
        r#"cd '{}' || exit 1
stamp() {{ printf 'ucloud-im lease 1\nrole=sender\ntoken=00000000000000000001\nhost=child\npid=%s\nacquired_ms=%s\nrenewed_ms=%s\nttl_ms=300\nreleased=0\n' $$ "$1" "$(date +%s%3N)"; }}
start=$(date +%s%3N)
stamp "$start" > .t1 && ln .t1 00000000000000000001 && rm .t1 || exit 1
while :; do stamp "$start" > .t2 && mv .t2 00000000000000000001; sleep 0.08; done"#,
        leases.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let token = leases.join(Token(1).name());
    let until = Instant::now() + Duration::from_secs(5);
    while !token.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut me = lease(&dir, "parent");
    for _ in 0..8 {
        assert_eq!(me.try_acquire().unwrap(), None, "the child holds");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let got = loop {
        if let Some(t) = me.try_acquire().unwrap() {
            break t;
        }
        assert!(killed.elapsed() < Duration::from_secs(3), "no takeover");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(got, Token(2));
    assert!(killed.elapsed() >= FAST.ttl - Duration::from_millis(100));
    fs::remove_dir_all(dir).unwrap();
}
