//! Becomes the target account for good, in OpenSSH's `permanently_set_uid` order,
//! then proves it: regaining root must fail, and what the kernel reports must be
//! exactly the target's identity with no capabilities and no_new_privs set.

use crate::error::Error;
use crate::mapping::Target;
use caps::CapSet;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{
    getgroups, getppid, getresgid, getresuid, setgroups, setresgid, setresuid, Gid, Pid, Uid,
};
use std::collections::BTreeSet;

pub fn become_target(target: &Target, parent: Pid) -> Result<(), Error> {
    let fail = |step: &str, e: &dyn std::fmt::Display| Error::Drop(format!("{step} failed: {e}"));
    setgroups(&target.groups).map_err(|e| fail("setgroups", &e))?;
    setresgid(target.gid, target.gid, target.gid).map_err(|e| fail("setresgid", &e))?;
    // While still root: CAP_SETPCAP is needed for the bounding set, and setresuid to
    // a non-zero uid takes it away.
    caps::clear(None, CapSet::Bounding).map_err(|e| fail("dropping the bounding set", &e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clearing ambient capabilities", &e))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| fail("clearing inheritable capabilities", &e))?;
    prctl::set_keepcaps(false).map_err(|e| fail("PR_SET_KEEPCAPS 0", &e))?;
    setresuid(target.uid, target.uid, target.uid).map_err(|e| fail("setresuid", &e))?;
    prctl::set_no_new_privs().map_err(|e| fail("PR_SET_NO_NEW_PRIVS", &e))?;
    prove(target)?;
    // After the uid change: the kernel clears the death signal on credential changes.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| fail("PR_SET_PDEATHSIG", &e))?;
    if getppid() != parent {
        return Err(Error::Drop(
            "the gateway exited while the request was being prepared".into(),
        ));
    }
    Ok(())
}

fn prove(target: &Target) -> Result<(), Error> {
    let broken = |why: String| Error::Drop(format!("privileges were not dropped: {why}"));
    let (root, group_root) = (Uid::from_raw(0), Gid::from_raw(0));
    if setresuid(root, root, root).is_ok() {
        return Err(broken("root uid could be regained".into()));
    }
    if setresgid(group_root, group_root, group_root).is_ok() {
        return Err(broken("root gid could be regained".into()));
    }
    let uids = getresuid().map_err(|e| broken(e.to_string()))?;
    if [uids.real, uids.effective, uids.saved] != [target.uid; 3] {
        return Err(broken(format!("uids are {uids:?}")));
    }
    let gids = getresgid().map_err(|e| broken(e.to_string()))?;
    if [gids.real, gids.effective, gids.saved] != [target.gid; 3] {
        return Err(broken(format!("gids are {gids:?}")));
    }
    let raw = |groups: &[Gid]| groups.iter().map(|g| g.as_raw()).collect::<BTreeSet<_>>();
    let have = raw(&getgroups().map_err(|e| broken(e.to_string()))?);
    let want = raw(&target.groups);
    if have != want {
        return Err(broken(format!("groups are {have:?}, expected {want:?}")));
    }
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| broken(format!("cannot read /proc/self/status: {e}")))?;
    check_status(&status).map_err(broken)
}

/// Every capability set empty and no_new_privs on, as the kernel reports them
/// (this also catches capabilities newer than the caps crate knows).
fn check_status(status: &str) -> Result<(), String> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .ok_or(format!("/proc/self/status has no {name}"))
    };
    for name in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let value = field(name)?;
        if !value.trim_start_matches('0').is_empty() {
            return Err(format!("{name} is {value}"));
        }
    }
    match field("NoNewPrivs")? {
        "1" => Ok(()),
        other => Err(format!("NoNewPrivs is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_check_wants_every_set_empty() {
        let good = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                    CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n\
                    CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        assert!(check_status(good).is_ok());
        let bnd = good.replace("CapBnd:\t0000000000000000", "CapBnd:\t0000010000000000");
        assert!(check_status(&bnd).unwrap_err().contains("CapBnd"));
        assert!(check_status(&good.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0")).is_err());
        assert!(check_status("CapInh:\t0\n").is_err());
    }
}
