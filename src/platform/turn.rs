//! ICE servers for WebRTC clients, with short-lived TURN credentials.
//!
//! The scheme is coturn's `use-auth-secret` (the "TURN REST API" draft):
//! the username is `<expiry as unix seconds>:<label>` and the password is
//! `base64(HMAC-SHA1(DESKGATE_TURN_SECRET, username))`. The TURN server checks
//! both with the same shared secret and refuses the pair after the expiry, so
//! what a browser is handed stops working on its own; no static credential is
//! ever handed out.

use std::time::{Duration, SystemTime};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

use crate::platform::clock;
use crate::platform::secret::Secret;

/// How long handed-out TURN credentials stay valid.
pub const TURN_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

/// One entry of an `RTCConfiguration.iceServers` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The ICE servers for one client: STUN URLs as they are, TURN URLs with a
/// credential for `label` (e.g. a session id) valid `ttl` from `now`. TURN
/// URLs are left out when there is no secret: without credentials a
/// `use-auth-secret` server would refuse them anyway.
pub fn ice_servers(
    urls: &[String],
    secret: Option<&Secret>,
    label: &str,
    now: SystemTime,
    ttl: Duration,
) -> Vec<IceServer> {
    let (turn, stun): (Vec<_>, Vec<_>) = urls.iter().cloned().partition(|u| u.starts_with("turn"));
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(IceServer {
            urls: stun,
            username: None,
            credential: None,
        });
    }
    if let (false, Some(secret)) = (turn.is_empty(), secret) {
        let expiry = clock::since_epoch(now + ttl).as_secs();
        let username = format!("{expiry}:{label}");
        let credential = turn_password(secret.expose().as_bytes(), &username);
        servers.push(IceServer {
            urls: turn,
            username: Some(username),
            credential: Some(credential),
        });
    }
    servers
}

/// `base64(HMAC-SHA1(secret, username))`.
fn turn_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn the_password_matches_openssl() {
        // printf '1700000000:3f2a' | openssl dgst -sha1 -hmac north-wind-secret -binary | base64
        assert_eq!(
            turn_password(b"north-wind-secret", "1700000000:3f2a"),
            "w2nKBwTIhLi3BFhLhPtc34hRf98="
        );
    }

    #[test]
    fn turn_urls_get_an_expiring_credential_and_stun_urls_none() {
        let urls = vec![
            "stun:stun.example.org:3478".to_string(),
            "turn:turn.example.org:3478?transport=udp".to_string(),
            "turns:turn.example.org:5349".to_string(),
        ];
        let secret = Secret::new("north-wind-secret");
        let now = UNIX_EPOCH + Duration::from_secs(1_699_996_400);
        let servers = ice_servers(&urls, Some(&secret), "3f2a", now, TURN_CREDENTIAL_TTL);
        assert_eq!(
            servers,
            vec![
                IceServer {
                    urls: vec![urls[0].clone()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec![urls[1].clone(), urls[2].clone()],
                    username: Some("1700000000:3f2a".into()),
                    credential: Some("w2nKBwTIhLi3BFhLhPtc34hRf98=".into()),
                },
            ]
        );
        // Without a secret no TURN URL is handed out.
        assert_eq!(
            ice_servers(&urls, None, "3f2a", now, TURN_CREDENTIAL_TTL),
            servers[..1]
        );
    }
}
