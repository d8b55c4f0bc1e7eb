//! The WebRTC adapter: the only module that touches the `webrtc` and `rtc`
//! crates (0.21, the sans-I/O rewrite; see `docs/webrtc-choice.md`). The
//! rest of the crate sees [`VideoPeer`]: send a frame, wait for an event.
//!
//! One [`WebRtcPeer`] answers one browser offer with a send-only video track
//! (the codec of the [`crate::VideoEncoder`]: VP8, or H.264 with
//! packetization-mode 1) and takes the browser's `input` data channel.
//! Signalling is not trickled: the answer is returned once ICE gathering
//! completes, or after [`PeerSettings::gather_timeout`] with what was
//! gathered (an unreachable TURN server never completes it).
//!
//! From the browser's RTCP the peer passes on keyframe requests and
//! congestion feedback (REMB and receiver-report loss, [`crate::bitrate`];
//! the plumbing is `rtcp_feedback.rs`);
//! the answer negotiates `goog-remb` and no transport-wide congestion
//! control, so Chromium estimates the bandwidth itself and reports it (see
//! `docs/webrtc-choice.md`). A failed connection is reported with its reason
//! ([`crate::ice`]).
//!
//! Addresses: a `udp_ip` of `0.0.0.0` binds one socket per host interface
//! (the stack enumerates them) and advertises each as a host candidate;
//! [`PeerOptions::public_ips`] adds a public address a 1:1 NAT maps to
//! the host (`sdp.rs`).
//!
//! Why one file of about 780 lines: the answer, the peer and the stack's
//! callbacks share one set of `webrtc` types that no other module should
//! see; about 250 of the lines are tests with browser-like offers.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp::packetizer::{Packetizer, new_packetizer};
use rtc::rtp::sequence::new_random_sequencer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceConnectionState, RTCIceGatheringState, RTCIceServer,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder, StatsSelector,
    configure_nack, configure_rtcp_reports, configure_simulcast_extension_headers,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::bitrate::Feedback;
pub use crate::ice::IceFailure;
use crate::ice::{CandidateSummary, IceHistory};
use crate::input::MAX_INPUT_MESSAGE_BYTES;
use crate::rtcp_feedback::{FeedbackForApplication, spawn_rtcp_reader};
use crate::sdp;

/// The data channel whose messages are input (see [`crate::input`]).
pub const INPUT_CHANNEL: &str = "input";
/// The RTP payload type offered for the video codec (the dynamic range
/// starts at 96; the browser's offer decides the one actually used).
const VIDEO_PAYLOAD_TYPE: u8 = 96;
/// Input messages buffered between the data channel and the stream.
const INPUT_QUEUE: usize = 256;
/// Largest RTP packet sent; leaves room for SRTP and tunnel overheads.
const RTP_MTU: usize = 1200;
/// The RTP clock of video codecs.
const VIDEO_CLOCK_RATE: u32 = 90_000;
/// Where the feedback interceptor sits: after every other interceptor, so
/// they have all seen the RTCP before it picks from it.
const FEEDBACK_SLOT: usize = 14_000;

/// One ICE server handed to the peer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN credential (empty for STUN).
    pub credential: String,
}

/// How peers are set up.
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// ICE servers of the gate's side (TURN with its own credentials).
    pub ice_servers: Vec<IceServer>,
    /// The address the media UDP sockets bind (ephemeral ports);
    /// `0.0.0.0` means every interface.
    pub udp_ip: IpAddr,
    /// Longest wait for ICE gathering before answering with what there is.
    pub gather_timeout: Duration,
}

/// What a caller may add to [`PeerSettings`] for one peer
/// ([`answer_offer_with`]); the default adds nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerOptions {
    /// Public addresses a 1:1 NAT maps to this host, advertised as
    /// server-reflexive candidates beside each host candidate of the same
    /// family (the `webrtc` stack's own NAT 1:1 setting is not used by its
    /// gatherer in 0.21).
    pub public_ips: Vec<IpAddr>,
    /// The stream's name in logs, such as the session id.
    pub stream_id: String,
}

/// Why an offer could not be answered or a frame not sent.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The offer is not an SDP offer the stack accepts.
    #[error("the offer is not a valid SDP offer: {0}")]
    BadOffer(String),
    /// The offer has no video the desktop can be sent as.
    #[error("the offer does not receive {0} video")]
    NoVideo(&'static str),
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    Stack(String),
}

/// Is `offer_sdp` a parseable SDP offer with video in `mime_type` (say
/// `video/VP8`, or `video/H264`, which must be offered with
/// packetization-mode 1 and the Constrained Baseline profile)? Checked
/// before anything is set up for it.
pub fn check_offer(offer_sdp: &str, mime_type: &str) -> Result<(), PeerError> {
    RTCSessionDescription::offer(offer_sdp.to_owned())
        .map_err(|err| PeerError::BadOffer(err.to_string()))?;
    if sdp::offers_codec(offer_sdp, mime_type) {
        Ok(())
    } else {
        Err(PeerError::NoVideo(mime_type_name(mime_type)))
    }
}

/// A static name for the error message.
fn mime_type_name(mime_type: &str) -> &'static str {
    if mime_type.eq_ignore_ascii_case("video/VP8") {
        "VP8"
    } else if mime_type.eq_ignore_ascii_case(crate::h264::MIME_TYPE) {
        "H.264 (packetization-mode 1)"
    } else {
        "the encoder's"
    }
}

fn stack(err: impl std::fmt::Display) -> PeerError {
    PeerError::Stack(err.to_string())
}

/// What happens on a peer connection, as the stream sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE and DTLS are up: frames may flow.
    Connected,
    /// One message on the `input` data channel.
    Input(Bytes),
    /// The browser lost a picture (PLI or FIR): send a keyframe.
    KeyframeRequested,
    /// The browser's congestion feedback on the video (REMB, loss).
    Feedback(Feedback),
    /// The connection failed, for this reason (already logged and counted).
    Failed(IceFailure),
    /// The connection was closed.
    Closed,
}

/// Port: the browser end of a video stream.
pub trait VideoPeer: Send {
    /// Sends one encoded frame of the picture as it was at `captured`.
    fn send_frame(
        &mut self,
        frame: Bytes,
        captured: Instant,
    ) -> impl Future<Output = Result<(), PeerError>> + Send;

    /// The next event; `None` once nothing more can happen.
    fn next_event(&mut self) -> impl Future<Output = Option<PeerEvent>> + Send;

    /// Sends `text` to the browser on the `input` data channel; dropped if
    /// the browser has not opened it.
    fn send_text(&mut self, text: String) -> impl Future<Output = Result<(), PeerError>> + Send;
}

/// A peer connection answering one browser; closed when dropped.
pub struct WebRtcPeer {
    pc: ClosingPeer,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    /// Cuts frames into RTP packets; timestamps are set per frame (see
    /// [`VideoPeer::send_frame`]).
    packetizer: Box<dyn Packetizer + Send>,
    /// When the last frame sent was captured.
    last_captured: Option<Instant>,
    /// The payload type the browser's offer gave the codec, once known.
    payload_type: Option<u8>,
    events: mpsc::Receiver<PeerEvent>,
    state: watch::Receiver<RTCPeerConnectionState>,
    reported: RTCPeerConnectionState,
    /// The ICE states so far, for the reason of a failure.
    ice: Arc<Mutex<IceHistory>>,
    /// The stream's name in logs.
    stream_id: String,
    /// The `input` data channel once the browser opened it: the desktop's
    /// clipboard goes back on it.
    input: InputChannel,
}

/// The browser's `input` data channel, shared between the stack's callback
/// that accepts it and the stream that writes to it.
type InputChannel = Arc<std::sync::Mutex<Option<Arc<dyn DataChannel>>>>;

impl std::fmt::Debug for WebRtcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcPeer")
            .field("ssrc", &self.ssrc)
            .field("payload_type", &self.payload_type)
            .field("state", &self.reported)
            .finish_non_exhaustive()
    }
}

/// A peer connection that is closed when dropped, from the moment it is
/// built: the stack's driver task (and its UDP socket) outlives a connection
/// dropped without `close()`, e.g. by a request that timed out mid-answer.
struct ClosingPeer(Arc<dyn PeerConnection>);

impl Drop for ClosingPeer {
    fn drop(&mut self) {
        // Closing is async, so it is handed to the runtime.
        let pc = self.0.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = pc.close().await {
                    tracing::debug!(error = %err, "closing a peer connection");
                }
            });
        }
    }
}

/// Answers `offer_sdp` with a video track of `mime_type` (e.g. `video/VP8`)
/// and returns the answer SDP with the peer.
pub async fn answer_offer(
    offer_sdp: String,
    mime_type: &'static str,
    settings: &PeerSettings,
) -> Result<(String, WebRtcPeer), PeerError> {
    answer_offer_with(offer_sdp, mime_type, settings, &PeerOptions::default()).await
}

/// [`answer_offer`] with [`PeerOptions`]: public addresses to advertise,
/// and the stream's name in logs.
pub async fn answer_offer_with(
    offer_sdp: String,
    mime_type: &'static str,
    settings: &PeerSettings,
    options: &PeerOptions,
) -> Result<(String, WebRtcPeer), PeerError> {
    let offer = RTCSessionDescription::offer(offer_sdp)
        .map_err(|err| PeerError::BadOffer(err.to_string()))?;
    let codec = video_codec(mime_type);
    let mut media = MediaEngine::default();
    media
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec.clone(),
                payload_type: VIDEO_PAYLOAD_TYPE,
            },
            RtpCodecKind::Video,
        )
        .map_err(stack)?;
    // The stack's default interceptors less transport-wide congestion
    // control: Chromium sends REMB only for packets without transport-wide
    // sequence numbers, and the stack has no sender-side estimator wired to
    // an encoder (docs/webrtc-choice.md).
    configure_simulcast_extension_headers(&mut media).map_err(stack)?;
    let registry = configure_rtcp_reports(configure_nack(Registry::new(), &mut media))
        .with(Slot::from(FEEDBACK_SLOT), FeedbackForApplication::default());
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(
            settings
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
        )
        .build();
    // mDNS would open a multicast socket per peer and hide nothing the
    // gate needs hidden; many hosts have no multicast route at all.
    let setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let (events_tx, events) = mpsc::channel(INPUT_QUEUE);
    let (gathered_tx, mut gathered) = watch::channel(false);
    let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
    let input = InputChannel::default();
    let ice = Arc::new(Mutex::new(IceHistory::default()));
    let handler = Arc::new(Handler {
        gathered: gathered_tx,
        state: state_tx,
        ice: ice.clone(),
        events: events_tx.clone(),
        input_taken: Arc::new(AtomicBool::new(false)),
        input: input.clone(),
    });
    let pc = ClosingPeer(Arc::new(
        PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec![std::net::SocketAddr::new(settings.udp_ip, 0)])
            .build()
            .await
            .map_err(stack)?,
    ));

    let ssrc = rand_ssrc();
    let payloader = codec.payloader().map_err(stack)?;
    let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        "desktop".to_owned(),
        "desktop-video".to_owned(),
        "desktop-video".to_owned(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )));
    // The payload type is set per packet once negotiation has fixed it.
    let packetizer = Box::new(new_packetizer(
        Instant::now(),
        RTP_MTU,
        0,
        ssrc,
        payloader,
        Box::new(new_random_sequencer()),
        VIDEO_CLOCK_RATE,
    ));
    let negotiated = async {
        let sender =
            pc.0.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await
                .map_err(stack)?;
        pc.0.set_remote_description(offer)
            .await
            .map_err(|err| PeerError::BadOffer(err.to_string()))?;
        let answer = pc.0.create_answer(None).await.map_err(stack)?;
        pc.0.set_local_description(answer).await.map_err(stack)?;
        let negotiated = sender
            .get_parameters()
            .await
            .map_err(stack)?
            .rtp_parameters
            .codecs
            .iter()
            .any(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime_type));
        if !negotiated {
            return Err(PeerError::NoVideo(mime_type_name(mime_type)));
        }
        Ok(sender)
    };
    // On an error `pc` is dropped, which closes it.
    let sender = negotiated.await?;
    spawn_rtcp_reader(Arc::clone(&track), events_tx, ssrc);

    let gathering = tokio::time::timeout(settings.gather_timeout, async {
        while !*gathered.borrow_and_update() {
            if gathered.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    if gathering.is_err() {
        tracing::warn!(
            timeout = ?settings.gather_timeout,
            "ICE gathering did not complete; answering with the candidates gathered so far"
        );
    }
    let peer = WebRtcPeer {
        pc,
        track,
        sender,
        ssrc,
        packetizer,
        last_captured: None,
        payload_type: None,
        events,
        state,
        reported: RTCPeerConnectionState::New,
        ice,
        stream_id: options.stream_id.clone(),
        input,
    };
    let answer = peer
        .pc
        .0
        .local_description()
        .await
        .ok_or_else(|| PeerError::Stack("no local description after answering".into()))?;
    Ok((
        sdp::add_public_candidates(&answer.sdp, &options.public_ips),
        peer,
    ))
}

impl VideoPeer for WebRtcPeer {
    async fn send_text(&mut self, text: String) -> Result<(), PeerError> {
        let channel = self
            .input
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match channel {
            Some(channel) => channel.send_text(&text).await.map_err(stack),
            None => Ok(()),
        }
    }

    async fn send_frame(&mut self, frame: Bytes, captured: Instant) -> Result<(), PeerError> {
        let payload_type = match self.payload_type {
            Some(pt) => pt,
            None => {
                let parameters = self.sender.get_parameters().await.map_err(stack)?;
                let pt = parameters
                    .rtp_parameters
                    .codecs
                    .first()
                    .map_or(VIDEO_PAYLOAD_TYPE, |c| c.payload_type);
                self.payload_type = Some(pt);
                pt
            }
        };
        // The RTP timestamp is the capture time on the 90 kHz clock. The
        // stack's sample writer advances it *after* a frame by the frame's
        // duration, which is unknown when it is sent (an idle desktop sends
        // nothing for minutes); moving the clock on before each frame by the
        // real gap keeps the browser's jitter estimate honest.
        if let Some(last) = self.last_captured {
            let gap = captured.saturating_duration_since(last);
            let ticks = gap.as_secs_f64() * f64::from(VIDEO_CLOCK_RATE);
            self.packetizer
                .skip_samples(ticks.min(f64::from(u32::MAX)) as u32);
        }
        self.last_captured = Some(captured);
        let packets = self
            .packetizer
            .packetize(captured, &frame, 0)
            .map_err(stack)?;
        for mut packet in packets {
            packet.header.payload_type = payload_type;
            self.track.write_rtp(packet).await.map_err(stack)?;
        }
        Ok(())
    }

    async fn next_event(&mut self) -> Option<PeerEvent> {
        loop {
            tokio::select! {
                event = self.events.recv() => return event,
                changed = self.state.changed() => {
                    if changed.is_err() {
                        return Some(PeerEvent::Closed);
                    }
                    let state = *self.state.borrow_and_update();
                    if state == self.reported {
                        continue;
                    }
                    self.reported = state;
                    match state {
                        RTCPeerConnectionState::Connected => return Some(PeerEvent::Connected),
                        RTCPeerConnectionState::Failed => {
                            return Some(PeerEvent::Failed(self.failure().await));
                        }
                        RTCPeerConnectionState::Closed => return Some(PeerEvent::Closed),
                        _ => {}
                    }
                }
            }
        }
    }
}

impl WebRtcPeer {
    /// Why the connection failed; logged and counted here.
    async fn failure(&self) -> IceFailure {
        let history = *self.ice.lock().unwrap_or_else(PoisonError::into_inner);
        let failure = IceFailure::classify(&history);
        let stats = self
            .pc
            .0
            .get_stats(Instant::now(), StatsSelector::None)
            .await;
        let candidates = CandidateSummary::from_stats(&stats);
        crate::ice::report(failure, &history, &candidates, &self.stream_id);
        failure
    }
}

/// The video codec as the stack describes it, with the feedback the
/// browser may send: retransmission requests, keyframe requests, and its
/// bandwidth estimate (`goog-remb`).
fn video_codec(mime_type: &str) -> RTCRtpCodec {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: mime_type.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: if mime_type.eq_ignore_ascii_case(crate::h264::MIME_TYPE) {
            crate::h264::FMTP.to_owned()
        } else {
            String::new()
        },
        rtcp_feedback: vec![
            feedback("goog-remb", ""),
            feedback("nack", ""),
            feedback("nack", "pli"),
            feedback("ccm", "fir"),
        ],
    }
}

/// A random SSRC, so two viewers' streams are told apart.
fn rand_ssrc() -> u32 {
    // RandomState is randomly keyed per process and per instance: enough
    // for an identifier that only has to differ between streams.
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// The stack's callbacks, turned into channel messages.
struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    ice: Arc<Mutex<IceHistory>>,
    events: mpsc::Sender<PeerEvent>,
    /// An `input` channel is being read; a second one is ignored.
    input_taken: Arc<AtomicBool>,
    /// The channel being read, for the stream to write to.
    input: InputChannel,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        tracing::debug!(%state, "ICE connection state");
        self.ice
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_state(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "peer connection state");
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let events = self.events.clone();
        let input_taken = self.input_taken.clone();
        let input = self.input.clone();
        // Reading runs in its own task: this callback runs on the stack's
        // driver, which must not wait on the stream.
        tokio::spawn(async move {
            let label = channel.label().await.unwrap_or_default();
            if label != INPUT_CHANNEL || input_taken.swap(true, Ordering::AcqRel) {
                tracing::debug!(%label, "ignoring a data channel that is not the first `input`");
                return;
            }
            *input
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(channel.clone());
            while let Some(event) = channel.poll().await {
                let message = match event {
                    DataChannelEvent::OnMessage(message) => message,
                    DataChannelEvent::OnClose => return,
                    _ => continue,
                };
                // Refused here, so the queue holds only messages of a
                // plausible size.
                if message.data.len() > MAX_INPUT_MESSAGE_BYTES {
                    metrics::counter!("deskgate_media_refused_total", "reason" => "input")
                        .increment(1);
                    continue;
                }
                // Waiting here is back-pressure on the browser's input.
                if events
                    .send(PeerEvent::Input(message.data.freeze()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal browser-like offer receiving video in `codec`.
    fn offer(codec: &str) -> String {
        [
            "v=0",
            "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "m=video 9 UDP/TLS/RTP/SAVPF 96",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
            "a=recvonly",
            "a=rtcp-mux",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
            "a=setup:actpass",
            &format!("a=rtpmap:96 {codec}/90000"),
            "",
        ]
        .join("\r\n")
    }

    #[test]
    fn an_offer_receiving_vp8_is_accepted() {
        check_offer(&offer("VP8"), "video/VP8").expect("a VP8 offer");
    }

    #[test]
    fn an_offer_without_vp8_is_refused_as_no_video() {
        let refused = check_offer(&offer("H264"), "video/VP8");
        assert!(
            matches!(refused, Err(PeerError::NoVideo("VP8"))),
            "{refused:?}"
        );
    }

    /// A Chromium-like offer: VP8 and H.264 (packetization modes 1 and 0),
    /// each with REMB and transport-wide congestion-control feedback.
    fn browser_offer() -> String {
        let mut lines = vec![
            "v=0",
            "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 102 103",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
            "a=recvonly",
            "a=rtcp-mux",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
            "a=setup:actpass",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=rtpmap:96 VP8/90000",
            "a=rtpmap:102 H264/90000",
            "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            "a=rtpmap:103 H264/90000",
            "a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        ];
        for pt in ["96", "102", "103"] {
            for fb in ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"] {
                lines.push(Box::leak(format!("a=rtcp-fb:{pt} {fb}").into_boxed_str()));
            }
        }
        lines.push("");
        lines.join("\r\n")
    }

    fn loopback_settings() -> PeerSettings {
        PeerSettings {
            ice_servers: Vec::new(),
            udp_ip: IpAddr::from([127, 0, 0, 1]),
            gather_timeout: Duration::from_secs(2),
        }
    }

    /// The payload types the answer's video line carries.
    fn answered_pts(answer: &str) -> Vec<String> {
        let m = answer
            .lines()
            .find(|l| l.starts_with("m=video"))
            .expect("a video line");
        m.split_whitespace().skip(3).map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn an_h264_offer_gets_h264_packetization_mode_1_with_remb_and_no_twcc() {
        check_offer(&browser_offer(), crate::h264::MIME_TYPE).expect("H.264 pm 1 is offered");
        let (answer, _peer) = answer_offer(
            browser_offer(),
            crate::h264::MIME_TYPE,
            &loopback_settings(),
        )
        .await
        .expect("answered");
        assert_eq!(answered_pts(&answer), ["102"], "{answer}");
        assert!(answer.contains("a=rtpmap:102 H264/90000"), "{answer}");
        let fmtp = answer
            .lines()
            .find(|l| l.starts_with("a=fmtp:102 "))
            .expect("the H.264 format parameters");
        assert!(fmtp.contains("packetization-mode=1"), "{fmtp}");
        assert!(fmtp.contains("profile-level-id=42e01f"), "{fmtp}");
        assert!(answer.contains("a=rtcp-fb:102 goog-remb"), "{answer}");
        assert!(!answer.contains("transport-cc"), "{answer}");
        assert!(!answer.contains("transport-wide-cc"), "{answer}");
    }

    #[tokio::test]
    async fn a_vp8_answer_negotiates_remb_and_advertises_public_addresses() {
        let options = PeerOptions {
            public_ips: vec![IpAddr::from([203, 0, 113, 7])],
            stream_id: "test".into(),
        };
        let (answer, _peer) =
            answer_offer_with(browser_offer(), "video/VP8", &loopback_settings(), &options)
                .await
                .expect("answered");
        assert_eq!(answered_pts(&answer), ["96"], "{answer}");
        assert!(answer.contains("a=rtcp-fb:96 goog-remb"), "{answer}");
        assert!(!answer.contains("transport-cc"), "{answer}");
        let host = answer
            .lines()
            .find(|l| l.contains("127.0.0.1") && l.contains("typ host"))
            .expect("the loopback host candidate");
        let port = host.split_whitespace().nth(5).unwrap();
        assert!(
            answer.contains(&format!(
                "203.0.113.7 {port} typ srflx raddr 127.0.0.1 rport {port}"
            )),
            "{answer}"
        );
    }

    #[test]
    fn h264_offers_are_matched_by_their_format_parameters() {
        check_offer(&browser_offer(), "video/VP8").unwrap();
        let refused = check_offer(&offer("H264"), crate::h264::MIME_TYPE);
        assert!(
            matches!(
                refused,
                Err(PeerError::NoVideo("H.264 (packetization-mode 1)"))
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn text_that_is_not_sdp_is_a_bad_offer() {
        let refused = check_offer("v=0 nonsense", "video/VP8");
        assert!(
            matches!(refused, Err(PeerError::BadOffer(_))),
            "{refused:?}"
        );
    }
}
