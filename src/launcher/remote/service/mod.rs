//! `deskgate launcher`: the HTTP service one GPU host runs so that a gate can
//! use its GPUs (DESIGN.md §6). Everything but `/healthz` requires the bearer
//! token `DESKGATE_LAUNCHER_TOKEN`, compared in constant time.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/gpus` | `{host, gpus}`: the host's name and GPU inventory, read fresh |
//! | `GET /v1/sessions` | running session containers |
//! | `POST /v1/sessions` | launch: `{session, host, gpu_indices}` |
//! | `DELETE /v1/sessions/{id}` | stop and remove (idempotent) |
//! | `GET /v1/events?since=<unix ms>` | WebSocket of container exits, JSON text frames |
//! | `GET /v1/sessions/{id}/vnc`, `…/webrtc` | the session's desktop, see [`media`] |
//!
//! The launch spec names *what* to run, never *how*: user, capabilities,
//! mounts, devices, network and limits are the launcher's own settings. A spec
//! carrying any field that would ask for more (`privileged`, `cap_add`,
//! `binds`, …) is refused with 403 rather than ignored, so a compromised or
//! confused gate learns at once that it cannot widen a container.
//!
//! Exits go through one watcher into an [`ExitLog`]: a broadcast for live
//! sockets plus the most recent exits, which a client reconnecting with
//! `since` gets replayed first, so a dropped socket loses nothing.

mod media;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use deskgate_actors::ports::{ContainerExit, LaunchSpec, Launcher, SessionId};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::config::GpuSelection;
use crate::http::extract::bearer_token;
use crate::http::{self, Limits, Problem};
use crate::launcher::desktop::DesktopMedia;
use crate::launcher::gpu;
use crate::launcher::remote::wire::{
    ContainerView, ExitEvent, HostInventory, LaunchRequest, LaunchResponse,
};
use crate::platform::clock;
use crate::platform::secret::Secret;

/// Spec fields that would ask for more than the launcher grants; refused
/// by name with 403.
const PRIVILEGE_FIELDS: [&str; 20] = [
    "privileged",
    "cap_add",
    "capabilities",
    "user",
    "binds",
    "mounts",
    "volumes",
    "devices",
    "device_requests",
    "network",
    "network_mode",
    "pid_mode",
    "ipc_mode",
    "security_opt",
    "host_config",
    "image",
    "command",
    "env",
    "runtime",
    "sysctls",
];

/// Exits kept for replay to reconnecting clients.
const EXIT_LOG_CAPACITY: usize = 1024;
/// Live exits a slow socket may fall behind by before it is closed (it then
/// reconnects with `since` and is replayed).
const EXIT_BROADCAST_CAPACITY: usize = 256;

/// Recent exits and a broadcast of new ones.
#[derive(Debug)]
pub struct ExitLog {
    recent: Mutex<VecDeque<ExitEvent>>,
    live: broadcast::Sender<ExitEvent>,
}

impl Default for ExitLog {
    fn default() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(EXIT_LOG_CAPACITY)),
            live: broadcast::channel(EXIT_BROADCAST_CAPACITY).0,
        }
    }
}

impl ExitLog {
    /// Records an exit seen now and tells every live subscriber.
    pub fn record(&self, exit: &ContainerExit) {
        let event = ExitEvent {
            session: exit.session.0,
            code: exit.code,
            oom: exit.oom,
            at_ms: clock::unix_millis(),
        };
        // Send under the lock so that `subscribe` sees each event exactly
        // once: either in its snapshot or on its receiver.
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == EXIT_LOG_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.live.send(event);
    }

    /// The recorded exits at or after `since_ms`, and a receiver of later ones.
    pub fn subscribe(&self, since_ms: u64) -> (Vec<ExitEvent>, broadcast::Receiver<ExitEvent>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = self.live.subscribe();
        let replay = recent
            .iter()
            .filter(|e| e.at_ms >= since_ms)
            .cloned()
            .collect();
        (replay, receiver)
    }

    /// Feeds every exit `launcher` reports into this log, until the process ends.
    pub fn follow(self: &Arc<Self>, launcher: &dyn Launcher) {
        let (sink, mut exits) = mpsc::unbounded_channel();
        launcher.watch_exits(sink);
        let log = self.clone();
        tokio::spawn(async move {
            while let Some(exit) = exits.recv().await {
                log.record(&exit);
            }
        });
    }
}

/// What the launcher's handlers share.
pub struct LauncherState {
    /// The bearer token callers must present.
    pub token: Secret,
    /// Which GPUs this host offers.
    pub gpus: GpuSelection,
    /// This host's stable name (`DESKGATE_LAUNCHER_NAME`), if set.
    pub name: Option<String>,
    /// The device indices a spec may name (this host's inventory).
    pub gpu_indices: BTreeSet<u32>,
    /// What runs the containers.
    pub launcher: Arc<dyn Launcher>,
    /// Exits for `/v1/events`.
    pub exits: Arc<ExitLog>,
    /// This host's desktops, for the media routes.
    pub desktops: Arc<dyn DesktopMedia>,
}

impl std::fmt::Debug for LauncherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LauncherState")
            .field("gpus", &self.gpus)
            .field("gpu_indices", &self.gpu_indices)
            .finish_non_exhaustive()
    }
}

/// The launcher's router.
pub fn router(state: Arc<LauncherState>, limits: Limits) -> Router {
    let protected = Router::new()
        .route("/v1/gpus", get(list_gpus))
        .route("/v1/sessions", get(list_sessions).post(launch))
        .route("/v1/sessions/{id}", delete(stop))
        .route("/v1/events", get(events))
        .merge(media::routes())
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
    match bearer_token(request.headers()) {
        Some(token) if state.token.matches(token.as_bytes()) => next.run(request).await,
        _ => Problem::unauthorized().into_response(),
    }
}

fn docker_failed(err: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "docker-failed",
        "Docker refused or failed the operation",
    )
    .detail(err.to_string())
}

/// The host's GPUs, read fresh so utilisation and health are current.
async fn list_gpus(State(state): State<Arc<LauncherState>>) -> Response {
    match gpu::read_inventory(&state.gpus).await {
        Ok(gpus) => Json(HostInventory {
            host: state.name.clone(),
            gpus,
        })
        .into_response(),
        Err(err) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "gpu-inventory-failed",
            "Cannot read the GPU inventory",
        )
        .detail(err.to_string())
        .into_response(),
    }
}

async fn list_sessions(State(state): State<Arc<LauncherState>>) -> Response {
    match state.launcher.running().await {
        Ok(running) => Json(
            running
                .into_iter()
                .map(|c| ContainerView {
                    session: c.session.0,
                    container_id: c.container_id,
                    host: c.host,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(err) => docker_failed(err).into_response(),
    }
}

/// Checks a launch body field by field before it is parsed, so that a spec
/// asking for privilege is told so (403) rather than "unknown field" (400);
/// `gpu_indices` are the devices this host offers.
// Public only so that the fuzz target `launch_spec` (fuzz/) can call it.
#[doc(hidden)]
pub fn check_spec(
    body: &serde_json::Value,
    gpu_indices: &BTreeSet<u32>,
) -> Result<LaunchSpec, Problem> {
    let fields = body.as_object().ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-spec",
            "The launch spec is not a JSON object",
        )
    })?;
    let asked: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| PRIVILEGE_FIELDS.contains(k))
        .collect();
    if !asked.is_empty() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "privilege-refused",
            "The launch spec asks for more than session containers get",
        )
        .detail(format!(
            "refused field(s) {}: the launcher alone decides image, user, capabilities, \
             mounts, devices, network and limits",
            asked.join(", ")
        )));
    }
    let request: LaunchRequest = serde_json::from_value(body.clone()).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-spec",
            "The launch spec is not {session, host, gpu_indices}",
        )
        .detail(e.to_string())
    })?;
    let mut seen = BTreeSet::new();
    for index in &request.gpu_indices {
        if !seen.insert(*index) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-gpus",
                "The launch spec names a GPU twice",
            )
            .detail(format!("GPU {index} appears more than once")));
        }
        if !gpu_indices.contains(index) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-gpus",
                "The launch spec names a GPU this host does not offer",
            )
            .detail(format!(
                "GPU {index} is not among this host's GPUs {gpu_indices:?}"
            )));
        }
    }
    Ok(LaunchSpec {
        session: SessionId(request.session),
        host: request.host,
        gpu_indices: request.gpu_indices,
    })
}

async fn launch(
    State(state): State<Arc<LauncherState>>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "The request body is not JSON",
            )
            .detail(rejection.body_text())
            .into_response();
        }
    };
    let spec = match check_spec(&body, &state.gpu_indices) {
        Ok(spec) => spec,
        Err(problem) => {
            tracing::warn!(reason = ?problem, "launch spec refused");
            return problem.into_response();
        }
    };
    match state.launcher.launch(&spec).await {
        Ok(container_id) => {
            (StatusCode::CREATED, Json(LaunchResponse { container_id })).into_response()
        }
        Err(err) => docker_failed(err).into_response(),
    }
}

async fn stop(State(state): State<Arc<LauncherState>>, Path(id): Path<String>) -> Response {
    let Ok(session) = Uuid::parse_str(&id) else {
        return Problem::not_found()
            .detail("not a session id")
            .into_response();
    };
    match state.launcher.stop(SessionId(session)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => docker_failed(err).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Replay exits seen at or after this Unix millisecond.
    since: Option<u64>,
}

async fn events(
    State(state): State<Arc<LauncherState>>,
    Query(query): Query<EventsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Only small control frames come from the client.
    upgrade
        .max_message_size(4096)
        .on_upgrade(move |socket| send_exits(socket, state.exits.clone(), query.since))
}

async fn send_exits(mut socket: WebSocket, exits: Arc<ExitLog>, since: Option<u64>) {
    let (replay, mut live) = exits.subscribe(since.unwrap_or_else(clock::unix_millis));
    for event in replay {
        if send_event(&mut socket, &event).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Ok(event) => {
                    if send_event(&mut socket, &event).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow: close, the client reconnects with `since`.
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code: 1013,
                            reason: "lagging; reconnect with since".into(),
                        })))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send_event(socket: &mut WebSocket, event: &ExitEvent) -> Result<(), axum::Error> {
    let text = serde_json::to_string(event).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launcher::desktop::NoDesktops;
    use axum::body::Body;
    use axum::http::header;
    use deskgate_actors::testing::FakeLauncher;
    use std::time::Duration;
    use tower::ServiceExt;

    const TOKEN: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

    fn app_with(launcher: Arc<FakeLauncher>) -> Router {
        let state = Arc::new(LauncherState {
            token: Secret::new(TOKEN),
            gpus: GpuSelection::Fake(2),
            name: Some("gpu-a".into()),
            gpu_indices: BTreeSet::from([0, 1]),
            launcher,
            exits: Arc::new(ExitLog::default()),
            desktops: Arc::new(NoDesktops),
        });
        router(
            state,
            Limits {
                max_body_bytes: 1024,
                request_timeout: Duration::from_secs(5),
            },
        )
    }

    fn app() -> Router {
        app_with(Arc::new(FakeLauncher::new()))
    }

    async fn call(app: Router, request: axum::http::request::Builder, body: Body) -> Response {
        app.oneshot(request.body(body).unwrap()).await.unwrap()
    }

    fn authed(method: &str, uri: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
    }

    async fn json_of(response: Response) -> serde_json::Value {
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn the_token_scheme_is_matched_in_any_case() {
        for scheme in ["bearer", "BEARER"] {
            let request = Request::builder()
                .method("GET")
                .uri("/v1/sessions")
                .header(header::AUTHORIZATION, format!("{scheme} {TOKEN}"));
            let response = call(app(), request, Body::empty()).await;
            assert_eq!(response.status(), StatusCode::OK, "{scheme}");
        }
    }

    #[tokio::test]
    async fn missing_or_wrong_token_is_401_on_every_protected_route() {
        for (method, uri) in [
            ("GET", "/v1/gpus"),
            ("GET", "/v1/sessions"),
            ("POST", "/v1/sessions"),
            (
                "DELETE",
                "/v1/sessions/7d3c6f1e-0000-4000-8000-000000000000",
            ),
            ("GET", "/v1/events"),
            (
                "GET",
                "/v1/sessions/7d3c6f1e-0000-4000-8000-000000000000/vnc",
            ),
            (
                "GET",
                "/v1/sessions/7d3c6f1e-0000-4000-8000-000000000000/webrtc",
            ),
        ] {
            for auth in [
                None,
                Some("Bearer nope".to_string()),
                Some(TOKEN.to_string()),
            ] {
                let mut request = Request::builder().method(method).uri(uri);
                if let Some(auth) = &auth {
                    request = request.header(header::AUTHORIZATION, auth);
                }
                let response = call(app(), request, Body::from("{}")).await;
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} with {auth:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn right_token_lists_the_gpus() {
        let response = call(app(), authed("GET", "/v1/gpus"), Body::empty()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let gpus = json_of(response).await;
        assert_eq!(gpus["host"], "gpu-a");
        assert_eq!(gpus["gpus"].as_array().unwrap().len(), 2);
        assert_eq!(gpus["gpus"][1]["uuid"], "fake-1");
    }

    #[tokio::test]
    async fn healthz_needs_no_token() {
        let response = call(app(), Request::get("/healthz"), Body::empty()).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn privileged_specs_are_refused_by_field_and_launch_nothing() {
        let launcher = Arc::new(FakeLauncher::new());
        let session = Uuid::new_v4();
        for extra in [
            json!({"privileged": true}),
            json!({"cap_add": ["SYS_ADMIN"]}),
            json!({"binds": ["/var/run/docker.sock:/var/run/docker.sock"]}),
            json!({"user": "0:0"}),
            json!({"network_mode": "host"}),
            json!({"image": "evil"}),
        ] {
            let mut body = json!({"session": session, "host": 0, "gpu_indices": [0]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let response = call(
                app_with(launcher.clone()),
                authed("POST", "/v1/sessions"),
                Body::from(body.to_string()),
            )
            .await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{extra}");
            let problem = json_of(response).await;
            assert_eq!(problem["type"], "urn:deskgate:problem:privilege-refused");
            let field = extra.as_object().unwrap().keys().next().unwrap().clone();
            assert!(
                problem["detail"].as_str().unwrap().contains(&field),
                "{problem}"
            );
        }
        assert_eq!(launcher.launched(SessionId(session)), None);
    }

    #[tokio::test]
    async fn bad_specs_get_their_own_problems() {
        let session = Uuid::new_v4();
        for (body, status, kind) in [
            ("{not json".to_string(), 400, "malformed-json"),
            ("[1,2]".to_string(), 400, "malformed-spec"),
            (
                json!({"session": session, "host": 0, "gpu_indices": [0], "colour": "red"})
                    .to_string(),
                400,
                "malformed-spec",
            ),
            (
                json!({"session": "nope", "host": 0, "gpu_indices": [0]}).to_string(),
                400,
                "malformed-spec",
            ),
            (
                json!({"session": session, "host": 0, "gpu_indices": [0, 0]}).to_string(),
                422,
                "invalid-gpus",
            ),
            (
                json!({"session": session, "host": 0, "gpu_indices": [7]}).to_string(),
                422,
                "invalid-gpus",
            ),
        ] {
            let response = call(
                app(),
                authed("POST", "/v1/sessions"),
                Body::from(body.clone()),
            )
            .await;
            assert_eq!(response.status().as_u16(), status, "{body}");
            let problem = json_of(response).await;
            assert_eq!(
                problem["type"],
                format!("urn:deskgate:problem:{kind}"),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn launch_list_and_stop_go_to_the_launcher() {
        let launcher = Arc::new(FakeLauncher::new());
        let session = Uuid::new_v4();
        let body = json!({"session": session, "host": 3, "gpu_indices": [1]});
        let response = call(
            app_with(launcher.clone()),
            authed("POST", "/v1/sessions"),
            Body::from(body.to_string()),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let launched = json_of(response).await;
        assert_eq!(
            launched["container_id"],
            FakeLauncher::container_id(SessionId(session))
        );
        assert_eq!(
            launcher.launched(SessionId(session)),
            Some(LaunchSpec {
                session: SessionId(session),
                host: 3,
                gpu_indices: vec![1]
            })
        );

        let list = json_of(
            call(
                app_with(launcher.clone()),
                authed("GET", "/v1/sessions"),
                Body::empty(),
            )
            .await,
        )
        .await;
        assert_eq!(list[0]["session"], session.to_string());

        let uri = format!("/v1/sessions/{session}");
        let response = call(
            app_with(launcher.clone()),
            authed("DELETE", &uri),
            Body::empty(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(launcher.stopped(SessionId(session)));
        let response = call(
            app_with(launcher.clone()),
            authed("DELETE", "/v1/sessions/x"),
            Body::empty(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn exit_log_replays_from_since_and_then_streams() {
        let log = ExitLog::default();
        let first = ContainerExit {
            session: SessionId::new(),
            code: 1,
            oom: false,
        };
        log.record(&first);
        let (replay, mut live) = log.subscribe(0);
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].to_exit(), first);
        let (none, _) = log.subscribe(clock::unix_millis() + 60_000);
        assert!(none.is_empty());
        let second = ContainerExit {
            session: SessionId::new(),
            code: 137,
            oom: true,
        };
        log.record(&second);
        assert_eq!(live.try_recv().unwrap().to_exit(), second);
        for _ in 0..EXIT_LOG_CAPACITY + 5 {
            log.record(&first);
        }
        assert_eq!(log.subscribe(0).0.len(), EXIT_LOG_CAPACITY);
    }
}
