//! Who is calling, and about what: the checks handlers make on a request
//! before they act — the signed-in wallet (bearer token or cookie), the
//! admin token, a media ticket, the socket `Origin`, a session id.
//!
//! These are functions the handlers call, not axum extractors, on purpose:
//! the order of the checks is part of the API (a socket checks `Origin`
//! before credentials; an owner-only route answers 401 before 503 before
//! 404), and only the handler body can state it.
//!
//! Below the handlers: this file imports only [`super::state`] and
//! [`super::problem`] of `http/`.

use alloy::primitives::Address;
use axum::http::{HeaderMap, StatusCode, header};
use deskgate_actors::ports::{SessionId, WalletId};
use serde_json::json;
use uuid::Uuid;

use super::problem::{Problem, unknown_session};
use super::state::ApiState;
use crate::auth::SignInError;
use crate::auth::tickets::Purpose;

/// The cookie that carries a sign-in token for browsers.
pub const TOKEN_COOKIE: &str = "deskgate_token";

/// The problem a refused sign-in (or a refused token) answers with.
pub(crate) fn sign_in_problem(err: &SignInError) -> Problem {
    let status = if err.is_unavailable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else if matches!(
        err,
        SignInError::MalformedMessage(_) | SignInError::MalformedSignature
    ) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNAUTHORIZED
    };
    Problem::new(status, "sign-in-refused", "Sign-in refused")
        .detail(err.to_string())
        .with("reason", json!(err.code()))
}

/// The token of `Authorization: Bearer <token>`, if sent. The scheme is
/// matched in any case (RFC 9110 §11.1: `bearer` and `BEARER` are the same
/// scheme) and may be followed by more than one space. The gate, its admin
/// API and `deskgate launcher` all read bearer tokens through this.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// The token from `Authorization: Bearer` or the cookie.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers).or_else(|| {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
    })
}

/// The signed-in wallet, or a 401 problem.
pub(crate) async fn signed_in(api: &ApiState, headers: &HeaderMap) -> Result<WalletId, Problem> {
    let token = presented_token(headers).ok_or_else(|| {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Sign in first").detail(
            "send the token as `Authorization: Bearer <token>` or the deskgate_token cookie",
        )
    })?;
    api.sign_in
        .authenticate(token)
        .await
        .map_err(|err| sign_in_problem(&err))
}

/// The signed-in wallet as an address (sign-in only admits addresses).
pub(crate) fn wallet_address(wallet: &WalletId) -> Result<Address, Problem> {
    wallet.as_str().parse().map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad-wallet",
            "The signed-in wallet is not an address",
        )
    })
}

/// Lets the request through only with the admin token, taken only from
/// `Authorization: Bearer` (never a cookie, so a browser cannot be tricked
/// into sending it) and compared in constant time.
pub(crate) fn admin_authorised(api: &ApiState, headers: &HeaderMap) -> Result<(), Problem> {
    let Some(expected) = &api.admin_token else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "The admin API is off",
        )
        .detail("set DESKGATE_ADMIN_TOKEN to turn it on"));
    };
    let presented = bearer_token(headers);
    match presented {
        Some(token) if expected.matches(token.as_bytes()) => Ok(()),
        _ => {
            let reason = if presented.is_some() {
                "wrong"
            } else {
                "missing"
            };
            metrics::counter!("deskgate_admin_auth_failures_total", "reason" => reason)
                .increment(1);
            tracing::warn!(reason, "admin request refused");
            Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "admin-unauthenticated",
                "The admin token is missing or wrong",
            )
            .detail("send it as `Authorization: Bearer <DESKGATE_ADMIN_TOKEN>`"))
        }
    }
}

/// Redeems the single-use media ticket of `purpose` for session `id`: the
/// wallet it was issued to, or a 401 for a missing, wrong, reused or expired
/// one.
pub(crate) fn redeem_ticket(
    api: &ApiState,
    ticket: Option<String>,
    id: SessionId,
    purpose: Purpose,
) -> Result<WalletId, Problem> {
    let ticket = ticket.unwrap_or_default();
    api.tickets.redeem(&ticket, id, purpose).map_err(|err| {
        metrics::counter!("deskgate_media_refused_total", "reason" => "ticket").increment(1);
        tracing::info!(session = %id, reason = %err, "media ticket refused");
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "ticket-refused",
            "The media ticket is not valid",
        )
        .detail(format!(
            "{err}; ask for a new one with POST /api/v1/sessions/{id}/tickets"
        ))
    })
}

/// The session id of a path; one that is not a UUID is as unknown as a
/// session that does not exist.
pub(crate) fn parse_id(id: &str) -> Result<SessionId, Problem> {
    Uuid::parse_str(id)
        .map(SessionId)
        .map_err(|_| unknown_session())
}

/// The browser's `Origin` matches the public URL exactly.
fn origin_allowed(headers: &HeaderMap, public_origin: &str) -> bool {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| origin.eq_ignore_ascii_case(public_origin))
}

/// 403 unless the browser's `Origin` is the public URL's: checked first on
/// every socket, so a foreign page learns nothing about the session.
pub(crate) fn origin_refused(headers: &HeaderMap, public_origin: &str) -> Result<(), Problem> {
    if origin_allowed(headers, public_origin) {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "origin-refused",
        "This socket only accepts the gate's own pages",
    )
    .detail(format!("the Origin must be {public_origin}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let token_of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_string)
        };
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok"] {
            assert_eq!(token_of(value).as_deref(), Some("tok"), "{value}");
        }
        for value in ["Basic tok", "Bearertok", "tok", "Bearer-ish tok"] {
            assert_eq!(token_of(value), None, "{value}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_exact_public_origin_is_allowed() {
        let mut headers = HeaderMap::new();
        assert!(!origin_allowed(&headers, "https://desk.example.org"));
        for (origin, allowed) in [
            ("https://desk.example.org", true),
            ("HTTPS://DESK.EXAMPLE.ORG", true),
            ("https://evil.example.org", false),
            ("https://desk.example.org.evil.org", false),
            ("http://desk.example.org", false),
            ("null", false),
        ] {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
            assert_eq!(
                origin_allowed(&headers, "https://desk.example.org"),
                allowed,
                "{origin}"
            );
        }
    }
}
