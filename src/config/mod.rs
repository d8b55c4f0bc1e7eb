//! Typed configuration, one part per subsystem.
//!
//! Every setting is a `DESKGATE_*` environment variable; an optional TOML file
//! (`--config`) mirrors them with lower-case keys (`bind = "127.0.0.1:8080"`),
//! and the environment wins over the file. Loading never stops at the first
//! mistake: it collects every problem, each naming its variable and the fix,
//! so `deskgate config check` can show them all at once.
//!
//! [`Config`] is made of parts, each a struct in its own file with the parse
//! function for its settings:
//!
//! - `server` ([`ServerConfig`]): `BIND`, `ALLOW_PUBLIC_BIND`, `PUBLIC_URL`,
//!   `TLS_CERT`/`TLS_KEY`, `METRICS_ADDR`, `TRUSTED_PROXIES`, `DOCS_ENABLED`,
//!   `LOG_FORMAT`, `SHUTDOWN_GRACE_SECONDS`.
//! - `database` ([`DatabaseConfig`]): `DATABASE_URL`, `MIGRATE_ON_START`.
//! - `chain` ([`ChainConfig`]): `RPC_URL`, `CHAIN_ID`, `REVENUE_ADDRESS`,
//!   `TOKEN_ADDRESS`, `CONFIRMATIONS`, the two `PRICE_*_PER_GPU_HOUR`,
//!   `TIERS`, `CHAIN_POLL_MILLIS`, `DEPOSIT_START_BLOCK`.
//! - `auth` ([`AuthConfig`]): `TOKEN_TTL_SECONDS` (sign-in), `ADMIN_TOKEN`.
//! - `launcher` ([`LauncherConfig`]): `LAUNCHER_URLS` (as the
//!   [`LauncherKind`]), `LAUNCHER_TOKEN`, `LAUNCHER_BIND`, `LAUNCHER_HOST`,
//!   the `SESSION_*` container settings, `GPUS`.
//! - `media` ([`MediaConfig`]): `TURN_URLS`, `TURN_SECRET`, `WEBRTC_*`.
//! - `sessions` ([`SessionsConfig`]): `BILLING_INTERVAL_SECONDS`,
//!   `PRESENCE_TIMEOUT_SECONDS`.
//! - `limits` ([`LimitsConfig`]): `MAX_BODY_BYTES`,
//!   `REQUEST_TIMEOUT_SECONDS`, the sign-in and claim rate limits
//!   ([`Quota`]).
//!
//! Around them: `keys.rs` is the table of every setting ([`KEYS`]), `raw.rs`
//! gathers their text from the file and the environment and redacts it for
//! display, `parse.rs` holds the parse helpers the parts share, and
//! `posture.rs` checks the security posture once everything parsed.
//!
//! Invariants: a problem names its variable and never contains a secret;
//! parse problems are reported in a fixed order (`keys::PROBLEM_ORDER`),
//! whichever part found them; `config` imports nothing of deskgate but
//! `platform::secret` and `launcher::gpu`, so every other module may use it.

mod auth;
mod chain;
mod database;
mod gpus;
mod keys;
mod launcher;
mod limits;
mod media;
mod parse;
mod posture;
mod raw;
mod server;
mod sessions;
#[cfg(test)]
pub(crate) mod testing;

use std::net::SocketAddr;
use std::path::Path;

pub use auth::AuthConfig;
pub use chain::{ChainConfig, Confirmations, Tier};
pub use database::DatabaseConfig;
pub use gpus::GpuSelection;
pub use keys::{KEYS, Key, Source};
pub use launcher::{DnsTarget, LauncherConfig, LauncherKind, is_host_name};
pub use limits::{LimitsConfig, Quota};
pub use media::MediaConfig;
pub use raw::{RawSettings, redact_url};
pub use server::ServerConfig;
pub use sessions::SessionsConfig;

/// Prefix of every environment variable deskgate reads.
pub const ENV_PREFIX: &str = "DESKGATE_";

/// A configuration mistake, naming the variable it concerns and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct Problem {
    /// The variable, e.g. `DESKGATE_BIND`, or the file path for file errors.
    pub variable: String,
    /// What is wrong and how to fix it. Never contains a secret.
    pub message: String,
}

impl Problem {
    /// A problem with the setting `key` (its name without the prefix).
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            variable: format!("{ENV_PREFIX}{key}"),
            message: message.into(),
        }
    }
}

/// Which program the configuration is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The gate (`deskgate serve`).
    Serve,
    /// A GPU host's launcher service (`deskgate launcher`).
    Launcher,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listening, public URL, TLS, proxies, metrics, docs, logs, shutdown.
    pub server: ServerConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// The Ethereum node, deposits, prices and tiers.
    pub chain: ChainConfig,
    /// Sign-in token lifetime and the admin token.
    pub auth: AuthConfig,
    /// The launcher backend, the launcher service and session containers.
    pub launcher: LauncherConfig,
    /// TURN and WebRTC.
    pub media: MediaConfig,
    /// Billing and presence of running sessions.
    pub sessions: SessionsConfig,
    /// Request and per-client limits.
    pub limits: LimitsConfig,
}

/// The result of loading: the configuration if it parsed, every problem, and
/// warnings that do not stop the program.
#[derive(Debug)]
pub struct Loaded {
    /// The raw settings, for `config check`.
    pub raw: RawSettings,
    /// The parsed configuration; `None` when a setting could not be parsed.
    pub config: Option<Config>,
    /// Everything that must be fixed before the program may start.
    pub problems: Vec<Problem>,
    /// Things worth knowing that do not stop it.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// The configuration when there are no problems, or every problem.
    pub fn into_result(self) -> Result<(Config, Vec<String>), Vec<Problem>> {
        match self.config {
            Some(config) if self.problems.is_empty() => Ok((config, self.warnings)),
            _ => Err(self.problems),
        }
    }
}

/// Loads the configuration for `role` from an optional file and the
/// environment, and checks the security posture.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    role: Role,
) -> Loaded {
    let (raw, problems) = RawSettings::gather(file, env);
    check(raw, problems, role)
}

/// [`load`] with the file already read, as its name and text: a pure
/// function of its arguments (no filesystem, no process environment).
// Public so that the fuzz target `config` (fuzz/) can call it.
#[doc(hidden)]
pub fn load_text(
    file: Option<(&str, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
    role: Role,
) -> Loaded {
    let (raw, problems) = RawSettings::gather_text(file, env);
    check(raw, problems, role)
}

/// Parses the gathered settings and checks the security posture.
fn check(raw: RawSettings, mut problems: Vec<Problem>, role: Role) -> Loaded {
    let config = Config::parse(&raw, &mut problems);
    let mut warnings = Vec::new();
    if let Some(config) = &config {
        posture::check_posture(config, role, &mut problems, &mut warnings);
    }
    Loaded {
        raw,
        config,
        problems,
        warnings,
    }
}

impl Config {
    /// Parses every part, collecting every problem; `None` if any failed.
    fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let server = ServerConfig::parse(raw, problems);
        let database = DatabaseConfig::parse(raw, problems);
        let chain = ChainConfig::parse(raw, problems);
        let auth = AuthConfig::parse(raw, problems);
        let launcher = LauncherConfig::parse(raw, problems);
        let bind = server.as_ref().map(|s| s.bind);
        let media = MediaConfig::parse(raw, bind, problems);
        let sessions = SessionsConfig::parse(raw, problems);
        let limits = LimitsConfig::parse(raw, problems);
        // A stable sort: problems about one setting keep their order.
        problems[before..].sort_by_key(|p| {
            let name = p.variable.strip_prefix(ENV_PREFIX).unwrap_or(&p.variable);
            keys::problem_rank(name)
        });
        // A part is `None` exactly when it recorded a problem.
        Some(Config {
            server: server?,
            database: database?,
            chain: chain?,
            auth: auth?,
            launcher: launcher?,
            media: media?,
            sessions: sessions?,
            limits: limits?,
        })
    }

    /// True in the production posture (HTTPS).
    pub fn is_tls(&self) -> bool {
        self.server.tls.is_some()
    }

    /// The address `role` listens on.
    pub fn listen_addr(&self, role: Role) -> SocketAddr {
        match role {
            Role::Serve => self.server.bind,
            Role::Launcher => self.launcher.bind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GpuSelection;
    use super::testing::{env, variables};
    use super::*;

    #[test]
    fn defaults_load_without_problems() {
        let loaded = load(None, env(&[]), Role::Serve);
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let config = loaded.config.expect("config");
        assert_eq!(
            config.server.bind,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.server.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(config.launcher.gpus, GpuSelection::Auto);
        assert!(config.auth.admin_token.is_none());
    }

    #[test]
    fn every_bad_value_is_reported_at_once_naming_its_variable() {
        let loaded = load(
            None,
            env(&[
                ("DESKGATE_BIND", "localhost"),
                ("DESKGATE_CHAIN_ID", "mainnet"),
                ("DESKGATE_GPUS", "fake:x"),
                ("DESKGATE_LOG_FORMAT", "xml"),
                ("DESKGATE_BILLING_INTERVAL_SECONDS", "0"),
                ("DESKGATE_REVENUE_ADDRESS", "0x1234"),
            ]),
            Role::Serve,
        );
        assert!(loaded.config.is_none());
        let vars = variables(&loaded.problems);
        for expected in [
            "DESKGATE_BIND",
            "DESKGATE_CHAIN_ID",
            "DESKGATE_GPUS",
            "DESKGATE_LOG_FORMAT",
            "DESKGATE_BILLING_INTERVAL_SECONDS",
            "DESKGATE_REVENUE_ADDRESS",
        ] {
            assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
        }
    }

    #[test]
    fn problems_keep_their_order_across_parts_after_file_problems() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deskgate.toml");
        std::fs::write(&path, "bnid = \"127.0.0.1:9000\"\n").unwrap();
        let loaded = load(
            Some(&path),
            env(&[
                ("DESKGATE_SHUTDOWN_GRACE_SECONDS", "99"),
                ("DESKGATE_MIGRATE_ON_START", "q"),
                ("DESKGATE_DOCS_ENABLED", "q"),
                ("DESKGATE_GPUS", "fake:x"),
                ("DESKGATE_WEBRTC_MAX_FPS", "0"),
                ("DESKGATE_PUBLIC_URL", "ftp://x"),
                ("DESKGATE_TLS_CERT", "/c.pem"),
            ]),
            Role::Serve,
        );
        let file = path.display().to_string();
        assert_eq!(
            variables(&loaded.problems),
            [
                file.as_str(),
                "DESKGATE_TLS_KEY",
                "DESKGATE_PUBLIC_URL",
                "DESKGATE_WEBRTC_MAX_FPS",
                "DESKGATE_GPUS",
                "DESKGATE_DOCS_ENABLED",
                "DESKGATE_MIGRATE_ON_START",
                "DESKGATE_SHUTDOWN_GRACE_SECONDS",
            ]
        );
    }
}
