//! Session records on PostgreSQL: the actors' `SessionStore` port.
//!
//! One row per session in `sessions`. A save is a single upsert by id, and
//! the database keeps the timestamps: `created_at` on the first save (the
//! record's `queued_at` when it has one: claims are saved concurrently, and
//! this column orders the queue at recovery), `updated_at` on every save,
//! `started_at` the first time the session is saved running, `ended_at`
//! when it is saved ended.
//!
//! A save is retried (briefly) when PostgreSQL aborted it or the connection
//! was lost: the upsert is idempotent.
//!
//! An ended row is final: the upsert's `WHERE` leaves it alone, so a save
//! from a stale actor (one that still thinks the session runs) can never
//! bring an ended session back. Such a save succeeds and changes nothing.
//!
//! The same statement keeps `session_leases`, the history of which GPUs the
//! session held and when: a GPU in the saved row that has no open lease gets
//! one, and an open lease on a GPU the row no longer holds (or of an ended
//! session) is closed. So the history and the row never disagree, and an
//! auditor can check from it that no GPU was held by two sessions at once.

use async_trait::async_trait;
use deskgate_actors::ports::{
    EndReason, GpuAddr, SessionId, SessionRecord, SessionState, SessionStore, StoreError, WalletId,
};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable, Text, Uuid};
use diesel_async::RunQueryDsl;

use crate::db::DbPool;
use crate::db::retry::{RetryPolicy, Transience, classify, with_retries};
use crate::db::schema::sessions;

mod queued_rows;

use queued_rows::{QueuedRow, QueuedRows};

/// The [`SessionStore`] the gate runs on.
#[derive(Clone)]
pub struct PgSessionStore {
    pool: DbPool,
    /// Where new claims' rows go when they are group-committed.
    queued_rows: Option<QueuedRows>,
}

impl std::fmt::Debug for PgSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessionStore").finish_non_exhaustive()
    }
}

impl PgSessionStore {
    /// A store on the shared pool; every save is its own upsert.
    pub fn new(pool: DbPool) -> Self {
        Self {
            pool,
            queued_rows: None,
        }
    }

    /// A store that inserts new claims' rows in batches of up to
    /// `max_batch` (`queued_rows`); other saves are as with [`Self::new`].
    /// Starts a task on the current runtime.
    pub fn batching(pool: DbPool, max_batch: usize) -> Self {
        Self {
            queued_rows: Some(QueuedRows::spawn(pool.clone(), max_batch)),
            pool,
        }
    }
}

/// The upsert behind [`PgSessionStore::save`]. `$4` is the new state; the
/// insert's `started_at`/`ended_at` follow from it, and `EXCLUDED` carries
/// them into the update. `$12` is `queued_at` in epoch microseconds (exact:
/// no floating point), the first save's `created_at`; an update keeps it.
/// The two CTEs after it keep `session_leases` in step with the row it
/// wrote; the statement returns one row if the session was written, none if
/// the row had already ended.
const UPSERT: &str = "
WITH saved AS (
INSERT INTO sessions AS s (id, address, gpus, state, host, gpu_indices, container_id,
                           billed_intervals, billed_credit, billed_ms, end_reason,
                           started_at, ended_at, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
        CASE WHEN $4 = 'running' THEN now() END,
        CASE WHEN $4 = 'ended' THEN now() END,
        COALESCE('epoch'::timestamptz + ($12::bigint || ' microseconds')::interval, now()))
ON CONFLICT (id) DO UPDATE SET
    address = EXCLUDED.address,
    gpus = EXCLUDED.gpus,
    state = EXCLUDED.state,
    host = EXCLUDED.host,
    gpu_indices = EXCLUDED.gpu_indices,
    container_id = EXCLUDED.container_id,
    billed_intervals = EXCLUDED.billed_intervals,
    billed_credit = EXCLUDED.billed_credit,
    billed_ms = EXCLUDED.billed_ms,
    end_reason = EXCLUDED.end_reason,
    updated_at = now(),
    started_at = COALESCE(s.started_at, EXCLUDED.started_at),
    ended_at = EXCLUDED.ended_at
WHERE s.state <> 'ended'
RETURNING s.id, s.state, s.host, s.gpu_indices
), released AS (
    UPDATE session_leases AS l SET released_at = clock_timestamp()
    FROM saved
    WHERE l.session_id = saved.id AND l.released_at IS NULL
      AND (saved.state = 'ended' OR l.host IS DISTINCT FROM saved.host
           OR NOT (l.gpu_index = ANY (saved.gpu_indices)))
), leased AS (
    INSERT INTO session_leases (session_id, host, gpu_index)
    SELECT saved.id, saved.host, g
    FROM saved, unnest(saved.gpu_indices) AS g
    WHERE saved.state <> 'ended' AND saved.host IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT id FROM saved";

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn save(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let row = SessionRow::from_record(record)?;
        let queued_at_us = record
            .queued_at
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|since| i64::try_from(since.as_micros()).ok());
        // A new claim's first save holds no GPUs: it can go with others.
        if let (Some(queued_rows), SessionState::Queued, Some(queued_at_us)) =
            (&self.queued_rows, record.state, queued_at_us)
        {
            return queued_rows
                .insert(QueuedRow {
                    id: row.id,
                    address: row.address,
                    gpus: row.gpus,
                    queued_at_us,
                })
                .await
                .map_err(|e| failed(&format!("saving session {}", record.id), e));
        }
        // The upsert may run again after a lost connection: writing the same
        // record twice changes nothing more than writing it once.
        let changed = with_retries(
            RetryPolicy::DEFAULT,
            "session save",
            true,
            SaveError::transience,
            || self.upsert(&row, queued_at_us),
        )
        .await
        .map_err(|e| failed(&format!("saving session {}", record.id), e))?;
        if changed == 0 {
            // Only an ended row refuses the upsert. Saving the end twice is a
            // harmless retry; anything else is an actor behind the times.
            if record.state == SessionState::Ended {
                tracing::debug!(session = %record.id, "session already ended; save ignored");
            } else {
                tracing::warn!(session = %record.id, state = ?record.state,
                    "stale save of an ended session ignored");
            }
        }
        Ok(())
    }

    async fn load(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.pool.get().await.map_err(|e| failed("load", e))?;
        let row = sessions::table
            .find(id.0)
            .select(SessionRow::as_select())
            .first(&mut conn)
            .await
            .optional()
            .map_err(|e| failed(&format!("loading session {id}"), e))?;
        row.map(SessionRow::into_record).transpose()
    }

    async fn load_active(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| failed("load_active", e))?;
        let rows = sessions::table
            .filter(sessions::state.ne(SessionState::Ended.as_str()))
            .order((sessions::created_at.asc(), sessions::id.asc()))
            .select(SessionRow::as_select())
            .load(&mut conn)
            .await
            .map_err(|e| failed("loading active sessions", e))?;
        rows.into_iter().map(SessionRow::into_record).collect()
    }
}

/// Why one attempt at a save failed.
#[derive(Debug, thiserror::Error)]
enum SaveError {
    #[error("no PostgreSQL connection: {0}")]
    Pool(String),
    #[error("{0}")]
    Db(#[from] diesel::result::Error),
}

impl SaveError {
    fn transience(&self) -> Transience {
        match self {
            Self::Pool(_) => Transience::ConnectionLost,
            Self::Db(err) => classify(err),
        }
    }
}

impl PgSessionStore {
    /// One attempt at [`UPSERT`]; how many sessions rows it wrote (0 or 1).
    async fn upsert(
        &self,
        row: &SessionRow,
        queued_at_us: Option<i64>,
    ) -> Result<usize, SaveError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| SaveError::Pool(e.to_string()))?;
        Ok(diesel::sql_query(UPSERT)
            .bind::<Uuid, _>(row.id)
            .bind::<Text, _>(&row.address)
            .bind::<Integer, _>(row.gpus)
            .bind::<Text, _>(&row.state)
            .bind::<Nullable<Integer>, _>(row.host)
            .bind::<Array<Integer>, _>(&row.gpu_indices)
            .bind::<Nullable<Text>, _>(&row.container_id)
            .bind::<BigInt, _>(row.billed_intervals)
            .bind::<BigInt, _>(row.billed_credit)
            .bind::<BigInt, _>(row.billed_ms)
            .bind::<Nullable<Jsonb>, _>(&row.end_reason)
            .bind::<Nullable<BigInt>, _>(queued_at_us)
            .execute(&mut conn)
            .await?)
    }
}

/// A `StoreError` for `what` that failed with `err`. PostgreSQL's messages
/// name the constraint or the connection problem, never a credential.
fn failed(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {err}"))
}

/// The columns a [`SessionRecord`] is stored in (the timestamps are the
/// database's own).
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = sessions, check_for_backend(diesel::pg::Pg))]
struct SessionRow {
    id: uuid::Uuid,
    address: String,
    gpus: i32,
    state: String,
    host: Option<i32>,
    gpu_indices: Vec<i32>,
    container_id: Option<String>,
    billed_intervals: i64,
    billed_credit: i64,
    billed_ms: i64,
    end_reason: Option<serde_json::Value>,
}

impl SessionRow {
    fn from_record(record: &SessionRecord) -> Result<Self, StoreError> {
        let id = record.id;
        let refuse = |why: String| StoreError(format!("cannot save session {id}: {why}"));
        // A gang is placed on one host, and a row has one host column.
        let host = match record.gpu_addrs.split_first() {
            None => None,
            Some((first, rest)) => {
                if let Some(other) = rest.iter().find(|gpu| gpu.host != first.host) {
                    return Err(refuse(format!(
                        "its GPUs span hosts {} and {}; a session's GPUs must be on one host",
                        first.host, other.host
                    )));
                }
                Some(i32::from(first.host))
            }
        };
        let gpu_indices = record
            .gpu_addrs
            .iter()
            .map(|gpu| {
                i32::try_from(gpu.index)
                    .map_err(|_| refuse(format!("GPU index {} is out of range", gpu.index)))
            })
            .collect::<Result<_, _>>()?;
        let end_reason = record
            .end_reason
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| refuse(format!("end reason does not serialise: {e}")))?;
        Ok(Self {
            id: id.0,
            address: record.wallet.as_str().to_owned(),
            gpus: i32::try_from(record.gpus)
                .map_err(|_| refuse(format!("{} GPUs is out of range", record.gpus)))?,
            state: record.state.as_str().to_owned(),
            host,
            gpu_indices,
            container_id: record.container_id.clone(),
            billed_intervals: i64::try_from(record.billed_intervals)
                .map_err(|_| refuse("billed_intervals is out of range".into()))?,
            billed_credit: record.billed_credit,
            billed_ms: i64::try_from(record.billed_ms)
                .map_err(|_| refuse("billed_ms is out of range".into()))?,
            end_reason,
        })
    }

    fn into_record(self) -> Result<SessionRecord, StoreError> {
        let id = SessionId(self.id);
        // The schema's CHECKs make these impossible; a failure means the row
        // was written by something other than this store.
        let corrupt = |why: String| StoreError(format!("session {id} is stored corrupt: {why}"));
        let gpu_addrs = match self.host {
            None if self.gpu_indices.is_empty() => Vec::new(),
            None => return Err(corrupt("GPU indices without a host".into())),
            Some(host) => {
                let host = u16::try_from(host).map_err(|_| corrupt(format!("host {host}")))?;
                self.gpu_indices
                    .iter()
                    .map(|&index| {
                        u32::try_from(index)
                            .map(|index| GpuAddr { host, index })
                            .map_err(|_| corrupt(format!("GPU index {index}")))
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        let end_reason = self
            .end_reason
            .map(serde_json::from_value::<EndReason>)
            .transpose()
            .map_err(|e| corrupt(format!("end reason: {e}")))?;
        Ok(SessionRecord {
            id,
            wallet: WalletId::new(&self.address),
            gpus: u32::try_from(self.gpus).map_err(|_| corrupt(format!("gpus {}", self.gpus)))?,
            state: parse_state(&self.state)
                .ok_or_else(|| corrupt(format!("state {:?}", self.state)))?,
            gpu_addrs,
            container_id: self.container_id,
            billed_intervals: u64::try_from(self.billed_intervals)
                .map_err(|_| corrupt("negative billed_intervals".into()))?,
            billed_credit: self.billed_credit,
            billed_ms: u64::try_from(self.billed_ms)
                .map_err(|_| corrupt("negative billed_ms".into()))?,
            end_reason,
            // The row keeps it; a save of this record leaves it alone.
            queued_at: None,
        })
    }
}

fn parse_state(name: &str) -> Option<SessionState> {
    SessionState::ALL.into_iter().find(|s| s.as_str() == name)
}
