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
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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
use utoipa::openapi::Schema;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};

use super::extract::{admin_authorised, parse_id};
use super::problem::{Problem, bad_json, bad_query, scheduler_silent, unknown_session};
use super::session_json::record_json;
use super::state::{ADMIN_ACTOR, ApiState, SessionsState};
use crate::db::audit;
use crate::money::ledger::{MAX_KEY_LEN, Operation, Posting, SystemAccount};

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

#[utoipa::path(get, path = "/api/v1/admin/sessions", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "every session not ended", body = Object), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
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
    // With discovery, each session's host by name as well as by number.
    let host_names: std::collections::HashMap<u16, String> = api
        .fleet
        .as_ref()
        .map(|f| f.views().into_iter().map(|v| (v.number, v.name)).collect())
        .unwrap_or_default();
    let mut list = Vec::with_capacity(records.len());
    for record in &records {
        let mut row = record_json(record);
        row["address"] = json!(record.wallet.as_str());
        row["host_name"] = json!(
            record
                .gpu_addrs
                .first()
                .and_then(|g| host_names.get(&g.host))
        );
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
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    responses((status = 200, description = "the session is being ended (audited)", body = Object), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such live session", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the audit log cannot be written", body = Problem, content_type = "application/problem+json")))]
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
    api.audit_admin("session.kill", Some(&id.to_string()), json!({}))
        .await?;
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
    responses((status = 200, description = "every GPU: free, leased, draining or unhealthy, with its lease", body = Object), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the scheduler did not answer", body = Problem, content_type = "application/problem+json")))]
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

/// 404 for a GPU the pool does not have.
fn unknown_gpu() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-gpu",
        "No such GPU in the pool",
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    drain: bool,
}

#[utoipa::path(post, path = "/api/v1/admin/gpus/{host}/{index}/drain", tag = "admin", security(("admin" = [])),
    params(("host" = u16, Path, maximum = 65535, description = "host number"), ("index" = u32, Path, format = Int64, maximum = 4294967295u32, description = "device index")),
    request_body = DrainRequest,
    responses((status = 200, description = "draining on or off (audited)", body = Object), (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such GPU (or a host or index that is not a number in range)", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, the scheduler did not answer, or the audit log cannot be written", body = Problem, content_type = "application/problem+json")))]
async fn drain(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    path: Result<Path<(u16, u32)>, PathRejection>,
    body: Result<Json<DrainRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let desk = api.sessions_state()?;
    // A host or index that is not a number in range is as unknown as a GPU
    // the pool does not have (as a malformed session id is).
    let Path((host, index)) = path.map_err(|_| unknown_gpu())?;
    let Json(request) = body.map_err(bad_json)?;
    let gpu = GpuAddr { host, index };
    let known = desk.tree.gpus().await.ok_or_else(scheduler_silent)?;
    if !known.iter().any(|(addr, _)| *addr == gpu) {
        return Err(unknown_gpu());
    }
    let action = if request.drain {
        "gpu.drain"
    } else {
        "gpu.undrain"
    };
    api.audit_admin(action, Some(&format!("gpu:{host}:{index}")), json!({}))
        .await?;
    desk.tree.drain(gpu, request.drain);
    Ok(Json(
        json!({ "host": host, "index": index, "draining": request.drain }),
    ))
}

/// Longest reason an adjustment may give, in characters.
const MAX_REASON_CHARS: usize = 500;
/// What an adjustment's idempotency key is prefixed with in the ledger, so
/// that an admin key can never collide with a billing or a deposit key.
const ADMIN_KEY_PREFIX: &str = "admin:";
/// Longest idempotency key an adjustment may give: the ledger's limit less
/// the prefix (printable ASCII, so characters and bytes are one).
const MAX_ADMIN_KEY_LEN: usize = MAX_KEY_LEN - ADMIN_KEY_PREFIX.len();
/// The characters `str::trim` strips (`char::is_whitespace`): a reason of
/// only these is blank. A unit test holds the list to the standard library.
const BLANKS: [char; 25] = [
    '\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
    '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}',
    '\u{2009}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];

/// A reason's pattern: one character at least that is not blank, and no
/// NUL anywhere (PostgreSQL text and JSON cannot store it).
fn reason_pattern() -> String {
    let blanks: String = BLANKS
        .iter()
        .map(|&c| format!("\\u{:04x}", u32::from(c)))
        .collect();
    format!("^[^\\u0000]*[^\\u0000{blanks}][^\\u0000]*$")
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreditRequest {
    /// The wallet: 40 hex digits, `0x` optional, any case.
    #[schema(value_type = String, pattern = "^(0x)?[0-9a-fA-F]{40}$")]
    address: Address,
    /// Credit-seconds to add (positive) or take (negative); never 0.
    #[schema(schema_with = amount_schema)]
    #[serde(deserialize_with = "whole_number")]
    amount: i64,
    /// Why, for the audit log and the wallet's statement.
    #[schema(schema_with = reason_schema)]
    reason: String,
    /// Makes a retried request safe: the same key applies once.
    #[schema(schema_with = idempotency_key_schema)]
    idempotency_key: String,
}

/// A non-zero `i64` whose magnitude is an `i64` too.
fn amount_schema() -> Schema {
    let int64 = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
    };
    OneOfBuilder::new()
        .description(Some(
            "credit-seconds to add (positive) or take (negative); never 0",
        ))
        .item(int64().minimum(Some(1)).maximum(Some(i64::MAX)))
        .item(int64().minimum(Some(-i64::MAX)).maximum(Some(-1)))
        .into()
}

fn reason_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "why, for the audit log and the wallet's statement: not blank, no NUL",
        ))
        .min_length(Some(1))
        .max_length(Some(MAX_REASON_CHARS))
        .pattern(Some(reason_pattern()))
}

fn idempotency_key_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "makes a retried request safe: the same key applies once",
        ))
        .pattern(Some(format!("^[ -~]{{1,{MAX_ADMIN_KEY_LEN}}}$")))
}

/// An `i64` from any JSON number with no fractional part: JSON Schema's
/// `integer`, which counts `5.0` as one (serde's `i64` alone refuses it).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(whole) = number.as_i64() {
        return Ok(whole);
    }
    // Bounds in f64: -2^63 is exact, and i64::MAX rounds up to 2^63.
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not a whole number of credit-seconds in the i64 range"
        ))),
    }
}

/// Why `request` cannot be posted, if it cannot: what the schema of
/// [`CreditRequest`] says, checked (the document promises no more).
fn adjustment_refusal(request: &CreditRequest) -> Option<String> {
    if request.amount == 0 || request.amount == i64::MIN {
        return Some("amount must be a non-zero number of credit-seconds".into());
    }
    let reason = &request.reason;
    if reason.trim().is_empty()
        || reason.chars().count() > MAX_REASON_CHARS
        || reason.contains('\0')
    {
        return Some(format!(
            "reason must be 1 to {MAX_REASON_CHARS} characters, not blank, without NUL"
        ));
    }
    let key = &request.idempotency_key;
    if key.is_empty()
        || key.len() > MAX_ADMIN_KEY_LEN
        || !key.bytes().all(|b| (b' '..=b'~').contains(&b))
    {
        return Some(format!(
            "idempotency_key must be 1 to {MAX_ADMIN_KEY_LEN} printable ASCII characters"
        ));
    }
    None
}

#[utoipa::path(post, path = "/api/v1/admin/credit", tag = "admin", security(("admin" = [])),
    request_body = CreditRequest,
    responses((status = 200, description = "posted (or replayed for a repeated key); audited", body = Object), (status = 400, description = "malformed JSON or address", body = Problem, content_type = "application/problem+json"), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 409, description = "the ledger refused it, e.g. the balance would go negative", body = Problem, content_type = "application/problem+json"), (status = 422, description = "invalid amount, reason or key", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the ledger or the audit log cannot be written", body = Problem, content_type = "application/problem+json")))]
async fn adjust_credit(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<CreditRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let Json(request) = body.map_err(bad_json)?;
    if let Some(refusal) = adjustment_refusal(&request) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-adjustment",
            "This adjustment cannot be made",
        )
        .detail(refusal));
    }
    let reason = request.reason.trim();
    let key = format!("{ADMIN_KEY_PREFIX}{}", request.idempotency_key);
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
    api.audit_admin(
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
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<i64>, Query, description = "entries, default 100; taken as 1 below 1 and as 1000 above 1000")),
    responses((status = 200, description = "the latest audit entries, newest first", body = Object), (status = 400, description = "a malformed query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the audit log cannot be read", body = Problem, content_type = "application/problem+json")))]
async fn audit_log(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let Query(query) = query.map_err(bad_query)?;
    // Clamped, as a ledger page's limit is: within 1 to 1000, so it fits.
    let limit = usize::try_from(query.limit.unwrap_or(100).clamp(1, 1000)).unwrap_or(1000);
    let entries = audit::recent(&api.pool, limit).await.map_err(|err| {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(amount: Value, reason: &str, key: &str) -> Result<CreditRequest, String> {
        serde_json::from_value(json!({
            "address": "0x00000000000000000000000000000000000000a1",
            "amount": amount,
            "reason": reason,
            "idempotency_key": key,
        }))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn blanks_are_what_trim_strips() {
        let whitespace: Vec<char> = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace())
            .collect();
        assert_eq!(whitespace, BLANKS);
    }

    // Found by schemathesis (issue 18): a NUL in the reason or the key made
    // PostgreSQL refuse the audit row, answered as a 503.
    #[test]
    fn an_adjustment_is_refused_where_its_schema_refuses_it() {
        let refused = |amount: Value, reason: &str, key: &str| {
            adjustment_refusal(&request(amount, reason, key).unwrap())
        };
        for (amount, reason, key) in [
            (json!(0), "goodwill", "k"),
            (json!(i64::MIN), "goodwill", "k"),
            (json!(5), "", "k"),
            (json!(5), " \u{3000}\t", "k"),
            (json!(5), "good\u{0}will", "k"),
            (json!(5), &"x".repeat(MAX_REASON_CHARS + 1), "k"),
            (json!(5), "goodwill", ""),
            (json!(5), "goodwill", "k\u{0}"),
            (json!(5), "goodwill", "clé"),
            (json!(5), "goodwill", &"k".repeat(MAX_ADMIN_KEY_LEN + 1)),
        ] {
            assert!(
                refused(amount.clone(), reason, key).is_some(),
                "{amount} {reason:?} {key:?}"
            );
        }
        for (amount, reason, key) in [
            (json!(5), "goodwill", "k"),
            (json!(-i64::MAX), " goodwill ", "a key with spaces"),
            (
                json!(5),
                &"é".repeat(MAX_REASON_CHARS),
                &"k".repeat(MAX_ADMIN_KEY_LEN),
            ),
        ] {
            assert_eq!(
                refused(amount.clone(), reason, key),
                None,
                "{amount} {reason:?}"
            );
        }
        assert_eq!(MAX_ADMIN_KEY_LEN + ADMIN_KEY_PREFIX.len(), MAX_KEY_LEN);
    }

    // Found by schemathesis: `5.0` is an integer to JSON Schema, and was a
    // 400 here.
    #[test]
    fn an_amount_is_any_whole_number_in_range() {
        for (amount, whole) in [
            (json!(5), 5),
            (json!(5.0), 5),
            (json!(-28_396_197.0), -28_396_197),
            (json!(-9.223_372_036_854_776e18), i64::MIN),
        ] {
            assert_eq!(request(amount, "r", "k").unwrap().amount, whole);
        }
        for amount in [
            json!(5.5),
            json!(1e19),
            json!(-1e19),
            json!("5"),
            json!(null),
        ] {
            assert!(request(amount.clone(), "r", "k").is_err(), "{amount}");
        }
    }
}
