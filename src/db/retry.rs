//! Bounded retries for transient PostgreSQL failures.
