//! Readiness: is every configured dependency answering? `/readyz` runs these
//! checks concurrently and names each one that is down.

use std::time::Duration;

use alloy::providers::{Provider, RootProvider};
use bollard::Docker;
use futures::future::join_all;
use serde::Serialize;
use url::Url;

use crate::db::{self, DbPool};

/// How long one check may take before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A dependency the gate needs to serve users.
#[derive(Clone)]
pub enum Dependency {
    /// PostgreSQL: money and sessions.
    Postgres(DbPool),
    /// The Ethereum JSON-RPC node, which must report the configured chain.
    Chain {
        /// Read-only provider.
        provider: RootProvider,
        /// `DESKGATE_CHAIN_ID`.
        expected_chain_id: u64,
    },
    /// The local Docker Engine (single-host mode).
    Docker(Docker),
    /// A remote launcher's `/healthz`.
    Launcher {
        /// Its base URL.
        url: Url,
        /// Shared HTTP client.
        client: reqwest::Client,
    },
    /// The simulated launcher backend: always up, and named so that nobody
    /// takes this gate for one that starts desktops.
    Simulated,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Dependency").field(&self.name()).finish()
    }
}

/// The outcome of one check, as `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Which dependency, e.g. `postgresql`.
    pub name: String,
    /// True when it answered correctly in time.
    pub ok: bool,
    /// Why it is down; never holds a credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Dependency {
    /// A read-only chain check against `rpc_url`.
    pub fn chain(rpc_url: &str, expected_chain_id: u64) -> Result<Self, url::ParseError> {
        let url = Url::parse(rpc_url)?;
        Ok(Self::Chain {
            provider: RootProvider::new_http(url),
            expected_chain_id,
        })
    }

    /// The name `/readyz` shows.
    pub fn name(&self) -> String {
        match self {
            Self::Postgres(_) => "postgresql".to_string(),
            Self::Chain { .. } => "chain".to_string(),
            Self::Docker(_) => "docker".to_string(),
            Self::Launcher { url, .. } => format!(
                "launcher {}:{}",
                url.host_str().unwrap_or("?"),
                url.port_or_known_default().unwrap_or(0)
            ),
            Self::Simulated => crate::launcher::simulated::NAME.to_string(),
        }
    }

    async fn probe(&self) -> Result<(), String> {
        match self {
            Self::Postgres(pool) => db::ping(pool, CHECK_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            Self::Chain {
                provider,
                expected_chain_id,
            } => {
                let reported = provider.get_chain_id().await.map_err(|e| {
                    // Transport errors may echo the URL, which can carry an API key.
                    format!(
                        "RPC node did not answer eth_chainId ({})",
                        error_kind(&e.to_string())
                    )
                })?;
                if reported == *expected_chain_id {
                    Ok(())
                } else {
                    Err(format!(
                        "RPC node reports chain id {reported}, but DESKGATE_CHAIN_ID is {expected_chain_id}"
                    ))
                }
            }
            Self::Docker(docker) => docker
                .ping()
                .await
                .map(drop)
                .map_err(|e| format!("Docker Engine did not answer: {e}")),
            Self::Launcher { url, client } => {
                let health = url.join("healthz").map_err(|e| e.to_string())?;
                let response = client.get(health).send().await.map_err(|e| {
                    format!("launcher did not answer ({})", error_kind(&e.to_string()))
                })?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("launcher answered {}", response.status()))
                }
            }
            Self::Simulated => Ok(()),
        }
    }

    /// Runs the check with the time limit.
    pub async fn check(&self) -> CheckResult {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, self.probe()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
        };
        CheckResult {
            name: self.name(),
            ok: outcome.is_ok(),
            error: outcome.err(),
        }
    }
}

/// Reduces a transport error to its kind, dropping any URL it quotes.
fn error_kind(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("refused") {
        "connection refused"
    } else if lower.contains("timed out") || lower.contains("timeout") {
        "timed out"
    } else if lower.contains("dns") || lower.contains("resolve") {
        "name resolution failed"
    } else {
        "transport error"
    }
}

/// Runs every check concurrently.
pub async fn check_all(dependencies: &[Dependency]) -> Vec<CheckResult> {
    join_all(dependencies.iter().map(Dependency::check)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_are_reduced_to_their_kind() {
        assert_eq!(
            error_kind(
                "error sending request for url (https://rpc.example/v3/SECRETKEY): connection refused"
            ),
            "connection refused"
        );
        assert_eq!(error_kind("operation timed out"), "timed out");
        assert_eq!(
            error_kind("something else at https://x/KEY"),
            "transport error"
        );
    }

    #[tokio::test]
    async fn a_dead_chain_endpoint_is_reported_down_without_its_url() {
        // Port 9 (discard) on loopback has no listener here.
        let dep = Dependency::chain("http://127.0.0.1:9/v3/SECRETKEY", 1).unwrap();
        let result = dep.check().await;
        assert!(!result.ok);
        let error = result.error.unwrap();
        assert!(!error.contains("SECRETKEY"), "{error}");
        assert_eq!(result.name, "chain");
    }
}
