//! Which local directory a drive id means, and whether the caller may use it. The
//! only source is the root-owned drive table (`$UCLOUD_IM_DRIVES/<driveId>`, written
//! by ucloud-registry): never the `resolvedCollection` UCloud sends, never the path.

use crate::error::Error;
use nix::sys::stat::{umask, Mode};
use std::os::fd::AsFd;
use ucloud_wire::names::DriveId;
use ucloud_wire::record::DriveRefusal;

/// The format is ucloud-wire's, the one the registry writes.
pub use ucloud_wire::record::Drive;

/// The drive `id` if `user` may use it: one of theirs, or a project's whose group
/// this process is in. Another user's drive, a project's the caller is not (or no
/// longer) in and a missing one get the same answer, so the plugin tells nobody
/// which drives exist. Sets the umask for what the call makes there
/// ([`umask_for`]): the drive resolved last is the one a call creates in (a
/// copy's or move's target is resolved after its source).
pub fn lookup(table: &impl AsFd, id: &DriveId, user: &str) -> Result<Drive, Error> {
    lookup_in(table, id, user, &ucloud_wire::record::process_groups())
}

/// [`lookup`] with the caller's groups given.
fn lookup_in(table: &impl AsFd, id: &DriveId, user: &str, groups: &[u32]) -> Result<Drive, Error> {
    let now = ucloud_wire::now_ms();
    let drive = ucloud_wire::record::lookup_drive_in(table, id, user, groups, now).map_err(
        |r| match r {
            DriveRefusal::NotYours(why) => Error::NotFound(why),
            DriveRefusal::Lapsed(why) => Error::PermissionDenied(why),
            DriveRefusal::Broken(why) => Error::Misconfigured(why),
        },
    )?;
    umask(umask_for(&drive));
    Ok(drive)
}

/// The mode a new folder and a new file in a drive ask for: the umask
/// ([`umask_for`]) decides what is left, 0700 and 0600 in a person's drive, 0770
/// and 0660 in a project's.
pub const NEW_DIR: Mode = Mode::from_bits_truncate(0o777);
pub const NEW_FILE: Mode = Mode::from_bits_truncate(0o666);

/// 007 in a project's drive: what one member makes there, the others (the
/// directory's group, by its setgid bit) can read and change, as the project
/// expects; the dispatcher's 077 would hide it from them. 077 everywhere else.
pub fn umask_for(drive: &Drive) -> Mode {
    Mode::from_bits_truncate(if drive.is_project() { 0o007 } else { 0o077 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn table(entries: &[(&str, &str)]) -> std::path::PathBuf {
        // Unique per call: two tests may make a table in the same millisecond.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "files-drives-{}-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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
                (d.local().map(|l| l.as_str()), d.base.as_str()),
                (Some("alice"), "/home/alice")
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

    #[test]
    fn project_drives_get_umask_007_and_every_other_drive_077() {
        let id = DriveId::new("23").unwrap();
        let project = Drive::project(id.clone(), "p-1".into(), 200001, "/p".into(), "P".into());
        assert_eq!(umask_for(&project).bits(), 0o007);
        let mut home = Drive::home(
            id,
            ucloud_wire::names::UcloudName::new("A#1").unwrap(),
            ucloud_wire::names::LocalName::new("alice").unwrap(),
            "/home/alice".into(),
        );
        assert_eq!(umask_for(&home).bits(), 0o077);
        // A person's drive an admin called "project" is still a person's.
        home.kind = "project".into();
        assert_eq!(umask_for(&home).bits(), 0o077);
    }

    #[test]
    fn the_drive_resolved_sets_the_umask_and_a_removed_member_is_not_found() {
        if !nix::unistd::geteuid().is_root() {
            return; // entries not owned by root are never trusted
        }
        let project =
            r#"{"id":"23","kind":"project","project":"p-1","gid":4242421,"base":"/p","title":"P"}"#;
        let mine = [1001, 4242421];
        let other =
            r#"{"id":"24","kind":"project","project":"p-2","gid":4242420,"base":"/q","title":"Q"}"#;
        let alice = r#"{"id":"17","ucloud":"A#1","local":"alice","base":"/home/alice"}"#;
        let dir = table(&[("23", project), ("24", other), ("17", alice)]);
        let fd = std::fs::File::open(&dir).unwrap();
        let id = |s: &str| DriveId::new(s).unwrap();
        let before = umask(Mode::from_bits_truncate(0o077));
        lookup_in(&fd, &id("23"), "anyone", &mine).unwrap();
        assert_eq!(umask(Mode::from_bits_truncate(0o077)).bits(), 0o007);
        lookup_in(&fd, &id("23"), "anyone", &mine).unwrap();
        lookup_in(&fd, &id("17"), "alice", &mine).unwrap();
        assert_eq!(umask(Mode::from_bits_truncate(0o077)).bits(), 0o077);
        // Not in the project's group: the answer for a drive that does not exist.
        assert!(matches!(
            lookup_in(&fd, &id("24"), "anyone", &mine),
            Err(Error::NotFound(_))
        ));
        umask(before);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
