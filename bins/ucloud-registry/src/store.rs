//! The root-owned data: the mapping store (`mappings/<hex of the UCloud name>`, root
//! 0600 in a root 0700 directory) and the drive table (`drives/<driveId>`, root 0644
//! in a root 0755 directory), formats in doc/contracts.md.
//!
//! Every write is atomic (a dot-file in the same directory, fsync, rename, fsync of
//! the directory), so a reader (the dispatcher, a plugin) sees the old file or the new
//! one, never half of one; the readers open only exact names, which never start with
//! a dot. Every change needs a [`Lock`], so two admins at once cannot interleave a
//! check with another's write.

use crate::error::Error;
use nix::fcntl::{Flock, FlockArg, OFlag};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use ucloud_wire::names::{DriveId, UcloudName};
use ucloud_wire::record::MAX_RECORD;
/// The records' formats are ucloud-wire's, shared with every reader.
pub use ucloud_wire::record::{Drive, Mapping};
use ucloud_wire::Capped;

/// Proof that the caller holds the store's lock; released on drop.
pub struct Lock(#[allow(dead_code)] Flock<File>);

pub struct Store {
    state: PathBuf,
    mappings: PathBuf,
    drives: PathBuf,
}

impl Store {
    /// The store of this installation (paths fixed at build time).
    pub fn site() -> Store {
        Store {
            state: ucloud_wire::paths::state_dir().into(),
            mappings: ucloud_wire::paths::mappings_dir().into(),
            drives: ucloud_wire::paths::drives_dir().into(),
        }
    }

    /// A store below `state` (`mappings/`, `drives/`), for tests.
    #[cfg(test)]
    pub fn at(state: &Path) -> Store {
        Store {
            state: state.into(),
            mappings: state.join("mappings"),
            drives: state.join("drives"),
        }
    }

    /// Creates missing directories with their modes and refuses ones that anybody
    /// but root could change: the dispatcher trusts what is in them.
    pub fn prepare(&self) -> Result<(), Error> {
        ensure_dir(&self.state, 0o755, 0o022)?;
        ensure_dir(&self.mappings, 0o700, 0o077)?;
        ensure_dir(&self.drives, 0o755, 0o022)
    }

    /// Takes the store's lock, waiting for another ucloud-registry if it holds it.
    pub fn lock(&self) -> Result<Lock, Error> {
        let path = self.state.join("registry.lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
            .open(&path)
            .map_err(Error::io(format!(
                "cannot open the lock file {}",
                path.display()
            )))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Lock(lock)),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => file,
            Err((_, e)) => return Err(Error::errno(format!("cannot lock {}", path.display()))(e)),
        };
        ucloud_wire::log_info!("ucloud-registry: waiting for another ucloud-registry to finish");
        Flock::lock(file, FlockArg::LockExclusive)
            .map(Lock)
            .map_err(|(_, e)| Error::errno(format!("cannot lock {}", path.display()))(e))
    }

    pub fn mapping(&self, name: &UcloudName) -> Result<Option<Mapping>, Error> {
        let path = self.mappings.join(name.file_name());
        match read_json(&path)? {
            None => Ok(None),
            Some(v) => Mapping::from_json(name, &v)
                .map(Some)
                .map_err(|why| Error::Config(format!("{}: {why}", path.display()))),
        }
    }

    /// Every mapping, by file name, and a note for each file that is not a valid one.
    pub fn mappings(&self) -> Result<(Vec<Mapping>, Vec<String>), Error> {
        let mut found = Vec::new();
        let mut problems = Vec::new();
        for (file, path) in entries(&self.mappings)? {
            let Ok(name) = UcloudName::from_file_name(&file) else {
                problems.push(format!("{}: not a mapping file name", path.display()));
                continue;
            };
            match self.mapping(&name) {
                Ok(Some(m)) => found.push(m),
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        Ok((found, problems))
    }

    pub fn put_mapping(&self, _: &Lock, m: &Mapping) -> Result<(), Error> {
        write_atomic(&self.mappings, &m.file_name(), &m.to_json(), 0o600)
    }

    pub fn remove_mapping(&self, _: &Lock, name: &UcloudName) -> Result<(), Error> {
        remove(&self.mappings, &name.file_name())
    }

    pub fn drive(&self, id: &DriveId) -> Result<Option<Drive>, Error> {
        let path = self.drives.join(id.as_str());
        match read_json(&path)? {
            None => Ok(None),
            Some(v) => Drive::from_json(id, &v)
                .map(Some)
                .map_err(|why| Error::Config(format!("{}: {why}", path.display()))),
        }
    }

    pub fn drives(&self) -> Result<(Vec<Drive>, Vec<String>), Error> {
        ucloud_wire::record::drive_table(&self.drives)
            .map_err(Error::io(format!("cannot list {}", self.drives.display())))
    }

    pub fn drives_of(&self, name: &UcloudName) -> Result<Vec<Drive>, Error> {
        let (drives, _) = self.drives()?;
        Ok(drives
            .into_iter()
            .filter(|d| d.ucloud() == Some(name))
            .collect())
    }

    pub fn put_drive(&self, _: &Lock, d: &Drive) -> Result<(), Error> {
        write_atomic(&self.drives, d.file_name(), &d.to_json(), 0o644)
    }

    pub fn remove_drive(&self, _: &Lock, id: &DriveId) -> Result<(), Error> {
        remove(&self.drives, id.as_str())
    }
}

pub fn ensure_dir(path: &Path, mode: u32, forbidden: u32) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(path) {
            Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(Error::io(format!("cannot set the mode of {}", path.display()))),
            // Another registry made it meanwhile (two requests at once): judged as
            // any existing directory.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                ensure_dir(path, mode, forbidden)
            }
            Err(e) => Err(Error::io(format!("cannot create {}", path.display()))(e)),
        },
        Err(e) => Err(Error::io(path.display())(e)),
        Ok(meta) if !meta.is_dir() => Err(Error::Config(format!(
            "{} must be a directory (it is a {})",
            path.display(),
            if meta.file_type().is_symlink() { "symbolic link" } else { "file" }
        ))),
        Ok(meta) if meta.uid() != 0 || meta.mode() & forbidden != 0 => Err(Error::Config(format!(
            "{} must be owned by root with mode {mode:04o} (it is uid {}, mode {:04o}): fix it with chown root:root and chmod {mode:o}",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ))),
        Ok(_) => Ok(()),
    }
}

/// Names in `dir` that are not dot-files (temporary files start with a dot).
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io(format!("cannot list {}", dir.display())))? {
        let entry = entry.map_err(Error::io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A small JSON file, or `None` when it does not exist. Links are not followed.
pub fn read_json(path: &Path) -> Result<Option<Value>, Error> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_NONBLOCK.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot open {}", path.display()))(e)),
    };
    let meta = file.metadata().map_err(Error::io(path.display()))?;
    if !meta.is_file() {
        return Err(Error::Config(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let text = ucloud_wire::read_capped(file, MAX_RECORD).map_err(|e| match e {
        Capped::Io(io) => Error::io(format!("cannot read {}", path.display()))(io),
        Capped::TooLarge(_) => Error::Config(format!("{} {e}", path.display())),
    })?;
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::Config(format!("{} is not JSON: {e}", path.display())))
}

fn write_atomic(dir: &Path, name: &str, value: &Value, mode: u32) -> Result<(), Error> {
    ucloud_wire::record::write_atomic(dir, name, value, mode).map_err(Error::io(format!(
        "cannot write {}",
        dir.join(name).display()
    )))
}

fn remove(dir: &Path, name: &str) -> Result<(), Error> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot remove {}", path.display()))(e)),
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("cannot sync {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ucloud_wire::names::LocalName;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "registry-store-{tag}-{}-{}",
            std::process::id(),
            ucloud_wire::now_ms()
        ));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn alice() -> Mapping {
        Mapping {
            ucloud: UcloudName::new("AliceHansen#1001").unwrap(),
            local: LocalName::new("alice").unwrap(),
            uid: 1001,
            created: Some(5),
        }
    }

    #[test]
    fn records_round_trip_with_their_modes() {
        let dir = scratch("rt");
        let store = Store::at(&dir);
        if nix::unistd::geteuid().is_root() {
            store.prepare().unwrap();
        } else {
            fs::create_dir(dir.join("mappings")).unwrap();
            fs::create_dir(dir.join("drives")).unwrap();
        }
        let lock = store.lock().unwrap();
        let m = alice();
        store.put_mapping(&lock, &m).unwrap();
        assert_eq!(store.mapping(&m.ucloud).unwrap(), Some(m.clone()));
        let file = dir.join("mappings").join(m.ucloud.file_name());
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        let d = Drive::home(
            DriveId::new("17").unwrap(),
            m.ucloud.clone(),
            m.local.clone(),
            "/home/alice".into(),
        );
        store.put_drive(&lock, &d).unwrap();
        assert_eq!(
            fs::metadata(dir.join("drives/17")).unwrap().mode() & 0o777,
            0o644
        );
        assert_eq!(store.drives_of(&m.ucloud).unwrap(), vec![d.clone()]);
        let (all, problems) = store.mappings().unwrap();
        assert_eq!((all, problems), (vec![m.clone()], vec![]));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.join("mappings")).unwrap().count(), 1);
        store.remove_drive(&lock, &d.id).unwrap();
        store.remove_mapping(&lock, &m.ucloud).unwrap();
        assert_eq!(store.mapping(&m.ucloud).unwrap(), None);
        assert!(store.drives_of(&m.ucloud).unwrap().is_empty());
        drop(lock);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Two writers at once (two admins, or two gateway hosts on shared storage):
    /// every change is made under the lock and lands whole, and a reader running
    /// beside them only ever sees complete records.
    #[test]
    fn concurrent_writers_never_corrupt_the_store() {
        let dir = scratch("race");
        fs::create_dir(dir.join("mappings")).unwrap();
        fs::create_dir(dir.join("drives")).unwrap();
        const EACH: u32 = 40;
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let store = Store::at(&dir);
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let (_, problems) = store.mappings().unwrap();
                    assert!(problems.is_empty(), "a reader saw {problems:?}");
                    reads += 1;
                }
                reads
            });
            let writers: Vec<_> = (0..2u32)
                .map(|w| {
                    let dir = &dir;
                    s.spawn(move || {
                        // Its own Store and its own open of the lock file, as a
                        // second process would have.
                        let store = Store::at(dir);
                        for i in 0..EACH {
                            let lock = store.lock().unwrap();
                            let m = Mapping {
                                ucloud: UcloudName::new(&format!("W{w}#{i}")).unwrap(),
                                local: LocalName::new(&format!("w{w}u{i}")).unwrap(),
                                uid: 10_000 + w * 1000 + i,
                                created: Some(u64::from(i)),
                            };
                            // Check-then-write, the pattern the lock protects.
                            let (all, _) = store.mappings().unwrap();
                            assert!(all.iter().all(|o| o.local != m.local));
                            store.put_mapping(&lock, &m).unwrap();
                            if i % 3 == 0 {
                                store.remove_mapping(&lock, &m.ucloud).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(reader.join().unwrap() > 0);
        });
        let (all, problems) = Store::at(&dir).mappings().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let kept = (0..EACH).filter(|i| i % 3 != 0).count();
        assert_eq!(all.len(), 2 * kept);
        let names: Vec<String> = fs::read_dir(dir.join("mappings"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "temporary files left: {names:?}"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let dir = scratch("unsafe");
        fs::create_dir(dir.join("mappings")).unwrap();
        fs::set_permissions(dir.join("mappings"), fs::Permissions::from_mode(0o755)).unwrap();
        let err = Store::at(&dir).prepare().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }
}
