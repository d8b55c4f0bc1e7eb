//! [`DockerLauncher`]: the [`Launcher`] port on a local Docker Engine. One
//! hardened container per session (DESIGN.md §8):
//!
//! - name `deskgate-session-<id>`, labels `deskgate.session=<id>`,
//!   `deskgate.gpus=<comma list of device indices>`, `deskgate.host=<n>`
//!   (the host number the gate launched it for; the session network carries
//!   the session and host labels too);
//! - non-root user, `cap_drop: ALL`, `no-new-privileges`, read-only root with
//!   size-limited `noexec,nosuid` tmpfs for `/tmp` and `/home`, pids, memory
//!   and CPU limits, never privileged, no binds or mounts (so never the Docker
//!   socket);
//! - environment: only `DESKGATE_SESSION_ID`, `DESKGATE_GPUS`, a per-session
//!   random `DESKGATE_VNC_PASSWORD` (32 random bytes as hex, kept in memory
//!   and read back with [`DockerLauncher::vnc_secret`]) and the operator's
//!   allowlisted extras;
//! - GPUs by explicit device id only (`DeviceRequest` with the `nvidia`
//!   driver), and only when [`LauncherSettings::gpu_runtime`] is on: without
//!   the NVIDIA runtime Docker refuses to start such a container. A desktop
//!   asks for every driver capability it uses ([`GPU_CAPABILITIES`]: GL,
//!   display, NVENC/NVDEC, CUDA, `nvidia-smi`). The leased ids are recorded
//!   in the labels and `DESKGATE_GPUS` either way;
//! - image pinned by digest when [`LauncherSettings::image_digest`] is set.
//!
//! # Network isolation (decision)
//!
//! Each session gets a bridge network of its own, `deskgate-s-<id>`, and its
//! container joins no other (`network_mode` is that network). A plain
//! user-defined bridge is **not** isolation: measured on Docker 20.10, a
//! container on one reaches every host address (its own gateway, `docker0`'s
//! address, the host's LAN address) and so any host service bound to
//! `0.0.0.0` (the launcher API, a control plane). `internal: true` alone does
//! not fix it either: it drops forwarded traffic, but the bridge still holds
//! the gateway address, so the host's own sockets answer on it. The network is
//! therefore created with `internal: true` **and** the bridge driver option
//! `com.docker.network.bridge.inhibit_ipv4=true`, so that the host has no
//! address on the bridge: the container has no route anywhere but its own
//! subnet (tests/docker_launcher.rs probes PostgreSQL and a host listener on
//! every host address and sees them unreachable). IPv6 is left off. The
//! consequence is that the host cannot route into the session either: the
//! gate's media relay must reach the desktop from inside that network (a relay
//! endpoint attached to it), not through a host route. That is deliberate: the
//! desktop gets its traffic only through the gate's relay.
//!
//! # Several launchers on one Docker daemon
//!
//! With [`LauncherSettings::host`] unset the launcher treats every
//! `deskgate.session` container on the daemon as its own: listing, start-up
//! recovery, reconciliation and exit watching see them all. With it set to
//! `n` (`DESKGATE_LAUNCHER_HOST`) it sees only containers (and networks)
//! labelled `deskgate.host=n`, refuses launches for another host number,
//! and a stop leaves another host's container alone, so that launchers
//! for several host numbers can share one daemon without adopting, removing
//! or reporting each other's containers.
//!
//! Exits are watched on Docker's event stream (`die`/`oom`/`kill` of labelled
//! containers), reconnecting when it breaks; exits caused by [`Launcher::stop`]
//! are not reported. Errors carry Docker's message but never the environment
//! or the VNC secret.
//!
//! The backend's other parts: `settings` (how a container is built),
//! `events` (the exit watcher), `client` (connecting to the engine) and
//! `desktop` (the `docker exec` dialer). This file is a little over 700
//! lines because the last hundred are its unit tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, DeviceRequest, HostConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use deskgate_actors::ports::{
    ContainerExit, LaunchError, LaunchSpec, Launcher, RunningContainer, SessionId,
};
use rand::Rng;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::platform::secret::Secret;

mod client;
mod desktop;
mod events;
mod settings;

pub use client::connect;
pub use desktop::{DESKTOP_VNC_BRIDGE, DockerDesktops, WebRtcSettings};
use events::watch_events;
pub use settings::LauncherSettings;
use settings::VNC_SECRET_BYTES;

/// Label holding the session id.
pub const LABEL_SESSION: &str = "deskgate.session";
/// Label holding the leased GPU device indices, comma-separated.
pub const LABEL_GPUS: &str = "deskgate.gpus";
/// Label holding the host number.
pub const LABEL_HOST: &str = "deskgate.host";
/// The NVIDIA driver capabilities a session's GPUs come with (the NVIDIA
/// Container Toolkit maps them to `NVIDIA_DRIVER_CAPABILITIES`): `gpu` selects
/// the devices; `graphics` and `display` bring GL/EGL/Vulkan, `video`
/// NVENC/NVDEC, `compute` CUDA and `utility` `nvidia-smi`/NVML.
pub const GPU_CAPABILITIES: [&str; 6] =
    ["gpu", "compute", "utility", "video", "graphics", "display"];

/// The container name of a session.
pub fn container_name(session: SessionId) -> String {
    format!("deskgate-session-{session}")
}

/// The network name of a session.
pub fn network_name(session: SessionId) -> String {
    format!("deskgate-s-{session}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether Docker answered with `status`.
fn is_status(err: &DockerError, status: u16) -> bool {
    matches!(err, DockerError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

fn docker_error(what: &str, err: DockerError) -> LaunchError {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => LaunchError(format!("{what}: Docker answered {status_code}: {message}")),
        other => LaunchError(format!("{what}: {other}")),
    }
}

fn random_secret() -> Secret {
    let mut raw = [0u8; VNC_SECRET_BYTES];
    rand::rng().fill(&mut raw);
    Secret::new(alloy::hex::encode(raw))
}

fn session_of(labels: Option<&HashMap<String, String>>) -> Option<SessionId> {
    labels?
        .get(LABEL_SESSION)
        .and_then(|s| Uuid::parse_str(s).ok())
        .map(SessionId)
}

fn host_of(labels: Option<&HashMap<String, String>>) -> u16 {
    labelled_host(labels).unwrap_or(0)
}

/// The host number in `labels`, if they carry one.
fn labelled_host(labels: Option<&HashMap<String, String>>) -> Option<u16> {
    labels?.get(LABEL_HOST)?.parse().ok()
}

/// The `label` filter values that select the session containers (and
/// networks, and their events) a launcher scoped to `host` manages: every
/// session one without a scope. Docker requires all of them to match.
fn label_filter(host: Option<u16>) -> Vec<String> {
    let mut labels = vec![LABEL_SESSION.to_string()];
    if let Some(host) = host {
        labels.push(format!("{LABEL_HOST}={host}"));
    }
    labels
}

/// How long a stop keeps suppressing its container's `die` event. Entries
/// stay for every watcher to see (each has its own event stream), and the
/// event can arrive after `stop` has returned.
const STOP_MEMORY: Duration = Duration::from_secs(300);

/// What the launcher and its exit watchers share.
#[derive(Debug, Default)]
struct Shared {
    /// Sessions stopped by [`Launcher::stop`], and when: their `die` is not an exit.
    stopping: Mutex<HashMap<SessionId, std::time::Instant>>,
}

impl Shared {
    fn mark_stopping(&self, session: SessionId) {
        let mut stopping = lock(&self.stopping);
        stopping.retain(|_, at| at.elapsed() < STOP_MEMORY);
        stopping.insert(session, std::time::Instant::now());
    }

    fn was_stopped(&self, session: SessionId) -> bool {
        lock(&self.stopping)
            .get(&session)
            .is_some_and(|at| at.elapsed() < STOP_MEMORY)
    }

    /// Whether [`Launcher::stop`] was called for the session after `since`.
    fn stopped_since(&self, session: SessionId, since: std::time::Instant) -> bool {
        lock(&self.stopping)
            .get(&session)
            .is_some_and(|at| *at >= since)
    }
}

/// What [`DockerLauncher::recover`] found after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Running session containers, adopted with their VNC secrets.
    pub adopted: Vec<RunningContainer>,
    /// Session containers that had stopped (or never started) while nobody
    /// watched, removed with their networks: their exits.
    pub exited: Vec<ContainerExit>,
    /// Networks left without a container, removed.
    pub stray_networks: usize,
}

/// The [`Launcher`] on a local Docker Engine; see the module docs.
#[derive(Debug)]
pub struct DockerLauncher {
    docker: Docker,
    settings: LauncherSettings,
    secrets: Mutex<HashMap<SessionId, Secret>>,
    shared: Arc<Shared>,
}

impl DockerLauncher {
    /// A launcher on `docker` (see [`crate::launcher::docker::connect`]); refuses weak settings.
    pub fn new(docker: Docker, settings: LauncherSettings) -> Result<Self, LaunchError> {
        settings.validate()?;
        Ok(Self {
            docker,
            settings,
            secrets: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared::default()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &LauncherSettings {
        &self.settings
    }

    /// The Docker client this launcher uses.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The session's VNC secret, for the media path; `None` when this
    /// launcher neither launched nor adopted the session.
    pub fn vnc_secret(&self, session: SessionId) -> Option<Secret> {
        lock(&self.secrets).get(&session).cloned()
    }

    /// The create request for `spec` with `vnc_secret` (no I/O).
    pub fn container_config(&self, spec: &LaunchSpec, vnc_secret: &Secret) -> ContainerCreateBody {
        let s = &self.settings;
        let session = spec.session;
        let gpus = spec
            .gpu_indices
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>();
        let labels = HashMap::from([
            (LABEL_SESSION.to_string(), session.to_string()),
            (LABEL_GPUS.to_string(), gpus.join(",")),
            (LABEL_HOST.to_string(), spec.host.to_string()),
        ]);
        let mut env = vec![
            format!("DESKGATE_SESSION_ID={session}"),
            format!("DESKGATE_GPUS={}", gpus.join(",")),
            format!("DESKGATE_VNC_PASSWORD={}", vnc_secret.expose()),
        ];
        env.extend(s.extra_env.iter().map(|(k, v)| format!("{k}={v}")));
        let tmpfs = HashMap::from([
            (
                "/tmp".to_string(),
                format!("rw,noexec,nosuid,nodev,size={}", s.tmp_size_bytes),
            ),
            (
                "/home".to_string(),
                format!("rw,noexec,nosuid,nodev,size={}", s.home_size_bytes),
            ),
        ]);
        let device_requests = (s.gpu_runtime && !gpus.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(gpus.clone()),
                capabilities: Some(vec![
                    GPU_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                ]),
                ..Default::default()
            }]
        });
        ContainerCreateBody {
            image: Some(s.image_ref()),
            cmd: s.command.clone(),
            user: Some(s.user.clone()),
            env: Some(env),
            labels: Some(labels),
            hostname: Some("desktop".into()),
            stop_timeout: Some(s.stop_grace.as_secs().try_into().unwrap_or(i64::MAX)),
            host_config: Some(HostConfig {
                network_mode: Some(network_name(session)),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: None,
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(tmpfs),
                privileged: Some(false),
                pids_limit: Some(s.pids_limit),
                memory: Some(s.memory_bytes),
                memory_swap: Some(s.memory_bytes),
                nano_cpus: Some(s.nano_cpus),
                device_requests,
                binds: None,
                mounts: None,
                publish_all_ports: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create_network(&self, session: SessionId, host: u16) -> Result<(), LaunchError> {
        let request = NetworkCreateRequest {
            name: network_name(session),
            driver: Some("bridge".into()),
            internal: Some(true),
            attachable: Some(false),
            enable_ipv6: Some(false),
            options: Some(HashMap::from([
                (
                    "com.docker.network.bridge.inhibit_ipv4".to_string(),
                    "true".to_string(),
                ),
                (
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "true".to_string(),
                ),
            ])),
            labels: Some(HashMap::from([
                (LABEL_SESSION.to_string(), session.to_string()),
                (LABEL_HOST.to_string(), host.to_string()),
            ])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(err) if is_status(&err, 409) => Ok(()),
            Err(err) => Err(docker_error(
                &format!("creating network {}", network_name(session)),
                err,
            )),
        }
    }

    /// Creates the session's network and container without starting it;
    /// returns the container id. [`Launcher::launch`] is this plus start.
    pub async fn create(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let session = spec.session;
        let name = container_name(session);
        self.create_network(session, spec.host).await?;
        let secret = random_secret();
        let config = self.container_config(spec, &secret);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(options), config).await {
            Ok(created) => {
                lock(&self.secrets).insert(session, secret);
                Ok(created.id)
            }
            Err(err) => {
                let _ = self.remove_network(session).await;
                Err(docker_error(&format!("creating container {name}"), err))
            }
        }
    }

    async fn remove_container(&self, session: SessionId) -> Result<(), LaunchError> {
        let name = container_name(session);
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if is_status(&err, 404) => Ok(()),
            // Removal already under way (a concurrent stop): fine.
            Err(err) if is_status(&err, 409) => Ok(()),
            Err(err) => Err(docker_error(&format!("removing container {name}"), err)),
        }
    }

    async fn remove_network(&self, session: SessionId) -> Result<(), LaunchError> {
        let name = network_name(session);
        match self.docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(err) if is_status(&err, 404) => Ok(()),
            Err(err) => Err(docker_error(&format!("removing network {name}"), err)),
        }
    }

    /// Removes the session's container and network, whatever their state.
    async fn remove_all(&self, session: SessionId) -> Result<(), LaunchError> {
        self.remove_container(session).await?;
        self.remove_network(session).await?;
        lock(&self.secrets).remove(&session);
        Ok(())
    }

    /// Whether this launcher is scoped to a host number and the session's
    /// container (or, without one, its network) is labelled with another:
    /// then it belongs to another launcher sharing the daemon.
    async fn owned_elsewhere(&self, session: SessionId) -> bool {
        let Some(host) = self.settings.host else {
            return false;
        };
        let labels = match self
            .docker
            .inspect_container(&container_name(session), None::<InspectContainerOptions>)
            .await
        {
            Ok(container) => container.config.and_then(|c| c.labels),
            Err(_) => self
                .docker
                .inspect_network(&network_name(session), None::<InspectNetworkOptions>)
                .await
                .ok()
                .and_then(|n| n.labels),
        };
        labelled_host(labels.as_ref()).is_some_and(|owner| owner != host)
    }

    /// The containers labelled as deskgate sessions; stopped ones too if `all`.
    async fn session_containers(&self, all: bool) -> Result<Vec<ContainerSummary>, LaunchError> {
        let labels = label_filter(self.settings.host);
        let filters = HashMap::from([("label", labels.iter().map(String::as_str).collect())]);
        let options = ListContainersOptionsBuilder::default()
            .all(all)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_error("listing session containers", e))
    }

    /// After this process restarts with nobody to ask which sessions are
    /// known (the launcher service): adopts every running session container
    /// and removes the rest, stopped or never started, with their networks,
    /// reporting each as an exit so the gate can end its session.
    pub async fn recover(&self) -> Result<Recovered, LaunchError> {
        let mut running = HashSet::new();
        let mut exited = Vec::new();
        for summary in self.session_containers(true).await? {
            let Some(session) = session_of(summary.labels.as_ref()) else {
                continue;
            };
            if matches!(
                summary.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            ) {
                running.insert(session);
                continue;
            }
            let state = match &summary.id {
                Some(id) => self
                    .docker
                    .inspect_container(id, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|c| c.state),
                None => None,
            };
            exited.push(ContainerExit {
                session,
                code: state.as_ref().and_then(|s| s.exit_code).unwrap_or(-1),
                oom: state.and_then(|s| s.oom_killed).unwrap_or(false),
            });
        }
        let (adopted, removed) = self.reconcile(&running).await?;
        let stray_networks = removed
            .iter()
            .filter(|s| !exited.iter().any(|e| e.session == **s))
            .count();
        Ok(Recovered {
            adopted,
            exited,
            stray_networks,
        })
    }

    /// After a restart: keeps the containers of `known` sessions (adopting
    /// their VNC secrets from the container config) and removes every other
    /// deskgate container and network. Returns the adopted running
    /// containers and the sessions removed.
    pub async fn reconcile(
        &self,
        known: &HashSet<SessionId>,
    ) -> Result<(Vec<RunningContainer>, Vec<SessionId>), LaunchError> {
        let containers = self.session_containers(true).await?;
        let mut adopted = Vec::new();
        let mut removed = Vec::new();
        for summary in containers {
            let Some(session) = session_of(summary.labels.as_ref()) else {
                continue;
            };
            let id = summary.id.clone().unwrap_or_default();
            if !known.contains(&session) {
                self.remove_all(session).await?;
                removed.push(session);
                continue;
            }
            let running = matches!(
                summary.state,
                Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            );
            if !running {
                continue;
            }
            if let Ok(inspect) = self
                .docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                && let Some(secret) = inspect
                    .config
                    .and_then(|c| c.env)
                    .into_iter()
                    .flatten()
                    .find_map(|e| e.strip_prefix("DESKGATE_VNC_PASSWORD=").map(Secret::new))
            {
                lock(&self.secrets).insert(session, secret);
            }
            adopted.push(RunningContainer {
                session,
                container_id: id,
                host: host_of(summary.labels.as_ref()),
            });
        }
        // Networks left behind without a container (a crash between steps).
        let labels = label_filter(self.settings.host);
        let filters = HashMap::from([("label", labels.iter().map(String::as_str).collect())]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| docker_error("listing session networks", e))?;
        for network in networks {
            if let Some(session) = session_of(network.labels.as_ref())
                && !known.contains(&session)
            {
                self.remove_network(session).await?;
                if !removed.contains(&session) {
                    removed.push(session);
                }
            }
        }
        Ok((adopted, removed))
    }
}

#[async_trait]
impl Launcher for DockerLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let session = spec.session;
        let began = std::time::Instant::now();
        if let Some(host) = self.settings.host
            && spec.host != host
        {
            return Err(LaunchError(format!(
                "this launcher is host {host} (DESKGATE_LAUNCHER_HOST) but was asked to launch \
                 for host {}: list the launchers in DESKGATE_LAUNCHER_URLS in host order",
                spec.host
            )));
        }
        let name = container_name(session);
        // A retried launch of a session that already runs is the same launch.
        if let Ok(existing) = self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            let running = existing.state.and_then(|s| s.running).unwrap_or(false);
            if running && self.vnc_secret(session).is_some() {
                return Ok(existing.id.unwrap_or_default());
            }
            self.remove_container(session).await?;
        }
        let id = self.create(spec).await?;
        if let Err(err) = self.docker.start_container(&id, None).await {
            let err = docker_error(&format!("starting container {name}"), err);
            if let Err(cleanup) = self.remove_all(session).await {
                tracing::warn!(%session, error = %cleanup, "cleanup after a failed start failed");
            }
            return Err(err);
        }
        if self.shared.stopped_since(session, began) {
            // The session was stopped while this launch was under way (its
            // caller gave up on it, e.g. across a partition): the stop may
            // have found nothing to remove, so the container goes now.
            self.remove_all(session).await?;
            return Err(LaunchError(format!(
                "session {session} was stopped while its container started"
            )));
        }
        tracing::info!(%session, container = %id, "session container started");
        Ok(id)
    }

    async fn stop(&self, session: SessionId) -> Result<(), LaunchError> {
        let name = container_name(session);
        if self.owned_elsewhere(session).await {
            tracing::debug!(%session, "the session's container belongs to another host; left alone");
            return Ok(());
        }
        self.shared.mark_stopping(session);
        let grace = self
            .settings
            .stop_grace
            .as_secs()
            .try_into()
            .unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(grace).build();
        match self.docker.stop_container(&name, Some(options)).await {
            Ok(()) => {}
            // 304: already stopped; 404: already gone.
            Err(err) if is_status(&err, 304) || is_status(&err, 404) => {}
            Err(err) => {
                // Force removal below kills it.
                tracing::warn!(%session, error = %docker_error("graceful stop", err), "killing instead");
            }
        }
        self.remove_all(session).await?;
        tracing::info!(%session, "session container stopped and removed");
        Ok(())
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        let containers = self.session_containers(false).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                Some(RunningContainer {
                    session: session_of(c.labels.as_ref())?,
                    container_id: c.id.clone()?,
                    host: host_of(c.labels.as_ref()),
                })
            })
            .collect())
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        let docker = self.docker.clone();
        let shared = self.shared.clone();
        let labels = label_filter(self.settings.host);
        tokio::spawn(watch_events(docker, shared, labels, sink));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_launcher(settings: LauncherSettings) -> DockerLauncher {
        let docker =
            Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION)
                .expect("client");
        DockerLauncher::new(docker, settings).expect("valid settings")
    }

    #[test]
    fn root_and_reserved_names_and_bad_digests_are_refused() {
        for user in ["0", "0:0", "root", "", "root:root"] {
            let mut s = LauncherSettings::new("img");
            s.user = user.into();
            assert!(s.validate().is_err(), "{user:?} accepted");
        }
        let mut s = LauncherSettings::new("img");
        s.extra_env = vec![("DESKGATE_VNC_PASSWORD".into(), "x".into())];
        assert!(s.validate().is_err());
        s.extra_env = vec![("A=B".into(), "x".into())];
        assert!(s.validate().is_err());
        let mut s = LauncherSettings::new("img");
        s.image_digest = Some("sha256:abc".into());
        assert!(s.validate().is_err());
        s.image_digest = Some(format!("sha256:{}", "a".repeat(64)));
        assert!(s.validate().is_ok());
        assert_eq!(s.image_ref(), format!("img@sha256:{}", "a".repeat(64)));
    }

    #[test]
    fn a_host_scope_filters_on_the_host_label_too() {
        assert_eq!(label_filter(None), vec![LABEL_SESSION.to_string()]);
        assert_eq!(
            label_filter(Some(3)),
            vec![LABEL_SESSION.to_string(), "deskgate.host=3".to_string()]
        );
        let labels = HashMap::from([(LABEL_HOST.to_string(), "7".to_string())]);
        assert_eq!(labelled_host(Some(&labels)), Some(7));
        assert_eq!(labelled_host(None), None);
        assert_eq!(host_of(Some(&HashMap::new())), 0);
    }

    #[tokio::test]
    async fn a_scoped_launcher_refuses_launches_for_another_host() {
        let mut settings = LauncherSettings::new("img");
        settings.host = Some(1);
        // Refused before Docker is asked (this client reaches no daemon).
        let err = make_launcher(settings)
            .launch(&LaunchSpec {
                session: SessionId::new(),
                host: 0,
                gpu_indices: vec![0],
            })
            .await
            .expect_err("host 0 refused by host 1");
        assert!(
            err.0.contains("host 1") && err.0.contains("host 0"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn config_is_hardened_and_gpus_are_conditional() {
        let mut settings = LauncherSettings::new("img");
        settings.gpu_runtime = false;
        settings.extra_env = vec![("LANG".into(), "C.UTF-8".into())];
        let launcher = make_launcher(settings);
        let spec = LaunchSpec {
            session: SessionId::new(),
            host: 2,
            gpu_indices: vec![1, 3],
        };
        let secret = random_secret();
        assert_eq!(secret.expose().len(), 64);
        let config = launcher.container_config(&spec, &secret);
        let host = config.host_config.clone().unwrap();
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.device_requests, None);
        assert_eq!(host.network_mode, Some(network_name(spec.session)));
        let labels = config.labels.clone().unwrap();
        assert_eq!(labels[LABEL_GPUS], "1,3");
        assert_eq!(labels[LABEL_HOST], "2");
        let env = config.env.clone().unwrap();
        assert_eq!(env.len(), 4, "{}", env.len());
        assert!(env.contains(&"DESKGATE_GPUS=1,3".to_string()));
        assert!(env.contains(&"LANG=C.UTF-8".to_string()));

        let mut settings = LauncherSettings::new("img");
        settings.gpu_runtime = true;
        let config = make_launcher(settings).container_config(&spec, &secret);
        let requests = config.host_config.unwrap().device_requests.unwrap();
        assert_eq!(requests[0].device_ids, Some(vec!["1".into(), "3".into()]));
        assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
        let capabilities = requests[0].capabilities.clone().unwrap();
        assert_eq!(capabilities.len(), 1, "one AND-list of capabilities");
        for needed in ["gpu", "graphics", "display", "video", "utility"] {
            assert!(
                capabilities[0].iter().any(|c| c == needed),
                "{needed} missing"
            );
        }
    }
}
