//! Transfer tokens: the credential of the browser-facing data channel
//! (`files.download`, `files.upload`), which carries no UCloud token. The dispatcher
//! mints one for `files.createDownload` / `files.createUpload` (the plugin puts it in
//! the URL it returns) and verifies it when the browser comes back; the gateway,
//! which has no key, only peeks at its shape; the plugin gets the verified token from
//! the dispatcher (`UCLOUD_TRANSFER_TOKEN`) and reads its claims.
//!
//! An HS256 JWT keyed with the root-only transfer key (at least 32 random bytes): the
//! algorithm is fixed here, never read from the token. It names the UCloud user, the
//! local account and uid it was minted for, the one call it is good for, a random
//! `jti` the plugin keys its session on, and `exp`. It is a bearer credential: anyone
//! holding the URL can use it until it expires. Pure: the caller brings the key, the
//! time and the random `jti`.

use crate::names::{LocalName, UcloudName};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

/// How long a minted token is good for: UCloud keeps download and upload sessions
/// for up to 48 hours.
pub const LIFETIME_SECS: u64 = 48 * 3600;
/// How long a session identifier (a token for a call the table marks `once`, the
/// terminal) is good for: the browser opens the session right after UCloud hands
/// it the identifier, so minutes are plenty, and a leaked one soon dies.
pub const SESSION_LIFETIME_SECS: u64 = 5 * 60;
/// How long a web interface's cookie (a token for `jobs.web`) is good for: a
/// working day; UCloud's link makes a new one.
pub const APP_LIFETIME_SECS: u64 = 12 * 3600;
/// The cookie a job's web host keeps its session in: set by the plugin, found
/// and stripped by the gateway.
pub const APP_COOKIE: &str = "ucloud-im-app";
/// The longest `subject` a token may carry (a folder's UCloud path).
pub const MAX_SUBJECT: usize = 4096;
/// The `typ` claim, which tells these tokens from any other HS256 JWT.
pub const TYPE: &str = "ucloud-im-transfer";

/// What a transfer token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub call: String,
    pub ucloud: UcloudName,
    pub local: LocalName,
    pub uid: u32,
    pub jti: String,
    pub iat: Option<u64>,
    pub exp: u64,
    /// What a session identifier is for (see [`session_subject`]); `None` on
    /// download and upload tokens.
    pub subject: Option<String>,
}

impl Claims {
    /// A token's claims for `call`, minted at `now` with the random `jti`; a
    /// single-use session identifier lives [`SESSION_LIFETIME_SECS`], a web
    /// interface's cookie [`APP_LIFETIME_SECS`].
    pub fn new(
        call: &str,
        ucloud: UcloudName,
        local: LocalName,
        uid: u32,
        jti: String,
        now: u64,
        subject: Option<String>,
    ) -> Claims {
        let lifetime = if crate::calls::is_once(call) {
            SESSION_LIFETIME_SECS
        } else if crate::calls::is_app(call) {
            APP_LIFETIME_SECS
        } else {
            LIFETIME_SECS
        };
        Claims {
            call: call.into(),
            ucloud,
            local,
            uid,
            jti,
            iat: Some(now),
            exp: now.saturating_add(lifetime),
            subject,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut claims = json!({
            "typ": TYPE, "call": self.call, "ucloud": self.ucloud.as_str(),
            "local": self.local.as_str(), "uid": self.uid, "jti": self.jti,
            "iat": self.iat, "exp": self.exp,
        });
        if let Some(subject) = &self.subject {
            claims["sub"] = Value::String(subject.clone());
        }
        claims
    }

    /// The claims of a token for `call` that has not expired at `now`. The reasons
    /// follow "transfer token".
    pub fn from_json(claims: &Value, call: &str, now: u64) -> Result<Claims, String> {
        let exp = live(claims, now)?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("call") != Some(call) {
            return Err(format!("is not for {call}"));
        }
        let ucloud = text("ucloud")
            .and_then(|u| UcloudName::new(u).ok())
            .ok_or("names no UCloud user")?;
        let local = text("local")
            .and_then(|l| LocalName::new(l).ok())
            .ok_or("names no local account")?;
        let uid = claims
            .get("uid")
            .and_then(Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
            .ok_or("names no uid")?;
        let jti = text("jti").ok_or("has no jti")?.to_string();
        let subject = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= MAX_SUBJECT && !s.contains('\0') => {
                Some(s.clone())
            }
            Some(_) => return Err("has a sub that is not a short string".into()),
        };
        if crate::calls::is_bound(call) && subject.as_deref().and_then(Subject::parse).is_none() {
            return Err("names no job or folder: it is no session identifier".into());
        }
        let iat = match claims.get("iat") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or("has an iat that is not a time")?),
        };
        Ok(Claims {
            call: call.into(),
            ucloud,
            local,
            uid,
            jti,
            iat,
            exp,
            subject,
        })
    }
}

/// The call a token minted for `call`'s plugin is good for: the call table's
/// `mints`, except that a `jobs.interactiveSession` for a web interface
/// (`sessionType` WEB) gets the link's token, for `jobs.webAuthorize`.
pub fn minted_for(call: &str, request: &Value) -> Option<&'static str> {
    let table = crate::calls::redeemed_by(call)?;
    let web = request["items"][0]["sessionType"] == "WEB";
    Some(if call == "jobs.interactiveSession" && web {
        "jobs.webAuthorize"
    } else {
        table
    })
}

/// What a session identifier minted for `request` is bound to: the one item of a
/// `jobs.interactiveSession` (`JobsProviderOpenInteractiveSessionRequestItem`:
/// `job/<job id>/<rank>`, or for a web interface `web/<job id>/<rank>/<port>`,
/// the port the job's application names in `invocation.web.port`) or of a
/// `jobs.openTerminalInFolder` (`JobsOpenTerminalInFolderRequestItem`:
/// `folder/<UCloud path>`). One session per request: the web client asks for one
/// at a time, and one token cannot be bound to two jobs.
pub fn session_subject(request: &Value) -> Result<String, String> {
    let item = match request
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([item]) => item,
        Some(items) => {
            return Err(format!(
                "asks for {} sessions; open one per request",
                items.len()
            ))
        }
        None => return Err("has no items".into()),
    };
    if let Some(folder) = item.get("folder") {
        return match folder.as_str() {
            Some(f) if f.starts_with('/') && f.len() < MAX_SUBJECT && !f.contains('\0') => {
                Ok(format!("folder{f}"))
            }
            _ => Err("names a folder that is not an absolute UCloud path".into()),
        };
    }
    let id = item["job"]["id"].as_str().unwrap_or_default();
    if id.is_empty() || id.len() > 19 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err("names no job with a decimal id".into());
    }
    let rank = match item.get("rank").and_then(Value::as_u64) {
        Some(rank) if rank < 100_000 => rank,
        _ => return Err("names no rank (a small whole number)".into()),
    };
    if item["sessionType"] != "WEB" {
        return Ok(format!("job/{id}/{rank}"));
    }
    let port = &item["job"]["status"]["resolvedApplication"]["invocation"]["web"]["port"];
    match port.as_u64() {
        Some(port) if (1..=65535).contains(&port) => Ok(format!("web/{id}/{rank}/{port}")),
        _ => Err(
            "is for a web interface, and the job's application names no web port \
             (invocation.web.port)"
                .into(),
        ),
    }
}

/// A DNS name: labels of letters, digits and inner hyphens, at most 253 bytes.
pub fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The job and rank a job's web host (`app-<job id>-<rank>.<web_domain>`, any
/// port, any case) names, if `host` is one.
pub fn app_host(host: &str, web_domain: &str) -> Option<(String, u32)> {
    if web_domain.is_empty() {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
    .to_ascii_lowercase();
    let label = name.strip_suffix(web_domain)?.strip_suffix('.')?;
    let (id, rank) = label.strip_prefix("app-")?.split_once('-')?;
    let valid = !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit());
    let rank = rank
        .parse::<u32>()
        .ok()
        .filter(|r| *r < 100_000 && !rank.starts_with('+'))?;
    valid.then(|| (id.to_string(), rank))
}

/// A session's subject read back: a job and its rank, a job's web interface
/// (with the port its application names), or a UCloud folder.
#[derive(Debug, PartialEq, Eq)]
pub enum Subject {
    Job { id: String, rank: u32 },
    Web { id: String, rank: u32, port: u16 },
    Folder(String),
}

impl Subject {
    pub fn parse(subject: &str) -> Option<Subject> {
        if let Some(path) = subject.strip_prefix("folder") {
            return path.starts_with('/').then(|| Subject::Folder(path.into()));
        }
        let job_id = |id: &str| {
            let valid = !id.is_empty() && id.len() <= 19 && id.bytes().all(|b| b.is_ascii_digit());
            valid.then(|| id.to_string())
        };
        let number = |n: &str| {
            (!n.starts_with('+'))
                .then(|| n.parse::<u32>().ok())
                .flatten()
        };
        if let Some(rest) = subject.strip_prefix("web/") {
            let mut parts = rest.split('/');
            let (id, rank, port) = (parts.next()?, parts.next()?, parts.next()?);
            let port = u16::try_from(number(port)?).ok().filter(|p| *p > 0)?;
            return parts.next().is_none().then_some(Subject::Web {
                id: job_id(id)?,
                rank: number(rank)?,
                port,
            });
        }
        let (id, rank) = subject.strip_prefix("job/")?.split_once('/')?;
        Some(Subject::Job {
            id: job_id(id)?,
            rank: number(rank)?,
        })
    }
}

pub fn mint(key: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims.to_json(),
        &EncodingKey::from_secret(key),
    )
    .map_err(|e| format!("cannot sign a transfer token: {e}"))
}

/// The claims of a token signed with `key`, for `call`, not expired at `now`.
/// The reasons follow "transfer token".
pub fn verify(token: &str, key: &[u8], call: &str, now: u64) -> Result<Claims, String> {
    hs256_header(token)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(key), &validation)
        .map_err(|_| "signature does not verify".to_string())?
        .claims;
    Claims::from_json(&claims, call, now)
}

/// A look at the shape WITHOUT checking the signature: an HS256 JWT of our `typ`
/// that has not expired. For the gateway, which has no key and only keeps obvious
/// garbage from starting a dispatcher; never a check that counts.
pub fn peek(token: &str, now: u64) -> Result<(), String> {
    live(&unverified_claims(token)?, now).map(|_| ())
}

/// The `sub` a token says it is for, WITHOUT checking the signature: for the
/// gateway, to pick among several cookies of one name the one meant for a host
/// (the dispatcher still verifies the one picked); never a check that counts.
pub fn peek_subject(token: &str) -> Option<String> {
    unverified_claims(token)
        .ok()?
        .get("sub")?
        .as_str()
        .map(str::to_string)
}

/// The claims of a token the dispatcher verified and handed to the plugin
/// (`UCLOUD_TRANSFER_TOKEN`): the plugin has no key, the signature is not checked.
pub fn read_verified(token: &str, call: &str, now: u64) -> Result<Claims, String> {
    Claims::from_json(&unverified_claims(token)?, call, now)
}

/// Our `typ` and an `exp` after `now`.
fn live(claims: &Value, now: u64) -> Result<u64, String> {
    if claims.get("typ").and_then(Value::as_str) != Some(TYPE) {
        return Err("is not a ucloud-im transfer token".into());
    }
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if exp > now => Ok(exp),
        _ => Err("has expired".into()),
    }
}

fn unverified_claims(token: &str) -> Result<Value, String> {
    hs256_header(token)?;
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| "has unreadable claims".into())
}

fn hs256_header(token: &str) -> Result<(), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "is not a JWT".to_string())?;
    if header.alg != Algorithm::HS256 {
        return Err("does not use HS256".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const KEY: [u8; 32] = [7; 32];

    fn claims() -> Claims {
        Claims::new(
            "files.download",
            UcloudName::new("AliceHansen#1001").unwrap(),
            LocalName::new("alice").unwrap(),
            1001,
            "0123456789abcdef0123456789abcdef".into(),
            NOW,
            None,
        )
    }

    fn sign(claims: &Value, alg: Algorithm) -> String {
        crate::token::install_crypto_provider();
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(&KEY)).unwrap()
    }

    #[test]
    fn minted_tokens_verify_for_their_call_only() {
        crate::token::install_crypto_provider();
        let token = mint(&KEY, &claims()).unwrap();
        assert_eq!(
            verify(&token, &KEY, "files.download", NOW + 60),
            Ok(claims())
        );
        assert_eq!(
            read_verified(&token, "files.download", NOW + 60),
            Ok(claims())
        );
        assert_eq!(peek(&token, NOW + 60), Ok(()));
        let why = |r: Result<Claims, String>| r.unwrap_err();
        assert_eq!(
            why(verify(&token, &KEY, "files.upload", NOW)),
            "is not for files.upload"
        );
        assert_eq!(
            why(verify(&token, &KEY, "files.download", NOW + LIFETIME_SECS)),
            "has expired"
        );
        assert_eq!(
            why(verify(&token, &[8; 32], "files.download", NOW)),
            "signature does not verify"
        );
        let mut forged = token.clone();
        forged.push('x');
        assert!(verify(&forged, &KEY, "files.download", NOW).is_err());
        // Neither looks at the signature: that is what they are not for.
        assert!(peek(&forged, NOW).is_ok());
        assert!(read_verified(&forged, "files.download", NOW).is_ok());
    }

    #[test]
    fn hostile_tokens_are_refused_with_the_reason() {
        let good = claims().to_json();
        let with = |key: &str, value: Value| {
            let mut c = good.clone();
            c[key] = value;
            c
        };
        let without = |key: &str| {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove(key);
            c
        };
        let cases = [
            (sign(&good, Algorithm::HS384), "does not use HS256"),
            (
                sign(&with("typ", json!("JWT")), Algorithm::HS256),
                "not a ucloud-im",
            ),
            (sign(&without("typ"), Algorithm::HS256), "not a ucloud-im"),
            (
                sign(&with("call", json!("files.upload")), Algorithm::HS256),
                "is not for",
            ),
            (sign(&without("exp"), Algorithm::HS256), "has expired"),
            (
                sign(&with("exp", json!(NOW)), Algorithm::HS256),
                "has expired",
            ),
            (
                sign(&with("exp", json!("never")), Algorithm::HS256),
                "has expired",
            ),
            (
                sign(&with("ucloud", json!("")), Algorithm::HS256),
                "UCloud user",
            ),
            (
                sign(&with("local", json!("../root")), Algorithm::HS256),
                "local account",
            ),
            (sign(&without("local"), Algorithm::HS256), "local account"),
            (
                sign(&with("uid", json!(-1)), Algorithm::HS256),
                "names no uid",
            ),
            (
                sign(&with("uid", json!(1u64 << 32)), Algorithm::HS256),
                "names no uid",
            ),
            (sign(&without("jti"), Algorithm::HS256), "has no jti"),
            (sign(&with("iat", json!("now")), Algorithm::HS256), "iat"),
            ("x".into(), "not a JWT"),
            ("a.b.c".into(), "not a JWT"),
            (String::new(), "not a JWT"),
        ];
        for (token, why) in cases {
            for result in [
                verify(&token, &KEY, "files.download", NOW),
                read_verified(&token, "files.download", NOW),
            ] {
                let got = result.unwrap_err();
                assert!(got.contains(why), "{token}: {got}, not {why}");
            }
        }
        // An unsigned token ("alg": "none") is not a JWT to either.
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none"}"#),
            e.encode(good.to_string())
        );
        assert!(verify(&unsigned, &KEY, "files.download", NOW).is_err());
        assert!(read_verified(&unsigned, "files.download", NOW).is_err());
        assert!(peek(&unsigned, NOW).is_err());
        // The shape check is typ and exp only: a token without a user may still
        // start a dispatcher, which refuses it.
        assert_eq!(
            peek(&sign(&without("ucloud"), Algorithm::HS256), NOW),
            Ok(())
        );
        assert!(peek(&sign(&without("exp"), Algorithm::HS256), NOW).is_err());
    }

    #[test]
    fn a_session_is_bound_to_one_job_and_rank_or_one_folder() {
        let job = json!({"items": [{"job": {"id": "4711", "specification": {}}, "rank": 0,
            "sessionType": "SHELL", "target": null}]});
        assert_eq!(session_subject(&job).as_deref(), Ok("job/4711/0"));
        assert_eq!(
            Subject::parse("job/4711/0"),
            Some(Subject::Job {
                id: "4711".into(),
                rank: 0
            })
        );
        let folder = json!({"items": [{"folder": "/12/work dir"}]});
        assert_eq!(
            session_subject(&folder).as_deref(),
            Ok("folder/12/work dir")
        );
        assert_eq!(
            Subject::parse("folder/12/work dir"),
            Some(Subject::Folder("/12/work dir".into()))
        );
        for (bad, why) in [
            (json!({}), "no items"),
            (json!({"items": []}), "0 sessions"),
            (
                json!({"items": [{"folder": "/1"}, {"folder": "/2"}]}),
                "2 sessions",
            ),
            (json!({"items": [{"folder": "relative"}]}), "absolute"),
            (json!({"items": [{"folder": "/a\u{0}b"}]}), "absolute"),
            (json!({"items": [{"folder": 7}]}), "absolute"),
            (
                json!({"items": [{"job": {"id": "../1"}, "rank": 0}]}),
                "decimal",
            ),
            (
                json!({"items": [{"job": {"id": "1/2"}, "rank": 0}]}),
                "decimal",
            ),
            (
                json!({"items": [{"job": {"id": 42}, "rank": 0}]}),
                "decimal",
            ),
            (
                json!({"items": [{"job": {"id": "1".repeat(20)}, "rank": 0}]}),
                "decimal",
            ),
            (json!({"items": [{"job": {"id": "42"}}]}), "rank"),
            (
                json!({"items": [{"job": {"id": "42"}, "rank": -1}]}),
                "rank",
            ),
            (
                json!({"items": [{"job": {"id": "42"}, "rank": 1e9}]}),
                "rank",
            ),
        ] {
            let got = session_subject(&bad).unwrap_err();
            assert!(got.contains(why), "{bad}: {got}");
        }
        for bad in [
            "", "job", "job/", "job/1", "job/x/0", "job/1/-1", "job//0", "folder", "folderx",
            "file/1",
        ] {
            assert_eq!(Subject::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_session_identifier_is_short_lived_and_names_its_subject() {
        crate::token::install_crypto_provider();
        let session = Claims::new(
            "jobs.shell",
            UcloudName::new("AliceHansen#1001").unwrap(),
            LocalName::new("alice").unwrap(),
            1001,
            "0123456789abcdef0123456789abcdef".into(),
            NOW,
            Some("job/42/0".into()),
        );
        assert_eq!(session.exp, NOW + SESSION_LIFETIME_SECS);
        let token = mint(&KEY, &session).unwrap();
        assert_eq!(
            verify(&token, &KEY, "jobs.shell", NOW + 60),
            Ok(session.clone())
        );
        assert!(verify(&token, &KEY, "jobs.shell", NOW + SESSION_LIFETIME_SECS).is_err());
        // A download token is never a session, nor a session without a subject.
        let download = mint(&KEY, &claims()).unwrap();
        assert!(verify(&download, &KEY, "jobs.shell", NOW).is_err());
        let mut bare = session.to_json();
        bare.as_object_mut().unwrap().remove("sub");
        let bare = sign(&bare, Algorithm::HS256);
        assert!(verify(&bare, &KEY, "jobs.shell", NOW)
            .unwrap_err()
            .contains("no session identifier"));
        let mut odd = session.to_json();
        odd["sub"] = json!(["job/42/0"]);
        assert!(verify(&sign(&odd, Algorithm::HS256), &KEY, "jobs.shell", NOW).is_err());
    }

    #[test]
    fn a_web_interface_is_bound_to_its_job_rank_and_port_and_served_on_its_own_host() {
        let web = json!({"items": [{"job": {"id": "77", "status": {"resolvedApplication":
            {"invocation": {"web": {"enabled": true, "port": 8888}}}}}, "rank": 1,
            "sessionType": "WEB"}]});
        assert_eq!(session_subject(&web).as_deref(), Ok("web/77/1/8888"));
        assert_eq!(
            minted_for("jobs.interactiveSession", &web),
            Some("jobs.webAuthorize")
        );
        let shell = json!({"items": [{"job": {"id": "77"}, "rank": 0, "sessionType": "SHELL"}]});
        assert_eq!(
            minted_for("jobs.interactiveSession", &shell),
            Some("jobs.shell")
        );
        assert_eq!(
            minted_for("jobs.webAuthorize", &json!({})),
            Some("jobs.web")
        );
        assert_eq!(minted_for("files.browse", &json!({})), None);
        assert_eq!(
            Subject::parse("web/77/1/8888"),
            Some(Subject::Web {
                id: "77".into(),
                rank: 1,
                port: 8888
            })
        );
        for bad in [
            "web/77/1",
            "web/77/1/0",
            "web/77/1/65536",
            "web/77/1/80/x",
            "web/x/1/80",
            "web/77/+1/80",
        ] {
            assert_eq!(Subject::parse(bad), None, "{bad}");
        }
        for port in [json!(0), json!(70000), json!("8888"), json!(null)] {
            let mut w = web.clone();
            w["items"][0]["job"]["status"]["resolvedApplication"]["invocation"]["web"]["port"] =
                port;
            assert!(session_subject(&w).unwrap_err().contains("web port"));
        }
        // The host names the job and rank; nothing else is one.
        let domain = "apps.example.org";
        assert_eq!(
            app_host("app-77-1.apps.example.org", domain),
            Some(("77".into(), 1))
        );
        assert_eq!(
            app_host("APP-77-0.Apps.Example.org:8443", domain),
            Some(("77".into(), 0))
        );
        for bad in [
            "app-77-1.apps.example.org.evil.com",
            "app-77-1.xapps.example.org",
            "x.app-77-1.apps.example.org",
            "app-77.apps.example.org",
            "app--1.apps.example.org",
            "app-7a-1.apps.example.org",
            "app-77-+1.apps.example.org",
            "apps.example.org",
            "example.org",
            "",
        ] {
            assert_eq!(app_host(bad, domain), None, "{bad}");
        }
        assert_eq!(app_host("app-77-1.apps.example.org", ""), None);
        assert!(is_host_name("apps.example.org") && !is_host_name("a..b") && !is_host_name("-a.b"));
        assert!(!is_host_name("a_b.c") && !is_host_name(&"a".repeat(64)));
        // The link lives minutes, the cookie a working day, and either names its job.
        crate::token::install_crypto_provider();
        let mk = |call: &str, sub: Option<&str>| {
            Claims::new(
                call,
                UcloudName::new("AliceHansen#1001").unwrap(),
                LocalName::new("alice").unwrap(),
                1001,
                "0123456789abcdef0123456789abcdef".into(),
                NOW,
                sub.map(str::to_string),
            )
        };
        assert_eq!(
            mk("jobs.webAuthorize", Some("web/77/1/8888")).exp,
            NOW + SESSION_LIFETIME_SECS
        );
        assert_eq!(
            mk("jobs.web", Some("web/77/1/8888")).exp,
            NOW + APP_LIFETIME_SECS
        );
        let bare = mint(&KEY, &mk("jobs.web", None)).unwrap();
        assert!(verify(&bare, &KEY, "jobs.web", NOW).is_err());
    }
}
