//! What the Docker launcher does with Docker for its warm desktops: the
//! refill pass ([`DockerLauncher::keep_warm`]), starting a desktop and
//! proving its VNC server up, taking one at launch, and removing them.
//!
//! Invariants: the pool's lock is never held across a Docker call (the
//! bookkeeping in `warm/mod.rs` decides, this file acts); a desktop is only
//! offered once its VNC server has answered; a taken desktop is checked
//! running *after* its rename, so an exit is either seen there or reported
//! to its session by the exit watcher (which knows it by its new name).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    RenameContainerOptionsBuilder,
};
use deskgate_actors::ports::{LaunchError, LaunchSpec};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use super::{LABEL_WARM, LaunchPlan, WarmDesktop, warm_container_name, warm_network_name};
use crate::launcher::docker::desktop::vnc_bridge;
use crate::launcher::docker::{
    DockerLauncher, LABEL_GPUS, Owner, container_name, docker_error, lock, random_secret,
    remove_container_named, remove_network_named, session_of_summary,
};

/// How often the pool looks again without being woken (dead desktops,
/// GPUs freed by a process that is not this one).
const REFILL_INTERVAL: Duration = Duration::from_secs(5);
/// How long a new desktop has to bring its VNC server up.
const VNC_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Reservations one pass may try: each one a launch overtakes costs a new
/// look at which GPUs are free.
const MAX_TRIES_PER_PASS: usize = 16;

impl DockerLauncher {
    /// Keeps [`super::super::LauncherSettings::warm_desktops`] warm desktops
    /// on the free GPUs among `gpus` (this host's inventory), lowest index
    /// first (the order the scheduler leases in), refilling after each take,
    /// each stop and every [`REFILL_INTERVAL`]. It first removes every warm
    /// desktop a previous process left on this host (recovery), also when
    /// the pool is off. Runs as long as the launcher.
    pub fn keep_warm(self: &Arc<Self>, gpus: Vec<u32>) {
        let launcher = Arc::downgrade(self);
        let pool = self.warm.clone();
        let target = self.settings.warm_desktops;
        tokio::spawn(async move {
            let Some(first) = launcher.upgrade() else {
                return;
            };
            match first.remove_leftovers().await.map(|(_, removed)| removed) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(removed, "warm desktops of a previous run removed");
                }
                Err(err) => tracing::warn!(error = %err, "cannot remove old warm desktops"),
            }
            drop(first);
            if target == 0 {
                return;
            }
            tracing::info!(target, ?gpus, "keeping warm desktops");
            loop {
                let Some(launcher) = launcher.upgrade() else {
                    return;
                };
                if let Err(err) = launcher.refill(&gpus, target).await {
                    tracing::warn!(error = %err, "refilling warm desktops failed; trying again");
                }
                metrics::gauge!("deskgate_launcher_warm_desktops").set(pool.ready_count() as f64);
                drop(launcher);
                tokio::select! {
                    () = pool.wake.notified() => {}
                    () = tokio::time::sleep(REFILL_INTERVAL) => {}
                }
            }
        });
    }

    /// The host number warm desktops are labelled with: a launch for
    /// another host number cannot take one.
    pub(in crate::launcher::docker) fn warm_host(&self) -> u16 {
        self.settings.host.unwrap_or(0)
    }

    /// Carries out the pool's part of a launch: the desktops in the way are
    /// removed (in the background: they hold no lease, the launch does not
    /// wait for them), and the one to take is taken. `Some(container id)`
    /// when the session now runs in a warm desktop.
    pub(in crate::launcher::docker) async fn use_warm(
        &self,
        spec: &LaunchSpec,
        plan: LaunchPlan,
    ) -> Option<String> {
        for desktop in plan.give_way {
            tracing::debug!(warm = %desktop.id, gpu = desktop.gpu, "a warm desktop gives way to a launch");
            tokio::spawn(remove_warm(self.docker.clone(), desktop.id));
        }
        let pool_on = self.settings.warm_desktops > 0;
        let Some(desktop) = plan.take else {
            if let (true, Some(miss)) = (pool_on, plan.miss) {
                metrics::counter!("deskgate_launcher_warm_misses_total", "reason" => miss.label())
                    .increment(1);
            }
            return None;
        };
        let warm = desktop.id;
        let container_id = desktop.container_id.clone();
        let session = spec.session;
        match self.take_warm(spec, desktop).await {
            Ok(id) => {
                metrics::counter!("deskgate_launcher_warm_hits_total").increment(1);
                metrics::gauge!("deskgate_launcher_warm_desktops")
                    .set(self.warm.ready_count() as f64);
                tracing::info!(%session, %warm, container = %id, "session took a warm desktop");
                self.warm.wake.notify_one();
                Some(id)
            }
            Err(err) => {
                metrics::counter!("deskgate_launcher_warm_misses_total", "reason" => super::Miss::Gone.label())
                    .increment(1);
                tracing::warn!(%session, %warm, error = %err, "the warm desktop could not be taken; starting one");
                // It may carry the session's name by now: its end is not the
                // session's exit.
                self.shared.mark_removed(&container_id);
                if let Err(cleanup) = self.remove_all(session).await {
                    tracing::warn!(%session, error = %cleanup, "cleanup after a failed take failed");
                }
                remove_warm(self.docker.clone(), warm).await;
                None
            }
        }
    }

    /// Makes `desktop` the session's: renamed to the session's container
    /// name, its VNC secret now the session's, and running.
    async fn take_warm(
        &self,
        spec: &LaunchSpec,
        desktop: WarmDesktop,
    ) -> Result<String, LaunchError> {
        let name = container_name(spec.session);
        let options = RenameContainerOptionsBuilder::default().name(&name).build();
        self.docker
            .rename_container(&desktop.container_id, options)
            .await
            .map_err(|e| docker_error(&format!("renaming warm desktop {}", desktop.id), e))?;
        lock(&self.secrets).insert(spec.session, desktop.secret);
        // After the rename, an exit reaches the session through the exit
        // watcher; before it, only this look can see one.
        let running = self
            .docker
            .inspect_container(&desktop.container_id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| docker_error(&format!("inspecting {name}"), e))?
            .state
            .and_then(|s| s.running)
            .unwrap_or(false);
        if !running {
            return Err(LaunchError(format!(
                "warm desktop {} had stopped",
                desktop.id
            )));
        }
        Ok(desktop.container_id)
    }

    /// One pass: forgets and removes dead desktops, then starts desktops on
    /// free GPUs until the pool holds `target` (or no GPU is free).
    async fn refill(&self, gpus: &[u32], target: usize) -> Result<(), LaunchError> {
        let (alive, _) = self.remove_leftovers().await?;
        for dead in self.warm.forget_dead(&alive) {
            tracing::info!(warm = %dead.id, "a warm desktop went away; removing what is left");
            remove_warm(self.docker.clone(), dead.id).await;
        }
        for _ in 0..MAX_TRIES_PER_PASS {
            if self.warm.size() >= target {
                break;
            }
            let seen = self.warm.epochs();
            let busy = self.session_gpus().await?;
            let in_pool = self.warm.gpus_in_pool();
            let Some(gpu) = gpus
                .iter()
                .copied()
                .filter(|g| !busy.contains(g) && !in_pool.contains(g))
                .min()
            else {
                break;
            };
            let id = Uuid::new_v4();
            if !self.warm.reserve(gpu, id, &seen) {
                continue;
            }
            match self.start_warm(gpu, id).await {
                Ok(Some(desktop)) => {
                    tracing::debug!(warm = %id, gpu, "warm desktop ready");
                    if let Err(late) = self.warm.started(desktop) {
                        remove_warm(self.docker.clone(), late.id).await;
                    }
                }
                Ok(None) => {
                    tracing::debug!(warm = %id, gpu, "a launch took the GPU of a starting warm desktop");
                    self.warm.failed(gpu, id);
                    remove_warm(self.docker.clone(), id).await;
                }
                Err(err) => {
                    self.warm.failed(gpu, id);
                    remove_warm(self.docker.clone(), id).await;
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// The GPUs this launcher's session containers are labelled with.
    async fn session_gpus(&self) -> Result<HashSet<u32>, LaunchError> {
        Ok(self
            .session_containers(true)
            .await?
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(LABEL_GPUS).cloned())
            .flat_map(|list| {
                list.split(',')
                    .filter_map(|g| g.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect())
    }

    /// Starts a warm desktop on `gpu` and waits for its VNC server; `None`
    /// when a launch took the GPU meanwhile (the caller removes it).
    async fn start_warm(&self, gpu: u32, id: Uuid) -> Result<Option<WarmDesktop>, LaunchError> {
        let host = self.warm_host();
        self.create_network(Owner::Warm(id), host).await?;
        let secret = random_secret();
        let config = self.desktop_config(Owner::Warm(id), &[gpu], host, &secret);
        let name = warm_container_name(id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), config)
            .await
            .map_err(|e| docker_error(&format!("creating {name}"), e))?;
        if self.warm.gave_way(id) {
            return Ok(None);
        }
        self.docker
            .start_container(&created.id, None)
            .await
            .map_err(|e| docker_error(&format!("starting {name}"), e))?;
        if !self.wait_for_vnc(&name, id).await? {
            return Ok(None);
        }
        Ok(Some(WarmDesktop {
            id,
            container_id: created.id,
            gpu,
            secret,
        }))
    }

    /// Waits until the VNC server of warm desktop `id` (container
    /// `container`) sends its protocol version: `true`; `false` as soon as a
    /// launch took its GPU.
    async fn wait_for_vnc(&self, container: &str, id: Uuid) -> Result<bool, LaunchError> {
        let deadline = tokio::time::Instant::now() + VNC_READY_TIMEOUT;
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            if self.warm.gave_way(id) {
                return Ok(false);
            }
            match vnc_bridge(&self.docker, container, &self.settings.user).await {
                Ok(mut stream) => {
                    let mut version = [0u8; 12];
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        stream.read_exact(&mut version),
                    )
                    .await
                    {
                        Ok(Ok(_)) if version.starts_with(b"RFB ") => return Ok(true),
                        Ok(Ok(_)) => last = "not an RFB server".into(),
                        Ok(Err(err)) => last = err.to_string(),
                        Err(_) => last = "no version within 2 s".into(),
                    }
                }
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LaunchError(format!(
            "{container}: its VNC server did not answer within {} s ({last})",
            VNC_READY_TIMEOUT.as_secs()
        )))
    }

    /// Removes the untaken warm desktops that are stopped or that the pool
    /// neither holds nor is handing to a launch (a previous process's, or
    /// one whose launch was cancelled before its rename), and the warm
    /// networks left without a container. Returns the ids of the running
    /// desktops the pool holds, and how many desktops it removed.
    async fn remove_leftovers(&self) -> Result<(HashSet<Uuid>, usize), LaunchError> {
        let mut alive = HashSet::new();
        let mut removed = 0;
        for container in self.labelled_containers(LABEL_WARM, true).await? {
            let Some(id) = untaken_warm_id(&container) else {
                continue;
            };
            let running = matches!(container.state, Some(ContainerSummaryStateEnum::RUNNING));
            if running && self.warm.holds(id) {
                alive.insert(id);
            } else {
                remove_warm(self.docker.clone(), id).await;
                removed += 1;
            }
        }
        for network in self.labelled_networks(LABEL_WARM).await? {
            let Some(name) = network.name else { continue };
            let held = warm_id_of(network.labels.as_ref()).is_some_and(|id| self.warm.holds(id));
            let empty = self
                .docker
                .inspect_network(&name, None::<InspectNetworkOptions>)
                .await
                .ok()
                .is_some_and(|n| n.containers.unwrap_or_default().is_empty());
            if empty
                && !held
                && let Err(err) = remove_network_named(&self.docker, &name).await
            {
                tracing::warn!(error = %err, "cannot remove a warm network; trying again later");
            }
        }
        Ok((alive, removed))
    }
}

/// The warm id of a warm desktop no session took; `None` for anything else.
fn untaken_warm_id(container: &ContainerSummary) -> Option<Uuid> {
    if session_of_summary(container).is_some() {
        return None;
    }
    warm_id_of(container.labels.as_ref())
}

fn warm_id_of(labels: Option<&std::collections::HashMap<String, String>>) -> Option<Uuid> {
    Uuid::parse_str(labels?.get(LABEL_WARM)?).ok()
}

/// Removes warm desktop `id` (container and network), whatever its state;
/// failures are logged (the next pass or recovery tries again).
async fn remove_warm(docker: Docker, id: Uuid) {
    let container = remove_container_named(&docker, &warm_container_name(id)).await;
    let network = remove_network_named(&docker, &warm_network_name(id)).await;
    for err in [container, network].into_iter().filter_map(Result::err) {
        tracing::warn!(warm = %id, error = %err, "cannot remove a warm desktop; trying again later");
    }
}
