//! The deskgate actor tree.
//!
//! This crate holds the pure logic of deskgate — GPU leases, the fair queue,
//! session lifecycles and billing — and reaches the outside world only through
//! port traits that the `deskgate` crate implements. It depends on neither
//! `deskgate` nor `deskgate-media` (see DESIGN §3).
//!
//! The actors themselves arrive with the actor-core work; until then this crate
//! exports nothing.
