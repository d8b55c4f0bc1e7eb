//! PostgreSQL access: the connection pool every adapter shares.

use std::time::Duration;

use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{BuildError, Pool, PoolError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::secret::Secret;

/// The shared pool of PostgreSQL connections.
pub type DbPool = Pool<AsyncPgConnection>;

/// Connections the pool keeps at most.
const POOL_SIZE: usize = 16;

/// Why the database could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The pool could not be built (bad URL form).
    #[error("cannot build the PostgreSQL pool: {0}")]
    Build(#[from] BuildError),
    /// No connection could be had.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] PoolError),
    /// A query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// PostgreSQL did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

/// Builds the pool. Connections are opened lazily, so this succeeds even
/// while PostgreSQL is down; `/readyz` reports that.
pub fn pool(url: &Secret) -> Result<DbPool, DbError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url.expose());
    Ok(Pool::builder(manager).max_size(POOL_SIZE).build()?)
}

/// Checks that PostgreSQL answers a query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> Result<(), DbError> {
    let check = async {
        let mut conn = pool.get().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok(())
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| DbError::Timeout(timeout))?
}
