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
//! # Warm desktops
//!
//! With `DESKGATE_WARM_DESKTOPS` set, desktops are started ahead of demand
//! on free GPUs, labelled `deskgate.warm=<id>` instead of a session; a
//! one-GPU launch on such a GPU renames the container to the session's
//! name, which is from then on how that container's session is known (Docker
//! cannot relabel a container). See `warm/`.
//!
//! The backend's other parts: `settings` (how a container is built),
//! `events` (the exit watcher), `recovery` (after a restart), `warm/` (the
//! warm pool), `client` (connecting to the engine), `desktop` (the `docker
//! exec` dialer) and `tests` (unit tests without an engine). This file is
//! still about 730 lines: a launch (network, container, start, the warm
//! take) and a stop are one sequence each, with their clean-up on every
//! failure, and read best whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, DeviceRequest, HostConfig, Network, NetworkCreateRequest,
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
mod recovery;
mod settings;
mod warm;

pub use client::connect;
pub use desktop::{DESKTOP_VNC_BRIDGE, DockerDesktops, WebRtcSettings, vnc_bridge};
use events::watch_events;
pub use recovery::Recovered;
pub use settings::LauncherSettings;
use settings::VNC_SECRET_BYTES;
use warm::WarmPool;
pub use warm::{LABEL_WARM, warm_container_name, warm_network_name};

/// Label holding the session id.
pub const LABEL_SESSION: &str = "deskgate.session";
/// Label holding the leased GPU device indices, comma-separated.
pub const LABEL_GPUS: &str = "deskgate.gpus";
/// Label holding the host number.
pub const LABEL_HOST: &str = "deskgate.host";
/// Label with the name of the host that made a container or network
/// (`DESKGATE_LAUNCHER_NAME`), when it has one.
pub const LABEL_HOST_NAME: &str = "deskgate.host.name";
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

/// Whose desktop a container (and its network) is.
#[derive(Clone, Copy, Debug)]
enum Owner {
    /// A session's, from its launch.
    Session(SessionId),
    /// A warm desktop's, until a session takes it (`warm.rs`).
    Warm(Uuid),
}

impl Owner {
    /// The label that says so.
    fn label(self) -> (String, String) {
        match self {
            Self::Session(session) => (LABEL_SESSION.to_string(), session.to_string()),
            Self::Warm(id) => (LABEL_WARM.to_string(), id.to_string()),
        }
    }

    /// The name of its own network.
    fn network(self) -> String {
        match self {
            Self::Session(session) => network_name(session),
            Self::Warm(id) => warm_network_name(id),
        }
    }
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

/// Force-removes the container `name` (a name or an id), whatever its state.
async fn remove_container_named(docker: &Docker, name: &str) -> Result<(), LaunchError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        // Removal already under way (a concurrent stop): fine.
        Err(err) if is_status(&err, 409) => Ok(()),
        Err(err) => Err(docker_error(&format!("removing container {name}"), err)),
    }
}

/// Removes the network `name`; one already gone is fine.
async fn remove_network_named(docker: &Docker, name: &str) -> Result<(), LaunchError> {
    match docker.remove_network(name).await {
        Ok(()) => Ok(()),
        Err(err) if is_status(&err, 404) => Ok(()),
        Err(err) => Err(docker_error(&format!("removing network {name}"), err)),
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

/// The session a container belongs to: its `deskgate.session` label, or,
/// for a warm desktop a session took, its name `deskgate-session-<id>`
/// (Docker cannot relabel a container, so the rename is the record).
fn session_of_container(
    labels: Option<&HashMap<String, String>>,
    name: Option<&str>,
) -> Option<SessionId> {
    if let Some(session) = session_of(labels) {
        return Some(session);
    }
    labels?.get(LABEL_WARM)?;
    name?
        .trim_start_matches('/')
        .strip_prefix("deskgate-session-")
        .and_then(|id| Uuid::parse_str(id).ok())
        .map(SessionId)
}

/// The session of a listed container (see [`session_of_container`]).
fn session_of_summary(summary: &ContainerSummary) -> Option<SessionId> {
    let name = summary.names.as_ref().and_then(|n| n.first());
    session_of_container(summary.labels.as_ref(), name.map(String::as_str))
}

fn host_of(labels: Option<&HashMap<String, String>>) -> u16 {
    labelled_host(labels).unwrap_or(0)
}

/// The host number in `labels`, if they carry one.
fn labelled_host(labels: Option<&HashMap<String, String>>) -> Option<u16> {
    labels?.get(LABEL_HOST)?.parse().ok()
}

/// The `label` filter values that select the containers (or networks)
/// carrying `label` that a launcher scoped to `host` manages: all of them
/// without a scope. Docker requires every value to match.
fn scoped_filter(label: &str, host: Option<u16>) -> Vec<String> {
    let mut labels = vec![label.to_string()];
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
    /// Containers removed by the launcher itself (a warm desktop whose take
    /// failed after its rename), and when: their `die` is not an exit either.
    removed: Mutex<HashMap<String, std::time::Instant>>,
}

impl Shared {
    fn mark_removed(&self, container_id: &str) {
        let mut removed = lock(&self.removed);
        removed.retain(|_, at| at.elapsed() < STOP_MEMORY);
        removed.insert(container_id.to_string(), std::time::Instant::now());
    }

    fn was_removed(&self, container_id: &str) -> bool {
        lock(&self.removed)
            .get(container_id)
            .is_some_and(|at| at.elapsed() < STOP_MEMORY)
    }

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

/// The [`Launcher`] on a local Docker Engine; see the module docs.
#[derive(Debug)]
pub struct DockerLauncher {
    docker: Docker,
    settings: LauncherSettings,
    secrets: Mutex<HashMap<SessionId, Secret>>,
    shared: Arc<Shared>,
    /// Warm desktops (`warm.rs`); empty unless [`Self::keep_warm`] runs.
    warm: Arc<WarmPool>,
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
            warm: Arc::new(WarmPool::default()),
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

    /// Warm desktops started and waiting for a session (`warm/mod.rs`).
    pub fn warm_desktops_ready(&self) -> usize {
        self.warm.ready_count()
    }

    /// The session's VNC secret, for the media path; `None` when this
    /// launcher neither launched nor adopted the session.
    pub fn vnc_secret(&self, session: SessionId) -> Option<Secret> {
        lock(&self.secrets).get(&session).cloned()
    }

    /// The create request for `spec` with `vnc_secret` (no I/O).
    pub fn container_config(&self, spec: &LaunchSpec, vnc_secret: &Secret) -> ContainerCreateBody {
        self.desktop_config(
            Owner::Session(spec.session),
            &spec.gpu_indices,
            spec.host,
            vnc_secret,
        )
    }

    /// The create request of a desktop container for `owner`: a session's,
    /// or a warm desktop's, which differs only in its label, its network
    /// and the absence of `DESKGATE_SESSION_ID`.
    fn desktop_config(
        &self,
        owner: Owner,
        gpu_indices: &[u32],
        host: u16,
        vnc_secret: &Secret,
    ) -> ContainerCreateBody {
        let s = &self.settings;
        let gpus = gpu_indices.iter().map(u32::to_string).collect::<Vec<_>>();
        let mut labels = HashMap::from([
            owner.label(),
            (LABEL_GPUS.to_string(), gpus.join(",")),
            (LABEL_HOST.to_string(), host.to_string()),
        ]);
        if let Some(name) = &s.host_name {
            labels.insert(LABEL_HOST_NAME.to_string(), name.clone());
        }
        let mut env = Vec::new();
        if let Owner::Session(session) = owner {
            env.push(format!("DESKGATE_SESSION_ID={session}"));
        }
        env.extend([
            format!("DESKGATE_GPUS={}", gpus.join(",")),
            format!("DESKGATE_VNC_PASSWORD={}", vnc_secret.expose()),
        ]);
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
                network_mode: Some(owner.network()),
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

    async fn create_network(&self, owner: Owner, host: u16) -> Result<(), LaunchError> {
        let name = owner.network();
        let request = NetworkCreateRequest {
            name: name.clone(),
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
            labels: Some(
                [owner.label(), (LABEL_HOST.to_string(), host.to_string())]
                    .into_iter()
                    .chain(
                        self.settings
                            .host_name
                            .clone()
                            .map(|name| (LABEL_HOST_NAME.to_string(), name)),
                    )
                    .collect(),
            ),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(err) if is_status(&err, 409) => Ok(()),
            Err(err) => Err(docker_error(&format!("creating network {name}"), err)),
        }
    }

    /// Creates the session's network and container without starting it;
    /// returns the container id. [`Launcher::launch`] is this plus start.
    pub async fn create(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let session = spec.session;
        let name = container_name(session);
        self.create_network(Owner::Session(session), spec.host)
            .await?;
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
        remove_container_named(&self.docker, &container_name(session)).await
    }

    async fn remove_network(&self, session: SessionId) -> Result<(), LaunchError> {
        remove_network_named(&self.docker, &network_name(session)).await
    }

    /// Removes the session's container and network, whatever their state
    /// (a taken warm desktop's network too: it keeps its warm name).
    async fn remove_all(&self, session: SessionId) -> Result<(), LaunchError> {
        let warm_network = self
            .docker
            .inspect_container(&container_name(session), None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.host_config?.network_mode)
            .filter(|mode| mode.starts_with("deskgate-w-"));
        self.remove_container(session).await?;
        self.remove_network(session).await?;
        if let Some(network) = warm_network {
            remove_network_named(&self.docker, &network).await?;
        }
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

    /// The session containers (labelled as sessions, or warm desktops a
    /// session took); stopped ones too if `all`.
    async fn session_containers(&self, all: bool) -> Result<Vec<ContainerSummary>, LaunchError> {
        let mut containers = self.labelled_containers(LABEL_SESSION, all).await?;
        let warm = self.labelled_containers(LABEL_WARM, all).await?;
        containers.extend(warm.into_iter().filter(|c| session_of_summary(c).is_some()));
        Ok(containers)
    }

    /// The containers carrying `label` on this launcher's host; stopped ones
    /// too if `all`.
    async fn labelled_containers(
        &self,
        label: &str,
        all: bool,
    ) -> Result<Vec<ContainerSummary>, LaunchError> {
        let labels = scoped_filter(label, self.settings.host);
        let filters = HashMap::from([("label", labels.iter().map(String::as_str).collect())]);
        let options = ListContainersOptionsBuilder::default()
            .all(all)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_error(&format!("listing {label} containers"), e))
    }

    /// The networks carrying `label` on this launcher's host.
    async fn labelled_networks(&self, label: &str) -> Result<Vec<Network>, LaunchError> {
        let labels = scoped_filter(label, self.settings.host);
        let filters = HashMap::from([("label", labels.iter().map(String::as_str).collect())]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        self.docker
            .list_networks(Some(options))
            .await
            .map_err(|e| docker_error(&format!("listing {label} networks"), e))
    }

    /// Creates and starts the session's network and container.
    async fn start_cold(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let session = spec.session;
        let id = self.create(spec).await?;
        if let Err(err) = self.docker.start_container(&id, None).await {
            let err = docker_error(
                &format!("starting container {}", container_name(session)),
                err,
            );
            if let Err(cleanup) = self.remove_all(session).await {
                tracing::warn!(%session, error = %cleanup, "cleanup after a failed start failed");
            }
            return Err(err);
        }
        Ok(id)
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
            // With its network: a taken warm desktop's is not the session's.
            self.remove_all(session).await?;
        }
        // While the launch is under way the pool fills none of its GPUs.
        let takeable = spec.host == self.warm_host();
        let (plan, _launching) = self.warm.launch(&spec.gpu_indices, takeable);
        let (id, warm) = match self.use_warm(spec, plan).await {
            Some(id) => (id, true),
            None => (self.start_cold(spec).await?, false),
        };
        if self.shared.stopped_since(session, began) {
            // The session was stopped while this launch was under way (its
            // caller gave up on it, e.g. across a partition): the stop may
            // have found nothing to remove, so the container goes now.
            self.remove_all(session).await?;
            return Err(LaunchError(format!(
                "session {session} was stopped while its container started"
            )));
        }
        tracing::info!(%session, container = %id, warm, "session container started");
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
        // Its GPUs are free: the warm pool may fill them.
        self.warm.wake.notify_one();
        Ok(())
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        let containers = self.session_containers(false).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                Some(RunningContainer {
                    session: session_of_summary(&c)?,
                    container_id: c.id.clone()?,
                    host: host_of(c.labels.as_ref()),
                })
            })
            .collect())
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        let docker = self.docker.clone();
        let shared = self.shared.clone();
        // Not filtered on `deskgate.session`: a taken warm desktop lacks it.
        let labels = self
            .settings
            .host
            .map(|host| format!("{LABEL_HOST}={host}"))
            .into_iter()
            .collect();
        tokio::spawn(watch_events(docker, shared, labels, sink));
    }
}

#[cfg(test)]
mod tests;
