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

impl SessionState {
    /// Every state, in life order.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Launching,
        Self::Running,
        Self::Stopping,
        Self::Ended,
    ];

    /// Its name in the API, the `sessions` table and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Launching => "launching",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Ended => "ended",
        }
    }
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
    /// No input for the idle timeout: an open but unattended tab.
    IdleTimeout,
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
    /// When the gate queued the claim: the store keeps it as the row's
    /// creation time, which orders the queue again at recovery. Claims are
    /// saved concurrently, so the database's own clock at insert would not
    /// follow the queue. `None` where unknown (a record read back from the
    /// store, whose row already holds it).
    pub queued_at: Option<std::time::SystemTime>,
}

impl SessionRecord {
    /// A new record for a session that is about to be claimed: queued,
    /// holding nothing, billed nothing.
    pub fn new(id: SessionId, wallet: WalletId, gpus: u32) -> Self {
        Self {
            id,
            wallet,
            gpus,
            state: SessionState::Queued,
            gpu_addrs: Vec::new(),
            container_id: None,
            billed_intervals: 0,
            billed_credit: 0,
            billed_ms: 0,
            end_reason: None,
            queued_at: None,
        }
    }

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

/// A 32-byte hash: a block's or a transaction's. Shown as lower-case `0x` hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash32(pub [u8; 32]);

/// A 20-byte Ethereum address. Shown as lower-case `0x` hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address20(pub [u8; 20]);

/// An unsigned 256-bit amount of base units (wei, or the token's smallest
/// unit), big-endian. The actors never do arithmetic on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Amount256(pub [u8; 32]);

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str("0x")?;
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

macro_rules! hex_display {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
    )*};
}
hex_display!(Hash32, Address20, Amount256);

/// What a deposit is paid in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepositAsset {
    /// Native ETH, in wei.
    Eth,
    /// The configured ERC-20, in its base units.
    Token,
}

/// The log index that marks a native ETH transfer (a transaction's value,
/// which has no log) in a deposit's identity.
pub const ETH_LOG_INDEX: i64 = -1;

/// A block as the chain watcher needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Height.
    pub number: u64,
    /// Its hash.
    pub hash: Hash32,
    /// Its parent's hash.
    pub parent_hash: Hash32,
}

/// One transfer to the revenue address, as seen in one block.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainDeposit {
    /// The transaction.
    pub tx_hash: Hash32,
    /// The Transfer log's index in its block, or [`ETH_LOG_INDEX`] for ETH.
    pub log_index: i64,
    /// The block that holds it.
    pub block_number: u64,
    /// That block's hash.
    pub block_hash: Hash32,
    /// Who paid: the transaction's sender for ETH, the Transfer's `from` for the token.
    pub from: Address20,
    /// Who received (the revenue address).
    pub to: Address20,
    /// ETH or the token.
    pub asset: DepositAsset,
    /// Base units.
    pub amount: Amount256,
}

impl ChainDeposit {
    /// The ledger idempotency key of its credit:
    /// `deposit:<chain id>:<tx hash>:<log index>`.
    pub fn credit_key(&self, chain_id: u64) -> String {
        format!("deposit:{chain_id}:{}:{}", self.tx_hash, self.log_index)
    }
}

/// Where a recorded deposit is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepositStatus {
    /// Seen on chain; waiting for confirmations.
    Pending,
    /// Credited to the payer's wallet (exactly once).
    Credited,
    /// Not a valid deposit (failed, wrong recipient, wrong token).
    Rejected,
    /// Its block left the canonical chain before it was credited.
    Removed,
}

impl DepositStatus {
    /// The name stored in the `deposits` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Credited => "credited",
            Self::Rejected => "rejected",
            Self::Removed => "removed",
        }
    }
}

/// A deposit as recorded, with its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepositRecord {
    /// The transfer.
    pub deposit: ChainDeposit,
    /// Where it is.
    pub status: DepositStatus,
}

/// Why the chain could not be read. The watcher retries on its next tick.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chain RPC: {0}")]
pub struct ChainError(pub String);

/// Read access to the chain, filtered to deposits to the revenue address.
#[async_trait]
pub trait ChainReader: Send + Sync + 'static {
    /// The latest block number.
    async fn latest_block(&self) -> Result<u64, ChainError>;

    /// The latest finalized block number, if the node knows one.
    async fn finalized_block(&self) -> Result<Option<u64>, ChainError>;

    /// The canonical block at `number`, or `None` above the tip.
    async fn block(&self, number: u64) -> Result<Option<BlockHeader>, ChainError>;

    /// Every deposit in `block` (read by its hash, so the answer is about
    /// that very block): the token's Transfer logs to the revenue address,
    /// and successful transactions that send ETH to it.
    async fn deposits_in_block(&self, block: &BlockHeader)
    -> Result<Vec<ChainDeposit>, ChainError>;
}

/// Why the deposit book failed. The watcher retries on its next tick.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deposit book: {0}")]
pub struct BookError(pub String);

/// The watcher's persistent state: processed blocks and deposits.
#[async_trait]
pub trait DepositBook: Send + Sync + 'static {
    /// The last fully processed block (the cursor), if any.
    async fn cursor(&self) -> Result<Option<BlockHeader>, BookError>;

    /// The hash recorded for processed block `number`, if it is still kept.
    async fn recorded_hash(&self, number: u64) -> Result<Option<Hash32>, BookError>;

    /// In one transaction: records `deposits` as pending (a removed one seen
    /// again is pending again; a credited one keeps its status) and stores
    /// `block` as processed, which advances the cursor to it.
    async fn commit_block(
        &self,
        block: &BlockHeader,
        deposits: &[ChainDeposit],
    ) -> Result<(), BookError>;

    /// Pending or credited deposits recorded in blocks above `number`.
    async fn deposits_above(&self, number: u64) -> Result<Vec<DepositRecord>, BookError>;

    /// Pending or credited deposits recorded at `block.number` but in
    /// another block of that height (seen there before a reorg).
    async fn stale_at(&self, block: &BlockHeader) -> Result<Vec<DepositRecord>, BookError>;

    /// Forgets the processed blocks above `ancestor` (the cursor goes back to it).
    async fn rewind(&self, ancestor: u64) -> Result<(), BookError>;

    /// Deposits waiting for confirmations, oldest block first.
    async fn pending(&self) -> Result<Vec<DepositRecord>, BookError>;

    /// Credits a pending deposit exactly once; returns the credit-seconds.
    /// A deposit credited before is not credited again.
    async fn credit(&self, deposit: &ChainDeposit) -> Result<CreditSeconds, BookError>;

    /// Marks a pending deposit removed (never to be credited); returns its
    /// status after, which stays `Credited` for one credited already.
    async fn mark_removed(&self, deposit: &ChainDeposit) -> Result<DepositStatus, BookError>;

    /// Records in the audit log (`deposit.reorged`) that a credited deposit
    /// left the chain, for an administrator; nothing is debited. Idempotent:
    /// a deposit already flagged for that block is not flagged again.
    async fn flag_reorged(&self, deposit: &ChainDeposit, depth: u64) -> Result<(), BookError>;
}
