//! The site configuration, `site.conf`: `key = value` lines, `#` comments, blank
//! lines ignored. Unknown keys are an error, so a typo never silently falls back to
//! a default. Every program reads the same file and uses the keys it needs.

use crate::calls;
use std::collections::BTreeMap;
use std::fmt;

/// How the dispatcher learns the UCloud user of a user call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserMode {
    /// From the `UCloud-Username` header, which today's UCloud sends unsigned: the
    /// token proves the request comes from UCloud, not which user it is for.
    Header,
    /// Only from the named claim of the signed token; a user call whose token has
    /// no such claim is refused.
    Strict { claim: String },
}

#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// The provider id UCloud knows this site by (`/ucloud/{provider}/...`).
    pub provider: String,
    /// The public base URL of the site (the balancer's), for links given to browsers.
    pub public_url: String,
    /// The wildcard domain of the jobs' web interfaces (`web_domain`): job J's rank
    /// R is served at `app-J-R.<web_domain>`, each its own origin. Empty: no web
    /// interfaces.
    pub web_domain: String,
    /// The only account allowed to run the dispatcher.
    pub gateway_user: String,
    /// The account calls with no UCloud user run as; never root.
    pub service_user: String,
    /// Mapped local accounts must have at least this uid.
    pub min_uid: u32,
    /// Accounts whose login shell is one of these are never a mapping target.
    pub disabled_shells: Vec<String>,
    pub user_mode: UserMode,
    /// Tokens whose `exp - iat` exceeds this many seconds are refused.
    pub token_max_lifetime: u64,
    /// Allowed clock difference with UCloud, in seconds.
    pub clock_skew: u64,
    /// Default wall-clock limit of a call, in seconds.
    pub timeout: u64,
    /// Per-call limits (`timeout.<call> = <seconds>`).
    pub call_timeouts: BTreeMap<String, u64>,
    /// `integration.retrieveManifest`'s `expireAfterMs` (absent: mappings never expire).
    pub mapping_expire_after_ms: Option<u64>,
    /// Where the sender reaches UCloud (`https://...`), and the CA file it trusts.
    pub ucloud_url: String,
    pub ucloud_ca: String,
    /// The account the sender runs as (the only reader of the refresh token).
    pub sender_user: String,
    /// NSS modules the dispatcher leaves out of nsswitch.conf's passwd, group and
    /// initgroups lines (default `systemd`); see ucloud-dispatch(8).
    pub nss_skip: Vec<String>,
    /// Whether the gateway starts the next request's dispatcher while a kept-alive
    /// connection is idle (`spare_dispatcher = yes|no`, default yes); see
    /// ucloud-gateway(8).
    pub spare_dispatcher: bool,
    /// Limits on one folder upload's tree (WEBSOCKET_V2): folders deep, entries in
    /// one folder, files in all (`folder_upload_max_depth`, `_width`, `_files`).
    pub folder_upload_max_depth: u64,
    pub folder_upload_max_width: u64,
    pub folder_upload_max_files: u64,
    /// The most results one `files.streamingSearch` sends before it ends
    /// (`search_max_results`); its time budget is the call's time limit.
    pub search_max_results: u64,
    /// UCloud projects on this site (ucloud-project(8)); `None` unless site.conf sets
    /// `project_prefix`.
    pub projects: Option<ProjectConfig>,
    /// Where ucloud-notify sends munge-proven job events over TCP
    /// (`monitor_events`, 1 to 8 `ADDR:PORT`); empty: the local unix socket.
    pub monitor_events: Vec<std::net::SocketAddr>,
    /// The monitor's account (`monitor_user`, default `ucloud-mon`): the only one
    /// that may decode the munge credentials ucloud-notify sends.
    pub monitor_user: String,
    /// How long a singleton's lease lasts after a renewal (`lease_seconds`, default
    /// 10) and how far apart the clocks of the hosts sharing the state directory
    /// may be (`clock_skew_seconds`, default 2; not `clock_skew`, which is about
    /// UCloud's tokens). See [`SiteConfig::lease_timing`].
    pub lease_seconds: u64,
    pub clock_skew_seconds: u64,
}

/// What `ucloud-project` may create and where (site.conf's `project_*` and
/// `slurm_*` keys; ucloud-im-site.conf(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectConfig {
    /// The prefix of every Unix group and Slurm account it creates (`project_prefix`,
    /// 1 to 10 of `[a-z0-9_-]`, starting with a letter). It never touches a name
    /// without it, nor one it did not record.
    pub prefix: String,
    /// The gids its groups get (`project_gid_min`, `project_gid_max`, inclusive).
    pub gid_min: u32,
    pub gid_max: u32,
    /// Where project drives live (`project_base`, an absolute path; empty: no
    /// project drives). Project P's drive is `<project_base>/<P's group>`.
    pub base: String,
    /// The program that changes groups (`project_group_hook`; empty: this login
    /// node's own /etc/group, through groupadd and gpasswd).
    pub group_hook: String,
    /// The Slurm account every mapped user gets an association with
    /// (`slurm_default_account`; empty: none, the site makes associations itself).
    pub slurm_default_account: String,
    /// Whether each mapped user gets a Slurm account of their own per category
    /// (`slurm_personal_accounts = yes|no`, default no).
    pub slurm_personal_accounts: bool,
    /// What a locked wallet sets on its account (`slurm_locked`).
    pub locked: LockedLimit,
}

/// How a locked wallet stops new work on its Slurm account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockedLimit {
    /// `GrpSubmit=0`: sbatch refuses new jobs; pending and running jobs go on
    /// (`slurm_locked = submit`, the default).
    Submit,
    /// `GrpJobs=0`: new and pending jobs wait, running jobs finish
    /// (`slurm_locked = start`).
    Start,
}

/// Whether `name` may start a group or Slurm account name this site creates.
pub fn is_valid_prefix(name: &str) -> bool {
    (1..=10).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `search_max_results` when site.conf sets none.
pub const DEFAULT_SEARCH_MAX_RESULTS: u64 = 100_000;

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "site.conf: {}", self.message)
        } else {
            write!(f, "site.conf line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError {
        line,
        message: message.into(),
    }
}

impl SiteConfig {
    /// The limits this site puts on UCloud's bearer tokens.
    pub fn token_policy(&self) -> crate::token::TokenPolicy {
        crate::token::TokenPolicy {
            max_lifetime: self.token_max_lifetime,
            skew: self.clock_skew,
        }
    }

    /// The singletons' lease timing (site.conf `lease_seconds`, `clock_skew_seconds`),
    /// checked when the file was read.
    pub fn lease_timing(&self) -> crate::lease::Timing {
        crate::lease::Timing {
            ttl: std::time::Duration::from_secs(self.lease_seconds),
            skew: std::time::Duration::from_secs(self.clock_skew_seconds),
        }
    }

    /// The signed claim that names the UCloud user, where the site believes no other
    /// source (`user_mode = strict`, `user_claim`).
    pub fn user_claim(&self) -> Option<&str> {
        match &self.user_mode {
            UserMode::Strict { claim } => Some(claim),
            UserMode::Header => None,
        }
    }

    pub fn parse(text: &str) -> Result<SiteConfig, ConfigError> {
        let mut config = SiteConfig {
            provider: String::new(),
            public_url: String::new(),
            web_domain: String::new(),
            gateway_user: String::new(),
            service_user: String::new(),
            min_uid: 1000,
            disabled_shells: [
                "/usr/sbin/nologin",
                "/sbin/nologin",
                "/bin/false",
                "/usr/bin/false",
            ]
            .map(String::from)
            .to_vec(),
            user_mode: UserMode::Header,
            token_max_lifetime: 20 * 60,
            clock_skew: 30,
            timeout: calls::DEFAULT_TIMEOUT_SECS,
            call_timeouts: BTreeMap::new(),
            mapping_expire_after_ms: None,
            ucloud_url: String::new(),
            ucloud_ca: String::new(),
            sender_user: String::new(),
            nss_skip: vec!["systemd".into()],
            spare_dispatcher: true,
            folder_upload_max_depth: 32,
            folder_upload_max_width: 10_000,
            folder_upload_max_files: 1_000_000,
            search_max_results: DEFAULT_SEARCH_MAX_RESULTS,
            projects: None,
            monitor_events: Vec::new(),
            monitor_user: "ucloud-mon".to_string(),
            lease_seconds: 10,
            clock_skew_seconds: 2,
        };
        let mut lease_line = 0;
        let mut project = ProjectConfig {
            prefix: String::new(),
            gid_min: 0,
            gid_max: 0,
            base: String::new(),
            group_hook: String::new(),
            slurm_default_account: String::new(),
            slurm_personal_accounts: false,
            locked: LockedLimit::Submit,
        };
        let mut project_keys = false;
        let mut strict = false;
        let mut claim = String::from("ucloudUsername");
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(
                    line_no,
                    format!("expected `key = value`, got {line:?}"),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let number = |what: &str| -> Result<u64, ConfigError> {
                value.parse::<u64>().map_err(|_| {
                    err(
                        line_no,
                        format!("{what} must be a whole number, got {value:?}"),
                    )
                })
            };
            match key {
                "provider" => config.provider = value.to_string(),
                "public_url" => config.public_url = value.trim_end_matches('/').to_string(),
                "web_domain" => {
                    let domain = value.trim_end_matches('.').to_ascii_lowercase();
                    if !crate::transfer::is_host_name(&domain) || !domain.contains('.') {
                        return Err(err(
                            line_no,
                            format!("web_domain must be a DNS name like apps.example.org, got {value:?}"),
                        ));
                    }
                    config.web_domain = domain;
                }
                "gateway_user" => config.gateway_user = value.to_string(),
                "service_user" => config.service_user = value.to_string(),
                "sender_user" => config.sender_user = value.to_string(),
                "min_uid" => {
                    config.min_uid = u32::try_from(number(key)?)
                        .map_err(|_| err(line_no, "min_uid is out of range"))?
                }
                "disabled_shells" => {
                    config.disabled_shells = value.split_whitespace().map(String::from).collect()
                }
                "user_mode" => match value {
                    "header" => strict = false,
                    "strict" => strict = true,
                    _ => return Err(err(line_no, "user_mode must be `header` or `strict`")),
                },
                "user_claim" => claim = value.to_string(),
                "token_max_lifetime" => config.token_max_lifetime = number(key)?,
                "clock_skew" => config.clock_skew = number(key)?,
                "search_max_results" => match number(key)? {
                    0 => return Err(err(line_no, "search_max_results must be at least 1")),
                    n => config.search_max_results = n,
                },
                "timeout" => config.timeout = number(key)?,
                "lease_seconds" => {
                    config.lease_seconds = number(key)?;
                    if !(3..=3600).contains(&config.lease_seconds) {
                        return Err(err(line_no, "lease_seconds must be between 3 and 3600"));
                    }
                    lease_line = line_no;
                }
                "clock_skew_seconds" => {
                    config.clock_skew_seconds = number(key)?;
                    lease_line = line_no;
                }
                "mapping_expire_after_ms" => config.mapping_expire_after_ms = Some(number(key)?),
                "ucloud_url" => config.ucloud_url = value.trim_end_matches('/').to_string(),
                "ucloud_ca" => config.ucloud_ca = value.to_string(),
                "spare_dispatcher" => {
                    config.spare_dispatcher = match value {
                        "yes" => true,
                        "no" => false,
                        _ => {
                            return Err(err(
                                line_no,
                                format!("spare_dispatcher must be yes or no, got {value:?}"),
                            ))
                        }
                    }
                }
                "folder_upload_max_depth" => config.folder_upload_max_depth = number(key)?,
                "folder_upload_max_width" => config.folder_upload_max_width = number(key)?,
                "folder_upload_max_files" => config.folder_upload_max_files = number(key)?,
                "project_prefix" => {
                    if !is_valid_prefix(value) {
                        return Err(err(line_no, format!("project_prefix must be 1 to 10 of a-z, 0-9, _ and -, starting with a letter, got {value:?}")));
                    }
                    project.prefix = value.to_string();
                }
                "project_gid_min" | "project_gid_max" => {
                    let gid = u32::try_from(number(key)?)
                        .ok()
                        .filter(|g| (1000..u32::MAX).contains(g))
                        .ok_or_else(|| {
                            err(
                                line_no,
                                format!("{key} must be between 1000 and 4294967294"),
                            )
                        })?;
                    match key {
                        "project_gid_min" => project.gid_min = gid,
                        _ => project.gid_max = gid,
                    }
                    project_keys = true;
                }
                "project_base" | "project_group_hook" => {
                    if !value.is_empty()
                        && (!value.starts_with('/')
                            || value.contains("/../")
                            || value.ends_with("/.."))
                    {
                        return Err(err(
                            line_no,
                            format!("{key} must be an absolute path, got {value:?}"),
                        ));
                    }
                    let value = value.trim_end_matches('/').to_string();
                    match key {
                        "project_base" => project.base = value,
                        _ => project.group_hook = value,
                    }
                    project_keys = true;
                }
                "slurm_default_account" => {
                    if !value.is_empty() && !is_slurm_name(value) {
                        return Err(err(
                            line_no,
                            format!(
                                "slurm_default_account must be of a-z, 0-9, _ and -, got {value:?}"
                            ),
                        ));
                    }
                    project.slurm_default_account = value.to_string();
                    project_keys = true;
                }
                "slurm_personal_accounts" => {
                    project.slurm_personal_accounts = match value {
                        "yes" => true,
                        "no" => false,
                        _ => {
                            return Err(err(
                                line_no,
                                format!("slurm_personal_accounts must be yes or no, got {value:?}"),
                            ))
                        }
                    };
                    project_keys = true;
                }
                "slurm_locked" => {
                    project.locked = match value {
                        "submit" => LockedLimit::Submit,
                        "start" => LockedLimit::Start,
                        _ => {
                            return Err(err(
                                line_no,
                                format!("slurm_locked must be submit or start, got {value:?}"),
                            ))
                        }
                    };
                    project_keys = true;
                }
                "monitor_events" => {
                    config.monitor_events =
                        parse_monitor_events(value).map_err(|why| err(line_no, why))?
                }
                "monitor_user" => {
                    let ok = (1..=32).contains(&value.len())
                        && value
                            .bytes()
                            .next()
                            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                        && value.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                        });
                    if !ok {
                        return Err(err(
                            line_no,
                            format!("monitor_user {value:?} is not an account name ([a-z_][a-z0-9_-], at most 32)"),
                        ));
                    }
                    config.monitor_user = value.to_string();
                }
                "nss_skip" => {
                    config.nss_skip = value.split_whitespace().map(String::from).collect();
                    if let Some(bad) = config.nss_skip.iter().find(|m| !is_nss_module_name(m)) {
                        return Err(err(
                            line_no,
                            format!(
                                "nss_skip: {bad:?} is not an NSS module name (letters, digits, _)"
                            ),
                        ));
                    }
                }
                _ => match key.strip_prefix("timeout.") {
                    Some(call) if calls::is_valid_call_name(call) => {
                        config.call_timeouts.insert(call.to_string(), number(key)?);
                    }
                    _ => return Err(err(line_no, format!("unknown key {key:?}"))),
                },
            }
        }
        if config.clock_skew_seconds.saturating_mul(2) >= config.lease_seconds {
            return Err(err(
                lease_line,
                format!(
                    "clock_skew_seconds ({}) must be less than half of lease_seconds ({}): a holder \
                     believes its lease for lease_seconds minus the skew, and renews every third",
                    config.clock_skew_seconds, config.lease_seconds
                ),
            ));
        }
        if strict {
            if claim.is_empty() {
                return Err(err(0, "user_mode = strict needs a user_claim"));
            }
            config.user_mode = UserMode::Strict { claim };
        }
        for (key, value) in [
            ("provider", &config.provider),
            ("gateway_user", &config.gateway_user),
            ("service_user", &config.service_user),
        ] {
            if value.is_empty() {
                return Err(err(0, format!("{key} is not set")));
            }
        }
        if !config
            .provider
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(0, "provider may hold only letters, digits, - and _"));
        }
        if config.service_user == "root" || config.gateway_user == "root" {
            return Err(err(0, "neither service_user nor gateway_user may be root"));
        }
        if config.min_uid == 0 {
            return Err(err(0, "min_uid must be above 0"));
        }
        if !project.prefix.is_empty() {
            if project.slurm_default_account.is_empty() {
                return Err(err(
                    0,
                    "project_prefix needs slurm_default_account: without it a user's first Slurm \
                     association could be a project's account, and Slurm would charge their \
                     personal jobs to the project",
                ));
            }
            if project.gid_min == 0 || project.gid_max < project.gid_min {
                return Err(err(
                    0,
                    "project_prefix needs project_gid_min and project_gid_max, the lower first",
                ));
            }
            config.projects = Some(project);
        } else if project_keys {
            return Err(err(0, "project_* and slurm_* keys need project_prefix"));
        }
        Ok(config)
    }

    pub fn load(path: &str) -> Result<SiteConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(0, format!("cannot read {path}: {e}")))?;
        SiteConfig::parse(&text)
    }

    /// The wall-clock limit of one call, in seconds.
    pub fn timeout_for(&self, call: &str) -> u64 {
        match self.call_timeouts.get(call) {
            Some(secs) => *secs,
            None if calls::is_long(call) => calls::LONG_TIMEOUT_SECS,
            None => self.timeout,
        }
    }
}

/// The most addresses `monitor_events` may name: each is one connection per
/// Slurm event, made by a hook that must finish within a second.
pub const MAX_MONITOR_EVENTS: usize = 8;

/// `monitor_events`: 1 to 8 socket addresses (`192.0.2.7:6830`, `[2001:db8::7]:6830`),
/// separated by commas or spaces. Literal addresses only: the hook that sends to them
/// has no time for a name lookup, and a name is one more thing an attacker could
/// redirect.
pub fn parse_monitor_events(value: &str) -> Result<Vec<std::net::SocketAddr>, String> {
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    for word in value
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        let addr: std::net::SocketAddr = word.parse().map_err(|_| {
            format!(
                "monitor_events: {word:?} is not ADDR:PORT (an IPv4 address, or an IPv6 address in [brackets], then :PORT; no host names)"
            )
        })?;
        let ip = addr.ip();
        if addr.port() == 0 {
            return Err(format!("monitor_events: {word:?} has port 0"));
        }
        let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_unspecified() || ip.is_multicast() || broadcast {
            return Err(format!(
                "monitor_events: {word:?} is not one monitor's address (unspecified, multicast or broadcast)"
            ));
        }
        if addrs.contains(&addr) {
            return Err(format!("monitor_events: {word:?} is named twice"));
        }
        addrs.push(addr);
        if addrs.len() > MAX_MONITOR_EVENTS {
            return Err(format!(
                "monitor_events: at most {MAX_MONITOR_EVENTS} addresses"
            ));
        }
    }
    if addrs.is_empty() {
        return Err(
            "monitor_events needs 1 to 8 ADDR:PORT (leave the key out to use the local socket)"
                .into(),
        );
    }
    Ok(addrs)
}

/// What nsswitch.conf can name as a service (`files`, `sss`, `ldap`, `systemd`).
/// A Slurm account or Unix group name this module passes to a command: lower-case
/// letters, digits, `_` and `-`, starting with a letter, at most 32 bytes.
pub fn is_slurm_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_nss_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "provider = hpc\ngateway_user = ucloud-gw\nservice_user = ucloud-svc\n";

    #[test]
    fn project_keys_are_checked_and_need_a_prefix() {
        assert_eq!(SiteConfig::parse(MINIMAL).unwrap().projects, None);
        let good = format!("{MINIMAL}project_prefix = ucp-\nproject_gid_min = 200000\nproject_gid_max = 200999\nproject_base = /work/projects/\nslurm_default_account = ucloud\nslurm_personal_accounts = yes\nslurm_locked = start\n");
        let p = SiteConfig::parse(&good).unwrap().projects.unwrap();
        assert_eq!(
            (p.prefix.as_str(), p.gid_min, p.gid_max),
            ("ucp-", 200000, 200999)
        );
        assert_eq!(p.base, "/work/projects");
        assert_eq!(p.slurm_default_account, "ucloud");
        assert!(p.slurm_personal_accounts);
        assert_eq!(p.locked, LockedLimit::Start);
        for bad in [
            "project_prefix = UCP\n",
            "project_prefix = 1ucp\n",
            "project_prefix = ucp;rm\n",
            "project_prefix = abcdefghijk\n",
            "project_prefix = ucp\n",
            "project_prefix = ucp\nproject_gid_min = 5\nproject_gid_max = 10\n",
            "project_prefix = ucp\nproject_gid_min = 3000\nproject_gid_max = 2000\n",
            "project_prefix = ucp\nproject_gid_min = 3000\nproject_gid_max = 4000\nproject_base = relative\n",
            "project_prefix = ucp\nproject_gid_min = 3000\nproject_gid_max = 4000\nproject_base = /a/../etc\n",
            "project_prefix = ucp\nproject_gid_min = 3000\nproject_gid_max = 4000\nslurm_default_account = Root Acct\n",
            "project_prefix = ucp\nproject_gid_min = 3000\nproject_gid_max = 4000\nslurm_locked = maybe\n",
            "project_prefix = ucp\nproject_gid_min = 3000\nproject_gid_max = 4000\n",
            "project_base = /work/projects\n",
        ] {
            assert!(SiteConfig::parse(&format!("{MINIMAL}{bad}")).is_err(), "{bad}");
        }
        assert!(is_slurm_name("ucp-1a2b_cpu"));
        for bad in ["", "-x", "a b", "a\n", "ä", &"a".repeat(33)] {
            assert!(!is_slurm_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn monitor_events_are_literal_socket_addresses() {
        assert!(SiteConfig::parse(MINIMAL)
            .unwrap()
            .monitor_events
            .is_empty());
        let c = SiteConfig::parse(&format!(
            "{MINIMAL}monitor_events = 192.0.2.7:6830, [2001:db8::7]:6830 127.0.0.1:1\n"
        ))
        .unwrap();
        let shown: Vec<String> = c.monitor_events.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            shown,
            ["192.0.2.7:6830", "[2001:db8::7]:6830", "127.0.0.1:1"]
        );
        let nine = (1..=9)
            .map(|i| format!("10.0.0.{i}:6830"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            "",
            ",, ,",
            "monitor.example.org:6830",
            "localhost:6830",
            "192.0.2.7",
            "192.0.2.7:",
            "192.0.2.7:0",
            "192.0.2.7:65536",
            "192.0.2.7:-1",
            "2001:db8::7:6830",
            "[2001:db8::7]",
            "0.0.0.0:6830",
            "[::]:6830",
            "255.255.255.255:6830",
            "224.0.0.1:6830",
            "[ff02::1]:6830",
            "192.0.2.7:6830 192.0.2.7:6830",
            "192.0.2.7:6830;rm -rf /",
            "192.0.2.7:6830\u{0}",
            "1.2.3.4.5:80",
            "192.0.2.7:6830/x",
            nine.as_str(),
        ] {
            let e =
                SiteConfig::parse(&format!("{MINIMAL}monitor_events = {bad}\n")).expect_err(bad);
            assert_eq!(e.line, 4, "{bad:?}");
            assert!(e.message.contains("monitor_events"), "{bad:?}: {e}");
        }
        let eight = (1..=8)
            .map(|i| format!("10.0.0.{i}:6830"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(parse_monitor_events(&eight).unwrap().len(), 8);
    }

    #[test]
    fn monitor_user_is_an_account_name() {
        assert_eq!(
            SiteConfig::parse(MINIMAL).unwrap().monitor_user,
            "ucloud-mon"
        );
        let c = SiteConfig::parse(&format!("{MINIMAL}monitor_user = mon_2\n")).unwrap();
        assert_eq!(c.monitor_user, "mon_2");
        for bad in [
            "",
            "Root",
            "-u",
            "1abc",
            "a b",
            "mon;id",
            "x\u{0}",
            &"a".repeat(33),
        ] {
            let e = SiteConfig::parse(&format!("{MINIMAL}monitor_user = {bad}\n")).expect_err(bad);
            assert!(e.message.contains("monitor_user"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = SiteConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.provider, "hpc");
        assert_eq!(c.min_uid, 1000);
        assert_eq!(c.user_mode, UserMode::Header);
        assert_eq!(c.timeout_for("files.browse"), calls::DEFAULT_TIMEOUT_SECS);
        assert_eq!(c.timeout_for("files.download"), calls::LONG_TIMEOUT_SECS);
        assert_eq!(c.nss_skip, ["systemd"]);
        assert!(c.spare_dispatcher);
        assert_eq!(c.search_max_results, DEFAULT_SEARCH_MAX_RESULTS);
        assert_eq!(
            c.timeout_for("files.streamingSearch"),
            calls::DEFAULT_TIMEOUT_SECS
        );
    }

    #[test]
    fn search_max_results_is_a_positive_number() {
        let c = SiteConfig::parse(&format!(
            "{MINIMAL}search_max_results = 50
"
        ))
        .unwrap();
        assert_eq!(c.search_max_results, 50);
        for bad in ["0", "-1", "many", ""] {
            let e = SiteConfig::parse(&format!(
                "{MINIMAL}search_max_results = {bad}
"
            ))
            .unwrap_err();
            assert_eq!(e.line, 4, "{bad:?}");
        }
    }

    #[test]
    fn folder_upload_limits_have_defaults_and_are_numbers() {
        let c = SiteConfig::parse(MINIMAL).unwrap();
        assert_eq!(
            (
                c.folder_upload_max_depth,
                c.folder_upload_max_width,
                c.folder_upload_max_files
            ),
            (32, 10_000, 1_000_000)
        );
        let c = SiteConfig::parse(&format!("{MINIMAL}folder_upload_max_depth = 4\n")).unwrap();
        assert_eq!(c.folder_upload_max_depth, 4);
        assert!(SiteConfig::parse(&format!("{MINIMAL}folder_upload_max_width = -1\n")).is_err());
    }

    #[test]
    fn lease_timing_has_defaults_and_refuses_bad_values() {
        let c = SiteConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.lease_timing(), crate::lease::Timing::DEFAULT);
        let c = SiteConfig::parse(&format!(
            "{MINIMAL}lease_seconds = 30\nclock_skew_seconds = 5\n"
        ))
        .unwrap();
        assert_eq!(c.lease_timing().ttl, std::time::Duration::from_secs(30));
        assert_eq!(c.lease_timing().skew, std::time::Duration::from_secs(5));
        let c = SiteConfig::parse(&format!("{MINIMAL}clock_skew_seconds = 0\n")).unwrap();
        assert!(c.lease_timing().skew.is_zero());
        for bad in [
            "",
            "-1",
            "ten",
            "2",
            "0",
            "3601",
            "1e3",
            "99999999999999999999999",
        ] {
            let e = SiteConfig::parse(&format!("{MINIMAL}lease_seconds = {bad}\n")).unwrap_err();
            assert_eq!(e.line, 4, "{bad:?}");
        }
        for bad in ["", "-1", "two", "1.5"] {
            let e =
                SiteConfig::parse(&format!("{MINIMAL}clock_skew_seconds = {bad}\n")).unwrap_err();
            assert_eq!(e.line, 4, "{bad:?}");
        }
        // A skew of half the lease or more leaves a holder no time to renew.
        for (lease, skew) in [(10, 5), (10, 9), (4, 2), (10, 18446744073709551615u64)] {
            let text = format!("{MINIMAL}lease_seconds = {lease}\nclock_skew_seconds = {skew}\n");
            let e = SiteConfig::parse(&text).unwrap_err();
            assert!(e.message.contains("half"), "{lease} {skew}: {e}");
        }
        let e = SiteConfig::parse(&format!("{MINIMAL}clock_skew_seconds = 5\n")).unwrap_err();
        assert_eq!(e.line, 4);
    }

    #[test]
    fn spare_dispatcher_is_yes_or_no() {
        let c = SiteConfig::parse(&format!("{MINIMAL}spare_dispatcher = no\n")).unwrap();
        assert!(!c.spare_dispatcher);
        for bad in ["", "true", "YES", "no no"] {
            let e = SiteConfig::parse(&format!("{MINIMAL}spare_dispatcher = {bad}\n")).unwrap_err();
            assert_eq!(e.line, 4, "{bad:?}");
        }
    }

    #[test]
    fn nss_skip_takes_module_names_only() {
        let c = SiteConfig::parse(&format!("{MINIMAL}nss_skip =\n")).unwrap();
        assert!(c.nss_skip.is_empty());
        let c = SiteConfig::parse(&format!("{MINIMAL}nss_skip = systemd  mymachines\n")).unwrap();
        assert_eq!(c.nss_skip, ["systemd", "mymachines"]);
        for bad in ["[NOTFOUND=return]", "../lib/x", "a:b", "sys\u{0}temd"] {
            let e = SiteConfig::parse(&format!("{MINIMAL}nss_skip = {bad}\n")).unwrap_err();
            assert_eq!(e.line, 4, "{bad}");
        }
    }

    #[test]
    fn strict_mode_and_per_call_timeouts() {
        let text = format!(
            "{MINIMAL}# comment\n\nuser_mode = strict\nuser_claim = uname\ntimeout.jobs.create = 7\n"
        );
        let c = SiteConfig::parse(&text).unwrap();
        assert_eq!(
            c.user_mode,
            UserMode::Strict {
                claim: "uname".into()
            }
        );
        assert_eq!(c.timeout_for("jobs.create"), 7);
    }

    #[test]
    fn mistakes_are_errors_with_line_numbers() {
        let cases = [
            (format!("{MINIMAL}min_uid = -1\n"), 4),
            (format!("{MINIMAL}mni_uid = 5\n"), 4),
            (format!("{MINIMAL}user_mode = lax\n"), 4),
            (format!("{MINIMAL}timeout.../etc = 5\n"), 4),
            (format!("{MINIMAL}no equals sign\n"), 4),
        ];
        for (text, line) in cases {
            assert_eq!(SiteConfig::parse(&text).unwrap_err().line, line, "{text}");
        }
    }

    #[test]
    fn root_and_missing_accounts_are_refused() {
        assert!(SiteConfig::parse("provider = hpc\ngateway_user = gw\n").is_err());
        assert!(
            SiteConfig::parse("provider = hpc\ngateway_user = gw\nservice_user = root\n").is_err()
        );
        assert!(SiteConfig::parse(&format!("{MINIMAL}min_uid = 0\n")).is_err());
        assert!(
            SiteConfig::parse("provider = h/../x\ngateway_user = gw\nservice_user = s\n").is_err()
        );
    }
}
