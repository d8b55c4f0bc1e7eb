//! The signed-in wallet's account (DESIGN §6): its credit and active
//! session, its ledger lines, its deposits, and checking a deposit by its
//! transaction hash.
//!
//! Amounts of chain assets are decimal strings of base units (a U256 does
//! not fit a JSON number); credit is integer credit-seconds. Every route
//! here answers 401 before anything else.

use std::sync::Arc;

use alloy::primitives::B256;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deskgate_actors::ports::SessionStore;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::extract::{signed_in, wallet_address};
use super::problem::{Problem, bad_json, bad_query, ledger_unavailable};
use super::state::ApiState;
use crate::money::chain::address20;
use crate::money::deposits::{amount_u256, check_transaction};

/// Most lines one page of a statement or deposit list holds.
const MAX_PAGE: i64 = 200;

/// The account routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/account", get(account))
        .route("/api/v1/account/ledger", get(statement))
        .route("/api/v1/deposits", get(deposits).post(deposit))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(account, statement, deposits, deposit))]
pub struct Doc;

#[utoipa::path(get, path = "/api/v1/account", tag = "money", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "address, credit_seconds, active_session", body = Object), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database did not answer, or sessions are not up yet", body = Problem, content_type = "application/problem+json")))]
async fn account(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let desk = api.sessions_state()?;
    let credit = desk.tree.balance(&wallet).await.map_err(|err| {
        tracing::warn!(error = %err, "cannot read a balance");
        ledger_unavailable()
    })?;
    let active = desk
        .store
        .load_active()
        .await
        .map_err(|_| ledger_unavailable())?
        .into_iter()
        .find(|r| r.wallet == wallet)
        .map(|r| r.id.to_string());
    Ok(Json(json!({
        "address": wallet.as_str(),
        "credit_seconds": credit,
        "active_session": active,
    })))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

impl PageQuery {
    /// Lines asked for: 50 unless said, at most [`MAX_PAGE`].
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(50).clamp(1, MAX_PAGE)
    }
}

#[utoipa::path(get, path = "/api/v1/account/ledger", tag = "money", security(("bearer" = []), ("cookie" = [])),
    params(("limit" = Option<i64>, Query, description = "lines per page, default 50; taken as 1 below 1 and as 200 above 200"), ("before" = Option<i64>, Query, description = "only transactions older than this id")),
    responses((status = 200, description = "the wallet's ledger lines, newest first, and next_before", body = Object), (status = 400, description = "a malformed query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn statement(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let Query(page) = query.map_err(bad_query)?;
    let limit = page.limit();
    let lines = api
        .ledger
        .statement(&wallet, limit, page.before)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot read a statement");
            ledger_unavailable()
        })?;
    // A full page may have more behind it: the client asks again with
    // `before` set to the last transaction id it saw.
    let next_before = (lines.len() as i64 == limit)
        .then(|| lines.last().map(|l| l.txn_id))
        .flatten();
    Ok(Json(
        json!({ "entries": lines, "next_before": next_before }),
    ))
}

// The summary is the published one, kept word for word (it once was this
// handler's doc comment); changing it changes the OpenAPI document.
#[utoipa::path(get, path = "/api/v1/deposits", tag = "money", security(("bearer" = []), ("cookie" = [])),
    summary = "`GET /api/v1/deposits` (routed with its POST in [`super::api`]).",
    params(("limit" = Option<i64>, Query, description = "deposits per page, default 50; taken as 1 below 1 and as 200 above 200")),
    responses((status = 200, description = "the wallet's deposits, newest first", body = Object), (status = 400, description = "a malformed query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn deposits(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let Query(page) = query.map_err(bad_query)?;
    let Some(desk) = &api.deposits else {
        return Ok(Json(json!({ "deposits": [] })));
    };
    let from = wallet_address(&wallet)?;
    let limit = page.limit();
    let rows = desk
        .book
        .deposits_from(address20(from), limit)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot list deposits");
            ledger_unavailable()
        })?;
    let list: Vec<Value> = rows
        .iter()
        .map(|(record, credit)| {
            let d = &record.deposit;
            json!({
                "tx_hash": d.tx_hash.to_string(),
                "log_index": d.log_index,
                "block_number": d.block_number,
                "asset": serde_json::to_value(d.asset).unwrap_or(Value::Null),
                "amount": amount_u256(d.amount).to_string(),
                "status": serde_json::to_value(record.status).unwrap_or(Value::Null),
                "credit_seconds": credit,
            })
        })
        .collect();
    Ok(Json(json!({ "deposits": list })))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct DepositRequest {
    /// The transaction: 64 hex digits, `0x` optional.
    #[schema(value_type = String, pattern = "^(0x)?[0-9a-fA-F]{64}$")]
    tx_hash: B256,
}

#[utoipa::path(post, path = "/api/v1/deposits", tag = "money", security(("bearer" = []), ("cookie" = [])),
    request_body = DepositRequest,
    responses((status = 200, description = "pending, credited or rejected, with confirmations", body = Object), (status = 400, description = "malformed JSON or transaction hash", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 503, description = "deposits are off, or the RPC node or database is down", body = Problem, content_type = "application/problem+json")))]
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
