//! The user API (DESIGN §6): wallet sign-in and checking a deposit by its
//! transaction hash here; sessions, profiles and the account in
//! [`super::sessions`].

use std::sync::{Arc, OnceLock};

use alloy::primitives::{Address, B256};
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use deskgate_actors::chain_watcher::Required;
use deskgate_actors::ports::WalletId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::account::Offer;
use super::problem::{Problem, bad_json};
use super::sessions::SessionsState;
use crate::auth::tickets::TicketBook;
use crate::auth::{SignIn, SignInError};
use crate::db::DbPool;
use crate::money::chain::AlloyChain;
use crate::money::deposits::{PgDepositBook, check_transaction};
use crate::money::ledger::PgLedger;
use crate::money::tiers::TieredPricer;
use crate::platform::secret::Secret;

/// The cookie that carries a sign-in token for browsers.
pub const TOKEN_COOKIE: &str = "deskgate_token";

/// What the API handlers share.
pub struct ApiState {
    /// Wallet sign-in.
    pub sign_in: SignIn,
    /// Deposit checks; `None` without an RPC node and a revenue address.
    pub deposits: Option<DepositsState>,
    /// Whether the gate serves HTTPS (the cookie is then `Secure`).
    pub https: bool,
    /// Sessions, once the actor tree runs (it starts after the migrations).
    /// Shared, so that the chain watcher, built before the tree, can tell
    /// running sessions about credited deposits.
    pub sessions: Arc<OnceLock<SessionsState>>,
    /// The price list and where to pay.
    pub offer: Offer,
    /// The database, for the audit log.
    pub pool: DbPool,
    /// The ledger, for statements and adjustments.
    pub ledger: PgLedger,
    /// `DESKGATE_ADMIN_TOKEN`; the admin API is off without it.
    pub admin_token: Option<Secret>,
    /// Outstanding media tickets.
    pub tickets: TicketBook,
    /// Serve the OpenAPI document (`DESKGATE_DOCS_ENABLED`).
    pub docs_enabled: bool,
    /// Media viewer counts, and the ICE servers and video settings of the
    /// WebRTC route.
    pub viewers: super::media::ViewersState,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("deposits", &self.deposits.is_some())
            .field("https", &self.https)
            .field("sessions", &self.sessions.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Everything a deposit check needs.
#[allow(missing_debug_implementations)] // its parts hold RPC and pool handles
pub struct DepositsState {
    /// The chain.
    pub chain: Arc<AlloyChain>,
    /// Recorded deposits.
    pub book: PgDepositBook,
    /// When a deposit is credited.
    pub required: Required,
    /// Prices with the wallet's discount, for quotes.
    pub pricer: Arc<TieredPricer>,
}

impl ApiState {
    /// Deposit checks, or the 503 that says how to turn them on.
    pub(crate) fn deposits_state(&self) -> Result<&DepositsState, Problem> {
        self.deposits.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "deposits-disabled",
                "Deposits are not configured",
            )
            .detail("the gate needs DESKGATE_RPC_URL and DESKGATE_REVENUE_ADDRESS")
        })
    }
}

/// The API's routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    let mut routes = Router::new();
    if api.docs_enabled {
        routes = routes.route(super::docs::OPENAPI_PATH, get(super::docs::openapi_json));
    }
    routes
        .route("/api/v1/auth/nonce", post(nonce))
        .route("/api/v1/auth/verify", post(verify))
        .route("/api/v1/auth/logout", post(logout))
        .route(
            "/api/v1/deposits",
            post(deposit).get(super::account::deposits),
        )
        .with_state(api.clone())
        .merge(super::sessions::routes(api.clone()))
        .merge(super::media::routes(api.clone()))
        .merge(super::account::routes(api.clone()))
        .merge(super::admin::routes(api))
}

fn sign_in_problem(err: &SignInError) -> Problem {
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

/// The token of `Authorization: Bearer <token>`, if sent.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The token from `Authorization: Bearer` or the cookie.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
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

#[derive(Deserialize, utoipa::ToSchema)]
struct NonceRequest {
    /// The wallet, 0x hex.
    #[schema(value_type = String)]
    address: Address,
}

#[derive(Serialize)]
struct NonceResponse {
    nonce: String,
    message: String,
    expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/auth/nonce", tag = "auth",
    request_body = NonceRequest,
    responses((status = 200, description = "a nonce and the EIP-4361 message to sign", body = Object), (status = 400, description = "malformed JSON or address", body = Object, content_type = "application/problem+json"), (status = 429, description = "too many sign-in attempts", body = Object, content_type = "application/problem+json")))]
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
    responses((status = 200, description = "a token (also set as an HttpOnly cookie)", body = Object), (status = 400, description = "malformed message or signature", body = Object, content_type = "application/problem+json"), (status = 401, description = "sign-in refused; `reason` says why", body = Object, content_type = "application/problem+json"), (status = 429, description = "too many sign-in attempts", body = Object, content_type = "application/problem+json")))]
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
    let secure = if api.https { "; Secure" } else { "" };
    let cookie = format!(
        "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}",
        issued.token.expose()
    );
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

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = []), ("cookie" = [])),
    responses((status = 204, description = "the token is revoked"), (status = 401, description = "not signed in", body = Object, content_type = "application/problem+json")))]
async fn logout(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    signed_in(&api, &headers).await?;
    if let Some(token) = presented_token(&headers) {
        api.sign_in
            .logout(token)
            .await
            .map_err(|err| sign_in_problem(&err))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DepositRequest {
    /// The transaction, 0x hex.
    #[schema(value_type = String)]
    tx_hash: B256,
}

#[utoipa::path(post, path = "/api/v1/deposits", tag = "money", security(("bearer" = []), ("cookie" = [])),
    request_body = DepositRequest,
    responses((status = 200, description = "pending, credited or rejected, with confirmations", body = Object), (status = 401, description = "not signed in", body = Object, content_type = "application/problem+json"), (status = 503, description = "deposits are off, or the RPC node or database is down", body = Object, content_type = "application/problem+json")))]
async fn deposit(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<DepositRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    signed_in(&api, &headers).await?;
    let Json(request) = body.map_err(bad_json)?;
    let desk = api.deposits_state()?;
    match check_transaction(&desk.chain, &desk.book, desk.required, request.tx_hash).await {
        Ok(check) => Ok(Json(check).into_response()),
        Err(err) => {
            tracing::warn!(error = %err, "deposit check failed");
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "deposit-check-unavailable",
                "The deposit cannot be checked right now",
            )
            .detail("the RPC node or the database did not answer; try again"))
        }
    }
}
