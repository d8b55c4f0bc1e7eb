//! The audit log: who did what, when.
//!
//! Admin actions, security events and chain anomalies that an operator must
//! be able to review later. Rows are only ever inserted. Never put a secret
//! (a token, a signature) in `details`: the log is read by people.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::schema::audit_log;
use crate::db::{DbError, DbPool};

/// One audit row.
#[derive(Clone, Debug, PartialEq, Queryable, Selectable)]
#[diesel(table_name = audit_log, check_for_backend(diesel::pg::Pg))]
pub struct AuditEntry {
    /// Insertion order.
    pub id: i64,
    /// When it was recorded (the database's clock).
    pub at: DateTime<Utc>,
    /// `admin`, `system` or `wallet:<address>`.
    pub actor: String,
    /// Dotted verb, e.g. `credit.adjust`, `gpu.drain`, `deposit.reorged`.
    pub action: String,
    /// What it concerns, e.g. a session id or a wallet account.
    pub subject: Option<String>,
    /// Anything else worth keeping.
    pub details: serde_json::Value,
}

/// Records that `actor` did `action` to `subject`; returns the stored row.
pub async fn record(
    pool: &DbPool,
    actor: &str,
    action: &str,
    subject: Option<&str>,
    details: serde_json::Value,
) -> Result<AuditEntry, DbError> {
    let mut conn = pool.get().await?;
    let entry = diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor.eq(actor),
            audit_log::action.eq(action),
            audit_log::subject.eq(subject),
            audit_log::details.eq(details),
        ))
        .returning(AuditEntry::as_returning())
        .get_result(&mut conn)
        .await?;
    // `details` stays out of the log line: it is for the table's readers.
    tracing::info!(id = entry.id, actor, action, subject, "audit");
    Ok(entry)
}

/// The latest `limit` entries, newest first.
pub async fn recent(pool: &DbPool, limit: usize) -> Result<Vec<AuditEntry>, DbError> {
    let mut conn = pool.get().await?;
    let entries = audit_log::table
        .order(audit_log::id.desc())
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .select(AuditEntry::as_select())
        .load(&mut conn)
        .await?;
    Ok(entries)
}
