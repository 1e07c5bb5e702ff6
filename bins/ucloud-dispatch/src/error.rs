//! The one error type of the dispatcher. Every refusal becomes exactly one JSON line
//! on stderr (`{"status","errorCode","why"}`, see contracts.md) and one exit code:
//! 64 bad envelope or usage, 77 refused, 78 unsafe or misconfigured installation,
//! 70 internal error. The `why` texts are read by admins and, through the gateway,
//! by UCloud users: they say what is wrong and what to change.

use std::fmt;
use ucloud_wire::error::Failure;

pub const EXIT_USAGE: u8 = 64;
pub const EXIT_REFUSED: u8 = 77;
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_INTERNAL: u8 = 70;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Arguments, or fds 0..3 not as the contract says.
    Usage(String),
    BadEnvelope(String),
    /// euid is not 0; `no_new_privs` says why when it is set.
    NotRoot {
        no_new_privs: bool,
        euid: u32,
    },
    MissingCapability(&'static str),
    UnsafeInstallation(String),
    Config(String),
    WrongCaller {
        uid: u32,
        expected: String,
    },
    BadToken(String),
    UnsupportedCredential(String),
    UserRequired(String),
    UserMismatch {
        header: String,
        claim: String,
    },
    NotMapped(String),
    AccountRefused(String),
    UnsupportedCall(String),
    Audit(String),
    Drop(String),
    Exec(String),
    Internal(String),
}

impl Error {
    /// The table: each error's HTTP status, errorCode and exit code.
    fn class(&self) -> (u16, &'static str, u8) {
        use Error::*;
        match self {
            Usage(_) => (400, "BAD_REQUEST", EXIT_USAGE),
            BadEnvelope(_) => (400, "BAD_ENVELOPE", EXIT_USAGE),
            NotRoot { .. } | MissingCapability(_) => {
                (500, "DISPATCHER_NOT_PRIVILEGED", EXIT_CONFIG)
            }
            UnsafeInstallation(_) => (500, "UNSAFE_INSTALLATION", EXIT_CONFIG),
            Config(_) => (500, "MISCONFIGURED", EXIT_CONFIG),
            Audit(_) => (500, "AUDIT_FAILED", EXIT_CONFIG),
            WrongCaller { .. } => (403, "WRONG_CALLER", EXIT_REFUSED),
            BadToken(_) => (401, "BAD_TOKEN", EXIT_REFUSED),
            UnsupportedCredential(_) => (400, "UNSUPPORTED_CREDENTIAL", EXIT_REFUSED),
            UserRequired(_) => (400, "USER_REQUIRED", EXIT_REFUSED),
            UserMismatch { .. } => (403, "USER_MISMATCH", EXIT_REFUSED),
            NotMapped(_) => (403, "NOT_MAPPED", EXIT_REFUSED),
            AccountRefused(_) => (403, "ACCOUNT_REFUSED", EXIT_REFUSED),
            UnsupportedCall(_) => (404, "UNSUPPORTED_CALL", EXIT_REFUSED),
            Drop(_) => (500, "PRIVILEGE_DROP_FAILED", EXIT_INTERNAL),
            Exec(_) => (500, "EXEC_FAILED", EXIT_INTERNAL),
            Internal(_) => (500, "INTERNAL", EXIT_INTERNAL),
        }
    }

    pub fn status(&self) -> u16 {
        self.class().0
    }

    pub fn code(&self) -> &'static str {
        self.class().1
    }

    pub fn exit_code(&self) -> u8 {
        self.class().2
    }

    pub fn failure(&self) -> Failure {
        Failure::new(self.status(), self.code(), self.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Usage(m)
            | BadEnvelope(m)
            | UnsafeInstallation(m)
            | Config(m)
            | BadToken(m)
            | UnsupportedCredential(m)
            | UserRequired(m)
            | NotMapped(m)
            | AccountRefused(m)
            | Audit(m)
            | Drop(m)
            | Exec(m)
            | Internal(m) => f.write_str(m),
            NotRoot {
                no_new_privs: true, ..
            } => f.write_str(
                "ucloud-dispatch is not running as root because no_new_privs is set \
                 (NoNewPrivileges=yes, setpriv --no-new-privs, or a sandbox option that \
                 implies it): start the gateway without no_new_privs",
            ),
            NotRoot { euid, .. } => write!(
                f,
                "ucloud-dispatch is not running as root (euid {euid}): install it owned by \
                 root with mode 4750 and the gateway's group, on a file system not mounted nosuid"
            ),
            MissingCapability(cap) => write!(
                f,
                "ucloud-dispatch runs as root but lacks {cap}: the caller's capability \
                 bounding set must keep CAP_SETUID, CAP_SETGID and CAP_SETPCAP \
                 (check CapabilityBoundingSet= of the gateway's unit)"
            ),
            WrongCaller { uid, expected } => write!(
                f,
                "only the gateway account {expected} may run ucloud-dispatch; the caller's \
                 uid is {uid}"
            ),
            UserMismatch { header, claim } => write!(
                f,
                "the request names UCloud user {header:?} but the token is for {claim:?}"
            ),
            UnsupportedCall(call) => write!(f, "this provider does not implement {call}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_contract_exit_code_and_a_usable_status() {
        let all = [
            Error::Usage("x".into()),
            Error::BadEnvelope("x".into()),
            Error::NotRoot {
                no_new_privs: true,
                euid: 5,
            },
            Error::MissingCapability("CAP_SETUID"),
            Error::UnsafeInstallation("x".into()),
            Error::Config("x".into()),
            Error::WrongCaller {
                uid: 5,
                expected: "gw".into(),
            },
            Error::BadToken("x".into()),
            Error::UnsupportedCredential("x".into()),
            Error::UserRequired("x".into()),
            Error::UserMismatch {
                header: "a".into(),
                claim: "b".into(),
            },
            Error::NotMapped("x".into()),
            Error::AccountRefused("x".into()),
            Error::UnsupportedCall("files.x".into()),
            Error::Audit("x".into()),
            Error::Drop("x".into()),
            Error::Exec("x".into()),
            Error::Internal("x".into()),
        ];
        for e in all {
            assert!([64, 70, 77, 78].contains(&e.exit_code()), "{e:?}");
            let f = e.failure();
            assert_eq!(
                f.status,
                e.status(),
                "{e:?}: 449/503 must never come from here"
            );
            assert!(!f.why.is_empty());
        }
        assert!(Error::NotRoot {
            no_new_privs: true,
            euid: 5
        }
        .to_string()
        .contains("no_new_privs is set"));
        assert_eq!(
            Error::UnsupportedCall("files.x".into()).to_string(),
            "this provider does not implement files.x"
        );
    }
}
