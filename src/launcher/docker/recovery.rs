//! Recovery of the Docker backend after its process restarted:
//! [`DockerLauncher::recover`] (the launcher service, with nobody to ask
//! which sessions are known) and [`DockerLauncher::reconcile`] (the caller
//! knows them). Session containers are found by label, or by name for a
//! warm desktop a session took; untaken warm desktops are the warm pool's to
//! remove (`warm/refill.rs`, `reap_warm`).
//!
//! Invariant: nothing of a session the caller knows is removed; everything
//! of one it does not know is, container and network.

use std::collections::HashSet;

use bollard::query_parameters::InspectContainerOptions;
use deskgate_actors::ports::{ContainerExit, LaunchError, RunningContainer, SessionId};

use super::{DockerLauncher, LABEL_SESSION, host_of, lock, session_of, session_of_summary};
use crate::platform::secret::Secret;

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

impl DockerLauncher {
    /// After this process restarts with nobody to ask which sessions are
    /// known (the launcher service): adopts every running session container
    /// and removes the rest, stopped or never started, with their networks,
    /// reporting each as an exit so the gate can end its session.
    pub async fn recover(&self) -> Result<Recovered, LaunchError> {
        let mut running = HashSet::new();
        let mut exited = Vec::new();
        for summary in self.session_containers(true).await? {
            let Some(session) = session_of_summary(&summary) else {
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
            let Some(session) = session_of_summary(&summary) else {
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
        for network in self.labelled_networks(LABEL_SESSION).await? {
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
