//! The gate's HTTP surface: the API's routes, and the guards every request
//! passes (client address, CORS, body limit, time limit, rate limits,
//! metrics).
//!
//! # Files and layers
//!
//! Handler files, one per resource area, each with its `routes()` and its
//! part of the OpenAPI document (`Doc`):
//!
//! ```text
//! auth.rs      /api/v1/auth/{nonce,verify,logout}
//! account.rs   /api/v1/account, /api/v1/account/ledger, /api/v1/deposits
//! pricing.rs   /api/v1/pricing, /api/v1/quote
//! sessions.rs  /api/v1/profiles, /api/v1/sessions, /api/v1/sessions/{id}[/heartbeat|/events|/tickets]
//! media.rs     /api/v1/sessions/{id}/{vnc,webrtc}
//! admin.rs     /api/v1/admin/{sessions,gpus,credit,audit}...
//! hosts.rs     /api/v1/admin/hosts[/{name}[/drain]]
//! docs.rs      /api/v1/openapi.json
//! web.rs       /, /admin, /assets/{file}: the pages built from web/
//! ```
//!
//! Imports point one way, down. This file declares every other, assembles
//! the router from the handler files and wraps it in the edge guards; no
//! file imports this one, and no handler file imports another:
//!
//! ```text
//! mod.rs ──▶ all files below
//!   edge guards   cors.rs, client_addr.rs        ──▶ (nothing of http/)
//!                 rate_limit.rs                  ──▶ client_addr, problem
//!   handlers      auth, account, pricing, media  ──▶ extract, state, problem
//!                 sessions, admin                ──▶ extract, state, problem, session_json
//!                 hosts                          ──▶ extract, state, problem
//!                 docs                           ──▶ extract, state
//!                 web                            ──▶ problem
//!   below them    extract.rs                     ──▶ state, problem
//!                 state.rs                       ──▶ problem
//!                 session_json.rs, problem.rs    ──▶ (nothing of http/)
//!   /healthz      readiness.rs: the dependency checks behind /readyz ──▶ (nothing of http/)
//! ```
//!
//! `state.rs` holds what handlers share ([`state::ApiState`], built by
//! `app::gate`); `extract.rs` who is calling (wallet, admin token, ticket,
//! Origin, session id); `problem.rs` the RFC 9457 errors, with those more
//! than one handler file answers; `session_json.rs` a session record as
//! JSON, which the owner and the operator are shown alike.
//!
//! # Adding a route
//!
//! Only the handler file of its resource area: the handler with its
//! `#[utoipa::path]` (every answer it can give, its problems as
//! `body = Problem`; `docs.rs` adds the edge guards' 408 and 413), a line in
//! that file's `routes()`, and its name in that file's `Doc`. If it needs something new that lives as long as the gate,
//! add that to [`state::ApiState`] (and build it where `app::gate` builds the
//! state). A route on a new path also raises the path count in this file's
//! `every_api_route_is_documented_with_its_methods`, which is there to catch
//! a handler left out of a `Doc`. A new resource area is a new handler file:
//! declare it below, and add its `routes()` to `api_routes` and its `Doc` to
//! [`openapi`].

pub mod account;
pub mod admin;
pub mod auth;
pub mod client_addr;
pub mod cors;
pub mod docs;
pub mod extract;
pub mod hosts;
pub mod media;
pub mod pricing;
pub mod problem;
pub mod rate_limit;
pub mod readiness;
pub mod session_json;
pub mod sessions;
pub mod state;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ipnet::IpNet;
use serde_json::json;
use utoipa::OpenApi;

use crate::config::Config;
use cors::CorsPolicy;
pub use problem::Problem;
use rate_limit::{Quota, RateLimits};
use readiness::Dependency;
use state::ApiState;

/// Per-request limits applied to every route.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Longest a request may run.
    pub request_timeout: Duration,
}

/// What the gate's handlers share.
#[derive(Clone, Debug)]
pub struct GateState {
    /// Dependencies `/readyz` checks.
    pub dependencies: Arc<Vec<Dependency>>,
    /// The user API; `None` without a database.
    pub api: Option<Arc<ApiState>>,
}

/// How the gate treats callers at its edge: which address a request is
/// attributed to, how often an address may sign in or claim, and which
/// browser origin may call the API.
#[derive(Clone, Debug)]
pub struct EdgePolicy {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
    /// Per-client limit on `POST /api/v1/auth/{nonce,verify}`.
    pub sign_in_quota: Quota,
    /// Per-client limit on `POST /api/v1/sessions`.
    pub claim_quota: Quota,
    /// CORS for the public origin only.
    pub cors: CorsPolicy,
}

impl EdgePolicy {
    /// The policy `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        Self {
            trusted_proxies: config.server.trusted_proxies.clone().into(),
            sign_in_quota: config.limits.sign_in_quota,
            claim_quota: config.limits.claim_quota,
            cors: CorsPolicy::for_public_url(&config.server.public_url),
        }
    }
}

/// The gate's router.
pub fn gate_router(state: GateState, limits: Limits, edge: EdgePolicy) -> Router {
    let api = state.api.clone();
    let mut routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route_layer(middleware::from_fn(record_metrics))
        .with_state(state)
        .merge(web::routes().route_layer(middleware::from_fn(record_metrics)));
    if let Some(api) = api {
        routes = routes.merge(api_routes(api).route_layer(middleware::from_fn(record_metrics)));
    }
    let rate_limits = Arc::new(RateLimits::new(edge.sign_in_quota, edge.claim_quota));
    // Layers run outermost (last added) first: the client address is known
    // before anything else runs; CORS headers reach every answer, 413 and
    // 429 included, so a page can read why it was refused; the rate limit
    // runs after the cheap declared-size check and before any body is read.
    let routes = routes.layer(middleware::from_fn_with_state(
        rate_limits,
        rate_limit::enforce,
    ));
    guarded(routes, limits)
        .layer(middleware::from_fn_with_state(
            Arc::new(edge.cors),
            cors::apply,
        ))
        .layer(middleware::from_fn_with_state(
            edge.trusted_proxies,
            client_addr::identify,
        ))
}

/// The user and admin API: every handler file's routes.
fn api_routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .merge(docs::routes(api.clone(), openapi))
        .merge(auth::routes(api.clone()))
        .merge(account::routes(api.clone()))
        .merge(pricing::routes(api.clone()))
        .merge(sessions::routes(api.clone()))
        .merge(media::routes(api.clone()))
        .merge(admin::routes(api.clone()))
        .merge(hosts::routes(api))
}

/// The OpenAPI document: every handler file's `Doc`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    docs::document([
        auth::Doc::openapi(),
        account::Doc::openapi(),
        pricing::Doc::openapi(),
        sessions::Doc::openapi(),
        media::Doc::openapi(),
        admin::Doc::openapi(),
        hosts::Doc::openapi(),
    ])
}

/// The Prometheus scrape service: `GET /metrics` and a 404 problem for
/// anything else. It listens on its own address (`DESKGATE_METRICS_ADDR`).
pub fn metrics_router(prometheus: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .fallback(|| async { Problem::not_found() })
}

/// Wraps `routes` with the guards every deskgate HTTP service uses: a 404
/// problem for unknown paths, a 405 problem for a method a path does not
/// take, the body limit and the time limit.
pub fn guarded(routes: Router, limits: Limits) -> Router {
    routes
        .fallback(|| async { Problem::not_found() })
        .layer(middleware::from_fn(explain_method_not_allowed))
        // Bodies streamed without Content-Length are cut off by the extractors.
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(limits, enforce_limits))
}

/// Rejects declared oversize bodies before any handler runs, and bounds how
/// long a request may take. A WebSocket upgrade answers at once, so the time
/// limit never cuts an open socket.
async fn enforce_limits(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        return Problem::payload_too_large(limits.max_body_bytes).into_response();
    }
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::timeout().into_response(),
    }
}

/// Turns the router's bare 405 (an empty body) into a problem. OPTIONS on
/// an API path lands here too, unless it is a CORS preflight from the public
/// origin (answered by `cors`). The router adds `Allow` after this runs
/// (the layer wraps each route's handlers), so the detail points to it.
async fn explain_method_not_allowed(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
    )
    .detail("the Allow header lists the methods this path answers")
    .into_response()
}

/// Counts requests and their latency per route template (never the raw path,
/// which would make labels unbounded).
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    // Route templates come from this router, never from the request path.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("deskgate_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("deskgate_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: the standard methods by name, anything else (a client
/// may send any token as its method) as `other`, so that no request can add
/// a series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Liveness: the process is up and serving.
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: 200 when every dependency answers, else 503 naming each one
/// that is down.
async fn readyz(State(state): State<GateState>) -> Response {
    let checks = readiness::check_all(&state.dependencies).await;
    let down: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.error.as_deref().unwrap_or("down")))
        .collect();
    for check in &checks {
        metrics::gauge!("deskgate_dependency_up_ratio", "dependency" => check.name.clone())
            .set(if check.ok { 1.0 } else { 0.0 });
    }
    if down.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": checks })),
        )
            .into_response()
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "A dependency is down",
        )
        .detail(down.join("; "))
        .with("checks", json!(checks))
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for made_up in ["CARD1", "card1", "PROPFIND", &"X".repeat(8000)] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("a valid token");
            assert_eq!(method_label(&method), "other", "{made_up:.20}");
        }
    }
    use axum::body::Body;
    use tower::ServiceExt;

    fn limits() -> Limits {
        Limits {
            max_body_bytes: 1024,
            request_timeout: Duration::from_millis(200),
        }
    }

    fn app() -> Router {
        let routes = Router::new()
            .route(
                "/echo",
                axum::routing::post(|body: String| async move { body }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        guarded(routes, limits())
    }

    async fn send(request: Request<Body>) -> Response {
        app().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn declared_oversize_body_gets_413_problem() {
        let request = Request::post("/echo")
            .header(header::CONTENT_LENGTH, "4096")
            .body(Body::from(vec![b'x'; 4096]))
            .unwrap();
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            problem::PROBLEM_JSON
        );
    }

    #[tokio::test]
    async fn streamed_oversize_body_gets_413() {
        let chunks =
            futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 512])));
        let request = Request::post("/echo")
            .body(Body::from_stream(chunks))
            .unwrap();
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn small_body_passes() {
        let request = Request::post("/echo").body(Body::from("hello")).unwrap();
        let response = send(request).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_request_gets_408() {
        let response = send(Request::get("/slow").body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn unknown_path_is_a_404_problem() {
        let response = send(Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            problem::PROBLEM_JSON
        );
    }

    #[tokio::test]
    async fn a_method_the_path_does_not_take_is_a_405_problem_with_allow() {
        for method in [Method::PUT, Method::OPTIONS, Method::GET] {
            let request = Request::builder()
                .method(method.clone())
                .uri("/echo")
                .body(Body::empty())
                .unwrap();
            let response = send(request).await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method}"
            );
            assert_eq!(response.headers()[header::ALLOW], "POST", "{method}");
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                problem::PROBLEM_JSON
            );
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem["type"], "urn:deskgate:problem:method-not-allowed");
            assert_eq!(problem["status"], 405);
            assert_eq!(
                problem["detail"],
                "the Allow header lists the methods this path answers"
            );
        }
    }

    #[test]
    fn every_api_route_is_documented_with_its_methods() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/auth/nonce", "post"),
            ("/api/v1/deposits", "get"),
            ("/api/v1/deposits", "post"),
            ("/api/v1/sessions", "post"),
            ("/api/v1/sessions/{id}", "delete"),
            ("/api/v1/sessions/{id}/tickets", "post"),
            ("/api/v1/sessions/{id}/keep", "post"),
            ("/api/v1/admin/credit", "post"),
            ("/api/v1/admin/hosts", "get"),
            ("/api/v1/admin/hosts/{name}", "delete"),
            ("/api/v1/admin/hosts/{name}/drain", "post"),
            ("/api/v1/quote", "get"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is missing from the document"
            );
        }
        assert_eq!(paths.len(), 26, "paths: {:?}", paths.keys());
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert!(schemes.contains_key("bearer") && schemes.contains_key("admin"));
        assert!(
            doc["components"]["schemas"]
                .as_object()
                .unwrap()
                .contains_key("ClaimRequest")
        );
    }

    // Found by schemathesis (issue 18): signed-in routes did not document
    // their 401, routes that read a body or a query their 400, the edge
    // guards' 408 and 413 were nowhere, and problems had no schema.
    #[test]
    fn every_operation_documents_the_answers_every_route_of_its_kind_gives() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let problem = json!({"$ref": "#/components/schemas/Problem"});
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let at = format!("{method} {path}");
                let responses = operation["responses"].as_object().unwrap();
                let has = |status: &str| responses.contains_key(status);
                assert!(has("408"), "{at}");
                if operation.get("security").is_some() {
                    assert!(has("401"), "{at}");
                }
                if operation.get("requestBody").is_some() {
                    assert!(has("400") && has("413"), "{at}");
                }
                let queries = operation["parameters"].as_array().into_iter().flatten();
                if queries.clone().any(|p| p["in"] == "query") {
                    assert!(has("400"), "{at}");
                }
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"][problem::PROBLEM_JSON]["schema"],
                            problem,
                            "{at} {status}"
                        );
                    }
                }
            }
        }
        let schema = &doc["components"]["schemas"]["Problem"];
        assert_eq!(schema["required"], json!(["type", "title", "status"]));
    }

    // Found by schemathesis: the profiles were documented as an object.
    #[test]
    fn the_profiles_are_documented_as_the_list_they_are() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let answer = &doc["paths"]["/api/v1/profiles"]["get"]["responses"]["200"];
        assert_eq!(
            answer["content"]["application/json"]["schema"]["type"],
            "array"
        );
    }
}
