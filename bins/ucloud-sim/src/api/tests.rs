use super::*;
use std::path::PathBuf;

fn scratch(name: &str) -> (PathBuf, Store) {
    let dir = std::env::temp_dir().join(format!("sim-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::init(&dir, "hpc").unwrap();
    (dir, store)
}

fn answer(a: Result<Answer, Answer>) -> (u16, Value) {
    let a = a.unwrap_or_else(|a| a);
    (a.status, a.body)
}

fn drive(pg: &str) -> Value {
    json!({"providerGeneratedId": pg, "createdBy": "A#1",
           "spec": {"title": "Home", "product": {"id": "home", "category": "home", "provider": "hpc"}}})
}

fn bulk(items: &[Value]) -> Vec<u8> {
    json!({"items": items}).to_string().into_bytes()
}

/// Every state file, to show a refusal changed none.
fn snapshot(store: &Store) -> Vec<Option<Value>> {
    [
        "drives.json",
        "jobs.json",
        "connections.json",
        "owners.json",
    ]
    .iter()
    .map(|f| store.read(f).unwrap())
    .collect()
}

#[test]
fn a_provider_id_is_registered_once() {
    let (dir, store) = scratch("drives");
    let (status, body) = answer(register_drives(
        &store,
        "hpc",
        &bulk(&[drive("h-a"), drive("h-b")]),
    ));
    assert_eq!(
        (status, &body),
        (200, &json!({"responses": [{"id": "100"}, {"id": "101"}]}))
    );
    let before = snapshot(&store);
    let (status, body) = answer(register_drives(&store, "hpc", &bulk(&[drive("h-a")])));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["errorCode"], "CONFLICT");
    let after = snapshot(&store);
    assert_eq!(
        before[0].as_ref().unwrap()["drives"],
        after[0].as_ref().unwrap()["drives"]
    );
    // A job may not take a drive's provider id either: the reservation is the
    // provider's, across resource types.
    let job = json!({"providerGeneratedId": "h-b", "spec": {"product": {"id": "c1", "category": "cpu", "provider": "hpc"}}});
    assert_eq!(answer(register_jobs(&store, "hpc", &bulk(&[job]))).0, 409);
    // Items before a conflicting one stay registered, as in the core.
    let (status, _) = answer(register_drives(
        &store,
        "hpc",
        &bulk(&[drive("h-c"), drive("h-a")]),
    ));
    assert_eq!(status, 409);
    let drives = store.read("drives.json").unwrap().unwrap();
    assert!(drives["drives"]
        .as_object()
        .unwrap()
        .values()
        .any(|d| d["providerGeneratedId"] == "h-c"));
    // Without a provider id nothing is reserved.
    let mut anonymous = drive("x");
    anonymous["providerGeneratedId"] = Value::Null;
    assert_eq!(
        answer(register_drives(
            &store,
            "hpc",
            &bulk(&[anonymous.clone(), anonymous])
        ))
        .0,
        200
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn registrations_read_the_go_type() {
    let (dir, store) = scratch("shape");
    // `specification` is not a field of ProviderRegisteredResource: the product
    // is then empty, so not this provider's.
    let old_shape = json!({"providerGeneratedId": "h", "specification": {"title": "Home", "product": {"id": "home", "category": "home", "provider": "hpc"}}});
    let before = snapshot(&store);
    let mut other = drive("o");
    other["spec"]["product"]["provider"] = json!("elsewhere");
    let mut bad_labels = drive("l");
    bad_labels["spec"]["labels"] = json!({"A": "1", "a": "2"});
    for (body, want) in [
        (bulk(&[old_shape]), 403),
        (bulk(&[drive("ok"), other]), 403),
        (bulk(&[json!({"providerGeneratedId": 7})]), 400),
        (bulk(&[json!({"spec": {"title": ["x"]}})]), 400),
        (bulk(&[json!({"createdBy": false})]), 400),
        (b"{\"items\":{}}".to_vec(), 400),
        (b"nope".to_vec(), 400),
        (b"".to_vec(), 400),
    ] {
        let (status, answer) = answer(register_drives(&store, "hpc", &body));
        assert_eq!(status, want, "{}: {answer}", String::from_utf8_lossy(&body));
        assert_eq!(
            snapshot(&store)[..1],
            before[..1],
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    // A 400 for the labels after the reservation: the id stays reserved, as in the core.
    assert_eq!(
        answer(register_drives(&store, "hpc", &bulk(&[bad_labels]))).0,
        400
    );
    assert_eq!(
        answer(register_drives(&store, "hpc", &bulk(&[drive("l")]))).0,
        409
    );
    // Keys match without case; the title and owner are read.
    let (status, body) = answer(register_drives(
        &store,
        "hpc",
        br#"{"ITEMS":[{"Spec":{"title":"T","product":{"id":"home","category":"home","provider":"hpc"},"labels":{" Key ":"v"}},"providergeneratedid":"g","project":""}]}"#,
    ));
    assert_eq!(status, 200, "{body}");
    let id = body["responses"][0]["id"].as_str().unwrap().to_string();
    let d = &store.read("drives.json").unwrap().unwrap()["drives"][&id];
    assert_eq!(d["specification"]["title"], "T");
    assert_eq!(d["specification"]["labels"], json!({"key": "v"}));
    assert_eq!(d["owner"], json!({"createdBy": "_ucloud", "project": null}));
    assert_eq!(d["providerGeneratedId"], "g");
    // An empty bulk is accepted and answers {}.
    assert_eq!(
        answer(register_drives(&store, "hpc", b"{}")),
        (200, json!({}))
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn drives_are_found_by_provider_id() {
    let (dir, store) = scratch("browse");
    register_drives(
        &store,
        "hpc",
        &bulk(&[drive("h-a"), drive("h-b"), drive("h-c")]),
    )
    .unwrap();
    let (status, page) = answer(browse_drives(
        &store,
        "hpc",
        Some("filterProviderIds=h-c,nope,h-a"),
    ));
    assert_eq!(status, 200);
    let ids: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, [&json!("102"), &json!("100")]);
    assert_eq!(
        (&page["next"], &page["itemsPerPage"]),
        (&Value::Null, &json!(1000))
    );
    assert_eq!(page["items"][0]["providerGeneratedId"], "h-c");
    let many = vec!["h-a"; 1001].join(",");
    let (_, page) = answer(browse_drives(
        &store,
        "hpc",
        Some(&format!("filterProviderIds={many}")),
    ));
    assert_eq!(page["items"], json!([]));
    // Without the filter: every drive, paged.
    let (_, page) = answer(browse_drives(&store, "hpc", Some("itemsPerPage=2")));
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], "101");
    let (_, rest) = answer(browse_drives(
        &store,
        "hpc",
        Some("itemsPerPage=2&next=101"),
    ));
    assert_eq!(rest["items"][0]["id"], "102");
    assert_eq!(rest["next"], Value::Null);
    for bad in [
        "includeProduct=yes",
        "itemsPerPage=2.5",
        "filterCreatedAfter=-1",
    ] {
        assert_eq!(
            answer(browse_drives(&store, "hpc", Some(bad))).0,
            400,
            "{bad}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn updates_need_a_known_job_and_answer_empty() {
    let (dir, store) = scratch("jobs");
    store
        .put_job(
            &json!({"id": "77", "owner": {"createdBy": "A#1"}, "status": {"state": "IN_QUEUE"}}),
        )
        .unwrap();
    let body =
        br#"{"items":[{"id":"77","update":{"state":"RUNNING","status":"started","timestamp":5}}]}"#;
    assert_eq!(answer(update_jobs(&store, body)), (200, json!({})));
    let (_, job) = answer(retrieve_job(&store, Some("id=77")));
    assert_eq!(job["status"]["state"], "RUNNING");
    assert_eq!(
        job["updates"][0],
        json!({"state": "RUNNING", "status": "started", "timestamp": 5})
    );
    assert_eq!(job["owner"]["createdBy"], "A#1");
    // The core reads ids with ParseInt: "+77" and "077" are job 77, "0x4d" none.
    assert_eq!(answer(retrieve_job(&store, Some("id=%2B77"))).0, 200);
    assert_eq!(answer(retrieve_job(&store, Some("id=077"))).0, 200);
    for q in [
        Some("id=0x4d"),
        Some("id=77.0"),
        Some("id= 77"),
        Some("id=78"),
        Some("id="),
        None,
    ] {
        assert_eq!(answer(retrieve_job(&store, q)).0, 404, "{q:?}");
    }
    assert_eq!(
        answer(retrieve_job(&store, Some("id=77&includeParameters=yes"))).0,
        400
    );
    let updates = store.read(&Store::updates_file("77")).unwrap();
    for (bad, want) in [
        (
            &br#"{"items":[{"id":"78","update":{"state":"RUNNING"}}]}"#[..],
            404,
        ),
        (
            br#"{"items":[{"id":"77","update":{}},{"id":"x","update":{}}]}"#,
            404,
        ),
        (br#"{"items":[{"id":77,"update":{}}]}"#, 400),
        (br#"{"items":[{"id":"77","update":{"state":1}}]}"#, 400),
        (
            br#"{"items":[{"id":"77","update":{"timestamp":"5"}}]}"#,
            400,
        ),
        (
            br#"{"items":[{"id":"77","update":{"timestamp":null}}]}"#,
            400,
        ),
        (b"[]", 400),
    ] {
        assert_eq!(
            answer(update_jobs(&store, bad)).0,
            want,
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(store.read(&Store::updates_file("77")).unwrap(), updates);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn registered_jobs_get_ids_and_their_spec() {
    let (dir, store) = scratch("register");
    let job = json!({"providerGeneratedId": "slurm-1", "createdBy": "A#1",
                     "spec": {"name": "j", "product": {"id": "c1", "category": "cpu", "provider": "hpc"}}});
    let (status, body) = answer(register_jobs(
        &store,
        "hpc",
        &bulk(std::slice::from_ref(&job)),
    ));
    assert_eq!(
        (status, &body),
        (200, &json!({"responses": [{"id": "50000"}]}))
    );
    let (_, got) = answer(retrieve_job(&store, Some("id=50000")));
    assert_eq!(got["specification"]["name"], "j");
    assert_eq!(got["providerGeneratedId"], "slurm-1");
    let before = snapshot(&store);
    assert_eq!(answer(register_jobs(&store, "hpc", &bulk(&[job]))).0, 409);
    let legacy = json!({"providerGeneratedId": "slurm-2", "specification": {"product": {"provider": "hpc"}}});
    assert_eq!(
        answer(register_jobs(&store, "hpc", &bulk(&[legacy]))).0,
        403
    );
    assert_eq!(
        answer(register_jobs(
            &store,
            "hpc",
            br#"{"items":[{"spec":{"replicas":"1"}}]}"#
        ))
        .0,
        400
    );
    assert_eq!(
        snapshot(&store)[1].as_ref().unwrap()["registered"],
        before[1].as_ref().unwrap()["registered"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn connections_take_a_username_only() {
    let (dir, store) = scratch("conn");
    assert_eq!(
        answer(connection(&store, br#"{"username":"A#1"}"#, true)),
        (200, json!({}))
    );
    connection(&store, br#"{"UserName":"B#2","extra":1}"#, true).unwrap();
    connection(&store, br#"{"username":"A#1"}"#, false).unwrap();
    let connected = || store.read("connections.json").unwrap().unwrap()["connected"].clone();
    assert_eq!(connected(), json!(["B#2"]));
    // The bulk form is a request for the user "": Go ignores `items`.
    assert_eq!(
        answer(connection(
            &store,
            br#"{"items":[{"username":"C#3"}]}"#,
            true
        ))
        .0,
        200
    );
    assert_eq!(connected(), json!(["B#2", ""]));
    let before = snapshot(&store);
    for bad in [
        &br#"{"username":7}"#[..],
        br#"{"username":["A#1"]}"#,
        b"[]",
        b"",
        b"{",
    ] {
        assert_eq!(answer(connection(&store, bad, true)).0, 400);
        assert_eq!(snapshot(&store), before);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn ids_are_read_as_the_core_reads_them() {
    assert_eq!(resource_id("42").as_deref(), Some("42"));
    assert_eq!(resource_id("+042").as_deref(), Some("42"));
    assert_eq!(resource_id("0"), None);
    assert_eq!(resource_id("-3"), None);
    assert_eq!(resource_id("c0"), None);
    assert!(is_canonical_id("42"));
    assert!(!is_canonical_id("042"));
}

#[test]
fn a_project_drive_keeps_its_project_and_an_unknown_project_is_refused_as_the_core_does() {
    let (dir, store) = scratch("project-drives");
    let mut changes = Vec::new();
    let created = crate::projects::create(
        &store,
        br#"{"title":"Physics","members":[{"username":"A#1","role":"PI"}]}"#,
        &mut changes,
    );
    let (_, body) = answer(created);
    let project = body["id"].as_str().unwrap().to_string();
    let item = |p: &str, pg: &str| {
        json!({"providerGeneratedId": pg, "createdBy": "_ucloud", "project": p,
               "projectAllRead": true, "projectAllWrite": true,
               "spec": {"title": "Physics", "product": {"id": "home", "category": "home", "provider": "hpc"}}})
    };
    let (status, body) = answer(register_drives(
        &store,
        "hpc",
        &bulk(&[item(&project, &format!("hpc-project-{project}"))]),
    ));
    assert_eq!(status, 200, "{body}");
    let id = body["responses"][0]["id"].as_str().unwrap().to_string();
    let drives = store.read("drives.json").unwrap().unwrap();
    let d = &drives["drives"][&id];
    assert_eq!(
        d["owner"],
        json!({"createdBy": "_ucloud", "project": project})
    );
    assert_eq!(
        d["acl"],
        json!([{"entity": {"type": "project_group", "projectId": project,
                           "group": format!("{project}-all-users")},
                "permissions": ["READ", "EDIT"]}])
    );
    // Found again by its provider id, with its project.
    let query = format!("filterProviderIds=hpc-project-{project}&itemsPerPage=250");
    let (status, page) = answer(browse_drives(&store, "hpc", Some(&query)));
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["id"], json!(id));
    assert_eq!(page["items"][0]["owner"]["project"], json!(project));
    // An unknown project has no all-users group: 500, no provider id taken.
    let before = store.read("drives.json").unwrap().unwrap();
    let unknown = "00000000-0000-4000-8000-000000000000";
    let (status, body) = answer(register_drives(
        &store,
        "hpc",
        &bulk(&[item(unknown, "hpc-project-x")]),
    ));
    assert_eq!(status, 500, "{body}");
    let after = store.read("drives.json").unwrap().unwrap();
    assert_eq!(before["drives"], after["drives"]);
    assert!(after["leaked"].get("hpc-project-x").is_none());
    // Without the all-users flags the core asks for no group: registered.
    let mut plain = item(unknown, "hpc-project-y");
    plain["projectAllRead"] = json!(false);
    plain["projectAllWrite"] = json!(false);
    let (status, _) = answer(register_drives(&store, "hpc", &bulk(&[plain])));
    assert_eq!(status, 200);
    std::fs::remove_dir_all(dir).unwrap();
}
