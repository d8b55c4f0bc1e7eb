//! The auth part: who may call the gate — how long a wallet's sign-in token
//! lives, and the bearer token of the admin API.
//!
//! Invariants: the admin API exists only when its token is set; how strong
//! the token must be is a posture check (stricter with TLS on). The token
//! between gate and launchers is the launcher part's.

use std::time::Duration;

use super::Problem;
use super::parse::{parse_key, parse_seconds, secret};
use super::raw::RawSettings;
use crate::platform::secret::Secret;

/// Sign-in and admin access.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Sign-in token lifetime.
    pub token_ttl: Duration,
    /// Admin API token; the admin API exists only when set.
    pub admin_token: Option<Secret>,
}

impl AuthConfig {
    /// Parses the auth settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let token_ttl = parse_key(raw, "TOKEN_TTL_SECONDS", problems, parse_seconds);
        Some(Self {
            token_ttl: token_ttl?,
            admin_token: secret(raw, "ADMIN_TOKEN"),
        })
    }
}
