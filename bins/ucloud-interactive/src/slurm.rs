//! Where the shell goes: the caller's running Slurm job named after the UCloud job
//! (found as the caller, `squeue -u $USER -n ID`, so that another user's job is
//! never in the list whatever the session says), and the node of the rank asked
//! for (`scontrol show hostnames`).

use crate::error::Error;
use std::process::Command;

/// The Slurm job and the node the shell runs on.
#[derive(Debug, PartialEq, Eq)]
pub struct Place {
    pub slurm_id: String,
    pub node: String,
}

pub fn locate(job: &str, rank: u32, user: &str) -> Result<Place, Error> {
    let listed = run(Command::new("squeue")
        .args(["-h", "-t", "all", "-u", user, "-n", job])
        .args(["-o", "%i %T %N"]))?;
    let (slurm_id, nodelist) = pick(&listed, job)?;
    let hosts = run(Command::new("scontrol").args(["show", "hostnames", &nodelist]))?;
    let node = hosts
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .nth(rank as usize)
        .ok_or_else(|| {
            Error::BadRequest(format!(
                "job {job} runs on {} node(s): rank {rank} is not one of them",
                hosts.lines().filter(|l| !l.trim().is_empty()).count()
            ))
        })?;
    valid_host(node)?;
    Ok(Place {
        slurm_id,
        node: node.to_string(),
    })
}

fn run(command: &mut Command) -> Result<String, Error> {
    let out = command
        .output()
        .map_err(|e| Error::Slurm(format!("cannot run {:?}: {e}", command.get_program())))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Slurm(format!(
            "{:?} failed: {}",
            command.get_program(),
            why.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running job among squeue's `id state nodelist` lines of the caller's jobs
/// named `job`.
fn pick(listed: &str, job: &str) -> Result<(String, String), Error> {
    let jobs: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 2 && f[0].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if jobs.is_empty() {
        return Err(Error::NotYourJob(format!(
            "you have no Slurm job for UCloud job {job}: Slurm lets only a job's owner open \
             a shell in it (a job another project member started is theirs)"
        )));
    }
    match jobs.iter().find(|f| f[1] == "RUNNING" && f.len() == 3) {
        Some(f) => Ok((f[0].to_string(), f[2].to_string())),
        None => Err(Error::NotRunning(format!(
            "job {job} is not running (Slurm says {}): an interactive session opens in a running job only",
            jobs[0][1]
        ))),
    }
}

/// A node name as Slurm prints it; never an option for srun.
fn valid_host(node: &str) -> Result<(), Error> {
    let ok = !node.starts_with('-')
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Slurm(format!("Slurm named an odd node {node:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_job_of_the_caller() {
        assert_eq!(
            pick("12 COMPLETED n1\n13 RUNNING n[1-2]\n", "42"),
            Ok(("13".into(), "n[1-2]".into()))
        );
        assert!(matches!(pick("", "42"), Err(Error::NotYourJob(_))));
        assert!(matches!(
            pick("slurm_load_jobs error\n", "42"),
            Err(Error::NotYourJob(_))
        ));
        let pending = pick("12 PENDING (Resources)\n", "42").unwrap_err();
        assert!(pending.to_string().contains("PENDING"), "{pending}");
        assert!(valid_host("node-1.local").is_ok());
        for bad in ["-w", "a b", "a;b", ""] {
            assert!(valid_host(bad).is_err() || bad.is_empty(), "{bad}");
        }
    }
}
