//! What a gate and a `deskgate launcher` say to each other, as JSON: the
//! launch request and its answer, a running container, an exit event, and
//! the messages of a desktop's WebRTC socket. Both
//! sides use these types, so a field renamed on one side is renamed on both;
//! requests deny unknown fields (see [`super::service`] for why).

use deskgate_actors::ports::{ContainerExit, SessionId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use deskgate_media::{IceFailure, IceServer};

use crate::launcher::desktop::DesktopError;

/// The ICE failure whose label is `label` (the labels are a closed set).
pub fn ice_failure_of(label: &str) -> Option<IceFailure> {
    [
        IceFailure::NoPair,
        IceFailure::ConsentLost,
        IceFailure::Dtls,
    ]
    .into_iter()
    .find(|f| f.label() == label)
}

/// What a gate asks the launcher to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// The session.
    pub session: Uuid,
    /// The host number the gate knows this launcher by (recorded in labels).
    pub host: u16,
    /// Device indices on this host.
    pub gpu_indices: Vec<u32>,
}

/// The answer to a launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchResponse {
    /// The running container's id.
    pub container_id: String,
}

/// `GET /v1/gpus`: the launcher's host name and its GPU inventory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInventory {
    /// The host's stable name (`DESKGATE_LAUNCHER_NAME`), if it has one.
    pub host: Option<String>,
    /// Its GPUs, read fresh.
    pub gpus: Vec<crate::launcher::gpu::GpuInfo>,
}

/// One running session container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    /// Its session.
    pub session: Uuid,
    /// Container id.
    pub container_id: String,
    /// Host number from its labels.
    pub host: u16,
}

/// A container that ended by itself, as sent on `/v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// Its session.
    pub session: Uuid,
    /// Exit code (-1 when unknown).
    pub code: i64,
    /// Killed for memory.
    pub oom: bool,
    /// When the launcher saw it, in Unix milliseconds.
    pub at_ms: u64,
}

impl ExitEvent {
    /// The port's view of it.
    pub fn to_exit(&self) -> ContainerExit {
        ContainerExit {
            session: SessionId(self.session),
            code: self.code,
            oom: self.oom,
        }
    }
}

/// The gate's first (and only) message on a launcher's WebRTC socket
/// (`GET /v1/sessions/{id}/webrtc`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebRtcOfferMsg {
    /// The browser's offer SDP.
    pub offer: String,
    /// ICE servers the launcher's peer may use.
    pub ice_servers: Vec<WireIceServer>,
}

/// One ICE server as sent to a launcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireIceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN).
    pub credential: String,
}

impl From<IceServer> for WireIceServer {
    fn from(s: IceServer) -> Self {
        Self {
            urls: s.urls,
            username: s.username,
            credential: s.credential,
        }
    }
}

impl From<WireIceServer> for IceServer {
    fn from(s: WireIceServer) -> Self {
        Self {
            urls: s.urls,
            username: s.username,
            credential: s.credential,
        }
    }
}

/// What a launcher says on a WebRTC socket: the answer (or a refusal), then
/// counts while the stream runs, then how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WebRtcReport {
    /// The answer for the browser; the stream runs from now on.
    Answer {
        /// Answer SDP.
        sdp: String,
    },
    /// The offer was not answered.
    Refused {
        /// What went wrong (a [`MediaRefusal`]).
        refusal: MediaRefusal,
        /// Why, for the gate's log.
        detail: String,
    },
    /// The stream's counts so far (sent when they change, at most once a second).
    Counts {
        /// Key events from the browser.
        keys: u64,
        /// Pointer events from the browser.
        pointer: u64,
        /// Bytes from the browser.
        bytes_up: u64,
        /// Bytes to the browser.
        bytes_down: u64,
    },
    /// The stream ended; the socket closes after this.
    Ended {
        /// `browser`, `desktop`, or the error that ended it.
        reason: String,
        /// When ICE failed, why: an [`IceFailure`] label.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_failure: Option<String>,
    },
}

/// Why a launcher refused to serve a desktop (a closed set, so that each
/// side maps it to the same problem).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaRefusal {
    /// The launcher runs no such session.
    UnknownSession,
    /// The desktop's VNC server did not answer.
    DesktopUnreachable,
    /// The offer cannot be answered.
    BadOffer,
    /// No video encoder on this host.
    VideoUnavailable,
    /// The WebRTC stack failed.
    WebrtcFailed,
}

impl MediaRefusal {
    /// The refusal that says `error`.
    pub fn of(error: &DesktopError) -> Self {
        match error {
            DesktopError::Unknown => Self::UnknownSession,
            DesktopError::Unreachable(_) => Self::DesktopUnreachable,
            DesktopError::BadOffer(_) => Self::BadOffer,
            DesktopError::VideoUnavailable(_) => Self::VideoUnavailable,
            DesktopError::Failed(_) => Self::WebrtcFailed,
        }
    }

    /// The error this refusal stands for, with the launcher's `detail`.
    pub fn to_error(self, detail: String) -> DesktopError {
        match self {
            Self::UnknownSession => DesktopError::Unknown,
            Self::DesktopUnreachable => DesktopError::Unreachable(detail),
            Self::BadOffer => DesktopError::BadOffer(detail),
            Self::VideoUnavailable => DesktopError::VideoUnavailable(detail),
            Self::WebrtcFailed => DesktopError::Failed(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_round_trips_through_its_error() {
        for refusal in [
            MediaRefusal::UnknownSession,
            MediaRefusal::DesktopUnreachable,
            MediaRefusal::BadOffer,
            MediaRefusal::VideoUnavailable,
            MediaRefusal::WebrtcFailed,
        ] {
            assert_eq!(MediaRefusal::of(&refusal.to_error("x".into())), refusal);
        }
    }

    #[test]
    fn ice_failures_round_trip_through_their_labels() {
        for failure in [
            IceFailure::NoPair,
            IceFailure::ConsentLost,
            IceFailure::Dtls,
        ] {
            assert_eq!(ice_failure_of(failure.label()), Some(failure));
        }
        assert_eq!(ice_failure_of("made_up"), None);
    }

    #[test]
    fn reports_are_tagged_json() {
        let report = WebRtcReport::Refused {
            refusal: MediaRefusal::BadOffer,
            detail: "no VP8".into(),
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(
            text,
            r#"{"type":"refused","refusal":"bad_offer","detail":"no VP8"}"#
        );
        assert_eq!(serde_json::from_str::<WebRtcReport>(&text).unwrap(), report);
    }
}
