//! The gate's request guards over real HTTP against a real `deskgate serve`
//! (real PostgreSQL, anvil and Docker): body-size limits, per-client rate
//! limits with and without trusted proxies, and CORS for the public origin
//! only. The TLS listener must report peer addresses just as the plain one.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{
    Deskgate, STRONG_SECRET, ScratchDatabase, as_env, free_port, scrape_metrics, serve_env,
    serve_env_with, service_env,
};

/// Any well-formed wallet address: a nonce is issued for whoever asks.
const WALLET: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

/// The default sign-in burst (`DESKGATE_SIGN_IN_RATE_BURST`).
const SIGN_IN_BURST: usize = 5;

/// The default claim burst (`DESKGATE_CLAIM_RATE_BURST`).
const CLAIM_BURST: usize = 10;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A gate on a scratch database of its own; `extra` settings on top.
struct GateProcess {
    process: Deskgate,
    db: Option<ScratchDatabase>,
    base: String,
    origin: String,
    http: reqwest::Client,
}

impl GateProcess {
    async fn start(tag: &str, extra: &[(&'static str, &str)]) -> Self {
        let db = ScratchDatabase::migrated(tag).await;
        let port = free_port();
        let origin = format!("http://localhost:{port}");
        let mut env = serve_env_with(port, &db.url, &service_env("DESKGATE_RPC_URL"));
        env.push(("DESKGATE_PUBLIC_URL", origin.clone()));
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let mut process = Deskgate::spawn(&["serve"], &as_env(&env));
        let http = client();
        let base = format!("http://127.0.0.1:{port}");
        process.wait_ready(&http, &format!("{base}/healthz")).await;
        Self {
            process,
            db: Some(db),
            base,
            origin,
            http,
        }
    }

    /// `POST /api/v1/auth/nonce`, claiming to be forwarded for `forwarded_for`.
    async fn nonce(&self, forwarded_for: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/api/v1/auth/nonce", self.base))
            .json(&json!({ "address": WALLET }));
        if let Some(value) = forwarded_for {
            request = request.header("x-forwarded-for", value);
        }
        request.send().await.unwrap()
    }

    /// Asks for nonces until refused; returns how many were answered 200
    /// first, and the refusal. Fails if anything else comes back.
    async fn nonces_until_refused(
        &self,
        forwarded_for: Option<&str>,
    ) -> (usize, reqwest::Response) {
        let mut allowed = 0;
        for _ in 0..50 {
            let response = self.nonce(forwarded_for).await;
            match response.status() {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => return (allowed, response),
                other => panic!(
                    "nonce answered {other}: {}\n{}",
                    response.text().await.unwrap_or_default(),
                    self.process.output()
                ),
            }
        }
        panic!("50 nonces in a row were never rate limited");
    }

    async fn stop(mut self) {
        drop(self.process);
        if let Some(db) = self.db.take() {
            db.drop_it().await;
        }
    }
}

/// Checks a 429: problem+json of type `rate-limited` and a `Retry-After` of
/// whole seconds no longer than one token's refill (6 s at 10/min).
async fn assert_rate_limited(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:deskgate:problem:rate-limited");
    assert_eq!(problem["status"], 429);
}

// Migrating the scratch database blocks: it needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread")]
async fn oversize_bodies_rate_limits_and_cors_without_a_trusted_proxy() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let gate = GateProcess::start(
        "api_limits_direct",
        &[
            ("DESKGATE_MAX_BODY_BYTES", "4096"),
            ("DESKGATE_METRICS_ADDR", &metrics_addr),
        ],
    )
    .await;
    let nonce_url = format!("{}/api/v1/auth/nonce", gate.base);

    // (a) A declared oversize JSON body is refused before it is read, and
    // takes nothing from the sign-in bucket.
    for _ in 0..SIGN_IN_BURST + 1 {
        let oversized = gate
            .http
            .post(&nonce_url)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"address": "{WALLET}", "pad": "{}"}}"#,
                "x".repeat(8192)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            oversized.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = oversized.json().await.unwrap();
        assert_eq!(problem["type"], "urn:deskgate:problem:payload-too-large");
    }

    // (b) One client hammering sign-in gets its burst, then 429.
    let (allowed, refused) = gate.nonces_until_refused(None).await;
    assert!(
        (SIGN_IN_BURST..=SIGN_IN_BURST + 1).contains(&allowed),
        "{allowed} nonces before the first 429"
    );
    assert_rate_limited(refused).await;
    // X-Forwarded-For from a peer that is not a trusted proxy is not believed.
    for forwarded_for in ["203.0.113.9", "198.51.100.1, 203.0.113.10"] {
        assert_rate_limited(gate.nonce(Some(forwarded_for)).await).await;
    }

    // Claims have their own bucket: the exhausted sign-in one does not count,
    // and they are limited in turn (401 here: no token, but counted).
    let mut claims_allowed = 0;
    let refused = loop {
        let response = gate
            .http
            .post(format!("{}/api/v1/sessions", gate.base))
            .json(&json!({ "profile": "1gpu" }))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        claims_allowed += 1;
        assert!(claims_allowed <= CLAIM_BURST + 1, "claims never limited");
    };
    assert!(claims_allowed >= CLAIM_BURST, "{claims_allowed} claims");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));

    // Refusals are counted per endpoint class, never per address.
    let metrics = scrape_metrics(&metrics_addr).await;
    for class in ["sign_in", "claim"] {
        let line = format!("deskgate_http_rate_limited_total{{endpoint=\"{class}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    // (c) CORS: a preflight from the public origin is answered for it...
    let preflight = |origin: &str| {
        gate.http
            .request(reqwest::Method::OPTIONS, &nonce_url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let response = preflight(&gate.origin).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        gate.origin.as_str()
    );
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
    // ...and one from anywhere else gets no CORS headers at all.
    for origin in ["http://evil.example", "http://localhost:1", "null"] {
        let response = preflight(origin).await.unwrap();
        let cors: Vec<_> = response
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{origin}: {cors:?}");
    }
    // A page on the public origin may read why it was refused.
    let refused = gate
        .http
        .post(&nonce_url)
        .header("origin", &gate.origin)
        .json(&json!({ "address": WALLET }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        gate.origin.as_str()
    );
    assert_eq!(
        refused.headers()["access-control-expose-headers"],
        "retry-after"
    );

    // No API docs unless DESKGATE_DOCS_ENABLED says so.
    let docs = gate
        .http
        .get(format!("{}/api/v1/openapi.json", gate.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::NOT_FOUND);

    gate.stop().await;
}

// Migrating the scratch database blocks: it needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let gate = GateProcess::start(
        "api_limits_proxied",
        &[("DESKGATE_TRUSTED_PROXIES", "127.0.0.1/32")],
    )
    .await;

    let (allowed, refused) = gate.nonces_until_refused(Some("203.0.113.1")).await;
    assert!((SIGN_IN_BURST..=SIGN_IN_BURST + 1).contains(&allowed));
    assert_rate_limited(refused).await;
    // The client is the right-most entry: what the proxy saw, not what the
    // client wrote before it.
    assert_rate_limited(gate.nonce(Some("192.0.2.77, 203.0.113.1")).await).await;

    // A body streamed without Content-Length passes the declared-size check
    // and is cut off by the body limit while the handler reads it: still a
    // 413, not "malformed JSON". (Its own forwarded client, so no bucket
    // above is touched.)
    let status = chunked_post(
        &gate.base,
        "/api/v1/auth/nonce",
        "203.0.113.50",
        &format!(
            r#"{{"address": "{WALLET}", "pad": "{}"}}"#,
            "x".repeat(100_000)
        ),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    // Another forwarded client, and the proxy itself, are not limited by it.
    for forwarded_for in [Some("203.0.113.2"), Some("203.0.113.1, 203.0.113.3"), None] {
        let response = gate.nonce(forwarded_for).await;
        assert_eq!(response.status(), StatusCode::OK, "{forwarded_for:?}");
    }
    // Garbage from the proxy is charged to the proxy's own address: once it
    // is refused, so is the proxy asking for itself.
    let (_, refused) = gate.nonces_until_refused(Some("not-an-address")).await;
    assert_rate_limited(refused).await;
    assert_rate_limited(gate.nonce(None).await).await;

    gate.stop().await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) over
/// a raw socket; returns the response's status line.
async fn chunked_post(base: &str, path: &str, forwarded_for: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         X-Forwarded-For: {forwarded_for}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(8192) {
        request.push_str(&format!("{:x}\r\n", chunk.len()));
        request.push_str(std::str::from_utf8(chunk).unwrap());
        request.push_str("\r\n");
    }
    request.push_str("0\r\n\r\n");
    // The gate may answer and close before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    text.lines().next().unwrap_or_default().to_owned()
}

/// Writes a self-signed certificate for localhost; returns (cert, key) paths
/// and the certificate's PEM.
fn self_signed(dir: &std::path::Path) -> (String, String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
        cert.cert.pem(),
    )
}

#[tokio::test]
async fn the_tls_listener_knows_the_peer_address_too() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = self_signed(dir.path());
    let port = free_port();
    let mut env = serve_env(port);
    env.extend([
        ("DESKGATE_TLS_CERT", cert),
        ("DESKGATE_TLS_KEY", key),
        ("DESKGATE_PUBLIC_URL", format!("https://localhost:{port}")),
        ("DESKGATE_ADMIN_TOKEN", STRONG_SECRET.into()),
        (
            "DESKGATE_SESSION_IMAGE",
            format!("deskgate/desktop@sha256:{}", "ab".repeat(32)),
        ),
        ("DESKGATE_TRUSTED_PROXIES", "127.0.0.1/32".into()),
    ]);
    // The production posture refuses the development database password; the
    // claim limit runs before any database work, so an unreachable database
    // with a strong password will do.
    env.retain(|(k, _)| *k != "DESKGATE_DATABASE_URL");
    env.push((
        "DESKGATE_DATABASE_URL",
        format!("postgres://tls_test:{STRONG_SECRET}@127.0.0.1:1/deskgate"),
    ));
    let mut process = Deskgate::spawn(&["serve"], &as_env(&env));
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    process.wait_ready(&https, &format!("{base}/healthz")).await;

    let claim = |forwarded_for: &'static str| {
        https
            .post(format!("{base}/api/v1/sessions"))
            .header("x-forwarded-for", forwarded_for)
            .json(&json!({ "profile": "1gpu" }))
            .send()
    };
    let mut allowed = 0;
    loop {
        let response = claim("203.0.113.1").await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        allowed += 1;
        assert!(allowed <= CLAIM_BURST + 1, "claims never limited");
    }
    assert!(allowed >= CLAIM_BURST, "{allowed}");
    // Only a known peer (127.0.0.1, trusted) makes the header count: without
    // the peer address this client would share the first one's bucket.
    let other = claim("203.0.113.2").await.unwrap();
    assert_ne!(
        other.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        process.output()
    );
}

/// The `deskgate_http_*` series in a scrape, without their values.
fn http_series(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| line.starts_with("deskgate_http_"))
        .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

/// Requests no client needs to be signed in for: made-up methods on a real
/// route, and real and made-up methods on made-up paths. Each round sends
/// every kind, so the label combinations a round can reach are all reached
/// by the first one.
async fn junk_requests(gate: &GateProcess, count: usize, round: usize) {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(|i| {
            let made_up = format!("CARD{round}X{i}");
            let method = reqwest::Method::from_bytes(made_up.as_bytes()).unwrap();
            let (method, path) = match i % 3 {
                0 => (method, "/api/v1/pricing".to_string()),
                1 => (reqwest::Method::GET, format!("/api/v1/r{round}x{i}")),
                _ => (method, format!("/x{round}/{i}")),
            };
            let request = gate
                .http
                .request(method, format!("{}{path}", gate.base))
                .send();
            async move { request.await.expect("the gate answers").status() }
        })
        .buffer_unordered(32)
        .for_each(|status| async move {
            assert!(status.is_client_error(), "a made-up request got {status}");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let gate = GateProcess::start(
        "api_limits_metric_labels",
        &[("DESKGATE_METRICS_ADDR", &metrics_addr)],
    )
    .await;
    junk_requests(&gate, 300, 1).await;
    let first = http_series(&scrape_metrics(&metrics_addr).await);
    junk_requests(&gate, 9_700, 2).await;
    let metrics = scrape_metrics(&metrics_addr).await;
    let after = http_series(&metrics);
    eprintln!(
        "deskgate_http series after 300 requests: {}, after 10,000: {}",
        first.len(),
        after.len()
    );
    assert!(
        first.iter().any(|s| s.contains(r#"method="other""#)),
        "made-up methods are counted as `other`: {first:#?}"
    );
    assert_eq!(first, after, "10,000 made-up requests added series");
    assert!(
        !metrics.contains("CARD") && !metrics.contains("/x2/"),
        "a request's method or path became a label value"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_method_a_route_does_not_take_gets_a_405_problem_naming_what_it_does() {
    let gate = GateProcess::start("api_limits_405", &[]).await;
    for (method, path, allow) in [
        (reqwest::Method::PUT, "/api/v1/pricing", "GET,HEAD"),
        (reqwest::Method::GET, "/api/v1/sessions", "POST"),
        (reqwest::Method::OPTIONS, "/api/v1/pricing", "GET,HEAD"),
        (reqwest::Method::DELETE, "/healthz", "GET,HEAD"),
    ] {
        let response = gate
            .http
            .request(method.clone(), format!("{}{path}", gate.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:deskgate:problem:method-not-allowed");
        assert_eq!(problem["status"], 405);
        assert_eq!(
            problem["detail"],
            "the Allow header lists the methods this path answers"
        );
    }
    gate.stop().await;
}
