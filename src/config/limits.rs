//! The limits part: what one connection, one request, and one client may
//! cost the gate — the header deadline and size, the connection caps, the
//! largest body, the longest a request may run, and the per-client rate
//! limits ([`Quota`]) on sign-in and session claims.
//!
//! [`Quota`] lives here rather than in `http::rate_limit`, which enforces it,
//! so that `config` does not depend on `http`.
//!
//! Invariants: a body limit is at least 1024 bytes; a quota's rate and burst
//! are each 1 to 100000; a request head limit is 8192 (hyper's least read
//! buffer) to 1 MiB; connection caps are at least 1 and the per-client cap
//! is no more than the total.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::Problem;
use super::parse::{parse_key, parse_seconds};
use super::raw::RawSettings;
use crate::platform::server::ConnectionLimits;

/// How many requests a client may make: `per_minute` sustained, up to
/// `burst` at once after being idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Sustained requests per minute.
    pub per_minute: NonZeroU32,
    /// Requests allowed back to back from a full bucket.
    pub burst: NonZeroU32,
}

impl Quota {
    /// Time one request's token takes to come back.
    pub fn emission_interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.get()
    }

    /// How far ahead of now a client's arrival time may run: a full bucket.
    pub fn burst_window(self) -> Duration {
        self.emission_interval() * self.burst.get()
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/min burst {}", self.per_minute, self.burst)
    }
}

/// Per-request and per-client limits.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// What a connection may cost before it sends a request.
    pub connections: ConnectionLimits,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Per-request time limit.
    pub request_timeout: Duration,
    /// Per-client limit on the sign-in endpoints.
    pub sign_in_quota: Quota,
    /// Per-client limit on session claims.
    pub claim_quota: Quota,
}

impl LimitsConfig {
    /// Parses the limits, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let p = &mut *problems;
        let max_body_bytes = parse_key(raw, "MAX_BODY_BYTES", p, |t| match t.parse::<usize>() {
            Ok(n) if n >= 1024 => Ok(n),
            _ => Err(format!("`{t}` is not a byte count of at least 1024")),
        });
        let request_timeout = parse_key(raw, "REQUEST_TIMEOUT_SECONDS", p, parse_seconds);
        let sign_in_quota = parse_quota(raw, "SIGN_IN_RATE_PER_MINUTE", "SIGN_IN_RATE_BURST", p);
        let claim_quota = parse_quota(raw, "CLAIM_RATE_PER_MINUTE", "CLAIM_RATE_BURST", p);
        let connections = parse_connection_limits(raw, p);
        // Every setting here has a default: `None` means a recorded problem.
        Some(Self {
            connections: connections?,
            max_body_bytes: max_body_bytes?,
            request_timeout: request_timeout?,
            sign_in_quota: sign_in_quota?,
            claim_quota: claim_quota?,
        })
    }
}

/// The connection limits: header deadline and size, per-client and total
/// caps.
fn parse_connection_limits(
    raw: &RawSettings,
    problems: &mut Vec<Problem>,
) -> Option<ConnectionLimits> {
    let p = &mut *problems;
    let header_timeout = parse_key(raw, "HTTP_HEADER_TIMEOUT_SECONDS", p, parse_seconds);
    let max_header_bytes = parse_key(raw, "HTTP_MAX_HEADER_BYTES", p, |t| {
        match t.parse::<usize>() {
            Ok(n) if (8192..=1 << 20).contains(&n) => Ok(n),
            _ => Err(format!("`{t}` is not a byte count from 8192 to 1048576")),
        }
    });
    let count = |t: &str| match t.parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("`{t}` is not a whole number from 1 to 1000000")),
    };
    let max_per_client = parse_key(raw, "MAX_CONNECTIONS_PER_CLIENT", p, count);
    let max_total = parse_key(raw, "MAX_CONNECTIONS", p, count);
    let (max_per_client, max_total) = (max_per_client?, max_total?);
    if max_per_client > max_total {
        p.push(Problem::new(
            "MAX_CONNECTIONS_PER_CLIENT",
            format!(
                "{max_per_client} is more than DESKGATE_MAX_CONNECTIONS ({max_total}); a client cannot hold more connections than the gate does"
            ),
        ));
        return None;
    }
    Some(ConnectionLimits {
        header_timeout: header_timeout?,
        max_header_bytes: max_header_bytes?,
        max_per_client,
        max_total,
    })
}

/// A rate limit from its two settings: requests per minute and burst, each
/// a whole number from 1 to 100000.
fn parse_quota(
    raw: &RawSettings,
    per_minute_key: &'static str,
    burst_key: &'static str,
    problems: &mut Vec<Problem>,
) -> Option<Quota> {
    let count = |t: &str| match t.parse::<NonZeroU32>() {
        Ok(n) if n.get() <= 100_000 => Ok(n),
        _ => Err(format!("`{t}` is not a whole number from 1 to 100000")),
    };
    let per_minute = parse_key(raw, per_minute_key, problems, count);
    let burst = parse_key(raw, burst_key, problems, count);
    Some(Quota {
        per_minute: per_minute?,
        burst: burst?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{env, variables};
    use crate::config::{Role, load};

    #[test]
    fn rate_limits_default_and_are_checked() {
        let config = load(None, env(&[]), Role::Serve).config.expect("config");
        assert_eq!(config.limits.sign_in_quota.to_string(), "10/min burst 5");
        assert_eq!(config.limits.claim_quota.to_string(), "30/min burst 10");

        let loaded = load(
            None,
            env(&[
                ("DESKGATE_SIGN_IN_RATE_PER_MINUTE", "120"),
                ("DESKGATE_CLAIM_RATE_BURST", "1"),
            ]),
            Role::Serve,
        );
        let config = loaded.config.expect("config");
        assert_eq!(config.limits.sign_in_quota.to_string(), "120/min burst 5");
        assert_eq!(config.limits.claim_quota.to_string(), "30/min burst 1");

        let loaded = load(
            None,
            env(&[
                ("DESKGATE_SIGN_IN_RATE_BURST", "0"),
                ("DESKGATE_CLAIM_RATE_PER_MINUTE", "lots"),
            ]),
            Role::Serve,
        );
        assert!(loaded.config.is_none());
        assert_eq!(
            variables(&loaded.problems),
            [
                "DESKGATE_SIGN_IN_RATE_BURST",
                "DESKGATE_CLAIM_RATE_PER_MINUTE"
            ]
        );
    }
}
