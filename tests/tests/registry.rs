//! ucloud-registry against the local stack: the installed binary, run as root (and
//! once as a user), on the stack's real store, with real accounts made by useradd.
//! Refusals must leave the store exactly as it was; a scratch account goes through
//! add, a browse through the whole chain, and remove.
#![forbid(unsafe_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use ucloud_im_tests::{
    described, hex, run_as, sim_log, unique_account, within, ScratchAccount, Stack,
};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

/// Tests in this file change the store or compare it before and after: one at a time.
static STORE: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    STORE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every file of the mapping store and the drive table, with its content and mode.
fn snapshot(stack: &Stack) -> BTreeMap<String, (String, u32)> {
    let mut files = BTreeMap::new();
    for dir in ["mappings", "drives"] {
        let dir = stack.state_dir().join(dir);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            files.insert(path.display().to_string(), (content, meta.mode()));
        }
    }
    files
}

/// `list` as `ucloudName -> (local, uid, drive)`.
fn list(stack: &Stack) -> BTreeMap<String, (String, String, String)> {
    let out = stack.registry(&["list"]);
    assert!(out.status.success(), "list: {}", described(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(
                f.len(),
                4,
                "list line {line:?} is not `ucloudName localUser uid driveId|pending`"
            );
            (
                f[0].to_string(),
                (f[1].to_string(), f[2].to_string(), f[3].to_string()),
            )
        })
        .collect()
}

fn audit_has(stack: &Stack, action: &str, ucloud: &str, decision: &str) -> bool {
    stack.audit_lines().iter().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v["program"] == "ucloud-registry"
                && v["action"] == action
                && v["ucloudUser"] == ucloud
                && v["decision"] == decision
        })
    })
}

#[test]
fn list_shows_the_stack_users_with_their_drives() {
    let stack = Stack::load();
    let rows = list(&stack);
    for (ucloud, local) in stack.users() {
        let (l, uid, drive) = rows
            .get(&ucloud)
            .unwrap_or_else(|| panic!("{ucloud} is not in `list`: {rows:?}"));
        assert_eq!(l, &local);
        assert_eq!(drive, &stack.drive_of(&ucloud), "{ucloud}");
        let id = Command::new("id").args(["-u", &local]).output().unwrap();
        assert_eq!(uid, String::from_utf8_lossy(&id.stdout).trim());
    }
}

#[test]
fn refusals_change_nothing_and_say_why() {
    let _serial = serial();
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let nologin = stack.get("UCLOUD_IM_NOLOGIN_USER");
    let service = stack.get("UCLOUD_IM_SERVICE_USER");
    let fresh = unique_account("RTestNobody#");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["add".into(), fresh.clone(), "daemon".into()],
            "below min_uid",
        ),
        (vec!["add".into(), fresh.clone(), "root".into()], "root"),
        (vec!["add".into(), fresh.clone(), nologin], "disabled shell"),
        (vec!["add".into(), fresh.clone(), service], "min_uid"),
        (
            vec!["add".into(), fresh.clone(), "rtest-no-such-account".into()],
            "does not exist",
        ),
        (
            vec!["add".into(), fresh.clone(), "../etc".into()],
            "not a local account name",
        ),
        (
            vec!["add".into(), ALICE.into(), alice.clone()],
            "already mapped",
        ),
        (
            vec!["add".into(), BOB.into(), alice.clone()],
            "already mapped",
        ),
        (
            vec!["add".into(), fresh.clone(), alice.clone()],
            "already the target",
        ),
        (
            vec!["add".into(), "Evil\u{1}Name#1".into(), "daemon".into()],
            "control",
        ),
        (
            vec!["add".into(), "Evil\nName#1".into(), "daemon".into()],
            "control",
        ),
        (
            vec!["add".into(), "Two Words#1".into(), "daemon".into()],
            "whitespace",
        ),
        (
            vec!["add".into(), "x".repeat(121), "daemon".into()],
            "1 to 120 bytes",
        ),
        (vec!["remove".into(), fresh.clone()], "not mapped"),
    ];
    for (args, why) in cases {
        let before = snapshot(&stack);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = stack.registry(&args);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {}", described(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(why),
            "{args:?} should say {why:?}: {}",
            described(&out)
        );
        assert_eq!(snapshot(&stack), before, "{args:?} changed the store");
        if args[1] == fresh {
            assert!(
                audit_has(&stack, args[0], &fresh, "refused"),
                "no audit line for the refused {args:?}"
            );
        }
    }
    // Names with NUL cannot be passed as an argument at all.
    let nul = Command::new(stack.bin("ucloud-registry"))
        .args(["add", "a\0b", "daemon"])
        .output();
    assert!(nul.is_err(), "an argument with NUL reached the program");
}

#[test]
fn only_root_may_run_it() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let bin = stack.bin("ucloud-registry");
    for args in [vec!["list"], vec!["remove", ALICE]] {
        let mut argv = vec![bin.to_str().unwrap()];
        argv.extend(&args);
        let out = run_as(&alice, &argv);
        assert_eq!(
            out.status.code(),
            Some(77),
            "{args:?} as {alice}: {}",
            described(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("root"),
            "{}",
            described(&out)
        );
    }
    assert!(
        list(&stack).contains_key(ALICE),
        "a refused remove removed {ALICE}"
    );
}

#[test]
fn usage_errors_exit_64() {
    let stack = Stack::load();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["add", "A#1"],
        vec!["add", "A#1", "a", "--wait", "x"],
        vec!["list", "extra"],
    ] {
        let out = stack.registry(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", described(&out));
    }
    let help = stack.registry(&["--help"]);
    assert!(
        help.status.success()
            && String::from_utf8_lossy(&help.stdout).contains("ucloud-registry add")
    );
}

/// The whole life of a mapping: add (through the sender to the simulated UCloud and
/// back), the files it writes, a browse through the chain as the new user, remove.
/// The drive `ucloud` got, once UCloud registered it (the registry syncs until then,
/// 15 s at most).
fn drive_once_registered(stack: &Stack, ucloud: &str) -> String {
    let mut drive = String::new();
    let recorded = within(15, || {
        let _ = stack.registry(&["sync"]);
        drive = list(stack)
            .get(ucloud)
            .map(|r| r.2.clone())
            .unwrap_or_default();
        !drive.is_empty() && drive != "pending"
    });
    assert!(
        recorded,
        "the drive of {ucloud} is still {drive:?}: is the sender running?"
    );
    drive
}

/// A record of the store (a mapping or a drive file): root's, with `mode`, and JSON.
fn root_record(path: &Path, mode: u32) -> Value {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, mode),
        "{}",
        path.display()
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn add_browse_remove_round_trip() {
    let _serial = serial();
    let stack = Stack::load();
    let ucloud = unique_account("RTest#");
    let user = ScratchAccount::new(&stack, "rtest-", &ucloud);

    let out = stack.registry(&["add", &ucloud, &user.name, "--wait", "20"]);
    assert!(out.status.success(), "add: {}", described(&out));
    let drive = drive_once_registered(&stack, &ucloud);
    assert_eq!(
        list(&stack)[&ucloud],
        (user.name.clone(), user.uid().to_string(), drive.clone())
    );
    assert!(
        audit_has(&stack, "add", &ucloud, "allowed"),
        "no audit line for add"
    );

    let mapping = stack.state_dir().join("mappings").join(hex(&ucloud));
    let m = root_record(&mapping, 0o600);
    assert_eq!(m["ucloud"], ucloud.as_str());
    assert_eq!(m["local"], user.name.as_str());
    assert_eq!(m["uid"], user.uid());
    assert!(m["created"].as_u64().unwrap() > 1_600_000_000_000, "{m}");

    let drive_file = stack.state_dir().join("drives").join(&drive);
    let d = root_record(&drive_file, 0o644);
    assert_eq!(d["id"], drive.as_str());
    assert_eq!(d["local"], user.name.as_str());
    assert_eq!(d["base"], user.home().as_str());
    assert_eq!(
        (d["kind"].as_str(), d["title"].as_str()),
        (Some("home"), Some("Home"))
    );

    assert!(
        sim_log(&stack).iter().map(Value::to_string).any(|l| {
            l.contains("/api/files/collections/control/register") && l.contains(&ucloud)
        }),
        "the simulator never received the registration of {ucloud}"
    );

    // A second add of the same name is refused and changes nothing.
    let before = snapshot(&stack);
    let again = stack.registry(&["add", &ucloud, &user.name]);
    assert_eq!(again.status.code(), Some(77), "{}", described(&again));
    assert_eq!(snapshot(&stack), before);

    // The new mapping works through the whole chain.
    let body = serde_json::json!({
        "resolvedCollection": {"id": drive},
        "browse": {"flags": {"path": format!("/{drive}")}, "itemsPerPage": 10}
    })
    .to_string();
    let browse = format!("/ucloud/{}/files/browse", stack.get("UCLOUD_IM_PROVIDER"));
    let (status, answer) = stack.call(Some(&ucloud), "POST", &browse, Some(&body));
    assert_eq!(status, 200, "browse as the new user: {answer}");

    let out = stack.registry(&["remove", &ucloud]);
    assert!(out.status.success(), "remove: {}", described(&out));
    assert!(!mapping.exists(), "the mapping file is still there");
    assert!(!drive_file.exists(), "the drive file is still there");
    assert!(!list(&stack).contains_key(&ucloud));
    assert!(
        audit_has(&stack, "remove", &ucloud, "allowed"),
        "no audit line for remove"
    );
    let (status, answer) = stack.call(Some(&ucloud), "POST", &browse, Some(&body));
    assert!(
        (400..500).contains(&status) && answer.get("items").is_none(),
        "browse after remove: {status} {answer}"
    );
    assert!(
        within(15, || sim_log(&stack).iter().map(Value::to_string).any(
            |l| { l.contains("clearConnection") && l.contains(&ucloud) }
        )),
        "the simulator never heard clearConnection for {ucloud}"
    );
}

/// A UCloud name that looks like a path is stored under the hex of its bytes, inside
/// the store, and nowhere else.
#[test]
fn path_like_ucloud_names_stay_in_the_store() {
    let _serial = serial();
    let stack = Stack::load();
    let ucloud = format!("../{}", unique_account("rtest-escape"));
    let user = ScratchAccount::new(&stack, "rtest-", &ucloud);
    let outside = |p: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = (
        outside(&stack.state_dir()),
        outside(&stack.state_dir().join("..")),
    );
    let out = stack.registry(&["add", &ucloud, &user.name, "--wait", "20"]);
    assert!(out.status.success(), "add {ucloud:?}: {}", described(&out));
    let mapping = stack.state_dir().join("mappings").join(hex(&ucloud));
    assert!(mapping.is_file(), "{} is missing", mapping.display());
    assert_eq!(
        (
            outside(&stack.state_dir()),
            outside(&stack.state_dir().join(".."))
        ),
        before
    );
    assert!(list(&stack).contains_key(&ucloud));
    let out = stack.registry(&["remove", &ucloud]);
    assert!(
        out.status.success(),
        "remove {ucloud:?}: {}",
        described(&out)
    );
    assert!(!mapping.exists());
    let reply = stack
        .state_dir()
        .join("outbox/replies")
        .join(format!("drive-{}.json", hex(&ucloud)));
    let _ = stack.registry(&["sync"]);
    assert!(!reply.exists(), "{} outlived the mapping", reply.display());
    let mode = std::fs::metadata(stack.state_dir().join("mappings"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the mapping store's mode changed");
}

/// Two admins adding the same UCloud name at the same moment: the lock makes exactly
/// one of them win, and the store holds one valid mapping.
#[test]
fn concurrent_adds_of_one_name_map_it_once() {
    let _serial = serial();
    let stack = Stack::load();
    let ucloud = unique_account("RTestRace#");
    let first = ScratchAccount::new(&stack, "rtest-", &ucloud);
    let second = ScratchAccount::new(&stack, "rtest-", &ucloud);
    let spawn = |local: &str| {
        Command::new(stack.bin("ucloud-registry"))
            .args(["add", &ucloud, local, "--wait", "0"])
            .current_dir("/")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&first.name), spawn(&second.name));
    let outcomes = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let won: Vec<&Output> = outcomes.iter().filter(|o| o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "{} / {}",
        described(&outcomes[0]),
        described(&outcomes[1])
    );
    let lost = outcomes.iter().find(|o| !o.status.success()).unwrap();
    assert_eq!(lost.status.code(), Some(77), "{}", described(lost));
    assert!(
        String::from_utf8_lossy(&lost.stderr).contains("already mapped"),
        "{}",
        described(lost)
    );
    let (local, _, _) = list(&stack)[&ucloud].clone();
    assert!(local == first.name || local == second.name, "{local}");
    let mapping = stack.state_dir().join("mappings").join(hex(&ucloud));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(mapping).unwrap()).unwrap();
    assert_eq!(m["local"], local.as_str());
}

/// The drive id `list` shows for `ucloud` once UCloud has answered.
fn drive_after_add(stack: &Stack, ucloud: &str) -> String {
    let mut drive = String::new();
    let recorded = within(20, || {
        let _ = stack.registry(&["sync"]);
        drive = list(stack)
            .get(ucloud)
            .map(|r| r.2.clone())
            .unwrap_or_default();
        !drive.is_empty() && drive != "pending"
    });
    assert!(recorded, "the drive of {ucloud} is still {drive:?}");
    drive
}

/// UCloud keeps a user's home drive, and its provider id, when the user disconnects:
/// connected again, the user gets the same drive back, found by its provider id, and
/// the provider id is registered once only (the core answers a second one 409).
#[test]
fn a_user_who_connects_again_keeps_the_home_drive() {
    let _serial = serial();
    let stack = Stack::load();
    let ucloud = unique_account("RTestAgain#");
    let user = ScratchAccount::new(&stack, "rtest-", &ucloud);
    let provider_id = format!("{}-home-{}", stack.get("UCLOUD_IM_PROVIDER"), hex(&ucloud));
    let browse = format!("/ucloud/{}/files/browse", stack.get("UCLOUD_IM_PROVIDER"));
    let list_drive = |drive: &str| {
        let body = serde_json::json!({
            "resolvedCollection": {"id": drive},
            "browse": {"flags": {"path": format!("/{drive}")}, "itemsPerPage": 50}
        })
        .to_string();
        stack.call(Some(&ucloud), "POST", &browse, Some(&body))
    };
    let name = format!("kept-{}", std::process::id());
    let made = run_as(
        &user.name,
        &["sh", "-c", &format!("cd && echo kept > {name}")],
    );
    assert!(made.status.success());

    let out = stack.registry(&["add", &ucloud, &user.name, "--wait", "20"]);
    assert!(out.status.success(), "add: {}", described(&out));
    let drive = drive_after_add(&stack, &ucloud);
    let (status, answer) = list_drive(&drive);
    assert_eq!(status, 200, "{answer}");

    for round in 0..2 {
        let out = stack.registry(&["remove", &ucloud]);
        assert!(out.status.success(), "remove: {}", described(&out));
        let (status, answer) = list_drive(&drive);
        assert!(
            (400..500).contains(&status),
            "while disconnected: {status} {answer}"
        );

        let out = stack.registry(&["add", &ucloud, &user.name, "--wait", "20"]);
        assert!(out.status.success(), "add again: {}", described(&out));
        assert_eq!(drive_after_add(&stack, &ucloud), drive, "round {round}");
        let (status, answer) = list_drive(&drive);
        assert_eq!(status, 200, "after connecting again: {answer}");
        assert!(answer.to_string().contains(&name), "{answer}");
    }

    let log = sim_log(&stack);
    let registered = log
        .iter()
        .filter(|l| l["path"] == "/api/files/collections/control/register")
        .filter(|l| l["body"].to_string().contains(&provider_id))
        .count();
    assert_eq!(registered, 1, "{provider_id} registered {registered} times");
    let looked_up = log
        .iter()
        .filter(|l| {
            l["method"] == "GET"
                && l["path"] == "/api/files/collections/control/browse"
                && l["query"].to_string().contains(&provider_id)
        })
        .count();
    assert_eq!(looked_up, 3, "one look-up per connection");
    let _ = stack.registry(&["remove", &ucloud]);
}

/// A raw client of the registry socket as `user` (socat, so the kernel records that
/// user's uid for SO_PEERCRED): what the test writes to it goes to the socket, what
/// the registry answers comes back on its stdout, and it exits soon after the
/// registry closes the connection.
fn socket_client(stack: &Stack, user: &str) -> std::process::Child {
    let socket = stack.get("UCLOUD_IM_REGISTRY_SOCKET");
    Command::new("runuser")
        .current_dir("/")
        .args(["-u", user, "--", "socat", "-t", "0.2", "-"])
        .arg(format!("UNIX-CONNECT:{socket}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot run socat as a local user")
}

/// Waits up to `limit` for `child` to exit; whether it did.
fn exits_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.try_wait().unwrap().is_some()
}

fn answer_of(child: std::process::Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attack: a request dripped one byte at a time, each byte well inside any
/// per-read timeout. The registry cuts the whole request at its deadline (5 s).
#[test]
fn a_request_dripped_byte_by_byte_is_cut_at_the_deadline() {
    // Alone: it takes one of alice's places, which the next test counts.
    let _serial = serial();
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let mut client = socket_client(&stack, &alice);
    let mut input = client.stdin.take().unwrap();
    let started = Instant::now();
    let cut = std::thread::spawn(move || {
        for b in b"{\"op\":\"connect\",\"ticket\":\"".iter().cycle() {
            if started.elapsed() > Duration::from_secs(20)
                || std::io::Write::write_all(&mut input, &[*b]).is_err()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    assert!(
        exits_within(&mut client, Duration::from_secs(9)),
        "a dripping client still holds the registry after {:?}",
        started.elapsed()
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(4), "cut too early: {took:?}");
    let _ = client.kill();
    let _ = cut.join();
}

/// The attack: one account opens many connections and sends nothing useful, to fill
/// the socket (systemd's MaxConnections= counts everyone together, and
/// MaxConnectionsPerSource= means nothing on a unix socket). Its connections beyond
/// its share are answered "busy" at once; another account is served meanwhile.
#[test]
fn one_account_cannot_take_every_place_on_the_socket() {
    let _serial = serial();
    let stack = Stack::load();
    let (alice, bob) = (stack.local_of(ALICE), stack.local_of(BOB));
    let started = Instant::now();
    let mut held: Vec<_> = (0..8)
        .map(|_| {
            let mut c = socket_client(&stack, &alice);
            // Half a request, never finished.
            let _ = std::io::Write::write_all(c.stdin.as_mut().unwrap(), b"{");
            std::thread::sleep(Duration::from_millis(100));
            c
        })
        .collect();
    // Those beyond alice's share were answered and closed at once.
    let mut busy = 0;
    let mut waiting = Vec::new();
    for mut c in held.drain(..) {
        if exits_within(&mut c, Duration::from_millis(1500)) {
            let answer = answer_of(c);
            assert!(answer.contains("\"status\":75"), "{answer:?}");
            busy += 1;
        } else {
            waiting.push(c);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "too slow to tell"
    );
    assert_eq!(
        (busy, waiting.len()),
        (6, 2),
        "one account held more than its 2 places"
    );
    // Bob is served while alice holds her two.
    let mut b = socket_client(&stack, &bob);
    std::io::Write::write_all(b.stdin.as_mut().unwrap(), b"{\"op\":\"format-disk\"}\n").unwrap();
    assert!(
        exits_within(&mut b, Duration::from_secs(3)),
        "bob was not answered"
    );
    let answer = answer_of(b);
    assert!(answer.contains("\"status\":64"), "{answer:?}");
    // Alice's two are cut at the deadline, and her places come back.
    for mut c in waiting {
        assert!(exits_within(&mut c, Duration::from_secs(8)), "not cut");
    }
    let mut again = socket_client(&stack, &alice);
    std::io::Write::write_all(again.stdin.as_mut().unwrap(), b"{\"op\":\"format-disk\"}\n")
        .unwrap();
    assert!(exits_within(&mut again, Duration::from_secs(3)));
    assert!(answer_of(again).contains("\"status\":64"));
}

/// The attack: one account repeats `connect` with a made-up ticket, each refusal an
/// audit record. The log takes at most a burst and a summary per 30 s window of that
/// uid, and every refusal is either written or counted.
#[test]
fn a_flood_of_refused_connects_is_limited_in_the_audit_log() {
    const BURST: u64 = 10;
    let _serial = serial();
    let stack = Stack::load();
    let person = ScratchAccount::new(&stack, "rflood-", &unique_account("RFlood#"));
    let uid = person.uid();
    // A uid an earlier run left behind starts afresh.
    let count = stack
        .prefix()
        .join(format!("var/lib/ucloud-im/audit-limit/{uid}"));
    let _ = std::fs::remove_file(&count);
    let before = stack.audit_lines().len();
    let started = Instant::now();
    let out = Command::new("runuser")
        .current_dir("/")
        .args(["-u", &person.name, "--", "/bin/sh", "-c"])
        .arg(
            "i=0; while [ $i -lt 300 ]; do \
             echo '{\"op\":\"connect\",\"ticket\":\"made-up\",\"ucloud\":\"X#1\"}' \
             | socat -t 1 - \"UNIX-CONNECT:$0\" >/dev/null; i=$((i + 1)); done",
        )
        .arg(stack.get("UCLOUD_IM_REGISTRY_SOCKET"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let windows = started.elapsed().as_secs() / 30 + 1;
    let lines: Vec<Value> = stack.audit_lines()[before..]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["program"] == "ucloud-registry" && v["callerUid"] == uid)
        .collect();
    let written = lines.iter().filter(|v| v["decision"] == "refused").count() as u64;
    let summed: u64 = lines.iter().filter_map(|v| v["suppressed"].as_u64()).sum();
    let state = std::fs::read_to_string(&count).unwrap();
    let pending: u64 = state.split_whitespace().nth(2).unwrap().parse().unwrap();
    let _ = std::fs::remove_file(&count);
    assert!(written >= BURST, "{written} refusals written");
    assert!(
        lines.len() as u64 <= (BURST + 1) * windows,
        "{} lines in {windows} windows",
        lines.len()
    );
    assert_eq!(written + summed + pending, 300, "{state}");
}
