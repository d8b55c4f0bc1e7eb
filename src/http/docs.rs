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
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::extract::TOKEN_COOKIE;
use super::problem::{PROBLEM_JSON, Problem};
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
    components(schemas(Problem)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// The whole document: the handler files' `parts` under the title and the
/// security schemes, with the answers of the edge guards added to every
/// operation.
pub fn document(
    parts: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    for part in parts {
        document.merge(part);
    }
    EdgeResponses.modify(&mut document);
    document
}

/// The answers every route may give whatever its handler does, because the
/// guards `http::guarded` wraps every route in give them (so the handlers'
/// attributes leave them out): 408 when a request runs past the time limit,
/// and 413 when a body is over the limit, for every operation that takes one.
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.entry("408".into()).or_insert_with(|| {
                    problem("the request took longer than the time limit").into()
                });
                if operation.request_body.is_some() {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| problem("the body is over the size limit").into());
                }
            }
        }
    }
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
