//! The web client: `GET /` (the user's page), `GET /admin` (the operator's;
//! its data needs the admin token, which the page asks for) and
//! `GET /assets/{file}`, built from `web/` (`make web` → `web/dist`),
//! embedded in release builds and read from disk in debug builds
//! (`rust-embed`).
//!
//! Invariants: every answer carries the page's security headers — a CSP
//! without inline script, `frame-ancestors 'none'`, `nosniff`, no referrer;
//! the page itself is revalidated on every load (`no-cache`) so a new
//! release reaches browsers at once, and the content-hashed assets are
//! cached for a year; only files of the build are served, by exact name.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::problem::Problem;

/// The built page (`web/dist`). Missing before the first `make web`: the
/// gate then says how to build it.
#[derive(rust_embed::Embed)]
#[folder = "web/dist/"]
#[allow_missing = true]
struct WebDist;

/// The page's Content-Security-Policy. Scripts and styles only from this
/// origin (Vite emits no inline script); `data:` images for the icons
/// wallets announce (EIP-6963); `connect-src 'self'` covers the API and the
/// same-origin WebSockets; nothing may frame the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     media-src 'self' blob:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How long browsers keep a content-hashed asset.
const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

/// The web client's routes.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| page("index.html")))
        .route("/admin", get(|| page("admin.html")))
        .route("/assets/{file}", get(asset))
}

async fn page(name: &'static str) -> Response {
    match WebDist::get(name) {
        Some(page) => page_response(
            page.data.into_owned(),
            "text/html; charset=utf-8",
            "no-cache",
        ),
        None => page_response(
            NOT_BUILT.as_bytes().to_vec(),
            "text/html; charset=utf-8",
            "no-store",
        ),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some(content_type) = content_type(&file) else {
        return Problem::not_found().into_response();
    };
    match WebDist::get(&format!("assets/{file}")) {
        Some(found) => page_response(found.data.into_owned(), content_type, ASSET_CACHE),
        None => Problem::not_found().into_response(),
    }
}

/// What a browser sees when the binary was built without `web/dist`.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>deskgate</title></head><body><h1>deskgate</h1><p>This gate was built without its web \
client. Build it with <code>make web</code> (or start the gate with <code>make run</code>), \
then rebuild the gate. The API under <code>/api/v1</code> works regardless.</p></body></html>";

/// The content type of a built file, by extension; others are not served.
fn content_type(file: &str) -> Option<&'static str> {
    let extension = file.rsplit_once('.')?.1;
    Some(match extension {
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => return None,
    })
}

fn page_response(body: Vec<u8>, content_type: &'static str, cache: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Whether this binary carries a built page (the start-up log warns when
/// not).
pub fn is_built() -> bool {
    WebDist::get("index.html").is_some()
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> Response {
        routes()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The built page and its script: strict headers on both, the page
    /// revalidated and the hashed script cached for good. Needs `make web`
    /// (debug builds read web/dist from disk).
    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_strict_headers() {
        assert!(
            is_built(),
            "web/dist/index.html is missing: run `make web` (make test does)"
        );
        let page = get("/").await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(header(&page, "cache-control"), "no-cache");
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert_eq!(
            header(&page, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(&page, "x-content-type-options"), "nosniff");
        assert_eq!(header(&page, "x-frame-options"), "DENY");
        let html =
            String::from_utf8(to_bytes(page.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
        assert!(!html.contains("<script>"), "no inline script: {html}");
        let script = html
            .split("src=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the page loads a script");
        assert!(script.starts_with("/assets/index-"), "{script}");

        let asset = get(script).await;
        assert_eq!(asset.status(), StatusCode::OK);
        assert_eq!(header(&asset, "cache-control"), ASSET_CACHE);
        assert_eq!(
            header(&asset, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header(&asset, "x-content-type-options"), "nosniff");

        let admin = get("/admin").await;
        assert_eq!(admin.status(), StatusCode::OK);
        assert_eq!(
            header(&admin, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        for missing in [
            "/assets/nope.js",
            "/assets/.vite",
            "/index.html",
            "/.vite/manifest.json",
        ] {
            let response = get(missing).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
        }
    }

    #[test]
    fn only_known_file_types_are_served() {
        assert_eq!(
            content_type("index-AbC123.js"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            content_type("index-AbC123.css"),
            Some("text/css; charset=utf-8")
        );
        assert_eq!(content_type("manifest.json"), None);
        assert_eq!(content_type("noextension"), None);
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_no_framing() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-eval"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    }
}
