//! [`BatchingLedger`], the billing path: the actors' [`Ledger`] over
//! [`PgLedger`] with debits group-committed, so that the debits many sessions
//! send at about the same moment cost one PostgreSQL transaction.
//!
//! Invariant: every debit keeps its own idempotency key and gets its own
//! answer; batching changes how many commits there are, never what a debit
//! does.

use std::fmt;

use super::{PgLedger, Posting};
use crate::platform::group_commit::GroupCommit;
use async_trait::async_trait;
use deskgate_actors::ports::{CreditSeconds, DebitKey, Ledger, LedgerError, WalletId};

/// The billing path: the actors' [`Ledger`] with debits group-committed.
///
/// Debits go through a [`GroupCommit`] (an idle ledger adds no delay; a
/// busy one commits many sessions' debits per transaction), each still
/// idempotent by its own key.
#[derive(Clone)]
pub struct BatchingLedger {
    ledger: PgLedger,
    debits: GroupCommit<Posting, Result<CreditSeconds, LedgerError>>,
}

impl fmt::Debug for BatchingLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchingLedger").finish_non_exhaustive()
    }
}

impl BatchingLedger {
    /// Starts the batching task on the current runtime; it ends when every
    /// clone of the returned ledger is dropped.
    pub fn spawn(ledger: PgLedger, max_batch: usize) -> Self {
        let poster = ledger.clone();
        // An asker that gave up may retry: its key makes that safe.
        let debits = GroupCommit::spawn(max_batch, move |postings: Vec<Posting>| {
            let poster = poster.clone();
            async move {
                match poster.post_batch(&postings).await {
                    Ok(answers) => answers
                        .into_iter()
                        .map(|answer| answer.map(|r| r.balance_after))
                        .collect(),
                    Err(err) => vec![Err(err); postings.len()],
                }
            }
        });
        Self { ledger, debits }
    }

    /// The ledger underneath, for credits, transfers and reads.
    pub fn ledger(&self) -> &PgLedger {
        &self.ledger
    }
}

#[async_trait]
impl Ledger for BatchingLedger {
    async fn balance(&self, wallet: &WalletId) -> Result<CreditSeconds, LedgerError> {
        self.ledger.balance(wallet).await
    }

    async fn debit(
        &self,
        wallet: &WalletId,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError> {
        self.debits
            .submit(Posting::billing_debit(wallet, amount, key))
            .await
            .unwrap_or_else(|| {
                Err(LedgerError::Unavailable(
                    "the billing batcher has stopped".into(),
                ))
            })
    }
}
