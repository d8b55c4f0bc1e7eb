//! `Supervisor`: the root of the tree. It starts the GPU actors and the
//! scheduler, queues claims, spawns a session actor for each session once
//! its GPUs are granted (a waiting claim is a queue entry and an event
//! channel, not an actor, so 10,000 waiters stay cheap) and a wallet actor
//! per wallet with a running session, routes container exits, rebuilds the
//! tree from persisted state at start, and applies the restart policy:
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
//!
//! Crash restarts and recovery at start are in `supervisor/recovery.rs`;
//! this file holds the actor, its messages and the routing of a session
//! between the queue and its actor. It is still about 880 lines: the public
//! API types and `SupervisorMsg` take about 180, and the routing reads best
//! in one place.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::ask::ask;
use crate::gpu::spawn_gpu;
use crate::ports::{
    ContainerExit, CreditSeconds, EndReason, GpuAddr, Launcher, Ledger, LedgerError, SessionId,
    SessionRecord, SessionState, SessionStore, WalletId,
};
use crate::protocol::{
    Claim, ClaimError, JoiningGpu, LeaseGrant, PoolSnapshot, SessionEvent, SessionView,
    release_lease,
};
use crate::queue::Policy;
use crate::scheduler::{Scheduler, SchedulerArgs, SchedulerMsg};
use crate::session::{
    RunOrigin, SessionActor, SessionArgs, SessionMsg, SessionSettings, StartMode,
};
use crate::wallet::{WalletArgs, WalletMsg, spawn_wallet};

mod recovery;

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
    /// GPUs of `gpus` that start out of the pool (their host drained or not
    /// answering, or unhealthy): applied before recovery, so no grant ever
    /// sees them available.
    pub gpus_out: Vec<JoiningGpu>,
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
    /// The scheduler did not answer.
    #[error("the scheduler did not answer")]
    SchedulerSilent,
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
    /// Its actor once its GPUs are granted (changes if the actor is
    /// restarted; look it up again). `None` while it waits in the queue.
    pub actor: Option<ActorRef<SessionMsg>>,
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
        /// The wallet's ledger balance as the caller read it just before, so
        /// that this actor need not wait on the database; `None` and it reads
        /// the ledger itself. A wallet with a running session has a fresher
        /// cached balance, which wins either way.
        balance: Option<CreditSeconds>,
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
    /// The browser proved presence for a session.
    Presence {
        /// The session.
        session: SessionId,
    },
    /// The user gave input to a session (restarts its idle clock).
    Input {
        /// The session.
        session: SessionId,
    },
    /// A session's current view (queued or live).
    View {
        /// The session.
        session: SessionId,
        /// Its view, if it is known and not ended.
        reply: RpcReplyPort<Option<SessionView>>,
    },
    /// The scheduler leased GPUs for a waiting session: start its actor.
    Granted(LeaseGrant),
    /// The scheduler could not lease the GPUs it chose for a session.
    GrantFailed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: String,
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
    /// GPUs that joined (a GPU host appeared): start their actors and hand
    /// them to the scheduler; GPUs the tree already has are skipped.
    AddGpus {
        /// The GPUs, each in the state it joins in.
        gpus: Vec<JoiningGpu>,
    },
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
    phase: Phase,
    events: broadcast::Sender<SessionEvent>,
    run_origin: RunOrigin,
    crashes: VecDeque<Instant>,
}

/// Where a live session is.
enum Phase {
    /// Waiting in the queue; no actor yet. `stop` is a stop asked for while
    /// its grant was already on its way.
    Queued {
        record: SessionRecord,
        stop: Option<EndReason>,
        /// Turns true once the queued record is saved: its grant waits for it.
        saved: watch::Receiver<bool>,
    },
    /// Granted: its actor runs it.
    Live(ActorRef<SessionMsg>),
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
    /// Every GPU the tree has an actor for.
    gpu_addrs: std::collections::HashSet<GpuAddr>,
    wallets: HashMap<WalletId, ActorRef<WalletMsg>>,
    sessions: HashMap<SessionId, SessionEntry>,
    by_actor: HashMap<ActorId, SessionId>,
    recovery: RecoveryReport,
    /// The latest claim's `queued_at`: the next one is later, whatever the
    /// wall clock does, so that the rows keep the queue's order.
    last_queued_at: std::time::SystemTime,
    /// The task that forwards container exits; it ends with the state, so a
    /// tree that stops (a failed recovery included) lets go of the
    /// launcher's exit watchers.
    _exit_forwarder: AbortOnDrop,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
                gpus_out: args.gpus_out.clone(),
                policy: args.policy,
                profile_sizes: args.profile_sizes.clone(),
                grants_to: myself.clone(),
            },
            myself.get_cell(),
        )
        .await?;

        // Container exits reach the tree as messages to the supervisor.
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<ContainerExit>();
        args.launcher.watch_exits(exit_tx);
        let me = myself.clone();
        let forwarder = tokio::spawn(async move {
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
            gpu_addrs: args.gpus.iter().copied().collect(),
            args,
            wallets: HashMap::new(),
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            recovery: RecoveryReport::default(),
            last_queued_at: std::time::UNIX_EPOCH,
            _exit_forwarder: AbortOnDrop(forwarder.abort_handle()),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A store or launcher that cannot be read (a GPU host down) fails
        // recovery before anything is changed: the tree stops rather than
        // end sessions it could not check, and its starter retries.
        state.recovery = state.recover(&myself).await.inspect_err(|err| {
            tracing::error!(error = %err, "recovery failed; the actor tree stops");
        })?;
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
                balance,
                reply,
            } => {
                let mut record = SessionRecord::new(SessionId::new(), wallet, gpus);
                record.queued_at = Some(state.next_queued_at());
                match state.enqueue(record, balance).await {
                    // The claimant hears of its session once the row is
                    // saved, without holding up the claims behind it.
                    Ok((handle, mut saved)) => {
                        tokio::spawn(async move {
                            let _ = saved.wait_for(|done| *done).await;
                            let _ = reply.send(Ok(handle));
                        });
                    }
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
            SupervisorMsg::Lookup { session, reply } => {
                let _ = reply.send(state.handle_of(session));
            }
            SupervisorMsg::StopSession {
                session,
                reason,
                reply,
            } => {
                let live = state.stop_session(session, reason).await;
                let _ = reply.send(live);
            }
            SupervisorMsg::Presence { session } => {
                if let Some(actor) = state.actor_of(session) {
                    let _ = actor.cast(SessionMsg::Presence);
                }
            }
            SupervisorMsg::Input { session } => {
                if let Some(actor) = state.actor_of(session) {
                    let _ = actor.cast(SessionMsg::Input);
                }
            }
            SupervisorMsg::View { session, reply } => {
                let _ = reply.send(state.view_of(session).await);
            }
            SupervisorMsg::Granted(grant) => state.granted(&myself, grant).await,
            SupervisorMsg::GrantFailed { session, reason } => {
                if let Some(entry) = state.sessions.remove(&session)
                    && let Phase::Queued { record, .. } = entry.phase
                {
                    state
                        .record_end(record, EndReason::LaunchFailed(reason), &entry.events)
                        .await;
                }
            }
            SupervisorMsg::CreditChanged { wallet } => state.credit_changed(wallet).await,
            SupervisorMsg::ContainerExited(exit) => {
                if let Some(actor) = state.actor_of(exit.session) {
                    let _ = actor.cast(SessionMsg::ContainerExited {
                        code: exit.code,
                        oom: exit.oom,
                    });
                }
            }
            SupervisorMsg::ToScheduler(message) => {
                let _ = state.scheduler.cast(message);
            }
            SupervisorMsg::AddGpus { gpus } => {
                let mut joined = Vec::with_capacity(gpus.len());
                for joining in gpus {
                    if !state.gpu_addrs.insert(joining.addr) {
                        continue;
                    }
                    let actor = spawn_gpu(joining.addr, Some(myself.get_cell())).await?;
                    state.gpu_ids.push(actor.get_id());
                    joined.push((joining, actor));
                }
                if !joined.is_empty() {
                    let _ = state.scheduler.cast(SchedulerMsg::AddGpus { gpus: joined });
                }
            }
            SupervisorMsg::Snapshot { reply } => {
                if let Some(snapshot) =
                    ask(&state.scheduler, |reply| SchedulerMsg::Snapshot { reply }).await
                {
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
            actor: match &e.phase {
                Phase::Live(actor) => Some(actor.clone()),
                Phase::Queued { .. } => None,
            },
            events: e.events.clone(),
        })
    }

    /// Now, or a microsecond after the previous claim if the clock says
    /// otherwise (the store keeps microseconds).
    fn next_queued_at(&mut self) -> std::time::SystemTime {
        let next = std::time::SystemTime::now().max(self.last_queued_at + Duration::from_micros(1));
        self.last_queued_at = next;
        next
    }

    fn actor_of(&self, session: SessionId) -> Option<ActorRef<SessionMsg>> {
        match &self.sessions.get(&session)?.phase {
            Phase::Live(actor) => Some(actor.clone()),
            Phase::Queued { .. } => None,
        }
    }

    fn forget_actor(&mut self, cell: &ActorCell) {
        let id = cell.get_id();
        if let Some(session) = self.by_actor.remove(&id) {
            self.sessions.remove(&session);
        }
        self.wallets.retain(|_, actor| actor.get_id() != id);
    }

    /// How long `gpus` GPUs can run on the wallet's credit.
    /// `read` is the ledger balance a caller read just before, if any.
    async fn runway_ms(
        &self,
        wallet: &WalletId,
        gpus: u32,
        read: Option<CreditSeconds>,
    ) -> Result<u64, LedgerError> {
        // A wallet with a running session has an actor whose cache is as
        // fresh as the ledger; otherwise the caller's reading, or the ledger.
        let cached = match self.wallets.get(wallet) {
            Some(actor) => ask(actor, |reply| WalletMsg::Balance { reply })
                .await
                .transpose()?,
            None => None,
        };
        let balance = match cached.or(read) {
            Some(balance) => balance,
            None => self.args.ledger.balance(wallet).await?,
        };
        let secs = balance.max(0) as u64 / u64::from(gpus.max(1));
        Ok(secs.saturating_mul(1000))
    }

    /// Queues a claim for `record` (new, or re-queued at recovery) and
    /// persists it once the queue has accepted it. The save runs beside this
    /// actor (claims behind it need not wait on PostgreSQL's commit); the
    /// session's grant waits for it ([`Self::granted`]), so that the queued
    /// row never lands after a later state. An end may land first: the
    /// store refuses to overwrite an ended row. Returns the session and what
    /// turns true once its row is saved.
    async fn enqueue(
        &mut self,
        mut record: SessionRecord,
        balance: Option<CreditSeconds>,
    ) -> Result<(SessionHandle, watch::Receiver<bool>), StartError> {
        let runway_ms = self.runway_ms(&record.wallet, record.gpus, balance).await?;
        let carried = Carried::new();
        let claim = Claim {
            session: record.id,
            wallet: record.wallet.clone(),
            gpus: record.gpus,
            runway_ms,
        };
        let events = carried.events.clone();
        ask(&self.scheduler, |reply| SchedulerMsg::Claim {
            claim,
            events,
            reply,
        })
        .await
        .ok_or(StartError::SchedulerSilent)??;
        record.state = SessionState::Queued;
        let (saved_tx, saved) = watch::channel(false);
        let (store, queued) = (self.args.store.clone(), record.clone());
        tokio::spawn(async move {
            if let Err(err) = store.save(&queued).await {
                tracing::error!(session = %queued.id, %err, "cannot persist the queued session");
            }
            let _ = saved_tx.send(true);
        });
        let id = record.id;
        self.sessions.insert(
            id,
            SessionEntry {
                wallet: record.wallet.clone(),
                phase: Phase::Queued {
                    record,
                    stop: None,
                    saved: saved.clone(),
                },
                events: carried.events,
                run_origin: carried.run_origin,
                crashes: carried.crashes,
            },
        );
        Ok((self.handle_of(id).expect("just inserted"), saved))
    }

    /// GPUs were leased for a waiting session: its actor takes over.
    async fn granted(&mut self, myself: &ActorRef<SupervisorMsg>, grant: LeaseGrant) {
        let session = grant.session;
        let Some(entry) = self.sessions.remove(&session) else {
            // Nobody waits for it any more.
            release_lease(&self.scheduler, session);
            return;
        };
        let Phase::Queued {
            record,
            stop,
            mut saved,
        } = entry.phase
        else {
            self.sessions.insert(session, entry);
            return;
        };
        // Done long ago unless the grant came at once.
        let _ = saved.wait_for(|done| *done).await;
        let events = entry.events.clone();
        let carried = Carried {
            events: entry.events,
            run_origin: entry.run_origin,
            crashes: entry.crashes,
        };
        let mode = StartMode::Granted(grant);
        match self
            .spawn_session(myself, record.clone(), mode, carried)
            .await
        {
            Ok(actor) => {
                if let Some(reason) = stop {
                    let _ = actor.cast(SessionMsg::Stop {
                        reason,
                        reply: None,
                    });
                }
            }
            Err(err) => {
                tracing::error!(%session, %err, "cannot start the session actor");
                release_lease(&self.scheduler, session);
                self.record_end(record, EndReason::LaunchFailed(err.to_string()), &events)
                    .await;
            }
        }
    }

    /// Records the end of a session that has no actor (never granted, or
    /// given up) and tells its subscribers.
    async fn record_end(
        &mut self,
        mut record: SessionRecord,
        reason: EndReason,
        events: &broadcast::Sender<SessionEvent>,
    ) {
        record.end(reason.clone());
        if let Err(err) = self.args.store.save(&record).await {
            tracing::error!(session = %record.id, %err, "cannot persist the ended session");
        }
        let _ = events.send(SessionEvent::State {
            state: SessionState::Ended,
            reason: Some(reason),
        });
    }

    /// Stops a live session or takes a waiting one out of the queue.
    async fn stop_session(&mut self, session: SessionId, reason: EndReason) -> bool {
        let Some(entry) = self.sessions.get(&session) else {
            return false;
        };
        if let Phase::Live(actor) = &entry.phase {
            return actor
                .cast(SessionMsg::Stop {
                    reason,
                    reply: None,
                })
                .is_ok();
        }
        let cancelled = ask(&self.scheduler, |reply| SchedulerMsg::Cancel {
            session,
            reply,
        })
        .await;
        if cancelled == Some(true) {
            let entry = self.sessions.remove(&session).expect("present");
            if let Phase::Queued { record, .. } = entry.phase {
                self.record_end(record, reason, &entry.events).await;
            }
        } else if let Some(SessionEntry {
            phase: Phase::Queued { stop, .. },
            ..
        }) = self.sessions.get_mut(&session)
        {
            // Its grant is already on its way: stop it on arrival.
            *stop = Some(reason);
        }
        true
    }

    /// A deposit was credited: live sessions re-plan their end, waiting
    /// claims get their new runway.
    async fn credit_changed(&mut self, wallet: WalletId) {
        if let Some(actor) = self.wallets.get(&wallet) {
            let _ = ask(actor, |reply| WalletMsg::Refresh { reply }).await;
        }
        let affected: Vec<(SessionId, u32, Option<ActorRef<SessionMsg>>)> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.wallet == wallet)
            .map(|(id, e)| match &e.phase {
                Phase::Live(actor) => (*id, 0, Some(actor.clone())),
                Phase::Queued { record, .. } => (*id, record.gpus, None),
            })
            .collect();
        for (session, gpus, actor) in affected {
            match actor {
                Some(actor) => {
                    let _ = actor.cast(SessionMsg::CreditChanged);
                }
                None => {
                    if let Ok(runway_ms) = self.runway_ms(&wallet, gpus, None).await {
                        let _ = self
                            .scheduler
                            .cast(SchedulerMsg::UpdateBound { session, runway_ms });
                    }
                }
            }
        }
    }

    async fn view_of(&self, session: SessionId) -> Option<SessionView> {
        match &self.sessions.get(&session)?.phase {
            Phase::Live(actor) => ask(actor, |reply| SessionMsg::View { reply }).await,
            Phase::Queued { record, .. } => Some(SessionView {
                record: record.clone(),
                queue: ask(&self.scheduler, |reply| SchedulerMsg::Status {
                    session,
                    reply,
                })
                .await
                .flatten(),
                seconds_left: None,
            }),
        }
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
                phase: Phase::Live(actor.clone()),
                events,
                run_origin,
                crashes,
            },
        );
        Ok(actor)
    }
}

/// Finds a live session through the supervisor.
pub async fn lookup(
    supervisor: &ActorRef<SupervisorMsg>,
    session: SessionId,
) -> Option<SessionHandle> {
    ask(supervisor, |reply| SupervisorMsg::Lookup { session, reply })
        .await
        .flatten()
}

/// A session's view through the supervisor, queued or live.
pub async fn view(supervisor: &ActorRef<SupervisorMsg>, session: SessionId) -> Option<SessionView> {
    ask(supervisor, |reply| SupervisorMsg::View { session, reply })
        .await
        .flatten()
}
