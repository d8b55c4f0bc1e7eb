//! [`HostBook`]: the GPU hosts a gate with launcher discovery has met, in
//! PostgreSQL (`launcher_hosts`, migration 7).
//!
//! Invariants: a host is known by the stable name its launcher reports, and
//! the first time a name is seen it gets the next host number, which it
//! keeps for good (sessions, leases and container labels carry it). A
//! retired host's number is never given to another. Draining and retiring
//! are operator decisions and are kept here, so they survive gate restarts.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Bool, Integer, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;

use crate::db::DbPool;

/// Why the book could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HostBookError {
    /// PostgreSQL refused or could not be reached.
    #[error("the host book (launcher_hosts) is unavailable: {0}")]
    Database(String),
    /// Every host number is taken.
    #[error("no host number left for {0}: 65,536 hosts have been met")]
    Full(String),
}

impl HostBookError {
    fn db(err: impl std::fmt::Display) -> Self {
        Self::Database(err.to_string())
    }
}

/// One host as the book has it.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct HostRow {
    /// Its host number.
    #[diesel(sql_type = Integer)]
    pub number: i32,
    /// Its launcher's name.
    #[diesel(sql_type = Text)]
    pub name: String,
    /// When the gate first met it.
    #[diesel(sql_type = Timestamptz)]
    pub first_seen: DateTime<Utc>,
    /// When the gate last reached its launcher.
    #[diesel(sql_type = Timestamptz)]
    pub last_seen: DateTime<Utc>,
    /// An operator stopped new leases on it.
    #[diesel(sql_type = Bool)]
    pub drained: bool,
    /// When an operator declared it gone.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub retired_at: Option<DateTime<Utc>>,
}

impl HostRow {
    /// Its number as a host address (the table's CHECK keeps it in range).
    pub fn host(&self) -> u16 {
        u16::try_from(self.number).unwrap_or(u16::MAX)
    }
}

const COLUMNS: &str = "number, name, first_seen, last_seen, drained, retired_at";

/// The hosts in PostgreSQL; see the module docs.
#[derive(Clone)]
pub struct HostBook {
    pool: DbPool,
}

impl std::fmt::Debug for HostBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBook").finish_non_exhaustive()
    }
}

impl HostBook {
    /// The book on `pool`.
    pub fn new(pool: DbPool) -> Self {
        Self { pool }
    }

    /// Every host ever met, retired ones included, by number.
    pub async fn all(&self) -> Result<Vec<HostRow>, HostBookError> {
        let mut conn = self.pool.get().await.map_err(HostBookError::db)?;
        diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM launcher_hosts ORDER BY number"
        ))
        .load(&mut conn)
        .await
        .map_err(HostBookError::db)
    }

    /// The host called `name`, if it was ever met.
    pub async fn named(&self, name: &str) -> Result<Option<HostRow>, HostBookError> {
        let mut conn = self.pool.get().await.map_err(HostBookError::db)?;
        let rows: Vec<HostRow> = diesel::sql_query(format!(
            "SELECT {COLUMNS} FROM launcher_hosts WHERE name = $1"
        ))
        .bind::<Text, _>(name)
        .load(&mut conn)
        .await
        .map_err(HostBookError::db)?;
        Ok(rows.into_iter().next())
    }

    /// The host called `name`, met now: its row, created with the next
    /// number the first time, and its last contact set to now.
    pub async fn meet(&self, name: &str) -> Result<HostRow, HostBookError> {
        let mut conn = self.pool.get().await.map_err(HostBookError::db)?;
        // Two gates meeting two new hosts at once may pick the same number;
        // the loser's insert does nothing and it tries again.
        for _ in 0..8 {
            let rows: Vec<HostRow> = diesel::sql_query(format!(
                "WITH new AS (
                     INSERT INTO launcher_hosts (number, name)
                     SELECT coalesce(max(number) + 1, 0), $1 FROM launcher_hosts
                     HAVING coalesce(max(number) + 1, 0) <= 65535
                     ON CONFLICT DO NOTHING
                     RETURNING {COLUMNS}
                 ),
                 seen AS (
                     UPDATE launcher_hosts SET last_seen = now()
                     WHERE name = $1
                     RETURNING {COLUMNS}
                 )
                 SELECT {COLUMNS} FROM new UNION ALL SELECT {COLUMNS} FROM seen"
            ))
            .bind::<Text, _>(name)
            .load(&mut conn)
            .await
            .map_err(HostBookError::db)?;
            if let Some(row) = rows.into_iter().next() {
                return Ok(row);
            }
            if self.full().await? {
                return Err(HostBookError::Full(name.to_string()));
            }
        }
        Err(HostBookError::Database(format!(
            "could not give {name} a host number: other writers kept taking the next one"
        )))
    }

    async fn full(&self) -> Result<bool, HostBookError> {
        let mut conn = self.pool.get().await.map_err(HostBookError::db)?;
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let count: Count = diesel::sql_query("SELECT count(*) AS n FROM launcher_hosts")
            .get_result(&mut conn)
            .await
            .map_err(HostBookError::db)?;
        Ok(count.n > 65_535)
    }

    /// Sets whether `name` is drained; its row, or `None` if never met.
    pub async fn set_drained(
        &self,
        name: &str,
        on: bool,
    ) -> Result<Option<HostRow>, HostBookError> {
        let mut conn = self.pool.get().await.map_err(HostBookError::db)?;
        let rows: Vec<HostRow> = diesel::sql_query(format!(
            "UPDATE launcher_hosts SET drained = $2 WHERE name = $1 RETURNING {COLUMNS}"
        ))
        .bind::<Text, _>(name)
        .bind::<Bool, _>(on)
        .load(&mut conn)
        .await
        .map_err(HostBookError::db)?;
        Ok(rows.into_iter().next())
    }

    /// Declares `name` gone (once; a second call keeps the first time); its
    /// row, or `None` if never met.
    pub async fn retire(&self, name: &str) -> Result<Option<HostRow>, HostBookError> {
        let mut conn = self.pool.get().await.map_err(HostBookError::db)?;
        let rows: Vec<HostRow> = diesel::sql_query(format!(
            "UPDATE launcher_hosts SET retired_at = coalesce(retired_at, now())
             WHERE name = $1 RETURNING {COLUMNS}"
        ))
        .bind::<Text, _>(name)
        .load(&mut conn)
        .await
        .map_err(HostBookError::db)?;
        Ok(rows.into_iter().next())
    }
}
