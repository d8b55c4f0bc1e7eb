//! Connection admission: how many TCP connections the server holds at once,
//! per client and in all, so that one address cannot take every socket (or
//! file descriptor) the process has.
//!
//! Invariants: every admitted connection holds an [`Admission`], and the
//! counts go down exactly when it is dropped (after an upgraded WebSocket
//! closes, too, since the guard travels inside the stream). The per-client
//! table only holds clients with an open connection, so it is bounded by the
//! total cap. IPv6 clients are counted per /64, like the rate limits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::IpNet;

/// Open connections, as a gauge.
const OPEN_METRIC: &str = "deskgate_http_open_connections";
/// Connections closed at once because a cap was reached, by `reason`.
const REFUSED_METRIC: &str = "deskgate_http_refused_connections_total";

/// The key a client is counted under: IPv4 addresses as they are, IPv6
/// addresses by their /64, since one host usually holds a whole /64 and could
/// otherwise walk through it.
pub fn client_bucket(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Why a connection was closed without being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client already holds its share of connections.
    ClientLimit,
    /// The server holds as many connections as it may.
    TotalLimit,
}

impl Refusal {
    /// The metric label: a closed set.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ClientLimit => "client_limit",
            Refusal::TotalLimit => "total_limit",
        }
    }
}

/// Counts open connections and admits new ones while under both caps.
#[derive(Debug)]
pub struct Admissions {
    per_client: u32,
    total: u32,
    /// Peers counted only against the total (the reverse proxies the gate
    /// trusts: every browser behind them shares their address).
    uncapped: Vec<IpNet>,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: u32,
    by_client: HashMap<IpAddr, u32>,
}

impl Admissions {
    /// Caps of `per_client` connections per client and `total` in all;
    /// `uncapped` peers only count against `total`.
    pub fn new(per_client: u32, total: u32, uncapped: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Self {
            per_client,
            total,
            uncapped,
            open: Mutex::new(Open::default()),
        })
    }

    /// Admits a connection from `peer`, or says which cap it hits.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refusal> {
        let capped = !self.uncapped.iter().any(|net| net.contains(&peer));
        let key = capped.then(|| client_bucket(peer));
        let mut open = self.lock();
        if open.total >= self.total {
            drop(open);
            metrics::counter!(REFUSED_METRIC, "reason" => Refusal::TotalLimit.label()).increment(1);
            return Err(Refusal::TotalLimit);
        }
        if let Some(key) = key {
            let held = open.by_client.entry(key).or_insert(0);
            if *held >= self.per_client {
                drop(open);
                metrics::counter!(REFUSED_METRIC, "reason" => Refusal::ClientLimit.label())
                    .increment(1);
                return Err(Refusal::ClientLimit);
            }
            *held += 1;
        }
        open.total += 1;
        metrics::gauge!(OPEN_METRIC).set(f64::from(open.total));
        Ok(Admission {
            admissions: Arc::clone(self),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.lock().total
    }

    fn release(&self, key: Option<IpAddr>) {
        let mut open = self.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(key) = key
            && let Some(held) = open.by_client.get_mut(&key)
        {
            *held -= 1;
            if *held == 0 {
                open.by_client.remove(&key);
            }
        }
        metrics::gauge!(OPEN_METRIC).set(f64::from(open.total));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // The counts stay consistent under a panic elsewhere: every update
        // is a single step under the lock.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admission {
    admissions: Arc<Admissions>,
    key: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admissions.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_client_gets_its_share_and_no_more() {
        let admissions = Admissions::new(2, 10, Vec::new());
        let first = admissions.admit(ip("192.0.2.1")).expect("first");
        let _second = admissions.admit(ip("192.0.2.1")).expect("second");
        assert_eq!(
            admissions.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::ClientLimit
        );
        // Another client is not affected.
        let _other = admissions.admit(ip("192.0.2.2")).expect("other client");
        drop(first);
        let _again = admissions
            .admit(ip("192.0.2.1"))
            .expect("a place came free");
        assert_eq!(admissions.open(), 3);
    }

    #[test]
    fn the_total_cap_holds_across_clients() {
        let admissions = Admissions::new(5, 3, Vec::new());
        let held: Vec<_> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            .iter()
            .map(|a| admissions.admit(ip(a)).expect("under the cap"))
            .collect();
        assert_eq!(
            admissions.admit(ip("192.0.2.4")).unwrap_err(),
            Refusal::TotalLimit
        );
        drop(held);
        assert_eq!(admissions.open(), 0);
        assert!(admissions.lock().by_client.is_empty(), "no stale entries");
    }

    #[test]
    fn ipv6_clients_are_counted_per_slash_64() {
        let admissions = Admissions::new(1, 10, Vec::new());
        let _a = admissions.admit(ip("2001:db8:1:2::1")).expect("first");
        assert_eq!(
            admissions.admit(ip("2001:db8:1:2::ffff")).unwrap_err(),
            Refusal::ClientLimit,
            "same /64"
        );
        let _b = admissions
            .admit(ip("2001:db8:1:3::1"))
            .expect("another /64");
    }

    #[test]
    fn trusted_proxies_count_only_against_the_total() {
        let proxy: IpNet = "10.0.0.0/8".parse().expect("net");
        let admissions = Admissions::new(1, 3, vec![proxy]);
        let _held: Vec<_> = (0..3)
            .map(|_| admissions.admit(ip("10.1.2.3")).expect("proxy"))
            .collect();
        assert_eq!(
            admissions.admit(ip("10.1.2.3")).unwrap_err(),
            Refusal::TotalLimit
        );
    }
}
