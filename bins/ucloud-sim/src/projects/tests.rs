use super::*;
use std::path::PathBuf;

fn setup(name: &str) -> (PathBuf, Store) {
    let dir = std::env::temp_dir().join(format!("sim-projects-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::init(&dir, "hpc").unwrap();
    let product = |name: &str, cat: &str, free: bool| {
        json!({"name": name, "productType": "COMPUTE", "category": {"name": cat, "provider": "hpc",
               "accountingUnit": {"name": "Core"}, "accountingFrequency": "PERIODIC_MINUTE", "freeToUse": free}})
    };
    let body = json!({"items": [product("c1", "cpu", false), product("f1", "free", true)]});
    catalogue::create(&store, "hpc", body.to_string().as_bytes()).unwrap();
    crate::owners::know(&store, Some("A#1"), None).unwrap();
    (dir, store)
}

fn run(a: Result<Answer, Answer>) -> (u16, Value) {
    let a = a.unwrap_or_else(|a| a);
    (a.status, a.body)
}

/// Every file a refusal must leave alone.
fn snapshot(store: &Store) -> Vec<Option<Value>> {
    [PROJECTS, ALLOCATIONS, USAGE]
        .iter()
        .map(|f| store.read(f).unwrap())
        .collect()
}

fn new_project(store: &Store, members: Value) -> String {
    let body = json!({"title": "Climate", "members": members}).to_string();
    let (status, v) = run(create(store, body.as_bytes(), &mut Vec::new()));
    assert_eq!(status, 200, "{v}");
    v["id"].as_str().unwrap().to_string()
}

fn pi_and_user() -> Value {
    json!([{"username": "A#1", "role": "PI"}, {"username": "B#2", "role": "USER"}])
}

#[test]
fn projects_take_one_pi_and_valid_names_only() {
    let (dir, store) = setup("create");
    let before = snapshot(&store);
    let m = |u: Value, r: &str| json!({"username": u, "role": r});
    for body in [
        "".to_string(),
        "[]".into(),
        "{".into(),
        json!({"members": pi_and_user()}).to_string(),
        json!({"title": "", "members": pi_and_user()}).to_string(),
        json!({"title": "%x", "members": pi_and_user()}).to_string(),
        json!({"title": "a\nb", "members": pi_and_user()}).to_string(),
        json!({"title": 7, "members": pi_and_user()}).to_string(),
        json!({"title": "t"}).to_string(),
        json!({"title": "t", "members": {}}).to_string(),
        json!({"title": "t", "members": []}).to_string(),
        json!({"title": "t", "members": [m(json!("A#1"), "USER")]}).to_string(),
        json!({"title": "t", "members": [m(json!("A#1"), "PI"), m(json!("B#2"), "PI")]})
            .to_string(),
        json!({"title": "t", "members": [m(json!("A#1"), "OWNER")]}).to_string(),
        json!({"title": "t", "members": [m(json!("A#1"), "pi")]}).to_string(),
        json!({"title": "t", "members": [m(json!(""), "PI")]}).to_string(),
        json!({"title": "t", "members": [m(json!("a\u{7}b"), "PI")]}).to_string(),
        json!({"title": "t", "members": [m(json!(7), "PI")]}).to_string(),
        json!({"title": "t", "members": [m(json!("x".repeat(200)), "PI")]}).to_string(),
        json!({"title": "t", "members": [m(json!("A#1"), "PI"), m(json!("A#1"), "USER")]})
            .to_string(),
        json!({"title": "t", "members": ["A#1"]}).to_string(),
    ] {
        let mut changes = Vec::new();
        let (status, v) = run(create(&store, body.as_bytes(), &mut changes));
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(snapshot(&store), before, "{body}");
        assert!(changes.is_empty());
    }
    let mut changes = Vec::new();
    let body = json!({"title": "Climate", "members": pi_and_user(), "extra": 1}).to_string();
    let (status, v) = run(create(&store, body.as_bytes(), &mut changes));
    assert_eq!(status, 200, "{v}");
    let id = v["id"].as_str().unwrap();
    assert!(looks_like_uuid(id), "{id}");
    assert_eq!(&id[14..15], "4", "a version 4 UUID");
    assert_eq!(changes, [Change::Project(id.to_string())]);
    // Members are users UCloud knows, the project an owner it knows.
    assert!(crate::owners::knows_user(&store, "B#2").unwrap());
    let (p, _) = project_json(&store, id).unwrap().unwrap();
    assert_eq!(p["specification"]["title"], "Climate");
    assert_eq!(
        p["status"]["members"],
        json!([{"username": "A#1", "role": "PI"}, {"username": "B#2", "role": "USER"}])
    );
    assert_eq!(p["createdAt"], p["modifiedAt"]);
    assert_eq!(p["status"]["groups"], json!([]));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn members_change_roles_and_the_pi_stays() {
    let (dir, store) = setup("members");
    let id = new_project(&store, pi_and_user());
    let modified = |s: &Store| project_json(s, &id).unwrap().unwrap().1;
    let set = |body: Value, changes: &mut Vec<Change>| {
        run(set_member(
            &store,
            &id,
            body.to_string().as_bytes(),
            changes,
        ))
    };
    let before = snapshot(&store);
    for body in [
        json!({"username": "C#3"}),
        json!({"username": "C#3", "role": "OWNER"}),
        json!({"username": "", "role": "USER"}),
        json!({"username": "a\tb", "role": "USER"}),
        json!({"role": "USER"}),
        json!([1]),
        // The PI becomes something else only by another member becoming PI.
        json!({"username": "A#1", "role": "ADMIN"}),
    ] {
        let mut changes = Vec::new();
        assert_eq!(set(body.clone(), &mut changes).0, 400, "{body}");
        assert_eq!(snapshot(&store), before, "{body}");
        assert!(changes.is_empty());
    }
    let body = br#"{"username":"C#3","role":"USER"}"#;
    assert_eq!(
        run(set_member(&store, "no-such", body, &mut Vec::new())).0,
        404
    );
    // The same role again changes nothing, not even modifiedAt.
    let mut changes = Vec::new();
    assert_eq!(
        set(json!({"username": "B#2", "role": "USER"}), &mut changes).0,
        200
    );
    assert!(changes.is_empty());
    assert_eq!(snapshot(&store), before);
    let first = modified(&store);
    assert_eq!(
        set(json!({"username": "C#3", "role": "ADMIN"}), &mut changes).0,
        200
    );
    assert_eq!(changes, [Change::Project(id.clone())]);
    assert!(modified(&store) > first);
    assert!(crate::owners::knows_user(&store, "C#3").unwrap());
    // A new PI takes over; the old one becomes an admin.
    set(json!({"username": "B#2", "role": "PI"}), &mut changes);
    assert_eq!(role_of(&store, &id, "B#2").unwrap().as_deref(), Some("PI"));
    assert_eq!(
        role_of(&store, &id, "A#1").unwrap().as_deref(),
        Some("ADMIN")
    );
    // Removal: the PI cannot go, a stranger is 404, a member goes.
    let before = snapshot(&store);
    assert_eq!(
        run(remove_member(&store, &id, "B#2", &mut Vec::new())).0,
        400
    );
    assert_eq!(
        run(remove_member(&store, &id, "Z#9", &mut Vec::new())).0,
        404
    );
    assert_eq!(
        run(remove_member(&store, "nope", "A#1", &mut Vec::new())).0,
        404
    );
    assert_eq!(snapshot(&store), before);
    let before_removal = modified(&store);
    let mut changes = Vec::new();
    assert_eq!(run(remove_member(&store, &id, "A#1", &mut changes)).0, 200);
    assert_eq!(changes, [Change::Project(id.clone())]);
    assert_eq!(role_of(&store, &id, "A#1").unwrap(), None);
    assert!(modified(&store) > before_removal);
    std::fs::remove_dir_all(dir).unwrap();
}

fn alloc(store: &Store, owner: Value, category: &str, quota: Value) -> (u16, Value) {
    let body =
        json!({"owner": owner, "category": {"name": category, "provider": "hpc"}, "quota": quota});
    run(allocate(
        store,
        "hpc",
        body.to_string().as_bytes(),
        &mut Vec::new(),
    ))
}

#[test]
fn allocations_need_a_known_owner_and_a_category_of_the_provider() {
    let (dir, store) = setup("alloc");
    let id = new_project(&store, pi_and_user());
    let project = json!({"type": "project", "projectId": id});
    let user = json!({"type": "user", "username": "A#1"});
    let before = snapshot(&store);
    for (owner, category, quota, want) in [
        (user.clone(), "nope", json!(10), 404),
        (
            json!({"type": "user", "username": "Nobody#9"}),
            "cpu",
            json!(10),
            404,
        ),
        (
            json!({"type": "project", "projectId": "0000"}),
            "cpu",
            json!(10),
            404,
        ),
        (
            json!({"type": "USER", "username": "A#1"}),
            "cpu",
            json!(10),
            400,
        ),
        (json!({"type": "user"}), "cpu", json!(10), 400),
        (json!("A#1"), "cpu", json!(10), 400),
        (user.clone(), "cpu", json!(-1), 400),
        (user.clone(), "cpu", json!("10"), 400),
        (user.clone(), "cpu", json!(1.5), 400),
        (user.clone(), "cpu", Value::Null, 400),
    ] {
        let (status, v) = alloc(&store, owner.clone(), category, quota.clone());
        assert_eq!(status, want, "{owner} {category} {quota}: {v}");
        assert_eq!(snapshot(&store), before);
    }
    // Another provider's category is not this provider's to give.
    let body = json!({"owner": user, "category": {"name": "cpu", "provider": "other"}, "quota": 1});
    let (status, v) = run(allocate(
        &store,
        "hpc",
        body.to_string().as_bytes(),
        &mut Vec::new(),
    ));
    assert_eq!(
        (status, v["why"].as_str()),
        (404, Some("unknown product category"))
    );
    for body in [&b""[..], b"[]", b"{\"owner\":"] {
        assert_eq!(run(allocate(&store, "hpc", body, &mut Vec::new())).0, 400);
    }
    assert_eq!(snapshot(&store), before);

    let mut changes = Vec::new();
    let body =
        json!({"owner": project, "category": {"name": "cpu", "provider": "hpc"}, "quota": 100});
    let (status, v) = run(allocate(
        &store,
        "hpc",
        body.to_string().as_bytes(),
        &mut changes,
    ));
    assert_eq!((status, &v["id"]), (200, &json!("1")));
    assert_eq!(
        changes,
        [Change::Wallet {
            category: "cpu".into(),
            owner: id.clone()
        }]
    );
    alloc(&store, project.clone(), "cpu", json!(50));
    let w = wallet(&store, "hpc", "cpu", &id).unwrap().unwrap();
    assert_eq!(
        (w.quota, w.usage, w.locked, w.active),
        (150, 0, false, true)
    );
    assert_eq!(w.owner, project);
    assert!(w.updated_ms > 0);
    assert_eq!(w.category["accountingUnit"]["name"], "Core");
    assert!(active_here(&store, &id).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sim_quota_is_one_allocation_and_null_removes_them() {
    let (dir, store) = setup("quota");
    let set = |body: &str| run(set_quota(&store, body.as_bytes(), &mut Vec::new())).0;
    assert_eq!(set(r#"{"owner":"A#1","category":"cpu","quota":60}"#), 200);
    assert_eq!(set(r#"{"owner":"A#1","category":"cpu","quota":40}"#), 200);
    let w = wallet(&store, "hpc", "cpu", "A#1").unwrap().unwrap();
    assert_eq!((w.quota, w.active), (40, true));
    assert_eq!(quota(&store, "cpu", "A#1").unwrap(), Some(40));
    // A project reference is told by its UUID shape, as the core tells it.
    let p = "0b2c5a8e-0d0a-4b1e-9c2f-3a4b5c6d7e8f";
    assert_eq!(
        set(&format!(r#"{{"owner":"{p}","category":"cpu","quota":1}}"#)),
        200
    );
    assert_eq!(
        wallet(&store, "hpc", "cpu", p).unwrap().unwrap().owner,
        json!({"type": "project", "projectId": p})
    );
    assert_eq!(set(r#"{"owner":"A#1","category":"cpu","quota":null}"#), 200);
    assert_eq!(quota(&store, "cpu", "A#1").unwrap(), None);
    assert!(wallet(&store, "hpc", "cpu", "A#1").unwrap().is_none());
    for bad in [
        r#"{"owner":"A#1","category":"cpu","quota":"1"}"#,
        r#"{"owner":"","category":"cpu","quota":1}"#,
        r#"{"category":"cpu","quota":1}"#,
        "nope",
    ] {
        assert_eq!(set(bad), 400, "{bad}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

fn job(creator: &str, project: Option<&str>, category: &str) -> Value {
    json!({"id": "7", "owner": {"createdBy": creator, "project": project},
           "specification": {"product": {"id": "c1", "category": category, "provider": "hpc"}}})
}

#[test]
fn project_jobs_need_a_member_and_an_allocation() {
    let (dir, store) = setup("jobs");
    let id = new_project(&store, pi_and_user());
    let check = |j: &Value| {
        check_job(&store, "hpc", j)
            .err()
            .map(|a| (a.status, a.body["why"].clone()))
    };
    // A personal job, and a job of a project known only from jobs: as before.
    assert_eq!(check(&job("A#1", None, "cpu")), None);
    assert_eq!(check(&job("A#1", Some("legacy-p"), "cpu")), None);
    assert_eq!(
        check(&job("A#1", Some(&id), "cpu")),
        Some((
            402,
            json!("You do not have any valid allocations for 'cpu'")
        ))
    );
    assert_eq!(
        check(&job("A#1", Some(&id), "free")),
        Some((
            402,
            json!("You do not have any valid allocations for 'hpc'")
        ))
    );
    alloc(
        &store,
        json!({"type": "project", "projectId": id}),
        "cpu",
        json!(10),
    );
    assert_eq!(check(&job("A#1", Some(&id), "cpu")), None);
    assert_eq!(check(&job("B#2", Some(&id), "free")), None);
    assert_eq!(
        check(&job("C#3", Some(&id), "cpu")),
        Some((403, json!("Bad token supplied")))
    );
    // An ended allocation is no allocation.
    end(&store, &id, &mut Vec::new()).unwrap();
    assert_eq!(check(&job("A#1", Some(&id), "cpu")).unwrap().0, 402);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_jobs_permissions_follow_the_actors_role() {
    let (dir, store) = setup("perms");
    let id = new_project(
        &store,
        json!([{"username": "A#1", "role": "PI"}, {"username": "B#2", "role": "USER"},
               {"username": "C#3", "role": "ADMIN"}, {"username": "D#4", "role": "USER"}]),
    );
    let by_b = job("B#2", Some(&id), "cpu");
    let perms = |j: &Value, actor: &str| job_permissions(&store, j, actor).unwrap();
    let all = Some(vec!["ADMIN", "READ", "EDIT"]);
    assert_eq!(perms(&by_b, "B#2"), all);
    assert_eq!(perms(&by_b, "A#1"), all);
    assert_eq!(perms(&by_b, "C#3"), all);
    assert_eq!(perms(&by_b, "D#4"), Some(vec![]));
    assert_eq!(perms(&by_b, "E#5"), None);
    let own = job("A#1", None, "cpu");
    assert_eq!(perms(&own, "A#1"), all);
    assert_eq!(perms(&own, "B#2"), None);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn only_uuids_look_like_uuids() {
    assert!(looks_like_uuid("0b2c5a8e-0d0a-4b1e-9c2f-3a4b5c6d7e8f"));
    assert!(looks_like_uuid("0B2C5A8E-0D0A-4B1E-9C2F-3A4B5C6D7E8F"));
    for s in [
        "",
        "A#1",
        "p-1",
        "0b2c5a8e-0d0a-4b1e-9c2f-3a4b5c6d7e8",
        "0b2c5a8e-0d0a-4b1e-9c2f-3a4b5c6d7e8fa",
        "0b2c5a8e0d0a-4b1e-9c2f-3a4b5c6d7e8f0",
        "0b2c5a8g-0d0a-4b1e-9c2f-3a4b5c6d7e8f",
    ] {
        assert!(!looks_like_uuid(s), "{s}");
    }
}
