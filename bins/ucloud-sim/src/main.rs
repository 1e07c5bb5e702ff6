//! ucloud-sim: the UCloud side of a provider, for the local stack and the tests. It
//! mints UCloud's bearer tokens, calls the provider the way UCloud's core does, and
//! serves over HTTPS the endpoints a provider calls, recording every call.
#![forbid(unsafe_code)]

mod answer;
mod api;
mod call;
mod calllog;
mod catalogue;
mod error;
mod follow;
mod gojson;
mod gopath;
mod gotypes;
mod notify;
mod owners;
mod projects;
mod provider;
mod query;
mod search;
mod serve;
mod session;
mod shares;
mod shell;
mod ssh;
mod store;
mod support;
mod tokens;
mod usage;
mod web;

use error::SimError;
use pico_args::Arguments;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
ucloud-sim: a UCloud simulator for ucloud-im's local stack and tests

usage:
  ucloud-sim init  --state DIR --provider ID
  ucloud-sim serve --listen ADDR:PORT --cert PEM --key PEM --signing-key PEM
                   --state DIR --log FILE [--provider-url URL [--provider-ca PEM]]
  ucloud-sim token --signing-key PEM --state DIR [--user NAME [--user-claim CLAIM]]
                   [--lifetime SECONDS] [--iat-offset SECONDS] [--issuer ISS]
                   [--subject SUB] [--role ROLE] [--fresh]
  ucloud-sim call  [--url URL] [--ca PEM] (--signing-key PEM --state DIR | --token TOKEN)
                   [--user NAME] [--user-claim CLAIM] [--unchecked] METHOD PATH [JSON_BODY]
  ucloud-sim follow [--url URL] [--ca PEM] (--signing-key PEM --state DIR | --token TOKEN)
                   --user NAME [--cancel-after N] [--raw HEX] JOB_JSON
  ucloud-sim search [--url URL] [--ca PEM] (--signing-key PEM --state DIR | --token TOKEN)
                   --user NAME [--state DIR] [--unchecked] [--raw HEX] FOLDER QUERY
  ucloud-sim shell [--url URL] [--ca PEM] (--signing-key PEM --state DIR | --token TOKEN)
                   --user NAME [--rank N] [--cols C] [--rows R] [--linger MS]
                   [--session ID] [--unchecked] [--bench N] (JOB_JSON | --folder PATH)
  ucloud-sim web   [--url URL] [--ca PEM] (--signing-key PEM --state DIR | --token TOKEN)
                   --user NAME [--rank N] [--unchecked] [--host HOST --cookie C|none]
                   [--get PATH]... [--websocket PATH] JOB_JSON
  ucloud-sim usage --state DIR
  ucloud-sim --help | --version

  init   create the state when missing; print the provider's refresh token
  serve  HTTPS server for the endpoints a provider calls (and /sim/...); with
         --provider-url it asks the provider for its support before a
         POST /sim/jobs, as UCloud does before it creates a job, tells it
         of a share (POST /sim/shares), which needs it, and sends it a user's
         SSH keys after each change (POST, DELETE /sim/ssh/keys); it keeps
         projects and allocations (/sim/projects, /sim/allocations,
         /sim/wallets) and serves the provider notification stream
         (GET /api/accounting/notifications, a WebSocket) as the core does
  token  print a UCloud bearer token (cached, reused until < 3 min remain)
  call   call the provider like UCloud; print the status, then the body
         (--url defaults to $UCLOUD_IM_LB_URL, else $UCLOUD_IM_GATEWAY_URL;
         an https URL needs --ca, which defaults to $UCLOUD_IM_CA); a job
         creation UCloud would not make (not a Go BulkRequest[Job], an id that
         is no decimal number, a product not in the catalogue or not supported
         by the provider) is answered 400 here and not sent (a job of a
         project from /sim/projects: 403 when its creator is no member, 402
         without an allocation), and so is a files
         call on a share's drive that the drive's ACL does not allow --user
         (403), unless --unchecked
  follow follow a job's output over the WebSocket like UCloud; one JSON line per
         message, then a close line (or the HTTP status when the upgrade is refused);
         --url and --ca default as for call
  search search FOLDER (a UCloud path) by name over the WebSocket like UCloud,
         after the core's checks (the user may read the drive, per --state; the
         provider's support says streamingSearchSupported; the query is one
         UCloud accepts); output as for follow, or {\"refused\":STATUS,\"why\":...}
  shell  open a terminal in a job like UCloud: the core's check (the product's
         support says native.terminal) and jobs/interactiveSession as --user, then
         the browser's WebSocket with the session identifier and no token; each
         stdin line is typed (with Enter), a JSON object line is sent as the
         payload (a resize); prints {\"session\":…}, then each message as follow
         does; --session ID reuses an identifier instead of asking for one;
         --bench N times N keystrokes (the shell made cat) instead; --folder PATH
         opens a terminal in a folder (jobs/openTerminalInFolder; the core's check:
         EDIT on the folder's drive, per --state)
  web    open a job's web interface like UCloud: the core's check (native.web)
         and jobs/interactiveSession (WEB) as --user, then the browser: the link
         (its cookie), each --get PATH with the cookie on one connection, and a
         --websocket PATH that must echo; every connection goes to --url's
         address with the job's host name; --host and --cookie skip the opening
  usage  print each owner's usage per category and per scope, as JSON

See ucloud-sim(1).
";

/// Where `call` and `follow` reach the provider: `--url`, else the balancer of the
/// local stack (`UCLOUD_IM_LB_URL`, the way UCloud reaches a site), else the direct
/// gateway (`UCLOUD_IM_GATEWAY_URL`). An https URL is verified against `--ca`, else
/// `UCLOUD_IM_CA`: there is no default trust, as the stack's CA is its own.
fn provider_url(
    url: Option<String>,
    ca: Option<PathBuf>,
) -> Result<(String, Option<PathBuf>), SimError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = url
        .or_else(|| env("UCLOUD_IM_LB_URL"))
        .or_else(|| env("UCLOUD_IM_GATEWAY_URL"))
        .ok_or_else(|| {
            SimError::Usage(
                "--url is missing and neither UCLOUD_IM_LB_URL nor UCLOUD_IM_GATEWAY_URL is set"
                    .into(),
            )
        })?;
    if !url.starts_with("https://") {
        return Ok((url, ca));
    }
    match ca.or_else(|| env("UCLOUD_IM_CA").map(PathBuf::from)) {
        Some(ca) => Ok((url, Some(ca))),
        None => Err(SimError::Usage(format!(
            "{url} is https: name the CA to trust with --ca or UCLOUD_IM_CA"
        ))),
    }
}

fn usage(e: pico_args::Error) -> SimError {
    SimError::Usage(e.to_string())
}

fn required(args: &mut Arguments, name: &'static str) -> Result<PathBuf, SimError> {
    args.opt_value_from_str::<_, PathBuf>(name)
        .map_err(usage)?
        .ok_or_else(|| SimError::Usage(format!("{name} is required")))
}

fn no_more(args: Arguments) -> Result<(), SimError> {
    let rest = args.finish();
    if rest.is_empty() {
        Ok(())
    } else {
        Err(SimError::Usage(format!("unexpected arguments {rest:?}")))
    }
}

fn main() -> ExitCode {
    ucloud_wire::token::install_crypto_provider();
    ucloud_http::tls::install_provider();
    let mut args = Arguments::from_env();
    if let Some(done) =
        ucloud_wire::cli::help_or_version(&mut args, "ucloud-sim", || HELP.to_string())
    {
        return done;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ucloud-sim: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(mut args: Arguments) -> Result<(), SimError> {
    let command = args.subcommand().map_err(usage)?;
    match command.as_deref() {
        Some("init") => init(args),
        Some("serve") => serve(args),
        Some("token") => token(args),
        Some("call") => call(args),
        Some("follow") => follow(args),
        Some("shell") => shell_command(args),
        Some("web") => web_command(args),
        Some("search") => search_command(args),
        Some("usage") => usage_command(args),
        Some(other) => Err(SimError::Usage(format!("unknown command {other:?}"))),
        None => Err(SimError::Usage("a command is required".into())),
    }
}

fn init(mut args: Arguments) -> Result<(), SimError> {
    let state = required(&mut args, "--state")?;
    let provider: String = args
        .opt_value_from_str("--provider")
        .map_err(usage)?
        .ok_or_else(|| SimError::Usage("--provider is required".into()))?;
    no_more(args)?;
    let (_, token) = store::Store::init(&state, &provider)?;
    println!("{token}");
    Ok(())
}

fn serve(mut args: Arguments) -> Result<(), SimError> {
    let listen: String = args
        .opt_value_from_str("--listen")
        .map_err(usage)?
        .ok_or_else(|| SimError::Usage("--listen is required".into()))?;
    let cert = required(&mut args, "--cert")?;
    let key = required(&mut args, "--key")?;
    let signing_key = required(&mut args, "--signing-key")?;
    let state = required(&mut args, "--state")?;
    let log = required(&mut args, "--log")?;
    let provider_url: Option<String> = args.opt_value_from_str("--provider-url").map_err(usage)?;
    let provider_ca: Option<PathBuf> = args.opt_value_from_str("--provider-ca").map_err(usage)?;
    no_more(args)?;
    let provider_url = match (provider_url, provider_ca) {
        (Some(url), Some(ca)) => Some((url, Some(ca))),
        (Some(url), None) if !url.starts_with("https://") => Some((url, None)),
        (Some(url), None) => {
            return Err(SimError::Usage(format!(
                "--provider-url {url} is https: name the CA to trust with --provider-ca"
            )))
        }
        (None, Some(_)) => {
            return Err(SimError::Usage("--provider-ca needs --provider-url".into()))
        }
        (None, None) => None,
    };
    let tls =
        ucloud_http::tls::server_config(&cert, &key).map_err(|e| SimError::Setup(e.to_string()))?;
    let keys = tokens::Keys::load(&signing_key)?;
    let sim = api::Sim::new(store::Store::open(&state)?, keys, provider_url)?;
    let log = calllog::CallLog::open(&log)?;
    serve::serve(&listen, sim, log, tls)
}

/// The options `token` and `call` share for choosing the token.
fn token_options(args: &mut Arguments) -> Result<tokens::TokenOptions, SimError> {
    let user: Option<String> = args.opt_value_from_str("--user").map_err(usage)?;
    let claim: Option<String> = args.opt_value_from_str("--user-claim").map_err(usage)?;
    let user = match (user, claim) {
        (Some(u), c) => Some((u, c.unwrap_or_else(|| "ucloudUsername".into()))),
        (None, None) => None,
        (None, Some(_)) => return Err(SimError::Usage("--user-claim needs --user".into())),
    };
    Ok(tokens::TokenOptions {
        user,
        lifetime: args.opt_value_from_str("--lifetime").map_err(usage)?,
        iat_offset: args
            .opt_value_from_fn("--iat-offset", |s| s.parse::<i64>())
            .map_err(usage)?,
        issuer: args.opt_value_from_str("--issuer").map_err(usage)?,
        subject: args.opt_value_from_str("--subject").map_err(usage)?,
        role: args.opt_value_from_str("--role").map_err(usage)?,
        fresh: args.contains("--fresh"),
    })
}

fn token(mut args: Arguments) -> Result<(), SimError> {
    let signing_key = required(&mut args, "--signing-key")?;
    let state = required(&mut args, "--state")?;
    let options = token_options(&mut args)?;
    no_more(args)?;
    let keys = tokens::Keys::load(&signing_key)?;
    let store = store::Store::open(&state)?;
    println!("{}", tokens::ucloud_token(&keys, &store, &options)?);
    Ok(())
}

fn call(mut args: Arguments) -> Result<(), SimError> {
    let url: Option<String> = args.opt_value_from_str("--url").map_err(usage)?;
    let ca: Option<PathBuf> = args.opt_value_from_str("--ca").map_err(usage)?;
    let signing_key: Option<PathBuf> = args.opt_value_from_str("--signing-key").map_err(usage)?;
    let state: Option<PathBuf> = args.opt_value_from_str("--state").map_err(usage)?;
    let given_token: Option<String> = args.opt_value_from_str("--token").map_err(usage)?;
    // In `call`, --user names the end user (the header); a token claim only with
    // --user-claim, for sites in strict mode.
    let user: Option<String> = args.opt_value_from_str("--user").map_err(usage)?;
    let claim: Option<String> = args.opt_value_from_str("--user-claim").map_err(usage)?;
    let unchecked = args.contains("--unchecked");
    let rest: Vec<OsString> = args.finish();
    let rest: Vec<String> = rest
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|_| SimError::Usage("arguments must be UTF-8".into()))
        })
        .collect::<Result<_, _>>()?;
    let (method, path, body) = match rest.as_slice() {
        [m, p] => (m.as_str(), p.as_str(), None),
        [m, p, b] => (m.as_str(), p.as_str(), Some(b.as_str())),
        _ => {
            return Err(SimError::Usage(
                "call needs METHOD PATH [JSON_BODY] after its options".into(),
            ))
        }
    };
    if !path.starts_with('/') {
        return Err(SimError::Usage(format!(
            "PATH must start with /, got {path:?}"
        )));
    }
    let (url, ca) = provider_url(url, ca)?;
    let store = match &state {
        Some(dir) => Some(store::Store::open(dir)?),
        None => None,
    };
    let token = match given_token {
        Some(t) => t,
        None => {
            let (Some(key), Some(store)) = (&signing_key, &store) else {
                return Err(SimError::Usage(
                    "call needs --signing-key and --state (or --token)".into(),
                ));
            };
            let options = tokens::TokenOptions {
                user: claim.map(|c| (user.clone().unwrap_or_default(), c)),
                ..Default::default()
            };
            if options.user.as_ref().is_some_and(|(u, _)| u.is_empty()) {
                return Err(SimError::Usage("--user-claim needs --user".into()));
            }
            tokens::ucloud_token(&tokens::Keys::load(key)?, store, &options)?
        }
    };
    // UCloud's own service token, for asking the provider what it supports.
    let support_token = match (&signing_key, &store) {
        (Some(key), Some(store)) => {
            tokens::ucloud_token(&tokens::Keys::load(key)?, store, &Default::default())?
        }
        _ => token.clone(),
    };
    let (status, body) = call::call(
        &call::CallArgs {
            url: &url,
            ca: ca.as_deref(),
            user: user.as_deref(),
            token: &token,
            method,
            path,
            body,
            support_token: &support_token,
            unchecked,
        },
        store.as_ref(),
    )?;
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{status}")
        .and_then(|_| out.write_all(&body))
        .and_then(|_| {
            if body.ends_with(b"\n") {
                Ok(())
            } else {
                writeln!(out)
            }
        })
        .and_then(|_| out.flush());
    written.map_err(|e| SimError::Call(format!("cannot write the answer: {e}")))
}

fn usage_command(mut args: Arguments) -> Result<(), SimError> {
    let state = required(&mut args, "--state")?;
    no_more(args)?;
    let store = store::Store::open(&state)?;
    let view = usage::view(&store).map_err(|a| SimError::Setup(a.refused.unwrap_or_default()))?;
    println!("{view}");
    Ok(())
}

/// The options of the commands that speak to the provider as UCloud, over a
/// WebSocket (`follow`, `search`): where, as whom, with which token.
struct Client {
    url: Option<String>,
    ca: Option<PathBuf>,
    token: Option<String>,
    signing_key: Option<PathBuf>,
    state: Option<PathBuf>,
    user: String,
}

/// What a client command connects with: the provider's URL and CA, the state
/// (with --state) and UCloud's token for the call.
struct Connect {
    url: String,
    ca: Option<PathBuf>,
    store: Option<store::Store>,
    token: String,
}

impl Connect {
    /// The core's calls of an interactive session, as `user`.
    fn core<'a>(&'a self, user: &'a str, unchecked: bool) -> session::Core<'a> {
        session::Core {
            url: &self.url,
            ca: self.ca.as_deref(),
            token: &self.token,
            user,
            unchecked,
        }
    }
}

impl Client {
    fn parse(args: &mut Arguments, command: &str) -> Result<Client, SimError> {
        Ok(Client {
            url: args.opt_value_from_str("--url").map_err(usage)?,
            ca: args.opt_value_from_str("--ca").map_err(usage)?,
            token: args.opt_value_from_str("--token").map_err(usage)?,
            signing_key: args.opt_value_from_str("--signing-key").map_err(usage)?,
            state: args.opt_value_from_str("--state").map_err(usage)?,
            user: args
                .opt_value_from_str("--user")
                .map_err(usage)?
                .ok_or_else(|| SimError::Usage(format!("{command} needs --user NAME")))?,
        })
    }

    fn connect(self, command: &str) -> Result<Connect, SimError> {
        let (url, ca) = provider_url(self.url, self.ca)?;
        let store = self.state.as_deref().map(store::Store::open).transpose()?;
        let token = match self.token {
            Some(t) => t,
            None => {
                let (Some(key), Some(store)) = (&self.signing_key, &store) else {
                    return Err(SimError::Usage(format!(
                        "{command} needs --signing-key and --state (or --token)"
                    )));
                };
                tokens::ucloud_token(&tokens::Keys::load(key)?, store, &Default::default())?
            }
        };
        Ok(Connect {
            url,
            ca,
            store,
            token,
        })
    }
}

fn follow(mut args: Arguments) -> Result<(), SimError> {
    let client = Client::parse(&mut args, "follow")?;
    let cancel_after: Option<usize> = args.opt_value_from_str("--cancel-after").map_err(usage)?;
    let raw: Option<String> = args.opt_value_from_str("--raw").map_err(usage)?;
    let job: String = args
        .free_from_str()
        .map_err(|_| SimError::Usage("follow needs JOB_JSON after its options".into()))?;
    no_more(args)?;
    let raw = raw.as_deref().map(follow::parse_hex).transpose()?;
    let user = client.user.clone();
    let c = client.connect("follow")?;
    follow::follow(
        &follow::FollowArgs {
            url: &c.url,
            ca: c.ca.as_deref(),
            user: &user,
            token: &c.token,
            job: &job,
            raw,
            cancel_after,
        },
        &mut std::io::stdout().lock(),
    )
}

fn shell_command(mut args: Arguments) -> Result<(), SimError> {
    let client = Client::parse(&mut args, "shell")?;
    let rank: u32 = args
        .opt_value_from_str("--rank")
        .map_err(usage)?
        .unwrap_or(0);
    let cols: u16 = args
        .opt_value_from_str("--cols")
        .map_err(usage)?
        .unwrap_or(80);
    let rows: u16 = args
        .opt_value_from_str("--rows")
        .map_err(usage)?
        .unwrap_or(24);
    let linger: u64 = args
        .opt_value_from_str("--linger")
        .map_err(usage)?
        .unwrap_or(500);
    let session: Option<String> = args.opt_value_from_str("--session").map_err(usage)?;
    let bench: Option<usize> = args.opt_value_from_str("--bench").map_err(usage)?;
    let folder: Option<String> = args.opt_value_from_str("--folder").map_err(usage)?;
    let unchecked = args.contains("--unchecked");
    let job: String = match folder {
        Some(_) => String::new(),
        None => args.free_from_str().map_err(|_| {
            SimError::Usage("shell needs JOB_JSON (or --folder) after its options".into())
        })?,
    };
    no_more(args)?;
    let user = client.user.clone();
    let c = client.connect("shell")?;
    shell::shell(
        &shell::ShellArgs {
            core: c.core(&user, unchecked),
            job: &job,
            rank,
            cols,
            rows,
            session,
            linger: std::time::Duration::from_millis(linger),
            bench,
            folder,
            store: c.store.as_ref(),
        },
        &mut std::io::stdout().lock(),
    )
}

fn web_command(mut args: Arguments) -> Result<(), SimError> {
    let client = Client::parse(&mut args, "web")?;
    let rank: u32 = args
        .opt_value_from_str("--rank")
        .map_err(usage)?
        .unwrap_or(0);
    let unchecked = args.contains("--unchecked");
    let host: Option<String> = args.opt_value_from_str("--host").map_err(usage)?;
    let cookie: Option<String> = args.opt_value_from_str("--cookie").map_err(usage)?;
    let paths: Vec<String> = args.values_from_str("--get").map_err(usage)?;
    let websocket: Option<String> = args.opt_value_from_str("--websocket").map_err(usage)?;
    let given = match (host, cookie) {
        (Some(h), Some(c)) => Some((h, (c != "none").then_some(c))),
        (None, None) => None,
        _ => return Err(SimError::Usage("--host and --cookie go together".into())),
    };
    let job: String = if given.is_some() {
        args.opt_free_from_str().map_err(usage)?.unwrap_or_default()
    } else {
        args.free_from_str()
            .map_err(|_| SimError::Usage("web needs JOB_JSON after its options".into()))?
    };
    no_more(args)?;
    let user = client.user.clone();
    let c = client.connect("web")?;
    web::web(
        &web::WebArgs {
            core: c.core(&user, unchecked),
            job: &job,
            rank,
            given,
            paths,
            websocket,
        },
        &mut std::io::stdout().lock(),
    )
}

fn search_command(mut args: Arguments) -> Result<(), SimError> {
    let client = Client::parse(&mut args, "search")?;
    let unchecked = args.contains("--unchecked");
    let raw: Option<String> = args.opt_value_from_str("--raw").map_err(usage)?;
    let folder: String = args
        .free_from_str()
        .map_err(|_| SimError::Usage("search needs FOLDER and QUERY after its options".into()))?;
    let query: String = args
        .free_from_str()
        .map_err(|_| SimError::Usage("search needs QUERY after FOLDER".into()))?;
    no_more(args)?;
    let raw = raw.as_deref().map(follow::parse_hex).transpose()?;
    let user = client.user.clone();
    let c = client.connect("search")?;
    search::search(
        &search::SearchArgs {
            url: &c.url,
            ca: c.ca.as_deref(),
            user: &user,
            token: &c.token,
            store: c.store.as_ref(),
            folder: &folder,
            query: &query,
            unchecked,
            raw,
        },
        &mut std::io::stdout().lock(),
    )
}
