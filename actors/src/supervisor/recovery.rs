//! The supervisor's recovery, in both its forms: a crashed `SessionActor`
//! restarted one-for-one from its persisted record (or ended once it has
//! crashed more than [`RestartPolicy`](super::RestartPolicy) allows, which releases its GPUs), and
//! the whole tree rebuilt at start from the persisted sessions and the
//! containers still running. The `Supervisor` actor itself is in
//! `supervisor.rs`; this file only adds methods to its state.
//!
//! Invariant: a session this recovery gives up on or fails to restart has
//! its GPUs released (through [`release_lease`]) and its container stopped;
//! recovery at start changes nothing before the store and the launcher have
//! both been read.

use std::collections::HashSet;

use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Carried, RecoveryReport, SupervisorMsg, SupervisorState};
use crate::ask::ask;
use crate::ports::{EndReason, SessionId, SessionRecord, SessionState, StoreError};
use crate::protocol::{SessionEvent, release_lease};
use crate::scheduler::SchedulerMsg;
use crate::session::StartMode;

impl SupervisorState {
    /// One-for-one restart from the persisted record, within the policy.
    pub(super) async fn session_crashed(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        session: SessionId,
        why: String,
    ) {
        metrics::counter!("deskgate_session_crashes_total").increment(1);
        let Some(mut entry) = self.sessions.remove(&session) else {
            return;
        };
        let now = Instant::now();
        let window = self.args.restart.window;
        entry.crashes.retain(|t| now.duration_since(*t) < window);
        entry.crashes.push_back(now);
        let record = match self.load_record(session).await {
            Ok(Some(record)) => record,
            Ok(None) | Err(_) => {
                tracing::error!(%session, "crashed session has no readable record; releasing its GPUs");
                release_lease(&self.scheduler, session);
                let _ = self.args.launcher.stop(session).await;
                return;
            }
        };
        if entry.crashes.len() > self.args.restart.max_restarts {
            tracing::error!(%session, %why, "session keeps crashing; ending it");
            self.give_up(record, why, &entry.events).await;
            return;
        }
        tracing::warn!(%session, %why, restarts = entry.crashes.len(), "session actor crashed; restarting");
        let events = entry.events.clone();
        let carried = Carried {
            events: entry.events,
            run_origin: entry.run_origin,
            crashes: entry.crashes,
        };
        if let Err(err) = self
            .spawn_session(myself, record.clone(), StartMode::Restarted, carried)
            .await
        {
            tracing::error!(%session, %err, "cannot restart the session; ending it");
            self.give_up(record, err.to_string(), &events).await;
        }
    }

    /// Ends a session whose actor cannot be trusted any more: stops its
    /// container and releases its GPUs. Time not yet billed is not billed.
    async fn give_up(
        &mut self,
        record: SessionRecord,
        why: String,
        events: &broadcast::Sender<SessionEvent>,
    ) {
        let _ = self.args.launcher.stop(record.id).await;
        release_lease(&self.scheduler, record.id);
        self.record_end(record, EndReason::Crashed(why), events)
            .await;
    }

    async fn load_record(&self, session: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.args.store.load(session).await
    }

    /// Rebuilds the tree from persisted sessions and running containers.
    pub(super) async fn recover(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<RecoveryReport, ActorProcessingErr> {
        let mut report = RecoveryReport::default();
        let records = self.args.store.load_active().await?;
        let containers = self.args.launcher.running().await?;
        let live: HashSet<SessionId> = records.iter().map(|r| r.id).collect();
        for container in &containers {
            if !live.contains(&container.session) {
                tracing::warn!(session = %container.session, container = %container.container_id, "removing orphan container");
                self.args.launcher.stop(container.session).await?;
                report.orphans_removed.push(container.session);
            }
        }
        for mut record in records {
            let id = record.id;
            let has_container = containers.iter().any(|c| c.session == id);
            match record.state {
                SessionState::Queued => match self.enqueue(record.clone(), None).await {
                    Ok(_) => report.requeued.push(id),
                    Err(err) => {
                        tracing::warn!(session = %id, %err, "cannot re-queue; ending it");
                        record.end(EndReason::LostOnRestart);
                        self.args.store.save(&record).await?;
                        report.ended.push(id);
                    }
                },
                SessionState::Running | SessionState::Launching if has_container => {
                    // A gate that died mid-launch never recorded the id of
                    // the container its launcher went on to start.
                    if record.container_id.is_none() {
                        record.container_id = containers
                            .iter()
                            .find(|c| c.session == id)
                            .map(|c| c.container_id.clone());
                    }
                    if self.adopt(myself, record.clone()).await {
                        report.adopted.push(id);
                    } else {
                        self.args.launcher.stop(id).await?;
                        record.end(EndReason::LostOnRestart);
                        self.args.store.save(&record).await?;
                        report.ended.push(id);
                    }
                }
                _ => {
                    // Its container is not running (or it was already
                    // stopping): it ends; the GPUs were never taken in this
                    // process. A container that exited (a Docker Engine
                    // restart stops them all) is still there, with its
                    // network, until it is stopped; stopping none is a no-op.
                    self.args.launcher.stop(id).await?;
                    let reason = record.end_reason.take().unwrap_or(EndReason::LostOnRestart);
                    record.end(reason);
                    self.args.store.save(&record).await?;
                    report.ended.push(id);
                }
            }
        }
        Ok(report)
    }

    /// Adopts a session whose container survived: takes its GPUs back at the
    /// scheduler and resumes its billing clock.
    async fn adopt(&mut self, myself: &ActorRef<SupervisorMsg>, record: SessionRecord) -> bool {
        let runway_ms = self
            .runway_ms(&record.wallet, record.gpus, None)
            .await
            .unwrap_or(0);
        let session = record.id;
        let wallet = record.wallet.clone();
        let gpus = record.gpu_addrs.clone();
        let adopted = ask(&self.scheduler, |reply| SchedulerMsg::Adopt {
            session,
            wallet,
            gpus,
            runway_ms,
            reply,
        })
        .await;
        if !matches!(adopted, Some(Ok(_))) {
            return false;
        }
        match self
            .spawn_session(myself, record, StartMode::Adopted, Carried::new())
            .await
        {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(%session, %err, "cannot start the adopted session's actor");
                release_lease(&self.scheduler, session);
                false
            }
        }
    }
}
