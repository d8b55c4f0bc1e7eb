//! Deposits and the chain cursor on PostgreSQL: the chain watcher's
//! [`DepositBook`], and [`check_transaction`], which `POST /api/v1/deposits`
//! calls to check one transaction at once by the watcher's rules.
//!
//! A deposit's credit is exactly-once twice over: the ledger applies the key
//! `deposit:<chain>:<tx>:<log index>` at most once, and the row moves from
//! `pending` to `credited` under a row lock in the same database transaction
//! as the ledger posting itself ([`PgLedger::post_within`]), so neither is
//! ever on record without the other. The credit-seconds are fixed on the row
//! before the ledger is asked, so a retry asks for the same amount even if
//! the price (a tier discount) changed in between.
//!
//! Its parts: this file holds [`PgDepositBook`], its queries and writes;
//! `rows.rs` converts between the tables' text and the watcher's types;
//! `check.rs` holds [`check_transaction`]. The children are private; what
//! callers use is re-exported here.

mod check;
mod rows;

pub use check::{CheckError, CheckStatus, TxCheck, check_transaction};
pub use rows::amount_u256;

use std::fmt;
use std::sync::Arc;

use alloy::primitives::Address;
use async_trait::async_trait;
use deskgate_actors::ports::{
    Address20, BlockHeader, BookError, ChainDeposit, CreditSeconds, DepositBook, DepositRecord,
    DepositStatus, Hash32, WalletId,
};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tracing::warn;

use crate::db::DbPool;
use crate::money::ledger::{Operation, PgLedger, Posting, SystemAccount};
use crate::money::pricing::DepositPricer;
use rows::{
    BlockRow, COLUMNS, DepositRow, StatusRow, asset_name, bad, number, parse_hash, parse_status,
    pricing_asset, with_credit,
};

/// Processed block hashes kept below the cursor, for reorg detection.
const KEPT_BLOCKS: i64 = 4096;

fn db_error(error: impl fmt::Display) -> BookError {
    metrics::counter!("deskgate_deposits_db_errors_total").increment(1);
    BookError(error.to_string())
}

/// Records `deposits` as pending: a new one is inserted, a removed one seen
/// again (in its new block) is pending again, a pending or credited one
/// follows its transaction to the block it is in now.
async fn upsert_deposits(
    conn: &mut AsyncPgConnection,
    chain_id: u64,
    deposits: &[ChainDeposit],
) -> Result<(), diesel::result::Error> {
    for deposit in deposits {
        diesel::sql_query(
            "INSERT INTO deposits (chain_id, tx_hash, log_index, block_number, block_hash, \
             \"from\", \"to\", asset, amount, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::numeric, 'pending') \
             ON CONFLICT (chain_id, tx_hash, log_index) DO UPDATE SET \
               block_number = EXCLUDED.block_number, \
               block_hash = EXCLUDED.block_hash, \
               status = CASE WHEN deposits.status = 'removed' THEN 'pending' ELSE deposits.status END, \
               reorged_at = CASE WHEN deposits.block_hash = EXCLUDED.block_hash \
                            THEN deposits.reorged_at END, \
               updated_at = now() \
             WHERE deposits.status <> 'rejected'",
        )
        .bind::<BigInt, _>(number(chain_id))
        .bind::<Text, _>(deposit.tx_hash.to_string())
        .bind::<BigInt, _>(deposit.log_index)
        .bind::<BigInt, _>(number(deposit.block_number))
        .bind::<Text, _>(deposit.block_hash.to_string())
        .bind::<Text, _>(deposit.from.to_string())
        .bind::<Text, _>(deposit.to.to_string())
        .bind::<Text, _>(asset_name(deposit.asset))
        .bind::<Text, _>(amount_u256(deposit.amount).to_string())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Why a credit could not be made inside its transaction.
#[derive(Debug, thiserror::Error)]
enum CreditError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error("ledger: {0}")]
    Ledger(#[from] deskgate_actors::ports::LedgerError),
    #[error("the deposit is {0}, not pending")]
    NotPending(String),
}

/// The chain watcher's book on PostgreSQL, for one chain.
#[derive(Clone)]
pub struct PgDepositBook {
    pool: DbPool,
    pricer: Arc<dyn DepositPricer>,
    chain_id: u64,
    on_credit: Option<CreditListener>,
}

/// Told the wallet each time a deposit is newly credited to it (running
/// sessions then re-plan their end).
pub type CreditListener = Arc<dyn Fn(&WalletId) + Send + Sync>;

impl fmt::Debug for PgDepositBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDepositBook")
            .field("chain_id", &self.chain_id)
            .finish_non_exhaustive()
    }
}

impl PgDepositBook {
    /// A book for `chain_id` on `pool` that credits the ledger there (in
    /// each deposit's own transaction) at `pricer`'s prices.
    pub fn new(pool: DbPool, pricer: Arc<dyn DepositPricer>, chain_id: u64) -> Self {
        Self {
            pool,
            pricer,
            chain_id,
            on_credit: None,
        }
    }

    /// Calls `listener` after each deposit this book newly credits.
    #[must_use]
    pub fn on_credit(mut self, listener: CreditListener) -> Self {
        self.on_credit = Some(listener);
        self
    }

    async fn conn(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, BookError>
    {
        self.pool.get().await.map_err(db_error)
    }

    async fn select(
        &self,
        filter: &str,
        binds: (i64, Option<String>),
    ) -> Result<Vec<DepositRecord>, BookError> {
        let mut conn = self.conn().await?;
        let sql = format!("SELECT {COLUMNS} FROM deposits WHERE chain_id = $1 AND {filter}");
        let rows: Vec<DepositRow> = match binds.1 {
            Some(text) => {
                diesel::sql_query(sql)
                    .bind::<BigInt, _>(number(self.chain_id))
                    .bind::<BigInt, _>(binds.0)
                    .bind::<Text, _>(text)
                    .load(&mut conn)
                    .await
            }
            None => {
                diesel::sql_query(sql)
                    .bind::<BigInt, _>(number(self.chain_id))
                    .bind::<BigInt, _>(binds.0)
                    .load(&mut conn)
                    .await
            }
        }
        .map_err(db_error)?;
        rows.into_iter().map(DepositRow::into_record).collect()
    }

    /// The deposits `from` made, newest block first, at most `limit`, each
    /// with the credit-seconds it bought once credited.
    pub async fn deposits_from(
        &self,
        from: Address20,
        limit: i64,
    ) -> Result<Vec<(DepositRecord, Option<CreditSeconds>)>, BookError> {
        let mut conn = self.conn().await?;
        let rows: Vec<DepositRow> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM deposits WHERE chain_id = $1 AND \"from\" = $2 \
             ORDER BY block_number DESC, tx_hash, log_index LIMIT $3"
        ))
        .bind::<BigInt, _>(number(self.chain_id))
        .bind::<Text, _>(from.to_string())
        .bind::<BigInt, _>(limit)
        .load(&mut conn)
        .await
        .map_err(db_error)?;
        with_credit(rows)
    }

    /// Every recorded deposit of transaction `tx_hash`, by log index.
    pub async fn deposits_of(
        &self,
        tx_hash: Hash32,
    ) -> Result<Vec<(DepositRecord, Option<CreditSeconds>)>, BookError> {
        let mut conn = self.conn().await?;
        let rows: Vec<DepositRow> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM deposits WHERE chain_id = $1 AND tx_hash = $2 ORDER BY log_index"
        ))
        .bind::<BigInt, _>(number(self.chain_id))
        .bind::<Text, _>(tx_hash.to_string())
        .load(&mut conn)
        .await
        .map_err(db_error)?;
        with_credit(rows)
    }

    /// Records deposits found by a direct check as pending (see [`upsert_deposits`]).
    pub async fn record_pending(&self, deposits: &[ChainDeposit]) -> Result<(), BookError> {
        let mut conn = self.conn().await?;
        upsert_deposits(&mut conn, self.chain_id, deposits)
            .await
            .map_err(db_error)
    }

    /// What `deposit` buys now at the pricer's prices.
    pub async fn price(&self, deposit: &ChainDeposit) -> Result<CreditSeconds, BookError> {
        self.pricer
            .credit_for(
                Address::from(deposit.from.0),
                pricing_asset(deposit.asset),
                amount_u256(deposit.amount),
            )
            .await
            .map_err(|e| BookError(format!("cannot price the deposit now: {e}")))
    }

    fn key_binds(&self, deposit: &ChainDeposit) -> (i64, String, i64) {
        (
            number(self.chain_id),
            deposit.tx_hash.to_string(),
            deposit.log_index,
        )
    }
}

#[async_trait]
impl DepositBook for PgDepositBook {
    async fn cursor(&self) -> Result<Option<BlockHeader>, BookError> {
        let mut conn = self.conn().await?;
        let row: Option<BlockRow> = diesel::sql_query(
            "SELECT number, hash, parent_hash FROM chain_blocks WHERE chain_id = $1 \
             ORDER BY number DESC LIMIT 1",
        )
        .bind::<BigInt, _>(number(self.chain_id))
        .load(&mut conn)
        .await
        .map_err(db_error)?
        .pop();
        row.map(|r| {
            Ok(BlockHeader {
                number: u64::try_from(r.number).map_err(|_| bad("block", &r.number.to_string()))?,
                hash: parse_hash(&r.hash)?,
                parent_hash: parse_hash(&r.parent_hash)?,
            })
        })
        .transpose()
    }

    async fn recorded_hash(&self, block: u64) -> Result<Option<Hash32>, BookError> {
        let mut conn = self.conn().await?;
        let row: Option<BlockRow> = diesel::sql_query(
            "SELECT number, hash, parent_hash FROM chain_blocks WHERE chain_id = $1 AND number = $2",
        )
        .bind::<BigInt, _>(number(self.chain_id))
        .bind::<BigInt, _>(number(block))
        .load(&mut conn)
        .await
        .map_err(db_error)?
        .pop();
        row.map(|r| parse_hash(&r.hash)).transpose()
    }

    async fn commit_block(
        &self,
        block: &BlockHeader,
        deposits: &[ChainDeposit],
    ) -> Result<(), BookError> {
        let mut conn = self.conn().await?;
        let chain_id = self.chain_id;
        let block = *block;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            {
                upsert_deposits(conn, chain_id, deposits).await?;
                diesel::sql_query(
                    "INSERT INTO chain_blocks (chain_id, number, hash, parent_hash) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (chain_id, number) DO UPDATE SET \
                     hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash, processed_at = now()",
                )
                .bind::<BigInt, _>(number(chain_id))
                .bind::<BigInt, _>(number(block.number))
                .bind::<Text, _>(block.hash.to_string())
                .bind::<Text, _>(block.parent_hash.to_string())
                .execute(conn)
                .await?;
                diesel::sql_query("DELETE FROM chain_blocks WHERE chain_id = $1 AND number < $2")
                    .bind::<BigInt, _>(number(chain_id))
                    .bind::<BigInt, _>(number(block.number) - KEPT_BLOCKS)
                    .execute(conn)
                    .await?;
                Ok(())
            }
        })
        .await
        .map_err(db_error)
    }

    async fn deposits_above(&self, block: u64) -> Result<Vec<DepositRecord>, BookError> {
        self.select(
            "block_number > $2 AND status IN ('pending', 'credited') ORDER BY block_number, log_index",
            (number(block), None),
        )
        .await
    }

    async fn stale_at(&self, block: &BlockHeader) -> Result<Vec<DepositRecord>, BookError> {
        self.select(
            "block_number = $2 AND block_hash <> $3 AND status IN ('pending', 'credited') \
             ORDER BY log_index",
            (number(block.number), Some(block.hash.to_string())),
        )
        .await
    }

    async fn rewind(&self, ancestor: u64) -> Result<(), BookError> {
        let mut conn = self.conn().await?;
        diesel::sql_query("DELETE FROM chain_blocks WHERE chain_id = $1 AND number > $2")
            .bind::<BigInt, _>(number(self.chain_id))
            .bind::<BigInt, _>(number(ancestor))
            .execute(&mut conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<DepositRecord>, BookError> {
        self.select(
            "status = 'pending' AND block_number >= $2 ORDER BY block_number, log_index",
            (0, None),
        )
        .await
    }

    async fn credit(&self, deposit: &ChainDeposit) -> Result<CreditSeconds, BookError> {
        let (chain, tx, log_index) = self.key_binds(deposit);
        // Fix the amount first, in its own statement, so that every retry
        // asks the ledger for the same credit under the same key.
        let price = self.price(deposit).await?;
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "UPDATE deposits SET credit_seconds = $4, updated_at = now() \
             WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3 AND credit_seconds IS NULL",
        )
        .bind::<BigInt, _>(chain)
        .bind::<Text, _>(tx.clone())
        .bind::<BigInt, _>(log_index)
        .bind::<BigInt, _>(price)
        .execute(&mut conn)
        .await
        .map_err(db_error)?;

        let wallet = WalletId::new(&deposit.from.to_string());
        let key = deposit.credit_key(self.chain_id);
        let credited = conn
            .transaction::<_, CreditError, _>(async |conn| {
                #[derive(QueryableByName)]
                struct Locked {
                    #[diesel(sql_type = Text)]
                    status: String,
                    #[diesel(sql_type = Nullable<BigInt>)]
                    credit_seconds: Option<i64>,
                }
                let locked: Locked = diesel::sql_query(
                    "SELECT status, credit_seconds FROM deposits \
                         WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3 FOR UPDATE",
                )
                .bind::<BigInt, _>(chain)
                .bind::<Text, _>(tx.clone())
                .bind::<BigInt, _>(log_index)
                .get_result(conn)
                .await?;
                let amount = locked.credit_seconds.unwrap_or(price);
                match locked.status.as_str() {
                    "pending" => {}
                    "credited" => return Ok((amount, false)),
                    other => return Err(CreditError::NotPending(other.to_string())),
                }
                if amount > 0 {
                    // In this transaction: a credit on the ledger and a row
                    // still `pending` (the connection lost between two
                    // commits) could then be reorged away, credited.
                    PgLedger::post_within(
                        conn,
                        &Posting {
                            key,
                            operation: Operation::Credit {
                                wallet: wallet.clone(),
                                amount,
                                from: SystemAccount::Revenue,
                            },
                            reference: Some(format!("deposit:{tx}:{log_index}")),
                            created_by: "system".into(),
                        },
                    )
                    .await?;
                }
                diesel::sql_query(
                    "UPDATE deposits SET status = 'credited', credited_at = now(), \
                         updated_at = now() \
                         WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3",
                )
                .bind::<BigInt, _>(chain)
                .bind::<Text, _>(tx.clone())
                .bind::<BigInt, _>(log_index)
                .execute(conn)
                .await?;
                Ok((amount, true))
            })
            .await
            .map_err(db_error)?;
        let (amount, newly) = credited;
        if newly {
            metrics::counter!("deskgate_deposits_credit_seconds_total")
                .increment(amount.unsigned_abs());
            if let Some(listener) = &self.on_credit {
                listener(&wallet);
            }
        }
        Ok(amount)
    }

    async fn mark_removed(&self, deposit: &ChainDeposit) -> Result<DepositStatus, BookError> {
        let (chain, tx, log_index) = self.key_binds(deposit);
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "UPDATE deposits SET status = 'removed', updated_at = now() \
             WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3 AND status = 'pending' \
             AND block_hash = $4",
        )
        .bind::<BigInt, _>(chain)
        .bind::<Text, _>(tx.clone())
        .bind::<BigInt, _>(log_index)
        .bind::<Text, _>(deposit.block_hash.to_string())
        .execute(&mut conn)
        .await
        .map_err(db_error)?;
        let row: StatusRow = diesel::sql_query(
            "SELECT status FROM deposits WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3",
        )
        .bind::<BigInt, _>(chain)
        .bind::<Text, _>(tx)
        .bind::<BigInt, _>(log_index)
        .get_result(&mut conn)
        .await
        .map_err(db_error)?;
        parse_status(&row.status)
    }

    async fn flag_reorged(&self, deposit: &ChainDeposit, depth: u64) -> Result<(), BookError> {
        let (chain, tx, log_index) = self.key_binds(deposit);
        let mut conn = self.conn().await?;
        let flagged: Vec<StatusRow> = diesel::sql_query(
            "UPDATE deposits SET reorged_at = now(), updated_at = now() \
             WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3 AND status = 'credited' \
             AND reorged_at IS NULL AND block_hash = $4 RETURNING status",
        )
        .bind::<BigInt, _>(chain)
        .bind::<Text, _>(tx.clone())
        .bind::<BigInt, _>(log_index)
        .bind::<Text, _>(deposit.block_hash.to_string())
        .load(&mut conn)
        .await
        .map_err(db_error)?;
        drop(conn);
        if flagged.is_empty() {
            return Ok(()); // flagged before, or not credited
        }
        let details = serde_json::json!({
            "chain_id": self.chain_id,
            "tx_hash": tx,
            "log_index": log_index,
            "block_number": deposit.block_number,
            "block_hash": deposit.block_hash.to_string(),
            "from": deposit.from.to_string(),
            "asset": asset_name(deposit.asset),
            "amount": amount_u256(deposit.amount).to_string(),
            "depth": depth,
            "credit_key": deposit.credit_key(self.chain_id),
        });
        let subject = format!("wallet:{}", deposit.from);
        if let Err(error) = crate::db::audit::record(
            &self.pool,
            "system",
            "deposit.reorged",
            Some(&subject),
            details,
        )
        .await
        {
            // Undo the mark so that the next round flags it again.
            if let Ok(mut conn) = self.conn().await {
                let _ = diesel::sql_query(
                    "UPDATE deposits SET reorged_at = NULL \
                     WHERE chain_id = $1 AND tx_hash = $2 AND log_index = $3",
                )
                .bind::<BigInt, _>(chain)
                .bind::<Text, _>(tx)
                .bind::<BigInt, _>(log_index)
                .execute(&mut conn)
                .await;
            }
            return Err(db_error(error));
        }
        warn!(subject, depth, "deposit.reorged recorded in the audit log");
        Ok(())
    }
}
