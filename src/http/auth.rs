//! Wallet sign-in (DESIGN §6): a nonce and the EIP-4361 message to sign,
//! the signature checked for a token (also set as an `HttpOnly` cookie), and
//! logout, which revokes the token.
//!
//! Every refusal is a `sign-in-refused` problem whose `reason` says why; the
//! rate limit on `nonce` and `verify` is an edge guard (`rate_limit.rs`).

use std::sync::Arc;

use alloy::primitives::Address;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi;

use super::extract::{TOKEN_COOKIE, presented_token, sign_in_problem, signed_in};
use super::problem::{Problem, bad_json};
use super::state::ApiState;

/// The sign-in routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/auth/nonce", post(nonce))
        .route("/api/v1/auth/verify", post(verify))
        .route("/api/v1/auth/logout", post(logout))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(nonce, verify, logout))]
pub struct Doc;

#[derive(Deserialize, utoipa::ToSchema)]
struct NonceRequest {
    /// The wallet: 40 hex digits, `0x` optional, any case (a checksum is
    /// not required).
    #[schema(value_type = String, pattern = "^(0x)?[0-9a-fA-F]{40}$")]
    address: Address,
}

#[derive(Serialize, utoipa::ToSchema)]
struct NonceResponse {
    nonce: String,
    /// The EIP-4361 message to sign, as it must be signed.
    message: String,
    #[schema(value_type = String, format = DateTime)]
    expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/auth/nonce", tag = "auth",
    request_body = NonceRequest,
    responses((status = 200, description = "a nonce and the EIP-4361 message to sign", body = NonceResponse), (status = 400, description = "malformed JSON or address", body = Problem, content_type = "application/problem+json"), (status = 429, description = "too many sign-in attempts", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn nonce(
    State(api): State<Arc<ApiState>>,
    body: Result<Json<NonceRequest>, JsonRejection>,
) -> Result<Json<NonceResponse>, Problem> {
    let Json(request) = body.map_err(bad_json)?;
    let issued = api
        .sign_in
        .issue(request.address)
        .await
        .map_err(|err| sign_in_problem(&err))?;
    Ok(Json(NonceResponse {
        nonce: issued.nonce,
        message: issued.message,
        expires_at: issued.expires_at,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct VerifyRequest {
    message: String,
    signature: String,
}

#[utoipa::path(post, path = "/api/v1/auth/verify", tag = "auth",
    request_body = VerifyRequest,
    responses((status = 200, description = "a token (also set as an HttpOnly cookie)", body = Object), (status = 400, description = "malformed JSON, message or signature", body = Problem, content_type = "application/problem+json"), (status = 401, description = "sign-in refused; `reason` says why", body = Problem, content_type = "application/problem+json"), (status = 429, description = "too many sign-in attempts", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database or, for a contract wallet, the RPC node did not answer", body = Problem, content_type = "application/problem+json")))]
async fn verify(
    State(api): State<Arc<ApiState>>,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(bad_json)?;
    let issued = api
        .sign_in
        .verify(&request.message, &request.signature)
        .await
        .map_err(|err| sign_in_problem(&err))?;
    let max_age = (issued.expires_at - Utc::now()).num_seconds().max(0);
    let cookie = token_cookie(issued.token.expose(), max_age, api.https);
    let body = Json(json!({
        "token": issued.token.expose(),
        "address": issued.address.as_str(),
        "expires_at": issued.expires_at,
    }));
    let mut response = body.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// The `Set-Cookie` value of the token cookie. Logout sends it empty with
/// `Max-Age=0` and the same attributes, which is what makes a browser drop it.
fn token_cookie(value: &str, max_age: i64, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{TOKEN_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}")
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    responses((status = 204, description = "the token is revoked and the cookie cleared"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn logout(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Problem> {
    signed_in(&api, &headers).await?;
    if let Some(token) = presented_token(&headers) {
        api.sign_in
            .logout(token)
            .await
            .map_err(|err| sign_in_problem(&err))?;
    }
    // Bearer callers too: a browser may hold the cookie as well.
    let expired = token_cookie("", 0, api.https);
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, expired)]))
}
