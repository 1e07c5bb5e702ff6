//! Which NSS modules the dispatcher asks about accounts. It resolves accounts through
//! NSS like every program on the host, with nsswitch.conf's own lines, minus the
//! modules site.conf's `nss_skip` names (default `systemd`). glibc loads a module
//! into the process the first time a lookup reaches it, and a group lookup reaches
//! every module of the line: each one is more code in a setuid-root process, and
//! systemd's (with the libraries it needs) costs about 0.35 ms per request. Its
//! accounts, DynamicUser= services and systemd-homed users, are never mapping
//! targets; leaving it out fails closed (such an account is "not found", and a group
//! only it reports is not given to the plugin). See ucloud-dispatch(8).

use crate::error::Error;
use crate::sys;
use std::ffi::CString;

/// glibc's fixed path; it cannot be moved.
const NSSWITCH: &str = "/etc/nsswitch.conf";

/// The databases account resolution uses: getpwnam/getpwuid, and getgrouplist
/// (which reads `initgroups` when present, else `group`).
const DATABASES: [&str; 3] = ["passwd", "group", "initgroups"];

/// Points glibc at the filtered lines before the first lookup. Nothing to do when
/// no line names a skipped module.
pub fn leave_out(skip: &[String]) -> Result<(), Error> {
    if skip.is_empty() {
        return Ok(());
    }
    let text = match std::fs::read_to_string(NSSWITCH) {
        Ok(text) => text,
        // Without the file glibc uses its built-in default, `files`.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::Config(format!("cannot read {NSSWITCH}: {e}"))),
    };
    for database in DATABASES {
        let Some(line) = filtered(&text, database, skip)? else {
            continue;
        };
        let (db, services) = CString::new(database)
            .and_then(|db| Ok((db, CString::new(line)?)))
            .map_err(|_| Error::Config(format!("{NSSWITCH} holds a NUL byte")))?;
        sys::nss_configure_lookup(&db, &services).map_err(|e| {
            Error::Internal(format!("cannot set the NSS modules of {database}: {e}"))
        })?;
    }
    Ok(())
}

/// The services of `database`'s line without the skipped modules (and the
/// `[STATUS=action]` items that follow each of them), or None when the line is
/// absent or names none of them.
fn filtered(text: &str, database: &str, skip: &[String]) -> Result<Option<String>, Error> {
    // glibc takes the first line for a database; so do we.
    let Some(services) = text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let (name, rest) = line.split_once(':')?;
        (name.trim() == database).then_some(rest)
    }) else {
        return Ok(None);
    };
    let items = items(services).ok_or_else(|| {
        Error::Config(format!("{NSSWITCH}: the {database} line has an unclosed ["))
    })?;
    let mut kept: Vec<&str> = Vec::new();
    let mut dropping = false;
    let mut changed = false;
    for item in items {
        // An action (`[NOTFOUND=return]`) goes with the module before it.
        if !item.starts_with('[') {
            dropping = skip.iter().any(|s| s == item);
            changed |= dropping;
        }
        if !dropping {
            kept.push(item);
        }
    }
    if !changed {
        return Ok(None);
    }
    if !kept.iter().any(|item| !item.starts_with('[')) {
        return Err(Error::Config(format!(
            "{NSSWITCH}: the {database} line names only modules nss_skip leaves out: \
             remove them from nss_skip in site.conf"
        )));
    }
    Ok(Some(kept.join(" ")))
}

/// Splits a service list into module names and bracketed action items, which may
/// hold blanks (`[ NOTFOUND = return ]`). None for an unclosed bracket.
fn items(services: &str) -> Option<Vec<&str>> {
    let mut items = Vec::new();
    let mut rest = services.trim_start();
    while !rest.is_empty() {
        let end = if rest.starts_with('[') {
            rest.find(']')? + 1
        } else {
            rest.find(|c: char| c.is_whitespace() || c == '[')
                .unwrap_or(rest.len())
        };
        items.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn debian_default_loses_systemd_only() {
        let conf = "# /etc/nsswitch.conf\n\npasswd:         files systemd\n\
                    group:          files systemd\nshadow:         files systemd\n\
                    hosts:          files dns\n";
        let s = skip(&["systemd"]);
        assert_eq!(
            filtered(conf, "passwd", &s).unwrap().as_deref(),
            Some("files")
        );
        assert_eq!(
            filtered(conf, "group", &s).unwrap().as_deref(),
            Some("files")
        );
        assert_eq!(filtered(conf, "initgroups", &s).unwrap(), None);
        assert_eq!(filtered(conf, "hosts", &s).unwrap(), None);
    }

    #[test]
    fn actions_go_with_their_module_and_others_stay() {
        let conf = "passwd: files [NOTFOUND=return] systemd [ !UNAVAIL = return ] sss\n\
                    group: sss [SUCCESS=merge] files # systemd in a comment\n";
        let s = skip(&["systemd"]);
        assert_eq!(
            filtered(conf, "passwd", &s).unwrap().as_deref(),
            Some("files [NOTFOUND=return] sss")
        );
        // Only a comment names it: nothing to change.
        assert_eq!(filtered(conf, "group", &s).unwrap(), None);
    }

    #[test]
    fn first_line_wins_and_names_match_whole() {
        let conf = "group: files systemd-extra\ngroup: files systemd\n";
        assert_eq!(filtered(conf, "group", &skip(&["systemd"])).unwrap(), None);
        let conf = "  passwd :files\tsystemd\n";
        assert_eq!(
            filtered(conf, "passwd", &skip(&["systemd"]))
                .unwrap()
                .as_deref(),
            Some("files")
        );
    }

    #[test]
    fn a_line_left_empty_or_malformed_is_an_error() {
        let s = skip(&["systemd", "sss"]);
        assert!(filtered("passwd: systemd sss\n", "passwd", &s).is_err());
        assert!(filtered("passwd: systemd [NOTFOUND=return\n", "passwd", &s).is_err());
        assert!(filtered("passwd: [NOTFOUND=return] systemd\n", "passwd", &s).is_err());
    }

    #[test]
    fn nothing_to_skip_changes_nothing() {
        assert!(leave_out(&[]).is_ok());
        assert_eq!(
            filtered("passwd: files ldap\n", "passwd", &skip(&["systemd"])).unwrap(),
            None
        );
    }
}
