//! The gate's actor tree on its real adapters: the supervisor of
//! `deskgate-actors` with the batched PostgreSQL ledger, the PostgreSQL
//! session store and a launcher.
//!
//! Starting the tree is also the gate's crash recovery: the supervisor reads
//! the unended sessions from PostgreSQL and the running containers from the
//! launcher, adopts sessions whose container survived (billing resumes from
//! the last committed debit, so downtime is not billed), ends those whose
//! container is gone and frees their GPUs, and removes containers nobody owns.

use std::sync::Arc;

use deskgate_actors::ask::ask;
use deskgate_actors::gpu::{GpuMsg, GpuStatus};
use deskgate_actors::ports::{
    CreditSeconds, EndReason, GpuAddr, Launcher, Ledger, LedgerError, SessionId, WalletId,
};
use deskgate_actors::protocol::{JoiningGpu, PoolSnapshot, SessionView};
use deskgate_actors::queue::Policy;
use deskgate_actors::scheduler::SchedulerMsg;
use deskgate_actors::session::SessionSettings;
use deskgate_actors::supervisor::{
    RecoveryReport, RestartPolicy, SessionHandle, StartError, Supervisor, SupervisorArgs,
    SupervisorMsg,
};
use ractor::ActorRef;
use ractor::rpc::CallResult;

use crate::db::DbPool;
use crate::money::ledger::{BatchingLedger, PgLedger};
use crate::sessions::profiles::PROFILES;
use crate::sessions::store::PgSessionStore;

/// Debits committed together at most (group commit of the billing path).
const MAX_DEBIT_BATCH: usize = 512;
/// New claims' rows inserted together at most (group commit of the claim path).
const MAX_QUEUED_ROW_BATCH: usize = 512;

/// Why the tree could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the session supervisor: {0}")]
pub struct TreeError(String);

/// The running tree and what the API asks of it.
#[derive(Clone, Debug)]
pub struct SessionTree {
    supervisor: ActorRef<SupervisorMsg>,
    ledger: Arc<BatchingLedger>,
}

impl SessionTree {
    /// Starts the tree over `gpus` (recovering what a previous run left).
    /// Fails, having ended nothing, when recovery cannot read the session
    /// store or the launcher's containers (a GPU host down): retry later.
    pub async fn start(
        pool: DbPool,
        launcher: Arc<dyn Launcher>,
        gpus: Vec<GpuAddr>,
        settings: SessionSettings,
    ) -> Result<Self, TreeError> {
        Self::start_with_out(pool, launcher, gpus, Vec::new(), settings).await
    }

    /// [`SessionTree::start`] with some GPUs out of the pool from the
    /// first moment (a drained or silent host's, unhealthy ones).
    pub async fn start_with_out(
        pool: DbPool,
        launcher: Arc<dyn Launcher>,
        gpus: Vec<GpuAddr>,
        gpus_out: Vec<JoiningGpu>,
        settings: SessionSettings,
    ) -> Result<Self, TreeError> {
        let ledger = Arc::new(BatchingLedger::spawn(
            PgLedger::new(pool.clone()),
            MAX_DEBIT_BATCH,
        ));
        let args = SupervisorArgs {
            gpus,
            gpus_out,
            policy: Policy::default(),
            profile_sizes: PROFILES.iter().map(|p| p.gpus).collect(),
            ledger: ledger.clone(),
            store: Arc::new(PgSessionStore::batching(pool, MAX_QUEUED_ROW_BATCH)),
            launcher,
            settings,
            restart: RestartPolicy::default(),
        };
        let (supervisor, _) = ractor::Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| TreeError(e.to_string()))?;
        // Recovery runs first thing in the supervisor, however long it takes
        // (it lists every host's containers and may stop orphans); if it
        // failed (the store or a launcher could not be read) the supervisor
        // has stopped and this question is dropped unanswered: an error to
        // retry, not a gate.
        let answer = supervisor
            .call(|reply| SupervisorMsg::Recovery { reply }, None)
            .await;
        // The supervisor has logged what recovery did.
        let Ok(CallResult::Success(_)) = answer else {
            supervisor.stop(None);
            return Err(TreeError(
                "recovery did not complete: the session store or a launcher could not be read \
                 (see the error logged before this)"
                    .into(),
            ));
        };
        Ok(Self { supervisor, ledger })
    }

    /// What recovery did at start.
    pub async fn recovery(&self) -> RecoveryReport {
        ask(&self.supervisor, |reply| SupervisorMsg::Recovery { reply })
            .await
            .unwrap_or_default()
    }

    /// Claims `gpus` GPUs for `wallet`.
    /// The balance is read here, beside the supervisor, which then queues
    /// claims without waiting on the database.
    pub async fn claim(&self, wallet: WalletId, gpus: u32) -> Result<SessionHandle, StartError> {
        let balance = self.ledger.balance(&wallet).await?;
        ask(&self.supervisor, |reply| SupervisorMsg::StartSession {
            wallet,
            gpus,
            balance: Some(balance),
            reply,
        })
        .await
        .unwrap_or(Err(StartError::SchedulerSilent))
    }

    /// The session's current view; `None` once it has ended or if unknown.
    pub async fn view(&self, session: SessionId) -> Option<SessionView> {
        ask(&self.supervisor, |reply| SupervisorMsg::View {
            session,
            reply,
        })
        .await
        .flatten()
    }

    /// The session's handle (events channel), if it is live.
    pub async fn lookup(&self, session: SessionId) -> Option<SessionHandle> {
        ask(&self.supervisor, |reply| SupervisorMsg::Lookup {
            session,
            reply,
        })
        .await
        .flatten()
    }

    /// Stops a session or takes it out of the queue; false if it was not live.
    pub async fn stop(&self, session: SessionId, reason: EndReason) -> bool {
        ask(&self.supervisor, |reply| SupervisorMsg::StopSession {
            session,
            reason,
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// The browser is there.
    pub fn presence(&self, session: SessionId) {
        let _ = self.supervisor.cast(SupervisorMsg::Presence { session });
    }

    /// The user gave input (a media stream's keys or pointer, or "keep my
    /// desktop"): presence, and the idle clock starts again.
    pub fn input(&self, session: SessionId) {
        let _ = self.supervisor.cast(SupervisorMsg::Input { session });
    }

    /// A deposit was credited to `wallet`: running sessions re-plan their end.
    pub fn credit_changed(&self, wallet: WalletId) {
        let _ = self
            .supervisor
            .cast(SupervisorMsg::CreditChanged { wallet });
    }

    /// A GPU turned unhealthy (`Some(reason)`) or recovered (`None`): it
    /// grants no new leases while unhealthy.
    pub fn set_health(&self, gpu: GpuAddr, unhealthy: Option<String>) {
        let _ = self
            .supervisor
            .cast(SupervisorMsg::ToScheduler(SchedulerMsg::SetHealth {
                gpu,
                unhealthy,
            }));
    }

    /// GPUs that joined the pool (a GPU host appeared), each in the state
    /// it joins in; known ones are skipped.
    pub fn add_gpus(&self, gpus: Vec<JoiningGpu>) {
        let _ = self.supervisor.cast(SupervisorMsg::AddGpus { gpus });
    }

    /// A host is out (drained, or not answering: no new leases on `gpus`)
    /// or back; independent of each GPU's own drain and health.
    pub fn set_host_out(&self, gpus: Vec<GpuAddr>, out: bool) {
        let _ = self
            .supervisor
            .cast(SupervisorMsg::ToScheduler(SchedulerMsg::SetHostOut {
                gpus,
                out,
            }));
    }

    /// Drains a GPU (no new leases; the current one stays) or puts it back.
    pub fn drain(&self, gpu: GpuAddr, on: bool) {
        let _ = self
            .supervisor
            .cast(SupervisorMsg::ToScheduler(SchedulerMsg::Drain { gpu, on }));
    }

    /// Every GPU and its lease state, in address order; `None` if the
    /// scheduler does not answer. A GPU actor that does not answer is left out.
    pub async fn gpus(&self) -> Option<Vec<(GpuAddr, GpuStatus)>> {
        let actors = ask(&self.supervisor, |reply| {
            SupervisorMsg::ToScheduler(SchedulerMsg::Gpus { reply })
        })
        .await?;
        let mut statuses = Vec::with_capacity(actors.len());
        for (addr, actor) in actors {
            if let Some(status) = ask(&actor, |reply| GpuMsg::Status { reply }).await {
                statuses.push((addr, status));
            }
        }
        Some(statuses)
    }

    /// The pool at a glance.
    pub async fn snapshot(&self) -> Option<PoolSnapshot> {
        ask(&self.supervisor, |reply| SupervisorMsg::Snapshot { reply }).await
    }

    /// The wallet's credit.
    pub async fn balance(&self, wallet: &WalletId) -> Result<CreditSeconds, LedgerError> {
        self.ledger.balance(wallet).await
    }
}
