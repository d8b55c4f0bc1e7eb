//! The media routes (DESIGN §6). `GET /api/v1/sessions/{id}/vnc?ticket=`
//! upgrades to a binary WebSocket that speaks RFB to noVNC (or any
//! websockify client); `POST /api/v1/sessions/{id}/webrtc?ticket=` answers
//! a browser's SDP offer with a VP8 video track of the desktop and takes
//! its `input` data channel.
//!
//! Order matters: the Origin is checked, then the single-use ticket is
//! redeemed (a wrong, reused or expired ticket is refused before anything
//! reaches the desktop), then the session must be running; only then does
//! the gate open a connection to the desktop and authenticate with the
//! session's VNC secret, before it upgrades (or answers), so that a desktop
//! that cannot be reached is a plain HTTP error. The browser is offered
//! security type None (VNC) or only video (WebRTC): the secret never leaves
//! the gate. Each stream runs in a [`MediaActor`] that is closed when the
//! session ends. Input (keys, pointer) counts as presence; an idle open tab
//! does not. A session has at most
//! [`MAX_VIEWERS_PER_SESSION`](super::state::MAX_VIEWERS_PER_SESSION) streams
//! open, counted in [`ViewersState`](super::state::ViewersState).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use deskgate_actors::ports::{SessionId, SessionState};
use deskgate_actors::protocol::SessionEvent;
use deskgate_media::vp8::Vp8Encoder;
use deskgate_media::{
    MediaActor, MediaArgs, MediaMsg, MediaPath, PeerError, RelayEnd, RelayLimits, RfbError,
    StreamCounters, StreamOutcome, VideoEncoder, relay_vnc,
};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt, future};
use ractor::Actor;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use utoipa::OpenApi;

use super::extract::{origin_refused, parse_id, redeem_ticket};
use super::problem::{Problem, bad_json, unknown_session};
use super::state::{ApiState, SessionsState, ViewerSlot};
use crate::auth::tickets::Purpose;
use crate::launcher::desktop::{DesktopConnection, DesktopError, DesktopIo};

/// Longest WebSocket message a browser may send on the VNC socket: the
/// relay's limit for one client message (clipboard text) plus framing.
const VNC_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64;
/// Time the desktop has to answer the relay's RFB handshake.
const DESKTOP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The media routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/sessions/{id}/vnc", get(vnc))
        .route("/api/v1/sessions/{id}/webrtc", post(webrtc))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(vnc, webrtc))]
pub struct Doc;

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
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TicketQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Problem> {
    let desk = api.sessions_state()?.clone();
    origin_refused(&headers, &desk.public_origin)?;
    let id = parse_id(&id)?;
    let events = authorise(&api, &desk, id, query.ticket, Purpose::Vnc).await?;
    let slot = api.viewers.admit(id)?;
    let desktop = dial_desktop(&desk, id).await?;
    Ok(upgrade
        .protocols(["binary"])
        .max_message_size(VNC_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let counters = Arc::new(StreamCounters::default());
            let relay_counters = counters.clone();
            let stream = Box::pin(async move {
                relay_websocket(socket, desktop, &relay_counters, &RelayLimits::default())
                    .await
                    .map_err(|err| err.to_string())
            });
            run_stream(MediaPath::Vnc, stream, counters, desk, id, events, slot)
        }))
}

/// Checks the ticket of `purpose` and that the session runs; returns the
/// session's events, subscribed before its state was looked at so that an
/// end in between is seen.
async fn authorise(
    api: &ApiState,
    desk: &SessionsState,
    id: SessionId,
    ticket: Option<String>,
    purpose: Purpose,
) -> Result<broadcast::Receiver<SessionEvent>, Problem> {
    redeem_ticket(api, ticket, id, purpose)?;
    let handle = desk.tree.lookup(id).await.ok_or_else(unknown_session)?;
    let events = handle.events.subscribe();
    let running = desk
        .tree
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
    Ok(events)
}

/// Connects to the session's desktop and performs the VNC authentication
/// with its secret.
async fn dial_desktop(
    desk: &SessionsState,
    id: SessionId,
) -> Result<Pin<Box<dyn DesktopIo>>, Problem> {
    let dialer = desk.desktops.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media-unavailable",
            "This gate cannot reach the session's desktop",
        )
        .detail("the media routes serve sessions on the gate's own Docker host only")
    })?;
    metrics::counter!("deskgate_media_desktop_dials_total").increment(1);
    let connection: DesktopConnection = dialer.dial(id).await.map_err(|err| match err {
        DesktopError::Unknown => unknown_session(),
        other => desktop_unreachable(id, other.to_string()),
    })?;
    tokio::time::timeout(
        DESKTOP_HANDSHAKE_TIMEOUT,
        deskgate_media::authenticate(connection.stream, connection.secret.expose().as_bytes()),
    )
    .await
    .map_err(|_| desktop_unreachable(id, "the desktop's RFB handshake timed out".into()))?
    .map_err(|err| desktop_unreachable(id, err.to_string()))
}

fn desktop_unreachable(id: SessionId, detail: String) -> Problem {
    metrics::counter!("deskgate_media_refused_total", "reason" => "desktop").increment(1);
    tracing::warn!(session = %id, error = %detail, "the desktop could not be reached");
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "desktop-unreachable",
        "The session's desktop did not answer",
    )
}

/// The browser's SDP offer.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WebRtcOffer {
    /// The offer SDP: a `recvonly` video transceiver and, for input, a data
    /// channel labelled `input`.
    sdp: String,
}

/// The session's desktop as WebRTC video. The ticket comes from
/// `POST /api/v1/sessions/{id}/tickets` with purpose `webrtc`. The answer is
/// not trickled: it carries the gate's candidates.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/webrtc", tag = "media",
    params(("id" = String, Path, description = "session id"), ("ticket" = String, Query, description = "single-use ticket of purpose webrtc")),
    request_body = WebRtcOffer,
    responses((status = 200, description = "`{type: \"answer\", sdp, ice_servers}`: a VP8 video track; input JSON on the `input` data channel", body = Object), (status = 400, description = "malformed JSON or not an SDP offer with video", body = Object, content_type = "application/problem+json"), (status = 401, description = "missing, wrong, reused or expired ticket", body = Object, content_type = "application/problem+json"), (status = 403, description = "foreign Origin", body = Object, content_type = "application/problem+json"), (status = 409, description = "the session is not running", body = Object, content_type = "application/problem+json"), (status = 502, description = "the desktop did not answer", body = Object, content_type = "application/problem+json")))]
async fn webrtc(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TicketQuery>,
    body: Result<Json<WebRtcOffer>, JsonRejection>,
) -> Result<Response, Problem> {
    let desk = api.sessions_state()?.clone();
    origin_refused(&headers, &desk.public_origin)?;
    let id = parse_id(&id)?;
    let Json(offer) = body.map_err(bad_json)?;
    let events = authorise(&api, &desk, id, query.ticket, Purpose::Webrtc).await?;
    let slot = api.viewers.admit(id)?;
    let encoder = Vp8Encoder::new(api.viewers.video).map_err(|err| {
        tracing::error!(error = %err, "the video encoder cannot start");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "video-unavailable",
            "This gate cannot encode video",
        )
    })?;
    // Before the desktop is dialled: garbage, or no VP8 to receive.
    deskgate_media::webrtc_peer::check_offer(&offer.sdp, encoder.mime_type()).map_err(bad_offer)?;
    let desktop = dial_desktop(&desk, id).await?;
    let (answer, peer) = deskgate_media::answer_offer(
        offer.sdp,
        encoder.mime_type(),
        &api.viewers.peer_settings(id),
    )
    .await
    .map_err(bad_offer)?;
    let counters = Arc::new(StreamCounters::default());
    let stream_counters = counters.clone();
    let video = api.viewers.video;
    let stream: BoxFuture<'static, StreamOutcome> = Box::pin(async move {
        deskgate_media::stream_desktop(desktop, peer, Box::new(encoder), video, &stream_counters)
            .await
            .map_err(|err| err.to_string())
    });
    tokio::spawn(run_stream(
        MediaPath::WebRtc,
        stream,
        counters,
        desk,
        id,
        events,
        slot,
    ));
    let mut response = Json(json!({
        "type": "answer",
        "sdp": answer,
        "ice_servers": api.viewers.ice_servers(id),
    }))
    .into_response();
    // TURN credentials: no cache may keep them.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

fn bad_offer(err: PeerError) -> Problem {
    match err {
        PeerError::BadOffer(_) | PeerError::NoVideo(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-offer",
            "The SDP offer cannot be answered",
        )
        .detail(err.to_string()),
        PeerError::Stack(detail) => {
            tracing::error!(error = %detail, "the WebRTC stack failed to answer an offer");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webrtc-failed",
                "The offer could not be answered",
            )
        }
    }
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

/// Runs one stream in a [`MediaActor`] until it ends or the session does;
/// input on it counts as the session's presence. The viewer `_slot` is freed
/// when it returns.
async fn run_stream(
    path: MediaPath,
    stream: BoxFuture<'static, StreamOutcome>,
    counters: Arc<StreamCounters>,
    desk: SessionsState,
    id: SessionId,
    mut events: broadcast::Receiver<SessionEvent>,
    _slot: ViewerSlot,
) {
    let args = MediaArgs {
        path,
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
                    desk.tree.input(id);
                }
            }
        }
    }
}
