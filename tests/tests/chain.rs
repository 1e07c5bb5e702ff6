//! End to end through the local stack: the UCloud simulator calls the gateway, which
//! runs the real setuid dispatcher, which runs the plugins as real local users.
//! Every test stands alone and can run any number of times against the same stack.
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::process::Command;
use ucloud_im_tests::{run_as, sim_log, uid_of, unique, Stack};

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";

fn provider_path(stack: &Stack, rest: &str) -> String {
    format!("/ucloud/{}/{rest}", stack.get("UCLOUD_IM_PROVIDER"))
}

/// A browse request as UCloud's core sends it: the resolved drive and the path in it.
fn browse_body(stack: &Stack, drive: &str) -> String {
    json!({
        "resolvedCollection": {
            "id": drive,
            "specification": {
                "title": "Home",
                "product": {"id": "home", "category": "home", "provider": stack.get("UCLOUD_IM_PROVIDER")}
            }
        },
        "browse": {
            "flags": {"path": format!("/{drive}")},
            "itemsPerPage": 1000,
            "next": null,
            "sortBy": "PATH",
            "sortDirection": "ascending"
        }
    })
    .to_string()
}

/// A UCloud error body: a non-empty `why` and an `errorCode`.
fn assert_error_body(body: &Value, context: &str) -> String {
    let why = body["why"].as_str().unwrap_or_default();
    assert!(!why.is_empty(), "{context}: no `why` in {body}");
    assert!(
        body["errorCode"].is_string(),
        "{context}: no `errorCode` in {body}"
    );
    why.to_string()
}

#[test]
fn manifest_says_mapping_is_enabled() {
    let stack = Stack::load();
    let path = provider_path(&stack, "integration/retrieveManifest");
    let (status, body) = stack.call(None, "GET", &path, None);
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["enabled"], json!(true), "{body}");
    let expire = body
        .get("expireAfterMs")
        .unwrap_or_else(|| panic!("no expireAfterMs in {body}"));
    assert!(expire.is_null() || expire.is_u64(), "{body}");
}

#[test]
fn job_products_are_ucloud_job_support() {
    let stack = Stack::load();
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let path = provider_path(&stack, "jobs/retrieveProducts");
    let (status, body) = stack.call(None, "GET", &path, None);
    assert_eq!(status, 200, "{path}: {body}");
    let responses = body["responses"].as_array().expect("responses: a list");
    assert!(!responses.is_empty(), "no job products: {body}");
    for support in responses {
        let product = &support["product"];
        assert!(
            product["id"].is_string() && product["category"].is_string(),
            "{support}"
        );
        assert_eq!(product["provider"], json!(provider), "{support}");
        assert_eq!(support["native"]["enabled"], json!(true), "{support}");
        assert!(support["native"]["logs"].is_boolean(), "{support}");
        assert_eq!(support["docker"]["enabled"], json!(false), "{support}");
        assert_eq!(
            support["virtualMachine"]["enabled"],
            json!(false),
            "{support}"
        );
    }
}

#[test]
fn file_collection_products_are_ucloud_fs_support() {
    let stack = Stack::load();
    let provider = stack.get("UCLOUD_IM_PROVIDER");
    let path = provider_path(&stack, "files/collections/retrieveProducts");
    let (status, body) = stack.call(None, "GET", &path, None);
    assert_eq!(status, 200, "{path}: {body}");
    let responses = body["responses"].as_array().expect("responses: a list");
    assert!(!responses.is_empty(), "no storage products: {body}");
    for support in responses {
        assert_eq!(support["product"]["provider"], json!(provider), "{support}");
        assert!(support["product"]["id"].is_string(), "{support}");
        for section in ["stats", "collection", "files"] {
            assert!(support[section].is_object(), "no {section} in {support}");
        }
        // Every field of Go's FSSupport (orchestrators/drives.go), none left to a
        // default the core would have to guess.
        for (section, fields) in [
            (
                "stats",
                &[
                    "sizeInBytes",
                    "sizeIncludingChildrenInBytes",
                    "visualization",
                    "modifiedAt",
                    "createdAt",
                    "accessedAt",
                    "unixPermissions",
                    "unixOwner",
                    "unixGroup",
                ][..],
            ),
            (
                "collection",
                &[
                    "aclModifiable",
                    "usersCanCreate",
                    "usersCanDelete",
                    "usersCanRename",
                ][..],
            ),
            (
                "files",
                &[
                    "aclModifiable",
                    "trashSupported",
                    "isReadOnly",
                    "searchSupported",
                    "streamingSearchSupported",
                    "sharesSupported",
                    "openInTerminal",
                ][..],
            ),
        ] {
            for field in fields {
                assert!(
                    support[section][field].is_boolean(),
                    "{section}.{field} missing in {support}"
                );
            }
            assert_eq!(
                support[section].as_object().unwrap().len(),
                fields.len(),
                "{section} has fields Go's FSSupport does not: {support}"
            );
        }
    }
}

#[test]
fn browse_of_alices_home_runs_as_alice() {
    let stack = Stack::load();
    let alice = stack.local_of(ALICE);
    let drive = stack.drive_of(ALICE);
    let name = unique("chain-browse");
    let made = run_as(
        &alice,
        &["sh", "-c", &format!("cd && printf hello > {name}")],
    );
    assert!(
        made.status.success(),
        "cannot create a file as {alice}: {}",
        String::from_utf8_lossy(&made.stderr)
    );

    let path = provider_path(&stack, "files/browse");
    let (status, body) = stack.call(
        Some(ALICE),
        "POST",
        &path,
        Some(&browse_body(&stack, &drive)),
    );
    let _ = run_as(&alice, &["sh", "-c", &format!("cd && rm -f {name}")]);

    assert_eq!(status, 200, "browse of {drive} as {ALICE}: {body}");
    let items = body["items"].as_array().expect("a page: items");
    let expected_id = format!("/{drive}/{name}");
    let file = items
        .iter()
        .find(|item| item["id"] == json!(expected_id))
        .unwrap_or_else(|| panic!("{expected_id} is not in the listing: {body}"));
    assert_eq!(file["status"]["type"], json!("FILE"), "{file}");
    assert_eq!(file["status"]["sizeInBytes"], json!(5), "{file}");
    // The listing reports the owner the kernel saw: Alice's file, listed by Alice.
    let owner = &file["status"]["unixOwner"];
    let uid = uid_of(&alice);
    assert!(
        owner == &json!(uid) || owner == &json!(uid.to_string()),
        "unixOwner {owner}, want {alice}'s uid {uid}: {file}"
    );
}

#[test]
fn bob_cannot_browse_alices_drive() {
    let stack = Stack::load();
    let drive = stack.drive_of(ALICE);
    let path = provider_path(&stack, "files/browse");
    let (status, body) = stack.call(Some(BOB), "POST", &path, Some(&browse_body(&stack, &drive)));
    assert!(
        (400..500).contains(&status),
        "{BOB} browsing {ALICE}'s drive {drive} got {status}: {body}"
    );
    assert!(body.get("items").is_none(), "a listing leaked: {body}");
    assert_error_body(&body, "Bob on Alice's drive");
}

#[test]
fn user_call_without_a_username_is_a_bad_request() {
    let stack = Stack::load();
    let drive = stack.drive_of(ALICE);
    let path = provider_path(&stack, "files/browse");
    let (status, body) = stack.call(None, "POST", &path, Some(&browse_body(&stack, &drive)));
    assert_eq!(status, 400, "browse without UCloud-Username: {body}");
    assert_error_body(&body, "no UCloud-Username");
}

#[test]
fn unmapped_user_is_refused_with_a_reason() {
    let stack = Stack::load();
    let stranger = format!("{}#4242", unique("Stranger").replace('-', ""));
    let drive = stack.drive_of(ALICE);
    let path = provider_path(&stack, "files/browse");
    let (status, body) = stack.call(
        Some(&stranger),
        "POST",
        &path,
        Some(&browse_body(&stack, &drive)),
    );
    assert!(
        (400..500).contains(&status),
        "{stranger} got {status}: {body}"
    );
    let why = assert_error_body(&body, "unmapped user");
    let lower = why.to_lowercase();
    assert!(
        why.contains(&stranger) || lower.contains("map") || lower.contains("connect"),
        "the why does not say the user is not mapped: {why:?}"
    );
}

#[test]
fn unknown_calls_are_not_found() {
    let stack = Stack::load();
    for path in [
        provider_path(&stack, "no/such/call"),
        "/ucloud/someoneelse/integration/retrieveManifest".to_string(),
        "/definitely/not/ucloud".to_string(),
    ] {
        let (status, body) = stack.call(None, "GET", &path, None);
        assert_eq!(status, 404, "{path}: {body}");
        assert_error_body(&body, &path);
    }
}

#[test]
fn expired_token_is_unauthorized() {
    let stack = Stack::load();
    let token = stack.token(&["--fresh", "--iat-offset", "-7200", "--lifetime", "600"]);
    let path = provider_path(&stack, "integration/retrieveManifest");
    let (status, body) = stack.call_with(None, Some(&token), "GET", &path, None);
    assert_eq!(status, 401, "expired token: {body}");
    assert_error_body(&body, "expired token");
}

#[test]
fn audit_log_gains_a_line_per_call() {
    let stack = Stack::load();
    let before = stack.audit_lines().len();
    let path = provider_path(&stack, "integration/retrieveManifest");
    let (status, _) = stack.call(None, "GET", &path, None);
    assert_eq!(status, 200);
    let stranger = format!("{}#7", unique("Audited").replace('-', ""));
    let browse = provider_path(&stack, "files/browse");
    let body = browse_body(&stack, &stack.drive_of(ALICE));
    let (status, _) = stack.call(Some(&stranger), "POST", &browse, Some(&body));
    assert!((400..500).contains(&status));

    let lines = stack.audit_lines();
    let new = &lines[before.min(lines.len())..];
    assert!(new.len() >= 2, "two calls, {} new audit lines", new.len());
    assert!(
        new.iter()
            .any(|l| l.contains("integration.retrieveManifest")),
        "no audit line for the manifest call among {new:?}"
    );
    assert!(
        new.iter().any(|l| l.contains(&stranger)),
        "the refusal of {stranger} is not audited: {new:?}"
    );
}

#[test]
fn simulator_received_both_home_drive_registrations() {
    let stack = Stack::load();
    let registrations: Vec<String> = sim_log(&stack)
        .into_iter()
        .map(|entry| entry.to_string())
        .filter(|text| text.contains("/api/files/collections/control/register"))
        .collect();
    assert!(
        !registrations.is_empty(),
        "the simulator saw no drive registration in {}",
        stack.get("UCLOUD_SIM_LOG")
    );
    for (ucloud, _) in stack.users() {
        assert!(
            registrations.iter().any(|r| r.contains(&ucloud)),
            "no drive registration for {ucloud} in {registrations:?}"
        );
    }
}

#[test]
fn stack_env_is_shell_sourceable_and_complete() {
    let stack = Stack::load();
    let file = ucloud_im_tests::env_file();
    for key in [
        "UCLOUD_IM_PROVIDER",
        "UCLOUD_IM_GATEWAY_URL",
        "UCLOUD_IM_CA",
        "UCLOUD_SIM_URL",
        "UCLOUD_SIM_PRIVATE_KEY",
        "UCLOUD_SIM_LOG",
        "UCLOUD_IM_USERS",
        "UCLOUD_IM_DRIVES",
        "UCLOUD_IM_DISPATCH",
        "UCLOUD_IM_GATEWAY_USER",
        "UCLOUD_IM_PLUGIN_DIR",
        "UCLOUD_IM_BIN",
        "UCLOUD_IM_AUDIT_LOG",
        "UCLOUD_IM_PREFIX",
        "UCLOUD_IM_STATE",
        "UCLOUD_IM_SERVICE_USER",
    ] {
        // The shell must read the same value the tests do.
        let output = Command::new("bash")
            .args([
                "-c",
                &format!("set -eu; . \"$1\"; printf %s \"${key}\""),
                "-",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "bash cannot source {}",
            file.display()
        );
        let from_shell = String::from_utf8_lossy(&output.stdout);
        assert_eq!(from_shell, stack.get(key), "{key}");
        assert!(!from_shell.is_empty(), "{key} is empty");
    }
    for (ucloud, _) in stack.users() {
        let drive = stack.drive_of(&ucloud);
        assert!(
            drive != "pending" && !drive.is_empty(),
            "{ucloud}: drive {drive:?}"
        );
    }
}

#[test]
fn stack_installs_a_root_owned_prefix_with_a_setuid_dispatcher() {
    use std::os::unix::fs::MetadataExt;
    let stack = Stack::load();
    let prefix = stack.prefix();
    let group_of = |name: &str| -> u32 {
        let output = Command::new("getent")
            .args(["group", name])
            .output()
            .unwrap();
        assert!(output.status.success(), "no group {name}");
        String::from_utf8_lossy(&output.stdout)
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap()
    };
    let expect = |path: std::path::PathBuf, mode: u32, gid: u32| {
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.uid(), 0, "{} is not root's", path.display());
        assert_eq!(meta.gid(), gid, "{} group", path.display());
        assert_eq!(
            meta.mode() & 0o7777,
            mode,
            "{} mode {:o}",
            path.display(),
            meta.mode() & 0o7777
        );
    };
    let outbox = group_of("ucloud-outbox");
    // Setuid root, executable by the gateway's group only.
    expect(
        stack.get("UCLOUD_IM_DISPATCH").into(),
        0o4750,
        group_of(&stack.get("UCLOUD_IM_GATEWAY_USER")),
    );
    // The installer makes the transfer-token key; nothing else may.
    expect(prefix.join("var/lib/ucloud-im/transfer.key"), 0o600, 0);
    assert!(
        std::fs::metadata(prefix.join("var/lib/ucloud-im/transfer.key"))
            .unwrap()
            .len()
            >= 32,
        "the transfer key is shorter than 32 bytes"
    );
    expect(stack.get("UCLOUD_IM_PLUGIN_DIR").into(), 0o755, 0);
    expect(stack.get("UCLOUD_IM_AUDIT_LOG").into(), 0o600, 0);
    expect(prefix.join("etc/ucloud-im/site.conf"), 0o644, 0);
    expect(prefix.join("etc/ucloud-im/ucloud_key.pub"), 0o644, 0);
    expect(
        prefix.join("etc/ucloud-im/refresh-token"),
        0o440,
        group_of("ucloud-send"),
    );
    expect(prefix.join("var/lib/ucloud-im/mappings"), 0o700, 0);
    // Where the dispatcher counts refused callers' records.
    expect(prefix.join("var/lib/ucloud-im/audit-limit"), 0o700, 0);
    expect(prefix.join("var/lib/ucloud-im/drives"), 0o755, 0);
    for dir in ["tmp", "queue", "replies", "failed", "usage"] {
        expect(
            prefix.join("var/lib/ucloud-im/outbox").join(dir),
            0o2770,
            outbox,
        );
    }
    // Every directory up from the prefix is root's and writable by nobody else.
    let mut dir = prefix.as_path();
    while let Some(parent) = dir.parent() {
        let meta = std::fs::metadata(dir).unwrap();
        assert_eq!(meta.uid(), 0, "{}", dir.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} is group/world-writable",
            dir.display()
        );
        dir = parent;
    }
    // Nothing the services use lives inside the clone.
    let clone = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    assert!(!prefix.starts_with(clone), "prefix inside the clone");
}

/// Runs one of the repository's shell plugins the way the dispatcher does (argv
/// `<call> /dev/fd/3` aside: the request is a plain file here) against a scratch
/// configuration directory.
fn run_plugin(call: &str, etc: &std::path::Path) -> std::process::Output {
    let plugins = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let request = etc.join("request.json");
    std::fs::write(&request, "{}").unwrap();
    Command::new("/bin/sh")
        .arg(plugins.join(call))
        .arg(&request)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("UCLOUD_IM_LIBEXEC", &plugins)
        .env("UCLOUD_IM_ETC", etc)
        .env("UCLOUD_PROVIDER", "hpc")
        .env("UCLOUD_CALL", call)
        .output()
        .unwrap()
}

/// The failure line the gateway reads: the last line of stderr.
fn failure_line(output: &std::process::Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not a failure line ({e}): {stderr}"))
}

#[test]
fn shell_plugins_answer_a_broken_site_config_with_a_clear_error() {
    let etc = std::env::temp_dir().join(unique("ucloud-im-plugin-etc"));
    std::fs::create_dir_all(etc.join("products")).unwrap();
    std::fs::write(etc.join("site.conf"), "provider = hpc\n").unwrap();

    // No product tables at all: the failure names the missing file.
    for (call, file) in [
        ("jobs.retrieveProducts", "products/jobs.json"),
        ("files.collections.retrieveProducts", "products/files.json"),
    ] {
        let output = run_plugin(call, &etc);
        assert!(!output.status.success(), "{call} without {file} succeeded");
        assert!(output.stdout.is_empty(), "{call} printed a body on failure");
        let failure = failure_line(&output);
        assert_eq!(failure["status"], json!(500), "{failure}");
        assert_eq!(failure["errorCode"], json!("SITE_CONFIG"), "{failure}");
        assert!(failure["why"].as_str().unwrap().contains(file), "{failure}");
    }

    // A table of the wrong shape is refused, not half-printed.
    std::fs::write(
        etc.join("products/jobs.json"),
        r#"{"products": {"id": "x"}}"#,
    )
    .unwrap();
    let output = run_plugin("jobs.retrieveProducts", &etc);
    assert!(!output.status.success() && output.stdout.is_empty());
    assert_eq!(failure_line(&output)["errorCode"], json!("SITE_CONFIG"));

    // A product of a category the table does not declare: refused (ucloud-sender
    // would not register it, so UCloud could never use it).
    std::fs::write(
        etc.join("products/jobs.json"),
        r#"{"categories": [], "products": [{"id": "gpu", "category": "gpu"}]}"#,
    )
    .unwrap();
    let output = run_plugin("jobs.retrieveProducts", &etc);
    assert!(!output.status.success() && output.stdout.is_empty());
    assert_eq!(failure_line(&output)["errorCode"], json!("SITE_CONFIG"));

    // A good table: one JobSupport per product, overrides applied.
    std::fs::write(
        etc.join("products/jobs.json"),
        r#"{"categories": [{"name": "gpu"}],
            "products": [{"id": "gpu", "category": "gpu", "native": {"terminal": false}},
                         {"id": "gpu-2", "category": "gpu"}]}"#,
    )
    .unwrap();
    let output = run_plugin("jobs.retrieveProducts", &etc);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        body["responses"][0]["product"],
        json!({"id": "gpu", "category": "gpu", "provider": "hpc"})
    );
    // A site turns the terminal off per product; it is on by default.
    assert_eq!(body["responses"][0]["native"]["terminal"], json!(false));
    assert_eq!(body["responses"][1]["native"]["terminal"], json!(true));
    assert_eq!(body["responses"][0]["native"]["web"], json!(false));

    // The manifest takes the mapping lifetime from site.conf, and refuses nonsense.
    std::fs::write(
        etc.join("site.conf"),
        "provider = hpc\nmapping_expire_after_ms = 60000\n",
    )
    .unwrap();
    let output = run_plugin("integration.retrieveManifest", &etc);
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(body, json!({"enabled": true, "expireAfterMs": 60000}));
    std::fs::write(
        etc.join("site.conf"),
        "mapping_expire_after_ms = 1; rm -rf /\n",
    )
    .unwrap();
    let output = run_plugin("integration.retrieveManifest", &etc);
    assert!(!output.status.success() && output.stdout.is_empty());
    assert_eq!(failure_line(&output)["errorCode"], json!("SITE_CONFIG"));

    let _ = std::fs::remove_dir_all(&etc);
}

/// A second checkout on the same machine must not start a second simulator and
/// sender on this prefix's outbox: its `scripts/stack up` refuses, naming the
/// checkout whose stack runs there, before it builds or changes anything.
#[test]
fn a_second_checkout_cannot_bring_up_a_stack_on_a_running_prefix() {
    let stack = Stack::load();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    let prefix = stack.prefix();
    let owner_file = prefix.join("stack-checkout");
    let owner = std::fs::read_to_string(&owner_file).unwrap();
    assert_eq!(
        owner.trim(),
        repo.to_str().unwrap(),
        "{}",
        owner_file.display()
    );

    // The other checkout: the stack scripts alone, which is all `up` reads before
    // it refuses.
    let other = std::env::temp_dir().join(unique("ucloud-im-other-checkout"));
    std::fs::create_dir_all(other.join("scripts/stack.d")).unwrap();
    for file in [
        "scripts/stack",
        "scripts/stack.d/common.sh",
        "scripts/stack.d/site.sh",
        "scripts/stack.d/hosts.sh",
    ] {
        std::fs::copy(repo.join(file), other.join(file)).unwrap();
    }
    let before = std::fs::read_dir(prefix.join("usr/bin")).unwrap().count();
    let out = Command::new("bash")
        .arg(other.join("scripts/stack"))
        .arg("up")
        .env("UCLOUD_IM_PREFIX", &prefix)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("runs from another checkout")
            && err.contains(repo.to_str().unwrap())
            && err.contains("--take-over"),
        "{err}"
    );
    // Nothing changed hands and nothing was stopped.
    assert_eq!(
        std::fs::read_to_string(&owner_file).unwrap().trim(),
        repo.to_str().unwrap()
    );
    assert_eq!(
        std::fs::read_dir(prefix.join("usr/bin")).unwrap().count(),
        before
    );
    let health = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "{}/ucloud-im/health",
            stack.get("UCLOUD_IM_GATEWAY_URL")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "200");
}

/// A bad UCLOUD_IM_PREFIX is refused before anything is made.
#[test]
fn a_prefix_that_is_not_a_plain_absolute_path_is_refused() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for prefix in [
        "relative/path",
        "/opt/with space",
        "/opt/../etc",
        "/",
        "/opt/$(id)",
    ] {
        let out = Command::new("bash")
            .arg(repo.join("scripts/stack"))
            .arg("status")
            .env("UCLOUD_IM_PREFIX", prefix)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{prefix}: {err}");
        assert!(
            err.contains("is not an absolute path of plain names"),
            "{prefix}: {err}"
        );
        assert!(!std::path::Path::new(prefix).join("stack-checkout").exists());
    }
}
