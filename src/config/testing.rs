//! What the configuration tests share: a strong secret, a pinned image, and
//! an environment that has the two settings `serve` always needs.
//!
//! Invariants: test-only; nothing here is a real credential.

use super::Problem;

/// A secret the posture accepts even with TLS on.
pub(super) const STRONG: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

/// A desktop image pinned by digest, as TLS requires where containers run.
pub(super) const PINNED_IMAGE: &str =
    "deskgate/desktop@sha256:4f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

/// `pairs` as an environment, after a database and an RPC URL.
pub(crate) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vec![
        (
            "DESKGATE_DATABASE_URL".to_string(),
            "postgres://u:pw@127.0.0.1:5432/d".to_string(),
        ),
        (
            "DESKGATE_RPC_URL".to_string(),
            "http://127.0.0.1:8545".to_string(),
        ),
    ];
    all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    all
}

/// The variables `problems` name, in order.
pub(super) fn variables(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.variable.as_str()).collect()
}
