//! Money: credit-seconds in a double-entry ledger, what a GPU-hour costs in
//! ETH or the token (with holder tiers), deposits credited from the chain,
//! and the chain adapter that reads them.
//!
//! Invariants: amounts are integers (credit-seconds, U256 base units); every
//! ledger write is idempotent by its key; every transaction sums to zero.

pub mod chain;
pub mod deposits;
pub mod ledger;
pub mod pricing;
pub mod tiers;
