//! The deskgate actor tree.
//!
//! This crate holds the pure logic of deskgate — GPU leases, the fair queue,
//! session lifecycles and billing — and reaches the outside world only through
//! the port traits in [`ports`], which the `deskgate` crate implements. It
//! depends on neither `deskgate` nor `deskgate-media` (see DESIGN §3).
//!
//! - [`queue`]: the scheduling policy as a plain data structure (FIFO,
//!   gang allocation on one host, backfill that cannot delay the head, ETAs).
//! - [`gpu`]: `GpuActor`, one per GPU, granting exclusive fenced leases.
//! - [`wallet`]: `WalletActor`, serialising one wallet's money operations.
//! - [`scheduler`]: `Scheduler`, the actor around [`queue`].
//! - [`session`]: `SessionActor`, lifecycle and server-clocked billing.
//! - [`supervisor`]: `Supervisor`, the root: restarts, escalation, recovery.
//! - [`chain_watcher`]: `ChainWatcher`, deposits to credit: confirmations and reorgs.

pub mod ask;
pub mod chain_watcher;
pub mod gpu;
pub mod ports;
pub mod queue;
pub mod scheduler;
pub mod session;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wallet;
