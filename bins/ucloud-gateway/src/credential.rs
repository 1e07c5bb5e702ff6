//! What a request shows to prove who sends it: UCloud's bearer token, a transfer
//! token (only its shape: the dispatcher verifies it), and the UCloud user it acts
//! for. Verifying the bearer token needs the connection's key and cache
//! (connection.rs); everything here reads the request alone.

use crate::error::Reject;
use ucloud_http::server::Request;
use ucloud_wire::envelope::MAX_TOKEN;
use ucloud_wire::names::UcloudName;
use ucloud_wire::token::VerifiedToken;

/// Whether a request shows a credential (a bearer token or a transfer token):
/// only such requests keep the connection open past its idle deadline.
pub fn shows_credential(req: &Request) -> bool {
    req.header("authorization").is_some()
        || req.header("chunked-upload-token").is_some()
        || req.query_param("token").is_some()
        || req.query_param("session").is_some()
}

/// The bearer token of the Authorization header, not yet verified.
pub fn bearer_token(req: &Request) -> Result<&str, Reject> {
    let value = req.header("authorization").ok_or_else(|| {
        Reject::Unauthorized("no Authorization header: UCloud's bearer token is required".into())
    })?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(Reject::Unauthorized(
                "the Authorization header is not of the form \"Bearer <token>\"".into(),
            ))
        }
    };
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(Reject::Unauthorized(format!(
            "the bearer token is empty or longer than {MAX_TOKEN} bytes"
        )));
    }
    Ok(token)
}

/// The transfer token of the query (`token`) or the `Chunked-Upload-Token` header,
/// if there is one; one of the wrong shape is refused.
pub fn transfer_token(req: &Request) -> Result<Option<String>, Reject> {
    let token = req
        .query_param("token")
        .or_else(|| req.header("chunked-upload-token").map(str::to_string));
    match token {
        Some(t) if t.is_empty() || t.len() > MAX_TOKEN => Err(Reject::Unauthorized(format!(
            "the transfer token is empty or longer than {MAX_TOKEN} bytes"
        ))),
        // Only a token of the right shape may start a (setuid) dispatcher.
        Some(t) => {
            match ucloud_wire::token::transfer_token_looks_valid(&t, ucloud_wire::now_ms() / 1000) {
                Ok(()) => Ok(Some(t)),
                Err(e) => Err(Reject::Unauthorized(e.to_string())),
            }
        }
        None => Ok(None),
    }
}

/// The session identifier of a browser's stream (the query's `session`): a
/// transfer token of the right shape, or the refusal.
pub fn session_identifier(req: &Request, doing: &str) -> Result<String, Reject> {
    let identifier = req.query_param("session").ok_or_else(|| {
        Reject::Unauthorized(format!(
            "{doing} needs the session identifier UCloud handed out (query parameter session)"
        ))
    })?;
    if identifier.is_empty() || identifier.len() > MAX_TOKEN {
        return Err(Reject::Unauthorized(format!(
            "the session identifier is empty or longer than {MAX_TOKEN} bytes"
        )));
    }
    ucloud_wire::token::transfer_token_looks_valid(&identifier, ucloud_wire::now_ms() / 1000)
        .map_err(|e| {
            Reject::Unauthorized(
                e.to_string()
                    .replace("transfer token", "session identifier"),
            )
        })?;
    Ok(identifier)
}

/// The refusal of a data-channel call without a transfer token; `places` says
/// where the client may put one.
pub fn no_transfer_token(call: &str, places: &str) -> Reject {
    Reject::Unauthorized(format!("{call} needs a transfer token ({places})"))
}

/// Where a plain request may carry its transfer token.
pub const TOKEN_PLACES: &str = "query parameter token or header Chunked-Upload-Token";

/// The UCloud user a request acts for: the one it names (`named`, already read by
/// the caller from a header or the query), else the token's user claim.
pub fn ucloud_user(
    named: Option<Result<UcloudName, String>>,
    verified: &VerifiedToken,
) -> Result<Option<UcloudName>, Reject> {
    match named {
        Some(name) => name.map(Some).map_err(Reject::BadRequest),
        None => match &verified.user {
            Some(name) => UcloudName::new(name)
                .map(Some)
                .map_err(|e| Reject::BadRequest(format!("token user claim: {e}"))),
            None => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_forms() {
        assert_eq!(
            bearer_token(&Request::new(
                "GET",
                "/",
                &[("authorization", "Bearer a.b.c")]
            ))
            .unwrap(),
            "a.b.c"
        );
        assert_eq!(
            bearer_token(&Request::new(
                "GET",
                "/",
                &[("authorization", "bearer  a.b.c ")]
            ))
            .unwrap(),
            "a.b.c"
        );
        for bad in ["Basic abc", "Bearer", "Bearer ", "a.b.c"] {
            assert!(
                bearer_token(&Request::new("GET", "/", &[("authorization", bad)])).is_err(),
                "{bad}"
            );
        }
        assert!(bearer_token(&Request::new("GET", "/", &[])).is_err());
    }

    /// Shaped like the dispatcher's tokens (HS256, our typ, exp in 2286); the
    /// signature is not checked here.
    const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXAiOiJ1Y2xvdWQtaW0tdHJhbnNmZXIiLCJleHAiOjk5OTk5OTk5OTl9.c2ln";

    #[test]
    fn transfer_tokens() {
        let r = Request::new("GET", &format!("/x?id=1&token={TOKEN}"), &[]);
        assert_eq!(transfer_token(&r).unwrap().as_deref(), Some(TOKEN));
        let u = Request::new("POST", "/x", &[("chunked-upload-token", TOKEN)]);
        assert_eq!(transfer_token(&u).unwrap().as_deref(), Some(TOKEN));
        assert_eq!(
            transfer_token(&Request::new("POST", "/x", &[])).unwrap(),
            None
        );
        for garbage in ["secret", "a.b.c"] {
            let g = Request::new("POST", "/x", &[("chunked-upload-token", garbage)]);
            assert!(
                transfer_token(&g).is_err(),
                "{garbage} would start a dispatcher"
            );
        }
    }
}
