//! Deposits and the chain cursor on PostgreSQL.
