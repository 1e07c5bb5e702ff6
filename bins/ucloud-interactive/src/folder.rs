//! A terminal in a folder (`jobs.openTerminalInFolder`, UCloud's "Open in
//! terminal" on a drive whose product says `files.openInTerminal`): a login shell
//! on this login node, as the user, in the folder. The folder is a UCloud path,
//! `/<drive>/<path>`; the drive is found only in the root-owned drive table, and
//! only when it is the caller's (as for the file calls). The shell runs as the
//! caller, so the kernel decides what it may touch; the folder is where it starts.

use crate::error::Error;
use std::path::PathBuf;
use ucloud_wire::names::DriveId;
use ucloud_wire::record::{lookup_drive, DriveRefusal};
use ucloud_wire::transfer::Subject;

/// A folder a terminal may open in.
#[derive(Debug)]
pub struct Folder {
    pub dir: PathBuf,
    /// The umask the shell starts with: 007 in a project's drive, so that what a
    /// member makes there the others (the drive's group) can use; 077 elsewhere.
    pub umask: u32,
}

/// The local directory of `folder` (a UCloud path) in a drive `user` may use:
/// one of theirs, or a project's whose group this process is in.
pub fn local_dir(folder: &str, user: &str) -> Result<Folder, Error> {
    let rest = folder
        .strip_prefix('/')
        .ok_or_else(|| Error::BadRequest(format!("{folder:?} is not a UCloud path")))?;
    let (drive, path) = rest.split_once('/').unwrap_or((rest, ""));
    let id = DriveId::new(drive)
        .map_err(|e| Error::BadRequest(format!("{folder:?} names no drive: {e}")))?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(Error::BadRequest(format!(
            "{folder:?} has a . or .. component: name the folder itself"
        )));
    }
    let table_dir =
        std::env::var("UCLOUD_IM_DRIVES").unwrap_or_else(|_| ucloud_wire::paths::drives_dir());
    let table = std::fs::File::open(&table_dir)
        .map_err(|e| Error::Start(format!("cannot open the drive table {table_dir}: {e}")))?;
    let drive = lookup_drive(&table, &id, user, ucloud_wire::now_ms()).map_err(|r| match r {
        DriveRefusal::NotYours(why) => Error::NotFound(why),
        DriveRefusal::Lapsed(why) => Error::NotYourJob(why),
        DriveRefusal::Broken(why) => Error::Start(why),
    })?;
    let mut dir = PathBuf::from(&drive.base);
    dir.extend(parts);
    if !dir.is_dir() {
        return Err(Error::NotFound(format!(
            "{folder} is not a folder you can open (no such directory, or not yours to enter)"
        )));
    }
    Ok(Folder {
        dir,
        umask: umask_for(&drive),
    })
}

fn umask_for(drive: &ucloud_wire::record::Drive) -> u32 {
    if drive.is_project() {
        0o007
    } else {
        0o077
    }
}

/// `jobs.openTerminalInFolder`: checks the one folder the session identifier was
/// minted for and answers the `OpenSession` for it.
pub fn open(token: Option<&str>, now: u64, user: &str) -> Result<(), Error> {
    let Some(Subject::Folder(folder)) = crate::session::subject(token, "jobs.shell", now)? else {
        return Err(Error::BadRequest(
            "the session identifier names no folder".into(),
        ));
    };
    let token = token.expect("checked by subject()");
    local_dir(&folder, user)?;
    // As UCloud's own module answers it: the folder in place of a job id, rank 0.
    let answer = serde_json::json!({"responses": [{"type": "shell", "jobId": folder, "rank": 0,
        "sessionIdentifier": token, "domainOverride": ""}]});
    println!("{answer}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_in_a_named_drive() {
        for bad in [
            "relative",
            "/",
            "//x",
            "/7/../8",
            "/7/a/./b",
            "/7/a/../../etc",
        ] {
            let e = local_dir(bad, "nobody").unwrap_err();
            assert!(matches!(e, Error::BadRequest(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn a_shell_in_a_project_drive_shares_with_the_group() {
        use ucloud_wire::names::{DriveId, LocalName, UcloudName};
        use ucloud_wire::record::Drive;
        let id = DriveId::new("23").unwrap();
        let project = Drive::project(id.clone(), "p-1".into(), 200001, "/p".into(), "P".into());
        assert_eq!(umask_for(&project), 0o007);
        let home = Drive::home(
            id,
            UcloudName::new("A#1").unwrap(),
            LocalName::new("alice").unwrap(),
            "/home/alice".into(),
        );
        assert_eq!(umask_for(&home), 0o077);
    }
}
