//! ucloud-connect: the client of the registry socket. An ordinary program, not
//! setuid: who runs it is what the registry learns from the kernel (SO_PEERCRED),
//! so it has nothing to prove and nothing to protect. People run
//! `ucloud-connect <ticket>`; the integration.connect and integration.unlinked
//! plugins, running as the service account, use `--mint-ticket` and `--unlinked`.
//! See ucloud-connect(1).
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: ucloud-connect <ticket>
       ucloud-connect --mint-ticket <ucloudName>
       ucloud-connect --unlinked <ucloudName>
       ucloud-connect --help | --version

Connects your UCloud account to your account on this site. Press Connect for this
site in UCloud; the page it opens shows the command to paste here, with a one-time
ticket that is valid for 10 minutes. Run it as yourself (not with sudo): the
account that runs it is the account UCloud will use.

  --mint-ticket NAME  (service account only) make a ticket for UCloud user NAME
                      and print it
  --unlinked NAME     (service account only) UCloud says NAME disconnected:
                      remove the mapping
  --socket PATH       the registry socket (default: @SOCKET@)

Exit codes: 0 done, 64 usage, 69 the registry cannot be reached, 77 refused (the
message says why), 78 the registry's installation is misconfigured, 70 internal
error. See ucloud-connect(1).
";

const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_INTERNAL: u8 = 70;

/// An answer is one short JSON line.
const MAX_ANSWER: u64 = 64 * 1024;
/// The registry waits up to 10 s for UCloud's answer to the drive registration.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The registry socket of this installation (the prefix is fixed at build time).
fn default_socket() -> String {
    format!("{}/run/ucloud-im/registry.sock", ucloud_wire::paths::ROOT)
}

enum Failure {
    Usage(String),
    Unavailable(String),
    /// The registry answered no; `status` is its exit-code class.
    Refused {
        status: u8,
        why: String,
    },
    Internal(String),
}

fn main() -> ExitCode {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        print!("{}", USAGE.replace("@SOCKET@", &default_socket()));
        return ExitCode::SUCCESS;
    }
    if args.contains("--version") {
        println!("ucloud-connect {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (code, text) = match f {
                Failure::Usage(m) => (EXIT_USAGE, format!("{m} (try --help)")),
                Failure::Unavailable(m) => (EXIT_UNAVAILABLE, m),
                Failure::Refused { status, why } => (status, why),
                Failure::Internal(m) => (EXIT_INTERNAL, m),
            };
            eprintln!("ucloud-connect: {text}");
            ExitCode::from(code)
        }
    }
}

fn run(mut args: pico_args::Arguments) -> Result<(), Failure> {
    let usage = |e: pico_args::Error| Failure::Usage(e.to_string());
    let socket: String = args
        .opt_value_from_str("--socket")
        .map_err(usage)?
        .unwrap_or_else(default_socket);
    let mint: Option<String> = args.opt_value_from_str("--mint-ticket").map_err(usage)?;
    let unlinked: Option<String> = args.opt_value_from_str("--unlinked").map_err(usage)?;
    let free: Vec<String> = args
        .finish()
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| Failure::Usage(format!("{a:?} is not UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    let request = match (mint, unlinked, free.as_slice()) {
        (Some(name), None, []) => json!({"op": "ticket", "ucloud": name}),
        (None, Some(name), []) => json!({"op": "unlinked", "ucloud": name}),
        (None, None, [ticket]) if !ticket.starts_with('-') => {
            json!({"op": "connect", "ticket": ticket.trim()})
        }
        (None, None, []) => {
            return Err(Failure::Usage(
                "the ticket is missing: paste the whole command from the page UCloud opened".into(),
            ))
        }
        _ => {
            return Err(Failure::Usage(
                "expected one ticket, or one of --mint-ticket and --unlinked".into(),
            ))
        }
    };
    let answer = ask(&socket, &request)?;
    if answer.get("ok").and_then(Value::as_bool) != Some(true) {
        let why = answer
            .get("why")
            .and_then(Value::as_str)
            .unwrap_or("the registry refused without saying why")
            .to_string();
        let status = answer
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u8::try_from(s).ok())
            .filter(|s| *s != 0)
            .unwrap_or(EXIT_INTERNAL);
        return Err(Failure::Refused { status, why });
    }
    match answer.get("ticket").and_then(Value::as_str) {
        Some(ticket) => println!("{ticket}"),
        None => println!(
            "{}",
            answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("done")
        ),
    }
    Ok(())
}

fn ask(socket: &str, request: &Value) -> Result<Value, Failure> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        Failure::Unavailable(format!(
            "cannot reach the ucloud-im registry at {socket}: {e} (is ucloud-registry.socket running? ask the site's administrators)"
        ))
    })?;
    let io = |e: std::io::Error| {
        Failure::Unavailable(format!("talking to the registry at {socket}: {e}"))
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_ANSWER))
        .read_line(&mut line)
        .map_err(io)?;
    if line.is_empty() {
        return Err(Failure::Unavailable(format!(
            "the registry at {socket} closed the connection without an answer (its log says why)"
        )));
    }
    serde_json::from_str(&line)
        .map_err(|e| Failure::Internal(format!("the registry's answer is not JSON: {e}")))
}
