//! The sessions part: the rhythm of a running desktop session — how often it
//! is billed, and how long it survives without a browser showing presence.
//!
//! Invariants: both are whole seconds above 0.

use std::time::Duration;

use super::Problem;
use super::parse::{parse_key, parse_seconds};
use super::raw::RawSettings;

/// Billing and presence of running sessions.
#[derive(Clone, Debug)]
pub struct SessionsConfig {
    /// Time between billing debits.
    pub billing_interval: Duration,
    /// Presence timeout.
    pub presence_timeout: Duration,
}

impl SessionsConfig {
    /// Parses the session settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let billing_interval = parse_key(raw, "BILLING_INTERVAL_SECONDS", problems, parse_seconds);
        let presence_timeout = parse_key(raw, "PRESENCE_TIMEOUT_SECONDS", problems, parse_seconds);
        Some(Self {
            billing_interval: billing_interval?,
            presence_timeout: presence_timeout?,
        })
    }
}
