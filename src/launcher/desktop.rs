//! The desktop media port: how the gate gets a session's desktop in front of
//! a browser, from whichever launcher owns the session (DESIGN §6).
//!
//! - [`DesktopMedia::open_vnc`]: an RFB stream to the desktop on which the
//!   VNC authentication with the session's secret has already been done; the
//!   gate relays it to noVNC, offering the browser security type None.
//! - [`DesktopMedia::answer_webrtc`]: the desktop's WebRTC stream for one
//!   browser offer: the answer SDP, live input counts (presence), and the
//!   stream itself as a future that the gate runs and drops to close it.
//!
//! Adapters: the local Docker backend serves both in-process
//! ([`crate::launcher::docker::DockerDesktops`]); a gate on remote launchers
//! asks the session's `deskgate launcher` over its token-guarded API
//! ([`crate::launcher::remote::media::RemoteDesktops`]).
//!
//! Invariants: the VNC secret stays on the host that runs the desktop (the
//! adapter that holds it authenticates there), and video is encoded there
//! too. Everything that is the gate's — Origin, tickets, the viewer limit,
//! presence, closing streams when the session ends — stays above this port.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use deskgate_actors::ports::SessionId;
use deskgate_media::{IceFailure, IceServer, RelayEnd, StreamCounters};
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to a desktop's VNC server.
pub trait DesktopIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> DesktopIo for T {}

/// An RFB stream past its security handshake: the next bytes the desktop
/// expects are the ClientInit.
pub type AuthenticatedRfb = Pin<Box<dyn DesktopIo>>;

/// Which desktop: the session, and the host its GPUs are on (a launcher
/// pool routes by it; a single host ignores it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesktopRef {
    /// The session.
    pub session: SessionId,
    /// Its host number.
    pub host: u16,
}

/// One browser's WebRTC offer, with the ICE servers the serving side may
/// use (TURN with short-lived credentials minted by the gate).
#[derive(Clone, Debug)]
pub struct WebRtcRequest {
    /// The browser's offer SDP.
    pub offer: String,
    /// ICE servers for the serving peer.
    pub ice_servers: Vec<IceServer>,
}

/// Why a served stream failed: the ICE reason when ICE failed (a closed set,
/// for metrics), and the whole story for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFailure {
    /// Set when the peer connection's ICE (or DTLS) failed.
    pub ice: Option<IceFailure>,
    /// What happened.
    pub detail: String,
}

impl std::fmt::Display for StreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// How a served stream ended: which side left, or why it failed.
pub type ServedOutcome = Result<RelayEnd, StreamFailure>;

/// A desktop's WebRTC stream to one browser, answered and ready to run.
pub struct WebRtcStream {
    /// The answer SDP for the browser.
    pub answer: String,
    /// Input and byte counts, updated while `run` runs.
    pub counters: Arc<StreamCounters>,
    /// Runs the stream until the browser or the desktop leaves; dropping it
    /// closes the stream wherever it is served.
    pub run: BoxFuture<'static, ServedOutcome>,
}

impl std::fmt::Debug for WebRtcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcStream").finish_non_exhaustive()
    }
}

/// Why a desktop could not be put in front of a browser.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// The serving side does not know the session (or its secret).
    #[error("no desktop is known for this session")]
    Unknown,
    /// The desktop, its VNC server or its host did not answer.
    #[error("the desktop could not be reached: {0}")]
    Unreachable(String),
    /// The browser's offer cannot be answered (garbage, or no codec in common).
    #[error("the offer cannot be answered: {0}")]
    BadOffer(String),
    /// The serving side cannot encode video.
    #[error("video is unavailable: {0}")]
    VideoUnavailable(String),
    /// The WebRTC stack failed.
    #[error("webrtc failed: {0}")]
    Failed(String),
}

/// Puts session desktops in front of browsers (a port; see the module docs).
#[async_trait]
pub trait DesktopMedia: Send + Sync + 'static {
    /// An authenticated RFB stream to the desktop.
    async fn open_vnc(&self, desktop: DesktopRef) -> Result<AuthenticatedRfb, DesktopError>;

    /// Answers a browser's offer with a stream of the desktop.
    async fn answer_webrtc(
        &self,
        desktop: DesktopRef,
        request: WebRtcRequest,
    ) -> Result<WebRtcStream, DesktopError>;
}

/// Both media paths of a gate without any desktop (sessions not set up).
#[derive(Debug)]
pub struct NoDesktops;

#[async_trait]
impl DesktopMedia for NoDesktops {
    async fn open_vnc(&self, _: DesktopRef) -> Result<AuthenticatedRfb, DesktopError> {
        Err(DesktopError::Unknown)
    }

    async fn answer_webrtc(
        &self,
        _: DesktopRef,
        _: WebRtcRequest,
    ) -> Result<WebRtcStream, DesktopError> {
        Err(DesktopError::Unknown)
    }
}
