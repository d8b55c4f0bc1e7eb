//! The Docker backend's [`DesktopMedia`]: both media paths of the desktops
//! the local [`DockerLauncher`] runs, served in this process (by the gate in
//! single-host mode, by `deskgate launcher` on a GPU host).
//!
//! Session containers sit on networks the host cannot route into (see
//! [`crate::launcher::docker`]), so the desktop is not reached over the
//! network: the desktop image's bridge command, [`DESKTOP_VNC_BRIDGE`], runs
//! inside the container through Docker's exec API and its stdin and stdout
//! are the VNC server's loopback port. The VNC authentication with the
//! session's secret is done here, so the secret never leaves this host; WebRTC
//! video is encoded here too, next to the GPU.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use deskgate_actors::ports::SessionId;
use deskgate_media::{
    PeerError, PeerOptions, PeerSettings, StreamCounters, StreamError, VideoSettings,
};
use futures::StreamExt;
use tokio_util::io::StreamReader;

use super::{DockerLauncher, container_name};
use crate::launcher::desktop::{
    AuthenticatedRfb, DesktopError, DesktopIo, DesktopMedia, DesktopRef, StreamFailure,
    WebRtcRequest, WebRtcStream,
};
use crate::platform::secret::Secret;

/// The command, run inside a session container, whose stdin and stdout are
/// the desktop's VNC server (the desktop image's contract: its VNC server
/// listens on 127.0.0.1:5900 and the image has a `nc`).
pub const DESKTOP_VNC_BRIDGE: [&str; 3] = ["nc", "127.0.0.1", "5900"];

/// Time the desktop has to answer the RFB handshake.
const DESKTOP_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for ICE candidates before answering an offer.
const ICE_GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// How this host serves WebRTC (from `DESKGATE_WEBRTC_*`).
#[derive(Clone, Debug)]
pub struct WebRtcSettings {
    /// The IP the media UDP sockets bind; `0.0.0.0` = every interface.
    pub udp_ip: IpAddr,
    /// Public addresses a 1:1 NAT maps to this host, advertised beside its
    /// own (`DESKGATE_WEBRTC_PUBLIC_IPS`).
    pub public_ips: Vec<IpAddr>,
    /// Video frame rate, bitrate and encoder.
    pub video: VideoSettings,
}

/// Serves the desktops of the local [`DockerLauncher`]; see the module docs.
#[derive(Clone, Debug)]
pub struct DockerDesktops {
    launcher: Arc<DockerLauncher>,
    webrtc: WebRtcSettings,
}

impl DockerDesktops {
    /// The desktops of the sessions `launcher` launched or adopted.
    pub fn new(launcher: Arc<DockerLauncher>, webrtc: WebRtcSettings) -> Self {
        Self { launcher, webrtc }
    }

    fn docker(&self) -> &Docker {
        self.launcher.docker()
    }

    /// A raw byte stream to the session's VNC server, and its secret.
    async fn dial(
        &self,
        session: SessionId,
    ) -> Result<(std::pin::Pin<Box<dyn DesktopIo>>, Secret), DesktopError> {
        let secret = self
            .launcher
            .vnc_secret(session)
            .ok_or(DesktopError::Unknown)?;
        metrics::counter!("deskgate_media_desktop_dials_total").increment(1);
        let stream = vnc_bridge(
            self.docker(),
            &container_name(session),
            &self.launcher.settings().user,
        )
        .await?;
        Ok((stream, secret))
    }
}

/// A raw byte stream to the VNC server of `container` ([`DESKTOP_VNC_BRIDGE`]
/// run inside it as `user`). What the bridge writes on stderr is logged.
pub async fn vnc_bridge(
    docker: &Docker,
    container: &str,
    user: &str,
) -> Result<std::pin::Pin<Box<dyn DesktopIo>>, DesktopError> {
    let unreachable = |what: &str, err: bollard::errors::Error| {
        DesktopError::Unreachable(format!("{what}: {err}"))
    };
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                cmd: Some(DESKTOP_VNC_BRIDGE.to_vec()),
                user: Some(user),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unreachable("creating the VNC bridge", e))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(64 * 1024),
            }),
        )
        .await
        .map_err(|e| unreachable("starting the VNC bridge", e))?;
    let StartExecResults::Attached { output, input } = started else {
        return Err(DesktopError::Unreachable(
            "Docker started the VNC bridge detached".into(),
        ));
    };
    let container = container.to_string();
    let stdout = output.filter_map(move |item| {
        let chunk = match item {
            Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
            Ok(LogOutput::StdErr { message }) => {
                tracing::warn!(
                    %container,
                    stderr = %String::from_utf8_lossy(&message).trim(),
                    "the desktop's VNC bridge wrote an error"
                );
                None
            }
            Ok(_) => None,
            Err(err) => Some(Err(io::Error::other(err))),
        };
        futures::future::ready(chunk)
    });
    Ok(Box::pin(tokio::io::join(StreamReader::new(stdout), input)))
}

#[async_trait]
impl DesktopMedia for DockerDesktops {
    async fn open_vnc(&self, desktop: DesktopRef) -> Result<AuthenticatedRfb, DesktopError> {
        let (stream, secret) = self.dial(desktop.session).await?;
        let handshake = deskgate_media::authenticate(stream, secret.expose().as_bytes());
        tokio::time::timeout(DESKTOP_HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| DesktopError::Unreachable("the desktop's RFB handshake timed out".into()))?
            .map_err(|err| DesktopError::Unreachable(err.to_string()))
    }

    async fn answer_webrtc(
        &self,
        desktop: DesktopRef,
        request: WebRtcRequest,
    ) -> Result<WebRtcStream, DesktopError> {
        let video = self.webrtc.video;
        // H.264 on NVENC where the host has it and the browser takes it,
        // else VP8 (or what DESKGATE_WEBRTC_ENCODER forces).
        let encoder = deskgate_media::encoder_for_offer(video, &request.offer).map_err(|err| {
            tracing::error!(error = %err, "the video encoder cannot start");
            DesktopError::VideoUnavailable(err.to_string())
        })?;
        // Before the desktop is dialled: garbage, or no codec in common.
        deskgate_media::webrtc_peer::check_offer(&request.offer, encoder.mime_type())
            .map_err(peer_error)?;
        let rfb = self.open_vnc(desktop).await?;
        let settings = PeerSettings {
            ice_servers: request.ice_servers,
            udp_ip: self.webrtc.udp_ip,
            gather_timeout: ICE_GATHER_TIMEOUT,
        };
        let options = PeerOptions {
            public_ips: self.webrtc.public_ips.clone(),
            stream_id: desktop.session.to_string(),
        };
        let (answer, peer) = deskgate_media::answer_offer_with(
            request.offer,
            encoder.mime_type(),
            &settings,
            &options,
        )
        .await
        .map_err(peer_error)?;
        let counters = Arc::new(StreamCounters::default());
        let stream_counters = counters.clone();
        let run = Box::pin(async move {
            deskgate_media::stream_desktop(rfb, peer, encoder, video, &stream_counters)
                .await
                .map_err(|err| StreamFailure {
                    ice: match err {
                        StreamError::IceFailed(reason) => Some(reason),
                        _ => None,
                    },
                    detail: err.to_string(),
                })
        });
        Ok(WebRtcStream {
            answer,
            counters,
            run,
        })
    }
}

fn peer_error(err: PeerError) -> DesktopError {
    match err {
        PeerError::BadOffer(_) | PeerError::NoVideo(_) => DesktopError::BadOffer(err.to_string()),
        PeerError::Stack(detail) => DesktopError::Failed(detail),
    }
}
