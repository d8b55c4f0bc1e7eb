//! `WalletActor`: one per active wallet, serialising that wallet's money
//! operations and caching its balance.
//!
//! The ledger stays the truth: every debit is committed there (idempotent by
//! key) before the actor counts it, and the cache only saves balance reads
//! between debits. The cache is refreshed from every ledger answer and
//! dropped whenever a debit's outcome is unknown.

use std::fmt;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::ports::{CreditSeconds, DebitKey, Ledger, LedgerError, WalletId};

/// What a [`WalletActor`] starts from.
#[derive(Clone)]
pub struct WalletArgs {
    /// The wallet it serves.
    pub wallet: WalletId,
    /// Where the money is.
    pub ledger: Arc<dyn Ledger>,
}

impl fmt::Debug for WalletArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletArgs")
            .field("wallet", &self.wallet)
            .finish_non_exhaustive()
    }
}

/// Messages to a [`WalletActor`].
#[derive(Debug)]
pub enum WalletMsg {
    /// Asks for the balance, read from the ledger once and cached after.
    Balance {
        /// The balance, or why it could not be read.
        reply: RpcReplyPort<Result<CreditSeconds, LedgerError>>,
    },
    /// Re-reads the balance from the ledger (after a deposit was credited, say).
    Refresh {
        /// The balance, or why it could not be read.
        reply: RpcReplyPort<Result<CreditSeconds, LedgerError>>,
    },
    /// Takes `amount` under the idempotency `key`; answers the balance after.
    Debit {
        /// Credit-seconds to take.
        amount: CreditSeconds,
        /// The interval billed; a repeated key takes nothing again.
        key: DebitKey,
        /// The balance after, or why nothing was taken.
        reply: RpcReplyPort<Result<CreditSeconds, LedgerError>>,
    },
    /// Asks how many whole seconds `gpus` GPUs can run on the balance.
    RunwaySeconds {
        /// GPUs that would run.
        gpus: u32,
        /// The seconds, or why the balance could not be read.
        reply: RpcReplyPort<Result<u64, LedgerError>>,
    },
}

/// The actor that owns one wallet's money operations.
#[derive(Debug, Default)]
pub struct WalletActor;

/// A [`WalletActor`]'s state.
pub struct WalletState {
    wallet: WalletId,
    ledger: Arc<dyn Ledger>,
    /// The balance as of the last ledger answer; `None` until read, or
    /// after an operation whose effect is unknown.
    cached: Option<CreditSeconds>,
}

impl fmt::Debug for WalletState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalletState")
            .field("wallet", &self.wallet)
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

impl WalletState {
    async fn balance(&mut self) -> Result<CreditSeconds, LedgerError> {
        match self.cached {
            Some(balance) => Ok(balance),
            None => self.refresh().await,
        }
    }

    async fn refresh(&mut self) -> Result<CreditSeconds, LedgerError> {
        let balance = self.ledger.balance(&self.wallet).await?;
        self.cached = Some(balance);
        Ok(balance)
    }

    async fn debit(
        &mut self,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError> {
        let wallet = &self.wallet;
        let outcome = self.ledger.debit(wallet, amount, key).await;
        let label = match &outcome {
            Ok(balance) => {
                self.cached = Some(*balance);
                debug!(%wallet, %key, amount, balance, "debit applied");
                "applied"
            }
            Err(LedgerError::InsufficientCredit { balance, asked }) => {
                self.cached = Some(*balance);
                info!(%wallet, %key, balance, asked, "debit refused: insufficient credit");
                "insufficient"
            }
            Err(error) => {
                // An unreachable ledger may have applied the debit before
                // failing, so the cached balance can no longer be trusted.
                self.cached = None;
                warn!(%wallet, %key, amount, %error, "debit failed");
                "error"
            }
        };
        metrics::counter!("deskgate_wallet_debits_total", "outcome" => label).increment(1);
        outcome
    }
}

/// How many whole seconds `gpus` GPUs can run on `balance` credit-seconds.
/// No GPUs spend nothing, so their runway is unbounded.
fn runway_seconds(balance: CreditSeconds, gpus: u32) -> u64 {
    match u64::try_from(balance) {
        Ok(0) | Err(_) => 0,
        Ok(_) if gpus == 0 => u64::MAX,
        Ok(balance) => balance / u64::from(gpus),
    }
}

impl Actor for WalletActor {
    type Msg = WalletMsg;
    type State = WalletState;
    type Arguments = WalletArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WalletArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        debug!(wallet = %args.wallet, "wallet actor started");
        Ok(WalletState {
            wallet: args.wallet,
            ledger: args.ledger,
            cached: None,
        })
    }

    // ractor hands an actor one message at a time and waits for `handle` to
    // finish before the next, so awaiting the ledger here serialises this
    // wallet's operations: no two debits (or a debit and a balance read)
    // interleave, whatever the ledger does inside.
    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A reply fails only when the caller stopped waiting; the ledger's
        // outcome is committed regardless and the cache already reflects it.
        match message {
            WalletMsg::Balance { reply } => {
                let _ = reply.send(state.balance().await);
            }
            WalletMsg::Refresh { reply } => {
                let _ = reply.send(state.refresh().await);
            }
            WalletMsg::Debit { amount, key, reply } => {
                let _ = reply.send(state.debit(amount, key).await);
            }
            WalletMsg::RunwaySeconds { gpus, reply } => {
                let runway = state
                    .balance()
                    .await
                    .map(|balance| runway_seconds(balance, gpus));
                let _ = reply.send(runway);
            }
        }
        Ok(())
    }
}

/// Spawns the actor for `args.wallet`, linked to `supervisor` when given.
///
/// Its registry name is `wallet-<address>-<uuid>`: ractor names are
/// process-global, and a bare `wallet-<address>` would collide while a
/// stopped wallet actor deregisters, or across parallel tests. Callers hold
/// the returned reference; nothing looks a wallet up by name.
pub async fn spawn_wallet(
    args: WalletArgs,
    supervisor: Option<ActorCell>,
) -> Result<ActorRef<WalletMsg>, SpawnErr> {
    let name = format!("wallet-{}-{}", args.wallet, Uuid::new_v4().simple());
    let (actor, _handle) = match supervisor {
        Some(supervisor) => Actor::spawn_linked(Some(name), WalletActor, args, supervisor).await?,
        None => Actor::spawn(Some(name), WalletActor, args).await?,
    };
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use ractor::call;

    use super::*;
    use crate::ports::SessionId;
    use crate::testing::MemoryLedger;

    fn wallet() -> WalletId {
        WalletId::new("0x00000000000000000000000000000000000000aa")
    }

    async fn spawn_with(ledger: Arc<dyn Ledger>) -> ActorRef<WalletMsg> {
        spawn_wallet(
            WalletArgs {
                wallet: wallet(),
                ledger,
            },
            None,
        )
        .await
        .expect("wallet actor starts")
    }

    async fn debit(
        actor: &ActorRef<WalletMsg>,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError> {
        call!(actor, |reply| WalletMsg::Debit { amount, key, reply }).expect("wallet answers")
    }

    async fn balance(actor: &ActorRef<WalletMsg>) -> Result<CreditSeconds, LedgerError> {
        call!(actor, |reply| WalletMsg::Balance { reply }).expect("wallet answers")
    }

    async fn refresh(actor: &ActorRef<WalletMsg>) -> Result<CreditSeconds, LedgerError> {
        call!(actor, |reply| WalletMsg::Refresh { reply }).expect("wallet answers")
    }

    async fn runway(actor: &ActorRef<WalletMsg>, gpus: u32) -> Result<u64, LedgerError> {
        call!(actor, |reply| WalletMsg::RunwaySeconds { gpus, reply }).expect("wallet answers")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_debits_never_overdraw_and_total_equals_sum_applied() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger.deposit(&wallet(), 1_000);
        let actor = spawn_with(ledger.clone()).await;

        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let actor = actor.clone();
                let key = DebitKey {
                    session: SessionId::new(),
                    interval: i,
                };
                tokio::spawn(async move { debit(&actor, 30, key).await })
            })
            .collect();
        let mut applied = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(after) => {
                    assert!(after >= 0);
                    applied += 30;
                }
                Err(LedgerError::InsufficientCredit { balance, asked }) => {
                    assert!(balance < asked);
                }
                Err(other) => panic!("unexpected ledger error {other}"),
            }
        }

        assert_eq!(applied, 990);
        let ledger_total: CreditSeconds = ledger.debits().iter().map(|(_, _, a)| a).sum();
        assert_eq!(ledger_total, applied);
        assert_eq!(ledger.balance_now(&wallet()), 1_000 - applied);
        assert_eq!(balance(&actor).await, Ok(10));
        actor.stop(None);
    }

    /// A ledger whose debit reads, yields, then writes: concurrent callers
    /// interleave and overdraw unless something serialises them.
    #[derive(Debug)]
    struct RacyLedger {
        balance: Mutex<CreditSeconds>,
    }

    #[async_trait]
    impl Ledger for RacyLedger {
        async fn balance(&self, _: &WalletId) -> Result<CreditSeconds, LedgerError> {
            Ok(*self.balance.lock().unwrap())
        }

        async fn debit(
            &self,
            _: &WalletId,
            amount: CreditSeconds,
            _: DebitKey,
        ) -> Result<CreditSeconds, LedgerError> {
            let balance = *self.balance.lock().unwrap();
            tokio::task::yield_now().await;
            if amount > balance {
                return Err(LedgerError::InsufficientCredit {
                    balance,
                    asked: amount,
                });
            }
            *self.balance.lock().unwrap() = balance - amount;
            Ok(balance - amount)
        }
    }

    type DebitTask = tokio::task::JoinHandle<Result<CreditSeconds, LedgerError>>;

    /// Starts ten 10-credit debits at once through `debit_once`; counts those applied.
    async fn debit_ten_times_concurrently(debit_once: impl Fn(DebitKey) -> DebitTask) -> usize {
        let session = SessionId::new();
        let tasks: Vec<_> = (0..10)
            .map(|interval| debit_once(DebitKey { session, interval }))
            .collect();
        let mut applied = 0;
        for task in tasks {
            if task.await.unwrap().is_ok() {
                applied += 1;
            }
        }
        applied
    }

    #[tokio::test]
    async fn wallet_actor_serialises_debits_that_a_racy_ledger_alone_would_overdraw() {
        // Control: called directly, the racy ledger lets every debit through.
        let direct = Arc::new(RacyLedger {
            balance: Mutex::new(30),
        });
        let applied_directly = debit_ten_times_concurrently(|key| {
            let ledger = direct.clone();
            tokio::spawn(async move { ledger.debit(&wallet(), 10, key).await })
        })
        .await;
        assert!(applied_directly > 3, "the control should overdraw");

        let serialised = Arc::new(RacyLedger {
            balance: Mutex::new(30),
        });
        let actor = spawn_with(serialised.clone()).await;
        let applied_through_actor = debit_ten_times_concurrently(|key| {
            let actor = actor.clone();
            tokio::spawn(async move { debit(&actor, 10, key).await })
        })
        .await;

        assert_eq!(applied_through_actor, 3);
        assert_eq!(*serialised.balance.lock().unwrap(), 0);
        actor.stop(None);
    }

    #[tokio::test]
    async fn repeated_debit_key_is_taken_once() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger.deposit(&wallet(), 100);
        let actor = spawn_with(ledger.clone()).await;
        let key = DebitKey {
            session: SessionId::new(),
            interval: 7,
        };

        assert_eq!(debit(&actor, 40, key).await, Ok(60));
        assert_eq!(debit(&actor, 40, key).await, Ok(60));

        assert_eq!(ledger.balance_now(&wallet()), 60);
        assert_eq!(ledger.total_debited(key.session), 40);
        assert_eq!(balance(&actor).await, Ok(60));
        actor.stop(None);
    }

    #[tokio::test]
    async fn runway_seconds_is_balance_divided_by_gpus_rounded_down() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger.deposit(&wallet(), 100);
        let actor = spawn_with(ledger.clone()).await;

        assert_eq!(runway(&actor, 1).await, Ok(100));
        assert_eq!(runway(&actor, 3).await, Ok(33));
        assert_eq!(runway(&actor, 0).await, Ok(u64::MAX));

        let key = DebitKey {
            session: SessionId::new(),
            interval: 0,
        };
        debit(&actor, 100, key).await.unwrap();
        assert_eq!(runway(&actor, 1).await, Ok(0));
        assert_eq!(runway(&actor, 0).await, Ok(0));
        actor.stop(None);
    }

    #[test]
    fn runway_of_a_negative_balance_is_zero() {
        assert_eq!(runway_seconds(-5, 1), 0);
        assert_eq!(runway_seconds(7, 2), 3);
    }

    #[tokio::test]
    async fn refresh_sees_a_deposit_that_the_cached_balance_does_not() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger.deposit(&wallet(), 100);
        let actor = spawn_with(ledger.clone()).await;
        assert_eq!(balance(&actor).await, Ok(100));

        ledger.deposit(&wallet(), 50);
        assert_eq!(balance(&actor).await, Ok(100), "balance is cached");
        assert_eq!(refresh(&actor).await, Ok(150));
        assert_eq!(balance(&actor).await, Ok(150));
        assert_eq!(runway(&actor, 2).await, Ok(75));
        actor.stop(None);
    }

    #[tokio::test]
    async fn insufficient_debit_updates_the_cache_to_the_ledgers_balance() {
        let ledger = Arc::new(MemoryLedger::new());
        let w = wallet();
        ledger.deposit(&w, 100);
        let actor = spawn_with(ledger.clone()).await;
        assert_eq!(balance(&actor).await, Ok(100));
        // Credit leaves by another path the actor does not see.
        let session = SessionId::new();
        ledger
            .debit(
                &w,
                95,
                DebitKey {
                    session,
                    interval: 0,
                },
            )
            .await
            .unwrap();

        assert_eq!(
            debit(
                &actor,
                10,
                DebitKey {
                    session,
                    interval: 1
                }
            )
            .await,
            Err(LedgerError::InsufficientCredit {
                balance: 5,
                asked: 10
            })
        );
        assert_eq!(balance(&actor).await, Ok(5));
        actor.stop(None);
    }

    #[tokio::test]
    async fn unavailable_ledger_error_drops_the_cache_so_the_next_read_asks_again() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger.deposit(&wallet(), 100);
        let actor = spawn_with(ledger.clone()).await;
        assert_eq!(balance(&actor).await, Ok(100));

        ledger.set_unavailable(true);
        let key = DebitKey {
            session: SessionId::new(),
            interval: 0,
        };
        assert!(matches!(
            debit(&actor, 10, key).await,
            Err(LedgerError::Unavailable(_))
        ));
        assert!(
            matches!(balance(&actor).await, Err(LedgerError::Unavailable(_))),
            "a balance read after an unknown debit outcome must go to the ledger"
        );

        ledger.set_unavailable(false);
        ledger.deposit(&wallet(), 1);
        assert_eq!(balance(&actor).await, Ok(101));
        actor.stop(None);
    }
}
