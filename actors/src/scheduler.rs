//! `Scheduler`: the actor around [`crate::queue::Queue`]. It owns the wait
//! queue and the allocation decisions, takes fenced leases from the
//! `GpuActor`s for every grant, announces the grant (a [`LeaseGrant`]) to
//! the supervisor (which spawns the session actor: a waiting claim is an
//! entry here, not an actor, so 10,000 waiters cost kilobytes, not actors),
//! gives the leases back when the session is released
//! ([`crate::protocol::release_lease`]), and publishes each waiter's
//! position and start bound on its event channel whenever they change.

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::ask::ask_within;
use crate::gpu::GpuMsg;
use crate::ports::{GpuAddr, SessionId, WalletId};
use crate::protocol::{
    Claim, ClaimError, JoiningGpu, Lease, LeaseGrant, Millis, PoolSnapshot, QueueStatus,
    SessionEvent,
};
use crate::queue::{Grant, OutReason, Policy, Queue, WaiterStatus};
use crate::supervisor::SupervisorMsg;
use tokio::sync::broadcast;

/// How long one call to a `GpuActor` may take before the scheduler gives up
/// on it.
const GPU_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Positions and ETAs are published at most this often. One pass costs
/// O(n log n) plus a message per waiter whose status changed (after a grant,
/// everyone behind it), so bursts of claims and releases share one pass
/// instead of paying one each; grant decisions never wait for it.
pub const PUBLISH_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Messages to the [`Scheduler`].
#[derive(Debug)]
pub enum SchedulerMsg {
    /// Queue a claim. Its position and ETA go to `events` while it waits;
    /// the supervisor is told `Granted` once its GPUs are leased.
    Claim {
        /// The claim.
        claim: Claim,
        /// The session's event channel.
        events: broadcast::Sender<SessionEvent>,
        /// Its position at the back of the queue, or why it was refused.
        reply: RpcReplyPort<Result<usize, ClaimError>>,
    },
    /// Leave the queue; answers false if the session was not waiting.
    Cancel {
        /// The session.
        session: SessionId,
        /// Whether it was waiting.
        reply: RpcReplyPort<bool>,
    },
    /// A session is over: release its leases (fenced) and schedule again.
    /// Sent only through [`crate::protocol::release_lease`].
    Released {
        /// The session.
        session: SessionId,
    },
    /// A session's credit bound changed (runway from now).
    UpdateBound {
        /// The session.
        session: SessionId,
        /// How long it can run from now.
        runway_ms: Millis,
    },
    /// The leases a granted session holds (for an actor restarted after a
    /// crash); `None` if it holds none.
    Leases {
        /// The session.
        session: SessionId,
        /// Its leases.
        reply: RpcReplyPort<Option<Vec<Lease>>>,
    },
    /// A waiting session's last published position and ETA.
    Status {
        /// The session.
        session: SessionId,
        /// Its status, `None` if it is not waiting.
        reply: RpcReplyPort<Option<QueueStatus>>,
    },
    /// Take GPUs for a session that is already running (recovery).
    Adopt {
        /// The session.
        session: SessionId,
        /// Its wallet.
        wallet: WalletId,
        /// The GPUs its container has.
        gpus: Vec<GpuAddr>,
        /// How long it can still run.
        runway_ms: Millis,
        /// The leases, or why the GPUs could not be taken.
        reply: RpcReplyPort<Result<Vec<Lease>, String>>,
    },
    /// Mark a GPU unhealthy (`Some(reason)`) or healthy again (`None`).
    SetHealth {
        /// The GPU.
        gpu: GpuAddr,
        /// Why it is unhealthy.
        unhealthy: Option<String>,
    },
    /// Drain a GPU (no new leases) or put it back.
    Drain {
        /// The GPU.
        gpu: GpuAddr,
        /// Drain or undrain.
        on: bool,
    },
    /// A host is out (drained by an operator, or not answering) or back:
    /// its GPUs take no new leases while out. Independent of each GPU's own
    /// drain and health.
    SetHostOut {
        /// The host's GPUs.
        gpus: Vec<GpuAddr>,
        /// Out, or back.
        out: bool,
    },
    /// GPUs that joined the pool (a GPU host appeared), with their actors;
    /// GPUs already in the pool are left as they are.
    AddGpus {
        /// The new GPUs, each in the state it joins in.
        gpus: Vec<(JoiningGpu, ActorRef<GpuMsg>)>,
    },
    /// Every GPU of the pool and its actor, in address order (the admin API
    /// asks each for its status).
    Gpus {
        /// The GPUs.
        reply: RpcReplyPort<Vec<(GpuAddr, ActorRef<GpuMsg>)>>,
    },
    /// Counts for `/profiles`, the admin API and tests.
    Snapshot {
        /// The answer.
        reply: RpcReplyPort<PoolSnapshot>,
    },
    /// Publish positions and start bounds (sent to itself, coalescing bursts).
    Publish,
}

/// Arguments of the [`Scheduler`].
#[derive(Debug)]
pub struct SchedulerArgs {
    /// The GPU actors, by address.
    pub gpus: Vec<(GpuAddr, ActorRef<GpuMsg>)>,
    /// Those that start out of the pool, and why.
    pub gpus_out: Vec<JoiningGpu>,
    /// Scheduling policy.
    pub policy: Policy,
    /// The GPU counts the profiles ask for (for snapshots).
    pub profile_sizes: Vec<u32>,
    /// Where grants are announced (the supervisor spawns the session actor).
    pub grants_to: ActorRef<SupervisorMsg>,
}

/// The scheduler actor.
#[derive(Debug, Default)]
pub struct Scheduler;

/// The scheduler's state.
#[derive(Debug)]
pub struct SchedulerState {
    queue: Queue,
    origin: Instant,
    gpu_actors: HashMap<GpuAddr, ActorRef<GpuMsg>>,
    /// Event channels of waiting sessions (a waiting claim is no actor yet).
    waiters: HashMap<SessionId, broadcast::Sender<SessionEvent>>,
    grants_to: ActorRef<SupervisorMsg>,
    leases: HashMap<SessionId, Vec<Lease>>,
    last_published: HashMap<SessionId, QueueStatus>,
    publish_pending: bool,
    profile_sizes: Vec<u32>,
}

impl SchedulerState {
    fn now(&self) -> Millis {
        self.origin.elapsed().as_millis() as Millis
    }
}

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut queue = Queue::new(args.gpus.iter().map(|(addr, _)| *addr), args.policy);
        for out in &args.gpus_out {
            if let Some((_, actor)) = args.gpus.iter().find(|(addr, _)| *addr == out.addr) {
                apply_joining_state(&mut queue, actor, out);
            }
        }
        Ok(SchedulerState {
            queue,
            origin: Instant::now(),
            gpu_actors: args.gpus.into_iter().collect(),
            waiters: HashMap::new(),
            grants_to: args.grants_to,
            leases: HashMap::new(),
            last_published: HashMap::new(),
            publish_pending: false,
            profile_sizes: args.profile_sizes,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SchedulerMsg::Claim {
                claim,
                events,
                reply,
            } => {
                let id = claim.session;
                let result = state.queue.claim(claim).map(|()| state.queue.waiting_len());
                if result.is_ok() {
                    state.waiters.insert(id, events);
                }
                let _ = reply.send(result);
                schedule(&myself, state).await;
            }
            SchedulerMsg::Cancel { session, reply } => {
                let was_waiting = state.queue.cancel(session);
                if was_waiting {
                    state.waiters.remove(&session);
                    state.last_published.remove(&session);
                    request_publish(&myself, state);
                }
                let _ = reply.send(was_waiting);
                // A cancelled head may unblock others.
                schedule(&myself, state).await;
            }
            SchedulerMsg::Released { session } => {
                release(state, session).await;
                schedule(&myself, state).await;
            }
            SchedulerMsg::UpdateBound { session, runway_ms } => {
                let now = state.now();
                state.queue.update_bound(session, runway_ms, now);
                schedule(&myself, state).await;
            }
            SchedulerMsg::Leases { session, reply } => {
                let _ = reply.send(state.leases.get(&session).cloned());
            }
            SchedulerMsg::Status { session, reply } => {
                // What the waiter was last told; a claim asked about before
                // the coalesced publish ran (the API answers a claim with its
                // position at once) gets its own, without a pass over the
                // whole queue.
                let now = state.now();
                let status = match state.last_published.get(&session) {
                    Some(published) if state.queue.is_waiting(session) => Some(*published),
                    _ => state
                        .queue
                        .status_of(session, now)
                        .map(|status| queue_status(&status, now)),
                };
                let _ = reply.send(status);
            }
            SchedulerMsg::Adopt {
                session,
                wallet,
                gpus,
                runway_ms,
                reply,
            } => {
                let now = state.now();
                let result = match state.queue.adopt(session, wallet, &gpus, now + runway_ms) {
                    Ok(()) => match lease_all(state, session, &gpus).await {
                        Ok(leases) => {
                            state.leases.insert(session, leases.clone());
                            Ok(leases)
                        }
                        Err(why) => {
                            state.queue.release(session);
                            Err(why)
                        }
                    },
                    Err(err) => Err(err.to_string()),
                };
                let _ = reply.send(result);
            }
            SchedulerMsg::SetHealth { gpu, unhealthy } => {
                state
                    .queue
                    .set_out(gpu, OutReason::Unhealthy, unhealthy.is_some());
                if let Some(actor) = state.gpu_actors.get(&gpu) {
                    let _ = actor.cast(GpuMsg::SetHealth { unhealthy });
                }
                schedule(&myself, state).await;
            }
            SchedulerMsg::Drain { gpu, on } => {
                state.queue.set_out(gpu, OutReason::Drained, on);
                if !on {
                    // The operator looked: a refusal is forgiven too.
                    state.queue.set_out(gpu, OutReason::Refused, false);
                }
                if let Some(actor) = state.gpu_actors.get(&gpu) {
                    let _ = actor.cast(GpuMsg::Drain { on });
                }
                schedule(&myself, state).await;
            }
            SchedulerMsg::SetHostOut { gpus, out } => {
                for gpu in gpus {
                    state.queue.set_out(gpu, OutReason::HostOut, out);
                }
                schedule(&myself, state).await;
            }
            SchedulerMsg::AddGpus { gpus } => {
                let mut added = 0;
                for (joining, actor) in gpus {
                    let addr = joining.addr;
                    if state.gpu_actors.contains_key(&addr) {
                        continue;
                    }
                    state.queue.add_gpus([addr]);
                    // Its state applies before the next grant decision.
                    apply_joining_state(&mut state.queue, &actor, &joining);
                    state.gpu_actors.insert(addr, actor);
                    added += 1;
                }
                tracing::info!(gpus = added, "GPUs joined the pool");
                schedule(&myself, state).await;
            }
            SchedulerMsg::Gpus { reply } => {
                let mut gpus: Vec<_> = state
                    .gpu_actors
                    .iter()
                    .map(|(addr, actor)| (*addr, actor.clone()))
                    .collect();
                gpus.sort_by_key(|(addr, _)| *addr);
                let _ = reply.send(gpus);
            }
            SchedulerMsg::Snapshot { reply } => {
                let _ = reply.send(snapshot(state));
            }
            SchedulerMsg::Publish => {
                state.publish_pending = false;
                publish(state);
            }
        }
        Ok(())
    }
}

/// Puts a GPU in the state it joins in, in the queue and in its actor (its
/// health; a host out is the queue's alone).
fn apply_joining_state(queue: &mut Queue, actor: &ActorRef<GpuMsg>, joining: &JoiningGpu) {
    queue.set_out(joining.addr, OutReason::HostOut, joining.host_out);
    queue.set_out(
        joining.addr,
        OutReason::Unhealthy,
        joining.unhealthy.is_some(),
    );
    if joining.unhealthy.is_some() {
        let _ = actor.cast(GpuMsg::SetHealth {
            unhealthy: joining.unhealthy.clone(),
        });
    }
}

/// Runs the queue's decisions and carries out each grant.
async fn schedule(myself: &ActorRef<SchedulerMsg>, state: &mut SchedulerState) {
    let now = state.now();
    let grants = state.queue.schedule(now);
    let granted_any = !grants.is_empty();
    for grant in grants {
        carry_out(state, grant).await;
    }
    metrics::gauge!("deskgate_scheduler_waiting_claims").set(state.queue.waiting_len() as f64);
    metrics::gauge!("deskgate_scheduler_free_gpus").set(f64::from(state.queue.free_gpus()));
    if granted_any || state.queue.waiting_len() > 0 {
        request_publish(myself, state);
    }
}

/// Leases the granted GPUs and tells the supervisor. A GPU that refuses (it
/// changed state behind the scheduler's back) fails the grant: the session
/// is told, and the GPU leaves the pool until an operator looks.
async fn carry_out(state: &mut SchedulerState, grant: Grant) {
    state.last_published.remove(&grant.session);
    state.waiters.remove(&grant.session);
    match lease_all(state, grant.session, &grant.gpus).await {
        Ok(leases) => {
            metrics::counter!("deskgate_scheduler_grants_total", "backfilled" => grant.backfilled.to_string())
                .increment(1);
            tracing::info!(session = %grant.session, host = grant.host, gpus = grant.gpus.len(), backfilled = grant.backfilled, "granted");
            state.leases.insert(grant.session, leases.clone());
            let _ = state.grants_to.cast(SupervisorMsg::Granted(LeaseGrant {
                session: grant.session,
                host: grant.host,
                leases,
            }));
        }
        Err(why) => {
            tracing::error!(session = %grant.session, %why, "grant failed: a GPU refused its lease");
            state.queue.release(grant.session);
            let _ = state.grants_to.cast(SupervisorMsg::GrantFailed {
                session: grant.session,
                reason: why,
            });
        }
    }
}

/// Takes a lease on every GPU or none.
async fn lease_all(
    state: &mut SchedulerState,
    session: SessionId,
    gpus: &[GpuAddr],
) -> Result<Vec<Lease>, String> {
    let mut leases = Vec::with_capacity(gpus.len());
    for addr in gpus {
        let name = format!("GPU {}:{}", addr.host, addr.index);
        let outcome = match state.gpu_actors.get(addr) {
            Some(actor) => ask_within(
                actor,
                |reply| GpuMsg::Lease { session, reply },
                GPU_CALL_TIMEOUT,
            )
            .await
            .ok_or_else(|| format!("{name} did not answer"))
            .and_then(|lease| lease.map_err(|e| format!("{name}: {e}"))),
            None => Err(format!("{name} is not in the pool")),
        };
        match outcome {
            Ok(lease) => leases.push(lease),
            Err(why) => {
                for lease in leases {
                    if let Some(actor) = state.gpu_actors.get(&lease.addr) {
                        let _ = actor.cast(GpuMsg::Release { lease, reply: None });
                    }
                }
                state.queue.set_out(*addr, OutReason::Refused, true);
                return Err(why);
            }
        }
    }
    Ok(leases)
}

/// Frees a session's GPUs with its own lease tokens, so that a late or
/// repeated release can never free a GPU someone else holds now.
async fn release(state: &mut SchedulerState, session: SessionId) {
    state.waiters.remove(&session);
    state.last_published.remove(&session);
    if state.queue.cancel(session) {
        return;
    }
    if state.queue.release(session).is_none() {
        return;
    }
    for lease in state.leases.remove(&session).unwrap_or_default() {
        if let Some(actor) = state.gpu_actors.get(&lease.addr) {
            let _ = actor.cast(GpuMsg::Release { lease, reply: None });
        }
    }
    metrics::counter!("deskgate_scheduler_releases_total").increment(1);
}

fn request_publish(myself: &ActorRef<SchedulerMsg>, state: &mut SchedulerState) {
    if !state.publish_pending {
        state.publish_pending = true;
        myself.send_after(PUBLISH_DEBOUNCE, || SchedulerMsg::Publish);
    }
}

/// Sends each waiter its position and start bound if they changed.
fn publish(state: &mut SchedulerState) {
    let now = state.now();
    for status in state.queue.statuses(now) {
        let update = queue_status(&status, now);
        if state.last_published.get(&status.session) == Some(&update) {
            continue;
        }
        if let Some(events) = state.waiters.get(&status.session) {
            // Nobody listening is fine; the status is kept for `Status`.
            let _ = events.send(SessionEvent::Queue(update));
            state.last_published.insert(status.session, update);
        }
    }
}

/// A waiter's status as it is published: its start bound as seconds from now.
fn queue_status(status: &WaiterStatus, now: Millis) -> QueueStatus {
    QueueStatus {
        position: status.position,
        eta_seconds: status
            .start_bound
            .map(|t| (t.saturating_sub(now)).div_ceil(1000)),
    }
}

fn snapshot(state: &SchedulerState) -> PoolSnapshot {
    let q = &state.queue;
    PoolSnapshot {
        total_gpus: q.total_gpus(),
        free_gpus: q.free_gpus(),
        waiting: q.waiting_len(),
        running: q.running_len(),
        waiting_by_gpus: state
            .profile_sizes
            .iter()
            .map(|&g| (g, q.waiting_for(g)))
            .collect(),
        fits_now: state
            .profile_sizes
            .iter()
            .map(|&g| (g, q.fits_now(g)))
            .collect(),
    }
}
