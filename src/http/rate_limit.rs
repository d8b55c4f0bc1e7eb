//! Per-client rate limits on the endpoints worth abusing: sign-in (each
//! nonce is a database row, each verify may call the chain) and session
//! claims (each may start a container).
//!
//! Each endpoint class has its own [`RateLimiter`]: a GCRA (the token bucket
//! written as one "theoretical arrival time" per client), keyed by client
//! address with IPv6 clients grouped per /64, since one host usually holds a
//! whole /64 and could otherwise walk through it. Memory stays bounded: a
//! client whose bucket has refilled is indistinguishable from a new one and
//! is dropped by a periodic sweep, and past a hard cap on tracked clients the
//! ones nearest to a full bucket are evicted first, so spraying addresses
//! costs the attacker's own buckets, not memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

// The quota is configuration; re-exported for the limiter's callers.
pub use crate::config::Quota;

use super::client_addr::ClientAddr;
use super::problem::Problem;
use crate::platform::server::connections::client_bucket;

/// Most clients one limiter tracks (about 2.6 MiB of table at most).
pub const MAX_TRACKED_CLIENTS: usize = 50_000;

/// How often refilled buckets are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A refused request: when the client may try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Time until the next request would be allowed.
    pub retry_after: Duration,
}

impl Refused {
    /// `retry_after` in whole seconds, rounded up and at least 1, as the
    /// `Retry-After` header wants it.
    pub fn retry_after_secs(self) -> u64 {
        let secs = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        rounded.max(1)
    }
}

/// One endpoint class's limiter: a GCRA per client key.
#[derive(Debug)]
pub struct RateLimiter {
    quota: Quota,
    max_clients: usize,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    /// Each client's theoretical arrival time: its bucket is full again at
    /// this instant. Only instants in the future carry information.
    arrivals: HashMap<IpAddr, Instant>,
    /// When the next sweep of refilled buckets is due.
    next_sweep: Option<Instant>,
}

impl RateLimiter {
    /// A limiter tracking at most [`MAX_TRACKED_CLIENTS`] clients.
    pub fn new(quota: Quota) -> Self {
        Self::with_capacity(quota, MAX_TRACKED_CLIENTS)
    }

    /// A limiter tracking at most `max_clients` clients (at least 1).
    pub fn with_capacity(quota: Quota, max_clients: usize) -> Self {
        Self {
            quota,
            max_clients: max_clients.max(1),
            table: Mutex::new(Table {
                arrivals: HashMap::new(),
                next_sweep: None,
            }),
        }
    }

    /// The quota it enforces.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Takes one request from `client`'s bucket at `now`, or says when the
    /// bucket will have room.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Refused> {
        let key = client_bucket(client);
        let interval = self.quota.emission_interval();
        let window = self.quota.burst_window();
        // A poisoned lock only means another request panicked mid-update;
        // the table is still a valid map of instants.
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if table.next_sweep.is_none_or(|due| now >= due) {
            table.sweep(now);
            table.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        let arrival = table.arrivals.get(&key).map_or(now, |&tat| tat.max(now));
        let next_arrival = arrival + interval;
        let ahead = next_arrival - now;
        if ahead > window {
            return Err(Refused {
                retry_after: ahead - window,
            });
        }
        if !table.arrivals.contains_key(&key) && table.arrivals.len() >= self.max_clients {
            table.make_room(now, self.max_clients);
        }
        table.arrivals.insert(key, next_arrival);
        Ok(())
    }

    /// How many clients it tracks now.
    pub fn tracked_clients(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .arrivals
            .len()
    }
}

impl Table {
    /// Drops clients whose bucket is full again: they are the same as new.
    fn sweep(&mut self, now: Instant) {
        self.arrivals.retain(|_, tat| *tat > now);
    }

    /// Frees room for one more client at the cap: first the refilled ones,
    /// and if every tracked client is still active, the eighth nearest to a
    /// full bucket (losing the least), so the cost of a full scan is spread
    /// over many new clients.
    fn make_room(&mut self, now: Instant, max_clients: usize) {
        self.sweep(now);
        if self.arrivals.len() < max_clients {
            return;
        }
        let evict = (max_clients / 8).max(1);
        let mut by_arrival: Vec<(Instant, IpAddr)> =
            self.arrivals.iter().map(|(k, t)| (*t, *k)).collect();
        by_arrival.select_nth_unstable(evict - 1);
        for (_, key) in &by_arrival[..evict] {
            self.arrivals.remove(key);
        }
        tracing::warn!(
            tracked = self.arrivals.len(),
            evicted = evict,
            "rate limiter at its client cap: evicted the clients nearest to a full bucket"
        );
    }
}

/// Which limit an endpoint falls under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointClass {
    /// `POST /api/v1/auth/nonce` and `POST /api/v1/auth/verify`.
    SignIn,
    /// `POST /api/v1/sessions`.
    Claim,
}

impl EndpointClass {
    /// The class of a request, or `None` for the endpoints not limited.
    /// The routes are static paths and the router matches the raw path, so
    /// comparing it exactly picks the same requests the routes do.
    pub fn of(method: &Method, path: &str) -> Option<Self> {
        if method != Method::POST {
            return None;
        }
        match path {
            "/api/v1/auth/nonce" | "/api/v1/auth/verify" => Some(Self::SignIn),
            "/api/v1/sessions" => Some(Self::Claim),
            _ => None,
        }
    }

    /// The metric label and name used in messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::SignIn => "sign_in",
            Self::Claim => "claim",
        }
    }
}

/// The gate's limiters, one per endpoint class.
#[derive(Debug)]
pub struct RateLimits {
    sign_in: RateLimiter,
    claim: RateLimiter,
}

impl RateLimits {
    /// Limiters with these quotas.
    pub fn new(sign_in: Quota, claim: Quota) -> Self {
        Self {
            sign_in: RateLimiter::new(sign_in),
            claim: RateLimiter::new(claim),
        }
    }

    /// The limiter for `class`.
    pub fn limiter(&self, class: EndpointClass) -> &RateLimiter {
        match class {
            EndpointClass::SignIn => &self.sign_in,
            EndpointClass::Claim => &self.claim,
        }
    }
}

/// Middleware: refuses a limited endpoint's request with 429 once its
/// client is over the quota. Runs after [`super::client_addr::identify`];
/// without it every request counts as `0.0.0.0`.
pub async fn enforce(
    State(limits): State<Arc<RateLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(class) = EndpointClass::of(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
    match limits.limiter(class).check(client, Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            let retry_after_secs = refused.retry_after_secs();
            metrics::counter!("deskgate_http_rate_limited_total", "endpoint" => class.label())
                .increment(1);
            tracing::debug!(
                endpoint = class.label(),
                %client,
                retry_after_secs,
                "rate limited"
            );
            too_many_requests(class, retry_after_secs)
        }
    }
}

/// 429 problem with `Retry-After`.
fn too_many_requests(class: EndpointClass, retry_after_secs: u64) -> Response {
    let mut response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
    )
    .detail(format!(
        "too many {} requests from this address; try again in {retry_after_secs} s",
        class.label().replace('_', "-")
    ))
    .with("retry_after_seconds", json!(retry_after_secs))
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    fn quota(per_minute: u32, burst: u32) -> Quota {
        Quota {
            per_minute: NonZeroU32::new(per_minute).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_is_allowed_then_refused_with_the_wait() {
        // 10/min: one token every 6 s, five at once.
        let limiter = RateLimiter::new(quota(10, 5));
        let start = Instant::now();
        for n in 0..5 {
            assert_eq!(limiter.check(ip("203.0.113.7"), start), Ok(()), "#{n}");
        }
        let refused = limiter.check(ip("203.0.113.7"), start).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(6));
        assert_eq!(refused.retry_after_secs(), 6);
        // A refusal takes no token: the wait does not grow.
        let again = limiter.check(ip("203.0.113.7"), start).unwrap_err();
        assert_eq!(again, refused);
    }

    #[test]
    fn the_bucket_refills_over_time() {
        let limiter = RateLimiter::new(quota(10, 5));
        let start = Instant::now();
        for _ in 0..5 {
            limiter.check(ip("203.0.113.7"), start).unwrap();
        }
        let later = start + Duration::from_millis(5_500);
        let refused = limiter.check(ip("203.0.113.7"), later).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        // One token back after 6 s, and only one.
        let later = start + Duration::from_secs(6);
        assert_eq!(limiter.check(ip("203.0.113.7"), later), Ok(()));
        assert!(limiter.check(ip("203.0.113.7"), later).is_err());
        // After a full window idle, the whole burst again.
        let idle = later + Duration::from_secs(30);
        for _ in 0..5 {
            assert_eq!(limiter.check(ip("203.0.113.7"), idle), Ok(()));
        }
        assert!(limiter.check(ip("203.0.113.7"), idle).is_err());
    }

    #[test]
    fn the_sustained_rate_holds_over_a_long_run() {
        // Requests every second for ten minutes get about 10/min plus the burst.
        let limiter = RateLimiter::new(quota(10, 5));
        let start = Instant::now();
        let allowed = (0..600)
            .filter(|s| {
                limiter
                    .check(ip("203.0.113.7"), start + Duration::from_secs(*s))
                    .is_ok()
            })
            .count();
        assert!((100..=105).contains(&allowed), "{allowed}");
    }

    #[test]
    fn clients_have_their_own_buckets_and_ipv6_goes_by_slash_64() {
        let limiter = RateLimiter::new(quota(10, 1));
        let now = Instant::now();
        assert_eq!(limiter.check(ip("203.0.113.7"), now), Ok(()));
        assert!(limiter.check(ip("203.0.113.7"), now).is_err());
        assert_eq!(limiter.check(ip("203.0.113.8"), now), Ok(()));
        assert_eq!(limiter.check(ip("2001:db8:1:2::1"), now), Ok(()));
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), now).is_err());
        assert_eq!(limiter.check(ip("2001:db8:1:3::1"), now), Ok(()));
        // An IPv4-mapped address is the IPv4 client.
        assert!(limiter.check(ip("::ffff:203.0.113.8"), now).is_err());
    }

    #[test]
    fn refilled_clients_are_swept_out() {
        let limiter = RateLimiter::new(quota(60, 2));
        let start = Instant::now();
        for n in 0..100u8 {
            limiter
                .check(IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)), start)
                .unwrap();
        }
        assert_eq!(limiter.tracked_clients(), 100);
        // Their buckets are full after 1 s; the sweep runs once its interval is up.
        let later = start + SWEEP_INTERVAL;
        limiter.check(ip("203.0.113.7"), later).unwrap();
        assert_eq!(limiter.tracked_clients(), 1);
    }

    #[test]
    fn the_cap_bounds_memory_and_evicts_the_least_informative_clients() {
        let limiter = RateLimiter::with_capacity(quota(10, 5), 16);
        let start = Instant::now();
        // An old client with an empty bucket, then a spray of new addresses.
        for _ in 0..5 {
            limiter.check(ip("203.0.113.7"), start).unwrap();
        }
        for n in 0..1_000u16 {
            let sprayed = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + u32::from(n)));
            let at = start + Duration::from_millis(u64::from(n));
            limiter.check(sprayed, at).unwrap();
            assert!(limiter.tracked_clients() <= 16);
        }
        // The drained client was furthest from a full bucket and is still limited.
        assert!(
            limiter
                .check(ip("203.0.113.7"), start + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn a_refilled_client_makes_room_before_anyone_is_evicted() {
        let limiter = RateLimiter::with_capacity(quota(60, 1), 2);
        let start = Instant::now();
        limiter.check(ip("203.0.113.1"), start).unwrap();
        limiter
            .check(ip("203.0.113.2"), start + Duration::from_millis(1_500))
            .unwrap();
        // At 2 s the first client's bucket is full again; the second's is not.
        let now = start + Duration::from_secs(2);
        limiter.check(ip("203.0.113.3"), now).unwrap();
        assert_eq!(limiter.tracked_clients(), 2);
        assert!(limiter.check(ip("203.0.113.2"), now).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let refused = |ms| Refused {
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(refused(1).retry_after_secs(), 1);
        assert_eq!(refused(999).retry_after_secs(), 1);
        assert_eq!(refused(1_000).retry_after_secs(), 1);
        assert_eq!(refused(1_001).retry_after_secs(), 2);
        assert_eq!(refused(0).retry_after_secs(), 1);
    }

    #[test]
    fn only_sign_in_and_claims_are_limited() {
        use EndpointClass::*;
        let cases = [
            (Method::POST, "/api/v1/auth/nonce", Some(SignIn)),
            (Method::POST, "/api/v1/auth/verify", Some(SignIn)),
            (Method::POST, "/api/v1/sessions", Some(Claim)),
            (Method::GET, "/api/v1/sessions", None),
            (Method::OPTIONS, "/api/v1/auth/nonce", None),
            (Method::POST, "/api/v1/auth/logout", None),
            (Method::POST, "/api/v1/sessions/abc/heartbeat", None),
        ];
        for (method, path, class) in cases {
            assert_eq!(EndpointClass::of(&method, path), class, "{method} {path}");
        }
    }

    fn app(limits: Arc<RateLimits>) -> Router {
        Router::new()
            .route("/api/v1/auth/nonce", post(|| async { "nonce" }))
            .route("/api/v1/sessions", post(|| async { "claimed" }))
            .route("/api/v1/auth/logout", post(|| async { "bye" }))
            .layer(axum::middleware::from_fn_with_state(limits, enforce))
    }

    fn from(client: &str, path: &str) -> Request<Body> {
        let mut request = Request::post(path).body(Body::empty()).unwrap();
        request.extensions_mut().insert(ClientAddr(ip(client)));
        request
    }

    #[tokio::test]
    async fn over_the_limit_is_a_429_problem_with_retry_after() {
        let limits = Arc::new(RateLimits::new(quota(10, 2), quota(30, 1)));
        let app = app(limits);
        for _ in 0..2 {
            let response = app
                .clone()
                .oneshot(from("203.0.113.7", "/api/v1/auth/nonce"))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let response = app
            .clone()
            .oneshot(from("203.0.113.7", "/api/v1/auth/nonce"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            super::super::problem::PROBLEM_JSON
        );
        let retry_after: u64 = response.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=6).contains(&retry_after), "{retry_after}");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["type"], "urn:deskgate:problem:rate-limited");
        assert_eq!(problem["status"], 429);
        assert_eq!(problem["retry_after_seconds"], retry_after);

        // Another class, another client, and unlimited routes are unaffected.
        for (client, path) in [
            ("203.0.113.7", "/api/v1/sessions"),
            ("203.0.113.8", "/api/v1/auth/nonce"),
            ("203.0.113.7", "/api/v1/auth/logout"),
            ("203.0.113.7", "/api/v1/auth/logout"),
        ] {
            let response = app.clone().oneshot(from(client, path)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{client} {path}");
        }
    }
}
