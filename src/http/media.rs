//! The media routes (DESIGN §6). `GET /api/v1/sessions/{id}/vnc?ticket=`
//! upgrades to a binary WebSocket that speaks RFB to noVNC (or any
//! websockify client); `POST /api/v1/sessions/{id}/webrtc?ticket=` answers
//! a browser's SDP offer with a VP8 video track of the desktop and takes
//! its `input` data channel.
//!
//! Order matters: the Origin is checked, then (for VNC) that the request is
//! a WebSocket handshake at all, so that a request that could never become a
//! socket does not spend a ticket; then the single-use ticket is redeemed (a
//! wrong, reused or expired ticket is refused before anything reaches the
//! desktop), then the session must be running; only then does
//! the gate ask the [`crate::launcher::desktop::DesktopMedia`] port for the desktop — in-process on a
//! single Docker host, or the launcher that runs the session — before it
//! upgrades (or answers), so that a desktop that cannot be reached is a plain
//! HTTP error. The side that runs the desktop authenticates with the VNC
//! secret and encodes the video; the browser is offered security type None
//! (VNC) or only video (WebRTC), and the gate relays RFB bytes and signals.
//! Each stream runs in a [`MediaActor`] that is closed when the session ends;
//! a VNC stream that ends is closed with a reason the browser can show. Input (keys, pointer) counts as presence; an idle open tab
//! does not. A session has at most
//! [`MAX_VIEWERS_PER_SESSION`](super::state::MAX_VIEWERS_PER_SESSION) streams
//! open, counted in [`ViewersState`](super::state::ViewersState).

use std::io;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use deskgate_actors::ports::{SessionId, SessionState};
use deskgate_actors::protocol::SessionEvent;
use deskgate_media::{
    MediaActor, MediaArgs, MediaMsg, MediaPath, RelayEnd, RelayLimits, RfbError, StreamCounters,
    StreamOutcome, relay_vnc,
};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt, future};
use ractor::Actor;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use utoipa::OpenApi;

use super::extract::{origin_refused, parse_id, redeem_ticket};
use super::problem::{Problem, bad_json, bad_query, not_a_websocket, unknown_session};
use super::state::{ApiState, SessionsState, ViewerSlot};
use crate::auth::tickets::Purpose;
use crate::launcher::desktop::{DesktopError, DesktopRef, WebRtcRequest};

/// Longest WebSocket message a browser may send on the VNC socket: the
/// relay's limit for one client message (clipboard text) plus framing.
const VNC_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64;
/// Video codecs the desktops' hosts encode (VP8 everywhere, H.264 where
/// NVENC is): an offer must receive one of them.
const VIDEO_CODECS: [&str; 2] = ["video/VP8", "video/H264"];

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
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)"), ("ticket" = String, Query, description = "single-use ticket of purpose vnc")),
    responses((status = 101, description = "binary WebSocket of RFB 3.8 with security type None (subprotocol `binary` if asked)"), (status = 400, description = "a malformed query, or not a valid WebSocket handshake", body = Problem, content_type = "application/problem+json"), (status = 401, description = "missing, wrong, reused or expired ticket", body = Problem, content_type = "application/problem+json"), (status = 403, description = "foreign Origin", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session", body = Problem, content_type = "application/problem+json"), (status = 409, description = "the session is not running", body = Problem, content_type = "application/problem+json"), (status = 426, description = "not a WebSocket upgrade (checked before the ticket is spent)", body = Problem, content_type = "application/problem+json"), (status = 429, description = "the session has as many viewers as it may", body = Problem, content_type = "application/problem+json"), (status = 502, description = "the desktop did not answer", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet", body = Problem, content_type = "application/problem+json")))]
async fn vnc(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TicketQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let desk = api.sessions_state()?.clone();
    origin_refused(&headers, &desk.public_origin)?;
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(bad_query)?;
    // Before the ticket is redeemed: a request that cannot become a socket
    // does not spend it.
    let upgrade = upgrade.map_err(not_a_websocket)?;
    let (events, desktop) = authorise(&api, &desk, id, query.ticket, Purpose::Vnc).await?;
    let slot = api.viewers.admit(id)?;
    let desktop = desk
        .desktops
        .open_vnc(desktop)
        .await
        .map_err(|err| desktop_problem(id, err))?;
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
/// end in between is seen, and where its desktop is.
async fn authorise(
    api: &ApiState,
    desk: &SessionsState,
    id: SessionId,
    ticket: Option<String>,
    purpose: Purpose,
) -> Result<(broadcast::Receiver<SessionEvent>, DesktopRef), Problem> {
    redeem_ticket(api, ticket, id, purpose)?;
    let handle = desk.tree.lookup(id).await.ok_or_else(unknown_session)?;
    let events = handle.events.subscribe();
    let record = desk
        .tree
        .view(id)
        .await
        .map(|v| v.record)
        .filter(|r| r.state == SessionState::Running)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "session-not-running",
                "The desktop is not running",
            )
        })?;
    // A running session holds its GPUs, all on one host.
    let host = record.gpu_addrs.first().map_or(0, |gpu| gpu.host);
    Ok((events, DesktopRef { session: id, host }))
}

/// The problem for a desktop that could not be put in front of the browser.
fn desktop_problem(id: SessionId, err: DesktopError) -> Problem {
    match err {
        DesktopError::Unknown => unknown_session(),
        DesktopError::Unreachable(detail) => {
            metrics::counter!("deskgate_media_refused_total", "reason" => "desktop").increment(1);
            tracing::warn!(session = %id, error = %detail, "the desktop could not be reached");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "desktop-unreachable",
                "The session's desktop did not answer",
            )
        }
        DesktopError::BadOffer(detail) => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-offer",
            "The SDP offer cannot be answered",
        )
        .detail(detail),
        DesktopError::VideoUnavailable(detail) => {
            tracing::error!(session = %id, error = %detail, "the desktop's host cannot encode video");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "video-unavailable",
                "The desktop's host cannot encode video",
            )
        }
        DesktopError::Failed(detail) => {
            tracing::error!(session = %id, error = %detail, "the WebRTC stack failed to answer an offer");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webrtc-failed",
                "The offer could not be answered",
            )
        }
    }
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
/// not trickled: it carries the candidates of the host that serves the
/// desktop.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/webrtc", tag = "media",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "session id (a UUID)"), ("ticket" = String, Query, description = "single-use ticket of purpose webrtc")),
    request_body = WebRtcOffer,
    responses((status = 200, description = "`{type: \"answer\", sdp, ice_servers}`: a VP8 video track (H.264 from hosts with NVENC); input JSON on the `input` data channel", body = Object), (status = 400, description = "a malformed query or JSON, or not an SDP offer with video", body = Problem, content_type = "application/problem+json"), (status = 401, description = "missing, wrong, reused or expired ticket", body = Problem, content_type = "application/problem+json"), (status = 403, description = "foreign Origin", body = Problem, content_type = "application/problem+json"), (status = 404, description = "no such session", body = Problem, content_type = "application/problem+json"), (status = 409, description = "the session is not running", body = Problem, content_type = "application/problem+json"), (status = 429, description = "the session has as many viewers as it may", body = Problem, content_type = "application/problem+json"), (status = 502, description = "the desktop did not answer", body = Problem, content_type = "application/problem+json"), (status = 503, description = "sessions are not up yet, or the desktop's host cannot encode video", body = Problem, content_type = "application/problem+json")))]
async fn webrtc(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<TicketQuery>, QueryRejection>,
    body: Result<Json<WebRtcOffer>, JsonRejection>,
) -> Result<Response, Problem> {
    let desk = api.sessions_state()?.clone();
    origin_refused(&headers, &desk.public_origin)?;
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(bad_query)?;
    let Json(offer) = body.map_err(bad_json)?;
    let (events, desktop) = authorise(&api, &desk, id, query.ticket, Purpose::Webrtc).await?;
    let slot = api.viewers.admit(id)?;
    // Before the desktop is asked for: garbage, or no video we can send.
    check_video_offer(&offer.sdp).map_err(|err| desktop_problem(id, err))?;
    let request = WebRtcRequest {
        offer: offer.sdp,
        ice_servers: api.viewers.serving_ice_servers(id),
    };
    let served = desk
        .desktops
        .answer_webrtc(desktop, request)
        .await
        .map_err(|err| desktop_problem(id, err))?;
    let answer = served.answer;
    let counters = served.counters;
    let run = served.run;
    let stream: BoxFuture<'static, StreamOutcome> =
        Box::pin(async move { run.await.map_err(|failure| failure.detail) });
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

/// Is `sdp` an offer that receives video in one of [`VIDEO_CODECS`]? (The
/// serving host then picks the codec it encodes.)
fn check_video_offer(sdp: &str) -> Result<(), DesktopError> {
    let mut verdicts = VIDEO_CODECS
        .iter()
        .map(|codec| deskgate_media::webrtc_peer::check_offer(sdp, codec));
    match verdicts.find(Result::is_ok) {
        Some(_) => Ok(()),
        None => match deskgate_media::webrtc_peer::check_offer(sdp, VIDEO_CODECS[0]) {
            Err(deskgate_media::PeerError::NoVideo(_)) => Err(DesktopError::BadOffer(
                "the offer receives neither VP8 nor H.264 video".into(),
            )),
            other => Err(DesktopError::BadOffer(
                other.err().map(|e| e.to_string()).unwrap_or_default(),
            )),
        },
    }
}

/// Relays an upgraded browser WebSocket to an authenticated desktop until
/// either side closes (what `GET …/vnc` runs; public for the benchmark).
/// When the desktop's side ends, the browser gets a Close frame saying so.
pub async fn relay_websocket<D>(
    socket: WebSocket,
    desktop: D,
    counters: &StreamCounters,
    limits: &RelayLimits,
) -> Result<RelayEnd, RfbError>
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, stream) = socket.split();
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
    let browser_out = (&mut sink)
        .sink_map_err(io::Error::other)
        .with(|bytes: Bytes| future::ready(Ok::<_, io::Error>(Message::Binary(bytes))));
    let ended = relay_vnc(
        desktop,
        std::pin::pin!(browser_in),
        std::pin::pin!(browser_out),
        counters,
        limits,
    )
    .await;
    let close = match &ended {
        Ok(RelayEnd::BrowserClosed) => None,
        Ok(RelayEnd::DesktopClosed) => Some((
            CLOSE_DESKTOP_ENDED,
            "the desktop's stream ended".to_string(),
        )),
        Err(err) => Some((CLOSE_RELAY_FAILED, err.to_string())),
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: close_reason(&reason).into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
    ended
}

/// Close code when the desktop's side of a VNC stream ended (its host went
/// away, the container stopped): the page may reconnect with a new ticket.
pub const CLOSE_DESKTOP_ENDED: u16 = 4001;
/// Close code when the relay refused the browser's bytes or failed.
pub const CLOSE_RELAY_FAILED: u16 = 4002;

/// `reason` cut to what a Close frame carries (123 bytes), on a char boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
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
