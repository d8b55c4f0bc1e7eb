//! What every part of the gate and the launcher stands on: secrets that are
//! never printed, logs and metrics, the HTTP(S) server loop, readiness checks,
//! the audit log and TURN credentials.
//!
//! Nothing here imports another deskgate module except `db` (audit, readiness).

pub mod audit;
pub mod backoff;
pub mod clock;
pub mod readiness;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod turn;
