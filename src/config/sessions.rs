//! The sessions part: the rhythm of a running desktop session — how often it
//! is billed, how long it survives without a browser showing presence, and
//! how long without input (idle culling).
//!
//! Invariants: billing and presence are whole seconds above 0; the idle
//! timeout is whole seconds, 0 meaning off.

use std::time::Duration;

use super::Problem;
use super::parse::{parse_key, parse_seconds, parse_u64};
use super::raw::RawSettings;

/// Billing and presence of running sessions.
#[derive(Clone, Debug)]
pub struct SessionsConfig {
    /// Time between billing debits.
    pub billing_interval: Duration,
    /// Presence timeout.
    pub presence_timeout: Duration,
    /// Idle timeout (no input on any media stream); `None`: off.
    pub idle_timeout: Option<Duration>,
}

impl SessionsConfig {
    /// Parses the session settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let billing_interval = parse_key(raw, "BILLING_INTERVAL_SECONDS", problems, parse_seconds);
        let presence_timeout = parse_key(raw, "PRESENCE_TIMEOUT_SECONDS", problems, parse_seconds);
        let idle_timeout = parse_key(raw, "IDLE_TIMEOUT_SECONDS", problems, |text| {
            parse_u64(text).map(|secs| (secs > 0).then(|| Duration::from_secs(secs)))
        });
        Some(Self {
            billing_interval: billing_interval?,
            presence_timeout: presence_timeout?,
            idle_timeout: idle_timeout?,
        })
    }
}
