//! What every part of the gate and the launcher stands on: secrets that are
//! never printed, logs and metrics, the HTTP(S) server loop, TURN
//! credentials, backoff for retry loops, group commit and Unix time.
//!
//! The bottom layer: nothing here imports another deskgate module.

pub mod backoff;
pub mod clock;
pub mod group_commit;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod turn;
