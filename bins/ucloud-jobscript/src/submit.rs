//! `--submit`: the rest of jobs.create once the folders are made. Submits each job
//! with `sbatch --parsable` as the calling user and answers UCloud as a plugin does
//! (ucloud-im-protocol(7)). The request is one transaction: when Slurm refuses a
//! job, the jobs this call submitted are cancelled and every folder it made is
//! removed, and what could not be undone is named in the why.

use crate::render::{Planned, Refusal};
use nix::sys::stat::Mode as FileMode;
use nix::sys::stat::{umask, Mode};
use std::io::Write;
use std::process::{Command, Stdio};

/// The umask a job in a project drive is made and submitted with: the project's
/// members (its group) may read the job's folder, script and output but write
/// none of them, so that no member can change what another member's job runs or
/// where it writes; others get nothing.
pub(crate) const SHARED_UMASK: u32 = 0o027;

/// Sets the umask for one job's files and its sbatch; the previous one.
pub(crate) fn umask_for(shared: bool, own: FileMode) -> FileMode {
    umask(if shared {
        FileMode::from_bits_truncate(SHARED_UMASK)
    } else {
        own
    })
}

/// The bulk answer, `{"responses":[{"id":"USER/SLURMID"},...]}`, or the failure
/// (after the rollback). `own` is the umask the program was started with: a
/// personal job's sbatch runs with it, a job in a project drive's with umask 027.
pub fn submit_all(jobs: &[Planned], user: &str, own: Mode) -> Result<String, Refusal> {
    let answer = submit_under(jobs, user, own);
    umask(own);
    answer
}

fn submit_under(jobs: &[Planned], user: &str, own: Mode) -> Result<String, Refusal> {
    let mut submitted: Vec<String> = Vec::new();
    let mut responses = Vec::new();
    for job in jobs {
        umask_for(job.shared, own);
        match submit(job) {
            Ok(slurm_id) => {
                responses.push(serde_json::json!({ "id": format!("{user}/{slurm_id}") }));
                submitted.push(slurm_id);
            }
            Err(mut refusal) => {
                umask(own);
                refusal.why.push_str(&rollback(&submitted, jobs));
                return Err(refusal);
            }
        }
    }
    Ok(serde_json::json!({ "responses": responses }).to_string())
}

/// One `sbatch --parsable` with the script on its standard input; the Slurm job id.
/// The script goes from memory to sbatch, never through job.sbatch: in a project
/// drive a file is a name other members may reach between the write and sbatch's
/// read, and what sbatch reads is what runs, as the caller. Every option is in the
/// script's #SBATCH lines (sbatch reads them from standard input as from a file),
/// the folder with them: --chdir, --output and --error.
fn submit(job: &Planned) -> Result<String, Refusal> {
    let mut sbatch = Command::new("sbatch");
    sbatch
        .arg("--parsable")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if job.shared {
        // sbatch passes this to the job, and slurmstepd sets it before it opens
        // stdout.txt and stderr.txt (0640 then) and starts the script. Given here,
        // not taken from sbatch's own umask, so nothing in the environment changes it.
        sbatch.env("SLURM_UMASK", format!("{:04o}", SHARED_UMASK));
    }
    let cannot_run = |e: std::io::Error| Refusal {
        status: 500,
        code: "SLURM_UNAVAILABLE",
        why: format!("cannot run sbatch for job {}: {e}", job.id),
    };
    let mut child = sbatch.spawn().map_err(cannot_run)?;
    if let Some(mut stdin) = child.stdin.take() {
        // sbatch reads the whole script before it says anything, so this write
        // cannot wait on a full stdout. When sbatch stops early (a broken pipe),
        // its status and stderr below say why.
        let _ = stdin.write_all(job.script.as_bytes());
    }
    let output = child.wait_with_output().map_err(cannot_run)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let why = slurm_why(&format!("{stderr}\n{stdout}"));
        return Err(Refusal {
            status: 400,
            code: "SLURM_REFUSED",
            why: format!(
                "Slurm refused job {}: {}",
                job.id,
                if why.is_empty() {
                    "sbatch failed without a message"
                } else {
                    &why
                }
            ),
        });
    }
    // --parsable prints `id` or `id;cluster` last, after any warnings.
    let last = stdout
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .unwrap_or("");
    let id = last.split(';').next().unwrap_or("");
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal {
            status: 500,
            code: "SLURM_FAILED",
            why: format!("sbatch printed no job id for job {}: {last}", job.id),
        });
    }
    Ok(id.to_string())
}

/// Slurm's reason without the tool's prefixes: the last line that says something.
pub fn slurm_why(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = match line.split_once(": error: ") {
                Some((tool, rest)) if tool.bytes().all(|b| b.is_ascii_lowercase()) => rest,
                _ => line,
            };
            line.strip_prefix("Batch job submission failed: ")
                .unwrap_or(line)
        })
        .rfind(|line| !line.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Cancels what was submitted and removes every folder of the call; the text to
/// add to the why when something could not be undone.
fn rollback(submitted: &[String], jobs: &[Planned]) -> String {
    let mut leftovers = String::new();
    for slurm_id in submitted {
        let cancelled = Command::new("scancel")
            .arg(slurm_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !cancelled {
            leftovers.push_str(&format!(" Slurm job {slurm_id};"));
        }
    }
    for job in jobs {
        if std::fs::remove_dir_all(&job.folder).is_err() {
            leftovers.push_str(&format!(" folder {};", job.folder));
        }
    }
    if leftovers.is_empty() {
        leftovers
    } else {
        format!(" (could not undo:{leftovers})")
    }
}

#[cfg(test)]
mod tests {
    use super::slurm_why;

    #[test]
    fn slurms_reason_loses_the_prefixes_and_blank_lines() {
        assert_eq!(
            slurm_why(
                "sbatch: error: Batch job submission failed: Invalid partition name specified\n\n"
            ),
            "Invalid partition name specified"
        );
        assert_eq!(
            slurm_why("sbatch: error: warning one\nsbatch: error: More processors requested than permitted\n"),
            "More processors requested than permitted"
        );
        assert_eq!(slurm_why("plain text"), "plain text");
        assert_eq!(slurm_why("Some: error: kept"), "Some: error: kept");
        assert_eq!(slurm_why("\n \n"), "");
    }
}
