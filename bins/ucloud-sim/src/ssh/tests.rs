use super::*;
use std::path::PathBuf;

const ALICE: &str = "AliceHansen#1001";
const BOB: &str = "BobNielsen#2002";
const CAROL: &str = "CarolBerg#3003";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

fn product(category: &str, free: bool) -> Value {
    json!({
        "name": format!("{category}-1"), "productType": "COMPUTE", "price": 1, "cpu": 1,
        "category": {"name": category, "provider": "hpc", "productType": "COMPUTE",
                     "accountingUnit": {"name": "Core", "namePlural": "Cores", "floatingPoint": false, "displayFrequencySuffix": true},
                     "accountingFrequency": "PERIODIC_MINUTE", "freeToUse": free}
    })
}

/// Alice and Bob connected, Carol known but not connected; `paid`: a compute
/// category that is not free to use, else only a free one.
fn scratch(name: &str, paid: bool) -> (PathBuf, Store) {
    let dir = std::env::temp_dir().join(format!("sim-ssh-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::init(&dir, "hpc").unwrap();
    for user in [ALICE, BOB, CAROL] {
        crate::owners::know(&store, Some(user), None).unwrap();
    }
    store
        .write("connections.json", &json!({"connected": [ALICE, BOB]}))
        .unwrap();
    let products = json!({"items": [product(if paid { "cpu" } else { "free" }, !paid)]});
    let a = catalogue::create(&store, "hpc", products.to_string().as_bytes()).unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    (dir, store)
}

fn add_body(user: &str, key: &str) -> Vec<u8> {
    json!({"username": user, "title": "laptop", "key": key})
        .to_string()
        .into_bytes()
}

fn sent(notice: &Notice) -> Value {
    serde_json::from_slice(notice.update.as_deref().expect("an update is sent")).unwrap()
}

#[test]
fn every_change_sends_all_the_users_keys() {
    let (dir, store) = scratch("send", true);
    let first = add(&store, "hpc", &add_body(ALICE, &format!("  {KEY} me\n"))).unwrap();
    let id = first.id.clone().unwrap();
    let update = sent(&first);
    assert_eq!(update["username"], ALICE);
    let keys = update["allKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    // Trimmed as the core stores it; the SshKey shape, nothing else.
    assert_eq!(
        keys[0]["specification"],
        json!({"title": "laptop", "key": format!("{KEY} me")})
    );
    assert_eq!(keys[0]["owner"], ALICE);
    assert_eq!(keys[0]["id"], json!(id));
    let mut fields: Vec<&String> = keys[0].as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["createdAt", "fingerprint", "id", "owner", "specification"]
    );
    // Bob's keys are never in Alice's update.
    add(&store, "hpc", &add_body(BOB, KEY)).unwrap();
    let second = add(&store, "hpc", &add_body(ALICE, KEY)).unwrap();
    assert_eq!(sent(&second)["allKeys"].as_array().unwrap().len(), 2);
    let gone = delete(&store, "hpc", &id).unwrap();
    assert_eq!(gone.user, ALICE);
    let left = sent(&gone);
    assert_eq!(left["allKeys"].as_array().unwrap().len(), 1);
    assert_ne!(left["allKeys"][0]["id"], json!(id));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn only_users_with_a_compute_allocation_are_sent_updates() {
    let (dir, store) = scratch("allocation", true);
    let carol = add(&store, "hpc", &add_body(CAROL, KEY)).unwrap();
    assert!(carol.update.is_none(), "Carol is not connected");
    let (dir2, free) = scratch("free", false);
    assert!(add(&free, "hpc", &add_body(ALICE, KEY))
        .unwrap()
        .update
        .is_none());
    let a = answer(&carol, None);
    assert_eq!(a.body["provider"]["sent"], false);
    assert!(a.body["id"].is_string());
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(dir2).unwrap();
}

#[test]
fn the_core_refuses_what_it_refuses_and_changes_nothing() {
    let (dir, store) = scratch("refuse", true);
    let before = store.read(FILE).unwrap();
    for (body, status) in [
        (add_body(ALICE, "ecdsa-sha1 AAAA"), 400),
        (add_body(ALICE, "command=\"x\" ssh-ed25519 AAAA"), 400),
        (add_body(ALICE, "   "), 400),
        (add_body("", KEY), 400),
        (b"{\"username\": 5}".to_vec(), 400),
        (b"not json".to_vec(), 400),
    ] {
        let e = add(&store, "hpc", &body).unwrap_err();
        assert_eq!(e.status, status, "{}", String::from_utf8_lossy(&body));
    }
    for id in ["30000", "0", "-1", "x", ""] {
        assert_eq!(delete(&store, "hpc", id).unwrap_err().status, 404, "{id}");
    }
    assert_eq!(store.read(FILE).unwrap(), before);
    // Anyone may add a key; UCloud knows them from then on.
    assert!(add(&store, "hpc", &add_body("Dora#4", KEY))
        .unwrap()
        .update
        .is_none());
    assert!(crate::owners::knows_user(&store, "Dora#4").unwrap());
    // A key the core takes by its prefix although no sshd would: the provider
    // must refuse it (the core does not look further).
    let hostile = format!("{KEY}\ncommand=\"sh\" {KEY}");
    assert!(add(&store, "hpc", &add_body(ALICE, &hostile)).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_provider_browses_the_keys_of_its_users_page_by_page() {
    let (dir, store) = scratch("browse", true);
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(
            add(&store, "hpc", &add_body(ALICE, KEY))
                .unwrap()
                .id
                .unwrap(),
        );
    }
    add(&store, "hpc", &add_body(CAROL, KEY)).unwrap();
    add(&store, "hpc", &add_body(BOB, KEY)).unwrap();
    let page = |body: Value| {
        let a = control_browse(&store, "hpc", body.to_string().as_bytes()).unwrap_or_else(|a| a);
        (a.status, a.body)
    };
    let (status, first) = page(json!({"itemsPerPage": 2}));
    assert_eq!(status, 200);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    assert_eq!(first["next"], json!(alice[1]));
    let (_, second) = page(json!({"itemsPerPage": 2, "next": first["next"]}));
    let owners: Vec<&str> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["owner"].as_str().unwrap())
        .collect();
    // Carol has no allocation here: her key is not the provider's to see.
    assert_eq!(owners, [ALICE, BOB]);
    let (_, all) = page(json!({}));
    assert_eq!(all["itemsPerPage"], 50);
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
    assert_eq!(all["next"], Value::Null);
    for (bad, status) in [
        (json!({"itemsPerPage": "2"}), 400),
        (json!({"next": 5}), 400),
        (json!({"next": "x"}), 500),
        (json!([]), 400),
    ] {
        assert_eq!(page(bad.clone()).0, status, "{bad}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
