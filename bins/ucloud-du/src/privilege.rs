//! CAP_SYS_ADMIN, which a site grants only to read quotas: held for the quota
//! phase, then dropped from every set this thread can drop it from, and the drop
//! checked before a single directory of a drive is walked. The walk, which reads
//! trees the drives' owners shape, never runs with it.
//!
//! ucloud-du is single-threaded: capabilities are per thread, and these calls act
//! on the calling thread, which is the only one.

use caps::{CapSet, Capability};
use serde_json::{json, Value};

const ADMIN: Capability = Capability::CAP_SYS_ADMIN;

/// Whether CAP_SYS_ADMIN may be used now: permitted, and raised into the
/// effective set if it was not there yet.
pub fn quota_capable() -> bool {
    if !caps::has_cap(None, CapSet::Permitted, ADMIN).unwrap_or(false) {
        return false;
    }
    caps::has_cap(None, CapSet::Effective, ADMIN).unwrap_or(false)
        || caps::raise(None, CapSet::Effective, ADMIN).is_ok()
}

/// What the drop did, for the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// CAP_SYS_ADMIN was in some set at the start.
    pub held: bool,
    /// It is also gone from the bounding set (needs CAP_SETPCAP, which the unit
    /// does not give: then no_new_privs and an empty permitted set keep it out).
    pub bounding: bool,
}

impl Dropped {
    pub fn to_json(self) -> Value {
        json!({"heldAtStart": self.held, "droppedBeforeWalk": true, "droppedFromBounding": self.bounding})
    }
}

const SETS: [CapSet; 4] = [
    CapSet::Ambient,
    CapSet::Inheritable,
    CapSet::Effective,
    CapSet::Permitted,
];

/// Drops CAP_SYS_ADMIN from the ambient, inheritable, effective and permitted
/// sets (and the bounding set if allowed), then reads every set again: an error
/// if it is still anywhere it could be used from.
pub fn drop_admin() -> Result<Dropped, String> {
    let held = SETS
        .iter()
        .any(|&set| caps::has_cap(None, set, ADMIN).unwrap_or(true));
    if held {
        for set in SETS {
            if caps::has_cap(None, set, ADMIN).unwrap_or(true) {
                caps::drop(None, set, ADMIN)
                    .map_err(|e| format!("cannot drop CAP_SYS_ADMIN from {set:?}: {e}"))?;
            }
        }
    }
    let bounding = caps::has_cap(None, CapSet::Bounding, ADMIN).unwrap_or(true)
        && caps::drop(None, CapSet::Bounding, ADMIN).is_ok();
    for set in SETS {
        match caps::read(None, set) {
            Ok(now) if !now.contains(&ADMIN) => {}
            Ok(_) => return Err(format!("CAP_SYS_ADMIN is still in the {set:?} set")),
            Err(e) => return Err(format!("cannot read the {set:?} set: {e}")),
        }
    }
    Ok(Dropped {
        held,
        bounding: bounding || !caps::has_cap(None, CapSet::Bounding, ADMIN).unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests run as root: a thread of their own holds CAP_SYS_ADMIN in every
    /// set, drops it, and the sets no longer have it (nor can it come back).
    #[test]
    fn the_drop_leaves_it_in_no_set_and_is_checked() {
        std::thread::spawn(|| {
            assert!(quota_capable());
            let _ = caps::raise(None, CapSet::Inheritable, ADMIN);
            let dropped = drop_admin().unwrap();
            assert!(dropped.held);
            for set in SETS {
                assert!(!caps::has_cap(None, set, ADMIN).unwrap(), "{set:?}");
            }
            assert!(!quota_capable());
            assert!(caps::raise(None, CapSet::Effective, ADMIN).is_err());
            // Root holds CAP_SETPCAP: the bounding set loses it too.
            assert!(dropped.bounding);
            // Nothing held: nothing to drop, and still proven.
            assert!(!drop_admin().unwrap().held);
        })
        .join()
        .unwrap();
    }
}
