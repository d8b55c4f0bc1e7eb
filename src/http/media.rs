//! The media sockets (DESIGN §6). `GET /api/v1/sessions/{id}/vnc?ticket=`
//! upgrades to a binary WebSocket that speaks RFB to noVNC (or any
//! websockify client).
//!
//! Order matters: the Origin is checked, then the single-use ticket is
//! redeemed (a wrong, reused or expired ticket is refused before anything
//! reaches the desktop), then the session must be running; only then does
//! the gate open a connection to the desktop and authenticate with the
//! session's VNC secret, before it upgrades, so that a desktop that cannot be
//! reached is a plain HTTP error. The browser is offered security type None:
//! the secret never leaves the gate. The stream runs in a [`MediaActor`] that
//! is closed when the session ends. Input (keys, pointer) on the socket counts
//! as presence; an idle open tab does not.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use deskgate_actors::ports::{SessionId, SessionState};
use deskgate_actors::session::SessionEvent;
use deskgate_media::{
    MediaActor, MediaArgs, MediaMsg, MediaPath, RelayEnd, RelayLimits, RfbError, StreamCounters,
    relay_vnc,
};
use futures::{SinkExt, StreamExt, future};
use ractor::Actor;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::Problem;
use super::api::Api;
use super::sessions::{SessionDesk, desk, origin_refused, parse_id, unknown_session};
use crate::desktop::DesktopError;
use crate::tickets::Purpose;

/// Longest WebSocket message a browser may send on the VNC socket: the
/// relay's limit for one client message (clipboard text) plus framing.
const VNC_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64;
/// Time the desktop has to answer the relay's RFB handshake.
const DESKTOP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The media routes.
pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/sessions/{id}/vnc", get(vnc))
        .with_state(api)
}

#[derive(Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

/// The session's desktop as RFB over a binary WebSocket (noVNC). The ticket
/// comes from `POST /api/v1/sessions/{id}/tickets` with purpose `vnc`.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/vnc", tag = "media",
    params(("id" = String, Path, description = "session id"), ("ticket" = String, Query, description = "single-use ticket of purpose vnc")),
    responses((status = 101, description = "binary WebSocket of RFB 3.8 with security type None (subprotocol `binary` if asked)"), (status = 401, description = "missing, wrong, reused or expired ticket", body = Object, content_type = "application/problem+json"), (status = 403, description = "foreign Origin", body = Object, content_type = "application/problem+json"), (status = 409, description = "the session is not running", body = Object, content_type = "application/problem+json"), (status = 502, description = "the desktop did not answer", body = Object, content_type = "application/problem+json")))]
async fn vnc(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TicketQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Problem> {
    let desk = desk(&api)?.clone();
    origin_refused(&headers, &desk.public_origin)?;
    let id = parse_id(&id)?;
    let ticket = query.ticket.unwrap_or_default();
    api.tickets
        .redeem(&ticket, id, Purpose::Vnc)
        .map_err(|err| {
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
        })?;
    // Subscribe before looking at the state, so that an end in between is seen.
    let handle = desk.gate.lookup(id).await.ok_or_else(unknown_session)?;
    let events = handle.events.subscribe();
    let running = desk
        .gate
        .view(id)
        .await
        .is_some_and(|v| v.record.state == SessionState::Running);
    if !running {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "session-not-running",
            "The desktop is not running",
        ));
    }
    let dialer = desk.desktops.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media-unavailable",
            "This gate cannot reach the session's desktop",
        )
        .detail("the media relay serves sessions on the gate's own Docker host only")
    })?;
    let unreachable = |detail: String| {
        metrics::counter!("deskgate_media_refused_total", "reason" => "desktop").increment(1);
        tracing::warn!(session = %id, error = %detail, "the desktop could not be reached");
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "desktop-unreachable",
            "The session's desktop did not answer",
        )
    };
    metrics::counter!("deskgate_media_desktop_dials_total").increment(1);
    let connection = dialer.dial(id).await.map_err(|err| match err {
        DesktopError::Unknown => unknown_session(),
        other => unreachable(other.to_string()),
    })?;
    let desktop = tokio::time::timeout(
        DESKTOP_HANDSHAKE_TIMEOUT,
        deskgate_media::authenticate(connection.stream, connection.secret.expose().as_bytes()),
    )
    .await
    .map_err(|_| unreachable("the desktop's RFB handshake timed out".into()))?
    .map_err(|err| unreachable(err.to_string()))?;
    Ok(upgrade
        .protocols(["binary"])
        .max_message_size(VNC_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| run_vnc(socket, desktop, desk, id, events)))
}

/// Relays an upgraded browser WebSocket to an authenticated desktop until
/// either side closes (what `GET …/vnc` runs; public for the benchmark).
pub async fn relay_websocket<D>(
    socket: WebSocket,
    desktop: D,
    counters: &StreamCounters,
    limits: &RelayLimits,
) -> Result<RelayEnd, RfbError>
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (sink, stream) = socket.split();
    // A Close frame ends the browser's byte stream; pings are axum's business.
    let browser_in = stream
        .take_while(|m| future::ready(!matches!(m, Ok(Message::Close(_)))))
        .filter_map(|m| {
            future::ready(match m {
                Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                Ok(Message::Text(_)) => Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text message on the binary VNC socket",
                ))),
                Ok(_) => None,
                Err(err) => Some(Err(io::Error::other(err))),
            })
        });
    let browser_out = sink
        .sink_map_err(io::Error::other)
        .with(|bytes: Bytes| future::ready(Ok::<_, io::Error>(Message::Binary(bytes))));
    relay_vnc(
        desktop,
        std::pin::pin!(browser_in),
        std::pin::pin!(browser_out),
        counters,
        limits,
    )
    .await
}

/// Runs one VNC stream in a [`MediaActor`] until it ends or the session does.
async fn run_vnc<D>(
    socket: WebSocket,
    desktop: D,
    desk: SessionDesk,
    id: SessionId,
    mut events: broadcast::Receiver<SessionEvent>,
) where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let counters = Arc::new(StreamCounters::default());
    let relay_counters = counters.clone();
    let stream = Box::pin(async move {
        relay_websocket(socket, desktop, &relay_counters, &RelayLimits::default())
            .await
            .map_err(|err| err.to_string())
    });
    let args = MediaArgs {
        path: MediaPath::Vnc,
        session: id.to_string(),
        counters: counters.clone(),
        stream,
    };
    let (actor, mut stopped) = match Actor::spawn(None, MediaActor, args).await {
        Ok(spawned) => spawned,
        Err(err) => {
            tracing::error!(session = %id, error = %err, "cannot start the media actor");
            return;
        }
    };
    let mut presence = tokio::time::interval(desk.presence_every);
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut input_seen = 0;
    let mut closing = false;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            event = events.recv(), if !closing => {
                let ended = match event {
                    Ok(SessionEvent::State { state, .. }) => state == SessionState::Ended,
                    Err(broadcast::error::RecvError::Closed) => true,
                    _ => false,
                };
                if ended {
                    closing = true;
                    let _ = actor.send_message(MediaMsg::Close("session ended".into()));
                }
            }
            _ = presence.tick() => {
                let counts = counters.snapshot();
                let input = counts.keys + counts.pointer;
                if input != input_seen {
                    input_seen = input;
                    desk.gate.presence(id);
                }
            }
        }
    }
}
