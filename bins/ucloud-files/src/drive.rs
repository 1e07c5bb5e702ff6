//! Which local directory a drive id means, and whether the caller may use it. The
//! only source is the root-owned drive table (`$UCLOUD_IM_DRIVES/<driveId>`, written
//! by ucloud-registry): never the `resolvedCollection` UCloud sends, never the path.

use crate::error::Error;
use std::os::fd::AsFd;
use ucloud_wire::names::DriveId;
use ucloud_wire::record::DriveRefusal;

/// The format is ucloud-wire's, the one the registry writes.
pub use ucloud_wire::record::Drive;

/// The drive `id` if it is one of `user`'s. Another user's drive and a missing one
/// get the same answer, so the plugin tells nobody which drives exist.
pub fn lookup(table: &impl AsFd, id: &DriveId, user: &str) -> Result<Drive, Error> {
    ucloud_wire::record::lookup_drive(table, id, user, ucloud_wire::now_ms()).map_err(|r| match r {
        DriveRefusal::NotYours(why) => Error::NotFound(why),
        DriveRefusal::Lapsed(why) => Error::PermissionDenied(why),
        DriveRefusal::Broken(why) => Error::Misconfigured(why),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn table(entries: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "files-drives-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in entries {
            std::fs::write(dir.join(name), text).unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        dir
    }

    #[test]
    fn only_the_callers_own_drives_resolve() {
        let alice = r#"{"id":"17","ucloud":"A#1","local":"alice","base":"/home/alice","kind":"home","title":"Home"}"#;
        let bob = r#"{"id":"18","ucloud":"B#2","local":"bob","base":"/home/bob","kind":"home","title":"Home"}"#;
        let liar = r#"{"id":"17","ucloud":"B#2","local":"bob","base":"/home/bob"}"#;
        let dir = table(&[("17", alice), ("18", bob), ("19", liar)]);
        let fd = std::fs::File::open(&dir).unwrap();
        let id = |s: &str| DriveId::new(s).unwrap();
        if nix::unistd::geteuid().is_root() {
            let d = lookup(&fd, &id("17"), "alice").unwrap();
            assert_eq!(
                (d.local.as_str(), d.base.as_str()),
                ("alice", "/home/alice")
            );
            assert!(matches!(
                lookup(&fd, &id("18"), "alice"),
                Err(Error::NotFound(_))
            ));
            assert!(matches!(
                lookup(&fd, &id("19"), "bob"),
                Err(Error::Misconfigured(_))
            ));
        } else {
            // Files not owned by root are never trusted.
            assert!(matches!(
                lookup(&fd, &id("17"), "alice"),
                Err(Error::Misconfigured(_))
            ));
        }
        assert!(matches!(
            lookup(&fd, &id("20"), "alice"),
            Err(Error::NotFound(_))
        ));
        std::fs::set_permissions(dir.join("17"), std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            lookup(&fd, &id("17"), "alice"),
            Err(Error::Misconfigured(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
