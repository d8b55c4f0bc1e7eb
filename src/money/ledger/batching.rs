//! [`BatchingLedger`], the billing path: the actors' [`Ledger`] over
//! [`PgLedger`] with debits group-committed, so that the debits many sessions
//! send at about the same moment cost one PostgreSQL transaction.
//!
//! Invariant: every debit keeps its own idempotency key and gets its own
//! answer; batching changes how many commits there are, never what a debit
//! does.

use std::fmt;

use async_trait::async_trait;
use deskgate_actors::ports::{CreditSeconds, DebitKey, Ledger, LedgerError, WalletId};
use tokio::sync::{mpsc, oneshot};

use super::{PgLedger, Posting};

/// A debit waiting for the next batch.
struct QueuedDebit {
    posting: Posting,
    reply: oneshot::Sender<Result<CreditSeconds, LedgerError>>,
}

/// The billing path: the actors' [`Ledger`] with debits group-committed.
///
/// One task posts batches back to back. A debit that arrives while a batch
/// commits waits for the next one, which takes everything queued by then (up
/// to `max_batch`). An idle ledger adds no delay; a busy one commits many
/// sessions' debits per transaction, each still idempotent by its own key.
#[derive(Clone)]
pub struct BatchingLedger {
    ledger: PgLedger,
    queue: mpsc::Sender<QueuedDebit>,
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
        let max_batch = max_batch.max(1);
        let (queue, mut incoming) = mpsc::channel::<QueuedDebit>(max_batch * 4);
        let poster = ledger.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while incoming.recv_many(&mut batch, max_batch).await > 0 {
                let postings: Vec<Posting> = batch.iter().map(|d| d.posting.clone()).collect();
                let outcome = poster.post_batch(&postings).await;
                for (index, debit) in batch.drain(..).enumerate() {
                    let answer = match &outcome {
                        Ok(answers) => answers[index].clone().map(|r| r.balance_after),
                        Err(err) => Err(err.clone()),
                    };
                    // The asker may have given up; its key makes a retry safe.
                    let _ = debit.reply.send(answer);
                }
            }
        });
        Self { ledger, queue }
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
        let (reply, answer) = oneshot::channel();
        let queued = QueuedDebit {
            posting: Posting::billing_debit(wallet, amount, key),
            reply,
        };
        let stopped = || LedgerError::Unavailable("the billing batcher has stopped".into());
        self.queue.send(queued).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
