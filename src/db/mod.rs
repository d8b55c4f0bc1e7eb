//! PostgreSQL access: the connection pool every adapter shares.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::pooled_connection::deadpool::{BuildError, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures::{FutureExt, TryFutureExt};

use crate::platform::secret::Secret;

pub mod audit;
pub mod retry;
pub mod schema;
pub mod tls;

/// The schema, from `migrations/`, built into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

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
    /// No pooled connection could be had.
    #[error("cannot connect to PostgreSQL: {0}")]
    Pool(#[from] PoolError),
    /// A direct connection failed.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] ConnectionError),
    /// A migration failed; the transaction it ran in was rolled back.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// The database's schema is older than this build.
    #[error(
        "the schema is at migration {found} but this build needs {needed}: run `deskgate migrate` \
         (or let `serve` migrate: DESKGATE_MIGRATE_ON_START=true)"
    )]
    SchemaBehind {
        /// Newest migration applied, or `none`.
        found: String,
        /// Newest migration built in.
        needed: String,
    },
    /// PostgreSQL did not answer in time.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

/// Builds the pool. Connections are opened lazily, so this succeeds even
/// while PostgreSQL is down; `/readyz` reports that.
///
/// The URL's `sslmode`/`sslrootcert` are checked here, so a typo stops
/// start-up; every connection goes through [`tls::connect`].
pub fn pool(url: &Secret) -> Result<DbPool, DbError> {
    tls::check(url.expose()).map_err(ConnectionError::from)?;
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(|url| tls::connect(url).map_err(ConnectionError::from).boxed());
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url.expose(), config);
    Ok(Pool::builder(manager).max_size(POOL_SIZE).build()?)
}

/// Checks that PostgreSQL answers a query within `timeout`.
pub async fn ping(pool: &DbPool, timeout: Duration) -> Result<(), DbError> {
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        version: Option<String>,
    }
    let check = async {
        let mut conn = pool.get().await?;
        // A database never migrated has no migrations table at all.
        let table: Applied =
            diesel::sql_query("SELECT to_regclass('__diesel_schema_migrations')::text AS version")
                .get_result(&mut conn)
                .await?;
        let applied: Applied = if table.version.is_some() {
            diesel::sql_query("SELECT max(version) AS version FROM __diesel_schema_migrations")
                .get_result(&mut conn)
                .await?
        } else {
            table
        };
        let needed = latest_version();
        match applied.version {
            // Versions are zero-padded to one width, so text order is age order.
            Some(version) if version >= needed => Ok(()),
            found => Err(DbError::SchemaBehind {
                found: found.unwrap_or_else(|| "none".into()),
                needed,
            }),
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| DbError::Timeout(timeout))?
}

/// The newest migration built into this binary.
pub fn latest_version() -> String {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .ok()
        .and_then(|all| all.iter().map(|m| m.name().version().to_string()).max())
        .unwrap_or_default()
}

/// Applies every pending migration, each in its own transaction; returns the
/// versions applied (empty when the schema was current).
///
/// diesel's migration runner is synchronous; the harness bridges it with
/// `block_in_place`, so this must run on the multi-threaded runtime.
pub async fn migrate(url: &Secret) -> Result<Vec<String>, DbError> {
    let conn = tls::connect(url.expose())
        .await
        .map_err(ConnectionError::from)?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}
