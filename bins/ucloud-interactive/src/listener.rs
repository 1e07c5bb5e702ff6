//! Whether the port a job's application names is the caller's: a process of the
//! caller's listens on it at the job's node. `ss -p` run as the caller shows the
//! owning process only for the caller's own sockets, so a listener of anyone
//! else (another user's program that took the port, root's sshd) shows none and
//! is refused. On this host `ss` runs here; on a compute node it runs there, as a
//! step of the job (`srun --overlap`), which costs a step's start per connection.

use crate::error::Error;
use crate::slurm::Place;
use std::process::Command;

/// Checks the listener; the address to connect to.
pub fn check(place: &Place, port: u16) -> Result<String, Error> {
    let filter = format!("sport = :{port}");
    let local = is_this_host(&place.node);
    let mut command = if local {
        Command::new("ss")
    } else {
        let mut srun = Command::new("srun");
        srun.arg(format!("--jobid={}", place.slurm_id))
            // A step that cannot start at once is not waited for.
            .args([
                "--overlap",
                "--immediate=10",
                "--nodes=1",
                "--ntasks=1",
                "--quiet",
            ])
            .arg(format!("--nodelist={}", place.node))
            .arg("ss");
        srun
    };
    let out = command
        .args(["-H", "-l", "-t", "-n", "-p"])
        .arg(&filter)
        .output()
        .map_err(|e| Error::Slurm(format!("cannot run ss: {e}")))?;
    if !out.status.success() {
        return Err(Error::Slurm(format!(
            "ss on {} failed: {}",
            place.node,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    judge(&String::from_utf8_lossy(&out.stdout), port, &place.node)?;
    Ok(if local {
        "127.0.0.1".into()
    } else {
        place.node.clone()
    })
}

/// `ss -Hltnp` lines of the port's listeners: at least one, and each the caller's.
fn judge(listed: &str, port: u16, node: &str) -> Result<(), Error> {
    let lines: Vec<&str> = listed.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return Err(Error::Unreachable(format!(
            "nothing listens on port {port} at {node}: the application is not (yet) \
             serving there (it must listen on the port its UCloud application names)"
        )));
    }
    if lines.iter().any(|l| !l.contains("users:((")) {
        return Err(Error::NotYourJob(format!(
            "port {port} at {node} is not one of your processes' (the proxy connects \
             only to a port a process of yours listens on)"
        )));
    }
    Ok(())
}

fn is_this_host(node: &str) -> bool {
    let Ok(name) = nix::unistd::gethostname() else {
        return false;
    };
    let name = name.to_string_lossy();
    let short = name.split('.').next().unwrap_or_default();
    node == name || node == short || node == "localhost"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_callers_own_listener_passes() {
        let own = "LISTEN 0 128 0.0.0.0:8888 0.0.0.0:* users:((\"web-app\",pid=4242,fd=3))\n";
        assert!(judge(own, 8888, "n1").is_ok());
        let foreign = "LISTEN 0 128 0.0.0.0:8888 0.0.0.0:*\n";
        assert!(matches!(
            judge(foreign, 8888, "n1"),
            Err(Error::NotYourJob(_))
        ));
        // Two listeners (v4 and v6): both must be the caller's.
        assert!(judge(&format!("{own}{foreign}"), 8888, "n1").is_err());
        assert!(matches!(
            judge("\n", 8888, "n1"),
            Err(Error::Unreachable(_))
        ));
    }
}
