//! RFC 9457 problem details: every error the API returns, and the problems
//! more than one handler file answers with (so each `type` is built in one
//! place and reads the same wherever it comes from).
//!
//! The bottom of `http/`: it imports no other file of it (the launcher
//! service and the server use [`Problem`] too).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::sessions::profiles::PROFILES;

/// Media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error response. `kind` is the stable machine-readable part: clients
/// match on the `type` URI (`urn:deskgate:problem:<kind>`), never on `title`
/// or `detail`.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// Extension members (RFC 9457 §3.2), flattened into the document.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extensions: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Problem {
    /// A problem of `kind` with a human title.
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            type_uri: format!("urn:deskgate:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: None,
            extensions: None,
        }
    }

    /// Adds a human explanation specific to this occurrence.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions
            .get_or_insert_with(Default::default)
            .insert(name.to_string(), value);
        self
    }

    /// 404 for a path or resource that does not exist.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found")
    }

    /// 413 for a body over the limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
        )
        .detail(format!("the body must be at most {limit} bytes"))
    }

    /// 408 for a request that ran past the time limit.
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "Request took too long",
        )
    }

    /// 401 for a missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing or invalid credentials",
        )
    }
}

/// The OpenAPI schema of every problem document: the three members each one
/// has, `detail` when there is one, and any extension member (a rate limit's
/// `retry_after_seconds`, a sign-in refusal's `reason`). Handlers name it as
/// `body = Problem` for their `application/problem+json` responses.
impl utoipa::PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        ObjectBuilder::new()
            .description(Some(
                "RFC 9457 problem details; clients match on `type`, never on `title` or `detail`",
            ))
            .property(
                "type",
                string().pattern(Some("^urn:deskgate:problem:[a-z0-9-]+$")),
            )
            .required("type")
            .property("title", string())
            .required("title")
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(400))
                    .maximum(Some(599)),
            )
            .required("status")
            .property("detail", string())
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to; the
        // only one this API upgrades to is WebSocket.
        if status == StatusCode::UPGRADE_REQUIRED {
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }
}

/// 400 for a body that is not the JSON the endpoint takes, or 413 for one
/// cut off by the body limit.
pub(crate) fn bad_json(rejection: JsonRejection) -> Problem {
    // A body streamed without Content-Length passes the declared-size check
    // and is cut off here, by the body limit: that is a 413, not bad JSON.
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
        )
        .detail(rejection.body_text());
    }
    Problem::new(
        StatusCode::BAD_REQUEST,
        "malformed-json",
        "The request body is not the JSON this endpoint takes",
    )
    .detail(rejection.body_text())
}

/// The problem for a request to a WebSocket route that is not a WebSocket
/// handshake: 426 (with `Upgrade: websocket`) when it does not ask for an
/// upgrade at all, else the status axum's extractor gives the broken
/// handshake (400; 405 for a method other than GET). The socket routes
/// answer it only after their own checks, so a plain request learns no more
/// than a handshake would.
pub(crate) fn not_a_websocket(rejection: WebSocketUpgradeRejection) -> Problem {
    let detail = rejection.body_text();
    match rejection {
        WebSocketUpgradeRejection::InvalidConnectionHeader(_)
        | WebSocketUpgradeRejection::InvalidUpgradeHeader(_)
        | WebSocketUpgradeRejection::ConnectionNotUpgradable(_) => Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket-required",
            "This route only answers a WebSocket handshake",
        ),
        other => Problem::new(
            other.status(),
            "bad-websocket-handshake",
            "The WebSocket handshake is not valid",
        ),
    }
    .detail(detail)
}

/// 400 for a query string the endpoint cannot read.
pub(crate) fn bad_query(rejection: QueryRejection) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "malformed-query",
        "The query string is not what this endpoint takes",
    )
    .detail(rejection.body_text())
}

/// 422 for a profile name that is not in [`PROFILES`]. The title is the
/// caller's: a claim says there is no such profile, a quote keeps the title
/// all its refusals share.
pub(crate) fn unknown_profile(title: &'static str) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown-profile", title).detail(format!(
        "choose one of {}",
        PROFILES.map(|p| p.name).join(", ")
    ))
}

/// A profile name in the OpenAPI document (a claim's body, a quote's
/// query): one of [`PROFILES`], the names whose absence [`unknown_profile`]
/// answers.
pub(crate) struct ProfileName;

impl utoipa::PartialSchema for ProfileName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("a GPU profile (see /api/v1/profiles)"))
            .enum_values(Some(PROFILES.map(|p| p.name)))
            .into()
    }
}

impl utoipa::ToSchema for ProfileName {}

/// 404 for a session that does not exist or is another wallet's (the two
/// read the same, so ids cannot be probed).
pub(crate) fn unknown_session() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "unknown-session", "No such session")
}

/// 503 when the ledger or the session store does not answer.
pub(crate) fn ledger_unavailable() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger-unavailable",
        "Credit cannot be read right now",
    )
    .detail("the database did not answer; try again")
}

/// 503 when the scheduler actor does not answer.
pub(crate) fn scheduler_silent() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "scheduler-silent",
        "The scheduler did not answer",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_rfc9457_with_flattened_extensions() {
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
            .detail("postgresql is down")
            .with("checks", serde_json::json!([]));
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "urn:deskgate:problem:not-ready",
                "title": "Not ready",
                "status": 503,
                "detail": "postgresql is down",
                "checks": [],
            })
        );
    }

    /// What axum's `WebSocketUpgrade` makes of a GET with `headers`.
    async fn upgrade_rejection(headers: &[(&str, &str)]) -> WebSocketUpgradeRejection {
        use axum::extract::FromRequestParts;
        use axum::extract::ws::WebSocketUpgrade;
        let mut request = axum::http::Request::get("/socket");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .expect_err("not a complete handshake")
    }

    // Found by schemathesis (issue 18): the socket routes answered a plain
    // request with axum's text/plain 400, before any check of their own.
    #[tokio::test]
    async fn a_request_that_is_no_websocket_handshake_is_a_problem() {
        let response = not_a_websocket(upgrade_rejection(&[]).await).into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::UPGRADE], "websocket");

        let keyless = upgrade_rejection(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
        ])
        .await;
        let response = not_a_websocket(keyless).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn response_carries_the_problem_media_type() {
        let response = Problem::payload_too_large(10).into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn unknown_profile_is_one_type_whoever_answers_it() {
        let claim = serde_json::to_value(unknown_profile("No such profile")).unwrap();
        let quote = serde_json::to_value(unknown_profile("This quote cannot be made")).unwrap();
        assert_eq!(claim["type"], "urn:deskgate:problem:unknown-profile");
        assert_eq!(claim["status"], 422);
        assert_eq!(claim["type"], quote["type"]);
        assert_eq!(claim["detail"], quote["detail"]);
        assert_eq!(
            claim["detail"],
            format!("choose one of {}", PROFILES.map(|p| p.name).join(", "))
        );
    }
}
