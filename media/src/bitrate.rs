//! Bitrate adaptation from the browser's congestion feedback.
//!
//! The browser reports on the video it receives in RTCP: a receiver
//! estimated maximum bitrate (REMB, Chromium's own delay-based estimate,
//! sent because the answer negotiates `goog-remb` and our packets carry no
//! transport-wide sequence numbers; see `docs/webrtc-choice.md`), and the
//! fraction of packets lost in its receiver reports. [`Feedback::from_rtcp`]
//! picks those out of a compound packet; [`BitrateController`] turns them
//! into the encoder's target:
//!
//! - the REMB is a ceiling, taken at once when it is lower;
//! - loss over 10 % cuts a loss-based rate by half the loss; loss under 2 %
//!   raises it by 8 % a report (the loss controller of Google congestion
//!   control, which Chromium's sender runs too);
//! - the target is the lower of the two, between a floor and the cap;
//! - smoothing: a decrease of 5 % or more applies at once, an increase of
//!   5 % or more waits a second since the last change and grows by at most
//!   25 %, so the encoder is not reconfigured on every report.
//!
//! Invariant: [`BitrateController::target`] always lies in
//! `[floor, cap]`; every change it announces moves the target by at least
//! 5 %, or onto a bound.

use std::time::{Duration, Instant};

use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;

/// Loss above which the rate is cut (GCC: 10 %).
const HIGH_LOSS: f64 = 0.10;
/// Loss below which the rate may grow (GCC: 2 %).
const LOW_LOSS: f64 = 0.02;
/// Growth per low-loss report.
const LOSS_GROWTH: f64 = 1.08;
/// Changes smaller than this share of the target are not announced.
const DEADBAND: f64 = 0.05;
/// The least time between an announced change and an increase.
const INCREASE_EVERY: Duration = Duration::from_secs(1);
/// The most one increase multiplies the target by.
const MAX_INCREASE_STEP: f64 = 1.25;

/// What one RTCP compound packet says about the sent stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Feedback {
    /// The browser's estimate of the bitrate it can receive (REMB).
    pub remb_bps: Option<u64>,
    /// Packets lost since the last report, in 256ths of those expected (the
    /// report block's own unit), from the block about our stream.
    pub fraction_lost: Option<u8>,
}

impl Feedback {
    /// [`Feedback::fraction_lost`] as a share, 0..1.
    pub fn loss(&self) -> Option<f64> {
        self.fraction_lost.map(|l| f64::from(l) / 256.0)
    }
}

impl Feedback {
    /// The REMB and loss about stream `ssrc` in `packets`; `None` when they
    /// hold neither.
    pub fn from_rtcp(packets: &[Box<dyn rtcp::Packet>], ssrc: u32) -> Option<Self> {
        let mut feedback = Self::default();
        for packet in packets {
            let any = packet.as_any();
            if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                // An empty SSRC list means "every stream of this sender".
                if remb.ssrcs.is_empty() || remb.ssrcs.contains(&ssrc) {
                    feedback.remb_bps = Some(remb.bitrate.max(0.0) as u64);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>()
                && let Some(block) = rr.reports.iter().find(|r| r.ssrc == ssrc)
            {
                feedback.fraction_lost = Some(block.fraction_lost);
            }
        }
        (feedback != Self::default()).then_some(feedback)
    }
}

/// Turns feedback into the encoder's target bitrate; see the module
/// documentation for the rules.
#[derive(Clone, Debug)]
pub struct BitrateController {
    floor: u32,
    cap: u32,
    target: u32,
    /// The loss controller's rate.
    loss_based: f64,
    /// The last REMB.
    remb: Option<u64>,
    last_change: Instant,
}

impl BitrateController {
    /// A controller starting at `start`, kept within `[floor, cap]`.
    pub fn new(start: u32, floor: u32, cap: u32, now: Instant) -> Self {
        let floor = floor.min(cap);
        let target = start.clamp(floor, cap);
        Self {
            floor,
            cap,
            target,
            loss_based: f64::from(target),
            remb: None,
            last_change: now,
        }
    }

    /// The current target.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Moves the bounds (the picture's size changed); returns the new
    /// target if it had to move.
    pub fn set_bounds(&mut self, floor: u32, cap: u32, now: Instant) -> Option<u32> {
        self.floor = floor.min(cap);
        self.cap = cap;
        self.loss_based = self.loss_based.clamp(f64::from(self.floor), f64::from(cap));
        let target = self.target.clamp(self.floor, cap);
        (target != self.target).then(|| self.announce(target, now))
    }

    /// Takes one report; returns the new target when the encoder should
    /// change.
    pub fn on_feedback(&mut self, feedback: Feedback, now: Instant) -> Option<u32> {
        let (floor, cap) = (f64::from(self.floor), f64::from(self.cap));
        if let Some(remb) = feedback.remb_bps {
            self.remb = Some(remb);
        }
        if let Some(loss) = feedback.loss() {
            if loss > HIGH_LOSS {
                // From the rate actually in use, not a rate that grew
                // past it while the REMB held the target down.
                self.loss_based = f64::from(self.target) * (1.0 - 0.5 * loss);
            } else if loss < LOW_LOSS {
                self.loss_based = self.loss_based * LOSS_GROWTH + 1_000.0;
            }
            self.loss_based = self.loss_based.clamp(floor, cap);
        }
        let ceiling = self.remb.map_or(cap, |r| r as f64);
        let wanted = self.loss_based.min(ceiling).clamp(floor, cap);
        let current = f64::from(self.target);
        // The bounds themselves are reachable through the deadband.
        let lower = wanted <= current * (1.0 - DEADBAND) || (wanted <= floor && current > floor);
        let higher = wanted >= current * (1.0 + DEADBAND) || (wanted >= cap && current < cap);
        if lower {
            return Some(self.announce(wanted as u32, now));
        }
        if higher && now.saturating_duration_since(self.last_change) >= INCREASE_EVERY {
            let step = wanted.min(current * MAX_INCREASE_STEP);
            return Some(self.announce(step as u32, now));
        }
        None
    }

    fn announce(&mut self, target: u32, now: Instant) -> u32 {
        let direction = if target < self.target { "down" } else { "up" };
        metrics::counter!("deskgate_media_bitrate_changes_total", "direction" => direction)
            .increment(1);
        tracing::debug!(
            from = self.target,
            to = target,
            "video bitrate target changed"
        );
        self.target = target;
        self.last_change = now;
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::reception_report::ReceptionReport;

    const OURS: u32 = 0x1234_5678;
    const MBIT: u32 = 1_000_000;

    fn remb(bps: f32, ssrcs: Vec<u32>) -> Box<dyn rtcp::Packet> {
        Box::new(ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate: bps,
            ssrcs,
        })
    }

    fn rr(ssrc: u32, lost_256ths: u8) -> Box<dyn rtcp::Packet> {
        Box::new(ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc,
                fraction_lost: lost_256ths,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    #[test]
    fn feedback_is_read_from_remb_and_our_report_block() {
        let compound = vec![
            rr(OURS, 64),
            remb(2_500_000.0, vec![OURS]),
            Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: OURS,
            }) as Box<dyn rtcp::Packet>,
        ];
        assert_eq!(
            Feedback::from_rtcp(&compound, OURS),
            Some(Feedback {
                remb_bps: Some(2_500_000),
                fraction_lost: Some(64),
            })
        );
        // Another stream's report and estimate are not ours.
        let theirs = vec![rr(7, 128), remb(1e6, vec![7])];
        assert_eq!(Feedback::from_rtcp(&theirs, OURS), None);
        // A REMB naming no stream applies to all.
        let all = vec![remb(3e6, vec![])];
        assert_eq!(
            Feedback::from_rtcp(&all, OURS).unwrap().remb_bps,
            Some(3_000_000)
        );
    }

    fn fb(remb: Option<u32>, loss: Option<f64>) -> Feedback {
        Feedback {
            remb_bps: remb.map(u64::from),
            fraction_lost: loss.map(|l| (l * 256.0).round().min(255.0) as u8),
        }
    }

    #[test]
    fn a_lower_remb_applies_at_once_and_a_higher_one_ramps_up() {
        let t0 = Instant::now();
        let mut c = BitrateController::new(6 * MBIT, 300_000, 6 * MBIT, t0);
        assert_eq!(c.on_feedback(fb(Some(2 * MBIT), None), t0), Some(2 * MBIT));
        // Within the deadband, or too soon after the change: nothing.
        assert_eq!(c.on_feedback(fb(Some(2_050_000), None), t0), None);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(c.on_feedback(fb(Some(5 * MBIT), None), t1), None);
        // A second on: up by at most 25 % a step, never above the cap.
        let mut now = t0 + Duration::from_secs(1);
        let mut steps = Vec::new();
        while let Some(t) = c.on_feedback(fb(Some(20 * MBIT), None), now) {
            steps.push(t);
            now += Duration::from_secs(1);
        }
        assert_eq!(steps[0], 2_500_000);
        assert_eq!(*steps.last().unwrap(), 6 * MBIT);
        assert!(
            steps
                .windows(2)
                .all(|w| w[1] > w[0] && w[1] <= w[0] * 5 / 4 + 1)
        );
        assert_eq!(c.target(), 6 * MBIT);
    }

    #[test]
    fn heavy_loss_cuts_light_loss_holds_and_none_recovers_slowly() {
        let t0 = Instant::now();
        let mut c = BitrateController::new(4 * MBIT, 300_000, 4 * MBIT, t0);
        // 25 % loss: down by 12.5 %.
        assert_eq!(c.on_feedback(fb(None, Some(0.25)), t0), Some(3_500_000));
        // 5 % loss: hold.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(c.on_feedback(fb(None, Some(0.05)), later), None);
        // No loss: +8 % a report, announced once past the deadband.
        let mut now = later;
        let mut changes = 0;
        for _ in 0..20 {
            now += Duration::from_secs(1);
            if c.on_feedback(fb(None, Some(0.0)), now).is_some() {
                changes += 1;
            }
        }
        assert_eq!(c.target(), 4 * MBIT, "recovered to the cap");
        assert!(changes >= 1);
    }

    #[test]
    fn the_target_stays_between_floor_and_cap() {
        let t0 = Instant::now();
        let mut c = BitrateController::new(10 * MBIT, 300_000, 6 * MBIT, t0);
        assert_eq!(c.target(), 6 * MBIT, "the start is capped");
        assert_eq!(c.on_feedback(fb(Some(10_000), None), t0), Some(300_000));
        for _ in 0..10 {
            assert!(c.on_feedback(fb(None, Some(0.9)), t0).is_none());
        }
        assert_eq!(c.target(), 300_000);
        // A smaller picture lowers the cap, and the target with it.
        let mut big = BitrateController::new(6 * MBIT, 300_000, 6 * MBIT, t0);
        assert_eq!(big.set_bounds(300_000, 3 * MBIT, t0), Some(3 * MBIT));
        assert_eq!(big.set_bounds(300_000, 4 * MBIT, t0), None);
    }
}
