//! The SDP text the WebRTC adapter reads and writes itself, beside what the
//! `webrtc` stack does: whether an offer receives the encoder's codec
//! (matched by format parameters too, as the stack's media engine matches
//! them), and the answer's extra candidates for a public address the host
//! is reached at through a 1:1 NAT.
//!
//! Invariants: reading never fails on unknown lines (browsers add many);
//! writing only adds `a=candidate` lines, each right after the host
//! candidate it maps, so the answer stays one the stack produced.

use std::net::IpAddr;

/// The H.264 profile the answer registers: Constrained Baseline, whose
/// `profile-level-id` starts with these two bytes (the level is free).
const H264_PROFILE: &str = "42e0";

/// Is there, in `offer_sdp`, a payload type of the codec of `mime_type`
/// (`video/VP8`, `video/H264`) that the answer can take? For H.264 that is
/// one with `packetization-mode=1` and a Constrained Baseline
/// `profile-level-id`, the parameters the answer registers.
pub(crate) fn offers_codec(offer_sdp: &str, mime_type: &str) -> bool {
    let codec = mime_type.trim_start_matches("video/").to_ascii_lowercase();
    let h264 = codec == "h264";
    // `a=rtpmap:<pt> VP8/90000`: the codec name is what follows `video/`.
    rtpmaps(offer_sdp)
        .filter(|(_, encoding)| {
            encoding
                .to_ascii_lowercase()
                .starts_with(&format!("{codec}/"))
        })
        .any(|(pt, _)| !h264 || h264_fmtp_matches(fmtp(offer_sdp, pt).unwrap_or_default()))
}

/// `(payload type, encoding)` of each `a=rtpmap` line.
fn rtpmaps(sdp: &str) -> impl Iterator<Item = (&str, &str)> {
    sdp.lines().filter_map(|line| {
        let rest = line.trim_end().strip_prefix("a=rtpmap:")?;
        let mut parts = rest.split_whitespace();
        Some((parts.next()?, parts.next()?))
    })
}

/// The format parameters of payload type `pt`.
fn fmtp<'a>(sdp: &'a str, pt: &str) -> Option<&'a str> {
    sdp.lines().find_map(|line| {
        let rest = line.trim_end().strip_prefix("a=fmtp:")?;
        let (line_pt, params) = rest.split_once(' ')?;
        (line_pt == pt).then_some(params.trim())
    })
}

fn h264_fmtp_matches(params: &str) -> bool {
    let value = |key: &str| {
        params.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.eq_ignore_ascii_case(key).then_some(v.trim())
        })
    };
    value("packetization-mode") == Some("1")
        && value("profile-level-id")
            .is_some_and(|id| id.len() == 6 && id[..4].eq_ignore_ascii_case(H264_PROFILE))
}

/// Adds to `answer_sdp`, after each UDP host candidate of the same address
/// family, a server-reflexive candidate with the same port at each of
/// `public_ips`: what a 1:1 NAT maps to this host. A browser outside tries
/// the public address; its checks arrive on the host candidate's socket,
/// where the stack answers them as any other.
pub(crate) fn add_public_candidates(answer_sdp: &str, public_ips: &[IpAddr]) -> String {
    if public_ips.is_empty() {
        return answer_sdp.to_owned();
    }
    let mut out = String::with_capacity(answer_sdp.len() + 128 * public_ips.len());
    let mut added = 0;
    for line in answer_sdp.split_inclusive('\n') {
        out.push_str(line);
        let Some(host) = HostCandidate::parse(line.trim_end()) else {
            continue;
        };
        for public in public_ips {
            if public.is_ipv4() != host.ip.is_ipv4() || *public == host.ip {
                continue;
            }
            added += 1;
            // RFC 8445 priority: server-reflexive type preference 100, the
            // lowest local preference, component 1 (RTP and RTCP muxed).
            let priority = (100u32 << 24) | (added << 8) | (256 - host.component.min(255));
            out.push_str(&format!(
                "a=candidate:dgnat{added} {component} udp {priority} {public} {port} typ srflx raddr {ip} rport {port}\r\n",
                component = host.component,
                port = host.port,
                ip = host.ip,
            ));
        }
    }
    out
}

/// The parts of a UDP host candidate line the NAT mapping needs.
struct HostCandidate {
    component: u32,
    ip: IpAddr,
    port: u16,
}

impl HostCandidate {
    /// `a=candidate:<foundation> <component> udp <priority> <ip> <port> typ host …`
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("a=candidate:")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 8
            || !fields[2].eq_ignore_ascii_case("udp")
            || fields[6] != "typ"
            || fields[7] != "host"
        {
            return None;
        }
        Some(Self {
            component: fields[1].parse().ok()?,
            ip: fields[4].parse().ok()?,
            port: fields[5].parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(lines: &[&str]) -> String {
        let mut sdp = vec![
            "v=0",
            "o=- 1 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98",
        ];
        sdp.extend_from_slice(lines);
        sdp.join("\r\n") + "\r\n"
    }

    #[test]
    fn h264_is_offered_only_with_packetization_mode_1_constrained_baseline() {
        let pm1 = media(&[
            "a=rtpmap:96 VP8/90000",
            "a=rtpmap:97 H264/90000",
            "a=fmtp:97 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ]);
        assert!(offers_codec(&pm1, "video/H264"));
        assert!(offers_codec(&pm1, "video/VP8"));
        let pm0 = media(&[
            "a=rtpmap:97 H264/90000",
            "a=fmtp:97 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
            "a=rtpmap:98 H264/90000",
            "a=fmtp:98 packetization-mode=1;profile-level-id=640c1f",
        ]);
        assert!(!offers_codec(&pm0, "video/H264"), "pm 0 and High only");
        let bare = media(&["a=rtpmap:97 H264/90000"]);
        assert!(!offers_codec(&bare, "video/H264"), "no fmtp: pm 0");
        assert!(!offers_codec(&pm0, "video/VP8"));
    }

    #[test]
    fn public_addresses_are_added_after_each_host_candidate_of_their_family() {
        let answer = media(&[
            "a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host",
            "a=candidate:2 1 udp 2130706431 fd00::5 50001 typ host",
            "a=candidate:3 1 udp 1694498815 198.51.100.9 61000 typ srflx raddr 10.0.0.5 rport 50000",
            "a=end-of-candidates",
        ]);
        let ips: Vec<IpAddr> = vec!["203.0.113.7".parse().unwrap()];
        let out = add_public_candidates(&answer, &ips);
        let lines: Vec<&str> = out.lines().collect();
        let host = lines
            .iter()
            .position(|l| l.contains("10.0.0.5 50000 typ host"))
            .unwrap();
        assert_eq!(
            lines[host + 1],
            "a=candidate:dgnat1 1 udp 1677722111 203.0.113.7 50000 typ srflx raddr 10.0.0.5 rport 50000"
        );
        assert_eq!(out.matches("203.0.113.7").count(), 1, "IPv4 only: {out}");
        assert!(out.ends_with("a=end-of-candidates\r\n"));
        assert_eq!(add_public_candidates(&answer, &[]), answer);
    }
}
