//! TLS to PostgreSQL.
