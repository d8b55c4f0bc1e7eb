//! The operator's view of the GPU hosts, behind `DESKGATE_ADMIN_TOKEN`:
//! list them, drain one (no new leases on any of its GPUs) or declare one
//! gone (its sessions end; its number is never reused).
//!
//! With `DESKGATE_LAUNCHER_DISCOVERY` a host is its launcher's name and the
//! fleet knows whether it answers. The fleet discovers from gate start, so
//! these routes work before the session tree runs: a host that was met
//! before and does not come back keeps recovery waiting, and declaring it
//! gone is how the operator lets the gate start without it. A host whose
//! launcher answers is never declared gone (409). Without discovery the
//! hosts are numbers (the local host, or the `DESKGATE_LAUNCHER_URLS`
//! list), listed from the scheduler, and have no name to drain or retire.
//! Every change is audited before it is answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use deskgate_actors::gpu::GpuStatus;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::extract::admin_authorised;
use super::problem::{Problem, bad_json, scheduler_silent};
use super::state::ApiState;
use crate::config::is_host_name;
use crate::launcher::remote::fleet::{Fleet, HostState, HostView, Retired};
use crate::launcher::remote::host_book::{HostBook, HostBookError, HostRow};

/// The host routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/admin/hosts", get(hosts))
        .route("/api/v1/admin/hosts/{name}", delete(retire))
        .route("/api/v1/admin/hosts/{name}/drain", post(drain))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(hosts, drain, retire))]
pub struct Doc;

/// 404 for a host name the gate never met.
fn unknown_host(name: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "unknown-host", "No such GPU host")
        .detail(format!(
            "the gate never met a launcher named `{name}` (hosts have names with DESKGATE_LAUNCHER_DISCOVERY)"
        ))
}

fn book_unavailable(err: &HostBookError) -> Problem {
    tracing::warn!(error = %err, "cannot read the host book");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "hosts-unavailable",
        "The GPU hosts cannot be read right now",
    )
    .detail("the database did not answer; try again")
}

fn gpu_state(status: &GpuStatus) -> (&'static str, Option<String>) {
    match status {
        GpuStatus::Free => ("free", None),
        GpuStatus::Leased(lease) => ("leased", Some(lease.session.to_string())),
        GpuStatus::Draining { lease } => {
            ("draining", lease.as_ref().map(|l| l.session.to_string()))
        }
        GpuStatus::Unhealthy { lease, .. } => {
            ("unhealthy", lease.as_ref().map(|l| l.session.to_string()))
        }
    }
}

/// One host as JSON: what its launcher said (`view`), what the book says
/// (`row`) and what the scheduler says of its GPUs (`pooled`).
fn host_json(
    number: u16,
    row: Option<&HostRow>,
    view: Option<&HostView>,
    pooled: Option<&Vec<(u32, &GpuStatus)>>,
) -> Value {
    let state = match (row.and_then(|r| r.retired_at), view) {
        (Some(_), _) => "gone",
        (None, Some(view)) => match view.state {
            HostState::Up => "up",
            HostState::Unreachable => "unreachable",
            HostState::Missing => "missing",
        },
        // Listed by the book alone: the tree is not up, so nothing was
        // reached yet.
        (None, None) if row.is_some() => "missing",
        (None, None) => "up",
    };
    let drained = view.map_or(row.is_some_and(|r| r.drained), |v| v.drained);
    let mut gpus: BTreeMap<u32, Value> = BTreeMap::new();
    for gpu in view.map(|v| v.gpus.as_slice()).unwrap_or_default() {
        gpus.insert(
            gpu.index,
            json!({ "index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "state": Value::Null, "session": Value::Null }),
        );
    }
    let mut sessions = std::collections::BTreeSet::new();
    for (index, status) in pooled.into_iter().flatten() {
        let (state, session) = gpu_state(status);
        if let Some(session) = &session {
            sessions.insert(session.clone());
        }
        let entry = gpus
            .entry(*index)
            .or_insert_with(|| json!({ "index": index, "uuid": Value::Null, "name": Value::Null }));
        entry["state"] = json!(state);
        entry["session"] = json!(session);
    }
    json!({
        "number": number,
        "name": row.map(|r| r.name.as_str()).or(view.map(|v| v.name.as_str())),
        "url": view.and_then(|v| v.url.clone()),
        "state": state,
        "drained": drained,
        "last_contact": view.and_then(|v| v.last_contact).map(|t| t.to_rfc3339()),
        "first_seen": row.map(|r| r.first_seen.to_rfc3339()),
        "retired_at": row.and_then(|r| r.retired_at).map(|t| t.to_rfc3339()),
        "sessions": sessions.len(),
        "gpus": gpus.into_values().collect::<Vec<_>>(),
    })
}

#[utoipa::path(get, path = "/api/v1/admin/hosts", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "every GPU host: its name, state (up, unreachable, missing, gone), drained, last contact, GPUs and sessions", body = Object), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet (without discovery), or the database or scheduler did not answer", body = Problem, content_type = "application/problem+json")))]
async fn hosts(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let desk = api.sessions.get();
    if api.fleet.is_none() && desk.is_none() {
        return Err(api.sessions_state().unwrap_err());
    }
    let gpus = match desk {
        Some(desk) => desk.tree.gpus().await.ok_or_else(scheduler_silent)?,
        None => Vec::new(),
    };
    let mut pooled: BTreeMap<u16, Vec<(u32, &GpuStatus)>> = BTreeMap::new();
    for (addr, status) in &gpus {
        pooled
            .entry(addr.host)
            .or_default()
            .push((addr.index, status));
    }
    let mut list = Vec::new();
    if let Some(fleet) = &api.fleet {
        let rows = HostBook::new(api.pool.clone())
            .all()
            .await
            .map_err(|e| book_unavailable(&e))?;
        let views: BTreeMap<u16, HostView> =
            fleet.views().into_iter().map(|v| (v.number, v)).collect();
        for row in &rows {
            let number = row.host();
            list.push(host_json(
                number,
                Some(row),
                views.get(&number),
                pooled.get(&number),
            ));
        }
    } else {
        for (number, gpus) in &pooled {
            list.push(host_json(*number, None, None, Some(gpus)));
        }
    }
    Ok(Json(
        json!({ "discovery": api.fleet.is_some(), "hosts": list }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    /// true: no new leases on any of the host's GPUs; false: back in service.
    drain: bool,
}

#[utoipa::path(post, path = "/api/v1/admin/hosts/{name}/drain", tag = "admin", security(("admin" = [])),
    params(("name" = String, Path, description = "the host's name (its launcher's DESKGATE_LAUNCHER_NAME)")),
    request_body = DrainRequest,
    responses((status = 200, description = "drained or back in service (audited); sessions on it keep running", body = Object), (status = 400, description = "malformed body", body = Problem, content_type = "application/problem+json"), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no host of that name", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database or the audit log did not answer", body = Problem, content_type = "application/problem+json")))]
async fn drain(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<DrainRequest>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let Json(request) = body.map_err(bad_json)?;
    let fleet = met_host(&api, &name).await?;
    let action = if request.drain {
        "host.drain"
    } else {
        "host.undrain"
    };
    api.audit_admin(action, Some(&format!("host:{name}")), json!({}))
        .await?;
    // Audited means done: the change runs to its end even if the client
    // goes away (a dropped connection drops this handler).
    let (task_fleet, task_name) = (fleet.clone(), name.clone());
    tokio::spawn(async move { task_fleet.set_drained(&task_name, request.drain).await })
        .await
        .map_err(|_| host_change_interrupted())?
        .map_err(|e| book_unavailable(&e))?;
    Ok(Json(json!({ "name": name, "drained": request.drain })))
}

/// The fleet, if `name` is a host it ever met; else the 404.
async fn met_host<'a>(api: &'a ApiState, name: &str) -> Result<&'a Arc<Fleet>, Problem> {
    let Some(fleet) = &api.fleet else {
        return Err(unknown_host(name));
    };
    let met = is_host_name(name)
        && HostBook::new(api.pool.clone())
            .named(name)
            .await
            .map_err(|e| book_unavailable(&e))?
            .is_some();
    if met {
        Ok(fleet)
    } else {
        Err(unknown_host(name))
    }
}

#[utoipa::path(delete, path = "/api/v1/admin/hosts/{name}", tag = "admin", security(("admin" = [])),
    params(("name" = String, Path, description = "the host's name (its launcher's DESKGATE_LAUNCHER_NAME)")),
    responses((status = 200, description = "declared gone (audited): its sessions are ended and it is never asked again", body = Object), (status = 401, description = "missing or wrong admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "admin API off", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no host of that name", body = Problem, content_type = "application/problem+json"), (status = 409, description = "its launcher answers: it is not gone", body = Problem, content_type = "application/problem+json"), (status = 503, description = "the database or the audit log did not answer", body = Problem, content_type = "application/problem+json")))]
async fn retire(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    admin_authorised(&api, &headers)?;
    let fleet = met_host(&api, &name).await?;
    if fleet
        .views()
        .iter()
        .any(|v| v.name == name && v.state == HostState::Up)
    {
        return Err(host_up(&name));
    }
    api.audit_admin("host.retire", Some(&format!("host:{name}")), json!({}))
        .await?;
    // Audited means done: see `drain`.
    let (task_fleet, task_name) = (fleet.clone(), name.clone());
    let retired = tokio::spawn(async move { task_fleet.retire(&task_name).await })
        .await
        .map_err(|_| host_change_interrupted())?;
    match retired.map_err(|e| book_unavailable(&e))? {
        Retired::Unknown => Err(unknown_host(&name)),
        Retired::StillUp => Err(host_up(&name)),
        Retired::Done { ended } => Ok(Json(
            json!({ "name": name, "gone": true, "sessions_ended": ended }),
        )),
    }
}

fn host_change_interrupted() -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "host-change-interrupted",
        "The change to the host was interrupted",
    )
    .detail("the gate logged why; GET /api/v1/admin/hosts shows where it stands")
}

fn host_up(name: &str) -> Problem {
    Problem::new(StatusCode::CONFLICT, "host-up", "The host's launcher answers").detail(format!(
        "`{name}` is reachable, so it is not gone: drain it (POST …/drain) and let its sessions end, or stop its launcher first"
    ))
}
