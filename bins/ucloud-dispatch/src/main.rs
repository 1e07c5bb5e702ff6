//! ucloud-dispatch: the only program of ucloud-im that changes identity. Setuid root,
//! run by the gateway once per request with the envelope on fd 3. It checks itself
//! and its caller, verifies the request's credential, maps the UCloud user to a local
//! account, writes the audit record, drops to that account for good and executes the
//! plugin for the call. See ucloud-dispatch(8) and doc/contracts.md.
#![deny(unsafe_code)]
// The entry point is `main` below, without the Rust runtime's start-up.
#![cfg_attr(not(test), no_main)]

mod audit;
mod caller;
mod checks;
mod drop;
mod envelope;
mod error;
mod exec;
mod mapping;
mod nss;
mod once;
mod sanitize;
mod shield;
#[allow(unsafe_code)]
mod sys;
mod transfer;
mod trust;
mod verify;

use error::Error;
use exec::Prepared;
use std::io::Write;
use ucloud_wire::cli;

const USAGE: &str = "\
usage: ucloud-dispatch
       ucloud-dispatch --help | --version

Run by ucloud-gateway (setuid root, mode 4750, group: the gateway's) once per request, with one request
envelope on fd 3. It verifies the UCloud token, maps the UCloud user to a local
account, writes an audit record, becomes that account and executes the plugin for
the call. On refusal it exits non-zero with one JSON line on stderr:
  {\"status\":401,\"errorCode\":\"BAD_TOKEN\",\"why\":\"...\"}
--version prints the version and the prefix the paths were built under
(UCLOUD_IM_ROOT; / for a site's build).
Exit codes: 64 bad envelope or usage, 77 refused, 78 unsafe or misconfigured
installation, 70 internal error. See ucloud-dispatch(8).
";

/// The entry point, called by glibc instead of the Rust runtime's, which would
/// first set up signal handlers (undone by sanitize.rs) and read /proc/self/maps
/// for a stack guard: about 0.1 ms a request. glibc's init hooks still set up std.
#[cfg(not(test))]
#[allow(unsafe_code)] // SAFETY: the one symbol named `main`, called once by glibc.
#[no_mangle]
extern "C" fn main() -> std::ffi::c_int {
    run().into()
}

/// The program; its exit status.
#[cfg_attr(test, allow(dead_code))]
fn run() -> u8 {
    // --help before anything else: printing usage is not a side effect.
    let mut args = pico_args::Arguments::from_env();
    if cli::help_or_version_and_prefix(&mut args, "ucloud-dispatch", || USAGE.into()).is_some() {
        return 0;
    }
    if !args.finish().is_empty() {
        return fail(&Error::Usage(
            "ucloud-dispatch takes no arguments (try --help)".into(),
        ));
    }
    ucloud_wire::token::install_crypto_provider();
    let parent = nix::unistd::getppid();
    let mut record = audit::Record {
        caller_uid: nix::unistd::getuid().as_raw(),
        ..Default::default()
    };
    let Some(decision) = decide(&mut record).transpose() else {
        // fd 3 closed unread: a spare the gateway no longer needs. Nothing was
        // asked, so nothing is decided or recorded.
        return 0;
    };
    // Only root can write the audit log: without root there is nothing to record,
    // and the refusal itself says why.
    let logged = if nix::unistd::geteuid().is_root() {
        audit::write(&record, decision.as_ref().map(|_| ()))
    } else {
        Ok(())
    };
    match (decision, logged) {
        (Err(e), _) | (Ok(_), Err(e)) => fail(&e),
        (Ok(prepared), Ok(())) => fail(&prepared.run(parent)),
    }
}

/// Everything up to and including the decision. Nothing here reaches outside the
/// process (tests::no_side_effect_before_the_token_is_verified keeps it so): the
/// audit record is written by the caller, after the decision.
/// `Ok(None)`: no request came (fd 3 closed before its first byte).
fn decide(record: &mut audit::Record) -> Result<Option<Prepared>, Error> {
    sanitize::process()?;
    // Before anything is opened, or a closed fd 3 would be taken by that open.
    let channel = sys::take_envelope_fd();
    checks::privileges()?;
    let site = checks::site_config()?;
    // Before the first account lookup (the caller check).
    nss::leave_out(&site.nss_skip)?;
    caller::check(&site)?;
    record.caller_accepted = true;
    // Everything that does not depend on the request is done before it arrives: a
    // spare dispatcher (ucloud-gateway(8)) has it done when the request comes.
    let install = checks::installation(site)?;
    let Some(envelope) = envelope::read(channel)? else {
        return Ok(None);
    };
    record.call = Some(envelope.call.clone());
    record.ucloud_user = envelope.user.as_ref().map(|u| u.to_string());
    let now = ucloud_wire::now_ms() / 1000;
    let verified = verify::credential(&envelope, &install.key, &install.site, now)?;
    // ---- the credential is verified: side effects may follow from here on ----
    record.ucloud_user = verified.user.as_ref().map(|u| u.to_string());
    let target = mapping::resolve(
        &envelope.call,
        verified.user.as_ref(),
        &install.site,
        &install.mappings,
    )?;
    record.local_user = Some(target.name.clone());
    record.uid = Some(target.uid.as_raw());
    if let Some(bound) = &verified.bound {
        transfer::still_bound(bound, &target)?;
        record.subject = bound.subject.clone();
        if ucloud_wire::calls::is_once(&envelope.call) {
            once::use_once(bound, now)?;
        }
    }
    let plugin = exec::open_plugin(&install.plugins, &envelope.call)?;
    let request = serde_json::to_vec(&envelope.request)
        .map_err(|e| Error::Internal(format!("cannot serialise the request: {e}")))?;
    let mut env = exec::environment(&envelope.call, &target, &install.site);
    env.extend(
        transfer::for_plugin(&envelope, &target, verified.bound.as_ref())?
            .map(|token| ("UCLOUD_TRANSFER_TOKEN".into(), token)),
    );
    Ok(Some(Prepared {
        env,
        timeout: install.site.timeout_for(&envelope.call),
        call: envelope.call,
        request,
        target,
        plugin,
    }))
}

fn fail(error: &Error) -> u8 {
    let _ = writeln!(std::io::stderr(), "{}", error.failure().line());
    error.exit_code()
}

#[cfg(test)]
mod tests {
    /// The sudo-rs 2025 audit rule: nothing before authentication may reach outside
    /// the process. The pre-verification code is `decide` up to the marker, and the
    /// modules it calls.
    #[test]
    fn no_side_effect_before_the_token_is_verified() {
        const SINKS: &[&str] = &[
            "File::create",
            "OpenOptions",
            "O_CREAT",
            "O_WRONLY",
            "O_RDWR",
            "O_APPEND",
            ".write(true)",
            "fs::write",
            "write_all",
            "remove_file",
            "remove_dir",
            "rename",
            "create_dir",
            "hard_link",
            "symlink(",
            "set_permissions",
            "chown",
            "chmod",
            "Command",
            "fork",
            "exec",
            "kill",
            "setuid",
            "setgid",
            "setresuid",
            "setresgid",
            "setgroups",
            "set_keepcaps",
            "set_no_new_privs",
            "set_pdeathsig",
            "caps::clear",
            "caps::drop",
            "caps::set",
            "UnixDatagram",
            "UnixStream",
            "TcpStream",
            "send_to",
            "memfd",
            "audit::write",
            "println!",
            "print!",
        ];
        let main = include_str!("main.rs");
        let body = main
            .split("fn decide(")
            .nth(1)
            .and_then(|rest| rest.split("---- the credential is verified").next())
            .expect("decide() with its marker");
        let sources = [
            ("decide() before the marker", body),
            ("sanitize.rs", include_str!("sanitize.rs")),
            ("checks.rs", include_str!("checks.rs")),
            ("trust.rs", include_str!("trust.rs")),
            // The trusted open itself lives in lib/wire.
            (
                "wire's trust.rs",
                include_str!("../../../lib/wire/src/trust.rs"),
            ),
            ("caller.rs", include_str!("caller.rs")),
            ("envelope.rs", include_str!("envelope.rs")),
            ("verify.rs", include_str!("verify.rs")),
            ("transfer.rs", include_str!("transfer.rs")),
            ("sys.rs", include_str!("sys.rs")),
            ("nss.rs", include_str!("nss.rs")),
        ];
        for (name, text) in sources {
            // Unit tests (which may run commands) are not the dispatcher's code.
            let text = text.split("#[cfg(test)]").next().unwrap_or(text);
            let code = code_only(text);
            for sink in SINKS {
                assert!(
                    !code.contains(sink),
                    "{name} contains the side effect {sink}"
                );
            }
        }
        assert_eq!(code_only("a(\"chown\") // chmod\nb"), "a(\"\") \nb");
        assert!(!code_only("a(\"x\\\"chown\") // chmod\nb").contains("chown"));
        // The steps the marker guards really are in that order; only a Prepared
        // request drops privileges and executes (exec.rs), and it is made last.
        let verify_at = main.find("verify::credential(&envelope").unwrap();
        for later in [
            "mapping::resolve(",
            "exec::open_plugin(",
            "Ok(Some(Prepared {",
        ] {
            assert!(
                main.find(later).unwrap() > verify_at,
                "{later} before verification"
            );
        }
    }

    /// The text without comments and string literals: messages may name a sink
    /// ("chmod go-w ...") without being one.
    fn code_only(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars().peekable();
        let mut in_string = false;
        while let Some(c) = chars.next() {
            match (in_string, c) {
                (true, '\\') => {
                    chars.next();
                }
                (true, '"') => {
                    in_string = false;
                    out.push(c);
                }
                (true, _) => {}
                (false, '"') => {
                    in_string = true;
                    out.push(c);
                }
                (false, '/') if chars.peek() == Some(&'/') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            out.push(c);
                            break;
                        }
                    }
                }
                (false, _) => out.push(c),
            }
        }
        out
    }
}
