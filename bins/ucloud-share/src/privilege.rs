//! Running a step as the sharer: a forked child drops to her uid and gid for
//! good, proves it, runs the step and sends its result back over a pipe.
//!
//! The walk goes through a tree the sharer controls, so it runs with her
//! credentials and no others: what she cannot change, it cannot change. She
//! can also stall it (a deep tree, SIGSTOP: she may signal a process of her
//! uid), so the root parent waits only until a deadline and then kills the child;
//! and she can kill it, which the parent reports as a step without an answer.
//!
//! The child is a copy of a root process, so before it changes its uid it keeps
//! nothing of root's she could reach once it is hers: every inherited
//! descriptor is closed but the answer pipe (stdin, stdout and stderr become
//! /dev/null), and it is made non-dumpable, so she can neither ptrace it nor
//! open its descriptors through /proc. The uid change resets dumpability to
//! fs.suid_dumpable, so it is made non-dumpable again after, and a site whose
//! fs.suid_dumpable is 1 (which would leave it traceable between the two) is
//! refused. It dies with its parent (PR_SET_PDEATHSIG, which a uid change
//! clears too, so it is set again after).

use crate::answer::{Error, Report};
use crate::sys;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{Gid, Pid, Uid};
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// The child's RLIMIT_NOFILE: the walk holds a descriptor per directory level
/// (see `walk::Limits::depth`).
pub const CHILD_FILES: u64 = 1024;
/// A report or an error message is far shorter.
const ANSWER_MAX: usize = 64 * 1024;

/// Runs `f` in a child process with the credentials `uid`, `gid` and the only
/// group `gid`; its result, or a timeout once `deadline` passes (the child is
/// then killed).
pub fn as_sharer(
    uid: u32,
    gid: u32,
    deadline: Instant,
    f: impl FnOnce() -> Result<Report, Error>,
) -> Result<Report, Error> {
    run(uid, gid, deadline, &[], f)
}

/// `as_sharer`, with the descriptors `keep` left open in the child too: the
/// tests reach a folder through one, as the recipient reaches it through the gate.
#[cfg(test)]
pub(crate) fn as_sharer_keeping(
    uid: u32,
    gid: u32,
    deadline: Instant,
    keep: &[RawFd],
    f: impl FnOnce() -> Result<Report, Error>,
) -> Result<Report, Error> {
    run(uid, gid, deadline, keep, f)
}

fn run(
    uid: u32,
    gid: u32,
    deadline: Instant,
    keep: &[RawFd],
    f: impl FnOnce() -> Result<Report, Error>,
) -> Result<Report, Error> {
    if uid == 0 || gid == 0 || uid == u32::MAX || gid == u32::MAX {
        return Err(Error::Refused(format!(
            "uid {uid} gid {gid}: a share step never runs as root or as an invalid id"
        )));
    }
    if std::fs::read_to_string("/proc/sys/fs/suid_dumpable").is_ok_and(|v| v.trim() == "1") {
        return Err(Error::Refused(
            "fs.suid_dumpable is 1: the sharer could trace the child as it drops to her uid".into(),
        ));
    }
    let parent = nix::unistd::getpid();
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))?;
    match sys::fork().map_err(|e| Error::sys("fork", e))? {
        sys::Forked::Child => {
            drop(read);
            sys::exit(child(write, keep, parent, uid, gid, f))
        }
        sys::Forked::Parent(child) => {
            drop(write);
            let answer = read_until(&read, deadline);
            // The answer is whole once the pipe is closed; whatever the child does
            // after that (or instead, at the deadline) is not wanted. It is not
            // reaped yet, so its pid cannot have been reused.
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            parse(&answer?)
        }
    }
}

/// The child's life; its exit status.
fn child(
    write: OwnedFd,
    keep: &[RawFd],
    parent: Pid,
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> Result<Report, Error>,
) -> i32 {
    // Above stderr, out of the way of the /dev/null copies (a parent started
    // without stdin has its pipe at 0 or 1).
    let moved = sys::dup_at_least(&write, 3);
    drop(write);
    let Ok(write) = moved else {
        return 3;
    };
    // A panic must not unwind into the caller's stack in this copy of it.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        isolate(&write, keep)
            .and_then(|()| drop_to(uid, gid, parent))
            .and_then(|()| f())
    }));
    let Ok(result) = result else {
        return 2;
    };
    let answer = match result {
        Ok(report) => json!({"ok": report.to_json()}),
        Err(e) => json!({"err": e.to_json()}),
    };
    match std::fs::File::from(write).write_all(answer.to_string().as_bytes()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Leaves the child no descriptor of root's but the answer pipe and `keep`:
/// stdin, stdout and stderr on /dev/null, every other one closed.
fn isolate(pipe: &OwnedFd, keep: &[RawFd]) -> Result<(), Error> {
    let fail = |what: &str, e: Errno| Error::sys(format!("in the sharer's child: {what}"), e);
    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail("/dev/null", e))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| fail("stdin", e))?;
    nix::unistd::dup2_stdout(&null).map_err(|e| fail("stdout", e))?;
    nix::unistd::dup2_stderr(&null).map_err(|e| fail("stderr", e))?;
    drop(null);
    let mut open = keep.to_vec();
    open.push(pipe.as_raw_fd());
    sys::close_all_but(&open).map_err(|e| fail("closing the inherited descriptors", e))
}

/// Reads the pipe to its end, or until the deadline.
fn read_until(fd: &OwnedFd, deadline: Instant) -> Result<Vec<u8>, Error> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(
                "the step as the sharer did not finish by its deadline and was killed".into(),
            ));
        }
        let wait = PollTimeout::from((left.as_millis() + 1).min(10_000) as u16);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(Error::sys("poll", e)),
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) if answer.len() + n <= ANSWER_MAX => answer.extend_from_slice(&buf[..n]),
            Ok(_) => return Err(Error::Failed("the sharer's child answered too much".into())),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return Err(Error::sys("read", e)),
        }
    }
}

/// The child's answer: `{"ok": report}` or `{"err": error}`, nothing else.
fn parse(answer: &[u8]) -> Result<Report, Error> {
    if answer.is_empty() {
        return Err(Error::Failed(
            "the step as the sharer ended without an answer (killed, or it crashed)".into(),
        ));
    }
    let bad = || Error::Failed("the step as the sharer answered something malformed".into());
    let v: Value = serde_json::from_slice(answer).map_err(|_| bad())?;
    match (v.get("ok"), v.get("err"), v.as_object().map(|o| o.len())) {
        (Some(ok), None, Some(1)) => Report::from_json(ok).ok_or_else(bad),
        (None, Some(err), Some(1)) => Err(Error::from_json(err).ok_or_else(bad)?),
        _ => Err(bad()),
    }
}

/// Becomes `uid`/`gid` with no other group, for good, and proves it.
fn drop_to(uid: u32, gid: u32, parent: Pid) -> Result<(), Error> {
    let fail = |what: &str, e: Errno| Error::sys(format!("as the sharer: {what}"), e);
    // Before the uid changes: no moment in which the process is hers and
    // dumpable, or outlives the parent that would kill it at the deadline.
    nix::sys::prctl::set_dumpable(false).map_err(|e| fail("PR_SET_DUMPABLE", e))?;
    orphan_dies(parent).map_err(|e| fail("PR_SET_PDEATHSIG", e))?;
    setrlimit(Resource::RLIMIT_NOFILE, CHILD_FILES, CHILD_FILES)
        .map_err(|e| fail("RLIMIT_NOFILE", e))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| fail("RLIMIT_CORE", e))?;
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setgroups(&[g]).map_err(|e| fail("setgroups", e))?;
    nix::unistd::setresgid(g, g, g).map_err(|e| fail("setresgid", e))?;
    nix::unistd::setresuid(u, u, u).map_err(|e| fail("setresuid", e))?;
    // The credential change set dumpability to fs.suid_dumpable and cleared the
    // parent-death signal: both again.
    nix::sys::prctl::set_dumpable(false).map_err(|e| fail("PR_SET_DUMPABLE", e))?;
    orphan_dies(parent).map_err(|e| fail("PR_SET_PDEATHSIG", e))?;
    prove(uid, gid)
}

/// SIGKILL when the parent goes; and if it went already, the end now.
fn orphan_dies(parent: Pid) -> Result<(), Errno> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        sys::exit(4);
    }
    Ok(())
}

fn prove(uid: u32, gid: u32) -> Result<(), Error> {
    let refuse = |what: &str| Error::Failed(format!("the drop to uid {uid} is not proven: {what}"));
    let r = nix::unistd::getresuid().map_err(|_| refuse("getresuid"))?;
    if [r.real, r.effective, r.saved] != [Uid::from_raw(uid); 3] {
        return Err(refuse("a uid is left over"));
    }
    let r = nix::unistd::getresgid().map_err(|_| refuse("getresgid"))?;
    if [r.real, r.effective, r.saved] != [Gid::from_raw(gid); 3] {
        return Err(refuse("a gid is left over"));
    }
    if nix::unistd::getgroups().ok().as_deref() != Some(&[Gid::from_raw(gid)][..]) {
        return Err(refuse("a supplementary group is left over"));
    }
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    if nix::unistd::setresuid(root.0, root.0, root.0).is_ok()
        || nix::unistd::setresgid(root.1, root.1, root.1).is_ok()
    {
        return Err(refuse("root can be regained"));
    }
    if capabilities().ok_or_else(|| refuse("the capabilities cannot be read"))? != 0 {
        return Err(refuse("a capability is left over"));
    }
    if nix::sys::prctl::get_dumpable() != Ok(false) {
        return Err(refuse("the process is dumpable"));
    }
    if nix::sys::prctl::get_pdeathsig() != Ok(Some(Signal::SIGKILL)) {
        return Err(refuse("the process would outlive its parent"));
    }
    Ok(())
}

/// The permitted and effective capability sets of this thread, or'ed together.
fn capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let set = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    };
    Some(set("CapPrm:")? | set("CapEff:")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{as_user, expect, ALICE};
    use std::time::Duration;

    #[test]
    fn the_child_is_the_sharer_and_nothing_more() {
        as_user(ALICE, || {
            let u = nix::unistd::getresuid().unwrap();
            let g = nix::unistd::getresgid().unwrap();
            expect(
                [u.real, u.effective, u.saved] == [Uid::from_raw(ALICE); 3],
                "uids",
            )?;
            expect(
                [g.real, g.effective, g.saved] == [Gid::from_raw(ALICE); 3],
                "gids",
            )?;
            expect(
                nix::unistd::getgroups().unwrap() == [Gid::from_raw(ALICE)],
                "groups",
            )?;
            let root = Uid::from_raw(0);
            expect(
                nix::unistd::setresuid(root, root, root) == Err(Errno::EPERM),
                "root regained",
            )?;
            expect(capabilities() == Some(0), "capabilities")?;
            expect(nix::sys::prctl::get_dumpable() == Ok(false), "dumpable")?;
            let files = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            expect(files == (CHILD_FILES, CHILD_FILES), "RLIMIT_NOFILE")?;
            expect(std::fs::read("/etc/shadow").is_err(), "reads /etc/shadow")
        })
        .unwrap();
        // And the parent is still root.
        assert!(nix::unistd::geteuid().is_root());
    }

    #[test]
    fn the_child_keeps_no_descriptor_of_roots_and_dies_with_its_parent() {
        let dir = std::env::temp_dir();
        let name = |what: &str| dir.join(format!("ucloud-share-{what}-{}", std::process::id()));
        let (leaked, kept) = (name("leaked"), name("kept"));
        let leak = std::fs::File::create(&leaked).unwrap();
        let keep = std::fs::File::create(&kept).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = as_sharer_keeping(ALICE, ALICE, deadline, &[keep.as_raw_fd()], || {
            let check = |ok: bool, what: &str| match ok {
                true => Ok(()),
                false => Err(Error::Refused(what.to_string())),
            };
            let open: Vec<(String, std::path::PathBuf)> = std::fs::read_dir("/proc/self/fd")
                .map_err(|e| Error::Refused(e.to_string()))?
                .filter_map(|e| {
                    let e = e.ok()?;
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), target))
                })
                .collect();
            let null = std::path::Path::new("/dev/null");
            for fd in ["0", "1", "2"] {
                let on_null = open.iter().any(|(n, t)| n == fd && t == null);
                check(on_null, &format!("fd {fd} is not /dev/null: {open:?}"))?;
            }
            check(
                !open.iter().any(|(_, t)| *t == leaked),
                "a descriptor leaked",
            )?;
            check(open.iter().any(|(_, t)| *t == kept), "the kept one is gone")?;
            // 0, 1, 2, the pipe, the kept one, and the listing's own.
            check(open.len() == 6, &format!("open: {open:?}"))?;
            check(
                nix::sys::prctl::get_pdeathsig() == Ok(Some(Signal::SIGKILL)),
                "no parent-death signal",
            )?;
            Ok(Report::default())
        });
        drop((leak, keep));
        let _ = std::fs::remove_file(&leaked);
        let _ = std::fs::remove_file(&kept);
        assert_eq!(got, Ok(Report::default()));
    }

    #[test]
    fn a_child_that_stalls_is_killed_at_the_deadline() {
        let started = Instant::now();
        let got = as_sharer(ALICE, ALICE, started + Duration::from_millis(300), || {
            std::thread::sleep(Duration::from_secs(60));
            Ok(Report::default())
        });
        assert!(matches!(got, Err(Error::Timeout(_))), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // A deadline already gone: the same, at once.
        let got = as_sharer(ALICE, ALICE, started, || Ok(Report::default()));
        assert!(matches!(got, Err(Error::Timeout(_))), "{got:?}");
    }

    #[test]
    fn errors_pass_through_and_a_crash_is_an_answer_missing() {
        let err = Error::Limit {
            limit: "depth".into(),
            report: Report {
                dirs: 3,
                ..Report::default()
            },
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            as_sharer(ALICE, ALICE, deadline, || Err(err.clone())),
            Err(err)
        );
        match as_sharer(ALICE, ALICE, deadline, || panic!("in the child")) {
            Err(Error::Failed(why)) => assert!(why.contains("without an answer"), "{why}"),
            other => panic!("{other:?}"),
        }
        for (uid, gid) in [(0, ALICE), (ALICE, 0), (u32::MAX, ALICE)] {
            let got = as_sharer(uid, gid, deadline, || Ok(Report::default()));
            assert!(matches!(got, Err(Error::Refused(_))), "{got:?}");
        }
    }

    #[test]
    fn only_a_well_formed_answer_is_taken() {
        let report = Report {
            files: 2,
            ..Report::default()
        };
        let ok = json!({"ok": report.to_json()}).to_string();
        assert_eq!(parse(ok.as_bytes()), Ok(report));
        let err = json!({"err": {"refused": "no"}}).to_string();
        assert_eq!(parse(err.as_bytes()), Err(Error::Refused("no".into())));
        for bad in [
            "",
            "{",
            "null",
            "[]",
            r#"{"ok": {}}"#,
            r#"{"err": {"refused": 7}}"#,
            r#"{"ok": {"dirs":0,"files":0,"skipped":0,"errors":0,"folderDev":0,"folderIno":0}, "err": {"refused": "x"}}"#,
            r#"{"ok": {"dirs":-1,"files":0,"skipped":0,"errors":0,"folderDev":0,"folderIno":0}}"#,
            r#"{"ok": {"dirs":0,"files":0,"skipped":0,"folderDev":0,"folderIno":0}}"#,
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(Error::Failed(_))),
                "{bad}"
            );
        }
    }
}
