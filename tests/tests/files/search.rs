//! Streaming search (`files.streamingSearch`): the simulator plays UCloud's core
//! and searches over the WebSocket through the balancer, as the core reaches a
//! site; the plugin walks the tree as the user.

use super::*;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// `ucloud-sim search` as `user` through the balancer, with `extra` options.
fn search_command(stack: &Stack, user: &str, folder: &str, query: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(stack.bin("ucloud-sim"));
    command
        .arg("search")
        .args(["--url", &stack.get("UCLOUD_IM_LB_URL")])
        .args(["--ca", &stack.get("UCLOUD_IM_CA")])
        .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
        .args(["--state", &stack.get("UCLOUD_IM_STATE")])
        .args(["--user", user])
        .env("UCLOUD_IM_PROVIDER", stack.get("UCLOUD_IM_PROVIDER"))
        .args(extra)
        .args([folder, query]);
    command
}

/// Runs a search to its end; its JSON lines.
fn search(stack: &Stack, user: &str, folder: &str, query: &str, extra: &[&str]) -> Vec<Value> {
    let output = search_command(stack, user, folder, query, extra)
        .output()
        .expect("cannot run ucloud-sim search");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ucloud-sim search failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// The payloads of the stream's messages.
fn payloads(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| &l["payload"])
        .collect()
}

/// The ids of every result, in the order they came.
fn found(lines: &[Value]) -> Vec<String> {
    payloads(lines)
        .iter()
        .filter(|p| p["type"] == "result")
        .flat_map(|p| p["batch"].as_array().unwrap().iter())
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// The stream ended as a finished search does: results, then end_of_results.
fn assert_finished(lines: &[Value]) {
    let p = payloads(lines);
    let last = p
        .last()
        .unwrap_or_else(|| panic!("no messages: {lines:#?}"));
    assert_eq!(**last, json!({"type": "end_of_results", "batch": []}));
    assert!(
        p[..p.len() - 1].iter().all(|m| m["type"] == "result"),
        "{lines:#?}"
    );
    assert_eq!(lines.last().unwrap()["close"], 1000, "{lines:#?}");
}

/// 100 folders of 999 files, `d0/f0{suffix}` ... `d99/f998{suffix}`: 100,000
/// entries, made as `user` in `dir` with one xargs per folder.
fn big_tree(user: &str, dir: &str, suffix: &str) {
    as_user(
        user,
        &format!(
            "cd {dir} && i=0; while [ $i -lt 100 ]; do mkdir d$i && \
             (cd d$i && seq -f 'f%g{suffix}' 0 998 | xargs touch) || exit 1; i=$((i+1)); done"
        ),
    );
}

/// The search plugins running as `uid` (their environment names the call).
fn search_plugins_of(uid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if !entry.metadata().is_ok_and(|m| m.uid() == uid) {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|v| v == b"UCLOUD_CALL=files.streamingSearch")
        {
            found.push(pid);
        }
    }
    found
}

fn kill(child: &mut Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

#[test]
fn a_search_of_100000_entries_finds_names_in_pages() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "search-big");
    big_tree(&alice, &s.dir, "");
    as_user(
        &alice,
        &format!(
            "cd {} && touch d7/needle-a.txt d42/sub-NEEDLE d99/xNeEdLex && mkdir d3/needle-dir",
            s.dir
        ),
    );
    let folder = format!("/{drive}/{}", s.dir);

    let lines = search(&stack, ALICE, &folder, "needle", &[]);
    assert_finished(&lines);
    let mut ids = found(&lines);
    ids.sort();
    let want: Vec<String> = [
        "d3/needle-dir",
        "d42/sub-NEEDLE",
        "d7/needle-a.txt",
        "d99/xNeEdLex",
    ]
    .iter()
    .map(|n| format!("{folder}/{n}"))
    .collect();
    assert_eq!(ids, want, "{lines:#?}");
    // The UFile shapes files.browse gives.
    let all: Vec<&Value> = payloads(&lines)
        .into_iter()
        .flat_map(|p| p["batch"].as_array().unwrap())
        .collect();
    let dir = all
        .iter()
        .find(|f| f["id"].as_str().unwrap().ends_with("needle-dir"))
        .unwrap();
    assert_eq!(dir["status"]["type"], "DIRECTORY");
    assert_eq!(dir["status"]["unixOwner"], uid_of(&alice));

    // f99, f990 ... f998 in each folder: 1000 results, in pages of at most 250.
    let lines = search(&stack, ALICE, &folder, "F99", &[]);
    assert_finished(&lines);
    let ids = found(&lines);
    assert_eq!(ids.len(), 1000, "{:?}", &ids[..ids.len().min(20)]);
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 1000, "no result twice");
    let pages: Vec<usize> = payloads(&lines)
        .iter()
        .filter(|p| p["type"] == "result")
        .map(|p| p["batch"].as_array().unwrap().len())
        .collect();
    assert!(pages.len() >= 4, "{pages:?}");
    assert!(pages.iter().all(|n| (1..=250).contains(n)), "{pages:?}");
    assert!(ids.iter().all(|id| id.starts_with(&format!("{folder}/d"))));
}

#[test]
fn a_client_that_leaves_stops_the_plugin() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let uid = uid_of(&alice);
    let drive = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "search-leave");
    // Long names: the results of all 100,000 (some 40 MB) are far more than the
    // pipes, queues and sockets between the plugin and a client that stops
    // reading hold, so the plugin waits until the client leaves.
    big_tree(&alice, &s.dir, &"-x".repeat(100));
    let folder = format!("/{drive}/{}", s.dir);
    let mut child = search_command(&stack, ALICE, &folder, "f", &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run ucloud-sim search");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["payload"]["type"], "result", "{first}");
    kill(&mut child, "-STOP");
    std::thread::sleep(Duration::from_millis(1500));
    let running = search_plugins_of(uid);
    assert_eq!(running.len(), 1, "Alice's search plugin: {running:?}");
    let left = Instant::now();
    kill(&mut child, "-KILL");
    let _ = child.wait();
    while !search_plugins_of(uid).is_empty() {
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "the plugin still runs after the client left: {:?}",
            search_plugins_of(uid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn links_are_never_followed_and_unreadable_folders_are_skipped() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let bob = stack.local_of(BOB);
    let drive = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "search-links");
    let theirs = ScratchDir::new(&bob, "search-theirs");
    as_user(
        &bob,
        &format!("chmod 755 {0} && touch {0}/bobs-secret", theirs.dir),
    );
    as_user(
        &alice,
        &format!(
            "cd {} && mkdir -p a/b locked && touch a/b/secret-mine locked/secret-locked && \
             ln -s {} a/to-bob && ln -s / a/to-root && ln -s .. a/b/up && ln -s loop loop && \
             chmod 000 locked",
            s.dir,
            theirs.local("")
        ),
    );
    let folder = format!("/{drive}/{}", s.dir);
    let lines = search(&stack, ALICE, &folder, "secret", &[]);
    assert_finished(&lines);
    // Bob's file lies behind one link, and / (with /etc/passwd, which anyone may
    // read) behind another: neither is entered. The locked folder is not
    // readable to Alice: it is skipped, and the walk goes on.
    assert_eq!(found(&lines), [format!("{folder}/a/b/secret-mine")]);
    let lines = search(&stack, ALICE, &folder, "passwd", &[]);
    assert_finished(&lines);
    assert!(found(&lines).is_empty(), "{lines:#?}");
    // A link is found by its own name, as a link.
    let lines = search(&stack, ALICE, &folder, "to-", &[]);
    let mut ids = found(&lines);
    ids.sort();
    assert_eq!(
        ids,
        [format!("{folder}/a/to-bob"), format!("{folder}/a/to-root")]
    );
    let kinds: Vec<&Value> = payloads(&lines)
        .into_iter()
        .flat_map(|p| p["batch"].as_array().unwrap())
        .map(|f| &f["status"]["type"])
        .collect();
    assert!(kinds.iter().all(|k| *k == "SOFT_LINK"), "{kinds:?}");
    as_user(&alice, &format!("chmod 755 {}/locked", s.dir));
}

#[test]
fn another_users_drive_is_not_searchable() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let s = ScratchDir::new(&alice, "search-private");
    as_user(&alice, &format!("touch {}/private-notes", s.dir));
    let folder = format!("/{drive}/{}", s.dir);
    // UCloud's core refuses: the drive is not Bob's.
    let lines = search(&stack, BOB, &folder, "private", &[]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["refused"], 404, "{lines:#?}");
    // And so does the provider, sent the search anyway.
    let lines = search(&stack, BOB, &folder, "private", &["--unchecked"]);
    assert!(found(&lines).is_empty(), "{lines:#?}");
    let response = lines
        .iter()
        .find(|l| l["type"] == "response")
        .unwrap_or_else(|| panic!("no response: {lines:#?}"));
    assert_eq!(response["status"], 404, "{lines:#?}");
    // Alice finds it.
    let lines = search(&stack, ALICE, &folder, "private", &[]);
    assert_eq!(found(&lines), [format!("{folder}/private-notes")]);
}

#[test]
fn the_core_and_the_provider_refuse_bad_searches() {
    let stack = Stack::load();
    let drive = stack.drive_of(ALICE);
    // Queries UCloud's core never sends.
    for query in ["   ", "a\nb"] {
        let lines = search(&stack, ALICE, &format!("/{drive}"), query, &[]);
        assert_eq!(lines[0]["refused"], 400, "{query:?}: {lines:#?}");
    }
    // Sent anyway: the provider's own answer.
    let lines = search(
        &stack,
        ALICE,
        &format!("/{drive}/../x"),
        "a",
        &["--unchecked"],
    );
    assert!(found(&lines).is_empty(), "{lines:#?}");
    let response = lines.iter().find(|l| l["type"] == "response").unwrap();
    assert_eq!(response["status"], 400, "{lines:#?}");
    // Not the search call: closed with 1008, no plugin run.
    let raw_message = json!({"call": "files.provider.other.streamingSearch",
        "streamId": "s", "payload": {"query": "a", "currentFolder": format!("/{drive}")}});
    let frame = hex_bytes(&ws_client_frame(0x1, raw_message.to_string().as_bytes()));
    let lines = search(&stack, ALICE, &format!("/{drive}"), "a", &["--raw", &frame]);
    assert_eq!(lines.last().unwrap()["close"], 1008, "{lines:#?}");
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
