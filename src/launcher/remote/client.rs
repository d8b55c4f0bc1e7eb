//! [`RemoteLauncher`]: the [`Launcher`] port over the HTTP API of a
//! `deskgate launcher` on another GPU host (see [`crate::launcher::remote::service`]).
//!
//! The bearer token goes in the `Authorization` header of every request and
//! of the events WebSocket handshake, never in a URL. Exits arrive on the
//! `/v1/events` socket; when it drops, the watcher reconnects with `since`
//! set a little before the last exit it saw, so the launcher replays what was
//! missed, and exits already delivered are not delivered twice.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use deskgate_actors::ports::{
    ContainerExit, LaunchError, LaunchSpec, Launcher, RunningContainer, SessionId,
};
use futures::StreamExt;
use reqwest::StatusCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::launcher::remote::wire::{
    ContainerView, ExitEvent, HostInventory, LaunchRequest, LaunchResponse,
};
use crate::platform::backoff::Backoff;
use crate::platform::clock;
use crate::platform::secret::Secret;

/// How long connecting to a launcher may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take; a launch includes container start.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How far before the last exit seen a reconnect asks to be replayed from,
/// to cover clock steps on the launcher.
const REPLAY_OVERLAP_MS: u64 = 5_000;
/// Exits remembered to drop replays.
const DELIVERED_MEMORY: usize = 4096;

/// A launcher service on another host. Clones share the base URL, so a
/// host whose launcher moved (a Swarm task restarted on a new address) is
/// re-pointed once, for every user and for its exit stream's next reconnect.
#[derive(Clone, Debug)]
pub struct RemoteLauncher {
    base: Arc<RwLock<Url>>,
    token: Secret,
    client: reqwest::Client,
}

impl RemoteLauncher {
    /// A client of the launcher at `base` (`http://` or `https://`).
    pub fn new(base: Url, token: Secret) -> Result<Self, LaunchError> {
        let base = checked_base(base)?;
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| LaunchError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            base: Arc::new(RwLock::new(base)),
            token,
            client,
        })
    }

    /// The launcher's base URL.
    pub fn base(&self) -> Url {
        self.base
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Points this launcher (and every clone) at `base` from now on.
    pub fn repoint(&self, base: Url) -> Result<(), LaunchError> {
        let base = checked_base(base)?;
        *self
            .base
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = base;
        Ok(())
    }

    fn url(&self, path: &str) -> Result<Url, LaunchError> {
        let base = self.base();
        base.join(path)
            .map_err(|e| LaunchError(format!("launcher URL {base}: {e}")))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// Sends `request` with the token and maps failures to errors that name
    /// the launcher and carry its problem detail.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, LaunchError> {
        let response = request
            .header(reqwest::header::AUTHORIZATION, self.bearer())
            .send()
            .await
            .map_err(|e| {
                LaunchError(format!(
                    "{what} on launcher {}: {}",
                    self.base(),
                    e.without_url()
                ))
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let problem: serde_json::Value = response.json().await.unwrap_or_default();
        let text = |k: &str| problem.get(k).and_then(|v| v.as_str()).unwrap_or("");
        Err(LaunchError(format!(
            "{what} on launcher {}: {status} {} {}",
            self.base(),
            text("title"),
            text("detail")
        )))
    }

    /// The launcher host's name and GPU inventory (`GET /v1/gpus`), read fresh.
    pub async fn inventory(&self) -> Result<HostInventory, LaunchError> {
        let request = self.client.get(self.url("v1/gpus")?);
        let response = self.send("list GPUs", request).await?;
        response
            .json()
            .await
            .map_err(|e| LaunchError(format!("launcher {} answered nonsense: {e}", self.base())))
    }

    fn events_request(
        &self,
        since_ms: u64,
    ) -> Result<tungstenite::handshake::client::Request, LaunchError> {
        self.socket_request("v1/events", &[("since", &since_ms.to_string())])
    }

    /// A WebSocket handshake to `path` (`ws://` or `wss://` after the base's
    /// scheme) with `query`, carrying the token in its header.
    pub(crate) fn socket_request(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<tungstenite::handshake::client::Request, LaunchError> {
        let mut url = self.url(path)?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).map_err(|()| {
            LaunchError(format!("launcher URL {} cannot be a socket", self.base()))
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| LaunchError(format!("socket {path} of {}: {e}", self.base())))?;
        let bearer = HeaderValue::from_str(&self.bearer())
            .map_err(|_| LaunchError("the launcher token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", bearer);
        Ok(request)
    }
}

#[async_trait]
impl Launcher for RemoteLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let body = LaunchRequest {
            session: spec.session.0,
            host: spec.host,
            gpu_indices: spec.gpu_indices.clone(),
        };
        let request = self.client.post(self.url("v1/sessions")?).json(&body);
        let response = self.send("launch", request).await?;
        let launched: LaunchResponse = response
            .json()
            .await
            .map_err(|e| LaunchError(format!("launcher {} answered nonsense: {e}", self.base())))?;
        Ok(launched.container_id)
    }

    async fn stop(&self, session: SessionId) -> Result<(), LaunchError> {
        let request = self
            .client
            .delete(self.url(&format!("v1/sessions/{session}"))?);
        self.send("stop", request).await.map(drop)
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        let request = self.client.get(self.url("v1/sessions")?);
        let response = self.send("list sessions", request).await?;
        let views: Vec<ContainerView> = response
            .json()
            .await
            .map_err(|e| LaunchError(format!("launcher {} answered nonsense: {e}", self.base())))?;
        Ok(views
            .into_iter()
            .map(|v| RunningContainer {
                session: SessionId(v.session),
                container_id: v.container_id,
                host: v.host,
            })
            .collect())
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        tokio::spawn(follow_events(self.clone(), sink));
    }
}

/// `base` with a path ending in `/` (paths are joined relative to it), if
/// it is `http://` or `https://`.
fn checked_base(mut base: Url) -> Result<Url, LaunchError> {
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    if !matches!(base.scheme(), "http" | "https") {
        return Err(LaunchError(format!(
            "launcher URL {base} is not http:// or https://"
        )));
    }
    Ok(base)
}

/// Exits already delivered, bounded.
#[derive(Default)]
struct Delivered {
    order: VecDeque<(SessionId, u64)>,
    seen: HashSet<(SessionId, u64)>,
}

impl Delivered {
    /// True the first time `event` is offered.
    fn first_time(&mut self, event: &ExitEvent) -> bool {
        let key = (SessionId(event.session), event.at_ms);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > DELIVERED_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// First wait before reconnecting a broken exit stream, and the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_CEILING: Duration = Duration::from_secs(5);

async fn follow_events(remote: RemoteLauncher, sink: mpsc::UnboundedSender<ContainerExit>) {
    let started_ms = clock::unix_millis();
    let mut since_ms = started_ms.saturating_sub(REPLAY_OVERLAP_MS);
    let mut delivered = Delivered::default();
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CEILING);
    let config = WebSocketConfig::default().max_message_size(Some(64 << 10));
    loop {
        let request = match remote.events_request(since_ms) {
            Ok(request) => request,
            Err(err) => {
                tracing::error!(error = %err, "cannot follow launcher exits");
                return;
            }
        };
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
        let outcome = tokio::select! {
            () = sink.closed() => return,
            outcome = connect => outcome,
        };
        match outcome {
            Ok((mut socket, _)) => {
                backoff.reset();
                loop {
                    let next = tokio::select! {
                        () = sink.closed() => return,
                        next = socket.next() => next,
                    };
                    match next {
                        Some(Ok(Message::Text(text))) => {
                            let Ok(event) = serde_json::from_str::<ExitEvent>(&text) else {
                                tracing::warn!(launcher = %remote.base(), "unreadable exit event");
                                continue;
                            };
                            since_ms = since_ms.max(event.at_ms.saturating_sub(REPLAY_OVERLAP_MS));
                            if delivered.first_time(&event) && sink.send(event.to_exit()).is_err() {
                                return;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            tracing::warn!(launcher = %remote.base(), ?frame, "launcher closed the events socket; reconnecting");
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => {
                            tracing::warn!(launcher = %remote.base(), error = %err, "events socket broke; reconnecting");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(tungstenite::Error::Http(response))
                if response.status() == StatusCode::UNAUTHORIZED =>
            {
                tracing::error!(launcher = %remote.base(), "launcher refused DESKGATE_LAUNCHER_TOKEN on its events socket; retrying");
            }
            Err(err) => {
                tracing::warn!(launcher = %remote.base(), error = %err, retry_in = ?backoff.peek(), "cannot reach the launcher's events socket");
            }
        }
        tokio::select! {
            () = sink.closed() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_events_socket_url_follows_the_scheme_and_keeps_the_token_out() {
        let token = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";
        for (base, scheme) in [
            ("http://gpu-1.internal:8090/", "ws"),
            ("https://gpu-1.internal:8090/", "wss"),
        ] {
            let remote =
                RemoteLauncher::new(Url::parse(base).unwrap(), Secret::new(token)).unwrap();
            let request = remote.events_request(42).unwrap();
            let uri = request.uri().to_string();
            assert!(
                uri.starts_with(&format!(
                    "{scheme}://gpu-1.internal:8090/v1/events?since=42"
                )),
                "{uri}"
            );
            assert!(!uri.contains(token));
            assert_eq!(
                request.headers()["authorization"],
                format!("Bearer {token}").as_str()
            );
        }
        assert!(RemoteLauncher::new(Url::parse("ftp://x/").unwrap(), Secret::new(token)).is_err());
    }

    #[test]
    fn replayed_exits_are_delivered_once() {
        let mut delivered = Delivered::default();
        let event = ExitEvent {
            session: uuid::Uuid::new_v4(),
            code: 0,
            oom: false,
            at_ms: 7,
        };
        assert!(delivered.first_time(&event));
        assert!(!delivered.first_time(&event));
        let later = ExitEvent { at_ms: 8, ..event };
        assert!(delivered.first_time(&later));
    }
}
