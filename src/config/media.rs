//! The media part: how desktops reach browsers over WebRTC — the TURN/STUN
//! servers handed to clients and their shared secret, the IP the media UDP
//! sockets bind, and the video frame rate and bitrate.
//!
//! Invariants: unset, the UDP IP is the gate's `BIND` IP for a gate that
//! serves its own desktops (a loopback gate keeps its media on loopback too)
//! and every interface (`0.0.0.0`) for `deskgate launcher`, whose bind
//! address faces the gate, not browsers; the frame rate is 1 to 60 and the
//! bitrate 100 to 50000 kbit/s, kept here in bits per second.

use std::net::{IpAddr, SocketAddr};

use deskgate_media::EncoderChoice;

use super::parse::{comma_list, parse_key, secret};
use super::raw::RawSettings;
use super::{Problem, Role};
use crate::platform::secret::Secret;

/// WebRTC media settings.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// TURN/STUN URLs for WebRTC.
    pub turn_urls: Vec<String>,
    /// TURN REST shared secret.
    pub turn_secret: Option<Secret>,
    /// IP the WebRTC media UDP sockets bind, when set.
    pub udp_ip: Option<IpAddr>,
    /// The gate's `BIND` IP: a gate's default UDP IP.
    gate_ip: IpAddr,
    /// Most video frames per second to a WebRTC viewer.
    pub max_fps: u32,
    /// WebRTC video bitrate to start at, bits per second; 0 = by resolution.
    pub bitrate_bps: u32,
    /// Most the bitrate may rise to, bits per second; 0 = the starting one.
    pub max_bitrate_bps: u32,
    /// Which video encoder.
    pub encoder: EncoderChoice,
    /// Public IPs a 1:1 NAT maps to this host.
    pub public_ips: Vec<IpAddr>,
}

impl MediaConfig {
    /// Parses the media settings, recording every problem; `None` if any.
    /// `bind` is the gate's address, when it parsed: the UDP IP's default.
    pub(super) fn parse(
        raw: &RawSettings,
        bind: Option<SocketAddr>,
        problems: &mut Vec<Problem>,
    ) -> Option<Self> {
        let before = problems.len();
        let p = &mut *problems;
        let udp_ip = parse_key(raw, "WEBRTC_UDP_IP", p, |t| {
            t.parse::<IpAddr>()
                .map_err(|_| format!("`{t}` is not an IP address such as 192.0.2.10 or 0.0.0.0"))
        });
        let max_fps = parse_key(raw, "WEBRTC_MAX_FPS", p, |t| match t.parse::<u32>() {
            Ok(n @ 1..=60) => Ok(n),
            _ => Err(format!("`{t}` is not a frame rate from 1 to 60")),
        });
        let kbps = |t: &str| match t.parse::<u32>() {
            Ok(n @ 100..=50_000) => Ok(n),
            _ => Err(format!("`{t}` is not a bitrate from 100 to 50000 kbit/s")),
        };
        let bitrate_kbps = parse_key(raw, "WEBRTC_BITRATE_KBPS", p, kbps);
        let max_bitrate_kbps = parse_key(raw, "WEBRTC_MAX_BITRATE_KBPS", p, kbps);
        let encoder = parse_key(raw, "WEBRTC_ENCODER", p, |t| {
            t.parse::<EncoderChoice>()
                .map_err(|_| format!("`{t}` is not auto, vp8 or h264-nvenc"))
        });
        let public_ips = parse_key(raw, "WEBRTC_PUBLIC_IPS", p, |t| {
            comma_list(t)
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|_| format!("`{ip}` is not an IP address such as 203.0.113.7"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let turn_urls = parse_key(raw, "TURN_URLS", p, |t| {
            comma_list(t)
                .map(|u| {
                    if u.starts_with("turn:") || u.starts_with("turns:") || u.starts_with("stun:") {
                        Ok(u.to_string())
                    } else {
                        Err(format!("`{u}` is not a turn:, turns: or stun: URL"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();

        if problems.len() > before {
            return None;
        }
        // Every `parse_key` above with a default returned `Some` when no
        // problem was recorded.
        Some(Self {
            turn_urls,
            turn_secret: secret(raw, "TURN_SECRET"),
            udp_ip,
            gate_ip: bind.map_or(IpAddr::from([127, 0, 0, 1]), |b| b.ip()),
            max_fps: max_fps?,
            bitrate_bps: bitrate_kbps.map_or(0, |k| k * 1000),
            max_bitrate_bps: max_bitrate_kbps.map_or(0, |k| k * 1000),
            encoder: encoder?,
            public_ips,
        })
    }
}

impl MediaConfig {
    /// The IP the media UDP sockets of `role` bind (see the module docs).
    pub fn udp_ip(&self, role: Role) -> IpAddr {
        self.udp_ip.unwrap_or(match role {
            Role::Serve => self.gate_ip,
            Role::Launcher => IpAddr::from([0, 0, 0, 0]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::env;
    use crate::config::{Role, load};

    #[test]
    fn webrtc_settings_default_from_bind_and_are_checked() {
        let config = load(None, env(&[]), Role::Serve).config.expect("config");
        assert_eq!(
            config.media.udp_ip(Role::Serve),
            IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(
            config.media.udp_ip(Role::Launcher),
            IpAddr::from([0, 0, 0, 0])
        );
        assert_eq!(
            (config.media.max_fps, config.media.bitrate_bps),
            (30, 0),
            "the bitrate follows the resolution unless set"
        );
        assert_eq!(config.media.encoder, EncoderChoice::Auto);
        assert!(config.media.public_ips.is_empty());
        let config = load(
            None,
            env(&[
                ("DESKGATE_BIND", "192.0.2.7:8080"),
                ("DESKGATE_ALLOW_PUBLIC_BIND", "true"),
                ("DESKGATE_WEBRTC_BITRATE_KBPS", "800"),
            ]),
            Role::Serve,
        )
        .config
        .expect("config");
        assert_eq!(
            config.media.udp_ip(Role::Serve),
            IpAddr::from([192, 0, 2, 7])
        );
        assert_eq!(config.media.bitrate_bps, 800_000);

        let loaded = load(
            None,
            env(&[
                ("DESKGATE_WEBRTC_UDP_IP", "localhost"),
                ("DESKGATE_WEBRTC_MAX_FPS", "0"),
                ("DESKGATE_WEBRTC_BITRATE_KBPS", "99"),
                ("DESKGATE_WEBRTC_MAX_BITRATE_KBPS", "50001"),
                ("DESKGATE_WEBRTC_ENCODER", "h265"),
                ("DESKGATE_WEBRTC_PUBLIC_IPS", "203.0.113.7, gateway"),
            ]),
            Role::Serve,
        );
        let named: Vec<_> = loaded
            .problems
            .iter()
            .map(|p| p.variable.as_str())
            .collect();
        assert_eq!(
            named,
            [
                "DESKGATE_WEBRTC_UDP_IP",
                "DESKGATE_WEBRTC_MAX_FPS",
                "DESKGATE_WEBRTC_BITRATE_KBPS",
                "DESKGATE_WEBRTC_MAX_BITRATE_KBPS",
                "DESKGATE_WEBRTC_ENCODER",
                "DESKGATE_WEBRTC_PUBLIC_IPS",
            ]
        );
        let config = load(
            None,
            env(&[
                ("DESKGATE_WEBRTC_MAX_BITRATE_KBPS", "12000"),
                ("DESKGATE_WEBRTC_ENCODER", "vp8"),
                ("DESKGATE_WEBRTC_PUBLIC_IPS", "203.0.113.7, 2001:db8::7"),
            ]),
            Role::Launcher,
        )
        .config
        .expect("config");
        assert_eq!(config.media.max_bitrate_bps, 12_000_000);
        assert_eq!(config.media.encoder, EncoderChoice::Vp8);
        assert_eq!(
            config.media.public_ips,
            [
                "203.0.113.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
    }
}
