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

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use async_trait::async_trait;
use deskgate_actors::ports::{CreditSeconds, DebitKey, Ledger, LedgerError, WalletId};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Nullable, SmallInt, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tokio::sync::{mpsc, oneshot};

use crate::db::DbPool;
use crate::db::retry::{RetryPolicy, Transience, classify, with_retries};

/// Longest idempotency key accepted (the column's CHECK says the same).
pub const MAX_KEY_LEN: usize = 200;

/// A system account: where credit comes from and goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SystemAccount {
    /// The other side of credited deposits.
    Revenue,
    /// The other side of billing debits.
    Usage,
    /// The other side of manual adjustments.
    Admin,
}

impl SystemAccount {
    fn name(self) -> &'static str {
        match self {
            Self::Revenue => "revenue",
            Self::Usage => "usage",
            Self::Admin => "admin",
        }
    }
}

/// An account in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    /// A user's wallet: `wallet:<0x address>`; its balance never goes negative.
    Wallet(WalletId),
    /// A system account; its balance is the sum of its entries and may be negative.
    System(SystemAccount),
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wallet(wallet) => write!(f, "wallet:{wallet}"),
            Self::System(system) => f.write_str(system.name()),
        }
    }
}

/// What a posting does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Adds credit to a wallet, taken from a system account (revenue for a
    /// deposit, admin for an adjustment).
    Credit {
        /// The wallet credited.
        wallet: WalletId,
        /// Credit-seconds, positive.
        amount: CreditSeconds,
        /// Where the credit comes from.
        from: SystemAccount,
    },
    /// Takes credit from a wallet into a system account (usage for billing,
    /// admin for an adjustment).
    Debit {
        /// The wallet debited.
        wallet: WalletId,
        /// Credit-seconds, positive.
        amount: CreditSeconds,
        /// Where the credit goes.
        to: SystemAccount,
    },
    /// Moves credit from one wallet to another.
    Transfer {
        /// The wallet debited.
        from: WalletId,
        /// The wallet credited.
        to: WalletId,
        /// Credit-seconds, positive.
        amount: CreditSeconds,
    },
}

impl Operation {
    fn kind(&self) -> &'static str {
        match self {
            Self::Credit { .. } => "credit",
            Self::Debit { .. } => "debit",
            Self::Transfer { .. } => "transfer",
        }
    }

    fn amount(&self) -> CreditSeconds {
        match self {
            Self::Credit { amount, .. }
            | Self::Debit { amount, .. }
            | Self::Transfer { amount, .. } => *amount,
        }
    }

    /// The entries, in `seq` order. The first is always a wallet: the one
    /// whose balance the transaction answers with.
    fn entries(&self) -> [(Account, CreditSeconds); 2] {
        match self {
            Self::Credit {
                wallet,
                amount,
                from,
            } => [
                (Account::Wallet(wallet.clone()), *amount),
                (Account::System(*from), -amount),
            ],
            Self::Debit { wallet, amount, to } => [
                (Account::Wallet(wallet.clone()), -amount),
                (Account::System(*to), *amount),
            ],
            Self::Transfer { from, to, amount } => [
                (Account::Wallet(from.clone()), -amount),
                (Account::Wallet(to.clone()), *amount),
            ],
        }
    }

    fn wallets(&self) -> Vec<&WalletId> {
        match self {
            Self::Credit { wallet, .. } | Self::Debit { wallet, .. } => vec![wallet],
            Self::Transfer { from, to, .. } => vec![from, to],
        }
    }
}

/// One request to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    /// Idempotency key: the posting takes effect at most once under it.
    pub key: String,
    /// What it does.
    pub operation: Operation,
    /// What it is about (a session, a deposit, a ticket); not part of the
    /// parameters a repeated key is compared on.
    pub reference: Option<String>,
    /// Who asked: `system`, `admin` or `wallet:<address>`.
    pub created_by: String,
}

impl Posting {
    /// A billing debit of one session interval into `usage`.
    pub fn billing_debit(wallet: &WalletId, amount: CreditSeconds, key: DebitKey) -> Self {
        Self {
            key: key.to_string(),
            operation: Operation::Debit {
                wallet: wallet.clone(),
                amount,
                to: SystemAccount::Usage,
            },
            reference: Some(format!("session:{}", key.session)),
            created_by: "system".into(),
        }
    }

    fn validate(&self) -> Result<(), LedgerError> {
        if self.key.is_empty() || self.key.len() > MAX_KEY_LEN {
            return Err(LedgerError::InvalidRequest(format!(
                "the idempotency key must be 1 to {MAX_KEY_LEN} bytes"
            )));
        }
        let amount = self.operation.amount();
        if amount <= 0 {
            return Err(LedgerError::InvalidAmount(amount));
        }
        for wallet in self.operation.wallets() {
            if !is_wallet_address(wallet.as_str()) {
                return Err(LedgerError::InvalidRequest(format!(
                    "{wallet:?} is not a 0x-prefixed 20-byte hex address"
                )));
            }
        }
        if let Operation::Transfer { from, to, .. } = &self.operation
            && from == to
        {
            return Err(LedgerError::InvalidRequest(
                "a transfer needs two different wallets".into(),
            ));
        }
        Ok(())
    }
}

fn is_wallet_address(address: &str) -> bool {
    address.len() == 42
        && address.starts_with("0x")
        && address[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a posting did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The ledger transaction's id.
    pub txn_id: i64,
    /// The first wallet's balance right after the transaction.
    pub balance_after: CreditSeconds,
    /// True when the key had been posted before and this is its first answer.
    pub replayed: bool,
}

/// One line of a wallet's statement: a transaction and what it did to the wallet.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct StatementLine {
    /// The ledger transaction.
    #[diesel(sql_type = BigInt)]
    pub txn_id: i64,
    /// `credit`, `debit` or `transfer`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// What it is about: a session, a deposit, an adjustment.
    #[diesel(sql_type = Nullable<Text>)]
    pub reference: Option<String>,
    /// Credit-seconds added (positive) or taken (negative).
    #[diesel(sql_type = BigInt)]
    pub amount: CreditSeconds,
    /// When it was posted.
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The outcome of each posting of a batch, in order.
pub type BatchOutcome = Vec<Result<Receipt, LedgerError>>;

/// A transaction already in the ledger, as far as comparing a repeated key needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedTxn {
    /// Its id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// The answer it gave.
    pub balance_after: CreditSeconds,
    /// Its entries in `seq` order: account name and amount.
    pub entries: Vec<(String, CreditSeconds)>,
}

/// A transaction [`plan`] decided to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTxn {
    /// Which posting of the batch it comes from.
    pub posting: usize,
    /// The first wallet's balance after it.
    pub balance_after: CreditSeconds,
}

/// What [`plan`] decided for one posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered without writing (a replay, or a failure).
    Answered(Result<Receipt, LedgerError>),
    /// To be written as `new[i]`.
    New(usize),
    /// The same key as an earlier posting of this batch that is written as
    /// `new[i]`: it answers what that one answers.
    SameAsNew(usize),
}

/// Decides every posting of a batch, in order, against the locked balances
/// and the transactions that exist under the batch's keys. Pure: no I/O.
pub fn plan(
    postings: &[Posting],
    balances: &mut HashMap<String, CreditSeconds>,
    existing: &HashMap<String, PostedTxn>,
) -> (Vec<Decision>, Vec<NewTxn>) {
    let mut decisions = Vec::with_capacity(postings.len());
    let mut new: Vec<NewTxn> = Vec::new();
    let mut new_by_key: HashMap<&str, usize> = HashMap::new();
    for (index, posting) in postings.iter().enumerate() {
        let entries = named_entries(&posting.operation);
        if let Some(posted) = existing.get(&posting.key) {
            let same = posted.kind == posting.operation.kind() && posted.entries == entries;
            decisions.push(Decision::Answered(if same {
                Ok(Receipt {
                    txn_id: posted.id,
                    balance_after: posted.balance_after,
                    replayed: true,
                })
            } else {
                Err(LedgerError::KeyConflict(posting.key.clone()))
            }));
            continue;
        }
        if let Some(&earlier) = new_by_key.get(posting.key.as_str()) {
            let first = &postings[new[earlier].posting].operation;
            decisions.push(if *first == posting.operation {
                Decision::SameAsNew(earlier)
            } else {
                Decision::Answered(Err(LedgerError::KeyConflict(posting.key.clone())))
            });
            continue;
        }
        match apply_entries(balances, &entries) {
            Ok(balance_after) => {
                new_by_key.insert(&posting.key, new.len());
                decisions.push(Decision::New(new.len()));
                new.push(NewTxn {
                    posting: index,
                    balance_after,
                });
            }
            Err(err) => decisions.push(Decision::Answered(Err(err))),
        }
    }
    (decisions, new)
}

fn named_entries(operation: &Operation) -> Vec<(String, CreditSeconds)> {
    operation
        .entries()
        .into_iter()
        .map(|(account, amount)| (account.to_string(), amount))
        .collect()
}

/// Applies entries to the running wallet balances if none goes negative;
/// returns the first entry's new balance.
fn apply_entries(
    balances: &mut HashMap<String, CreditSeconds>,
    entries: &[(String, CreditSeconds)],
) -> Result<CreditSeconds, LedgerError> {
    let mut updated = Vec::with_capacity(entries.len());
    for (account, amount) in entries {
        let Some(&balance) = balances.get(account) else {
            continue; // a system account: unbounded, not materialised
        };
        let after = balance
            .checked_add(*amount)
            .ok_or_else(|| LedgerError::InvalidRequest("the balance would overflow".into()))?;
        if after < 0 {
            return Err(LedgerError::InsufficientCredit {
                balance,
                asked: -amount,
            });
        }
        updated.push((account, after));
    }
    for (account, after) in &updated {
        balances.insert((*account).clone(), *after);
    }
    // as_slice: diesel's RunQueryDsl::first would otherwise claim the call.
    Ok(updated.as_slice().first().map_or(0, |(_, after)| *after))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn wallet(n: u8) -> WalletId {
        WalletId::new(&format!("0x{}", format!("{n:02x}").repeat(20)))
    }

    fn debit(key: &str, w: u8, amount: CreditSeconds) -> Posting {
        Posting {
            key: key.into(),
            operation: Operation::Debit {
                wallet: wallet(w),
                amount,
                to: SystemAccount::Usage,
            },
            reference: None,
            created_by: "system".into(),
        }
    }

    fn balances(pairs: &[(u8, CreditSeconds)]) -> HashMap<String, CreditSeconds> {
        pairs
            .iter()
            .map(|(w, b)| (Account::Wallet(wallet(*w)).to_string(), *b))
            .collect()
    }

    #[test]
    fn debits_in_a_batch_see_each_other() {
        let mut held = balances(&[(1, 100)]);
        let batch = [debit("a", 1, 60), debit("b", 1, 60), debit("c", 1, 40)];
        let (decisions, new) = plan(&batch, &mut held, &HashMap::new());
        assert_eq!(decisions[0], Decision::New(0));
        assert_eq!(
            decisions[1],
            Decision::Answered(Err(LedgerError::InsufficientCredit {
                balance: 40,
                asked: 60
            }))
        );
        assert_eq!(decisions[2], Decision::New(1));
        assert_eq!(
            new.iter().map(|n| n.balance_after).collect::<Vec<_>>(),
            [40, 0]
        );
        assert_eq!(held[&Account::Wallet(wallet(1)).to_string()], 0);
    }

    #[test]
    fn a_repeated_key_answers_the_first_result_or_conflicts() {
        let mut held = balances(&[(1, 100)]);
        let posted = PostedTxn {
            id: 7,
            kind: "debit".into(),
            balance_after: 90,
            entries: named_entries(&debit("k", 1, 10).operation),
        };
        let existing = HashMap::from([("k".to_string(), posted)]);
        let (decisions, new) = plan(
            &[debit("k", 1, 10), debit("k", 1, 11)],
            &mut held,
            &existing,
        );
        assert!(new.is_empty());
        assert_eq!(
            decisions[0],
            Decision::Answered(Ok(Receipt {
                txn_id: 7,
                balance_after: 90,
                replayed: true
            }))
        );
        assert_eq!(
            decisions[1],
            Decision::Answered(Err(LedgerError::KeyConflict("k".into())))
        );
        assert_eq!(
            held[&Account::Wallet(wallet(1)).to_string()],
            100,
            "nothing taken"
        );
    }

    #[test]
    fn a_key_twice_in_one_batch_is_written_once() {
        let mut held = balances(&[(1, 100)]);
        let batch = [debit("k", 1, 10), debit("k", 1, 10), debit("k", 1, 20)];
        let (decisions, new) = plan(&batch, &mut held, &HashMap::new());
        assert_eq!(new.len(), 1);
        assert_eq!(decisions[1], Decision::SameAsNew(0));
        assert_eq!(
            decisions[2],
            Decision::Answered(Err(LedgerError::KeyConflict("k".into())))
        );
        assert_eq!(held[&Account::Wallet(wallet(1)).to_string()], 90);
    }

    #[test]
    fn a_transfer_fails_whole_when_the_source_lacks_credit() {
        let mut held = balances(&[(1, 5), (2, 0)]);
        let transfer = Posting {
            key: "t".into(),
            operation: Operation::Transfer {
                from: wallet(1),
                to: wallet(2),
                amount: 6,
            },
            reference: None,
            created_by: "system".into(),
        };
        let (decisions, new) = plan(&[transfer], &mut held, &HashMap::new());
        assert!(new.is_empty());
        assert!(matches!(
            decisions[0],
            Decision::Answered(Err(LedgerError::InsufficientCredit { .. }))
        ));
        assert_eq!(held, balances(&[(1, 5), (2, 0)]));
    }

    #[test]
    fn malformed_postings_are_refused_before_any_io() {
        assert_eq!(
            debit("k", 1, 0).validate(),
            Err(LedgerError::InvalidAmount(0))
        );
        assert!(matches!(
            debit("", 1, 1).validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        assert!(matches!(
            debit(&"x".repeat(MAX_KEY_LEN + 1), 1, 1).validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        let mut bad_wallet = debit("k", 1, 1);
        bad_wallet.operation = Operation::Debit {
            wallet: WalletId::new("alice"),
            amount: 1,
            to: SystemAccount::Usage,
        };
        assert!(matches!(
            bad_wallet.validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        let self_transfer = Posting {
            operation: Operation::Transfer {
                from: wallet(1),
                to: wallet(1),
                amount: 1,
            },
            ..debit("k", 1, 1)
        };
        assert!(matches!(
            self_transfer.validate(),
            Err(LedgerError::InvalidRequest(_))
        ));
        assert_eq!(debit("k", 1, 1).validate(), Ok(()));
    }
}
