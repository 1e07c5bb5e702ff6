//! What the session is for: the job and rank, or the folder, the dispatcher bound
//! the session identifier to (its `sub` claim, signed), and the terminal size the
//! browser asked for. The plugin has no key: the dispatcher verified the identifier and
//! hands it over in `UCLOUD_TRANSFER_TOKEN`; this reads its claims.

use crate::error::Error;
use serde_json::Value;
use ucloud_wire::transfer::{self, Subject};

pub struct Session {
    pub place: Place,
    pub cols: u16,
    pub rows: u16,
}

/// Where the shell runs.
pub enum Place {
    /// In the job (the Slurm job's name is the UCloud job id), on the rank's node.
    Job { job: String, rank: u32 },
    /// On this login node, in the folder (a UCloud path).
    Folder(String),
}

/// What the token the dispatcher verified for `call` is bound to (its signed
/// `sub`). Every call of this plugin starts here.
pub fn subject(token: Option<&str>, call: &str, now: u64) -> Result<Option<Subject>, Error> {
    let token = token.ok_or_else(|| {
        Error::BadRequest(
            "no session identifier (UCLOUD_TRANSFER_TOKEN) from the dispatcher".into(),
        )
    })?;
    let claims = transfer::read_verified(token, call, now)
        .map_err(|why| Error::BadRequest(format!("the session identifier {why}")))?;
    Ok(claims.subject.as_deref().and_then(Subject::parse))
}

pub fn read(token: Option<&str>, request: &[u8], now: u64) -> Result<Session, Error> {
    let place = match subject(token, "jobs.shell", now)? {
        Some(Subject::Job { id, rank }) => Place::Job { job: id, rank },
        Some(Subject::Folder(path)) => Place::Folder(path),
        Some(Subject::Web { .. }) | None => {
            return Err(Error::BadRequest(
                "the session identifier names no job or folder".into(),
            ))
        }
    };
    let (cols, rows) = size(request)?;
    Ok(Session { place, cols, rows })
}

/// `{"type":"initialize","cols":C,"rows":R}`, as the gateway passes it on.
fn size(request: &[u8]) -> Result<(u16, u16), Error> {
    let v: Value = serde_json::from_slice(request)
        .map_err(|e| Error::BadRequest(format!("the request is not JSON: {e}")))?;
    let dim = |k: &str| {
        v[k].as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| Error::BadRequest(format!("the request's {k} is not 1 to 65535")))
    };
    Ok((dim("cols")?, dim("rows")?))
}

/// A token as the dispatcher mints it, for `call` and `subject` (unit tests).
#[cfg(test)]
pub fn test_token(call: &str, subject: Option<&str>) -> String {
    use ucloud_wire::names::{LocalName, UcloudName};
    ucloud_wire::token::install_crypto_provider();
    let claims = transfer::Claims::new(
        call,
        UcloudName::new("AliceHansen#1001").unwrap(),
        LocalName::new("alice").unwrap(),
        1001,
        "0123456789abcdef0123456789abcdef".into(),
        1_800_000_000,
        subject.map(str::to_string),
    );
    transfer::mint(&[9; 32], &claims).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(subject: Option<&str>, call: &str) -> String {
        test_token(call, subject)
    }

    #[test]
    fn the_job_comes_from_the_signed_subject_and_the_size_from_the_request() {
        let t = token(Some("job/42/1"), "jobs.shell");
        let s = read(
            Some(&t),
            br#"{"type":"initialize","cols":120,"rows":40}"#,
            1_800_000_010,
        )
        .unwrap();
        assert!(matches!(&s.place, Place::Job { job, rank: 1 } if job == "42"));
        assert_eq!((s.cols, s.rows), (120, 40));
        let f = token(Some("folder/7/work"), "jobs.shell");
        let s = read(Some(&f), br#"{"cols":80,"rows":24}"#, 1_800_000_010).unwrap();
        assert!(matches!(&s.place, Place::Folder(p) if p == "/7/work"));
    }

    #[test]
    fn anything_else_is_refused() {
        let good = br#"{"cols":80,"rows":24}"#;
        let now = 1_800_000_010;
        let job = token(Some("job/42/0"), "jobs.shell");
        for (tok, req, why) in [
            (None, &good[..], "no session identifier"),
            (
                Some(token(Some("job/42/0"), "files.download")),
                &good[..],
                "is not for jobs.shell",
            ),
            (
                Some(token(Some("web/1/0/80"), "jobs.shell")),
                &good[..],
                "no job or folder",
            ),
            (
                Some(token(None, "jobs.shell")),
                &good[..],
                "no job or folder",
            ),
            (Some(job.clone()), &br#"{"cols":0,"rows":24}"#[..], "cols"),
            (
                Some(job.clone()),
                &br#"{"cols":80,"rows":70000}"#[..],
                "rows",
            ),
            (Some(job.clone()), &br#"{"cols":80}"#[..], "rows"),
            (Some(job.clone()), &b"[1"[..], "not JSON"),
        ] {
            let e = read(tok.as_deref(), req, now).err().expect("refused");
            assert!(e.to_string().contains(why), "{e} lacks {why}");
        }
        let e = read(Some(&job), good, 1_900_000_000).err().unwrap();
        assert!(e.to_string().contains("expired"), "{e}");
    }
}
