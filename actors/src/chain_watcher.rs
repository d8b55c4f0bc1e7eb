//! `ChainWatcher`: one per chain, turning transfers to the revenue address
//! into credit.
//!
//! Every `chain_poll` it reads the new heads one block at a time, records
//! the block's deposits as pending and stores the block's hash, both in one
//! transaction of the [`DepositBook`]: the cursor advances only past a block
//! that is fully processed, so an RPC failure half-way loses nothing and the
//! next tick resumes where this one stopped. Pending deposits are credited
//! once they have enough confirmations (a deposit in block `b` has
//! `tip − b + 1`), or once they are at or below the finalized block; the
//! book credits by the deposit's identity `(chain, tx, log index)`, so a
//! deposit is credited at most once however often it is asked.
//!
//! Reorgs: before reading new blocks the watcher compares the hash it stored
//! for its cursor with the node's, and every new block's parent hash with
//! the hash stored below it. On a mismatch it walks back to the common
//! ancestor, marks the deposits above it removed (they are never credited
//! unless the new chain holds them again), flags the ones already credited
//! in the audit log (`deposit.reorged`) for an administrator — nothing is
//! debited automatically — and rescans from the ancestor.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::ports::{BookError, ChainError, ChainReader, DepositBook, DepositRecord, DepositStatus};

/// When a deposit is credited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Required {
    /// After this many confirmations (1 = the deposit's block itself).
    Blocks(u64),
    /// Once the deposit's block is finalized.
    Finalized,
}

impl Required {
    /// Whether a deposit in `block` is ready at chain tip `tip` with
    /// finalized block `finalized`.
    pub fn met(self, block: u64, tip: u64, finalized: Option<u64>) -> bool {
        match self {
            Self::Blocks(n) => confirmations(block, tip) >= n,
            Self::Finalized => finalized.is_some_and(|f| block <= f),
        }
    }
}

/// Confirmations of a deposit in `block` when the tip is `tip`: the block
/// itself counts one; zero if the tip is below it.
pub fn confirmations(block: u64, tip: u64) -> u64 {
    (tip + 1).saturating_sub(block)
}

/// Blocks read at most in one tick, so that a long catch-up still lets
/// status requests through between ticks.
const MAX_BLOCKS_PER_TICK: u64 = 500;

/// What a [`ChainWatcher`] starts from.
#[derive(Clone)]
pub struct ChainWatcherArgs {
    /// The chain, through the RPC node.
    pub reader: Arc<dyn ChainReader>,
    /// Processed blocks and deposits.
    pub book: Arc<dyn DepositBook>,
    /// When a deposit is credited.
    pub required: Required,
    /// How often to look for new blocks.
    pub poll: Duration,
    /// The first block to scan when the book has no cursor; the latest
    /// block at that moment when `None`.
    pub start_block: Option<u64>,
}

impl fmt::Debug for ChainWatcherArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainWatcherArgs")
            .field("required", &self.required)
            .field("poll", &self.poll)
            .field("start_block", &self.start_block)
            .finish_non_exhaustive()
    }
}

/// What the watcher has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatcherStatus {
    /// The last fully processed block.
    pub cursor: Option<u64>,
    /// Ticks run, failed or not.
    pub ticks: u64,
    /// Why the last tick failed; `None` when it succeeded.
    pub last_error: Option<String>,
    /// Reorgs seen since start.
    pub reorgs: u64,
}

/// Messages to a [`ChainWatcher`].
#[derive(Debug)]
pub enum ChainWatcherMsg {
    /// The poll timer fired: follow the chain, then schedule the next tick.
    Tick,
    /// Follow the chain now (without touching the timer); answers the status after.
    Poll {
        /// The status after this round.
        reply: RpcReplyPort<WatcherStatus>,
    },
    /// Asks for the status.
    Status {
        /// The status now.
        reply: RpcReplyPort<WatcherStatus>,
    },
}

/// The actor that follows one chain.
#[derive(Debug, Default)]
pub struct ChainWatcher;

/// A [`ChainWatcher`]'s state.
pub struct ChainWatcherState {
    args: ChainWatcherArgs,
    status: WatcherStatus,
    /// When the node last reported a head above a block it could not serve
    /// was warned about (at most once a minute).
    gap_warned: Option<std::time::Instant>,
}

/// How often a node that reports a head above a block it cannot serve is
/// warned about.
const GAP_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl fmt::Debug for ChainWatcherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainWatcherState")
            .field("args", &self.args)
            .field("status", &self.status)
            .finish()
    }
}

/// Why a round stopped early; the next round starts over from the cursor.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Book(#[from] BookError),
}

impl ChainWatcherState {
    /// One round: reorg check, scan new blocks, credit what is confirmed.
    async fn round(&mut self) {
        self.status.ticks += 1;
        let started = std::time::Instant::now();
        match self.follow().await {
            Ok(()) => {
                self.status.last_error = None;
                metrics::counter!("deskgate_chain_ticks_total", "outcome" => "ok").increment(1);
            }
            Err(error) => {
                let kind = match &error {
                    RoundError::Chain(_) => "rpc_error",
                    RoundError::Book(_) => "db_error",
                };
                warn!(%error, cursor = ?self.status.cursor, "chain watcher round failed; retrying next tick");
                self.status.last_error = Some(error.to_string());
                metrics::counter!("deskgate_chain_ticks_total", "outcome" => kind).increment(1);
            }
        }
        metrics::histogram!("deskgate_chain_tick_seconds").record(started.elapsed());
    }

    async fn follow(&mut self) -> Result<(), RoundError> {
        let reader = self.args.reader.clone();
        let book = self.args.book.clone();
        let latest = reader.latest_block().await?;
        metrics::gauge!("deskgate_chain_head_block").set(latest as f64);

        let mut cursor = book.cursor().await?;
        if let Some(at) = cursor {
            let node = reader.block(at.number).await?;
            if node.map(|b| b.hash) != Some(at.hash) {
                self.reorg(at.number).await?;
                cursor = book.cursor().await?;
            }
        }

        let mut next = match cursor {
            Some(at) => at.number + 1,
            None => self.args.start_block.unwrap_or(latest),
        };
        let mut read = 0;
        while next <= latest && read < MAX_BLOCKS_PER_TICK {
            let Some(block) = reader.block(next).await? else {
                // The chain got shorter since `latest`, or the node (a lagging
                // replica behind a load balancer, a broken dev node) reports
                // a head it cannot serve. Either way no block is skipped:
                // the next round asks again, and a gap that lasts is told.
                self.gap(next, latest);
                break;
            };
            if let Some(below) = cursor
                && below.number + 1 == block.number
                && block.parent_hash != below.hash
            {
                self.reorg(below.number).await?;
                cursor = book.cursor().await?;
                next = cursor.map_or(next, |c| c.number + 1);
                read += 1;
                continue;
            }
            let deposits = reader.deposits_in_block(&block).await?;
            book.commit_block(&block, &deposits).await?;
            for found in &deposits {
                info!(
                    tx = %found.tx_hash, log_index = found.log_index, block = block.number,
                    from = %found.from, asset = ?found.asset, "deposit seen; pending"
                );
            }
            metrics::counter!("deskgate_deposits_seen_total").increment(deposits.len() as u64);
            // A deposit recorded at this height from another block (by a
            // direct transaction check, ahead of the cursor) left the chain.
            for stale in book.stale_at(&block).await? {
                self.drop_deposit(&stale, 1).await?;
            }
            cursor = Some(block);
            self.status.cursor = Some(block.number);
            metrics::gauge!("deskgate_chain_cursor_block").set(block.number as f64);
            next += 1;
            read += 1;
        }
        self.status.cursor = cursor.map(|c| c.number);

        let Some(tip) = cursor.map(|c| c.number) else {
            return Ok(());
        };
        let finalized = match self.args.required {
            Required::Finalized => reader.finalized_block().await?,
            Required::Blocks(_) => None,
        };
        for record in book.pending().await? {
            let deposit = &record.deposit;
            if deposit.block_number > tip
                || !self.args.required.met(deposit.block_number, tip, finalized)
            {
                continue;
            }
            let credit = book.credit(deposit).await?;
            info!(
                tx = %deposit.tx_hash, log_index = deposit.log_index, wallet = %deposit.from,
                credit_seconds = credit, block = deposit.block_number, tip,
                "deposit credited"
            );
            metrics::counter!("deskgate_deposits_credited_total").increment(1);
        }
        Ok(())
    }

    /// Warns, at most once a minute, that the node reports head `latest`
    /// but has no block `missing` below it.
    fn gap(&mut self, missing: u64, latest: u64) {
        metrics::counter!("deskgate_chain_missing_blocks_total").increment(1);
        if self
            .gap_warned
            .is_none_or(|at| at.elapsed() >= GAP_WARNING_EVERY)
        {
            self.gap_warned = Some(std::time::Instant::now());
            warn!(
                missing,
                latest,
                "the RPC node reports a head above a block it does not serve; deposits wait for it"
            );
        }
    }

    /// The stored block `from` is not the node's any more: finds the common
    /// ancestor, drops the deposits above it and rewinds the cursor there.
    async fn reorg(&mut self, from: u64) -> Result<(), RoundError> {
        let reader = self.args.reader.clone();
        let book = self.args.book.clone();
        let mut number = from;
        let ancestor = loop {
            let Some(stored) = book.recorded_hash(number).await? else {
                // Nothing kept at this height: rescan everything above it.
                break number;
            };
            if reader.block(number).await?.map(|b| b.hash) == Some(stored) || number == 0 {
                break number;
            }
            number -= 1;
        };
        let depth = from - ancestor;
        warn!(
            from,
            ancestor, depth, "chain reorg: rewinding to the common ancestor"
        );
        metrics::counter!("deskgate_chain_reorgs_total").increment(1);
        metrics::histogram!("deskgate_chain_reorg_depth").record(depth as f64);
        self.status.reorgs += 1;
        // Deposits first, then the cursor: a crash in between finds the same
        // reorg again next time, and both steps are idempotent.
        for record in book.deposits_above(ancestor).await? {
            let depth = from.saturating_sub(record.deposit.block_number) + 1;
            self.drop_deposit(&record, depth).await?;
        }
        book.rewind(ancestor).await?;
        self.status.cursor = Some(ancestor);
        Ok(())
    }

    /// A recorded deposit's block left the chain: pending ones are removed,
    /// credited ones flagged for an administrator.
    async fn drop_deposit(&self, record: &DepositRecord, depth: u64) -> Result<(), BookError> {
        let deposit = &record.deposit;
        let status = match record.status {
            DepositStatus::Pending => self.args.book.mark_removed(deposit).await?,
            other => other,
        };
        match status {
            DepositStatus::Credited => {
                warn!(
                    tx = %deposit.tx_hash, log_index = deposit.log_index, wallet = %deposit.from,
                    block = deposit.block_number, depth,
                    "a credited deposit was reorged away; flagged for an administrator"
                );
                self.args.book.flag_reorged(deposit, depth).await?;
                metrics::counter!("deskgate_deposits_reorged_after_credit_total").increment(1);
            }
            DepositStatus::Removed => {
                info!(
                    tx = %deposit.tx_hash, log_index = deposit.log_index,
                    block = deposit.block_number, "pending deposit reorged away; removed"
                );
                metrics::counter!("deskgate_deposits_removed_total").increment(1);
            }
            DepositStatus::Pending | DepositStatus::Rejected => {}
        }
        Ok(())
    }
}

impl Actor for ChainWatcher {
    type Msg = ChainWatcherMsg;
    type State = ChainWatcherState;
    type Arguments = ChainWatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ChainWatcherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        debug!(required = ?args.required, poll = ?args.poll, "chain watcher started");
        myself.send_message(ChainWatcherMsg::Tick)?;
        Ok(ChainWatcherState {
            args,
            status: WatcherStatus::default(),
            gap_warned: None,
        })
    }

    // One message at a time: a round never overlaps another, so the cursor
    // has a single writer.
    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ChainWatcherMsg::Tick => {
                state.round().await;
                myself.send_after(state.args.poll, || ChainWatcherMsg::Tick);
            }
            ChainWatcherMsg::Poll { reply } => {
                state.round().await;
                let _ = reply.send(state.status.clone());
            }
            ChainWatcherMsg::Status { reply } => {
                let _ = reply.send(state.status.clone());
            }
        }
        Ok(())
    }
}

/// Spawns the watcher, linked to `supervisor` when given. Its first round
/// starts at once.
pub async fn spawn_chain_watcher(
    args: ChainWatcherArgs,
    supervisor: Option<ActorCell>,
) -> Result<ActorRef<ChainWatcherMsg>, SpawnErr> {
    let name = format!("chain-watcher-{}", Uuid::new_v4().simple());
    let (actor, _handle) = match supervisor {
        Some(supervisor) => Actor::spawn_linked(Some(name), ChainWatcher, args, supervisor).await?,
        None => Actor::spawn(Some(name), ChainWatcher, args).await?,
    };
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use ractor::call;

    use super::*;
    use crate::ports::{
        Address20, Amount256, BlockHeader, ChainDeposit, CreditSeconds, DepositAsset, Hash32,
    };

    fn hash(fork: u8, number: u64) -> Hash32 {
        let mut bytes = [0u8; 32];
        bytes[0] = fork;
        bytes[24..].copy_from_slice(&number.to_be_bytes());
        Hash32(bytes)
    }

    /// A chain whose block `n` belongs to fork `forks[n]`.
    #[derive(Default)]
    struct FakeChain {
        forks: Mutex<Vec<u8>>,
        deposits: Mutex<BTreeMap<Hash32, Vec<ChainDeposit>>>,
        down: AtomicBool,
    }

    impl FakeChain {
        fn header(forks: &[u8], number: u64) -> BlockHeader {
            let n = number as usize;
            BlockHeader {
                number,
                hash: hash(forks[n], number),
                parent_hash: if n == 0 {
                    hash(0, u64::MAX)
                } else {
                    hash(forks[n - 1], number - 1)
                },
            }
        }
        fn extend(&self, fork: u8, blocks: usize) {
            self.forks
                .lock()
                .unwrap()
                .extend(std::iter::repeat_n(fork, blocks));
        }
        /// Replaces everything from `from` on with `blocks` blocks of `fork`.
        fn reorg(&self, from: usize, fork: u8, blocks: usize) {
            let mut forks = self.forks.lock().unwrap();
            forks.truncate(from);
            forks.extend(std::iter::repeat_n(fork, blocks));
        }
        fn deposit_at(&self, fork: u8, number: u64, tag: u8) -> ChainDeposit {
            let deposit = ChainDeposit {
                tx_hash: Hash32([tag; 32]),
                log_index: -1,
                block_number: number,
                block_hash: hash(fork, number),
                from: Address20([tag; 20]),
                to: Address20([0xee; 20]),
                asset: DepositAsset::Eth,
                amount: Amount256([1; 32]),
            };
            self.deposits
                .lock()
                .unwrap()
                .entry(deposit.block_hash)
                .or_default()
                .push(deposit.clone());
            deposit
        }
        fn check(&self) -> Result<(), ChainError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(ChainError("connection refused".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl ChainReader for FakeChain {
        async fn latest_block(&self) -> Result<u64, ChainError> {
            self.check()?;
            Ok(self.forks.lock().unwrap().len() as u64 - 1)
        }
        async fn finalized_block(&self) -> Result<Option<u64>, ChainError> {
            self.check()?;
            Ok((self.forks.lock().unwrap().len() as u64).checked_sub(11))
        }
        async fn block(&self, number: u64) -> Result<Option<BlockHeader>, ChainError> {
            self.check()?;
            let forks = self.forks.lock().unwrap();
            Ok(((number as usize) < forks.len()).then(|| Self::header(&forks, number)))
        }
        async fn deposits_in_block(
            &self,
            block: &BlockHeader,
        ) -> Result<Vec<ChainDeposit>, ChainError> {
            self.check()?;
            Ok(self
                .deposits
                .lock()
                .unwrap()
                .get(&block.hash)
                .cloned()
                .unwrap_or_default())
        }
    }

    #[derive(Default)]
    struct FakeBook {
        blocks: Mutex<BTreeMap<u64, BlockHeader>>,
        deposits: Mutex<BTreeMap<(Hash32, i64), DepositRecord>>,
        credits: Mutex<Vec<Hash32>>,
        flags: Mutex<Vec<Hash32>>,
        flagged: Mutex<Vec<(Hash32, Hash32)>>,
    }

    impl FakeBook {
        fn status(&self, deposit: &ChainDeposit) -> Option<DepositStatus> {
            let deposits = self.deposits.lock().unwrap();
            deposits
                .get(&(deposit.tx_hash, deposit.log_index))
                .map(|r| r.status)
        }
        fn select(&self, keep: impl Fn(&DepositRecord) -> bool) -> Vec<DepositRecord> {
            let deposits = self.deposits.lock().unwrap();
            deposits.values().filter(|r| keep(r)).cloned().collect()
        }
    }

    fn live(r: &DepositRecord) -> bool {
        matches!(r.status, DepositStatus::Pending | DepositStatus::Credited)
    }

    #[async_trait]
    impl DepositBook for FakeBook {
        async fn cursor(&self) -> Result<Option<BlockHeader>, BookError> {
            Ok(self.blocks.lock().unwrap().values().next_back().copied())
        }
        async fn recorded_hash(&self, number: u64) -> Result<Option<Hash32>, BookError> {
            Ok(self.blocks.lock().unwrap().get(&number).map(|b| b.hash))
        }
        async fn commit_block(
            &self,
            block: &BlockHeader,
            found: &[ChainDeposit],
        ) -> Result<(), BookError> {
            let mut deposits = self.deposits.lock().unwrap();
            for deposit in found {
                let record = deposits
                    .entry((deposit.tx_hash, deposit.log_index))
                    .or_insert(DepositRecord {
                        deposit: deposit.clone(),
                        status: DepositStatus::Pending,
                    });
                record.deposit = deposit.clone();
                if record.status == DepositStatus::Removed {
                    record.status = DepositStatus::Pending;
                }
            }
            self.blocks.lock().unwrap().insert(block.number, *block);
            Ok(())
        }
        async fn deposits_above(&self, number: u64) -> Result<Vec<DepositRecord>, BookError> {
            Ok(self.select(|r| live(r) && r.deposit.block_number > number))
        }
        async fn stale_at(&self, block: &BlockHeader) -> Result<Vec<DepositRecord>, BookError> {
            Ok(self.select(|r| {
                live(r)
                    && r.deposit.block_number == block.number
                    && r.deposit.block_hash != block.hash
            }))
        }
        async fn rewind(&self, ancestor: u64) -> Result<(), BookError> {
            self.blocks.lock().unwrap().retain(|n, _| *n <= ancestor);
            Ok(())
        }
        async fn pending(&self) -> Result<Vec<DepositRecord>, BookError> {
            Ok(self.select(|r| r.status == DepositStatus::Pending))
        }
        async fn credit(&self, deposit: &ChainDeposit) -> Result<CreditSeconds, BookError> {
            let mut deposits = self.deposits.lock().unwrap();
            let record = deposits
                .get_mut(&(deposit.tx_hash, deposit.log_index))
                .unwrap();
            if record.status == DepositStatus::Pending {
                record.status = DepositStatus::Credited;
                self.credits.lock().unwrap().push(deposit.tx_hash);
            }
            Ok(100)
        }
        async fn mark_removed(&self, deposit: &ChainDeposit) -> Result<DepositStatus, BookError> {
            let mut deposits = self.deposits.lock().unwrap();
            let record = deposits
                .get_mut(&(deposit.tx_hash, deposit.log_index))
                .unwrap();
            if record.status == DepositStatus::Pending {
                record.status = DepositStatus::Removed;
            }
            Ok(record.status)
        }
        async fn flag_reorged(&self, deposit: &ChainDeposit, _depth: u64) -> Result<(), BookError> {
            let mut flagged = self.flagged.lock().unwrap();
            if !flagged.contains(&(deposit.tx_hash, deposit.block_hash)) {
                flagged.push((deposit.tx_hash, deposit.block_hash));
                self.flags.lock().unwrap().push(deposit.tx_hash);
            }
            Ok(())
        }
    }

    async fn watcher(
        chain: &Arc<FakeChain>,
        book: &Arc<FakeBook>,
        required: Required,
    ) -> ActorRef<ChainWatcherMsg> {
        spawn_chain_watcher(
            ChainWatcherArgs {
                reader: chain.clone(),
                book: book.clone(),
                required,
                poll: Duration::from_secs(3600),
                start_block: Some(0),
            },
            None,
        )
        .await
        .unwrap()
    }

    async fn poll(actor: &ActorRef<ChainWatcherMsg>) -> WatcherStatus {
        call!(actor, |reply| ChainWatcherMsg::Poll { reply }).unwrap()
    }

    #[test]
    fn confirmations_count_the_deposit_block_itself() {
        assert_eq!(confirmations(10, 9), 0);
        assert_eq!(confirmations(10, 10), 1);
        assert_eq!(confirmations(10, 12), 3);
        assert!(!Required::Blocks(3).met(10, 11, None));
        assert!(Required::Blocks(3).met(10, 12, None));
        assert!(!Required::Finalized.met(10, 100, None));
        assert!(!Required::Finalized.met(10, 100, Some(9)));
        assert!(Required::Finalized.met(10, 100, Some(10)));
    }

    #[tokio::test]
    async fn a_reorg_removes_pending_deposits_above_the_ancestor_and_rescans() {
        let chain = Arc::new(FakeChain::default());
        let book = Arc::new(FakeBook::default());
        chain.extend(0, 5); // 0..=4
        let lost = chain.deposit_at(0, 3, 0xa1);
        let actor = watcher(&chain, &book, Required::Blocks(5)).await;
        assert_eq!(poll(&actor).await.cursor, Some(4));
        assert_eq!(book.status(&lost), Some(DepositStatus::Pending));

        // Blocks 2.. replaced by fork 1, which holds a different deposit at 3.
        chain.reorg(2, 1, 6); // 0..=7
        let kept = chain.deposit_at(1, 3, 0xb2);
        let status = poll(&actor).await;
        assert_eq!(status.reorgs, 1);
        assert_eq!(status.cursor, Some(7));
        assert_eq!(book.status(&lost), Some(DepositStatus::Removed));
        assert_eq!(book.recorded_hash(3).await.unwrap(), Some(hash(1, 3)));
        assert_eq!(book.recorded_hash(1).await.unwrap(), Some(hash(0, 1)));
        assert_eq!(
            book.status(&kept),
            Some(DepositStatus::Credited),
            "3..=7 is 5 confirmations"
        );
        assert_eq!(*book.credits.lock().unwrap(), [kept.tx_hash]);
        assert!(book.flags.lock().unwrap().is_empty());
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_credited_deposit_reorged_away_is_flagged_once_and_stays_credited() {
        let chain = Arc::new(FakeChain::default());
        let book = Arc::new(FakeBook::default());
        chain.extend(0, 6);
        let deposit = chain.deposit_at(0, 2, 0xc3);
        let actor = watcher(&chain, &book, Required::Blocks(2)).await;
        poll(&actor).await;
        assert_eq!(book.status(&deposit), Some(DepositStatus::Credited));

        chain.reorg(1, 2, 8);
        poll(&actor).await;
        poll(&actor).await;
        assert_eq!(*book.flags.lock().unwrap(), [deposit.tx_hash]);
        assert_eq!(book.status(&deposit), Some(DepositStatus::Credited));
        assert_eq!(book.credits.lock().unwrap().len(), 1);
        actor.stop(None);
    }

    #[tokio::test]
    async fn an_rpc_failure_keeps_the_cursor_and_the_next_round_catches_up() {
        let chain = Arc::new(FakeChain::default());
        let book = Arc::new(FakeBook::default());
        chain.extend(0, 3);
        let actor = watcher(&chain, &book, Required::Finalized).await;
        assert_eq!(poll(&actor).await.cursor, Some(2));

        chain.down.store(true, Ordering::SeqCst);
        chain.extend(0, 20);
        let deposit = chain.deposit_at(0, 5, 0xd4);
        let failed = poll(&actor).await;
        assert!(failed.last_error.is_some());
        assert_eq!(book.cursor().await.unwrap().map(|b| b.number), Some(2));

        chain.down.store(false, Ordering::SeqCst);
        let status = poll(&actor).await;
        assert_eq!(status.last_error, None);
        assert_eq!(status.cursor, Some(22));
        // Finalized is the tip minus 10 (12): block 5 is final.
        assert_eq!(book.status(&deposit), Some(DepositStatus::Credited));
        poll(&actor).await;
        assert_eq!(book.credits.lock().unwrap().len(), 1);
        actor.stop(None);
    }
}
