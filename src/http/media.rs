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
//! does not.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use deskgate_actors::ports::{SessionId, SessionState};
use deskgate_actors::session::SessionEvent;
use deskgate_media::vp8::Vp8Encoder;
use deskgate_media::{
    MediaActor, MediaArgs, MediaMsg, MediaPath, PeerError, PeerSettings, RelayEnd, RelayLimits,
    RfbError, StreamCounters, StreamOutcome, VideoEncoder, VideoSettings, relay_vnc,
};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt, future};
use ractor::Actor;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::api::ApiState;
use super::problem::{Problem, bad_json, unknown_session};
use super::sessions::{SessionsState, desk, origin_refused, parse_id};
use crate::auth::tickets::Purpose;
use crate::config::Config;
use crate::launcher::desktop::{DesktopConnection, DesktopError, DesktopIo};
use crate::platform::secret::Secret;
use crate::platform::turn::{IceServer, TURN_CREDENTIAL_TTL, ice_servers};

/// Longest WebSocket message a browser may send on the VNC socket: the
/// relay's limit for one client message (clipboard text) plus framing.
const VNC_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64;
/// Time the desktop has to answer the relay's RFB handshake.
const DESKTOP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the gate's ICE candidates before answering an offer.
const ICE_GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// The media routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/sessions/{id}/vnc", get(vnc))
        .route("/api/v1/sessions/{id}/webrtc", post(webrtc))
        .with_state(api)
}

/// Most media streams (VNC and WebRTC together) open on one session: each
/// WebRTC viewer costs an encoder and copies of the desktop.
pub const MAX_VIEWERS_PER_SESSION: usize = 4;

/// What the media routes share: viewer counts, and how WebRTC viewers are
/// served (from `DESKGATE_TURN_*` and `DESKGATE_WEBRTC_*`).
#[derive(Debug)]
pub struct ViewersState {
    turn_urls: Vec<String>,
    turn_secret: Option<Secret>,
    udp_ip: IpAddr,
    video: VideoSettings,
    viewers: Arc<Mutex<HashMap<SessionId, usize>>>,
}

/// One open media stream of a session; counted until dropped.
#[derive(Debug)]
struct ViewerSlot {
    viewers: Arc<Mutex<HashMap<SessionId, usize>>>,
    session: SessionId,
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        let mut viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = viewers.get_mut(&self.session) {
            *open -= 1;
            if *open == 0 {
                viewers.remove(&self.session);
            }
        }
    }
}

impl ViewersState {
    /// The WebRTC settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            turn_urls: config.turn_urls.clone(),
            turn_secret: config.turn_secret.clone(),
            udp_ip: config.webrtc_udp_ip,
            video: VideoSettings {
                bitrate_bps: config.webrtc_bitrate_bps,
                max_fps: config.webrtc_max_fps,
                ..VideoSettings::default()
            },
            viewers: Arc::default(),
        }
    }

    /// Counts a new stream of session `id`, unless it has
    /// [`MAX_VIEWERS_PER_SESSION`] open already.
    fn admit(&self, id: SessionId) -> Result<ViewerSlot, Problem> {
        let mut viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
        let open = viewers.entry(id).or_default();
        if *open >= MAX_VIEWERS_PER_SESSION {
            metrics::counter!("deskgate_media_refused_total", "reason" => "viewers").increment(1);
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-viewers",
                "The session has as many viewers as it may",
            )
            .detail(format!(
                "a session may have {MAX_VIEWERS_PER_SESSION} media streams open; close one first"
            )));
        }
        *open += 1;
        Ok(ViewerSlot {
            viewers: self.viewers.clone(),
            session: id,
        })
    }

    /// ICE servers for one viewer of session `id`, with TURN credentials
    /// that expire on their own.
    pub fn ice_servers(&self, id: SessionId) -> Vec<IceServer> {
        ice_servers(
            &self.turn_urls,
            self.turn_secret.as_ref(),
            &id.to_string(),
            SystemTime::now(),
            TURN_CREDENTIAL_TTL,
        )
    }

    fn peer_settings(&self, id: SessionId) -> PeerSettings {
        PeerSettings {
            ice_servers: self
                .ice_servers(id)
                .into_iter()
                .map(|s| deskgate_media::IceServer {
                    urls: s.urls,
                    username: s.username.unwrap_or_default(),
                    credential: s.credential.unwrap_or_default(),
                })
                .collect(),
            udp_ip: self.udp_ip,
            gather_timeout: ICE_GATHER_TIMEOUT,
        }
    }
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
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<TicketQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Problem> {
    let desk = desk(&api)?.clone();
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
    let ticket = ticket.unwrap_or_default();
    api.tickets.redeem(&ticket, id, purpose).map_err(|err| {
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
    let desk = desk(&api)?.clone();
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
                    desk.gate.presence(id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewers_state() -> ViewersState {
        ViewersState {
            turn_urls: Vec::new(),
            turn_secret: None,
            udp_ip: IpAddr::from([127, 0, 0, 1]),
            video: VideoSettings::default(),
            viewers: Arc::default(),
        }
    }

    #[test]
    fn a_session_gets_at_most_four_viewers_and_a_closed_one_frees_its_place() {
        let desk = viewers_state();
        let (one, other) = (SessionId::new(), SessionId::new());
        let mut open: Vec<_> = (0..MAX_VIEWERS_PER_SESSION)
            .map(|_| desk.admit(one).expect("within the limit"))
            .collect();
        let refused = desk.admit(one).expect_err("one too many");
        assert_eq!(
            refused.into_response().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        // Another session is counted apart.
        let _theirs = desk.admit(other).expect("another session");
        open.pop();
        let _again = desk.admit(one).expect("a closed stream frees its place");
        drop(open);
        drop(_again);
        assert!(
            !desk.viewers.lock().unwrap().contains_key(&one),
            "a session without viewers is forgotten"
        );
    }
}
