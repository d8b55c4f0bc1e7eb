//! deskgate: rent GPU desktops to browser users who pay with an Ethereum wallet.
//!
//! This crate is the gate and its adapters; the actor tree lives in
//! `deskgate-actors` and the media path in `deskgate-media`. The folders are
//! the architecture (see `docs/architecture.md` for the map and the
//! dependency direction):
//!
//! - [`app`]: composition: builds the gate and the launcher service from a
//!   [`config::Config`]; `main.rs` only parses the command line.
//! - [`config`]: settings per subsystem, their parsing and the security posture.
//! - [`http`]: the gate's HTTP API: routes, extractors, problems, edge guards.
//! - [`auth`]: wallet sign-in (SIWE), its PostgreSQL store, single-use tickets.
//! - [`money`]: ledger, pricing, tiers, deposits and the chain adapter.
//! - [`sessions`]: the gate's actor tree, the GPU profiles, the session store.
//! - [`launcher`]: where desktops run: the ports, the GPU inventory, and one
//!   folder per backend (`docker/`, `remote/`).
//! - [`platform`]: secrets, logs and metrics, the HTTP server loop, TURN,
//!   backoff, Unix time.
//! - [`db`]: the PostgreSQL pool, TLS, retries, migrations, the schema and
//!   the audit log.
//!
//! Imports point down: `platform` imports nothing of deskgate; `db` only
//! `platform`; `config` only `platform`; the concerns (`auth`, `money`,
//! `sessions`, `launcher`) import `config`, `db` and `platform` (and
//! `sessions` the ledger of `money`); `http` sits above them and `app` above
//! everything. One exception, on purpose: `launcher::remote::service` is an
//! HTTP service itself and reuses `http`'s problem type and request guards.

pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod launcher;
pub mod money;
pub mod platform;
pub mod sessions;
