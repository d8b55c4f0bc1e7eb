//! `deskgate launcher`: the HTTP service one GPU host runs so that a gate can
//! use its GPUs. Everything but `/healthz` requires the bearer token
//! `DESKGATE_LAUNCHER_TOKEN`, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::gpu::{self, GpuSelection};
use crate::http::{self, Limits, Problem};
use crate::secret::Secret;

/// What the launcher's handlers share.
#[derive(Debug)]
pub struct LauncherState {
    /// The bearer token callers must present.
    pub token: Secret,
    /// Which GPUs this host offers.
    pub gpus: GpuSelection,
}

/// The launcher's router.
pub fn router(state: Arc<LauncherState>, limits: Limits) -> Router {
    let protected = Router::new()
        .route("/v1/gpus", get(list_gpus))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    let routes = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .merge(protected);
    http::guarded(routes, limits)
}

async fn require_token(
    State(state): State<Arc<LauncherState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if state.token.matches(token.as_bytes()) => next.run(request).await,
        _ => Problem::unauthorized().into_response(),
    }
}

/// The host's GPUs, read fresh so utilisation and health are current.
async fn list_gpus(State(state): State<Arc<LauncherState>>) -> Response {
    let selection = state.gpus.clone();
    match tokio::task::spawn_blocking(move || gpu::inventory(&selection)).await {
        Ok(Ok(gpus)) => Json(gpus).into_response(),
        Ok(Err(err)) => Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "gpu-inventory-failed",
            "Cannot read the GPU inventory",
        )
        .detail(err.to_string())
        .into_response(),
        Err(join) => Problem::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail(join.to_string())
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use std::time::Duration;
    use tower::ServiceExt;

    const TOKEN: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

    fn app() -> Router {
        let state = Arc::new(LauncherState {
            token: Secret::new(TOKEN),
            gpus: GpuSelection::Fake(2),
        });
        router(
            state,
            Limits {
                max_body_bytes: 1024,
                request_timeout: Duration::from_secs(5),
            },
        )
    }

    async fn get_gpus(auth: Option<&str>) -> Response {
        let mut request = Request::get("/v1/gpus");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn missing_or_wrong_token_is_401() {
        assert_eq!(get_gpus(None).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            get_gpus(Some("Bearer nope")).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get_gpus(Some(TOKEN)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn right_token_lists_the_gpus() {
        let response = get_gpus(Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let gpus: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(gpus.as_array().unwrap().len(), 2);
        assert_eq!(gpus[1]["uuid"], "fake-1");
    }

    #[tokio::test]
    async fn healthz_needs_no_token() {
        let response = app()
            .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}
