//! The simulated launcher backend: it starts nothing. Like kwok's simulated
//! nodes for Kubernetes scale tests, it answers the [`Launcher`] port as a
//! host that launches instantly and never fails, so that a benchmark of the
//! gate's queue, scheduler, API and database measures those and not Docker.
//!
//! Invariants:
//! - it is chosen only by `DESKGATE_LAUNCHER_BACKEND=simulated`, on fake
//!   GPUs, and the TLS (production) posture refuses it: a paying user must
//!   never be granted a desktop that does not exist;
//! - every launch and stop is logged with `backend = "simulated"`, and
//!   `/readyz` names it, so nobody mistakes it for a real host;
//! - its "containers" live in this process's memory: a gate restart finds
//!   none running, as after a host that lost its containers, and recovery
//!   ends the sessions that had them;
//! - a container exits only when [`SimulatedLauncher::exit`] says so (a
//!   stopped container reports no exit, as with Docker).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use deskgate_actors::ports::{
    ContainerExit, LaunchError, LaunchSpec, Launcher, RunningContainer, SessionId,
};
use tokio::sync::mpsc;

/// What `/readyz` and the logs call this backend.
pub const NAME: &str = "launcher (simulated: starts no desktops)";

/// A [`Launcher`] that starts nothing; see the module docs.
#[derive(Debug, Default)]
pub struct SimulatedLauncher {
    running: Mutex<HashMap<SessionId, RunningContainer>>,
    exits: Mutex<Vec<mpsc::UnboundedSender<ContainerExit>>>,
}

impl SimulatedLauncher {
    /// A simulated host with nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the session's simulated container on its own, as a crash would,
    /// and reports the exit to every watcher. `false` if it was not running.
    pub fn exit(&self, session: SessionId, code: i64) -> bool {
        if lock(&self.running).remove(&session).is_none() {
            return false;
        }
        tracing::info!(backend = "simulated", %session, code, "simulated container exited");
        lock(&self.exits).retain(|sink| {
            sink.send(ContainerExit {
                session,
                code,
                oom: false,
            })
            .is_ok()
        });
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one is still whole.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Launcher for SimulatedLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let mut running = lock(&self.running);
        // A retried launch of a session that already runs is the same launch.
        if let Some(existing) = running.get(&spec.session) {
            return Ok(existing.container_id.clone());
        }
        let container_id = format!("simulated-{}", spec.session);
        running.insert(
            spec.session,
            RunningContainer {
                session: spec.session,
                container_id: container_id.clone(),
                host: spec.host,
            },
        );
        tracing::info!(backend = "simulated", session = %spec.session, host = spec.host, gpus = ?spec.gpu_indices, "simulated container started");
        Ok(container_id)
    }

    async fn stop(&self, session: SessionId) -> Result<(), LaunchError> {
        if lock(&self.running).remove(&session).is_some() {
            tracing::info!(backend = "simulated", %session, "simulated container stopped");
        }
        Ok(())
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        Ok(lock(&self.running).values().cloned().collect())
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        lock(&self.exits).push(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(session: SessionId) -> LaunchSpec {
        LaunchSpec {
            session,
            host: 0,
            gpu_indices: vec![1],
        }
    }

    #[tokio::test]
    async fn a_launch_runs_until_stopped_and_a_retried_launch_is_the_same_one() {
        let launcher = SimulatedLauncher::new();
        let session = SessionId::new();
        let id = launcher.launch(&spec(session)).await.unwrap();
        assert_eq!(launcher.launch(&spec(session)).await.unwrap(), id);
        let running = launcher.running().await.unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].session, session);
        assert_eq!(running[0].container_id, id);

        launcher.stop(session).await.unwrap();
        assert!(launcher.running().await.unwrap().is_empty());
        // Stopping what is gone succeeds, as the port requires.
        launcher.stop(session).await.unwrap();
        let again = launcher.launch(&spec(session)).await.unwrap();
        assert_eq!(again, id, "the id names the session, not the attempt");
    }

    #[tokio::test]
    async fn an_exit_is_reported_to_watchers_and_a_stop_is_not() {
        let launcher = SimulatedLauncher::new();
        let (tx, mut exits) = mpsc::unbounded_channel();
        launcher.watch_exits(tx);
        let (crashing, stopped) = (SessionId::new(), SessionId::new());
        launcher.launch(&spec(crashing)).await.unwrap();
        launcher.launch(&spec(stopped)).await.unwrap();

        launcher.stop(stopped).await.unwrap();
        assert!(launcher.exit(crashing, 137));
        assert!(!launcher.exit(crashing, 137), "it already exited");
        assert!(
            !launcher.exit(stopped, 0),
            "a stopped container cannot exit"
        );

        let exit = exits.try_recv().expect("the crash is reported");
        assert_eq!(
            exit,
            ContainerExit {
                session: crashing,
                code: 137,
                oom: false
            }
        );
        assert!(exits.try_recv().is_err(), "only the crash is reported");
        assert!(launcher.running().await.unwrap().is_empty());
    }
}
