//! A job's web interface, opened the way UCloud opens one: `ucloud-sim web` plays
//! the core (the product's support, `jobs/interactiveSession` with WEB as the
//! user) and then the browser (the link on the job's own host, its cookie, the
//! application's pages and a WebSocket), all through the balancer. The job runs
//! the stack's test-web-app on real Slurm; the gateway starts jobs.web through the
//! setuid dispatcher, whose plugin connects to it as the job's owner.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::process::Command;
use ucloud_im_tests::{job_id, wait_until, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

/// `owner`'s job running the web application on `port`: the Job as the core
/// sends it (its application names the port) and the Slurm id.
fn web_job(stack: &Stack, owner: &str, port: u16) -> (Value, u64) {
    let id = job_id();
    let app = stack.get("UCLOUD_IM_WEB_APP");
    let script = format!("exec {app} {port}");
    let slurm_id = stack.create_job(owner, &id, &script, 15, 1, None);
    wait_until("the web application to listen", 60, || listening(port));
    let mut job = stack.shell_job(owner, &id, &script, 15);
    job["status"]["resolvedApplication"]["invocation"]["web"] =
        json!({"enabled": true, "port": port});
    (job, slurm_id)
}

fn listening(port: u16) -> bool {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `ucloud-sim web` as `user` with `args`; its JSON lines.
fn web(stack: &Stack, user: &str, args: &[&str]) -> Vec<Value> {
    let output = Command::new(stack.bin("ucloud-sim"))
        .arg("web")
        .args(["--url", &stack.get("UCLOUD_IM_LB_URL")])
        .args(["--ca", &stack.get("UCLOUD_IM_CA")])
        .args(["--signing-key", &stack.get("UCLOUD_SIM_PRIVATE_KEY")])
        .args(["--state", &stack.get("UCLOUD_IM_STATE")])
        .args(["--user", user])
        .args(args)
        .output()
        .expect("cannot run ucloud-sim web");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ucloud-sim web failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn line<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l.get(key).is_some())
        .unwrap_or_else(|| panic!("no {key} line in {lines:#?}"))
}

fn scancel(slurm_id: u64) {
    let _ = Command::new("scancel").arg(slurm_id.to_string()).status();
}

#[test]
fn the_owner_reaches_the_application_on_its_own_host_and_it_never_sees_the_cookie() {
    let stack = Stack::with_slurm();
    let port = free_port();
    let (job, slurm_id) = web_job(&stack, ALICE, port);
    let id = job["id"].as_str().unwrap().to_string();
    let lines = web(
        &stack,
        ALICE,
        &[
            "--get",
            "/",
            "--get",
            "/headers",
            "--websocket",
            "/ws",
            &job.to_string(),
        ],
    );
    let session = &line(&lines, "session")["session"];
    assert_eq!(session["type"], "web", "{session}");
    let host = format!("app-{id}-0.{}", stack.get("UCLOUD_IM_WEB_DOMAIN"));
    let link = session["redirectClientTo"].as_str().unwrap();
    assert!(link.starts_with(&format!("https://{host}:")), "{link}");
    // The link sets a host-only, HttpOnly, Secure cookie and sends the browser home.
    let opened = line(&lines, "link");
    assert_eq!(opened["link"], 302, "{opened}");
    assert_eq!(opened["location"], "/", "{opened}");
    let attributes = opened["cookieAttributes"].to_string();
    for wanted in ["Secure", "HttpOnly", "Path=/"] {
        assert!(attributes.contains(wanted), "{attributes}");
    }
    assert!(
        !attributes.contains("Domain"),
        "a host-only cookie: {attributes}"
    );
    // The application runs as Alice in her job.
    let pages: Vec<&Value> = lines.iter().filter(|l| l.get("path").is_some()).collect();
    assert_eq!(pages.len(), 2, "{lines:#?}");
    assert_eq!(pages[0]["status"], 200, "{lines:#?}");
    let hello = format!("hello from {} in job {slurm_id}", stack.local_of(ALICE));
    assert!(
        pages[0]["body"].as_str().unwrap().contains(&hello),
        "{lines:#?}"
    );
    // It sees the browser's other cookies, never the session's.
    let seen = pages[1]["body"].as_str().unwrap();
    let cookie = opened["cookie"].as_str().unwrap();
    assert!(
        seen.contains("theme=dark") && seen.contains("lang=da"),
        "{seen}"
    );
    assert!(
        !seen.contains("ucloud-im-app") && !seen.contains(cookie),
        "{seen}"
    );
    // WebSocket traffic goes through.
    let ws = line(&lines, "websocket");
    assert_eq!(ws["echo"], "echo: hello", "{ws}");
    scancel(slurm_id);
}

#[test]
fn nobody_else_and_nothing_else_reaches_it() {
    let stack = Stack::with_slurm();
    let port = free_port();
    let (job, slurm_id) = web_job(&stack, ALICE, port);
    let id = job["id"].as_str().unwrap().to_string();
    let host = format!("app-{id}-0.{}", stack.get("UCLOUD_IM_WEB_DOMAIN"));
    // Without a cookie: refused.
    let none = web(
        &stack,
        ALICE,
        &["--host", &host, "--cookie", "none", "--get", "/"],
    );
    assert_eq!(line(&none, "path")["status"], 401, "{none:#?}");
    // Bob, whom UCloud sends as the actor on Alice's job, gets no link.
    let bob = web(&stack, BOB, &[&job.to_string()]);
    assert_eq!(line(&bob, "refused")["refused"], 403, "{bob:#?}");
    // Bob's own application's cookie on Alice's host: refused as another's.
    let bob_port = free_port();
    let (bob_job, bob_slurm) = web_job(&stack, BOB, bob_port);
    let bobs = web(&stack, BOB, &[&bob_job.to_string()]);
    let bob_cookie = line(&bobs, "link")["cookie"].as_str().unwrap().to_string();
    let crossed = web(
        &stack,
        BOB,
        &["--host", &host, "--cookie", &bob_cookie, "--get", "/"],
    );
    // The gateway sends on only a cookie whose subject names the host: none here.
    let crossed = line(&crossed, "path");
    assert_eq!(crossed["status"], 401, "{crossed}");
    assert!(
        crossed["body"].as_str().unwrap().contains("no session"),
        "{crossed}"
    );
    // A link works once.
    let alice = web(&stack, ALICE, &[&job.to_string()]);
    let target = line(&alice, "link")["target"].as_str().unwrap().to_string();
    let again = web(
        &stack,
        ALICE,
        &["--host", &host, "--cookie", "none", "--get", &target],
    );
    let again = line(&again, "path");
    assert_eq!(again["status"], 401, "{again}");
    assert!(
        again["body"].as_str().unwrap().contains("used already"),
        "{again}"
    );
    // A port that is not the job owner's: Alice's cookie for a port Bob listens on.
    scancel(slurm_id);
    wait_until("Alice's application to stop", 30, || !listening(port));
    let mut moved = job.clone();
    moved["status"]["resolvedApplication"]["invocation"]["web"]["port"] = json!(bob_port);
    let (_, alice_slurm) = {
        let id2 = job_id();
        let app = stack.get("UCLOUD_IM_WEB_APP");
        let slurm = stack.create_job(ALICE, &id2, &format!("sleep 600; {app} 1"), 15, 1, None);
        moved["id"] = json!(id2);
        (id2, slurm)
    };
    wait_until("Alice's second job to run", 60, || {
        let out = Command::new("squeue")
            .args(["-h", "-j", &alice_slurm.to_string(), "-o", "%T"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "RUNNING"
    });
    let foreign = web(&stack, ALICE, &["--get", "/", &moved.to_string()]);
    let page = line(&foreign, "path");
    assert_eq!(page["status"], 403, "{foreign:#?}");
    assert!(
        page["body"]
            .as_str()
            .unwrap()
            .contains("not one of your processes"),
        "{page}"
    );
    scancel(alice_slurm);
    scancel(bob_slurm);
}
