//! CORS for exactly one origin: the gate's public URL. The sign-in token
//! travels in a cookie, so credentials are allowed, which is only safe for an
//! origin we serve ourselves; requests from any other origin get no CORS
//! headers at all and the browser keeps their responses from the page.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use url::Url;

/// Methods the API uses.
const ALLOWED_METHODS: &str = "GET, POST, DELETE";
/// Request headers a page may send beyond the safelisted ones.
const ALLOWED_HEADERS: &str = "authorization, content-type";
/// Response headers a page may read beyond the safelisted ones: the wait
/// after a 429.
const EXPOSED_HEADERS: &str = "retry-after";
/// How long a browser may cache a preflight answer, seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The one origin allowed to call the API from a browser page.
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    allowed_origin: Option<HeaderValue>,
}

impl CorsPolicy {
    /// Allows the origin of `public_url` (scheme, host and port, as browsers
    /// send it in `Origin`).
    pub fn for_public_url(public_url: &Url) -> Self {
        let origin = public_url.origin();
        // An opaque origin (not http/https) serialises as "null", which a
        // sandboxed page could send: never allow it.
        let allowed_origin = origin
            .is_tuple()
            .then(|| HeaderValue::from_str(&origin.ascii_serialization()).ok())
            .flatten();
        Self { allowed_origin }
    }

    fn allows(&self, request: &Request) -> bool {
        match (&self.allowed_origin, request.headers().get(header::ORIGIN)) {
            (Some(allowed), Some(origin)) => allowed == origin,
            _ => false,
        }
    }
}

/// Middleware: answers preflights from the allowed origin, and adds the CORS
/// headers to its other requests' responses. Everything else passes through
/// untouched (a foreign preflight reaches the router and gets its 404/405).
pub async fn apply(
    State(policy): State<Arc<CorsPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = policy.allows(&request);
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if allowed && preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    // The answer depends on Origin, so caches must keep them apart.
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if allowed && let Some(origin) = &policy.allowed_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if !preflight {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED_HEADERS),
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    const PUBLIC: &str = "https://desk.example:8443";

    fn app() -> Router {
        let policy = Arc::new(CorsPolicy::for_public_url(
            &Url::parse("https://desk.example:8443/app/").unwrap(),
        ));
        Router::new()
            .route("/api/v1/auth/nonce", post(|| async { "nonce" }))
            .layer(axum::middleware::from_fn_with_state(policy, apply))
    }

    fn preflight(origin: &str) -> Request<Body> {
        Request::options("/api/v1/auth/nonce")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .unwrap()
    }

    fn cors_headers(response: &Response) -> Vec<String> {
        response
            .headers()
            .keys()
            .map(|name| name.as_str().to_owned())
            .filter(|name| name.starts_with("access-control-"))
            .collect()
    }

    #[tokio::test]
    async fn a_preflight_from_the_public_origin_is_answered() {
        let response = app().oneshot(preflight(PUBLIC)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let headers = response.headers();
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PUBLIC);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(
            headers[header::ACCESS_CONTROL_ALLOW_METHODS]
                .to_str()
                .unwrap()
                .contains("POST")
        );
        assert!(
            headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("content-type")
        );
        assert_eq!(headers[header::VARY], "origin");
    }

    #[tokio::test]
    async fn other_origins_get_no_cors_headers() {
        for origin in [
            "https://evil.example",
            "https://desk.example",
            "http://desk.example:8443",
            "https://desk.example:8443.evil.example",
            "null",
        ] {
            let response = app().oneshot(preflight(origin)).await.unwrap();
            assert!(cors_headers(&response).is_empty(), "{origin}");
            assert_ne!(response.status(), StatusCode::NO_CONTENT, "{origin}");
            let request = Request::post("/api/v1/auth/nonce")
                .header(header::ORIGIN, origin)
                .body(Body::empty())
                .unwrap();
            let response = app().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert!(cors_headers(&response).is_empty(), "{origin}");
        }
    }

    #[tokio::test]
    async fn a_simple_request_from_the_public_origin_gets_credentials_and_retry_after() {
        let request = Request::post("/api/v1/auth/nonce")
            .header(header::ORIGIN, PUBLIC)
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], PUBLIC);
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(
            headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "retry-after"
        );
    }

    #[tokio::test]
    async fn a_request_without_origin_is_untouched() {
        let request = Request::post("/api/v1/auth/nonce")
            .body(Body::empty())
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(cors_headers(&response).is_empty());
    }

    #[test]
    fn a_default_port_is_left_out_of_the_origin() {
        let policy = CorsPolicy::for_public_url(&Url::parse("https://desk.example:443/").unwrap());
        assert_eq!(
            policy.allowed_origin.unwrap(),
            HeaderValue::from_static("https://desk.example")
        );
    }
}
