//! The browser's RTCP about the sent video, brought to the stream: an
//! interceptor marks what the application acts on (keyframe requests, REMB,
//! receiver reports about a stream) for delivery, since inbound RTCP
//! otherwise ends inside the `webrtc` stack's interceptor chain; a task
//! reads it off the track and turns it into [`PeerEvent`]s.
//!
//! Invariant: only the packets [`is_for_application`] selects reach the
//! track, and a full event queue drops them (another request or report
//! follows soon enough) rather than stall the stack.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};

use crate::bitrate::Feedback;
use crate::webrtc_peer::PeerEvent;

/// Forwards keyframe requests and congestion feedback about stream `ssrc`
/// that arrive on the track to the stream.
pub(crate) fn spawn_rtcp_reader(
    track: Arc<TrackLocalStaticRTP>,
    events: mpsc::Sender<PeerEvent>,
    ssrc: u32,
) {
    tokio::spawn(async move {
        // `poll` ends when the track is unbound (the connection closed).
        while let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await {
            let keyframe = packets
                .iter()
                .any(|p| is_keyframe_request(p.as_ref()))
                .then_some(PeerEvent::KeyframeRequested);
            let feedback = Feedback::from_rtcp(&packets, ssrc);
            if feedback.is_some_and(|f| f.remb_bps.is_some()) {
                // The browser's estimate arrives: the proof, from outside,
                // that the negotiated `goog-remb` is in use.
                metrics::counter!("deskgate_media_remb_received_total").increment(1);
            }
            let feedback = feedback.map(PeerEvent::Feedback);
            // A full queue drops the message: another request or report
            // follows soon enough.
            for event in [keyframe, feedback].into_iter().flatten() {
                if events.try_send(event).is_err() && events.is_closed() {
                    return;
                }
            }
        }
    });
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// RTCP the stream acts on: keyframe requests, REMB, and receiver reports
/// with report blocks (the stack routes a compound packet to a track by the
/// first packet's destination, which an empty report lacks).
fn is_for_application(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    is_keyframe_request(packet)
        || any.is::<ReceiverEstimatedMaximumBitrate>()
        || any
            .downcast_ref::<ReceiverReport>()
            .is_some_and(|rr| !rr.reports.is_empty())
}

/// Interceptor that marks inbound keyframe requests and congestion feedback
/// ([`is_for_application`]) for delivery to the application: inbound RTCP
/// otherwise ends inside the interceptor chain, and the encoder would never
/// hear that a viewer needs a keyframe or has less bandwidth.
#[derive(Default)]
pub(crate) struct FeedbackForApplication {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackForApplication {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut message: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &message.message.packet {
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| is_for_application(p.as_ref()))
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

impl Interceptor for FeedbackForApplication {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_application_gets_keyframe_requests_remb_and_reports_about_streams() {
        use rtc::rtcp::reception_report::ReceptionReport;
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        };
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate: 1e6,
            ssrcs: vec![2],
        };
        let report = ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(is_for_application(&pli));
        assert!(is_for_application(&remb));
        assert!(is_for_application(&report));
        assert!(!is_for_application(&ReceiverReport::default()));
    }
}
