//! deskgate: rent GPU desktops to browser users who pay with an Ethereum wallet.
//!
//! This crate is the gate and its adapters; the actor tree lives in
//! `deskgate-actors` and the media path in `deskgate-media`. See DESIGN.md for
//! how the parts fit.

pub mod audit;
pub mod chain;
pub mod config;
pub mod db;
pub mod deposit_store;
pub mod desktop;
pub mod docker;
pub mod docker_launcher;
pub mod gate;
pub mod gpu;
pub mod http;
pub mod launcher_pool;
pub mod launcher_service;
pub mod ledger;
pub mod pricing;
pub mod readiness;
pub mod remote_launcher;
pub mod schema;
pub mod secret;
pub mod server;
pub mod session_store;
pub mod sign_in;
pub mod sign_in_store;
pub mod siwe;
pub mod telemetry;
pub mod tickets;
pub mod tiers;
pub mod turn;
