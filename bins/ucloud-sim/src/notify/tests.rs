use super::*;
use crate::{catalogue, usage};
use serde_json::{json, Value};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use ucloud_wire::apm::{Event, Refs};

fn setup(name: &str) -> (PathBuf, Mutex<Store>) {
    let dir = std::env::temp_dir().join(format!("sim-notify-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, _) = Store::init(&dir, "hpc").unwrap();
    let product = |name: &str, cat: &str, free: bool| {
        json!({"name": name, "productType": "COMPUTE", "category": {"name": cat, "provider": "hpc",
               "accountingUnit": {"name": "Core"}, "accountingFrequency": "PERIODIC_MINUTE", "freeToUse": free}})
    };
    let body = json!({"items": [product("c1", "cpu", false), product("f1", "free", true)]});
    catalogue::create(&store, "hpc", body.to_string().as_bytes()).unwrap();
    crate::owners::know(&store, Some("A#1"), None).unwrap();
    (dir, Mutex::new(store))
}

fn verify(token: &str) -> Result<(), String> {
    match token {
        "good" => Ok(()),
        _ => Err("not the provider's token".into()),
    }
}

/// The provider's end: masked frames out, the server's messages in.
struct Client {
    sock: UnixStream,
    decoder: Decoder,
    refs: Refs,
}

impl Client {
    fn send_raw(&mut self, opcode: u8, payload: &[u8]) {
        self.sock
            .write_all(&websocket::encode(opcode, payload, Some([1, 2, 3, 4])))
            .unwrap();
    }

    fn send(&mut self, frames: &[Frame]) {
        self.send_raw(OP_BINARY, &apm::encode(frames, true));
    }

    /// The next message, `None` when none comes within `wait`.
    fn message(&mut self, wait: Duration) -> Option<Message> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next().unwrap() {
                return Some(m);
            }
            if Instant::now() > deadline {
                return None;
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The events of the next message (or none within `wait`).
    fn events(&mut self, wait: Duration) -> Option<Vec<Event>> {
        match self.message(wait)? {
            Message::Binary(b) => {
                let frames = apm::decode(&b, true).expect("frames the core would write");
                Some(
                    self.refs
                        .apply(frames)
                        .expect("references bound before use"),
                )
            }
            other => panic!("not a binary message: {other:?}"),
        }
    }

    /// Every event of the messages that arrive until `quiet` passes without one.
    fn drain(&mut self, quiet: Duration) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(events) = self.events(quiet) {
            all.extend(events);
        }
        all
    }
}

/// Runs a session against a client in `test`; the session's outcome is returned.
fn with_session(
    store: &Mutex<Store>,
    hub: &Hub,
    test: impl FnOnce(&mut Client),
) -> Result<(), String> {
    let (server, client) = UnixStream::pair().unwrap();
    server.set_read_timeout(Some(POLL)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let cx = Context {
        provider: "hpc",
        store,
        hub,
        verify: &verify,
    };
    std::thread::scope(|s| {
        let session = s.spawn(|| {
            let mut server = server;
            session(&mut server, &[], &cx)
        });
        let mut c = Client {
            sock: client,
            decoder: Decoder::new(Role::Client, 1 << 24),
            refs: Refs::default(),
        };
        test(&mut c);
        drop(c);
        session.join().unwrap()
    })
}

fn auth(token: &str, from: i64) -> Frame {
    Frame::Auth {
        replay_from_ms: from,
        flags: FLAG_INCLUDE_RETIRED,
        token: token.into(),
    }
}

fn change(
    store: &Mutex<Store>,
    hub: &Hub,
    f: impl FnOnce(&Store, &mut Vec<Change>) -> Result<crate::answer::Answer, crate::answer::Answer>,
) -> Value {
    let mut changes = Vec::new();
    let answer = f(&store.lock().unwrap(), &mut changes).unwrap_or_else(|a| a);
    assert_eq!(answer.status, 200, "{}", answer.body);
    hub.broadcast(&changes);
    answer.body
}

fn new_project(store: &Mutex<Store>, hub: &Hub, members: Value) -> String {
    let body = json!({"title": "Climate", "members": members}).to_string();
    change(store, hub, |s, c| projects::create(s, body.as_bytes(), c))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn allocate(store: &Mutex<Store>, hub: &Hub, owner: Value, category: &str, quota: i64) {
    let body =
        json!({"owner": owner, "category": {"name": category, "provider": "hpc"}, "quota": quota})
            .to_string();
    change(store, hub, |s, c| {
        projects::allocate(s, "hpc", body.as_bytes(), c)
    });
}

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

#[test]
fn a_bad_token_or_no_auth_first_closes() {
    let (dir, store) = setup("auth");
    let hub = Hub::default();
    let outcome = with_session(&store, &hub, |c| {
        c.send(&[auth("forged", 0)]);
        assert!(matches!(
            c.message(WAIT),
            Some(Message::Close(Some(websocket::CLOSE_POLICY), _))
        ));
    });
    assert!(outcome.unwrap_err().contains("not authenticated"));
    for first in [
        apm::encode(
            &[Frame::ReplayUser {
                username: "A#1".into(),
            }],
            true,
        ),
        vec![9, 9, 9],
        vec![],
    ] {
        let outcome = with_session(&store, &hub, |c| {
            c.send_raw(OP_BINARY, &first);
            assert!(matches!(c.message(WAIT), Some(Message::Close(Some(_), _))));
        });
        assert!(outcome.is_err(), "{first:?}");
    }
    // Unmasked frames from a client are a protocol error.
    let outcome = with_session(&store, &hub, |c| {
        c.sock
            .write_all(&websocket::encode(
                OP_BINARY,
                &apm::encode(&[auth("good", 0)], true),
                None,
            ))
            .unwrap();
        assert!(matches!(c.message(WAIT), Some(Message::Close(Some(_), _))));
    });
    assert!(outcome.is_err());
    // The closed sessions' channels are dropped at the next change.
    hub.broadcast(&[Change::Project("x".into())]);
    assert!(hub.lock().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

fn wallet_of(events: &[Event], owner: &Value) -> Option<(i64, i64, bool)> {
    events.iter().rev().find_map(|e| match e {
        Event::Wallet {
            owner: o,
            quota,
            usage,
            locked,
            ..
        } if o == owner => Some((*quota, *usage, *locked)),
        _ => None,
    })
}

#[test]
fn replay_then_live_updates_then_replay_user() {
    let (dir, store) = setup("stream");
    let hub = Hub::default();
    let id = new_project(
        &store,
        &hub,
        json!([{"username": "A#1", "role": "PI"}, {"username": "B#2", "role": "USER"}]),
    );
    let user = json!({"type": "user", "username": "A#1"});
    let project = json!({"type": "project", "projectId": id});
    allocate(&store, &hub, user.clone(), "cpu", 60);
    allocate(&store, &hub, project.clone(), "cpu", 1000);
    // A project without an allocation here is never sent.
    let lonely = new_project(&store, &hub, json!([{"username": "B#2", "role": "PI"}]));

    let outcome = with_session(&store, &hub, |c| {
        c.send(&[auth("good", 0)]);
        let replayed = c.drain(QUIET);
        assert_eq!(wallet_of(&replayed, &user), Some((60, 0, false)));
        assert_eq!(wallet_of(&replayed, &project), Some((1000, 0, false)));
        let projects: Vec<&Value> = replayed
            .iter()
            .filter_map(|e| match e {
                Event::Project { project, .. } => Some(project),
                _ => None,
            })
            .collect();
        assert!(
            projects.iter().all(|p| p["id"] == id.as_str()),
            "{projects:?}"
        );
        assert!(!projects.is_empty());
        assert_eq!(projects[0]["status"]["members"][1]["username"], "B#2");
        let Some(Event::Wallet {
            category,
            project: p,
            ..
        }) = replayed.iter().find(|e| {
            matches!(
                e,
                Event::Wallet {
                    project: Some(_),
                    ..
                }
            )
        })
        else {
            panic!("{replayed:?}");
        };
        assert_eq!(category, &json!({"name": "cpu", "provider": "hpc"}));
        assert_eq!(p.as_ref().unwrap()["id"], id.as_str());

        // A member joins: the project comes again, members and all.
        let body = br#"{"username":"C#3","role":"ADMIN"}"#;
        change(&store, &hub, |s, ch| projects::set_member(s, &id, body, ch));
        let events = c.events(WAIT).expect("a project frame");
        let Event::Project { project: p, .. } = &events[0] else {
            panic!("{events:?}");
        };
        assert_eq!(p["status"]["members"].as_array().unwrap().len(), 3);
        // Nothing for a project without an allocation here.
        let body = br#"{"username":"C#3","role":"USER"}"#;
        change(&store, &hub, |s, ch| {
            projects::set_member(s, &lonely, body, ch)
        });
        assert_eq!(c.events(QUIET), None);

        // Usage moves the wallet; passing the quota locks it.
        let report = json!({"items": [{"isDeltaCharge": true, "owner": user,
            "categoryIdV2": {"name": "cpu", "provider": "hpc"}, "usage": 61}]})
        .to_string();
        change(&store, &hub, |s, ch| {
            usage::report(s, "hpc", report.as_bytes(), ch)
        });
        let events = c.events(WAIT).expect("a wallet frame");
        assert_eq!(wallet_of(&events, &user), Some((60, 61, true)));
        // Pings are answered.
        c.send_raw(0x9, b"hi");
        assert_eq!(c.message(WAIT), Some(Message::Pong(b"hi".to_vec())));

        // ReplayUser: B#2's projects with their wallets (B#2 has none of their own).
        c.send(&[Frame::ReplayUser {
            username: "B#2".into(),
        }]);
        let events = c.drain(QUIET);
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Project { project, .. } if project["id"] == id.as_str())));
        assert_eq!(wallet_of(&events, &project), Some((1000, 0, false)));
        assert!(wallet_of(&events, &user).is_none());
        // Nobody UCloud knows: nothing.
        c.send(&[Frame::ReplayUser {
            username: "Nobody#9".into(),
        }]);
        assert_eq!(c.events(QUIET), None);

        // The project leaves: its wallet locks at 0, then it is no longer sent.
        change(&store, &hub, |s, ch| projects::end(s, &id, ch));
        let events = c.events(WAIT).expect("the ended wallet");
        assert_eq!(wallet_of(&events, &project), Some((0, 0, true)));
        let body = br#"{"username":"D#4","role":"USER"}"#;
        change(&store, &hub, |s, ch| projects::set_member(s, &id, body, ch));
        assert_eq!(c.events(QUIET), None);

        // An unknown op from the provider closes the stream.
        c.send_raw(OP_BINARY, &[42]);
        assert!(matches!(c.message(WAIT), Some(Message::Close(Some(_), _))));
    });
    assert!(outcome.is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_replay_starts_where_asked_and_a_close_ends_the_session() {
    let (dir, store) = setup("from");
    let hub = Hub::default();
    let user = json!({"type": "user", "username": "A#1"});
    allocate(&store, &hub, user.clone(), "cpu", 60);
    let later = ucloud_wire::now_ms() as i64 + 60_000;
    let outcome = with_session(&store, &hub, |c| {
        // Nothing is newer than the replay start.
        c.send(&[auth("good", later)]);
        assert_eq!(c.events(QUIET), None);
        c.send_raw(0x8, &1000u16.to_be_bytes());
        assert!(matches!(
            c.message(WAIT),
            Some(Message::Close(Some(1000), _))
        ));
    });
    assert_eq!(outcome, Ok(()));
    // Without the retired u64 the frames are laid out shorter.
    let outcome = with_session(&store, &hub, |c| {
        let frame = Frame::Auth {
            replay_from_ms: 0,
            flags: 0,
            token: "good".into(),
        };
        c.send(&[frame]);
        let Some(Message::Binary(b)) = c.message(WAIT) else {
            panic!()
        };
        let events = c.refs.apply(apm::decode(&b, false).unwrap()).unwrap();
        assert_eq!(wallet_of(&events, &user), Some((60, 0, false)));
        assert!(apm::decode(&b, true).is_err());
    });
    assert_eq!(outcome, Ok(()));
    std::fs::remove_dir_all(dir).unwrap();
}
