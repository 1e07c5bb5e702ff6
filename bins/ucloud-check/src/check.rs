//! The checks, in the order the dispatcher meets the files. Each path is walked
//! from `/` without following links and every component judged by ucloud-wire's
//! rules, as the dispatcher's own open does; only reading happens here.

use crate::report::Report;
use nix::unistd::User;
use std::fs::{self, File, Metadata};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::install::{self, FileKind, MAX_SMALL_FILE};
use ucloud_wire::names::{DriveId, UcloudName};
use ucloud_wire::record::{Drive, Mapping};
use ucloud_wire::{calls, paths};

/// The installation checked: the one this build was made for, or one below a
/// directory given on the command line.
pub struct Root {
    prefix: String,
}

impl Root {
    pub fn built() -> Root {
        Root {
            prefix: paths::ROOT.to_string(),
        }
    }

    pub fn given(dir: &str) -> Result<Root, String> {
        let parts = install::components(dir)?;
        Ok(Root {
            prefix: parts.iter().map(|p| format!("/{p}")).collect(),
        })
    }

    /// `path` (one of `paths::*()`, under the build's prefix) under this root.
    fn at(&self, path: String) -> String {
        let below = path
            .strip_prefix(paths::ROOT)
            .expect("paths::* start with paths::ROOT");
        format!("{}{below}", self.prefix)
    }
}

pub fn everything(root: &Root, report: &mut Report) {
    let site = site_config(&root.at(paths::site_config()), report);
    if let Some((site, text)) = &site {
        accounts(&root.at(paths::site_config()), site, text, report);
    }
    ucloud_key(&root.at(paths::ucloud_public_key()), report);
    transfer_key(&root.at(paths::transfer_key()), report);
    let site = site.map(|(site, _)| site);
    mappings(&root.at(paths::mappings_dir()), site.as_ref(), report);
    drives(&root.at(paths::drives_dir()), report);
    bindings(&root.at(paths::bindings_dir()), site.as_ref(), report);
    plugins(&root.at(paths::plugin_dir()), report);
    dispatcher(&root.at(paths::dispatcher()), report);
    audit_log(&root.at(paths::audit_log()), report);
    audit_limit(&root.at(paths::audit_limit_dir()), report);
}

/// Why a path cannot be trusted, at the component to blame.
enum Walk {
    Missing,
    Bad { at: String, why: String },
}

/// Walks `path` from `/` as the dispatcher does: every component a directory (the
/// last one of kind `want`), none a link, each root-owned and writable by root alone.
fn walk(path: &str, want: FileKind) -> Result<Metadata, Walk> {
    let bad = |at: &str, why: String| Walk::Bad {
        at: at.to_string(),
        why: why
            .strip_prefix(&format!("{at} "))
            .map(str::to_string)
            .unwrap_or(why),
    };
    let parts = install::components(path).map_err(|why| bad(path, why))?;
    let mut meta = fs::symlink_metadata("/").map_err(|e| bad("/", e.to_string()))?;
    install::check_owner("/", meta.uid(), meta.mode()).map_err(|why| bad("/", why))?;
    let mut walked = String::new();
    for (index, part) in parts.iter().enumerate() {
        walked.push('/');
        walked.push_str(part);
        meta = match fs::symlink_metadata(&walked) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound && index + 1 == parts.len() => {
                return Err(Walk::Missing)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(bad(
                    &walked,
                    "does not exist: install ucloud-im (its package makes it)".into(),
                ))
            }
            Err(e) => return Err(bad(&walked, format!("cannot be read: {e}"))),
        };
        let here = if index + 1 == parts.len() {
            want
        } else {
            FileKind::Dir
        };
        install::check_kind(&walked, FileKind::from_mode(meta.mode()), here)
            .map_err(|why| bad(&walked, why))?;
        install::check_owner(&walked, meta.uid(), meta.mode()).map_err(|why| bad(&walked, why))?;
    }
    Ok(meta)
}

/// Walks `path`; reports why not and returns None when it cannot be trusted.
fn trusted(path: &str, want: FileKind, missing: &str, report: &mut Report) -> Option<Metadata> {
    match walk(path, want) {
        Ok(meta) => Some(meta),
        Err(Walk::Missing) => {
            report.problem(path, 0, &format!("does not exist: {missing}"));
            None
        }
        Err(Walk::Bad { at, why }) if at == path => {
            report.problem(path, 0, &why);
            None
        }
        Err(Walk::Bad { at, why }) => {
            report.problem(&at, 0, &why);
            None
        }
    }
}

fn read_small(path: &str, report: &mut Report) -> Option<String> {
    let mut text = String::new();
    let read = File::open(path).and_then(|f| f.take(MAX_SMALL_FILE + 1).read_to_string(&mut text));
    match read {
        Err(e) => report.problem(path, 0, &format!("cannot be read: {e}")),
        Ok(_) if text.len() as u64 > MAX_SMALL_FILE => report.problem(
            path,
            0,
            &format!("is larger than {MAX_SMALL_FILE} bytes: it is not a configuration file"),
        ),
        Ok(_) => return Some(text),
    }
    None
}

fn site_config(path: &str, report: &mut Report) -> Option<(SiteConfig, String)> {
    trusted(
        path,
        FileKind::File,
        "write it (ucloud-im-site.conf(5) lists the keys)",
        report,
    )?;
    let text = read_small(path, report)?;
    match SiteConfig::parse(&text) {
        Ok(site) => {
            report.fine("site.conf");
            Some((site, text))
        }
        Err(e) => {
            report.problem(
                path,
                e.line,
                &format!("{}: fix it (see ucloud-im-site.conf(5))", e.message),
            );
            None
        }
    }
}

/// The line that sets `key` last (the one that counts), 0 when none does.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim();
            !line.starts_with('#') && line.split_once('=').is_some_and(|(k, _)| k.trim() == key)
        })
        .map(|(index, _)| index + 1)
        .last()
        .unwrap_or(0)
}

fn accounts(path: &str, site: &SiteConfig, text: &str, report: &mut Report) {
    let mut fine = true;
    let mut accounts = vec![
        ("gateway_user", &site.gateway_user),
        ("service_user", &site.service_user),
    ];
    if !site.sender_user.is_empty() {
        accounts.push(("sender_user", &site.sender_user));
    }
    for (key, name) in accounts {
        let line = line_of(text, key);
        match User::from_name(name) {
            Ok(Some(user)) if user.uid.is_root() || user.gid.as_raw() == 0 => {
                fine = false;
                report.problem(
                    path,
                    line,
                    &format!("{key} {name} is root or in group root: name an unprivileged account"),
                );
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                fine = false;
                report.problem(
                    path,
                    line,
                    &format!(
                        "{key} {name} is not an account on this system: create it (useradd --system {name}) or name another"
                    ),
                );
            }
            Err(e) => {
                fine = false;
                report.problem(path, line, &format!("cannot look up {key} {name}: {e}"));
            }
        }
    }
    if fine {
        report.fine("accounts");
    }
}

fn ucloud_key(path: &str, report: &mut Report) {
    let missing = "put UCloud's public key for this provider there (base64 DER or PEM, root 0644)";
    if trusted(path, FileKind::File, missing, report).is_none() {
        return;
    }
    let Some(text) = read_small(path, report) else {
        return;
    };
    match ucloud_wire::token::UcloudKey::parse(text.as_bytes()) {
        Ok(_) => report.fine("UCloud key"),
        Err(e) => report.problem(
            path,
            0,
            &format!("{e}: install the public key UCloud shows for this provider"),
        ),
    }
}

fn transfer_key(path: &str, report: &mut Report) {
    let missing = format!("make it: (umask 077; head -c 64 /dev/urandom > {path})");
    let Some(meta) = trusted(path, FileKind::File, &missing, report) else {
        return;
    };
    if let Err(why) = install::check_secret_mode(path, meta.mode()) {
        return report.problem(path, 0, strip(path, &why));
    }
    let mut key = Vec::new();
    if let Err(e) = File::open(path).and_then(|f| f.take(4096).read_to_end(&mut key)) {
        return report.problem(path, 0, &format!("cannot be read: {e}"));
    }
    match install::check_transfer_key_length(path, key.len()) {
        Ok(()) => report.fine("transfer key"),
        Err(why) => report.problem(
            path,
            0,
            &format!(
                "{}: {}",
                strip(path, &why),
                missing.replace("make it", "remake it")
            ),
        ),
    }
}

/// A rule's message without the path it starts with (the report line names it).
fn strip<'a>(path: &str, why: &'a str) -> &'a str {
    why.strip_prefix(path).map(str::trim_start).unwrap_or(why)
}

/// The regular files of a trusted directory, by name, dot-files left out (the
/// registry's half-written files; no reader opens them).
fn entries(dir: &str, report: &mut Report) -> Vec<(String, String, Metadata)> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) => {
            report.problem(dir, 0, &format!("cannot be listed: {e}"));
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = format!("{dir}/{name}");
        match fs::symlink_metadata(&path) {
            Ok(meta) => found.push((name, path, meta)),
            Err(e) => report.problem(&path, 0, &format!("cannot be read: {e}")),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// A record file of a table: a regular root-owned file nobody else can write.
fn record_file(path: &str, meta: &Metadata, report: &mut Report) -> bool {
    let rule = install::check_kind(path, FileKind::from_mode(meta.mode()), FileKind::File)
        .and_then(|()| install::check_owner(path, meta.uid(), meta.mode()));
    match rule {
        Ok(()) => true,
        Err(why) => {
            report.problem(path, 0, strip(path, &why));
            false
        }
    }
}

fn mappings(dir: &str, site: Option<&SiteConfig>, report: &mut Report) {
    let missing =
        format!("ucloud-registry makes it on its first add, or: install -d -m 0700 {dir}");
    if trusted(dir, FileKind::Dir, &missing, report).is_none() {
        return;
    }
    let mut count = 0;
    for (name, path, meta) in entries(dir, report) {
        let Ok(user) = UcloudName::from_file_name(&name) else {
            report.warning(
                &path,
                "not a mapping file name (hex of a UCloud name): nothing reads it; remove it",
            );
            continue;
        };
        if !record_file(&path, &meta, report) {
            continue;
        }
        let Some(text) = read_small(&path, report) else {
            continue;
        };
        let mapping = match Mapping::parse(&user, text.as_bytes()) {
            Ok(mapping) => mapping,
            Err(why) => {
                report.problem(
                    &path,
                    0,
                    &format!(
                        "{why}: remove it (ucloud-registry remove {user}) and add the user again"
                    ),
                );
                continue;
            }
        };
        count += 1;
        if let Some(site) = site {
            if mapping.expired(site.mapping_expire_after_ms, ucloud_wire::now_ms()) {
                report.warning(
                    &path,
                    &format!(
                        "the mapping of {user} has expired (ucloud-registry expire removes it)"
                    ),
                );
            }
        }
        match User::from_name(mapping.local.as_str()) {
            Ok(Some(account)) if account.uid.as_raw() == mapping.uid => {}
            Ok(Some(account)) => report.warning(
                &path,
                &format!(
                    "{user} is mapped to {} with uid {}, but the account has uid {} now: map it again",
                    mapping.local, mapping.uid, account.uid
                ),
            ),
            _ => report.warning(
                &path,
                &format!(
                    "{user} is mapped to {}, which is not an account: ucloud-registry remove {user}",
                    mapping.local
                ),
            ),
        }
    }
    report.fine(format!("{count} mapping(s)"));
}

fn drives(dir: &str, report: &mut Report) {
    let missing =
        format!("ucloud-registry makes it on its first add, or: install -d -m 0755 {dir}");
    if trusted(dir, FileKind::Dir, &missing, report).is_none() {
        return;
    }
    let mut count = 0;
    for (name, path, meta) in entries(dir, report) {
        let Ok(id) = DriveId::new(&name) else {
            report.warning(&path, "not a drive id: nothing reads it; remove it");
            continue;
        };
        if !record_file(&path, &meta, report) {
            continue;
        }
        let Some(text) = read_small(&path, report) else {
            continue;
        };
        match Drive::parse(&id, text.as_bytes()) {
            Ok(_) => count += 1,
            Err(why) => report.problem(
                &path,
                0,
                &format!("{why}: remove the user's mapping and add it again (ucloud-registry)"),
            ),
        }
    }
    report.fine(format!("{count} drive(s)"));
}

/// Where the gateway records which Slurm job was submitted for which UCloud job
/// (ucloud-monitor(8), BINDINGS): the monitor reports a Slurm job only with a file
/// here, so no one but the gateway's account may write it.
fn bindings(dir: &str, site: Option<&SiteConfig>, report: &mut Report) {
    let parent = dir.rsplit_once('/').map_or("/", |(p, _)| p);
    let fix = format!("install -d -o <gateway_user> -g ucloud-mon -m 2750 {dir}");
    if trusted(parent, FileKind::Dir, &fix, report).is_none() {
        return;
    }
    let meta = match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return report.problem(
                dir,
                0,
                &format!("does not exist: no job is reported to UCloud: {fix}"),
            )
        }
        Err(e) => return report.problem(dir, 0, &format!("cannot be read: {e}")),
        Ok(meta) => meta,
    };
    if FileKind::from_mode(meta.mode()) != FileKind::Dir {
        return report.problem(dir, 0, &format!("is not a directory: {fix}"));
    }
    if meta.mode() & 0o022 != 0 {
        return report.problem(
            dir,
            0,
            &format!(
                "is writable by group or others (mode {:04o}): anyone there could make the monitor report their Slurm jobs: chmod 2750 {dir}",
                meta.mode() & 0o7777
            ),
        );
    }
    if let Some(site) = site {
        match User::from_name(&site.gateway_user) {
            Ok(Some(gw)) if gw.uid.as_raw() != meta.uid() => {
                return report.problem(
                    dir,
                    0,
                    &format!(
                        "belongs to uid {}, not to the gateway's account {}: chown {} {dir}",
                        meta.uid(),
                        site.gateway_user,
                        site.gateway_user
                    ),
                )
            }
            _ => {}
        }
    }
    if meta.mode() & 0o050 != 0o050 {
        report.warning(
            dir,
            "its group cannot read it: the monitor (in that group) finds no binding and reports no job",
        );
    }
    report.fine("bindings");
}

fn plugins(dir: &str, report: &mut Report) {
    if trusted(dir, FileKind::Dir, "install the plugins", report).is_none() {
        return;
    }
    let mut count = 0;
    for (name, path, meta) in entries(dir, report) {
        if !calls::is_valid_call_name(&name) {
            report.warning(&path, "not named like a call: the dispatcher never runs it");
            continue;
        }
        if FileKind::from_mode(meta.mode()) == FileKind::Symlink {
            report.problem(&path, 0, "is a symlink: install the plugin as a file");
            continue;
        }
        let rule = install::check_kind(&path, FileKind::from_mode(meta.mode()), FileKind::File)
            .and_then(|()| install::check_owner(&path, meta.uid(), meta.mode()))
            .and_then(|()| install::check_plugin_mode(&path, meta.mode()));
        match rule {
            Ok(()) => count += 1,
            Err(why) => report.problem(&path, 0, strip(&path, &why)),
        }
    }
    report.fine(format!("{count} plugin(s)"));
}

fn dispatcher(path: &str, report: &mut Report) {
    let missing =
        "install ucloud-dispatch there, setuid root (mode 4750 root:<the gateway's group>)";
    let Some(meta) = trusted(path, FileKind::File, missing, report) else {
        return;
    };
    if meta.mode() & 0o4000 == 0 {
        return report.problem(
            path,
            0,
            &format!(
                "is not setuid (mode {:04o}): chmod u+s {path}",
                meta.mode() & 0o7777
            ),
        );
    }
    if meta.mode() & 0o001 != 0 {
        report.warning(
            path,
            &format!(
                "every local account may start it (mode {:04o}); 4750 with the gateway's group lets only the gateway",
                meta.mode() & 0o7777
            ),
        );
    }
    report.fine("dispatcher");
}

fn audit_log(path: &str, report: &mut Report) {
    let dir = path.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let missing = format!("install -d -m 0755 {dir}");
    if trusted(dir, FileKind::Dir, &missing, report).is_none() {
        return;
    }
    let meta = match fs::symlink_metadata(path) {
        // The dispatcher makes it, root 0600, on its first request.
        Err(e) if e.kind() == ErrorKind::NotFound => return report.fine("audit log"),
        Err(e) => return report.problem(path, 0, &format!("cannot be read: {e}")),
        Ok(meta) => meta,
    };
    let rule = install::check_kind(path, FileKind::from_mode(meta.mode()), FileKind::File)
        .and_then(|()| install::check_owner(path, meta.uid(), meta.mode()))
        .and_then(|()| install::check_secret_mode(path, meta.mode()));
    match rule {
        Ok(()) => report.fine("audit log"),
        Err(why) => report.problem(path, 0, strip(path, &why)),
    }
}

/// Where the dispatcher counts the records of refused callers: without it (or with
/// one it cannot trust) they are not limited.
fn audit_limit(dir: &str, report: &mut Report) {
    let missing = format!(
        "the records of refused callers are not limited without it: install -d -m 0700 {dir}"
    );
    if trusted(dir, FileKind::Dir, &missing, report).is_some() {
        report.fine("audit limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_moves_every_path() {
        let root = Root::given("/srv/image/").unwrap();
        assert_eq!(
            root.at(paths::site_config()),
            "/srv/image/etc/ucloud-im/site.conf"
        );
        assert_eq!(Root::given("/").unwrap().at(paths::bin_dir()), "/usr/bin");
        assert!(Root::given("relative").is_err());
        assert!(Root::given("/srv/../etc").is_err());
    }

    #[test]
    fn the_line_of_a_key_is_the_last_that_sets_it() {
        let text = "# gateway_user = x\ngateway_user = a\nprovider=p\n gateway_user= b\n";
        assert_eq!(line_of(text, "gateway_user"), 4);
        assert_eq!(line_of(text, "provider"), 3);
        assert_eq!(line_of(text, "sender_user"), 0);
    }

    #[test]
    fn walking_blames_the_component() {
        assert!(walk("/etc/passwd", FileKind::File).is_ok());
        assert!(matches!(
            walk("/etc/no-such-file", FileKind::File),
            Err(Walk::Missing)
        ));
        match walk("/tmp/x", FileKind::File) {
            Err(Walk::Bad { at, why }) => {
                assert_eq!(at, "/tmp");
                assert!(why.starts_with("is writable by group or others"), "{why}");
            }
            _ => panic!("/tmp is world-writable"),
        }
        match walk("/proc/self/status", FileKind::File) {
            Err(Walk::Bad { at, why }) => {
                assert_eq!((at.as_str(), why.as_str()), ("/proc/self", "is a symlink"))
            }
            _ => panic!("/proc/self is a symlink"),
        }
    }
}
