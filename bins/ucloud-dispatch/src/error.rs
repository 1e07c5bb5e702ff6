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

/// Each variant carries its `why`; the few whose text is fixed are made by the
/// constructors below, so that the same refusal always reads the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Arguments, or fds 0..3 not as the contract says.
    Usage(String),
    BadEnvelope(String),
    /// Not root, or root without a capability the drop needs.
    NotPrivileged(String),
    UnsafeInstallation(String),
    Config(String),
    WrongCaller(String),
    BadToken(String),
    UnsupportedCredential(String),
    UserRequired(String),
    UserMismatch(String),
    NotMapped(String),
    AccountRefused(String),
    UnsupportedCall(String),
    Audit(String),
    Drop(String),
    Exec(String),
    Internal(String),
}

impl Error {
    /// The table: each error's HTTP status, errorCode, exit code and why.
    fn class(&self) -> (u16, &'static str, u8, &str) {
        use Error::*;
        match self {
            Usage(w) => (400, "BAD_REQUEST", EXIT_USAGE, w),
            BadEnvelope(w) => (400, "BAD_ENVELOPE", EXIT_USAGE, w),
            NotPrivileged(w) => (500, "DISPATCHER_NOT_PRIVILEGED", EXIT_CONFIG, w),
            UnsafeInstallation(w) => (500, "UNSAFE_INSTALLATION", EXIT_CONFIG, w),
            Config(w) => (500, "MISCONFIGURED", EXIT_CONFIG, w),
            Audit(w) => (500, "AUDIT_FAILED", EXIT_CONFIG, w),
            WrongCaller(w) => (403, "WRONG_CALLER", EXIT_REFUSED, w),
            BadToken(w) => (401, "BAD_TOKEN", EXIT_REFUSED, w),
            UnsupportedCredential(w) => (400, "UNSUPPORTED_CREDENTIAL", EXIT_REFUSED, w),
            UserRequired(w) => (400, "USER_REQUIRED", EXIT_REFUSED, w),
            UserMismatch(w) => (403, "USER_MISMATCH", EXIT_REFUSED, w),
            NotMapped(w) => (403, "NOT_MAPPED", EXIT_REFUSED, w),
            AccountRefused(w) => (403, "ACCOUNT_REFUSED", EXIT_REFUSED, w),
            UnsupportedCall(w) => (404, "UNSUPPORTED_CALL", EXIT_REFUSED, w),
            Drop(w) => (500, "PRIVILEGE_DROP_FAILED", EXIT_INTERNAL, w),
            Exec(w) => (500, "EXEC_FAILED", EXIT_INTERNAL, w),
            Internal(w) => (500, "INTERNAL", EXIT_INTERNAL, w),
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

    /// euid is not 0; `no_new_privs` says why when it is set.
    pub fn not_root(no_new_privs: bool, euid: u32) -> Error {
        Error::NotPrivileged(if no_new_privs {
            "ucloud-dispatch is not running as root because no_new_privs is set \
             (NoNewPrivileges=yes, setpriv --no-new-privs, or a sandbox option that \
             implies it): start the gateway without no_new_privs"
                .into()
        } else {
            format!(
                "ucloud-dispatch is not running as root (euid {euid}): install it owned by \
                 root with mode 4750 and the gateway's group, on a file system not mounted nosuid"
            )
        })
    }

    pub fn missing_capability(cap: impl fmt::Display) -> Error {
        Error::NotPrivileged(format!(
            "ucloud-dispatch runs as root but lacks {cap}: the caller's capability \
             bounding set must keep CAP_SETUID, CAP_SETGID and CAP_SETPCAP \
             (check CapabilityBoundingSet= of the gateway's unit)"
        ))
    }

    pub fn unsupported_call(call: &str) -> Error {
        Error::UnsupportedCall(format!("this provider does not implement {call}"))
    }

    pub fn user_mismatch(header: impl fmt::Display, claim: impl fmt::Display) -> Error {
        Error::UserMismatch(format!(
            "the request names UCloud user {:?} but the token is for {:?}",
            header.to_string(),
            claim.to_string()
        ))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class().3)
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
            Error::not_root(true, 5),
            Error::not_root(false, 5),
            Error::missing_capability("CAP_SETUID"),
            Error::UnsafeInstallation("x".into()),
            Error::Config("x".into()),
            Error::WrongCaller("x".into()),
            Error::BadToken("x".into()),
            Error::UnsupportedCredential("x".into()),
            Error::UserRequired("x".into()),
            Error::user_mismatch("a", "b"),
            Error::NotMapped("x".into()),
            Error::AccountRefused("x".into()),
            Error::unsupported_call("files.x"),
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
        assert!(Error::not_root(true, 5)
            .to_string()
            .contains("no_new_privs is set"));
        assert_eq!(
            Error::unsupported_call("files.x").to_string(),
            "this provider does not implement files.x"
        );
    }
}
