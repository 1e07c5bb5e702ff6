//! UCloud's provider notification stream (`/api/accounting/notifications`, a
//! WebSocket of binary messages; core2/pkg/accounting/provider_notifications.go and
//! its reader in provider-integration/im2/pkg/controller/event.go).
//!
//! Every number is big-endian; a string is a `u32` byte length and its bytes.
//!
//! - The provider opens with one `Auth` frame: the replay start (ms since the
//!   epoch), connection flags (bit 0: wallets carry a retired-usage `u64`) and its
//!   access token. The core then replays every wallet and project updated since
//!   that time and goes on with live updates. It sends no acknowledgement, so the
//!   provider stores its replay time itself.
//! - The provider may later send `ReplayUser` (one frame per message): the core
//!   replays that user's wallets and those of their projects at this provider.
//! - The core's messages hold one or more frames. `User`, `Project` and `Category`
//!   frames bind a connection-local reference number to a username, a project
//!   (`fndapi.Project` as JSON) and a category (`accapi.ProductCategory` as JSON);
//!   a `Wallet` frame names its owner and category by those references. A reference
//!   is bound before it is used, in the same or an earlier message, and a `Project`
//!   frame for a bound reference replaces the project (its members changed).
//!
//! [`decode`] and [`encode`] are the frames; [`Refs`] resolves them into
//! self-contained [`Event`]s. Everything the core sends is checked here, since a
//! decoded event leads to privileged work.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt;

pub const OP_AUTH: u8 = 0;
pub const OP_WALLET: u8 = 1;
pub const OP_PROJECT: u8 = 2;
pub const OP_CATEGORY: u8 = 3;
pub const OP_USER: u8 = 4;
pub const OP_REPLAY_USER: u8 = 5;

/// Connection flag: every wallet frame ends in a retired-usage `u64` (always 0).
/// im2 sets it; so do we, so both decoders meet the same bytes.
pub const FLAG_INCLUDE_RETIRED: u64 = 1;
/// Wallet flag bits.
pub const WALLET_LOCKED: u32 = 1;
pub const WALLET_PROJECT: u32 = 1 << 1;

/// The longest string a frame may hold (a project with thousands of members fits).
pub const MAX_STRING: usize = 16 << 20;
/// The most references one connection may bind, and the most bytes of JSON they
/// may hold: a server that binds without end is dropped before the sender runs out
/// of memory (the connection starts again from the stored replay time).
pub const MAX_REFS: usize = 1 << 20;
pub const MAX_REF_BYTES: usize = 512 << 20;

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Auth {
        replay_from_ms: i64,
        flags: u64,
        token: String,
    },
    Wallet {
        workspace: u32,
        category: u32,
        quota: i64,
        usage: i64,
        flags: u32,
        updated_ms: i64,
    },
    Project {
        reference: u32,
        modified_ms: i64,
        json: String,
    },
    Category {
        reference: u32,
        json: String,
    },
    User {
        reference: u32,
        username: String,
    },
    ReplayUser {
        username: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum ApmError {
    /// The message ends inside a frame.
    Truncated {
        op: u8,
    },
    UnknownOp(u8),
    StringTooLong(usize),
    NotUtf8 {
        op: u8,
    },
    /// A wallet names a user, project or category reference never bound.
    UnboundRef {
        kind: &'static str,
        reference: u32,
    },
    /// A project or category frame whose JSON is not the Go type's shape.
    BadJson {
        kind: &'static str,
        why: String,
    },
    /// More references than [`MAX_REFS`] or [`MAX_REF_BYTES`] on one connection.
    TooManyRefs,
}

impl fmt::Display for ApmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApmError::Truncated { op } => write!(f, "the message ends inside a frame of op {op}"),
            ApmError::UnknownOp(op) => write!(f, "unknown frame op {op}"),
            ApmError::StringTooLong(n) => {
                write!(f, "a string of {n} bytes (at most {MAX_STRING})")
            }
            ApmError::NotUtf8 { op } => write!(f, "a string in a frame of op {op} is not UTF-8"),
            ApmError::UnboundRef { kind, reference } => {
                write!(
                    f,
                    "a wallet names {kind} reference {reference}, never bound"
                )
            }
            ApmError::BadJson { kind, why } => write!(f, "a {kind} frame: {why}"),
            ApmError::TooManyRefs => write!(
                f,
                "more than {MAX_REFS} references or {MAX_REF_BYTES} bytes of them on one connection"
            ),
        }
    }
}

impl std::error::Error for ApmError {}

struct Reader<'a> {
    bytes: &'a [u8],
    op: u8,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ApmError> {
        if self.bytes.len() < n {
            return Err(ApmError::Truncated { op: self.op });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, ApmError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ApmError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, ApmError> {
        Ok(self.u64()? as i64)
    }
    fn string(&mut self) -> Result<String, ApmError> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(ApmError::StringTooLong(n));
        }
        let op = self.op;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| ApmError::NotUtf8 { op })
    }
}

/// The frames of one message. `with_retired` is the connection's
/// [`FLAG_INCLUDE_RETIRED`]: whether wallet frames carry the extra `u64`.
pub fn decode(message: &[u8], with_retired: bool) -> Result<Vec<Frame>, ApmError> {
    let mut r = Reader {
        bytes: message,
        op: 0,
    };
    let mut frames = Vec::new();
    while let Some((&op, rest)) = r.bytes.split_first() {
        r.bytes = rest;
        r.op = op;
        let frame = match op {
            OP_AUTH => Frame::Auth {
                replay_from_ms: r.i64()?,
                flags: r.u64()?,
                token: r.string()?,
            },
            OP_WALLET => {
                let frame = Frame::Wallet {
                    workspace: r.u32()?,
                    category: r.u32()?,
                    quota: r.i64()?,
                    usage: r.i64()?,
                    flags: r.u32()?,
                    updated_ms: r.i64()?,
                };
                if with_retired {
                    r.u64()?;
                }
                frame
            }
            OP_PROJECT => Frame::Project {
                reference: r.u32()?,
                modified_ms: r.i64()?,
                json: r.string()?,
            },
            OP_CATEGORY => Frame::Category {
                reference: r.u32()?,
                json: r.string()?,
            },
            OP_USER => Frame::User {
                reference: r.u32()?,
                username: r.string()?,
            },
            OP_REPLAY_USER => Frame::ReplayUser {
                username: r.string()?,
            },
            other => return Err(ApmError::UnknownOp(other)),
        };
        frames.push(frame);
    }
    Ok(frames)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One message holding `frames`, as the core (or, for `Auth` and `ReplayUser`, the
/// provider) writes it.
pub fn encode(frames: &[Frame], with_retired: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        match frame {
            Frame::Auth {
                replay_from_ms,
                flags,
                token,
            } => {
                out.push(OP_AUTH);
                out.extend_from_slice(&replay_from_ms.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                put_string(&mut out, token);
            }
            Frame::Wallet {
                workspace,
                category,
                quota,
                usage,
                flags,
                updated_ms,
            } => {
                out.push(OP_WALLET);
                out.extend_from_slice(&workspace.to_be_bytes());
                out.extend_from_slice(&category.to_be_bytes());
                out.extend_from_slice(&quota.to_be_bytes());
                out.extend_from_slice(&usage.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
                out.extend_from_slice(&updated_ms.to_be_bytes());
                if with_retired {
                    out.extend_from_slice(&0u64.to_be_bytes());
                }
            }
            Frame::Project {
                reference,
                modified_ms,
                json,
            } => {
                out.push(OP_PROJECT);
                out.extend_from_slice(&reference.to_be_bytes());
                out.extend_from_slice(&modified_ms.to_be_bytes());
                put_string(&mut out, json);
            }
            Frame::Category { reference, json } => {
                out.push(OP_CATEGORY);
                out.extend_from_slice(&reference.to_be_bytes());
                put_string(&mut out, json);
            }
            Frame::User {
                reference,
                username,
            } => {
                out.push(OP_USER);
                out.extend_from_slice(&reference.to_be_bytes());
                put_string(&mut out, username);
            }
            Frame::ReplayUser { username } => {
                out.push(OP_REPLAY_USER);
                put_string(&mut out, username);
            }
        }
    }
    out
}

/// A resolved notification: what the provider acts on. Its JSON form
/// ([`Event::to_json`]) is what the sender writes to the inbox.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A wallet of a user or project at this provider: `owner` is
    /// `{"type":"user","username"}` or `{"type":"project","projectId"}`, `category`
    /// `{"name","provider"}`. `locked`: the core's `MaxUsable == 0`.
    Wallet {
        owner: Value,
        category: Value,
        quota: i64,
        usage: i64,
        locked: bool,
        updated_ms: i64,
        /// The owning project as last sent (a project wallet only).
        project: Option<Value>,
    },
    /// A project with an allocation at this provider, members included.
    Project { project: Value, modified_ms: i64 },
}

impl Event {
    pub fn to_json(&self) -> Value {
        match self {
            Event::Wallet {
                owner,
                category,
                quota,
                usage,
                locked,
                updated_ms,
                project,
            } => json!({
                "type": "wallet",
                "owner": owner,
                "category": category,
                "quota": quota,
                "usage": usage,
                "locked": locked,
                "updatedAt": updated_ms,
                "project": project,
            }),
            Event::Project {
                project,
                modified_ms,
            } => json!({"type": "project", "project": project, "modifiedAt": modified_ms}),
        }
    }
}

/// The references one connection has bound so far.
#[derive(Default)]
pub struct Refs {
    users: HashMap<u32, String>,
    projects: HashMap<u32, Value>,
    categories: HashMap<u32, Value>,
    /// What the bound strings and JSON came to, in bytes (never less).
    bytes: usize,
}

/// A project as the core sends it: an object with a non-empty string `id`, and
/// `status.members` an array (when present) of objects with a string `username`.
fn check_project(project: &Value) -> Result<(), String> {
    let id = project["id"].as_str().unwrap_or_default();
    if id.is_empty() {
        return Err("a project without an id".into());
    }
    match &project["status"]["members"] {
        Value::Null => Ok(()),
        Value::Array(members) => match members.iter().all(|m| m["username"].is_string()) {
            true => Ok(()),
            false => Err(format!("project {id}: a member without a username")),
        },
        _ => Err(format!("project {id}: status.members is not a list")),
    }
}

impl Refs {
    /// The events `frames` mean, in order, binding their references on the way.
    /// An error leaves the references bound before it; the connection is then
    /// to be dropped, as im2 does, and opened again from the stored replay time.
    pub fn apply(&mut self, frames: Vec<Frame>) -> Result<Vec<Event>, ApmError> {
        let mut events = Vec::new();
        for frame in frames {
            let size = match &frame {
                Frame::User { username, .. } => username.len(),
                Frame::Category { json, .. } | Frame::Project { json, .. } => json.len(),
                _ => 0,
            };
            self.bytes = self.bytes.saturating_add(size);
            let count = self.users.len() + self.projects.len() + self.categories.len();
            if self.bytes > MAX_REF_BYTES || (size > 0 && count >= MAX_REFS) {
                return Err(ApmError::TooManyRefs);
            }
            match frame {
                Frame::User {
                    reference,
                    username,
                } => {
                    self.users.insert(reference, username);
                }
                Frame::Category { reference, json } => {
                    let category: Value =
                        serde_json::from_str(&json).map_err(|e| ApmError::BadJson {
                            kind: "category",
                            why: e.to_string(),
                        })?;
                    if category["name"].as_str().unwrap_or_default().is_empty() {
                        return Err(ApmError::BadJson {
                            kind: "category",
                            why: "a category without a name".into(),
                        });
                    }
                    self.categories.insert(reference, category);
                }
                Frame::Project {
                    reference,
                    modified_ms,
                    json,
                } => {
                    let project: Value =
                        serde_json::from_str(&json).map_err(|e| ApmError::BadJson {
                            kind: "project",
                            why: e.to_string(),
                        })?;
                    check_project(&project).map_err(|why| ApmError::BadJson {
                        kind: "project",
                        why,
                    })?;
                    self.projects.insert(reference, project.clone());
                    events.push(Event::Project {
                        project,
                        modified_ms,
                    });
                }
                Frame::Wallet {
                    workspace,
                    category,
                    quota,
                    usage,
                    flags,
                    updated_ms,
                } => {
                    let unbound = |kind| ApmError::UnboundRef {
                        kind,
                        reference: workspace,
                    };
                    let (owner, project) = if flags & WALLET_PROJECT != 0 {
                        let p = self.projects.get(&workspace).ok_or(unbound("project"))?;
                        (
                            json!({"type": "project", "projectId": p["id"]}),
                            Some(p.clone()),
                        )
                    } else {
                        let u = self.users.get(&workspace).ok_or(unbound("user"))?;
                        (json!({"type": "user", "username": u}), None)
                    };
                    let c = self.categories.get(&category).ok_or(ApmError::UnboundRef {
                        kind: "category",
                        reference: category,
                    })?;
                    events.push(Event::Wallet {
                        owner,
                        category: json!({"name": c["name"], "provider": c["provider"]}),
                        quota,
                        usage,
                        locked: flags & WALLET_LOCKED != 0,
                        updated_ms,
                        project,
                    });
                }
                // The provider's own frames: never sent by the core.
                Frame::Auth { .. } | Frame::ReplayUser { .. } => {}
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Frame> {
        vec![
            Frame::User {
                reference: 0,
                username: "DonnaJensen#4512".into(),
            },
            Frame::Project {
                reference: 1,
                modified_ms: 1_700_000_000_000,
                json: r#"{"id":"p-1","status":{"members":[{"username":"a","role":"PI"}]}}"#.into(),
            },
            Frame::Category {
                reference: 0,
                json: r#"{"name":"cpu","provider":"hpc","productType":"COMPUTE"}"#.into(),
            },
            Frame::Wallet {
                workspace: 1,
                category: 0,
                quota: 1000,
                usage: 10,
                flags: WALLET_PROJECT | WALLET_LOCKED,
                updated_ms: 5,
            },
            Frame::Wallet {
                workspace: 0,
                category: 0,
                quota: 60,
                usage: 0,
                flags: 0,
                updated_ms: 6,
            },
        ]
    }

    #[test]
    fn frames_round_trip_with_and_without_retired_usage() {
        for retired in [true, false] {
            let bytes = encode(&sample(), retired);
            assert_eq!(decode(&bytes, retired).unwrap(), sample());
        }
        let auth = vec![Frame::Auth {
            replay_from_ms: -1,
            flags: FLAG_INCLUDE_RETIRED,
            token: "tok".into(),
        }];
        assert_eq!(decode(&encode(&auth, true), true).unwrap(), auth);
        let replay = vec![Frame::ReplayUser {
            username: "u".into(),
        }];
        assert_eq!(decode(&encode(&replay, true), true).unwrap(), replay);
    }

    #[test]
    fn a_wallet_frame_is_laid_out_as_the_core_writes_it() {
        let bytes = encode(
            &[Frame::Wallet {
                workspace: 2,
                category: 3,
                quota: 4,
                usage: 5,
                flags: 1,
                updated_ms: 6,
            }],
            true,
        );
        let mut expect = vec![1, 0, 0, 0, 2, 0, 0, 0, 3];
        expect.extend_from_slice(&4i64.to_be_bytes());
        expect.extend_from_slice(&5i64.to_be_bytes());
        expect.extend_from_slice(&[0, 0, 0, 1]);
        expect.extend_from_slice(&6i64.to_be_bytes());
        expect.extend_from_slice(&[0; 8]);
        assert_eq!(bytes, expect);
    }

    #[test]
    fn hostile_messages_are_refused_not_misread() {
        let whole = encode(&sample(), true);
        for cut in 1..whole.len() {
            // Every prefix that ends inside a frame is refused.
            if let Ok(frames) = decode(&whole[..cut], true) {
                assert!(frames.len() < sample().len());
                assert_eq!(encode(&frames, true), whole[..cut]);
            }
        }
        assert_eq!(decode(&[9], true), Err(ApmError::UnknownOp(9)));
        let mut huge = vec![OP_USER, 0, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(&huge, true),
            Err(ApmError::StringTooLong(u32::MAX as usize))
        );
        let mut bad = vec![OP_USER, 0, 0, 0, 0, 0, 0, 0, 1, 0xff];
        assert_eq!(decode(&bad, true), Err(ApmError::NotUtf8 { op: OP_USER }));
        bad.truncate(9);
        assert_eq!(decode(&bad, true), Err(ApmError::Truncated { op: OP_USER }));
    }

    #[test]
    fn refs_resolve_wallets_to_owners_and_categories() {
        let mut refs = Refs::default();
        let events = refs.apply(sample()).unwrap();
        assert_eq!(events.len(), 3);
        assert!(
            matches!(&events[0], Event::Project { modified_ms, .. } if *modified_ms == 1_700_000_000_000)
        );
        let Event::Wallet {
            owner,
            category,
            locked,
            project,
            ..
        } = &events[1]
        else {
            panic!("{:?}", events[1]);
        };
        assert_eq!(owner, &json!({"type": "project", "projectId": "p-1"}));
        assert_eq!(category, &json!({"name": "cpu", "provider": "hpc"}));
        assert!(*locked);
        assert_eq!(project.as_ref().unwrap()["id"], "p-1");
        assert_eq!(
            events[2].to_json()["owner"],
            json!({"type": "user", "username": "DonnaJensen#4512"})
        );
    }

    #[test]
    fn a_server_binding_without_end_is_stopped() {
        let mut refs = Refs::default();
        let big = "x".repeat(MAX_STRING);
        let mut stopped = false;
        for reference in 0..64u32 {
            match refs.apply(vec![Frame::User {
                reference,
                username: big.clone(),
            }]) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, ApmError::TooManyRefs);
                    stopped = true;
                    break;
                }
            }
        }
        assert!(stopped, "512 MiB of references were taken");
    }

    #[test]
    fn refs_refuse_unbound_references_and_bad_json() {
        let wallet = |workspace, flags| Frame::Wallet {
            workspace,
            category: 0,
            quota: 1,
            usage: 0,
            flags,
            updated_ms: 0,
        };
        let mut refs = Refs::default();
        refs.apply(vec![Frame::User {
            reference: 0,
            username: "u".into(),
        }])
        .unwrap();
        // The category was never bound.
        assert_eq!(
            refs.apply(vec![wallet(0, 0)]),
            Err(ApmError::UnboundRef {
                kind: "category",
                reference: 0
            })
        );
        refs.apply(vec![Frame::Category {
            reference: 0,
            json: r#"{"name":"cpu","provider":"hpc"}"#.into(),
        }])
        .unwrap();
        // A user reference is no project reference.
        assert!(matches!(
            refs.apply(vec![wallet(0, WALLET_PROJECT)]),
            Err(ApmError::UnboundRef {
                kind: "project",
                ..
            })
        ));
        for json in [
            "not json",
            "{}",
            r#"{"id":""}"#,
            r#"{"id":"p","status":{"members":"x"}}"#,
            r#"{"id":"p","status":{"members":[{"role":"PI"}]}}"#,
        ] {
            let got = refs.apply(vec![Frame::Project {
                reference: 1,
                modified_ms: 0,
                json: json.into(),
            }]);
            assert!(
                matches!(
                    got,
                    Err(ApmError::BadJson {
                        kind: "project",
                        ..
                    })
                ),
                "{json}: {got:?}"
            );
        }
        assert!(matches!(
            refs.apply(vec![Frame::Category {
                reference: 1,
                json: "{}".into()
            }]),
            Err(ApmError::BadJson { .. })
        ));
    }
}
