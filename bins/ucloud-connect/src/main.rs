//! ucloud-connect: the client of the registry socket. An ordinary program, not
//! setuid: who runs it is what the registry learns from the kernel (SO_PEERCRED),
//! so it has nothing to prove and nothing to protect. People run `ucloud-connect`
//! and paste the ticket: it is read from standard input, never from the command
//! line or the environment, which other local users can read in /proc. The
//! registry then says which UCloud user the ticket is for, and the person confirms
//! before anything is connected. The integration.connect and integration.unlinked
//! plugins, running as the service account, use `--mint-ticket` and `--unlinked`.
//! Once connected, the person's UCloud SSH keys, which the registry asked UCloud
//! for, are written into their `~/.ssh/authorized_keys` by this process, as the
//! person: nobody with more privilege writes into a home directory.
//! See ucloud-connect(1).
#![forbid(unsafe_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: ucloud-connect [--yes]
       ucloud-connect --mint-ticket <ucloudName>
       ucloud-connect --unlinked <ucloudName>
       ucloud-connect --help | --version

Connects your UCloud account to your account on this site. Press Connect for this
site in UCloud; the page it opens shows a one-time ticket, valid for 10 minutes.
Run ucloud-connect as yourself (not with sudo) and paste the ticket when it asks:
the account that runs it is the account UCloud will use. It shows the UCloud user
the ticket is for and your account, and asks you to confirm.

The ticket is read from standard input, never from the command line (other users
can see command lines). In a script, without a terminal to ask on:
  ucloud-connect --yes < FILE     (FILE holds the ticket, readable only by you)

  --yes               confirm without a question when standard input is not a
                      terminal (on a terminal the question is always asked)
  --mint-ticket NAME  (service account only) make a ticket for UCloud user NAME
                      and print it
  --unlinked NAME     (service account only) UCloud says NAME disconnected:
                      remove the mapping
  --socket PATH       the registry socket (default: @SOCKET@)

Exit codes: 0 done, 64 usage, 69 the registry cannot be reached, 77 refused (the
message says why; also when you answer no), 75 busy (you hold too many
connections to the registry at once: try again in a few seconds), 78 the
registry's installation is misconfigured, 70 internal error. See ucloud-connect(1).
";

const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_INTERNAL: u8 = 70;
const EXIT_REFUSED: u8 = 77;

/// A ticket is 43 characters; a pasted line is allowed some room for spaces around
/// it, and no more: standard input may be anything.
const MAX_TICKET_LINE: u64 = 1024;
/// An answer to the question is a word.
const MAX_ANSWER_LINE: u64 = 256;

/// An answer is one JSON line: short, but for the person's SSH keys after a connect.
const MAX_ANSWER: u64 = 4 << 20;
/// The registry waits up to 10 s for UCloud's answer to the drive registration.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The registry socket of this installation (the prefix is fixed at build time).
fn default_socket() -> String {
    ucloud_wire::paths::registry_socket()
}

#[derive(Debug)]
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
    if let Some(done) = ucloud_wire::cli::help_or_version(&mut args, "ucloud-connect", || {
        USAGE.replace("@SOCKET@", &default_socket())
    }) {
        return done;
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
    let yes = args.contains(["-y", "--yes"]);
    let free = args.finish();
    if let Some(option) = free.iter().find(|a| a.to_string_lossy().starts_with('-')) {
        return Err(Failure::Usage(format!("unknown option {option:?}")));
    }
    let request = match (mint, unlinked, free.is_empty()) {
        (Some(name), None, true) => json!({"op": "ticket", "ucloud": name}),
        (None, Some(name), true) => json!({"op": "unlinked", "ucloud": name}),
        (None, None, true) => return connect(&socket, yes),
        (None, None, false) => {
            // The old form, `ucloud-connect TICKET`: the ticket would be in /proc
            // for every local user to read and redeem first. Not sent.
            return Err(Failure::Usage(
                "the ticket does not go on the command line, where other users on this machine \
                 can see it; nothing was sent. Run `ucloud-connect` alone and paste the ticket \
                 when it asks (in a script: `ucloud-connect --yes < FILE`). If others may have \
                 seen the ticket, press Connect in UCloud again for a new one"
                    .into(),
            ));
        }
        _ => {
            return Err(Failure::Usage(
                "expected no argument, or one of --mint-ticket and --unlinked".into(),
            ))
        }
    };
    let answer = ask(&socket, &request)?;
    match answer.get("ticket").and_then(Value::as_str) {
        Some(ticket) => println!("{ticket}"),
        None => println!("{}", message(&answer)),
    }
    Ok(())
}

/// Reads the ticket from standard input, shows what it would connect, asks, and
/// connects. The question is asked where the ticket came from: on a terminal, always
/// (a person pasted it, `--yes` or not); otherwise `--yes` is the answer, and
/// without it nothing is connected. Standard input that is not a terminal is a
/// script's, and a script must not hang on a terminal it did not expect.
fn connect(socket: &str, yes: bool) -> Result<(), Failure> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("Paste the ticket from the connect page and press Enter: ");
    }
    let ticket = read_line(&mut stdin.lock(), MAX_TICKET_LINE, "the ticket")?;
    let ticket = ticket.trim();
    if ticket.is_empty() {
        return Err(Failure::Usage(
            "no ticket on standard input: run `ucloud-connect` and paste the ticket the connect \
             page shows"
                .into(),
        ));
    }
    let preview = ask(socket, &json!({"op": "preview", "ticket": ticket}))?;
    let field = |key: &str| {
        preview.get(key).and_then(Value::as_str).ok_or_else(|| {
            Failure::Internal(format!("the registry's preview has no {key:?}: {preview}"))
        })
    };
    let (ucloud, local) = (field("ucloud")?, field("local")?);
    let uid = preview.get("uid").and_then(Value::as_u64).unwrap_or(0);
    let what = if preview.get("again").and_then(Value::as_bool) == Some(true) {
        format!(
            "UCloud user {ucloud} is already connected to your account {local} (uid {uid}); \
             this tells UCloud again."
        )
    } else {
        format!(
            "This ticket connects UCloud user {ucloud} to your account {local} (uid {uid}) on \
             this site: whoever is {ucloud} in UCloud can then use this account and its files."
        )
    };
    if terminal {
        eprint!(
            "{what}\nIf {ucloud} is not your own UCloud user, answer no: someone may have sent \
             you their ticket.\nConnect {ucloud} to {local}? [y/N] "
        );
        let answer = read_line(&mut stdin.lock(), MAX_ANSWER_LINE, "the answer")?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Failure::Refused {
                status: EXIT_REFUSED,
                why: format!(
                    "not connected: you did not answer yes. {ucloud} stays unconnected to {local}."
                ),
            });
        }
    } else if !yes {
        return Err(Failure::Refused {
            status: EXIT_REFUSED,
            why: format!(
                "{what} Standard input is not a terminal, so there is nobody to ask: nothing \
                 was connected. If {ucloud} is your own UCloud user, run it again with --yes \
                 (the ticket is still valid)."
            ),
        });
    }
    let answer = ask(
        socket,
        &json!({"op": "connect", "ticket": ticket, "ucloud": ucloud}),
    )?;
    println!("{}", message(&answer));
    if let Some(keys) = answer.get("sshKeys") {
        match install_ssh_keys(keys) {
            Ok(said) => println!("{said}"),
            // Connected all the same: the keys come with UCloud's next update.
            Err(why) => eprintln!("ucloud-connect: your UCloud SSH keys were not installed: {why}"),
        }
    }
    Ok(())
}

/// The registry's `sshKeys` (`{"keys":[SshKey...]}` or `{"unavailable":why}`) into
/// the managed block of this account's `~/.ssh/authorized_keys`; what was done.
fn install_ssh_keys(answer: &Value) -> Result<String, String> {
    use ucloud_wire::sshkeys;
    if let Some(why) = answer.get("unavailable").and_then(Value::as_str) {
        return Err(why.to_string());
    }
    let keys = sshkeys::parse_all(answer.get("keys").unwrap_or(&Value::Null))
        .map_err(|e| e.to_string())?;
    let uid = nix::unistd::getuid();
    let home = match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.dir,
        _ => return Err(format!("uid {uid} has no home directory in NSS")),
    };
    match sshkeys::install(&home, &keys).map_err(|e| e.to_string())? {
        sshkeys::Installed::Nothing => Ok("UCloud lists no SSH keys of yours.".into()),
        sshkeys::Installed::Written(n) => {
            let lines: Vec<String> = keys
                .iter()
                .map(|k| format!("  {} ucloud-key-{}", k.kind(), k.id()))
                .collect();
            Ok(format!(
                "{n} SSH key(s) of your UCloud account are now in {}/.ssh/authorized_keys \
                 (between the ucloud-im lines; UCloud's updates replace them):\n{}",
                home.display(),
                lines.join("\n")
            ))
        }
    }
}

/// One line of `input`, at most `max` bytes; end of input is an empty line. What
/// follows the line stays in `input`'s buffer (the answer after the ticket).
fn read_line(input: &mut impl BufRead, max: u64, what: &str) -> Result<String, Failure> {
    let mut raw = Vec::new();
    input
        .take(max + 1)
        .read_until(b'\n', &mut raw)
        .map_err(|e| Failure::Usage(format!("cannot read {what} from standard input: {e}")))?;
    if raw.len() as u64 > max {
        return Err(Failure::Usage(format!(
            "{what} on standard input is longer than {max} bytes: it is not what the connect \
             page shows"
        )));
    }
    String::from_utf8(raw)
        .map_err(|_| Failure::Usage(format!("{what} on standard input is not UTF-8 text")))
}

fn message(answer: &Value) -> &str {
    answer
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("done")
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
    let answer: Value = serde_json::from_str(&line)
        .map_err(|e| Failure::Internal(format!("the registry's answer is not JSON: {e}")))?;
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
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_the_registry_could_not_get_or_that_are_hostile_touch_nothing() {
        // Each is refused before the home directory is looked up.
        let said = install_ssh_keys(&json!({"unavailable": "UCloud refused (status 404)"}));
        assert_eq!(said, Err("UCloud refused (status 404)".to_string()));
        for bad in [
            json!({"keys": [{"id": "1", "specification": {"key": "ssh-ed25519 AAAA\ncommand=\"sh\" x"}}]}),
            json!({"keys": [{"id": "1", "specification": {"key": "command=\"sh\" ssh-ed25519 AAAA"}}]}),
            json!({"keys": {"id": "1"}}),
        ] {
            assert!(install_ssh_keys(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_line_is_read_and_what_follows_is_kept() {
        let mut input = &b"  Ab-_09xyz \ny\n"[..];
        let ticket = read_line(&mut input, MAX_TICKET_LINE, "the ticket").unwrap();
        assert_eq!(ticket.trim(), "Ab-_09xyz");
        assert_eq!(
            read_line(&mut input, MAX_ANSWER_LINE, "the answer").unwrap(),
            "y\n"
        );
        assert_eq!(
            read_line(&mut input, MAX_ANSWER_LINE, "the answer").unwrap(),
            ""
        );
    }

    #[test]
    fn hostile_input_is_refused() {
        let long = vec![b'A'; MAX_TICKET_LINE as usize + 1];
        for bad in [&long[..], b"\xff\xfe\n"] {
            let mut input = bad;
            assert!(matches!(
                read_line(&mut input, MAX_TICKET_LINE, "the ticket"),
                Err(Failure::Usage(_))
            ));
        }
        // A line of exactly the limit is read; one byte more is not.
        let mut edge = vec![b'A'; MAX_TICKET_LINE as usize - 1];
        edge.push(b'\n');
        assert!(read_line(&mut &edge[..], MAX_TICKET_LINE, "the ticket").is_ok());
    }
}
