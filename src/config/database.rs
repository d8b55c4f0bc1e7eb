//! The database part: where PostgreSQL is and whether `serve` migrates it.
//!
//! Invariants: the URL is kept as a [`Secret`] (it may hold a password) and
//! must be a `postgres://` or `postgresql://` URL; that it is set at all is a
//! posture check, since only `serve` needs it.

use url::Url;

use super::Problem;
use super::parse::{parse_bool, parse_key, secret};
use super::raw::RawSettings;
use crate::platform::secret::Secret;

/// Where the gate's PostgreSQL is.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// PostgreSQL URL (may hold a password).
    pub url: Option<Secret>,
    /// `serve` migrates the database at start.
    pub migrate_on_start: bool,
}

impl DatabaseConfig {
    /// Parses the database settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let url = secret(raw, "DATABASE_URL");
        if let Some(url) = &url {
            let scheme_ok = Url::parse(url.expose())
                .map(|u| matches!(u.scheme(), "postgres" | "postgresql"))
                .unwrap_or(false);
            if !scheme_ok {
                problems.push(Problem::new(
                    "DATABASE_URL",
                    "is not a postgres:// URL: use postgres://user:password@host:5432/database",
                ));
            }
        }
        let migrate_on_start = parse_key(raw, "MIGRATE_ON_START", problems, parse_bool);

        if problems.len() > before {
            return None;
        }
        Some(Self {
            url,
            migrate_on_start: migrate_on_start?,
        })
    }
}
