//! The double-entry credit ledger on PostgreSQL.
