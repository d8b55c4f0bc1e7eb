//! The WebRTC adapter: the only module that touches the `webrtc` and `rtc`
//! crates (0.21, the sans-I/O rewrite; see `docs/webrtc-choice.md`). The
//! rest of the crate sees [`VideoPeer`]: send a frame, wait for an event.
//!
//! One [`WebRtcPeer`] answers one browser offer with a send-only video track
//! (the codec of the [`crate::VideoEncoder`]) and takes the browser's `input`
//! data channel. Signalling is not trickled: the answer is returned once ICE
//! gathering completes, or after [`PeerSettings::gather_timeout`] with what
//! was gathered (an unreachable TURN server never completes it).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::packetizer::{Packetizer, new_packetizer};
use rtc::rtp::sequence::new_random_sequencer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, watch};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::input::MAX_INPUT_MESSAGE_BYTES;

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
/// Where the keyframe-request interceptor sits: after every default
/// interceptor, so they have all seen the RTCP before it picks from it.
const KEYFRAME_REQUEST_SLOT: usize = 14_000;

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
/// `video/VP8`)? Checked before anything is set up for it.
pub fn check_offer(offer_sdp: &str, mime_type: &str) -> Result<(), PeerError> {
    RTCSessionDescription::offer(offer_sdp.to_owned())
        .map_err(|err| PeerError::BadOffer(err.to_string()))?;
    // `a=rtpmap:<pt> VP8/90000`: the codec name is what follows `video/`.
    let codec = mime_type.trim_start_matches("video/").to_ascii_lowercase();
    let offers_codec = offer_sdp.lines().any(|line| {
        line.strip_prefix("a=rtpmap:")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .is_some_and(|encoding| {
                encoding
                    .to_ascii_lowercase()
                    .starts_with(&format!("{codec}/"))
            })
    });
    if offers_codec {
        Ok(())
    } else {
        Err(PeerError::NoVideo(mime_type_name(mime_type)))
    }
}

/// A static name for the error message.
fn mime_type_name(mime_type: &str) -> &'static str {
    if mime_type.eq_ignore_ascii_case("video/VP8") {
        "VP8"
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
    /// The connection failed or was closed.
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
    let registry = register_default_interceptors(Registry::new(), &mut media)
        .map_err(stack)?
        .with(
            Slot::from(KEYFRAME_REQUEST_SLOT),
            KeyframeRequests::default(),
        );
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
    let handler = Arc::new(Handler {
        gathered: gathered_tx,
        state: state_tx,
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
    spawn_keyframe_requests(Arc::clone(&track), events_tx);

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
        input,
    };
    let answer = peer
        .pc
        .0
        .local_description()
        .await
        .ok_or_else(|| PeerError::Stack("no local description after answering".into()))?;
    Ok((answer.sdp, peer))
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
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                            return Some(PeerEvent::Closed);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The video codec as the stack describes it, with the feedback the
/// browser may send: retransmission requests and keyframe requests.
fn video_codec(mime_type: &str) -> RTCRtpCodec {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: mime_type.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
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

/// Forwards keyframe requests that arrive on the track to the stream.
fn spawn_keyframe_requests(track: Arc<TrackLocalStaticRTP>, events: mpsc::Sender<PeerEvent>) {
    tokio::spawn(async move {
        // `poll` ends when the track is unbound (the connection closed).
        while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
            if packets.iter().any(|p| is_keyframe_request(p.as_ref()))
                && events.try_send(PeerEvent::KeyframeRequested).is_err()
                && events.is_closed()
            {
                return;
            }
        }
    });
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// The stack's callbacks, turned into channel messages.
struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
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

/// Interceptor that marks inbound PLI and FIR packets for delivery to the
/// application: inbound RTCP otherwise ends inside the interceptor chain,
/// and the encoder would never hear that a viewer needs a keyframe.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                // The interceptors before this one have acted on it.
                return Ok(());
            }
            message.message.packet = Packet::Rtcp(requests);
            message.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(message);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, message: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(message);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
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

    #[test]
    fn text_that_is_not_sdp_is_a_bad_offer() {
        let refused = check_offer("v=0 nonsense", "video/VP8");
        assert!(
            matches!(refused, Err(PeerError::BadOffer(_))),
            "{refused:?}"
        );
    }
}
