//! The ports through which the actor tree reaches the world. The `deskgate`
//! crate implements them on PostgreSQL and Docker; `crate::testing` has
//! in-memory versions for tests.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Money inside deskgate: one GPU for one second. Never a float.
pub type CreditSeconds = i64;

/// A session's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub Uuid);

impl SessionId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A wallet, as its lower-case 0x address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WalletId(Arc<str>);

impl WalletId {
    /// Wraps an address; it is stored lower-case so that one wallet has one id.
    pub fn new(address: &str) -> Self {
        Self(address.to_ascii_lowercase().into())
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WalletId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency key of one billing debit: a session's interval. The
/// ledger applies a key at most once, so a retried or replayed debit is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DebitKey {
    /// The session billed.
    pub session: SessionId,
    /// Which interval, from 0; the prorated last interval has the next index.
    pub interval: u64,
}

impl fmt::Display for DebitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "debit:{}:{}", self.session, self.interval)
    }
}

/// Why a ledger operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The wallet has less credit than the debit asks; nothing was taken.
    #[error("insufficient credit: balance {balance}, asked {asked}")]
    InsufficientCredit {
        /// Balance now.
        balance: CreditSeconds,
        /// Amount asked.
        asked: CreditSeconds,
    },
    /// A negative amount was asked for.
    #[error("invalid amount {0}: debits are positive")]
    InvalidAmount(CreditSeconds),
    /// The request is malformed (an account name, a key, a self-transfer).
    #[error("invalid ledger request: {0}")]
    InvalidRequest(String),
    /// The key was used before with different parameters.
    #[error("idempotency key {0} was used with different parameters")]
    KeyConflict(String),
    /// The ledger could not be reached; the operation may be retried with the
    /// same key.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// Credit balances and debits, idempotent by key.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// The wallet's balance.
    async fn balance(&self, wallet: &WalletId) -> Result<CreditSeconds, LedgerError>;

    /// Takes `amount` from the wallet under `key`; returns the balance after.
    /// A repeated key with the same amount returns the balance without
    /// taking anything again.
    async fn debit(
        &self,
        wallet: &WalletId,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError>;
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Waiting for GPUs.
    Queued,
    /// GPUs granted; the container is starting.
    Launching,
    /// The container runs; billing runs.
    Running,
    /// Ending: final bill, container stop, lease release.
    Stopping,
    /// Over.
    Ended,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum EndReason {
    /// The user stopped it or left the queue.
    UserStopped,
    /// The wallet ran out of credit.
    CreditExhausted,
    /// The browser stopped proving presence.
    PresenceTimeout,
    /// The container exited by itself (exit code, and whether it was OOM-killed).
    ContainerExited {
        /// Exit code.
        code: i64,
        /// Killed for memory.
        oom: bool,
    },
    /// The container could not be started.
    LaunchFailed(String),
    /// The session's actor kept crashing.
    Crashed(String),
    /// An administrator ended it.
    AdminKilled,
    /// The container was gone when the gate came back up.
    LostOnRestart,
}

/// One GPU in the pool: which host and which device index there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GpuAddr {
    /// Host number (0 for the local host).
    pub host: u16,
    /// Device index on that host (the Docker device id).
    pub index: u32,
}

/// A session as it is persisted: enough to rebuild its actor after a crash
/// or restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Id.
    pub id: SessionId,
    /// Owner.
    pub wallet: WalletId,
    /// GPUs asked for.
    pub gpus: u32,
    /// Lifecycle state.
    pub state: SessionState,
    /// GPUs held (empty while queued or after the end).
    pub gpu_addrs: Vec<GpuAddr>,
    /// The container, once launched.
    pub container_id: Option<String>,
    /// Full billing intervals debited so far.
    pub billed_intervals: u64,
    /// Credit-seconds debited so far.
    pub billed_credit: CreditSeconds,
    /// Milliseconds of running time already billed (the billing clock).
    pub billed_ms: u64,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
}

impl SessionRecord {
    /// Marks the record ended for `reason`; it holds no GPUs any more.
    pub fn end(&mut self, reason: EndReason) {
        self.state = SessionState::Ended;
        self.gpu_addrs.clear();
        self.end_reason = Some(reason);
    }
}

/// Why the session store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("session store unavailable: {0}")]
pub struct StoreError(pub String);

/// Persistence of session records.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Writes the record (insert or update).
    async fn save(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// One session's record, ended or not.
    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;

    /// Every session not yet ended, oldest first.
    async fn load_active(&self) -> Result<Vec<SessionRecord>, StoreError>;
}

/// What to launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The session.
    pub session: SessionId,
    /// The host its GPUs are on.
    pub host: u16,
    /// Device indices on that host.
    pub gpu_indices: Vec<u32>,
}

/// A container that runs for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningContainer {
    /// The session it belongs to (from its labels).
    pub session: SessionId,
    /// Container id.
    pub container_id: String,
    /// Host.
    pub host: u16,
}

/// A container ended on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerExit {
    /// The session.
    pub session: SessionId,
    /// Exit code.
    pub code: i64,
    /// Killed for memory.
    pub oom: bool,
}

/// Why a launcher operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("launcher: {0}")]
pub struct LaunchError(pub String);

/// Starts and stops desktop containers.
#[async_trait]
pub trait Launcher: Send + Sync + 'static {
    /// Starts the session's container; returns its id once it runs.
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError>;

    /// Stops and removes the session's container; succeeds if it is already gone.
    async fn stop(&self, session: SessionId) -> Result<(), LaunchError>;

    /// Every session container that runs now (for recovery).
    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError>;

    /// Sends every container exit to `sink` from now on.
    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>);
}
