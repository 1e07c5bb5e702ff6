//! Attacks on the ticket: a local user watching /proc never sees it, and a person
//! sent another one's ticket is asked first.

use super::*;

/// `ucloud-connect ARGS` as `user` on a terminal (a pty from script(1)), with
/// `typed` as what the person types; the output is the terminal's, echo included.
fn redeem_on_terminal(stack: &Stack, user: &str, typed: &str, args: &[&str]) -> Output {
    let command = std::iter::once(connect_bin(stack))
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("runuser")
        .args(["-u", user, "--", "script", "-qec", &command, "/dev/null"])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run script(1)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `flock` holding the registry's lock until its standard input closes.
fn hold_the_registry_lock(stack: &Stack) -> std::process::Child {
    let lock = stack.state_dir().join("registry.lock");
    let holder = Command::new("flock")
        .arg(&lock)
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let held = || {
        !Command::new("flock")
            .args(["-n", "-E", "75"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    assert!(within(10, held), "cannot take the registry lock");
    holder
}

/// The pid of the ucloud-connect client `bin` of `uid` once it holds a socket: it
/// has read the ticket then (it reads, then asks).
fn asking_client(bin: &str, uid: u32) -> u32 {
    let mut pid = None;
    let asking = within(20, || {
        pid = client_pid(bin, uid);
        pid.is_some_and(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
        })
    });
    assert!(asking, "ucloud-connect never connected to the registry");
    pid.unwrap()
}

/// The stolen ticket: while ucloud-connect holds the ticket (the registry
/// is kept busy, so the client waits with it), another local user reads every
/// /proc/PID/cmdline and environ it can, as a watcher would: the ticket is in none.
/// The watcher does see the client's command line, so a ticket in it would be found.
#[test]
fn a_local_user_watching_proc_never_sees_the_ticket() {
    let stack = Stack::load();
    let ucloud = unique_account("KimWatched#");
    let victim = ScratchAccount::new(&stack, "ctest-", &ucloud);
    let watcher = ScratchAccount::new(&stack, "ctest-", &unique_account("MalloryWatch#"));
    let ticket = mint(&stack, &ucloud);
    let bin = connect_bin(&stack);

    // Hold the registry's lock: the registry answering the client waits for it.
    let mut holder = hold_the_registry_lock(&stack);

    let mut client = Command::new("runuser")
        .args(["-u", &victim.name, "--", &bin, "--yes"])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ticket}\n").as_bytes())
        .unwrap();
    let pid = asking_client(&bin, victim.uid());

    let seen = run_as(
        &watcher.name,
        &[
            "sh",
            "-c",
            "for d in /proc/[0-9]*; do cat $d/cmdline $d/environ; echo; done 2>/dev/null",
        ],
    );
    let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
    // Root reads what the watcher may not (the client's environment): not there either.
    let own = [
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
        std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default(),
    ]
    .concat();
    let still_waiting = Path::new(&format!("/proc/{pid}")).exists();

    drop(holder.stdin.take());
    holder.wait().unwrap();
    let out = client.wait_with_output().unwrap();

    assert!(
        still_waiting,
        "the client was gone before the watcher looked"
    );
    assert!(
        seen.contains(&format!("{bin}\0--yes")),
        "the watcher did not see the client's command line, so the test proves nothing"
    );
    assert!(!seen.contains(&ticket), "the watcher saw the ticket");
    assert!(
        !String::from_utf8_lossy(&own).contains(&ticket),
        "the ticket is in the client's command line or environment"
    );
    assert!(out.status.success(), "{}", described(&out));
    assert_eq!(
        stack.mapping_of(&ucloud).map(|m| m["local"].clone()),
        Some(json!(victim.name))
    );
}

/// The process running `bin` as `uid`, if there is one.
fn client_pid(bin: &str, uid: u32) -> Option<u32> {
    let bin = std::fs::canonicalize(bin).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()?;
        (exe == bin && real_uid == uid).then_some(pid)
    })
}

/// Linking by trickery: Mallory sends Victor the connect page of her own
/// ticket. The page names her UCloud user; ucloud-connect names it and Victor's
/// account and asks on the terminal, `--yes` or not; only yes connects, and without
/// a terminal only `--yes` does.
#[test]
fn a_person_sent_another_ones_ticket_is_asked_first() {
    let stack = Stack::load();
    let mallory = unique_account("MalloryTricks#");
    let victor = ScratchAccount::new(&stack, "ctest-", &mallory);

    let (status, answer) = integration(&stack, "connect", &mallory);
    assert_eq!(status, 200, "integration/connect: {answer}");
    let redirect = answer["redirectTo"].as_str().unwrap_or_default();
    let (ticket, _) = ticket_of(&stack, redirect);
    let page = stack.follow_link(redirect, &[]).text();
    assert!(
        page.contains(&format!("<strong id=\"user\">{mallory}</strong>")),
        "the page does not name {mallory}:\n{page}"
    );

    // No terminal, no --yes: refused, naming both, nothing linked.
    let out = redeem_as(&stack, Some(&victor.name), &format!("{ticket}\n"), &[]);
    assert_eq!(out.status.code(), Some(77), "{}", described(&out));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains(&mallory) && why.contains(&victor.name),
        "{why}"
    );
    assert!(stack.mapping_of(&mallory).is_none(), "linked without a yes");

    // On a terminal, with --yes even: the question names both, and "n" (or
    // anything but yes) links nothing.
    for answer in ["n", "", "yes please"] {
        let out = redeem_on_terminal(
            &stack,
            &victor.name,
            &format!("{ticket}\n{answer}\n"),
            &["--yes"],
        );
        let screen = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(77),
            "{answer:?}: {}",
            described(&out)
        );
        assert!(screen.contains("Paste the ticket"), "{screen}");
        assert!(
            screen.contains(&format!("Connect {mallory} to {}? [y/N]", victor.name)),
            "{screen}"
        );
        assert!(stack.mapping_of(&mallory).is_none(), "linked on {answer:?}");
    }
    // Victor, had it been his own UCloud user, answers y: connected.
    let out = redeem_on_terminal(&stack, &victor.name, &format!("{ticket}\ny\n"), &[]);
    assert!(out.status.success(), "{}", described(&out));
    assert_eq!(
        stack.mapping_of(&mallory).map(|m| m["local"].clone()),
        Some(json!(victor.name))
    );
}
