//! The data that crosses actor boundaries: what the supervisor, scheduler,
//! GPU and session actors hand one another inside their messages, and what
//! they publish to the session's event channel. Each actor's own `*Msg`
//! enum stays in its actor's file; types that one actor keeps to itself
//! (its arguments, its state, the queue's internal `Grant` and
//! `WaiterStatus`) stay there too.
//!
//! A lease's path through the tree:
//!
//! 1. the supervisor sends the scheduler a [`Claim`] (refused with a
//!    [`ClaimError`]); while it waits, the scheduler publishes its
//!    [`QueueStatus`] as a [`SessionEvent::Queue`];
//! 2. the scheduler takes a [`Lease`] from each chosen GPU actor (refused
//!    with a [`LeaseError`]) and announces the [`LeaseGrant`] to the
//!    supervisor, which starts the session's actor on it;
//! 3. whoever ends the session calls [`release_lease`].
//!
//! Invariant: every lease granted is released exactly once. A granted
//! session is released through [`release_lease`], never by casting
//! `SchedulerMsg::Released` by hand; the scheduler gives each GPU lease back
//! on the first release of its session, and a later release of the same
//! session finds nothing to free.

use ractor::ActorRef;

use crate::ports::{
    CreditSeconds, EndReason, GpuAddr, SessionId, SessionRecord, SessionState, WalletId,
};
use crate::scheduler::SchedulerMsg;

/// Scheduler time in milliseconds: instants since the scheduler's origin,
/// and durations such as a runway.
pub type Millis = u64;

/// A request for GPUs, from the supervisor to the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The session asking.
    pub session: SessionId,
    /// Its wallet.
    pub wallet: WalletId,
    /// How many GPUs, all on one host.
    pub gpus: u32,
    /// The longest it can run once started: its wallet's credit divided by
    /// its GPU count.
    pub runway_ms: Millis,
}

/// Why a claim was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The wallet already has a queued or running claim.
    #[error("wallet {0} already has a session queued or running")]
    WalletBusy(WalletId),
    /// The session is already known.
    #[error("session {0} is already queued or running")]
    Duplicate(SessionId),
    /// No host has that many GPUs.
    #[error("{asked} GPUs asked, but the largest host has {largest}")]
    TooLarge {
        /// GPUs asked.
        asked: u32,
        /// GPUs on the largest host.
        largest: u32,
    },
    /// A claim for zero GPUs.
    #[error("a claim needs at least one GPU")]
    NoGpus,
    /// The wallet cannot pay for a single second.
    #[error("no credit: the wallet cannot pay for one second on {gpus} GPU(s)")]
    NoCredit {
        /// GPUs asked.
        gpus: u32,
    },
}

/// An exclusive grant of one GPU to one session, minted by its `GpuActor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The GPU.
    pub addr: GpuAddr,
    /// Unique in this process.
    pub lease_id: u64,
    /// The fencing token: how many grants this GPU has made, this one included.
    pub epoch: u64,
    /// The holder.
    pub session: SessionId,
}

/// Why a `GpuActor` refused a lease.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The GPU is leased to someone.
    #[error("GPU is leased to session {} (lease {})", .0.session, .0.lease_id)]
    Busy(Lease),
    /// The GPU is being drained: it grants no new leases.
    #[error("GPU is draining")]
    Draining,
    /// The GPU is unhealthy: it grants no leases until it recovers.
    #[error("GPU is unhealthy: {0}")]
    Unhealthy(String),
}

/// A GPU that joins the pool (its host appeared), with the state it joins
/// in: it is never offered before that state applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoiningGpu {
    /// The GPU.
    pub addr: GpuAddr,
    /// Its host is out: drained by an operator, or not answering.
    pub host_out: bool,
    /// Why its launcher reports it unhealthy, if it does.
    pub unhealthy: Option<String>,
}

/// GPUs leased to a session: what the scheduler announces to the supervisor
/// once every lease is taken, and what the session's actor launches on. The
/// scheduler keeps the leases too, to give them back on [`release_lease`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The session.
    pub session: SessionId,
    /// The host all its GPUs are on.
    pub host: u16,
    /// One lease per GPU.
    pub leases: Vec<Lease>,
}

/// Gives a granted session's GPUs back: the scheduler returns each of its
/// leases to its GPU actor (fenced by lease id and epoch) and schedules
/// again.
///
/// Call it once a granted session is over, whoever ends it: the session
/// actor when it finishes, or the supervisor when no actor will (a grant
/// for a session nobody waits for any more, an actor that could not be
/// spawned or restarted, a crashed session whose record is lost or that
/// crashed too often).
///
/// Releasing a session that holds nothing is harmless: if it is neither
/// running nor waiting (already released, say) the scheduler has nothing
/// to free and only schedules again, and a GPU release is fenced, so a late one cannot free a GPU
/// under its next holder. A session still waiting is taken out of the
/// queue. The message is cast: a scheduler that is gone has nothing left to
/// release.
pub fn release_lease(scheduler: &ActorRef<SchedulerMsg>, session: SessionId) {
    let _ = scheduler.cast(SchedulerMsg::Released { session });
}

/// What a waiting session is told about its place in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    /// 1 for the head.
    pub position: usize,
    /// Upper bound on the wait in whole seconds (rounded up), or `None` when
    /// no host can currently fit the claim.
    pub eta_seconds: Option<u64>,
}

/// What the browser is told (over the events socket). The scheduler sends
/// `Queue` while the session waits, the session actor the rest; the
/// supervisor sends the last `State` of a session that never got an actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The lifecycle state changed.
    State {
        /// New state.
        state: SessionState,
        /// Why it ended, once ended.
        reason: Option<EndReason>,
    },
    /// Queue position and ETA changed.
    Queue(QueueStatus),
    /// Credit was debited.
    Balance {
        /// Wallet balance after the debit.
        credit_seconds: CreditSeconds,
        /// Billed to this session so far.
        billed_credit: CreditSeconds,
    },
    /// Credit runs out soon.
    LowCredit {
        /// Seconds until the session stops.
        seconds_left: u64,
    },
    /// No input for a while: the session stops for idleness soon unless
    /// the user gives input (or asks to keep it).
    IdleWarning {
        /// Seconds until the idle stop.
        seconds_left: u64,
    },
}

/// A session's current view, for the API: from its actor while it runs,
/// from the supervisor and the scheduler while it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The persisted record as the actor knows it.
    pub record: SessionRecord,
    /// Queue position and ETA while queued.
    pub queue: Option<QueueStatus>,
    /// Seconds of credit left while running.
    pub seconds_left: Option<u64>,
}

/// The pool at a glance, from the scheduler (through the supervisor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// GPUs in the pool.
    pub total_gpus: u32,
    /// Free, available GPUs.
    pub free_gpus: u32,
    /// Waiting claims.
    pub waiting: usize,
    /// Running sessions.
    pub running: usize,
    /// Waiting claims per GPU count asked.
    pub waiting_by_gpus: Vec<(u32, usize)>,
    /// Whether a claim of each GPU count would start now.
    pub fits_now: Vec<(u32, bool)>,
}
