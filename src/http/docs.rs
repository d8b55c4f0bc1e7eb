//! The OpenAPI 3.1 document of the user and admin API, generated from the
//! handlers' own `#[utoipa::path]` attributes, and served at
//! `GET /api/v1/openapi.json` only with `DESKGATE_DOCS_ENABLED=true`
//! (DESIGN §8: no API docs unless enabled).

use axum::Json;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api::TOKEN_COOKIE;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The API, as the handlers declare it.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "deskgate",
        description = "Rent GPU desktops to browser users who pay with an Ethereum wallet. \
                       Errors are RFC 9457 application/problem+json with a stable `type`."
    ),
    paths(
        super::api::nonce,
        super::api::verify,
        super::api::logout,
        super::api::deposit,
        super::account::deposits,
        super::account::pricing,
        super::account::quote,
        super::account::statement,
        super::sessions::profiles,
        super::sessions::account,
        super::sessions::claim,
        super::sessions::show,
        super::sessions::stop,
        super::sessions::heartbeat,
        super::sessions::ticket,
        super::sessions::events,
        super::media::vnc,
        super::media::webrtc,
        super::admin::sessions,
        super::admin::stop_session,
        super::admin::gpus,
        super::admin::drain,
        super::admin::adjust_credit,
        super::admin::audit_log,
    ),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

/// Declares the three ways a request is authorised.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(TOKEN_COOKIE))),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("DESKGATE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Json(ApiDoc::openapi()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_route_is_documented_with_its_methods() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/api/v1/auth/nonce", "post"),
            ("/api/v1/deposits", "get"),
            ("/api/v1/deposits", "post"),
            ("/api/v1/sessions", "post"),
            ("/api/v1/sessions/{id}", "delete"),
            ("/api/v1/sessions/{id}/tickets", "post"),
            ("/api/v1/admin/credit", "post"),
            ("/api/v1/quote", "get"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is missing from the document"
            );
        }
        assert_eq!(paths.len(), 22, "paths: {:?}", paths.keys());
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert!(schemes.contains_key("bearer") && schemes.contains_key("admin"));
        assert!(
            doc["components"]["schemas"]
                .as_object()
                .unwrap()
                .contains_key("ClaimRequest")
        );
    }
}
