//! The server part: how the process meets the network and the operator —
//! where it listens, the URL browsers use, TLS, the proxies in front of it,
//! the metrics listener, the OpenAPI document, the log format and how long
//! open requests get at shutdown.
//!
//! Invariants: `public_url` is always set (it defaults to `http(s)://BIND`);
//! `tls` is both files or neither — half a pair is a problem, never a
//! silent plain-HTTP start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use super::Problem;
use super::parse::{comma_list, parse_bool, parse_http_url, parse_key, parse_socket_addr};
use super::raw::RawSettings;
use crate::platform::server::TlsFiles;
use crate::platform::telemetry::LogFormat;

/// Where and how the gate serves HTTP.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address the gate listens on.
    pub bind: SocketAddr,
    /// Whether a non-loopback `bind` is allowed.
    pub allow_public_bind: bool,
    /// URL browsers use to reach the gate.
    pub public_url: Url,
    /// HTTPS files; `Some` means the production posture.
    pub tls: Option<TlsFiles>,
    /// Prometheus listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Proxies whose X-Forwarded-For is trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve the OpenAPI document.
    pub docs_enabled: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Grace period for open requests at shutdown.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Parses the server settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let p = &mut *problems;
        let bind = parse_key(raw, "BIND", p, parse_socket_addr);
        let allow_public_bind = parse_key(raw, "ALLOW_PUBLIC_BIND", p, parse_bool);
        let tls_cert = parse_key(raw, "TLS_CERT", p, |t| Ok(PathBuf::from(t)));
        let tls_key = parse_key(raw, "TLS_KEY", p, |t| Ok(PathBuf::from(t)));
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                p.push(Problem::new(
                    "TLS_KEY",
                    "is unset but DESKGATE_TLS_CERT is set: set both (HTTPS) or neither",
                ));
                None
            }
            (None, Some(_)) => {
                p.push(Problem::new(
                    "TLS_CERT",
                    "is unset but DESKGATE_TLS_KEY is set: set both (HTTPS) or neither",
                ));
                None
            }
        };
        let public_url = match raw.get("PUBLIC_URL") {
            Some(_) => parse_key(raw, "PUBLIC_URL", p, parse_http_url),
            None => bind.map(|addr| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                Url::parse(&format!("{scheme}://{addr}")).expect("a socket address makes a URL")
            }),
        };
        let metrics_addr = parse_key(raw, "METRICS_ADDR", p, parse_socket_addr);
        let trusted_proxies = parse_key(raw, "TRUSTED_PROXIES", p, |t| {
            comma_list(t)
                .map(|cidr| {
                    cidr.parse::<IpNet>()
                        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            format!("`{cidr}` is not an IP address or CIDR such as 10.0.0.0/8")
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
        let docs_enabled = parse_key(raw, "DOCS_ENABLED", p, parse_bool);
        let log_format = parse_key(raw, "LOG_FORMAT", p, |t| match t {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{t}` is not a log format: use text or json")),
        });
        let shutdown_grace = parse_key(raw, "SHUTDOWN_GRACE_SECONDS", p, |t| {
            match t.parse::<u64>() {
                Ok(secs) if secs <= 60 => Ok(Duration::from_secs(secs)),
                _ => Err(format!("`{t}` is not a number of seconds from 0 to 60")),
            }
        });

        if problems.len() > before {
            return None;
        }
        // Every `parse_key` above with a default returned `Some` when no
        // problem was recorded.
        Some(Self {
            bind: bind?,
            allow_public_bind: allow_public_bind?,
            public_url: public_url?,
            tls,
            metrics_addr,
            trusted_proxies,
            docs_enabled: docs_enabled?,
            log_format: log_format?,
            shutdown_grace: shutdown_grace?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{env, variables};
    use crate::config::{Role, load};

    #[test]
    fn half_a_tls_pair_is_a_problem() {
        let loaded = load(None, env(&[("DESKGATE_TLS_CERT", "/c.pem")]), Role::Serve);
        assert_eq!(variables(&loaded.problems), ["DESKGATE_TLS_KEY"]);
    }
}
