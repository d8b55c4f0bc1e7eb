//! A session's server-clocked billing: the methods of the session actor's
//! state that debit its wallet and say when its credit runs out. The actor
//! itself, and its timer, are in `session.rs`.
//!
//! Billing runs on the actor's clock (tokio time, so tests run on paused
//! time). While the container runs, every `billing_interval` the actor debits
//! `gpus × interval` credit-seconds under the key `(session, interval)`, and
//! only after the ledger has committed it does the actor count it. At the end
//! the last partial interval is billed in whole seconds, never more than the
//! wallet holds. A debit whose outcome is unknown is retried under the same
//! key, so it is taken at most once.

use std::time::Duration;

use tokio::time::Instant;

use super::{RunClock, SessionActorState};
use crate::ask::ask;
use crate::ports::{CreditSeconds, DebitKey, LedgerError};
use crate::protocol::SessionEvent;
use crate::wallet::WalletMsg;

/// Delay before billing retries after the ledger failed.
const BILLING_RETRY: Duration = Duration::from_secs(1);
/// Attempts at the final debit before giving up on it (it stays replayable
/// under its key).
const FINAL_DEBIT_ATTEMPTS: u32 = 3;

impl SessionActorState {
    /// The wallet's balance; re-read from the ledger when `refresh`.
    pub(super) async fn read_balance(&self, refresh: bool) -> Result<CreditSeconds, LedgerError> {
        ask(&self.args.wallet, |reply| {
            if refresh {
                WalletMsg::Refresh { reply }
            } else {
                WalletMsg::Balance { reply }
            }
        })
        .await
        .unwrap_or_else(wallet_silent)
    }

    /// When the credit runs out, on the actor's clock.
    pub(super) fn exhaustion_at(&self, clock: &RunClock) -> Instant {
        let affordable_secs = (clock.balance.max(0) / CreditSeconds::from(self.gpus())) as u64;
        clock.origin
            + Duration::from_millis(self.record.billed_ms)
            + Duration::from_secs(affordable_secs)
    }

    /// When the next full interval is due.
    pub(super) fn next_tick(&self, clock: &RunClock) -> Instant {
        clock.origin
            + Duration::from_millis((self.record.billed_intervals + 1) * self.interval_ms())
    }

    fn interval_ms(&self) -> u64 {
        self.args.settings.billing_interval.as_millis() as u64
    }

    /// Debits one full interval; counts it only once the ledger committed it.
    pub(super) async fn bill_interval(&mut self) {
        let interval_secs = self.args.settings.billing_interval.as_secs();
        let amount = CreditSeconds::from(self.gpus()) * interval_secs as CreditSeconds;
        let key = DebitKey {
            session: self.record.id,
            interval: self.record.billed_intervals,
        };
        match self.debit(amount, key).await {
            Ok(balance) => {
                self.record.billed_intervals += 1;
                self.record.billed_ms += self.interval_ms();
                self.record.billed_credit += amount;
                if let Some(clock) = &mut self.clock {
                    clock.balance = balance;
                    clock.retry_after = None;
                }
                self.persist().await;
                self.emit(SessionEvent::Balance {
                    credit_seconds: balance,
                    billed_credit: self.record.billed_credit,
                });
            }
            Err(LedgerError::InsufficientCredit { balance, .. }) => {
                // Credit was taken elsewhere (an admin adjustment): the
                // exhaustion time moves to now and the next wake ends it.
                if let Some(clock) = &mut self.clock {
                    clock.balance = balance;
                }
            }
            Err(err) => {
                tracing::warn!(session = %self.record.id, %key, %err, "billing debit failed; will retry");
                metrics::counter!("deskgate_billing_debit_failures_total").increment(1);
                if let Some(clock) = &mut self.clock {
                    clock.retry_after = Some(Instant::now() + BILLING_RETRY);
                }
            }
        }
    }

    async fn debit(
        &self,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError> {
        let result = ask(&self.args.wallet, |reply| WalletMsg::Debit {
            amount,
            key,
            reply,
        })
        .await
        .unwrap_or_else(wallet_silent);
        if result.is_ok() {
            metrics::counter!("deskgate_billing_debited_credit_seconds_total")
                .increment(amount as u64);
        }
        result
    }

    /// Bills the running time up to `at` that is not billed yet, in whole
    /// seconds, never more than the wallet holds.
    pub(super) async fn bill_final(&mut self, at: Instant) {
        let Some(clock) = self.clock else { return };
        let running_ms = at.saturating_duration_since(clock.origin).as_millis() as u64;
        let unbilled_secs = running_ms.saturating_sub(self.record.billed_ms) / 1000;
        let gpus = CreditSeconds::from(self.gpus());
        let affordable = clock.balance.max(0) / gpus;
        let secs = (unbilled_secs as CreditSeconds).min(affordable);
        if secs == 0 {
            return;
        }
        let amount = secs * gpus;
        let key = DebitKey {
            session: self.record.id,
            interval: self.record.billed_intervals,
        };
        for attempt in 1..=FINAL_DEBIT_ATTEMPTS {
            match self.debit(amount, key).await {
                Ok(balance) => {
                    self.record.billed_ms += secs as u64 * 1000;
                    self.record.billed_credit += amount;
                    self.emit(SessionEvent::Balance {
                        credit_seconds: balance,
                        billed_credit: self.record.billed_credit,
                    });
                    return;
                }
                Err(err) if attempt < FINAL_DEBIT_ATTEMPTS => {
                    tracing::warn!(session = %self.record.id, %key, %err, attempt, "final debit failed; retrying");
                    tokio::time::sleep(BILLING_RETRY).await;
                }
                Err(err) => {
                    metrics::counter!("deskgate_billing_debit_failures_total").increment(1);
                    tracing::error!(session = %self.record.id, %key, amount, %err, "final debit failed; it can be replayed under its key");
                }
            }
        }
    }
}

/// The error a money operation gets when the wallet actor did not answer;
/// the operation may be retried under the same key.
fn wallet_silent<T>() -> Result<T, LedgerError> {
    Err(LedgerError::Unavailable(
        "wallet actor did not answer".into(),
    ))
}
