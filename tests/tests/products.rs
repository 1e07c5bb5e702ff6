//! The site's products as UCloud learns them: the running sender registered the
//! stack's product table with the simulator at start-up; registering again sends
//! nothing; a table that would change what UCloud keeps of a category for good, or
//! that is not a table at all, is refused with the reason and nothing is sent.
//!
//! These tests change the installed table for a moment (restored on drop) and run a
//! second sender with `--once` beside the stack's: they hold one lock.

use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use ucloud_im_tests::{run_as, sim_log, wait_until, Stack};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn table_path(stack: &Stack, file: &str) -> PathBuf {
    PathBuf::from(stack.get("UCLOUD_IM_ETC"))
        .join("products")
        .join(file)
}

fn table(stack: &Stack, file: &str) -> Value {
    serde_json::from_slice(&fs::read(table_path(stack, file)).unwrap()).unwrap()
}

/// Puts the installed table back, whatever the test did to it.
struct Restore {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Restore {
    fn new(stack: &Stack, file: &str) -> Restore {
        let path = table_path(stack, file);
        let bytes = fs::read(&path).unwrap();
        Restore { path, bytes }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        fs::write(&self.path, &self.bytes).unwrap();
    }
}

/// The simulator's log lines of product registrations.
fn registrations(stack: &Stack) -> Vec<Value> {
    sim_log(stack)
        .into_iter()
        .filter(|l| l["method"] == "POST" && l["path"] == "/api/products/v2")
        .collect()
}

fn browses(stack: &Stack) -> usize {
    sim_log(stack)
        .iter()
        .filter(|l| l["method"] == "GET" && l["path"] == "/api/products/v2/browse")
        .count()
}

/// `ucloud-sender --once` as the sender's account: registers, drains, exits.
fn sender_once(stack: &Stack) -> Output {
    let sender = stack.bin("ucloud-sender");
    run_as(
        &stack.get("UCLOUD_IM_SENDER_USER"),
        &[sender.to_str().unwrap(), "--once"],
    )
}

/// UCloud's catalogue of this provider, as the simulator serves it.
fn catalogue(stack: &Stack) -> Vec<Value> {
    let refresh = fs::read_to_string(stack.prefix().join("etc/ucloud-im/refresh-token")).unwrap();
    let call = |token: &str, method: &str, path: &str, body: Option<&str>| {
        let mut command = Command::new(stack.bin("ucloud-sim"));
        command.args([
            "call",
            "--url",
            &stack.get("UCLOUD_SIM_URL"),
            "--ca",
            &stack.get("UCLOUD_IM_CA"),
            "--token",
            token,
            method,
            path,
        ]);
        command.args(body);
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ucloud_im_tests::parse_call_output(&String::from_utf8_lossy(&out.stdout)).unwrap()
    };
    let body = json!({"items": [{"refreshToken": refresh.trim()}]}).to_string();
    let (status, answer) = call("-", "POST", "/auth/providers/refresh", Some(&body));
    assert_eq!(status, 200, "{answer}");
    let token = answer["responses"][0]["accessToken"].as_str().unwrap();
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let path = format!("/api/products/v2/browse?filterProvider={provider}&itemsPerPage=250");
    let (status, page) = call(token, "GET", &path, None);
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("a page of items").clone()
}

#[test]
fn the_product_table_is_in_uclouds_catalogue_after_start_up() {
    let _serial = serial();
    let stack = Stack::load();
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let held = catalogue(&stack);
    for (file, kind) in [("jobs.json", "COMPUTE"), ("files.json", "STORAGE")] {
        let t = table(&stack, file);
        for p in t["products"].as_array().unwrap() {
            let theirs = held
                .iter()
                .find(|h| h["name"] == p["id"] && h["category"]["name"] == p["category"])
                .unwrap_or_else(|| panic!("{} is not in UCloud's catalogue: {held:?}", p["id"]));
            assert_eq!(theirs["productType"], kind, "{theirs}");
            assert_eq!(theirs["category"]["provider"], json!(provider), "{theirs}");
            assert_eq!(theirs["price"], p["price"], "{theirs}");
            for field in ["cpu", "memoryInGigs", "gpu"] {
                if let Some(n) = p.get(field) {
                    assert_eq!(
                        theirs.get(field).unwrap_or(&json!(0)),
                        n,
                        "{field}: {theirs}"
                    );
                }
            }
            let c = t["categories"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == p["category"])
                .unwrap();
            assert_eq!(theirs["category"]["accountingUnit"], c["accountingUnit"]);
            assert_eq!(
                theirs["category"]["accountingFrequency"],
                c["accountingFrequency"]
            );
        }
    }
    // Sent by the sender with the provider's own token, never the refresh token.
    let sent = registrations(&stack);
    assert!(
        !sent.is_empty(),
        "no POST /api/products/v2 in the simulator's log"
    );
    for line in &sent {
        assert_eq!(line["status"], 200, "{line}");
    }
}

#[test]
fn registering_twice_changes_nothing() {
    let _serial = serial();
    let stack = Stack::load();
    let before = catalogue(&stack);
    let sent = registrations(&stack).len();
    let asked = browses(&stack);
    let out = sender_once(&stack);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("UCloud already holds the product table"),
        "{stderr}"
    );
    assert!(
        browses(&stack) > asked,
        "the sender did not look at UCloud's catalogue"
    );
    assert_eq!(
        registrations(&stack).len(),
        sent,
        "the same table was sent again"
    );
    assert_eq!(catalogue(&stack), before);
}

#[test]
fn a_change_of_a_categorys_terms_is_refused_with_the_reason() {
    let _serial = serial();
    let stack = Stack::load();
    let before = catalogue(&stack);
    let sent = registrations(&stack).len();
    let _restore = Restore::new(&stack, "jobs.json");
    let mut t = table(&stack, "jobs.json");
    let old = t["categories"][0]["accountingFrequency"]
        .as_str()
        .unwrap()
        .to_string();
    let new = if old == "PERIODIC_HOUR" {
        "PERIODIC_DAY"
    } else {
        "PERIODIC_HOUR"
    };
    t["categories"][0]["accountingFrequency"] = json!(new);
    t["products"][0]["price"] = json!(7);
    fs::write(table_path(&stack, "jobs.json"), t.to_string()).unwrap();

    let out = sender_once(&stack);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("accountingFrequency {old} -> {new}"))
            && stderr.contains("new category name"),
        "{stderr}"
    );
    // Not even the price, which UCloud would take: nothing of the table is sent.
    assert_eq!(registrations(&stack).len(), sent, "{stderr}");
    assert_eq!(catalogue(&stack), before);
}

#[test]
fn a_broken_table_is_refused_and_nothing_is_sent() {
    let _serial = serial();
    let stack = Stack::load();
    let sent = registrations(&stack).len();
    let _restore = Restore::new(&stack, "files.json");
    for (broken, reason) in [
        ("{\"products\": [", "not valid JSON"),
        ("{\"categories\": [], \"products\": [{\"id\": \"home\", \"category\": \"home\", \"price\": 1}]}",
         "not in this file's categories"),
    ] {
        fs::write(table_path(&stack, "files.json"), broken).unwrap();
        let out = sender_once(&stack);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("files.json") && stderr.contains(reason), "{stderr}");
    }
    assert_eq!(registrations(&stack).len(), sent);
    // The running sender saw the same tables (their mtimes changed) and refused them
    // too; put back, the table is looked at once more and found registered.
    let log = PathBuf::from(stack.get("UCLOUD_IM_STACK_LOGS")).join("sender.log");
    let held = || {
        fs::read_to_string(&log)
            .unwrap()
            .matches("UCloud already holds the product table")
            .count()
    };
    let before = held();
    drop(_restore);
    wait_until(
        "the running sender has looked at the restored table",
        20,
        || held() > before,
    );
    assert_eq!(registrations(&stack).len(), sent);
}

/// UCloud's core creates a job only for a product the provider registered and
/// supports ("bad machine type requested"): the simulator refuses one for a product
/// the site never registered, before the site hears of it.
#[test]
fn a_job_for_a_product_the_site_never_registered_is_refused_by_ucloud() {
    let stack = Stack::load();
    let alice = "AliceHansen#1001";
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros())
    .to_string();
    let mut job = stack.shell_job(alice, &id, "true", 1);
    job["specification"]["product"]["id"] = json!("no-such-product");
    job["status"]["resolvedProduct"]["name"] = json!("no-such-product");
    let creates = |stack: &Stack| {
        stack
            .audit_lines()
            .iter()
            .filter(|l| l.contains("\"jobs.create\""))
            .count()
    };
    let before = creates(&stack);
    let (status, body) = stack.call(
        Some(alice),
        "POST",
        &format!("/ucloud/{}/jobs", stack.get("UCLOUD_IM_PROVIDER")),
        Some(&json!({"items": [job.clone()]}).to_string()),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["why"]
            .as_str()
            .unwrap_or_default()
            .contains("bad machine type requested"),
        "{body}"
    );
    assert_eq!(creates(&stack), before, "the site was asked to create it");
    // Nor does UCloud learn of it as a job of its own (POST /sim/jobs).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(stack.get("UCLOUD_IM_CA"))
        .args([
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data",
        ])
        .arg(job.to_string())
        .arg(format!("{}/sim/jobs", stack.get("UCLOUD_SIM_URL")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}
