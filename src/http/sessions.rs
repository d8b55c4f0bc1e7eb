//! Sessions and profiles (DESIGN §6): which profiles are free, claim one,
//! show, heartbeat and stop the session, watch it over its events socket,
//! and ask for a ticket to one of its media sockets.
//!
//! Another wallet's session answers 404, exactly like one that does not
//! exist, so ids cannot be probed. The events socket checks `Origin` against
//! `DESKGATE_PUBLIC_URL` before it upgrades, takes credentials only from the
//! cookie or the bearer header, and counts as presence while it is open; only
//! the owner of a live session is told (426) that a plain request is not a
//! WebSocket handshake.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deskgate_actors::ports::{
    EndReason, SessionId, SessionRecord, SessionState, SessionStore, WalletId,
};
use deskgate_actors::protocol::{ClaimError, SessionEvent, SessionView};
use deskgate_actors::supervisor::StartError;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use utoipa::OpenApi;
use utoipa::openapi::schema::{ObjectBuilder, Type};

use super::extract::{origin_refused, parse_id, signed_in};
use super::problem::{
    Problem, ProfileName, bad_json, ledger_unavailable, not_a_websocket, scheduler_silent,
    unknown_profile, unknown_session,
};
use super::session_json::{reason_json, record_json};
use super::state::{ApiState, SessionsState};
use crate::auth::tickets::Purpose;
use crate::sessions::profiles::{PROFILES, profile_named};

/// Largest message a browser may send on the events socket: it is a control
/// channel, and the gate reads nothing from it but pings.
const EVENTS_MAX_MESSAGE_BYTES: usize = 1024;

/// The events socket's read buffer. tungstenite's default is 128 KiB a
/// socket, which a queue of 10,000 waiting browsers pays in full for a
/// channel that reads only pings: 4 KiB holds several of the largest
/// messages allowed. Writes go out at once (no write buffer to grow).
const EVENTS_READ_BUFFER_BYTES: usize = 4096;

/// The session routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/profiles", get(profiles))
        .route("/api/v1/sessions", post(claim))
        .route("/api/v1/sessions/{id}", get(show).delete(stop))
        .route("/api/v1/sessions/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/sessions/{id}/keep", post(keep))
        .route("/api/v1/sessions/{id}/events", get(events))
        .route("/api/v1/sessions/{id}/tickets", post(ticket))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(profiles, claim, show, stop, heartbeat, keep, ticket, events))]
pub struct Doc;

/// What every owner-only session route checks first, in this order: signed
/// in (401), sessions up (503), a well-formed id (404).
async fn owner_call<'a>(
    api: &'a ApiState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(WalletId, &'a SessionsState, SessionId), Problem> {
    let wallet = signed_in(api, headers).await?;
    let desk = api.sessions_state()?;
    Ok((wallet, desk, parse_id(id)?))
}

/// The session as its owner sees it: live from the actors, or ended from
/// PostgreSQL. Another wallet's session is unknown.
async fn owned(desk: &SessionsState, wallet: &WalletId, id: SessionId) -> Result<Shown, Problem> {
    if let Some(view) = desk.tree.view(id).await {
        if view.record.wallet != *wallet {
            return Err(unknown_session());
        }
        return Ok(Shown::Live(view));
    }
    match desk.store.load(id).await {
        Ok(Some(record)) if record.wallet == *wallet => Ok(Shown::Ended(record)),
        Ok(_) => Err(unknown_session()),
        Err(err) => {
            tracing::warn!(error = %err, "cannot load a session");
            Err(ledger_unavailable())
        }
    }
}

enum Shown {
    Live(SessionView),
    Ended(SessionRecord),
}

fn shown_json(shown: &Shown) -> Value {
    match shown {
        Shown::Live(view) => {
            let mut body = record_json(&view.record);
            body["seconds_left"] = json!(view.seconds_left);
            body["queue_position"] = json!(view.queue.map(|q| q.position));
            body["eta_seconds"] = json!(view.queue.and_then(|q| q.eta_seconds));
            body
        }
        Shown::Ended(record) => record_json(record),
    }
}

#[utoipa::path(get, path = "/api/v1/profiles", tag = "sessions",
    responses((status = 200, description = "each profile: GPUs, whether one is free now, how many wait", body = [Object]), (status = 503, description = "sessions are not up yet, or the scheduler did not answer", body = Problem, content_type = "application/problem+json")))]
async fn profiles(State(api): State<Arc<ApiState>>) -> Result<Json<Value>, Problem> {
    let desk = api.sessions_state()?;
    let snapshot = desk.tree.snapshot().await.ok_or_else(scheduler_silent)?;
    let list: Vec<Value> = PROFILES
        .iter()
        .map(|p| {
            let free = snapshot
                .fits_now
                .iter()
                .any(|&(g, fits)| g == p.gpus && fits);
            let queued = snapshot
                .waiting_by_gpus
                .iter()
                .find(|(g, _)| *g == p.gpus)
                .map_or(0, |&(_, n)| n);
            json!({"name": p.name, "gpus": p.gpus, "free": free, "queued": queued})
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClaimRequest {
    #[schema(value_type = ProfileName)]
    profile: String,
}

fn claim_problem(err: &StartError) -> Problem {
    let (status, kind, title) = match err {
        StartError::Claim(ClaimError::WalletBusy(_) | ClaimError::Duplicate(_)) => (
            StatusCode::CONFLICT,
            "session-exists",
            "This wallet already has a session queued or running",
        ),
        StartError::Claim(ClaimError::TooLarge { .. } | ClaimError::NoGpus) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "profile-unavailable",
            "No host can run this profile",
        ),
        StartError::Claim(ClaimError::NoCredit { .. }) => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient-credit",
            "Not enough credit to start",
        ),
        StartError::Ledger(_) => {
            return ledger_unavailable();
        }
        StartError::SchedulerSilent | StartError::Spawn(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler-silent",
            "The session could not be started right now",
        ),
    };
    Problem::new(status, kind, title).detail(err.to_string())
}

#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    request_body = ClaimRequest,
    responses((status = 202, description = "claimed: running soon, or queued with position and ETA", body = Object), (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 402, description = "not enough credit", body = Problem, content_type = "application/problem+json"), (status = 409, description = "this wallet already has a session", body = Problem, content_type = "application/problem+json"), (status = 422, description = "unknown or unavailable profile", body = Problem, content_type = "application/problem+json"), (status = 429, description = "too many claims", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn claim(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<ClaimRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let desk = api.sessions_state()?;
    let Json(request) = body.map_err(bad_json)?;
    let profile =
        profile_named(&request.profile).ok_or_else(|| unknown_profile("No such profile"))?;
    let handle = desk
        .tree
        .claim(wallet, profile.gpus)
        .await
        .map_err(|err| claim_problem(&err))?;
    let view = desk.tree.view(handle.id).await;
    let state = view
        .as_ref()
        .map_or(SessionState::Queued, |v| v.record.state);
    let queue = view.as_ref().and_then(|v| v.queue);
    tracing::info!(session = %handle.id, profile = profile.name, "session claimed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": handle.id.to_string(),
            "profile": profile.name,
            "state": state.as_str(),
            "queue_position": queue.map(|q| q.position),
            "eta_seconds": queue.and_then(|q| q.eta_seconds),
        })),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    responses((status = 200, description = "state, GPUs, billed and remaining", body = Object), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session of this wallet", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn show(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (wallet, desk, id) = owner_call(&api, &headers, &id).await?;
    let shown = owned(desk, &wallet, id).await?;
    Ok(Json(shown_json(&shown)))
}

#[utoipa::path(delete, path = "/api/v1/sessions/{id}", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    responses((status = 200, description = "the session, ended", body = Object), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session of this wallet", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn stop(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let (wallet, desk, id) = owner_call(&api, &headers, &id).await?;
    if let Shown::Live(_) = owned(desk, &wallet, id).await? {
        desk.tree.stop(id, EndReason::UserStopped).await;
    }
    let shown = owned(desk, &wallet, id).await?;
    Ok(Json(shown_json(&shown)))
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/heartbeat", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    responses((status = 200, description = "presence noted; the session and the balance", body = Object), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session of this wallet", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn heartbeat(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    noted(&api, &headers, &id, false).await
}

#[utoipa::path(post, path = "/api/v1/sessions/{id}/keep", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    responses((status = 200, description = "\"keep my desktop\": counts as input, so the idle clock starts again; the session and the balance", body = Object), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session of this wallet", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn keep(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    noted(&api, &headers, &id, true).await
}

/// Notes presence (and, with `input`, input) for the caller's live session;
/// answers it with the wallet's balance.
async fn noted(
    api: &ApiState,
    headers: &HeaderMap,
    id: &str,
    input: bool,
) -> Result<Json<Value>, Problem> {
    let (wallet, desk, id) = owner_call(api, headers, id).await?;
    let shown = owned(desk, &wallet, id).await?;
    if let Shown::Live(_) = shown {
        if input {
            desk.tree.input(id);
        } else {
            desk.tree.presence(id);
        }
    }
    let credit = desk
        .tree
        .balance(&wallet)
        .await
        .map_err(|_| ledger_unavailable())?;
    let mut body = shown_json(&shown);
    body["credit_seconds"] = json!(credit);
    Ok(Json(body))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TicketRequest {
    /// What the ticket opens: the noVNC socket or the WebRTC offer.
    #[schema(schema_with = purpose_schema)]
    purpose: Purpose,
}

/// The OpenAPI schema of a ticket's purpose: its serde names.
fn purpose_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(
            [Purpose::Vnc, Purpose::Webrtc].map(|p| serde_json::to_value(p).unwrap_or_default()),
        ))
}

/// A single-use ticket for one of the session's media sockets: only for
/// its owner, only while it runs.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/tickets", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    request_body = TicketRequest,
    responses((status = 201, description = "a single-use ticket, valid 30 s; for purpose webrtc also the ice_servers to make the offer with", body = Object), (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session of this wallet", body = Problem, content_type = "application/problem+json"), (status = 409, description = "the desktop is not running yet", body = Problem, content_type = "application/problem+json"), (status = 410, description = "the session has ended", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, the database did not answer, or too many tickets are outstanding", body = Problem, content_type = "application/problem+json")))]
async fn ticket(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let (wallet, desk, id) = owner_call(&api, &headers, &id).await?;
    let Json(request) = body.map_err(bad_json)?;
    let Shown::Live(view) = owned(desk, &wallet, id).await? else {
        return Err(Problem::new(
            StatusCode::GONE,
            "session-ended",
            "The session has ended",
        ));
    };
    if view.record.state != SessionState::Running {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "session-not-running",
            "The desktop is not running yet",
        )
        .detail(format!(
            "the session is {}; ask again once it runs",
            view.record.state.as_str()
        )));
    }
    let issued = api
        .tickets
        .issue(id, wallet, request.purpose)
        .map_err(|err| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tickets-exhausted",
                "No ticket can be issued right now",
            )
            .detail(err.to_string())
        })?;
    let mut body = json!({
        "ticket": issued.ticket.expose(),
        "purpose": request.purpose,
        "expires_at": issued.expires_at,
    });
    // The browser needs its ICE servers before it can make the offer.
    if request.purpose == Purpose::Webrtc {
        body["ice_servers"] = json!(api.viewers.ice_servers(id));
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    // A credential: no cache may keep it.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

#[utoipa::path(get, path = "/api/v1/sessions/{id}/events", tag = "sessions", security(("bearer" = []), ("cookie" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)")),
    responses((status = 101, description = "WebSocket of JSON events: state, queue, balance, low_credit, lagged"), (status = 400, description = "the owner's request is not a valid WebSocket handshake", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 403, description = "foreign Origin", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session of this wallet", body = Problem, content_type = "application/problem+json"), (status = 410, description = "the session has ended", body = Problem, content_type = "application/problem+json"), (status = 426, description = "the owner's request is not a WebSocket upgrade", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the database did not answer", body = Problem, content_type = "application/problem+json")))]
async fn events(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let desk = api.sessions_state()?.clone();
    origin_refused(&headers, &desk.public_origin)?;
    let wallet = signed_in(&api, &headers).await?;
    let id = parse_id(&id)?;
    let Shown::Live(view) = owned(&desk, &wallet, id).await? else {
        return Err(Problem::new(
            StatusCode::GONE,
            "session-ended",
            "The session has ended",
        ));
    };
    // Only the owner of a live session learns that this must be a socket.
    let upgrade = upgrade.map_err(not_a_websocket)?;
    let handle = desk.tree.lookup(id).await.ok_or_else(unknown_session)?;
    let receiver = handle.events.subscribe();
    Ok(upgrade
        .max_message_size(EVENTS_MAX_MESSAGE_BYTES)
        .max_frame_size(EVENTS_MAX_MESSAGE_BYTES)
        .read_buffer_size(EVENTS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .on_upgrade(move |socket| relay_events(socket, desk, id, view, receiver)))
}

fn event_json(event: &SessionEvent) -> Value {
    match event {
        SessionEvent::State { state, reason } => json!({
            "type": "state",
            "state": state.as_str(),
            "reason": reason_json(reason.as_ref()),
        }),
        SessionEvent::Queue(status) => json!({
            "type": "queue",
            "position": status.position,
            "eta_seconds": status.eta_seconds,
        }),
        SessionEvent::Balance {
            credit_seconds,
            billed_credit,
        } => json!({
            "type": "balance",
            "credit_seconds": credit_seconds,
            "billed_credit_seconds": billed_credit,
        }),
        SessionEvent::LowCredit { seconds_left } => json!({
            "type": "low_credit",
            "seconds_left": seconds_left,
        }),
        SessionEvent::IdleWarning { seconds_left } => json!({
            "type": "idle_warning",
            "seconds_left": seconds_left,
        }),
    }
}

async fn send_json(socket: &mut WebSocket, value: &Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

async fn relay_events(
    mut socket: WebSocket,
    desk: SessionsState,
    id: SessionId,
    view: SessionView,
    mut events: broadcast::Receiver<SessionEvent>,
) {
    desk.tree.presence(id);
    let mut first = event_json(&SessionEvent::State {
        state: view.record.state,
        reason: None,
    });
    first["queue_position"] = json!(view.queue.map(|q| q.position));
    first["eta_seconds"] = json!(view.queue.and_then(|q| q.eta_seconds));
    if !send_json(&mut socket, &first).await {
        return;
    }
    let mut presence = tokio::time::interval(desk.presence_every);
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = presence.tick() => desk.tree.presence(id),
            event = events.recv() => match event {
                Ok(event) => {
                    let ended = matches!(event, SessionEvent::State { state: SessionState::Ended, .. });
                    if !send_json(&mut socket, &event_json(&event)).await {
                        return;
                    }
                    if ended {
                        let _ = socket.send(Message::Close(Some(CloseFrame {
                            code: 1000,
                            reason: "session ended".into(),
                        }))).await;
                        return;
                    }
                }
                // Missed some: the client re-reads the session with GET.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    if !send_json(&mut socket, &json!({"type": "lagged", "missed": missed})).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json() {
        let json = event_json(&SessionEvent::LowCredit { seconds_left: 60 });
        assert_eq!(json, json!({"type": "low_credit", "seconds_left": 60}));
        let json = event_json(&SessionEvent::State {
            state: SessionState::Ended,
            reason: Some(EndReason::UserStopped),
        });
        assert_eq!(json["state"], "ended");
        assert!(!json["reason"].is_null());
    }
}
