//! `Supervisor`: the root of the tree. It starts the GPU actors and the
//! scheduler, spawns a wallet actor per active wallet and a session actor per
//! session, routes container exits, rebuilds the tree from persisted state
//! at start, and applies the restart policy:
//!
//! - a crashed `SessionActor` is restarted one-for-one from its persisted
//!   record (its GPUs stay leased, billing resumes from the last committed
//!   debit); more than `max_restarts` crashes within `window` and the
//!   session is ended instead, which releases its GPUs;
//! - a crashed `WalletActor` is simply respawned on next use (its only
//!   state is a cache of the ledger);
//! - the scheduler and GPU actors hold the lease state, so their failure is
//!   escalated: the supervisor stops, and the process restarts and recovers
//!   from PostgreSQL and the running containers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::gpu::spawn_gpu;
use crate::ports::{
    ContainerExit, EndReason, GpuAddr, Launcher, Ledger, LedgerError, SessionId, SessionRecord,
    SessionState, SessionStore, StoreError, WalletId,
};
use crate::queue::{ClaimError, Policy};
use crate::scheduler::{PoolSnapshot, Scheduler, SchedulerArgs, SchedulerMsg};
use crate::session::{
    RunOrigin, SessionActor, SessionArgs, SessionEvent, SessionMsg, SessionSettings, SessionView,
    StartMode, new_record,
};
use crate::wallet::{WalletArgs, WalletMsg, spawn_wallet};

/// How long the supervisor waits on a child's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Events buffered per session for slow subscribers (a lagging browser
/// skips to the latest; every event carries the whole current value).
const EVENT_BUFFER: usize = 16;

/// When to stop restarting a crashing session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `window`.
    pub max_restarts: usize,
    /// The sliding window.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window: Duration::from_secs(10),
        }
    }
}

/// Everything the tree needs.
#[derive(Clone)]
pub struct SupervisorArgs {
    /// The GPU pool.
    pub gpus: Vec<GpuAddr>,
    /// Scheduling policy.
    pub policy: Policy,
    /// GPU counts of the profiles offered.
    pub profile_sizes: Vec<u32>,
    /// Money.
    pub ledger: Arc<dyn Ledger>,
    /// Session records.
    pub store: Arc<dyn SessionStore>,
    /// Containers.
    pub launcher: Arc<dyn Launcher>,
    /// Billing and presence timing.
    pub settings: SessionSettings,
    /// Session restart policy.
    pub restart: RestartPolicy,
}

impl std::fmt::Debug for SupervisorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorArgs")
            .field("gpus", &self.gpus.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The queue refused the claim.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The wallet's credit could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An actor could not be started.
    #[error("cannot start the session: {0}")]
    Spawn(String),
}

/// A running session as the API sees it.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    /// Its id.
    pub id: SessionId,
    /// Its owner.
    pub wallet: WalletId,
    /// Its actor (changes if the actor is restarted; look it up again).
    pub actor: ActorRef<SessionMsg>,
    /// Its events; the channel survives actor restarts.
    pub events: broadcast::Sender<SessionEvent>,
}

/// What recovery found and did at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Running sessions adopted with their containers.
    pub adopted: Vec<SessionId>,
    /// Queued sessions queued again, in their original order.
    pub requeued: Vec<SessionId>,
    /// Sessions ended because their container was gone.
    pub ended: Vec<SessionId>,
    /// Containers with no live session, removed.
    pub orphans_removed: Vec<SessionId>,
}

/// Messages to the [`Supervisor`].
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Start a session for `wallet` on `gpus` GPUs.
    StartSession {
        /// The wallet.
        wallet: WalletId,
        /// GPUs wanted.
        gpus: u32,
        /// The session, or why not.
        reply: RpcReplyPort<Result<SessionHandle, StartError>>,
    },
    /// Find a live session.
    Lookup {
        /// The session.
        session: SessionId,
        /// It, if live.
        reply: RpcReplyPort<Option<SessionHandle>>,
    },
    /// End a session (user stop, admin kill); answers false if unknown.
    StopSession {
        /// The session.
        session: SessionId,
        /// Why.
        reason: EndReason,
        /// Whether it was live.
        reply: RpcReplyPort<bool>,
    },
    /// A wallet's credit changed outside billing (a deposit was credited).
    CreditChanged {
        /// The wallet.
        wallet: WalletId,
    },
    /// A container ended by itself (from the launcher).
    ContainerExited(ContainerExit),
    /// Pass a message to the scheduler (drain, health).
    ToScheduler(SchedulerMsg),
    /// The pool at a glance.
    Snapshot {
        /// The answer.
        reply: RpcReplyPort<PoolSnapshot>,
    },
    /// What recovery did at start.
    Recovery {
        /// The answer.
        reply: RpcReplyPort<RecoveryReport>,
    },
}

/// The root actor.
#[derive(Debug, Default)]
pub struct Supervisor;

struct SessionEntry {
    wallet: WalletId,
    actor: ActorRef<SessionMsg>,
    events: broadcast::Sender<SessionEvent>,
    run_origin: RunOrigin,
    crashes: VecDeque<Instant>,
}

/// What a session keeps across restarts of its actor.
struct Carried {
    events: broadcast::Sender<SessionEvent>,
    run_origin: RunOrigin,
    crashes: VecDeque<Instant>,
}

impl Carried {
    fn new() -> Self {
        Self {
            events: broadcast::channel(EVENT_BUFFER).0,
            run_origin: RunOrigin::default(),
            crashes: VecDeque::new(),
        }
    }
}

/// The supervisor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    scheduler: ActorRef<SchedulerMsg>,
    scheduler_id: ActorId,
    gpu_ids: Vec<ActorId>,
    wallets: HashMap<WalletId, ActorRef<WalletMsg>>,
    sessions: HashMap<SessionId, SessionEntry>,
    by_actor: HashMap<ActorId, SessionId>,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorState")
            .field("sessions", &self.sessions.len())
            .field("wallets", &self.wallets.len())
            .finish_non_exhaustive()
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut gpu_refs = Vec::with_capacity(args.gpus.len());
        for addr in &args.gpus {
            gpu_refs.push((*addr, spawn_gpu(*addr, Some(myself.get_cell())).await?));
        }
        let gpu_ids = gpu_refs.iter().map(|(_, r)| r.get_id()).collect();
        let (scheduler, _) = Actor::spawn_linked(
            None,
            Scheduler,
            SchedulerArgs {
                gpus: gpu_refs,
                policy: args.policy,
                profile_sizes: args.profile_sizes.clone(),
            },
            myself.get_cell(),
        )
        .await?;

        // Container exits reach the tree as messages to the supervisor.
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<ContainerExit>();
        args.launcher.watch_exits(exit_tx);
        let me = myself.clone();
        tokio::spawn(async move {
            while let Some(exit) = exit_rx.recv().await {
                if me.cast(SupervisorMsg::ContainerExited(exit)).is_err() {
                    break;
                }
            }
        });

        Ok(SupervisorState {
            scheduler_id: scheduler.get_id(),
            scheduler,
            gpu_ids,
            args,
            wallets: HashMap::new(),
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            recovery: RecoveryReport::default(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.recovery = state.recover(&myself).await?;
        tracing::info!(
            adopted = state.recovery.adopted.len(),
            requeued = state.recovery.requeued.len(),
            ended = state.recovery.ended.len(),
            orphans = state.recovery.orphans_removed.len(),
            "recovered the actor tree"
        );
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::StartSession {
                wallet,
                gpus,
                reply,
            } => {
                let record = new_record(SessionId::new(), wallet, gpus);
                let result = state.start_fresh(&myself, record).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::Lookup { session, reply } => {
                let _ = reply.send(state.handle_of(session));
            }
            SupervisorMsg::StopSession {
                session,
                reason,
                reply,
            } => {
                let live = match state.sessions.get(&session) {
                    Some(entry) => entry
                        .actor
                        .cast(SessionMsg::Stop {
                            reason,
                            reply: None,
                        })
                        .is_ok(),
                    None => false,
                };
                let _ = reply.send(live);
            }
            SupervisorMsg::CreditChanged { wallet } => {
                if let Some(actor) = state.wallets.get(&wallet) {
                    let _ = actor
                        .call(|reply| WalletMsg::Refresh { reply }, Some(CALL_TIMEOUT))
                        .await;
                }
                for entry in state.sessions.values().filter(|e| e.wallet == wallet) {
                    let _ = entry.actor.cast(SessionMsg::CreditChanged);
                }
            }
            SupervisorMsg::ContainerExited(exit) => {
                if let Some(entry) = state.sessions.get(&exit.session) {
                    let _ = entry.actor.cast(SessionMsg::ContainerExited {
                        code: exit.code,
                        oom: exit.oom,
                    });
                }
            }
            SupervisorMsg::ToScheduler(message) => {
                let _ = state.scheduler.cast(message);
            }
            SupervisorMsg::Snapshot { reply } => {
                let snapshot = state
                    .scheduler
                    .call(|r| SchedulerMsg::Snapshot { reply: r }, Some(CALL_TIMEOUT))
                    .await;
                if let Ok(CallResult::Success(snapshot)) = snapshot {
                    let _ = reply.send(snapshot);
                }
            }
            SupervisorMsg::Recovery { reply } => {
                let _ = reply.send(state.recovery.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget_actor(&cell);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let id = cell.get_id();
                if id == state.scheduler_id || state.gpu_ids.contains(&id) {
                    tracing::error!(actor = %id, %err, "scheduler or GPU actor failed; escalating");
                    return Err(format!("lease-holding actor {id} failed: {err}").into());
                }
                if let Some(session) = state.by_actor.remove(&id) {
                    state
                        .session_crashed(&myself, session, err.to_string())
                        .await;
                } else {
                    state.forget_actor(&cell);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupervisorState {
    fn handle_of(&self, session: SessionId) -> Option<SessionHandle> {
        self.sessions.get(&session).map(|e| SessionHandle {
            id: session,
            wallet: e.wallet.clone(),
            actor: e.actor.clone(),
            events: e.events.clone(),
        })
    }

    fn forget_actor(&mut self, cell: &ActorCell) {
        let id = cell.get_id();
        if let Some(session) = self.by_actor.remove(&id) {
            self.sessions.remove(&session);
        }
        self.wallets.retain(|_, actor| actor.get_id() != id);
    }

    async fn wallet_actor(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        wallet: &WalletId,
    ) -> Result<ActorRef<WalletMsg>, StartError> {
        if let Some(actor) = self.wallets.get(wallet) {
            return Ok(actor.clone());
        }
        let actor = spawn_wallet(
            WalletArgs {
                wallet: wallet.clone(),
                ledger: self.args.ledger.clone(),
            },
            Some(myself.get_cell()),
        )
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))?;
        self.wallets.insert(wallet.clone(), actor.clone());
        Ok(actor)
    }

    async fn spawn_session(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        record: SessionRecord,
        mode: StartMode,
        carried: Carried,
    ) -> Result<ActorRef<SessionMsg>, StartError> {
        let Carried {
            events,
            run_origin,
            crashes,
        } = carried;
        let wallet = self.wallet_actor(myself, &record.wallet).await?;
        let id = record.id;
        let owner = record.wallet.clone();
        let (actor, _) = Actor::spawn_linked(
            None,
            SessionActor,
            SessionArgs {
                record,
                mode,
                wallet,
                scheduler: self.scheduler.clone(),
                launcher: self.args.launcher.clone(),
                store: self.args.store.clone(),
                settings: self.args.settings.clone(),
                events: events.clone(),
                run_origin: run_origin.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))?;
        self.by_actor.insert(actor.get_id(), id);
        self.sessions.insert(
            id,
            SessionEntry {
                wallet: owner,
                actor: actor.clone(),
                events,
                run_origin,
                crashes,
            },
        );
        Ok(actor)
    }

    /// Spawns a session actor and queues its claim.
    async fn start_fresh(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        record: SessionRecord,
    ) -> Result<SessionHandle, StartError> {
        let id = record.id;
        let actor = self
            .spawn_session(myself, record, StartMode::Fresh, Carried::new())
            .await?;
        let queued = actor
            .call(|reply| SessionMsg::Enqueue { reply }, Some(CALL_TIMEOUT))
            .await;
        match queued {
            Ok(CallResult::Success(Ok(()))) => Ok(self.handle_of(id).expect("just inserted")),
            Ok(CallResult::Success(Err(err))) => Err(err.into()),
            _ => Err(StartError::Spawn("the session actor did not answer".into())),
        }
    }

    /// One-for-one restart from the persisted record, within the policy.
    async fn session_crashed(
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
                let _ = self.scheduler.cast(SchedulerMsg::Released { session });
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
        mut record: SessionRecord,
        why: String,
        events: &broadcast::Sender<SessionEvent>,
    ) {
        let _ = self.args.launcher.stop(record.id).await;
        let _ = self
            .scheduler
            .cast(SchedulerMsg::Released { session: record.id });
        record.state = SessionState::Ended;
        record.gpu_addrs.clear();
        record.end_reason = Some(EndReason::Crashed(why));
        if let Err(err) = self.args.store.save(&record).await {
            tracing::error!(session = %record.id, %err, "cannot persist the ended session");
        }
        let _ = events.send(SessionEvent::State {
            state: SessionState::Ended,
            reason: record.end_reason.clone(),
        });
    }

    async fn load_record(&self, session: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.args.store.load(session).await
    }

    /// Rebuilds the tree from persisted sessions and running containers.
    async fn recover(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<RecoveryReport, ActorProcessingErr> {
        let mut report = RecoveryReport::default();
        let records = self.args.store.load_active().await?;
        let containers = self.args.launcher.running().await?;
        let live: std::collections::HashSet<SessionId> = records.iter().map(|r| r.id).collect();
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
                SessionState::Queued => match self.start_fresh(myself, record.clone()).await {
                    Ok(_) => report.requeued.push(id),
                    Err(err) => {
                        tracing::warn!(session = %id, %err, "cannot re-queue; ending it");
                        record.state = SessionState::Ended;
                        record.end_reason = Some(EndReason::LostOnRestart);
                        self.args.store.save(&record).await?;
                        report.ended.push(id);
                    }
                },
                SessionState::Running | SessionState::Launching if has_container => {
                    if self.adopt(myself, record.clone()).await {
                        report.adopted.push(id);
                    } else {
                        self.args.launcher.stop(id).await?;
                        record.state = SessionState::Ended;
                        record.gpu_addrs.clear();
                        record.end_reason = Some(EndReason::LostOnRestart);
                        self.args.store.save(&record).await?;
                        report.ended.push(id);
                    }
                }
                _ => {
                    // Its container is gone (or it was already stopping):
                    // it ends; the GPUs were never taken in this process.
                    if has_container {
                        self.args.launcher.stop(id).await?;
                    }
                    record.state = SessionState::Ended;
                    record.gpu_addrs.clear();
                    if record.end_reason.is_none() {
                        record.end_reason = Some(EndReason::LostOnRestart);
                    }
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
        let Ok(wallet) = self.wallet_actor(myself, &record.wallet).await else {
            return false;
        };
        let gpus = record.gpus;
        let runway = wallet
            .call(
                |reply| WalletMsg::RunwaySeconds { gpus, reply },
                Some(CALL_TIMEOUT),
            )
            .await;
        let runway_ms = match runway {
            Ok(CallResult::Success(Ok(secs))) => secs.saturating_mul(1000),
            _ => 0,
        };
        let id = record.id;
        let owner = record.wallet.clone();
        let addrs = record.gpu_addrs.clone();
        let Ok(actor) = self
            .spawn_session(myself, record, StartMode::Fresh, Carried::new())
            .await
        else {
            return false;
        };
        let adopted = self
            .scheduler
            .call(
                |reply| SchedulerMsg::Adopt {
                    session: id,
                    wallet: owner,
                    gpus: addrs,
                    runway_ms,
                    actor: actor.clone(),
                    reply,
                },
                Some(CALL_TIMEOUT),
            )
            .await;
        match adopted {
            Ok(CallResult::Success(Ok(_))) => {
                // The actor was started idle; now let it run as adopted.
                let _ = actor.cast(SessionMsg::Adopt);
                true
            }
            _ => {
                actor.stop(None);
                self.by_actor.remove(&actor.get_id());
                self.sessions.remove(&id);
                false
            }
        }
    }
}

/// Finds a live session through the supervisor.
pub async fn lookup(
    supervisor: &ActorRef<SupervisorMsg>,
    session: SessionId,
) -> Option<SessionHandle> {
    match supervisor
        .call(
            |reply| SupervisorMsg::Lookup { session, reply },
            Some(CALL_TIMEOUT),
        )
        .await
    {
        Ok(CallResult::Success(handle)) => handle,
        _ => None,
    }
}

/// Asks a live session for its view.
pub async fn view(handle: &SessionHandle) -> Option<SessionView> {
    match handle
        .actor
        .call(|reply| SessionMsg::View { reply }, Some(CALL_TIMEOUT))
        .await
    {
        Ok(CallResult::Success(view)) => Some(view),
        _ => None,
    }
}
