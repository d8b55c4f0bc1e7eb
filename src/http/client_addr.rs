//! Which client a request comes from: the TCP peer, or, when the peer is a
//! proxy we trust, the address that proxy says it forwarded for.
//!
//! `X-Forwarded-For` is written by the client first and appended to by each
//! proxy on the way, so only the entries added by proxies we trust are
//! believable. Reading it from the right and stopping at the first address
//! that is not a trusted proxy gives the nearest hop nobody we trust vouches
//! past; anything further left could have been made up by the client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The header proxies append the address they received a request from to.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The address a request is attributed to (rate limits key on it). Inserted
/// into every request's extensions by [`identify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Middleware: works out the [`ClientAddr`] of each request and stores it in
/// the request's extensions.
///
/// The peer address comes from axum's `ConnectInfo`, which the server sets on
/// both its plain and TLS listeners. A router served without it (an
/// in-process test) attributes every request to `0.0.0.0`, so limits keyed
/// on the client are shared rather than skipped.
pub async fn identify(
    State(trusted_proxies): State<Arc<[IpNet]>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    let client = client_addr(peer, request.headers(), &trusted_proxies);
    request.extensions_mut().insert(ClientAddr(client));
    next.run(request).await
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry that is not a trusted
/// proxy. An entry that is not an address stops the walk at the last trusted
/// hop, since nothing to its left was vouched for.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted_proxies.iter().any(|net| net.contains(addr));
    let mut nearest = peer.to_canonical();
    if !is_trusted(&nearest) {
        return nearest;
    }
    // Several header lines count as one list in order (RFC 9110 §5.3).
    let entries: Vec<Option<&str>> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(text) => text.split(',').map(Some).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    for entry in entries.into_iter().rev() {
        let Some(addr) = entry.and_then(parse_forwarded_entry) else {
            return nearest;
        };
        if !is_trusted(&addr) {
            return addr;
        }
        nearest = addr;
    }
    nearest
}

/// One `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally with a
/// port (`1.2.3.4:5678`, `[2001:db8::1]:443`) or in brackets, as some proxies
/// write it.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let addr = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse::<IpAddr>().ok())
        })?;
    Some(addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn an_untrusted_peers_forwarded_for_is_ignored() {
        let headers = forwarded(&["203.0.113.7"]);
        assert_eq!(
            client_addr(ip("198.51.100.1"), &headers, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_addr(ip("198.51.100.1"), &headers, &[]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_peer_yields_the_right_most_untrusted_entry() {
        // The client made up the left-most entry; the proxy appended the real one.
        let headers = forwarded(&["1.1.1.1, 203.0.113.7"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &headers, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_through() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.5/32"]);
        let headers = forwarded(&["1.1.1.1, 203.0.113.7, 192.168.1.5, 10.1.2.3"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // The same list split across header lines.
        let headers = forwarded(&["1.1.1.1, 203.0.113.7", "192.168.1.5", "10.1.2.3"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &headers, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn only_trusted_hops_yield_the_left_most_of_them() {
        let headers = forwarded(&["10.9.9.9, 10.1.2.3"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &headers, &nets(&["10.0.0.0/8"])),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_the_client() {
        assert_eq!(
            client_addr(ip("10.0.0.2"), &HeaderMap::new(), &nets(&["10.0.0.0/8"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        for value in [
            "unknown",
            "1.1.1.1, not-an-ip",
            "1.1.1.1,",
            "",
            "_hidden",
            "1.1.1.1, 999.1.1.1",
        ] {
            assert_eq!(
                client_addr(ip("10.0.0.2"), &forwarded(&[value]), &trusted),
                ip("10.0.0.2"),
                "{value:?}"
            );
        }
        // Garbage behind a trusted hop stops there, not at the peer.
        assert_eq!(
            client_addr(ip("10.0.0.2"), &forwarded(&["junk, 10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // Garbage to the left of the client does not matter.
        assert_eq!(
            client_addr(ip("10.0.0.2"), &forwarded(&["junk, 203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_header_that_is_not_text_stops_at_the_peer() {
        let mut headers = HeaderMap::new();
        headers.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"1.2.3.4\xff").unwrap(),
        );
        assert_eq!(
            client_addr(ip("10.0.0.2"), &headers, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let trusted = nets(&["10.0.0.0/8"]);
        for (value, client) in [
            ("203.0.113.7:5678", "203.0.113.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            (" 2001:db8::1 ", "2001:db8::1"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
        ] {
            assert_eq!(
                client_addr(ip("10.0.0.2"), &forwarded(&[value]), &trusted),
                ip(client),
                "{value:?}"
            );
        }
        // A dual-stack listener reports IPv4 peers as mapped IPv6 addresses.
        assert_eq!(
            client_addr(
                ip("::ffff:10.0.0.2"),
                &forwarded(&["203.0.113.7"]),
                &trusted
            ),
            ip("203.0.113.7")
        );
    }
}
