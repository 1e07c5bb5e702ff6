//! ucloud-probe: a TEST FIXTURE, never shipped by a site install. The local stack
//! installs it as the plugin `test.probe`; the dispatcher's end-to-end tests run it
//! through the real setuid dispatcher and read what a plugin gets: identity,
//! capabilities, open fds, environment, cwd, argv, umask and the request file.
//! It prints one JSON object on stdout. Standard library only.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

const USAGE: &str = "\
usage: CALL REQUEST_FILE   (argv[0] is the call name, as the dispatcher runs it)
       ucloud-probe --help

Test fixture plugin (installed by the local stack as test.probe). Prints one JSON
object: the Uid, Gid, Groups, Cap* , NoNewPrivs and Umask lines of /proc/self/status,
the open fds and their targets, the environment, cwd, argv, and the request file's
text (argv[1]). Never install it on a site.
";

const STATUS_FIELDS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Umask",
];

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if argv.iter().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return;
    }
    // The fd list first, before this program opens anything else.
    let fds = open_fds();
    let mut out = String::from("{");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    out.push_str("\"status\":{");
    let fields: Vec<String> = STATUS_FIELDS
        .iter()
        .map(|name| {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            format!("{}:{}", quote(name), quote(&value))
        })
        .collect();
    out.push_str(&fields.join(","));
    out.push_str("},\"fds\":{");
    let fds: Vec<String> = fds
        .iter()
        .map(|(fd, target)| format!("{}:{}", quote(fd), quote(target)))
        .collect();
    out.push_str(&fds.join(","));
    out.push_str("},\"env\":{");
    let env: Vec<String> = std::env::vars_os()
        .map(|(k, v)| {
            format!(
                "{}:{}",
                quote(&k.to_string_lossy()),
                quote(&v.to_string_lossy())
            )
        })
        .collect();
    out.push_str(&env.join(","));
    out.push('}');
    let cwd = std::env::current_dir()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("error: {e}"));
    let _ = write!(out, ",\"cwd\":{}", quote(&cwd));
    let args: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    let _ = write!(out, ",\"argv\":[{}]", args.join(","));
    let request = match argv.get(1) {
        Some(path) => std::fs::read_to_string(path).unwrap_or_else(|e| format!("error: {e}")),
        None => "error: no request file argument".into(),
    };
    let _ = write!(out, ",\"request\":{}", quote(&request));
    out.push('}');
    println!("{out}");
}

/// fd number → link target, without the descriptor the listing itself used.
fn open_fds() -> Vec<(String, String)> {
    let names: Vec<String> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Vec::new(),
    };
    // The listing's own fd is closed now, so its readlink fails: it drops out.
    let mut fds: Vec<(String, String)> = names
        .into_iter()
        .filter_map(|n| {
            let target = std::fs::read_link(format!("/proc/self/fd/{n}")).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort_by_key(|(n, _)| n.parse::<u32>().unwrap_or(u32::MAX));
    fds
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
