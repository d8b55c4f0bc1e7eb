//! The operator's API (DESIGN §6), behind `DESKGATE_ADMIN_TOKEN`: list and
//! end sessions, list and drain GPUs, adjust a wallet's credit, read the
//! audit log. Every action that changes something is written to the audit
//! log before it is answered.
//!
//! Every route checks the admin token first ([`super::extract::admin_authorised`]):
//! it is taken only from `Authorization: Bearer` (never a cookie, so a
//! browser cannot be tricked into sending it) and compared in constant time.
//! Without a configured token every route answers 403 `admin-disabled`.

use std::sync::Arc;

use alloy::primitives::Address;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use deskgate_actors::gpu::GpuStatus;
use deskgate_actors::ports::{EndReason, GpuAddr, SessionStore, WalletId};
use deskgate_actors::protocol::Lease;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::extract::{admin_authorised, parse_id};
use super::problem::{Problem, bad_json, scheduler_silent, unknown_session};
use super::session_json::record_json;
use super::state::{ApiState, SessionsState};
use crate::db::audit;
use crate::money::ledger::{MAX_KEY_LEN, Operation, Posting, SystemAccount};

/// Who the audit log names for actions taken with the admin token.
const ADMIN_ACTOR: &str = "admin";

/// The admin routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/admin/sessions", get(sessions))
        .route("/api/v1/admin/sessions/{id}/stop", post(stop_session))
        .route("/api/v1/admin/gpus", get(gpus))
        .route("/api/v1/admin/gpus/{host}/{index}/drain", post(drain))
        .route("/api/v1/admin/credit", post(adjust_credit))
        .route("/api/v1/admin/audit", get(audit_log))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(sessions, stop_session, gpus, drain, adjust_credit, audit_log))]
pub struct Doc;

/// Writes an audit row; an action that cannot be audited is not answered
/// as done.
async fn audited(
    api: &ApiState,
    action: &str,
    subject: Option<&str>,
    details: Value,
) -> Result<(), Problem> {
    audit::record(&api.pool, ADMIN_ACTOR, action, subject, details)
        .await
        .map(|_| ())
        .map_err(|err| {
            tracing::error!(error = %err, action, "cannot write the audit log");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "The audit log cannot be written right now",
            )
            .detail("the database did not answer; try again")
        })
}

#[utoipa::path(get, path = "/api/v1/admin/sessions", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "every session not ended", body = Object), (status = 401, description = "missing or wrong admin token", body = Object, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Object, content_type = "application/problem+json")))]
async fn sessions(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let desk = api.sessions_state()?;
    let records = desk.store.load_active().await.map_err(|err| {
        tracing::warn!(error = %err, "cannot list sessions");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sessions-unavailable",
            "Sessions cannot be read right now",
        )
    })?;
    let mut list = Vec::with_capacity(records.len());
    for record in &records {
        let mut row = record_json(record);
        row["address"] = json!(record.wallet.as_str());
        if let Some(view) = desk.tree.view(record.id).await {
            row["state"] = json!(view.record.state.as_str());
            row["seconds_left"] = json!(view.seconds_left);
            row["queue_position"] = json!(view.queue.map(|q| q.position));
        }
        list.push(row);
    }
    Ok(Json(json!({ "sessions": list })))
}

#[utoipa::path(post, path = "/api/v1/admin/sessions/{id}/stop", tag = "admin", security(("admin" = [])),
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "the session is being ended (audited)", body = Object), (status = 404, description = "no such live session", body = Object, content_type = "application/problem+json")))]
async fn stop_session(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let desk: &SessionsState = api.sessions_state()?;
    let id = parse_id(&id)?;
    if desk.tree.view(id).await.is_none() {
        return Err(unknown_session());
    }
    audited(&api, "session.kill", Some(&id.to_string()), json!({})).await?;
    let stopped = desk.tree.stop(id, EndReason::AdminKilled).await;
    Ok(Json(json!({ "id": id.to_string(), "stopped": stopped })))
}

fn lease_json(lease: Option<&Lease>) -> Value {
    lease.map_or(
        Value::Null,
        |l| json!({"session": l.session.to_string(), "lease_id": l.lease_id, "epoch": l.epoch}),
    )
}

#[utoipa::path(get, path = "/api/v1/admin/gpus", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "every GPU: free, leased, draining or unhealthy, with its lease", body = Object)))]
async fn gpus(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let desk = api.sessions_state()?;
    let gpus = desk.tree.gpus().await.ok_or_else(scheduler_silent)?;
    let list: Vec<Value> = gpus
        .iter()
        .map(|(addr, status)| {
            let (state, lease, reason) = match status {
                GpuStatus::Free => ("free", None, None),
                GpuStatus::Leased(lease) => ("leased", Some(lease), None),
                GpuStatus::Draining { lease } => ("draining", lease.as_ref(), None),
                GpuStatus::Unhealthy { reason, lease } => {
                    ("unhealthy", lease.as_ref(), Some(reason.as_str()))
                }
            };
            json!({
                "host": addr.host,
                "index": addr.index,
                "state": state,
                "lease": lease_json(lease),
                "reason": reason,
            })
        })
        .collect();
    Ok(Json(json!({ "gpus": list })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    drain: bool,
}

#[utoipa::path(post, path = "/api/v1/admin/gpus/{host}/{index}/drain", tag = "admin", security(("admin" = [])),
    params(("host" = u16, Path, description = "host number"), ("index" = u32, Path, description = "device index")),
    request_body = DrainRequest,
    responses((status = 200, description = "draining on or off (audited)", body = Object), (status = 404, description = "no such GPU", body = Object, content_type = "application/problem+json")))]
async fn drain(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((host, index)): Path<(u16, u32)>,
    body: Result<Json<DrainRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let desk = api.sessions_state()?;
    let Json(request) = body.map_err(bad_json)?;
    let gpu = GpuAddr { host, index };
    let known = desk.tree.gpus().await.ok_or_else(scheduler_silent)?;
    if !known.iter().any(|(addr, _)| *addr == gpu) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-gpu",
            "No such GPU in the pool",
        ));
    }
    let action = if request.drain {
        "gpu.drain"
    } else {
        "gpu.undrain"
    };
    audited(
        &api,
        action,
        Some(&format!("gpu:{host}:{index}")),
        json!({}),
    )
    .await?;
    desk.tree.drain(gpu, request.drain);
    Ok(Json(
        json!({ "host": host, "index": index, "draining": request.drain }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditRequest {
    /// The wallet.
    #[schema(value_type = String)]
    address: Address,
    /// Credit-seconds to add (positive) or take (negative).
    amount: i64,
    /// Why, for the audit log and the wallet's statement.
    reason: String,
    /// Makes a retried request safe: the same key applies once.
    idempotency_key: String,
}

#[utoipa::path(post, path = "/api/v1/admin/credit", tag = "admin", security(("admin" = [])),
    request_body = CreditRequest,
    responses((status = 200, description = "posted (or replayed for a repeated key); audited", body = Object), (status = 409, description = "the ledger refused it, e.g. the balance would go negative", body = Object, content_type = "application/problem+json"), (status = 422, description = "invalid amount, reason or key", body = Object, content_type = "application/problem+json")))]
async fn adjust_credit(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<CreditRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let Json(request) = body.map_err(bad_json)?;
    let invalid = |detail: &str| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-adjustment",
            "This adjustment cannot be made",
        )
        .detail(detail.to_owned())
    };
    if request.amount == 0 || request.amount == i64::MIN {
        return Err(invalid(
            "amount must be a non-zero number of credit-seconds",
        ));
    }
    let reason = request.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(invalid("reason must be 1 to 500 characters"));
    }
    // Namespaced, so an admin key can never collide with a billing or a
    // deposit key.
    let key = format!("admin:{}", request.idempotency_key);
    if request.idempotency_key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid("idempotency_key must be 1 to 190 characters"));
    }
    let wallet = WalletId::new(&request.address.to_string());
    let amount = request.amount.abs();
    let operation = if request.amount > 0 {
        Operation::Credit {
            wallet: wallet.clone(),
            amount,
            from: SystemAccount::Admin,
        }
    } else {
        Operation::Debit {
            wallet: wallet.clone(),
            amount,
            to: SystemAccount::Admin,
        }
    };
    audited(
        &api,
        "credit.adjust",
        Some(&format!("wallet:{wallet}")),
        json!({"amount": request.amount, "reason": reason, "key": key}),
    )
    .await?;
    let receipt = api
        .ledger
        .post(Posting {
            key,
            operation,
            reference: Some(format!("adjustment: {reason}")),
            created_by: ADMIN_ACTOR.into(),
        })
        .await;
    let receipt = match receipt {
        Ok(receipt) => receipt,
        Err(err) => {
            // The intent is on record; so is its failure.
            let _ = audit::record(
                &api.pool,
                ADMIN_ACTOR,
                "credit.adjust_failed",
                Some(&format!("wallet:{wallet}")),
                json!({"error": err.to_string()}),
            )
            .await;
            return Err(adjustment_problem(err));
        }
    };
    if let Some(desk) = api.sessions.get() {
        desk.tree.credit_changed(wallet.clone());
    }
    Ok(Json(json!({
        "address": wallet.as_str(),
        "txn_id": receipt.txn_id,
        "credit_seconds": receipt.balance_after,
        "replayed": receipt.replayed,
    })))
}

fn adjustment_problem(err: deskgate_actors::ports::LedgerError) -> Problem {
    use deskgate_actors::ports::LedgerError;
    match err {
        LedgerError::Unavailable(_) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger-unavailable",
            "The ledger cannot be written right now",
        ),
        other => Problem::new(
            StatusCode::CONFLICT,
            "adjustment-refused",
            "The ledger refused the adjustment",
        )
        .detail(other.to_string()),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<usize>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, description = "the latest audit entries, newest first", body = Object)))]
async fn audit_log(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let limit = query.map(|Query(q)| q.limit).unwrap_or(None).unwrap_or(100);
    let entries = audit::recent(&api.pool, limit.clamp(1, 1000))
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot read the audit log");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit-unavailable",
                "The audit log cannot be read right now",
            )
        })?;
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "at": e.at, "actor": e.actor, "action": e.action,
                "subject": e.subject, "details": e.details,
            })
        })
        .collect();
    Ok(Json(json!({ "entries": list })))
}
