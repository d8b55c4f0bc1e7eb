//! The launcher's media routes: this host's desktops for the gate, which
//! relays them to browsers (DESIGN §6). Both sit behind the launcher token.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/sessions/{id}/vnc` | WebSocket of the desktop's RFB stream, past its VNC authentication; binary frames both ways |
//! | `GET /v1/sessions/{id}/webrtc` | WebSocket: the gate sends a [`WebRtcOfferMsg`], the launcher answers with [`WebRtcReport`]s (answer or refusal, counts, end) |
//!
//! The desktop is reached (and authenticated with the session's secret,
//! which never leaves this host) before the VNC socket is upgraded, so a
//! desktop that cannot be reached is a plain HTTP error the gate passes on.
//! A WebRTC stream lives exactly as long as its socket: when the gate closes
//! it (the session ended, the viewer left) or loses it, the stream stops.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use deskgate_actors::ports::SessionId;
use deskgate_media::{IceServer, RelayEnd};
use futures::{SinkExt, StreamExt, future};
use uuid::Uuid;

use super::LauncherState;
use crate::http::Problem;
use crate::launcher::desktop::{DesktopError, DesktopRef, WebRtcRequest};
use crate::launcher::remote::splice::splice;
use crate::launcher::remote::wire::{MediaRefusal, WebRtcOfferMsg, WebRtcReport};

/// Longest binary message the gate may send on the VNC socket (the relay's
/// limit for one browser message, plus framing).
const VNC_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64;
/// Longest offer message.
const OFFER_MAX_BYTES: usize = 256 * 1024;
/// Time the gate has to send its offer once the socket is open.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a stream's counts are reported (when they changed).
const COUNTS_EVERY: Duration = Duration::from_secs(1);
/// How often the gate is pinged on a WebRTC socket, and how long it may stay
/// silent (no pong, no message) before the stream is stopped: a gate cut off
/// from this host can no longer close the stream itself.
const PING_EVERY: Duration = Duration::from_secs(5);
const GATE_SILENT_LIMIT: Duration = Duration::from_secs(15);

/// The media routes, for the token-guarded part of the router.
pub(super) fn routes() -> Router<Arc<LauncherState>> {
    Router::new()
        .route("/v1/sessions/{id}/vnc", get(vnc))
        .route("/v1/sessions/{id}/webrtc", get(webrtc))
}

/// The desktop of session `id`; the host number is the gate's business
/// (this launcher serves only its own containers).
fn desktop_of(id: &str) -> Result<DesktopRef, Problem> {
    let session =
        Uuid::parse_str(id).map_err(|_| Problem::not_found().detail("not a session id"))?;
    Ok(DesktopRef {
        session: SessionId(session),
        host: 0,
    })
}

/// The problem a refusal is answered with before an upgrade.
fn refusal_problem(error: &DesktopError) -> Problem {
    let (status, kind, title) = match MediaRefusal::of(error) {
        MediaRefusal::UnknownSession => (
            StatusCode::NOT_FOUND,
            "unknown-session",
            "This launcher runs no such session",
        ),
        MediaRefusal::DesktopUnreachable => (
            StatusCode::BAD_GATEWAY,
            "desktop-unreachable",
            "The session's desktop did not answer",
        ),
        MediaRefusal::BadOffer => (
            StatusCode::BAD_REQUEST,
            "bad-offer",
            "The SDP offer cannot be answered",
        ),
        MediaRefusal::VideoUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "video-unavailable",
            "This host cannot encode video",
        ),
        MediaRefusal::WebrtcFailed => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "webrtc-failed",
            "The WebRTC stack failed",
        ),
    };
    Problem::new(status, kind, title).detail(error.to_string())
}

async fn vnc(
    State(state): State<Arc<LauncherState>>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let desktop = match desktop_of(&id) {
        Ok(desktop) => desktop,
        Err(problem) => return problem.into_response(),
    };
    let rfb = match state.desktops.open_vnc(desktop).await {
        Ok(rfb) => rfb,
        Err(err) => {
            tracing::warn!(session = %desktop.session, error = %err, "desktop not opened for VNC");
            return refusal_problem(&err).into_response();
        }
    };
    upgrade
        .max_message_size(VNC_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let incoming = stream
                .take_while(|m| future::ready(!matches!(m, Ok(Message::Close(_)))))
                .filter_map(|m| {
                    future::ready(match m {
                        Ok(Message::Binary(bytes)) => Some(Ok(bytes)),
                        Ok(_) => None,
                        Err(err) => Some(Err(io::Error::other(err))),
                    })
                });
            let outgoing = sink
                .sink_map_err(io::Error::other)
                .with(|bytes: Bytes| future::ready(Ok::<_, io::Error>(Message::Binary(bytes))));
            let ended = splice(rfb, std::pin::pin!(incoming), std::pin::pin!(outgoing)).await;
            tracing::info!(session = %desktop.session, ?ended, "VNC stream to the gate closed");
        })
}

async fn webrtc(
    State(state): State<Arc<LauncherState>>,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let desktop = match desktop_of(&id) {
        Ok(desktop) => desktop,
        Err(problem) => return problem.into_response(),
    };
    upgrade
        .max_message_size(OFFER_MAX_BYTES)
        .on_upgrade(move |socket| serve_webrtc(socket, state, desktop))
}

/// Reads the gate's offer, answers it, and runs the stream while the socket
/// stays open, reporting counts and the end.
async fn serve_webrtc(mut socket: WebSocket, state: Arc<LauncherState>, desktop: DesktopRef) {
    let request = match read_offer(&mut socket).await {
        Ok(request) => request,
        Err(detail) => {
            let refused = WebRtcReport::Refused {
                refusal: MediaRefusal::BadOffer,
                detail,
            };
            let _ = send_report(&mut socket, &refused).await;
            return;
        }
    };
    let stream = match state.desktops.answer_webrtc(desktop, request).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(session = %desktop.session, error = %err, "WebRTC offer refused");
            let refused = WebRtcReport::Refused {
                refusal: MediaRefusal::of(&err),
                detail: err.to_string(),
            };
            let _ = send_report(&mut socket, &refused).await;
            return;
        }
    };
    let answer = WebRtcReport::Answer { sdp: stream.answer };
    if send_report(&mut socket, &answer).await.is_err() {
        return;
    }
    tracing::info!(session = %desktop.session, "WebRTC stream started");
    let counters = stream.counters;
    let mut run = stream.run;
    let mut ticker = tokio::time::interval(COUNTS_EVERY);
    let mut pinger = tokio::time::interval(PING_EVERY);
    let mut heard = tokio::time::Instant::now();
    let mut reported = counters.snapshot();
    loop {
        tokio::select! {
            outcome = &mut run => {
                let counts = counts_report(&counters);
                let _ = send_report(&mut socket, &counts).await;
                let (reason, ice_failure) = match outcome {
                    Ok(RelayEnd::BrowserClosed) => ("browser".to_string(), None),
                    Ok(RelayEnd::DesktopClosed) => ("desktop".to_string(), None),
                    Err(failure) => (failure.detail, failure.ice.map(|f| f.label().to_string())),
                };
                tracing::info!(session = %desktop.session, %reason, "WebRTC stream ended");
                let ended = WebRtcReport::Ended { reason, ice_failure };
                let _ = send_report(&mut socket, &ended).await;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame { code: 1000, reason: "stream ended".into() })))
                    .await;
                return;
            }
            _ = ticker.tick() => {
                let now = counters.snapshot();
                if now != reported {
                    reported = now;
                    if send_report(&mut socket, &counts_report(&counters)).await.is_err() {
                        tracing::info!(session = %desktop.session, "the gate's WebRTC socket broke; stream stopped");
                        return;
                    }
                }
            }
            _ = pinger.tick() => {
                if heard.elapsed() > GATE_SILENT_LIMIT {
                    tracing::warn!(session = %desktop.session, "the gate went silent; WebRTC stream stopped");
                    return;
                }
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    // Dropping `run` closes the peer connection.
                    tracing::info!(session = %desktop.session, "the gate closed the WebRTC stream");
                    return;
                }
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            },
        }
    }
}

async fn read_offer(socket: &mut WebSocket) -> Result<WebRtcRequest, String> {
    let first = tokio::time::timeout(OFFER_TIMEOUT, socket.recv())
        .await
        .map_err(|_| "no offer within 10 s".to_string())?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err("the first message is not a text offer".into());
    };
    let offer: WebRtcOfferMsg =
        serde_json::from_str(&text).map_err(|e| format!("unreadable offer message: {e}"))?;
    Ok(WebRtcRequest {
        offer: offer.offer,
        ice_servers: offer.ice_servers.into_iter().map(IceServer::from).collect(),
    })
}

fn counts_report(counters: &deskgate_media::StreamCounters) -> WebRtcReport {
    let now = counters.snapshot();
    WebRtcReport::Counts {
        keys: now.keys,
        pointer: now.pointer,
        bytes_up: now.bytes_up,
        bytes_down: now.bytes_down,
    }
}

async fn send_report(socket: &mut WebSocket, report: &WebRtcReport) -> Result<(), axum::Error> {
    let text = serde_json::to_string(report).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}
