//! In-memory fakes behind the ports, for unit tests only.
//!
//! They implement [`Ledger`], [`SessionStore`] and [`Launcher`] with plain
//! maps behind a `std::sync::Mutex` (never held across an `.await`), and add
//! knobs a test needs: make a port unavailable, slow down or fail a launch,
//! make a container exit, and read back what the actors did. This crate's
//! tests use them, and so do the gate's through the `testing` feature. Nothing
//! here is fit for production: nothing is durable.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::ports::{
    ContainerExit, CreditSeconds, DebitKey, LaunchError, LaunchSpec, Launcher, Ledger, LedgerError,
    RunningContainer, SessionId, SessionRecord, SessionState, SessionStore, StoreError, WalletId,
};

/// Locks a fake's state. A test that panicked while holding the lock has
/// already failed, so a poisoned lock is taken over rather than cascading
/// panics into unrelated assertions.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One debit the ledger applied.
#[derive(Clone, Debug)]
struct AppliedDebit {
    wallet: WalletId,
    amount: CreditSeconds,
    balance_after: CreditSeconds,
}

#[derive(Debug, Default)]
struct LedgerInner {
    balances: HashMap<WalletId, CreditSeconds>,
    applied: HashMap<DebitKey, AppliedDebit>,
    /// Keys in the order they were applied.
    order: Vec<DebitKey>,
    unavailable: bool,
}

/// A [`Ledger`] in memory, with the same idempotency rules as the real one.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    inner: Mutex<LedgerInner>,
}

impl MemoryLedger {
    /// An empty ledger: every wallet has 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Credits `amount` to the wallet, as a confirmed deposit would. Works
    /// even while the ledger is set unavailable (it stands for the chain side).
    pub fn deposit(&self, wallet: &WalletId, amount: CreditSeconds) {
        *lock(&self.inner)
            .balances
            .entry(wallet.clone())
            .or_default() += amount;
    }

    /// The wallet's balance now, bypassing availability.
    pub fn balance_now(&self, wallet: &WalletId) -> CreditSeconds {
        lock(&self.inner)
            .balances
            .get(wallet)
            .copied()
            .unwrap_or_default()
    }

    /// While `true`, every [`Ledger`] call fails with
    /// [`LedgerError::Unavailable`].
    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    /// Every applied debit, in the order applied: key, wallet, amount.
    pub fn debits(&self) -> Vec<(DebitKey, WalletId, CreditSeconds)> {
        let inner = lock(&self.inner);
        inner
            .order
            .iter()
            .map(|key| {
                let applied = &inner.applied[key];
                (*key, applied.wallet.clone(), applied.amount)
            })
            .collect()
    }

    /// The credit taken for one session, over all its keys.
    pub fn total_debited(&self, session: SessionId) -> CreditSeconds {
        lock(&self.inner)
            .applied
            .iter()
            .filter(|(key, _)| key.session == session)
            .map(|(_, applied)| applied.amount)
            .sum()
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn balance(&self, wallet: &WalletId) -> Result<CreditSeconds, LedgerError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(LedgerError::Unavailable(
                "memory ledger set unavailable".into(),
            ));
        }
        Ok(inner.balances.get(wallet).copied().unwrap_or_default())
    }

    async fn debit(
        &self,
        wallet: &WalletId,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError> {
        // A negative debit would mint credit; `LedgerError` has no variant for
        // it, and in a test it can only be a bug in the caller, so fail loudly.
        if amount < 0 {
            return Err(LedgerError::InvalidAmount(amount));
        }
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(LedgerError::Unavailable(
                "memory ledger set unavailable".into(),
            ));
        }
        if let Some(applied) = inner.applied.get(&key) {
            return if applied.wallet == *wallet && applied.amount == amount {
                Ok(applied.balance_after)
            } else {
                Err(LedgerError::KeyConflict(key.to_string()))
            };
        }
        let balance = inner.balances.get(wallet).copied().unwrap_or_default();
        if amount > balance {
            return Err(LedgerError::InsufficientCredit {
                balance,
                asked: amount,
            });
        }
        let balance_after = balance - amount;
        inner.balances.insert(wallet.clone(), balance_after);
        inner.applied.insert(
            key,
            AppliedDebit {
                wallet: wallet.clone(),
                amount,
                balance_after,
            },
        );
        inner.order.push(key);
        Ok(balance_after)
    }
}

#[derive(Debug, Default)]
struct StoreInner {
    records: HashMap<SessionId, SessionRecord>,
    /// Ids in the order first saved, so `load_active` is oldest first.
    order: Vec<SessionId>,
    saves: usize,
    unavailable: bool,
    queued_save_delay: Option<Duration>,
    /// Every state saved, per session, in the order the saves landed.
    history: HashMap<SessionId, Vec<SessionState>>,
}

/// A [`SessionStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<StoreInner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many saves succeeded.
    pub fn save_count(&self) -> usize {
        lock(&self.inner).saves
    }

    /// The latest saved record of a session.
    pub fn get(&self, id: SessionId) -> Option<SessionRecord> {
        lock(&self.inner).records.get(&id).cloned()
    }

    /// The states saved for a session, in the order the saves landed.
    pub fn saved_states(&self, id: SessionId) -> Vec<SessionState> {
        lock(&self.inner)
            .history
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// While `true`, every [`SessionStore`] call fails.
    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.inner).unavailable = unavailable;
    }

    /// Saves of `Queued` records take this long (a slow commit), so that a
    /// later save of the same session could overtake them.
    pub fn delay_queued_saves(&self, delay: Duration) {
        lock(&self.inner).queued_save_delay = Some(delay);
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn save(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let delay = lock(&self.inner).queued_save_delay;
        if let Some(delay) = delay
            && record.state == SessionState::Queued
        {
            tokio::time::sleep(delay).await;
        }
        let mut inner = lock(&self.inner);
        if inner.unavailable {
            return Err(StoreError("memory store set unavailable".into()));
        }
        if inner.records.insert(record.id, record.clone()).is_none() {
            inner.order.push(record.id);
        }
        inner
            .history
            .entry(record.id)
            .or_default()
            .push(record.state);
        inner.saves += 1;
        Ok(())
    }

    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(StoreError("memory store set unavailable".into()));
        }
        Ok(inner.records.get(&id).cloned())
    }

    async fn load_active(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let inner = lock(&self.inner);
        if inner.unavailable {
            return Err(StoreError("memory store set unavailable".into()));
        }
        Ok(inner
            .order
            .iter()
            .map(|id| &inner.records[id])
            .filter(|record| record.state != SessionState::Ended)
            .cloned()
            .collect())
    }
}

#[derive(Debug, Default)]
struct LauncherInner {
    /// Containers running now, in start order.
    running: Vec<RunningContainer>,
    /// The latest spec each session asked to launch (failed launches too).
    launched: HashMap<SessionId, LaunchSpec>,
    stopped: Vec<SessionId>,
    sinks: Vec<mpsc::UnboundedSender<ContainerExit>>,
    launch_delay: Option<Duration>,
    launch_failure: Option<String>,
    unreachable: bool,
}

/// A [`Launcher`] that starts nothing: containers are entries in a list.
#[derive(Debug, Default)]
pub struct FakeLauncher {
    inner: Mutex<LauncherInner>,
}

impl FakeLauncher {
    /// A launcher with nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// The container id the fake gives a session's container.
    pub fn container_id(session: SessionId) -> String {
        format!("ctr-{session}")
    }

    /// Makes every later launch take `delay` (on tokio's clock, so a paused
    /// test clock controls it).
    pub fn set_launch_delay(&self, delay: Duration) {
        lock(&self.inner).launch_delay = Some(delay);
    }

    /// With `Some(message)`, later launches fail with that message (after
    /// the launch delay); `None` makes them succeed again.
    pub fn fail_launches(&self, message: Option<String>) {
        lock(&self.inner).launch_failure = message;
    }

    /// With `true`, every later launch, stop and listing fails as a launcher
    /// on a host that does not answer would; `false` brings it back, with
    /// the containers it had.
    pub fn set_unreachable(&self, unreachable: bool) {
        lock(&self.inner).unreachable = unreachable;
    }

    fn reachable(&self) -> Result<(), LaunchError> {
        if lock(&self.inner).unreachable {
            return Err(LaunchError("connection refused".into()));
        }
        Ok(())
    }

    /// Makes the session's container exit by itself: it stops running and
    /// every exit watcher is told. Returns whether a container was running
    /// (only a running container can exit; otherwise nobody is told).
    pub fn exit(&self, session: SessionId, code: i64, oom: bool) -> bool {
        let mut inner = lock(&self.inner);
        let before = inner.running.len();
        inner.running.retain(|c| c.session != session);
        if inner.running.len() == before {
            return false;
        }
        let exit = ContainerExit { session, code, oom };
        // A watcher that went away is dropped, as a closed event stream would be.
        inner.sinks.retain(|sink| sink.send(exit.clone()).is_ok());
        true
    }

    /// Whether the session's container runs now.
    pub fn is_running(&self, session: SessionId) -> bool {
        lock(&self.inner)
            .running
            .iter()
            .any(|c| c.session == session)
    }

    /// The latest spec the session asked to launch, whether or not the
    /// launch succeeded.
    pub fn launched(&self, session: SessionId) -> Option<LaunchSpec> {
        lock(&self.inner).launched.get(&session).cloned()
    }

    /// Whether `stop` was called for the session.
    pub fn stopped(&self, session: SessionId) -> bool {
        lock(&self.inner).stopped.contains(&session)
    }

    /// Adds a running container nobody launched through this fake, as one
    /// left running across a gate restart would be.
    pub fn insert_running(&self, container: RunningContainer) {
        let mut inner = lock(&self.inner);
        inner.running.retain(|c| c.session != container.session);
        inner.running.push(container);
    }
}

#[async_trait]
impl Launcher for FakeLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        self.reachable()?;
        let delay = {
            let mut inner = lock(&self.inner);
            inner.launched.insert(spec.session, spec.clone());
            inner.launch_delay
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut inner = lock(&self.inner);
        if let Some(message) = &inner.launch_failure {
            return Err(LaunchError(message.clone()));
        }
        let container_id = Self::container_id(spec.session);
        inner.running.retain(|c| c.session != spec.session);
        inner.running.push(RunningContainer {
            session: spec.session,
            container_id: container_id.clone(),
            host: spec.host,
        });
        Ok(container_id)
    }

    async fn stop(&self, session: SessionId) -> Result<(), LaunchError> {
        self.reachable()?;
        let mut inner = lock(&self.inner);
        inner.running.retain(|c| c.session != session);
        inner.stopped.push(session);
        Ok(())
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        self.reachable()?;
        Ok(lock(&self.inner).running.clone())
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        lock(&self.inner).sinks.push(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wallet() -> WalletId {
        WalletId::new("0xAbC0000000000000000000000000000000000001")
    }

    fn key(session: SessionId, interval: u64) -> DebitKey {
        DebitKey { session, interval }
    }

    #[tokio::test]
    async fn repeated_key_with_same_parameters_debits_once_and_returns_first_balance() {
        let ledger = MemoryLedger::new();
        let w = wallet();
        ledger.deposit(&w, 100);
        let k = key(SessionId::new(), 0);

        assert_eq!(ledger.debit(&w, 30, k).await, Ok(70));
        ledger.deposit(&w, 5);
        assert_eq!(ledger.debit(&w, 30, k).await, Ok(70));

        assert_eq!(ledger.balance_now(&w), 75);
        assert_eq!(ledger.debits(), vec![(k, w, 30)]);
        assert_eq!(ledger.total_debited(k.session), 30);
    }

    #[tokio::test]
    async fn reused_key_with_other_amount_or_wallet_is_a_conflict_and_changes_nothing() {
        let ledger = MemoryLedger::new();
        let w = wallet();
        let other = WalletId::new("0x0000000000000000000000000000000000000002");
        ledger.deposit(&w, 100);
        ledger.deposit(&other, 100);
        let k = key(SessionId::new(), 3);
        ledger.debit(&w, 10, k).await.unwrap();

        let expected = Err(LedgerError::KeyConflict(k.to_string()));
        assert_eq!(ledger.debit(&w, 11, k).await, expected);
        assert_eq!(ledger.debit(&other, 10, k).await, expected);

        assert_eq!(ledger.balance_now(&w), 90);
        assert_eq!(ledger.balance_now(&other), 100);
        assert_eq!(ledger.debits().len(), 1);
    }

    #[tokio::test]
    async fn debit_above_balance_is_insufficient_and_takes_nothing() {
        let ledger = MemoryLedger::new();
        let w = wallet();
        ledger.deposit(&w, 10);
        let k = key(SessionId::new(), 0);

        assert_eq!(
            ledger.debit(&w, 11, k).await,
            Err(LedgerError::InsufficientCredit {
                balance: 10,
                asked: 11
            })
        );
        assert_eq!(ledger.balance_now(&w), 10);
        assert!(ledger.debits().is_empty());
        // The refused key was not consumed: it applies once credit suffices.
        assert_eq!(ledger.debit(&w, 10, k).await, Ok(0));
    }

    #[tokio::test]
    async fn unavailable_ledger_refuses_every_call_until_back() {
        let ledger = MemoryLedger::new();
        let w = wallet();
        ledger.deposit(&w, 10);
        ledger.set_unavailable(true);
        let k = key(SessionId::new(), 0);

        assert!(matches!(
            ledger.balance(&w).await,
            Err(LedgerError::Unavailable(_))
        ));
        assert!(matches!(
            ledger.debit(&w, 1, k).await,
            Err(LedgerError::Unavailable(_))
        ));
        assert_eq!(ledger.balance_now(&w), 10);

        ledger.set_unavailable(false);
        assert_eq!(ledger.debit(&w, 1, k).await, Ok(9));
    }

    #[tokio::test]
    async fn store_loads_unended_records_in_first_save_order() {
        let store = MemoryStore::new();
        let record = |state| SessionRecord {
            state,
            ..SessionRecord::new(SessionId::new(), wallet(), 1)
        };
        let mut first = record(SessionState::Queued);
        let ended = record(SessionState::Ended);
        let second = record(SessionState::Running);
        store.save(&first).await.unwrap();
        store.save(&ended).await.unwrap();
        store.save(&second).await.unwrap();
        // Updating the first keeps its place.
        first.state = SessionState::Launching;
        store.save(&first).await.unwrap();

        let active = store.load_active().await.unwrap();
        assert_eq!(active, vec![first.clone(), second]);
        assert_eq!(store.save_count(), 4);
        assert_eq!(store.get(first.id), Some(first));
    }

    #[tokio::test(start_paused = true)]
    async fn launcher_runs_after_the_delay_and_reports_exits_to_watchers() {
        let launcher = FakeLauncher::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        launcher.watch_exits(tx);
        launcher.set_launch_delay(Duration::from_secs(5));
        let session = SessionId::new();
        let spec = LaunchSpec {
            session,
            host: 0,
            gpu_indices: vec![1],
        };

        let started = tokio::time::Instant::now();
        let id = launcher.launch(&spec).await.unwrap();
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert_eq!(id, format!("ctr-{session}"));
        assert!(launcher.is_running(session));
        assert_eq!(launcher.launched(session), Some(spec));

        assert!(launcher.exit(session, 137, true));
        assert!(!launcher.is_running(session));
        assert_eq!(
            rx.recv().await,
            Some(ContainerExit {
                session,
                code: 137,
                oom: true
            })
        );
        // Nothing runs any more, so nothing more can exit.
        assert!(!launcher.exit(session, 0, false));
    }

    #[tokio::test]
    async fn failing_launcher_starts_nothing() {
        let launcher = FakeLauncher::new();
        launcher.fail_launches(Some("no such image".into()));
        let session = SessionId::new();
        let spec = LaunchSpec {
            session,
            host: 0,
            gpu_indices: vec![0],
        };

        assert_eq!(
            launcher.launch(&spec).await,
            Err(LaunchError("no such image".into()))
        );
        assert!(!launcher.is_running(session));
        assert!(launcher.running().await.unwrap().is_empty());
    }
}
