//! Group commit of new claims' rows. The first save of a claim (a queued
//! record that carries `queued_at`) inserts a row that holds no GPUs, so the
//! rows of claims made at about the same moment go to PostgreSQL as one
//! statement and one commit ([`GroupCommit`]), instead of one planned upsert
//! and one commit each: with thousands of claims a second, that upsert was
//! most of PostgreSQL's work (benches/api_contention).
//!
//! Invariants: a row is inserted once or not at all (`ON CONFLICT DO
//! NOTHING`: a row that is already there, ended or re-queued, is left
//! alone, as the upsert leaves an ended row alone); each caller is answered
//! only after the statement that holds its row committed, or failed.

use diesel::sql_types::{Array, BigInt, Integer, Text, Uuid};
use diesel_async::RunQueryDsl;

use super::SaveError;
use crate::db::DbPool;
use crate::db::retry::{RetryPolicy, with_retries};
use crate::platform::group_commit::GroupCommit;

/// The rows of one batch, as arrays: one parameter per column, so the
/// statement's text is the same whatever the batch size.
const INSERT_QUEUED: &str = "
INSERT INTO sessions (id, address, gpus, state, created_at)
SELECT id, address, gpus, 'queued', 'epoch'::timestamptz + (us || ' microseconds')::interval
FROM unnest($1::uuid[], $2::text[], $3::int[], $4::bigint[]) AS t(id, address, gpus, us)
ON CONFLICT (id) DO NOTHING";

/// A new claim's row.
#[derive(Clone, Debug)]
pub(super) struct QueuedRow {
    pub(super) id: uuid::Uuid,
    pub(super) address: String,
    pub(super) gpus: i32,
    /// When the gate queued it, in epoch microseconds.
    pub(super) queued_at_us: i64,
}

/// The task that inserts new claims' rows in batches; it ends when every
/// clone is dropped.
#[derive(Clone, Debug)]
pub(super) struct QueuedRows {
    rows: GroupCommit<QueuedRow, Result<(), String>>,
}

impl QueuedRows {
    /// Starts the task on the current runtime, batches of up to `max_batch`.
    pub(super) fn spawn(pool: DbPool, max_batch: usize) -> Self {
        let rows = GroupCommit::spawn(max_batch, move |rows: Vec<QueuedRow>| {
            let pool = pool.clone();
            async move {
                let outcome = with_retries(
                    RetryPolicy::DEFAULT,
                    "queued session rows",
                    true,
                    SaveError::transience,
                    || insert(&pool, &rows),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
                vec![outcome; rows.len()]
            }
        });
        Self { rows }
    }

    /// Inserts `row` with the next batch; `Err` carries PostgreSQL's reason.
    pub(super) async fn insert(&self, row: QueuedRow) -> Result<(), String> {
        self.rows
            .submit(row)
            .await
            .unwrap_or_else(|| Err("the queued-row writer has stopped".to_string()))
    }
}

/// One attempt at [`INSERT_QUEUED`] for `rows`.
async fn insert(pool: &DbPool, rows: &[QueuedRow]) -> Result<usize, SaveError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| SaveError::Pool(e.to_string()))?;
    Ok(diesel::sql_query(INSERT_QUEUED)
        .bind::<Array<Uuid>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.address.clone()).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(rows.iter().map(|r| r.gpus).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.queued_at_us).collect::<Vec<_>>())
        .execute(&mut conn)
        .await?)
}
