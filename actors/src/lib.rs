//! The deskgate actor tree.
//!
//! This crate holds the pure logic of deskgate — GPU leases, the fair queue,
//! session lifecycles and billing — and reaches the outside world only through
//! the port traits in [`ports`], which the `deskgate` crate implements. It
//! depends on neither `deskgate` nor `deskgate-media` (see DESIGN §3).
//!
//! - [`ports`]: the traits through which the tree reaches the world, and
//!   the ids and records they speak in.
//! - [`protocol`]: the data the actors exchange (claims, leases, the lease
//!   grant, queue status, session events and views) and
//!   [`protocol::release_lease`], the one way a granted session's GPUs are
//!   given back.
//! - [`ask`]: request–reply between actors with a deadline.
//! - [`queue`]: the scheduling policy as a plain data structure (FIFO,
//!   gang allocation on one host, backfill that cannot delay the head, ETAs).
//! - [`gpu`]: `GpuActor`, one per GPU, granting exclusive fenced leases.
//! - [`wallet`]: `WalletActor`, serialising one wallet's money operations.
//! - [`scheduler`]: `Scheduler`, the actor around [`queue`].
//! - [`session`]: `SessionActor`, lifecycle and server-clocked billing.
//! - [`supervisor`]: `Supervisor`, the root: restarts, escalation, recovery.
//! - [`chain_watcher`]: `ChainWatcher`, deposits to credit: confirmations and reorgs.
//! - `testing` (feature `testing`): in-memory ports for tests.

// Every public item, message variants and their fields included, says what
// it is; `clippy -D warnings` turns a missing doc into an error.
#![warn(missing_docs)]

pub mod ask;
pub mod chain_watcher;
pub mod gpu;
pub mod ports;
pub mod protocol;
pub mod queue;
pub mod scheduler;
pub mod session;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wallet;
