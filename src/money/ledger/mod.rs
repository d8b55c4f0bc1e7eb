//! The double-entry credit ledger on PostgreSQL.
//!
//! Money inside deskgate is credit-seconds (one GPU for one second), an
//! `i64`. Every change is a transaction (`ledger_txns`) whose entries
//! (`ledger_entries`) sum to zero, posted under an idempotency key: a key
//! takes effect once, a repeat of it answers the first result, and the same
//! key with different parameters is refused. Wallet balances (`balances`)
//! can never go negative. The schema enforces all of that by itself (unique
//! key, CHECK, and a trigger that keeps balances equal to the entries); this
//! module adds the answers callers need and the batching.
//!
//! How one batch is posted, in one PostgreSQL transaction:
//! 1. lock the balance rows of every wallet involved, in account order (so
//!    that two batches cannot deadlock on each other);
//! 2. read which keys exist already;
//! 3. decide each posting in order, in memory ([`plan`]): replay, conflict,
//!    insufficient credit, or new, keeping running balances;
//! 4. insert the new transactions and all their entries, one statement each.
//!
//! A posting that fails (insufficient credit, a conflicting key) fails alone;
//! the rest of its batch commits. [`BatchingLedger`] is the billing path: it
//! gathers the debits that sessions send at about the same moment and posts
//! them as one batch, so a thousand sessions cost one commit, not a thousand.
//!
//! Its parts: `posting.rs` holds the vocabulary ([`Account`], [`Operation`],
//! [`Posting`], [`Receipt`]) and the pure [`plan`]; this file holds
//! [`PgLedger`], which locks, reads and writes; `batching.rs` holds
//! [`BatchingLedger`]. Both children are private and re-exported here, so
//! every item is named `crate::money::ledger::Item`.

mod batching;
mod posting;

pub use batching::BatchingLedger;
pub use posting::{
    Account, BatchOutcome, Decision, MAX_KEY_LEN, NewTxn, Operation, PostedTxn, Posting, Receipt,
    StatementLine, SystemAccount, plan,
};

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use async_trait::async_trait;
use deskgate_actors::ports::{CreditSeconds, DebitKey, Ledger, LedgerError, WalletId};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Nullable, SmallInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::db::DbPool;
use crate::db::retry::{RetryPolicy, Transience, classify, with_retries};

/// Why one attempt at a batch failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Db(#[from] diesel::result::Error),
    #[error("no PostgreSQL connection: {0}")]
    Pool(String),
    /// Another transaction inserted one of our new keys between our read and
    /// our write (possible only for a key reused across wallets); the retry
    /// reads it as existing.
    #[error("an idempotency key was posted concurrently")]
    KeyRace,
}

impl AttemptError {
    fn transience(&self) -> Transience {
        match self {
            Self::Db(err) => classify(err),
            Self::Pool(_) => Transience::ConnectionLost,
            Self::KeyRace => Transience::Aborted,
        }
    }
}

/// The ledger on PostgreSQL, one transaction per call.
#[derive(Clone)]
pub struct PgLedger {
    pool: DbPool,
    retry: RetryPolicy,
}

impl fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLedger")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl PgLedger {
    /// A ledger on `pool` with the default retry policy.
    pub fn new(pool: DbPool) -> Self {
        Self::with_retry(pool, RetryPolicy::DEFAULT)
    }

    /// A ledger with its own retry policy.
    pub fn with_retry(pool: DbPool, retry: RetryPolicy) -> Self {
        Self { pool, retry }
    }

    /// Posts one transaction.
    pub async fn post(&self, posting: Posting) -> Result<Receipt, LedgerError> {
        let mut outcome = self.post_batch(std::slice::from_ref(&posting)).await?;
        outcome
            .pop()
            .unwrap_or_else(|| Err(LedgerError::Unavailable("empty batch outcome".into())))
    }

    /// Posts many transactions in one PostgreSQL transaction; answers each in
    /// order. The outer error means nothing of the batch is known to be
    /// committed (it may be retried with the same keys).
    pub async fn post_batch(&self, postings: &[Posting]) -> Result<BatchOutcome, LedgerError> {
        let mut answers: Vec<Option<Result<Receipt, LedgerError>>> = postings
            .iter()
            .map(|p| p.validate().err().map(Err))
            .collect();
        let valid: Vec<Posting> = postings
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(posting, _)| posting.clone())
            .collect();
        if !valid.is_empty() {
            let started = std::time::Instant::now();
            let posted = with_retries(
                self.retry,
                "ledger batch",
                true, // every posting is idempotent by key
                AttemptError::transience,
                || self.attempt(&valid),
            )
            .await
            .map_err(|err| LedgerError::Unavailable(err.to_string()))?;
            metrics::histogram!("deskgate_ledger_batch_seconds").record(started.elapsed());
            metrics::histogram!("deskgate_ledger_batch_postings").record(valid.len() as f64);
            let mut posted = posted.into_iter();
            for answer in answers.iter_mut().filter(|a| a.is_none()) {
                *answer = posted.next();
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| Err(LedgerError::Unavailable("posting lost its answer".into())))
            })
            .collect())
    }

    /// Posts one transaction inside the caller's database transaction
    /// (`conn` must be in one), so that it commits or rolls back together
    /// with what the caller writes beside it: a deposit's move to
    /// `credited`. No retry here: the caller retries its transaction whole.
    pub async fn post_within(
        conn: &mut diesel_async::AsyncPgConnection,
        posting: &Posting,
    ) -> Result<Receipt, LedgerError> {
        posting.validate()?;
        post_in_transaction(conn, std::slice::from_ref(posting))
            .await
            .map_err(|err| LedgerError::Unavailable(err.to_string()))?
            .pop()
            .unwrap_or_else(|| Err(LedgerError::Unavailable("empty batch outcome".into())))
    }

    /// Adds credit to a wallet.
    pub async fn credit(
        &self,
        wallet: &WalletId,
        amount: CreditSeconds,
        from: SystemAccount,
        key: impl Into<String>,
    ) -> Result<Receipt, LedgerError> {
        self.post(Posting {
            key: key.into(),
            operation: Operation::Credit {
                wallet: wallet.clone(),
                amount,
                from,
            },
            reference: None,
            created_by: "system".into(),
        })
        .await
    }

    /// Moves credit between two wallets.
    pub async fn transfer(
        &self,
        from: &WalletId,
        to: &WalletId,
        amount: CreditSeconds,
        key: impl Into<String>,
    ) -> Result<Receipt, LedgerError> {
        self.post(Posting {
            key: key.into(),
            operation: Operation::Transfer {
                from: from.clone(),
                to: to.clone(),
                amount,
            },
            reference: None,
            created_by: "system".into(),
        })
        .await
    }

    /// An account's balance: the materialised row for a wallet (0 if it has
    /// none), the sum of entries for a system account.
    pub async fn account_balance(&self, account: &Account) -> Result<CreditSeconds, LedgerError> {
        #[derive(QueryableByName)]
        struct Sum {
            #[diesel(sql_type = BigInt)]
            amount: i64,
        }
        let sql = match account {
            Account::Wallet(_) => {
                "SELECT COALESCE((SELECT amount FROM balances WHERE account = $1), 0)::int8 AS amount"
            }
            Account::System(_) => {
                "SELECT COALESCE(sum(amount), 0)::int8 AS amount FROM ledger_entries WHERE account = $1"
            }
        };
        let name = account.to_string();
        let query = || async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| AttemptError::Pool(e.to_string()))?;
            let row: Sum = diesel::sql_query(sql)
                .bind::<Text, _>(&name)
                .get_result(&mut conn)
                .await?;
            Ok::<_, AttemptError>(row.amount)
        };
        with_retries(
            self.retry,
            "ledger balance",
            true,
            AttemptError::transience,
            query,
        )
        .await
        .map_err(|err| LedgerError::Unavailable(err.to_string()))
    }

    /// A wallet's own ledger lines, newest first: at most `limit`, and only
    /// those older than transaction `before` when it is given (paging).
    pub async fn statement(
        &self,
        wallet: &WalletId,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<StatementLine>, LedgerError> {
        let name = Account::Wallet(wallet.clone()).to_string();
        let query = || async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|e| AttemptError::Pool(e.to_string()))?;
            let lines: Vec<StatementLine> = diesel::sql_query(
                "SELECT t.id AS txn_id, t.kind, t.reference, e.amount, t.created_at \
                 FROM ledger_entries e JOIN ledger_txns t ON t.id = e.txn_id \
                 WHERE e.account = $1 AND t.id < $2 \
                 ORDER BY t.id DESC LIMIT $3",
            )
            .bind::<Text, _>(&name)
            .bind::<BigInt, _>(before.unwrap_or(i64::MAX))
            .bind::<BigInt, _>(limit)
            .load(&mut conn)
            .await?;
            Ok::<_, AttemptError>(lines)
        };
        with_retries(
            self.retry,
            "ledger statement",
            true,
            AttemptError::transience,
            query,
        )
        .await
        .map_err(|err| LedgerError::Unavailable(err.to_string()))
    }

    /// One try, run on a task of its own so that it ends (commit or
    /// rollback) even when the caller is cancelled: a transaction future
    /// dropped between statements would leave its connection idle in
    /// transaction, holding wallet row locks that every later posting to
    /// those wallets then waits on.
    async fn attempt(&self, postings: &[Posting]) -> Result<BatchOutcome, AttemptError> {
        let pool = self.pool.clone();
        let postings = postings.to_vec();
        tokio::spawn(async move {
            let mut conn = pool
                .get()
                .await
                .map_err(|e| AttemptError::Pool(e.to_string()))?;
            conn.transaction(async |conn| post_in_transaction(conn, &postings).await)
                .await
        })
        .await
        .map_err(|e| AttemptError::Pool(format!("the ledger task failed: {e}")))?
    }
}

async fn post_in_transaction(
    conn: &mut diesel_async::AsyncPgConnection,
    postings: &[Posting],
) -> Result<BatchOutcome, AttemptError> {
    #[derive(QueryableByName)]
    struct BalanceRow {
        #[diesel(sql_type = Text)]
        account: String,
        #[diesel(sql_type = BigInt)]
        amount: i64,
    }
    #[derive(QueryableByName)]
    struct EntryRow {
        #[diesel(sql_type = Text)]
        idempotency_key: String,
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = BigInt)]
        balance_after: i64,
        #[diesel(sql_type = Text)]
        account: String,
        #[diesel(sql_type = BigInt)]
        amount: i64,
    }
    #[derive(QueryableByName)]
    struct InsertedRow {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        idempotency_key: String,
    }

    // 1. Lock the wallets, in account order.
    let wallets: Vec<String> = postings
        .iter()
        .flat_map(|p| p.operation.wallets())
        .map(|w| Account::Wallet(w.clone()).to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    diesel::sql_query(
        "INSERT INTO balances (account, amount) SELECT unnest($1::text[]), 0 ON CONFLICT (account) DO NOTHING",
    )
    .bind::<Array<Text>, _>(&wallets)
    .execute(conn)
    .await?;
    let locked: Vec<BalanceRow> = diesel::sql_query(
        "SELECT account, amount FROM balances WHERE account = ANY($1) ORDER BY account FOR UPDATE",
    )
    .bind::<Array<Text>, _>(&wallets)
    .load(conn)
    .await?;
    let mut balances: HashMap<String, CreditSeconds> = locked
        .into_iter()
        .map(|row| (row.account, row.amount))
        .collect();

    // 2. The keys that exist already.
    let keys: Vec<&str> = postings.iter().map(|p| p.key.as_str()).collect();
    let rows: Vec<EntryRow> = diesel::sql_query(
        "SELECT t.idempotency_key, t.id, t.kind, t.balance_after, e.account, e.amount \
         FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id \
         WHERE t.idempotency_key = ANY($1) ORDER BY t.id, e.seq",
    )
    .bind::<Array<Text>, _>(&keys)
    .load(conn)
    .await?;
    let mut existing: HashMap<String, PostedTxn> = HashMap::new();
    for row in rows {
        existing
            .entry(row.idempotency_key)
            .or_insert_with(|| PostedTxn {
                id: row.id,
                kind: row.kind,
                balance_after: row.balance_after,
                entries: Vec::new(),
            })
            .entries
            .push((row.account, row.amount));
    }

    // 3. Decide.
    let (decisions, new) = plan(postings, &mut balances, &existing);
    if new.is_empty() {
        return Ok(answers(decisions, &[], &new));
    }

    // 4. Write the new transactions, then all their entries in one statement
    //    (the schema checks each transaction sums to zero per statement).
    let chosen: Vec<&Posting> = new.iter().map(|n| &postings[n.posting]).collect();
    let inserted: Vec<InsertedRow> = diesel::sql_query(
        "INSERT INTO ledger_txns (kind, idempotency_key, reference, balance_after, created_by) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[]) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
    )
    .bind::<Array<Text>, _>(
        chosen
            .iter()
            .map(|p| p.operation.kind())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(chosen.iter().map(|p| p.key.as_str()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        chosen
            .iter()
            .map(|p| p.reference.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(new.iter().map(|n| n.balance_after).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(
        chosen
            .iter()
            .map(|p| p.created_by.as_str())
            .collect::<Vec<_>>(),
    )
    .load(conn)
    .await?;
    if inserted.len() != new.len() {
        return Err(AttemptError::KeyRace);
    }
    let ids: HashMap<&str, i64> = inserted
        .iter()
        .map(|row| (row.idempotency_key.as_str(), row.id))
        .collect();
    let txn_ids: Vec<i64> = chosen.iter().map(|p| ids[p.key.as_str()]).collect();

    let (mut entry_txn, mut entry_seq, mut entry_account, mut entry_amount) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (posting, txn_id) in chosen.iter().zip(&txn_ids) {
        for (seq, (account, amount)) in posting.operation.entries().into_iter().enumerate() {
            entry_txn.push(*txn_id);
            entry_seq.push(seq as i16);
            entry_account.push(account.to_string());
            entry_amount.push(amount);
        }
    }
    diesel::sql_query(
        "INSERT INTO ledger_entries (txn_id, seq, account, amount) \
         SELECT * FROM unnest($1::int8[], $2::int2[], $3::text[], $4::int8[])",
    )
    .bind::<Array<BigInt>, _>(&entry_txn)
    .bind::<Array<SmallInt>, _>(&entry_seq)
    .bind::<Array<Text>, _>(&entry_account)
    .bind::<Array<BigInt>, _>(&entry_amount)
    .execute(conn)
    .await?;
    Ok(answers(decisions, &txn_ids, &new))
}

/// Turns decisions into answers, given the ids the new transactions got.
fn answers(decisions: Vec<Decision>, txn_ids: &[i64], new: &[NewTxn]) -> BatchOutcome {
    let receipt = |i: usize, replayed| Receipt {
        txn_id: txn_ids[i],
        balance_after: new[i].balance_after,
        replayed,
    };
    decisions
        .into_iter()
        .map(|decision| match decision {
            Decision::Answered(answer) => answer,
            Decision::New(i) => Ok(receipt(i, false)),
            Decision::SameAsNew(i) => Ok(receipt(i, true)),
        })
        .collect()
}

#[async_trait]
impl Ledger for PgLedger {
    async fn balance(&self, wallet: &WalletId) -> Result<CreditSeconds, LedgerError> {
        self.account_balance(&Account::Wallet(wallet.clone())).await
    }

    async fn debit(
        &self,
        wallet: &WalletId,
        amount: CreditSeconds,
        key: DebitKey,
    ) -> Result<CreditSeconds, LedgerError> {
        self.post(Posting::billing_debit(wallet, amount, key))
            .await
            .map(|receipt| receipt.balance_after)
    }
}
