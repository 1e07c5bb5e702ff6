//! `ucloud-registry serve`: one connection on the registry socket. The kernel says
//! who is on the other end (SO_PEERCRED); that alone decides what they may ask:
//!
//! | caller | may ask |
//! |---|---|
//! | the service account (`service_user`) | `ticket`, `unlinked` |
//! | any local account | `preview`, `connect` (a ticket, for itself) |
//! | root | `add`, `remove` |
//!
//! One request line, one answer line, both JSON (see ucloud-registry(8)):
//! `{"op":"preview","ticket":"..."}` → `{"ok":true,"ucloud":"...","local":"...",...}`,
//! then `{"op":"connect","ticket":"...","ucloud":"..."}` → `{"ok":true,"message":"..."}`;
//! a refusal is `{"ok":false,"status":77,"why":"..."}`. The person sees the first
//! answer and confirms before the second request, which names the UCloud user
//! confirmed: a client cannot connect a ticket without having asked what it is for.

use crate::audit::Record;
use crate::error::Error;
use crate::ops::{Added, Connected, Preview, Registry};
use nix::sys::socket::{getsockopt, sockopt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use ucloud_wire::config::SiteConfig;

/// A request is a name and a ticket: a few hundred bytes.
const MAX_REQUEST: u64 = 16 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a redemption waits for UCloud to answer the home drive registration.
const DRIVE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Root,
    Service,
    Person,
}

/// Serves the one request on `stream`. Refusals are answers, not errors: the error
/// is for a connection that could not be served at all.
pub fn serve(stream: UnixStream) -> Result<(), Error> {
    let creds = getsockopt(&stream, sockopt::PeerCredentials).map_err(Error::errno(
        "cannot read the peer credentials of the registry socket",
    ))?;
    let uid = creds.uid();
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(READ_TIMEOUT)))
        .map_err(Error::io("cannot set socket timeouts"))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST))
        .read_line(&mut line)
        .map_err(Error::io(format!("reading the request of uid {uid}")))?;
    let answer = match answer(&line, uid) {
        Ok(v) => v,
        Err(e) => json!({"ok": false, "status": e.exit_code(), "why": e.to_string()}),
    };
    (&stream)
        .write_all(format!("{answer}\n").as_bytes())
        .map_err(Error::io(format!("answering uid {uid}")))
}

fn answer(line: &str, uid: u32) -> Result<Value, Error> {
    if !line.ends_with('\n') {
        return Err(Error::Usage(format!(
            "the request must be one JSON line of at most {MAX_REQUEST} bytes"
        )));
    }
    let request: Value = serde_json::from_str(line)
        .map_err(|e| Error::Usage(format!("the request is not JSON: {e}")))?;
    let field = |key: &str| -> Result<&str, Error> {
        request
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Usage(format!("the request has no string {key:?}")))
    };
    let site = SiteConfig::load(&ucloud_wire::paths::site_config())
        .map_err(|e| Error::Config(e.to_string()))?;
    let registry = Registry::site();
    registry.store.prepare()?;
    registry.tickets.prepare()?;
    housekeeping(&registry, &site);
    let role = role_of(uid, &site)?;
    let op = field("op")?;
    let (action, allowed): (&'static str, &[Role]) = match op {
        // Root and the service account are let through to be refused with the
        // reason (ops.rs), which also leaves the ticket valid.
        "preview" => ("preview", &[Role::Root, Role::Service, Role::Person]),
        "connect" => ("connect", &[Role::Root, Role::Service, Role::Person]),
        "ticket" => ("ticket", &[Role::Service]),
        "unlinked" => ("unlinked", &[Role::Service]),
        "add" => ("add", &[Role::Root]),
        "remove" => ("remove", &[Role::Root]),
        other => return Err(Error::Usage(format!("unknown op {other:?}"))),
    };
    if !allowed.contains(&role) {
        let e = Error::Refused(format!(
            "uid {uid} may not ask for {op}: {}",
            match op {
                "ticket" | "unlinked" =>
                    format!("only the service account {} may", site.service_user),
                _ => "only root may".to_string(),
            }
        ));
        let record = Record {
            action,
            ucloud_user: request
                .get("ucloud")
                .and_then(Value::as_str)
                .map(String::from),
            caller: Some(uid),
            ..Default::default()
        };
        registry.audit.refused(&record, &e);
        return Err(e);
    }
    let message = match op {
        "preview" => return Ok(previewed(registry.preview(&site, field("ticket")?, uid)?)),
        "connect" => {
            let (ticket, confirmed) = (field("ticket")?, field("ucloud")?);
            connected(registry.redeem(&site, ticket, confirmed, uid, DRIVE_WAIT)?)
        }
        "ticket" => {
            let ticket = registry.mint_ticket(field("ucloud")?, Some(uid))?;
            return Ok(json!({"ok": true, "ticket": ticket.as_str()}));
        }
        "unlinked" => match registry.unlinked(field("ucloud")?, Some(uid))? {
            Some(m) => format!(
                "removed the mapping of {} to {} (uid {}); UCloud will be told",
                m.ucloud, m.local, m.uid
            ),
            None => format!(
                "{} was not mapped; UCloud will be told again",
                field("ucloud")?
            ),
        },
        "add" => {
            let (name, local) = (field("ucloud")?, field("local")?);
            match registry.add(&site, name, local, DRIVE_WAIT, Some(uid))? {
                Added::Drive(d) => format!(
                    "mapped {name} to {local}; home drive {} at {}",
                    d.id, d.base
                ),
                Added::Pending => format!("mapped {name} to {local}; the home drive is pending"),
            }
        }
        _ => {
            let m = registry.remove(field("ucloud")?, Some(uid))?;
            format!(
                "removed {} (was {} uid {}); UCloud will be told",
                m.ucloud, m.local, m.uid
            )
        }
    };
    Ok(json!({"ok": true, "message": message}))
}

fn previewed(p: Preview) -> Value {
    json!({
        "ok": true,
        "ucloud": p.ucloud.as_str(),
        "local": p.local.as_str(),
        "uid": p.uid,
        "again": p.again,
    })
}

fn connected(c: Connected) -> String {
    match c {
        Connected::New(m, Added::Drive(d)) => format!(
            "connected UCloud user {} to your account {} (uid {}); your home drive {} is {}. \
             UCloud has been told: go back to UCloud and reload the page.",
            m.ucloud, m.local, m.uid, d.id, d.base
        ),
        Connected::New(m, Added::Pending) => format!(
            "connected UCloud user {} to your account {} (uid {}). UCloud has been told; \
             your home drive appears in UCloud once UCloud has answered its registration.",
            m.ucloud, m.local, m.uid
        ),
        Connected::Again(m) => format!(
            "UCloud user {} was already connected to your account {}; UCloud has been told again.",
            m.ucloud, m.local
        ),
    }
}

/// Work any connection may trigger, so that a site without a timer still expires
/// old mappings and records late drive answers. Failures are logged, not fatal:
/// they must not keep a person from connecting.
fn housekeeping(registry: &Registry, site: &SiteConfig) {
    match registry.expire(site, ucloud_wire::now_ms()) {
        Ok(expired) => {
            for m in expired {
                ucloud_wire::log_info!(
                    "ucloud-registry: the mapping of {} to {} expired; UCloud will be told",
                    m.ucloud,
                    m.local
                );
            }
        }
        Err(e) => ucloud_wire::log_err!("ucloud-registry: expiring old mappings: {e}"),
    }
    if let Err(e) = registry.sync(site) {
        ucloud_wire::log_err!("ucloud-registry: recording answered drives: {e}");
    }
}

fn role_of(uid: u32, site: &SiteConfig) -> Result<Role, Error> {
    if uid == 0 {
        return Ok(Role::Root);
    }
    let service = nix::unistd::User::from_name(&site.service_user).map_err(Error::errno(
        format!("cannot look up service_user {}", site.service_user),
    ))?;
    Ok(match service {
        Some(s) if s.uid.as_raw() == uid => Role::Service,
        _ => Role::Person,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_requests_are_usage_errors() {
        for bad in [
            "",
            "{\"op\":\"connect\"}",
            "not json\n",
            "[1]\n",
            "{\"op\":\"preview\"}\n",
            "{\"op\":\"preview\",\"ticket\":7}\n",
            "{\"op\":\"preview\",\"ticket\":null}\n",
            "{\"op\":\"connect\",\"ticket\":\"x\"}\n",
            "{\"op\":\"connect\",\"ticket\":\"x\",\"ucloud\":[]}\n",
        ] {
            let e = answer(bad, 1000).unwrap_err();
            assert!(
                matches!(e, Error::Usage(_) | Error::Config(_)),
                "{bad:?}: {e}"
            );
        }
    }
}
