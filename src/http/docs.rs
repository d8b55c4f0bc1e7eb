//! The OpenAPI 3.1 document of the user and admin API, generated from the
//! handlers' own `#[utoipa::path]` attributes, and served at
//! `GET /api/v1/openapi.json` only with `DESKGATE_DOCS_ENABLED=true`
//! (DESIGN §8: no API docs unless enabled).
//!
//! Each handler file declares its own paths (its `Doc`, next to its
//! `routes()`); `openapi()` in `http/mod.rs` gathers them into [`document`],
//! which adds the title and the security schemes. So this file names no
//! handler, and no handler file imports another to be documented.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::extract::TOKEN_COOKIE;
use super::state::ApiState;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// What the document says of the API as a whole; the paths come from the
/// handler files.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "deskgate",
        description = "Rent GPU desktops to browser users who pay with an Ethereum wallet. \
                       Errors are RFC 9457 application/problem+json with a stable `type`."
    ),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The whole document: the handler files' `parts` under the title and the
/// security schemes.
pub fn document(
    parts: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    for part in parts {
        document.merge(part);
    }
    document
}

/// `GET /api/v1/openapi.json`, serving what `document` builds, if the docs
/// are enabled; no route at all otherwise (a 404 like any unknown path).
pub fn routes(api: Arc<ApiState>, document: fn() -> utoipa::openapi::OpenApi) -> Router {
    if !api.docs_enabled {
        return Router::new();
    }
    Router::new().route(OPENAPI_PATH, get(move || openapi_json(document)))
}

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

/// Built per request, as it is small and rarely asked for.
async fn openapi_json(document: fn() -> utoipa::openapi::OpenApi) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Json(document()))
}
