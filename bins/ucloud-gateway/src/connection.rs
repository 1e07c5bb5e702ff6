//! The state of one client connection, in one place: what the process learned at
//! start (site.conf, UCloud's key) and what the connection carries from one request
//! to the next (the last verified token, its dispatchers). Every request of the
//! connection (serve.rs) reads it through here.

use crate::credential::bearer_token;
use crate::error::Reject;
use crate::launch::Launcher;
use crate::route::{route, Route};
use std::cell::{OnceCell, RefCell};
use ucloud_http::server::Request;
use ucloud_wire::config::SiteConfig;
use ucloud_wire::paths;
use ucloud_wire::token::{self, UcloudKey, VerifiedToken};

pub struct Connection {
    /// `Err`: every request gets 500 `MISCONFIGURED` with this text.
    config: Result<SiteConfig, String>,
    /// Parsed on first use, once per process.
    key: OnceCell<Result<UcloudKey, String>>,
    /// The last token that verified, and what it said: UCloud reuses one token for
    /// many calls, and the signature over the same bytes need not be checked twice.
    /// Its expiry is still checked on every use.
    last_token: RefCell<Option<(String, VerifiedToken)>>,
    /// This connection's dispatchers, its spare included.
    pub launcher: Launcher,
}

impl Connection {
    pub fn new(config: Result<SiteConfig, String>, dispatcher: String) -> Connection {
        let spares = config.as_ref().is_ok_and(|c| c.spare_dispatcher);
        Connection {
            config,
            key: OnceCell::new(),
            last_token: RefCell::new(None),
            launcher: Launcher::new(dispatcher, spares),
        }
    }

    pub fn config(&self) -> Result<&SiteConfig, Reject> {
        self.config
            .as_ref()
            .map_err(|why| Reject::Misconfigured(why.clone()))
    }

    /// Where `req` goes; `None` while the gateway is misconfigured.
    pub fn route(&self, method: &str, req: &Request) -> Option<Route> {
        let config = self.config.as_ref().ok()?;
        Some(route(method, req.path(), &config.provider))
    }

    fn key(&self) -> Result<&UcloudKey, Reject> {
        let key = self.key.get_or_init(|| {
            let path = paths::ucloud_public_key();
            UcloudKey::load(&path)
                .map_err(|e| format!("cannot use UCloud's public key {path}: {e}"))
        });
        key.as_ref()
            .map_err(|why| Reject::Misconfigured(why.clone()))
    }

    /// The request's bearer token and what it says, once verified (or found in the
    /// one-entry cache).
    pub fn verify_bearer<'r>(&self, req: &'r Request) -> Result<(&'r str, VerifiedToken), Reject> {
        let config = self.config()?;
        let bearer = bearer_token(req)?;
        let key = self.key()?;
        let now = ucloud_wire::now_ms() / 1000;
        // Same rule as token::verify: valid while now < exp + skew. The other checks
        // (signature, claims, iat, nbf) passed for these very bytes already.
        let cached = self.last_token.borrow().as_ref().and_then(|(t, v)| {
            (t == bearer && now < v.expires_at.saturating_add(config.clock_skew)).then(|| v.clone())
        });
        let verified = match cached {
            Some(v) => v,
            None => {
                let v = token::verify(
                    bearer,
                    key,
                    &config.token_policy(),
                    config.user_claim(),
                    now,
                )
                .map_err(|e| Reject::Unauthorized(e.to_string()))?;
                *self.last_token.borrow_mut() = Some((bearer.to_string(), v.clone()));
                v
            }
        };
        Ok((bearer, verified))
    }
}
