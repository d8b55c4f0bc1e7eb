//! TLS to PostgreSQL.
//!
//! diesel-async connects in plain text; [`connect`] adds TLS (rustls) when the
//! database URL asks for it with libpq's query parameters:
//!
//! - no `sslmode`: plain TCP, as before (what the local development cluster
//!   uses);
//! - `sslmode=disable`: plain TCP;
//! - `sslmode=prefer`: TLS when the server offers it, plain TCP when it does
//!   not;
//! - `sslmode=require`, `sslmode=verify-full`: TLS or no connection; the
//!   certificate chain and the host name are checked;
//! - `sslmode=verify-ca`: TLS or no connection; the chain is checked, the host
//!   name is not. It needs `sslrootcert`: against the public OS roots a check
//!   that ignores the name would accept any site's certificate.
//! - `sslrootcert=<path>`: PEM file of the CA(s) to trust instead of the OS
//!   root store; `sslrootcert=system` names the OS store explicitly.
//!
//! Deskgate is stricter than libpq: whenever TLS is used the server certificate
//! is verified. libpq's `require` and `prefer` encrypt but accept any
//! certificate, which a man in the middle can present; here `require` behaves
//! like libpq's `verify-full`, and `prefer` refuses a server whose certificate
//! does not verify rather than falling back. `allow` (plain text first) and
//! client certificates (`sslcert`, `sslkey`) are not supported.
//!
//! Error messages name the server (host and port) and the problem, never the
//! URL itself: it carries the password.
//!
//! Its parts: this file holds [`check`], [`connect`] and [`ConnectError`],
//! with the mapping of tokio-postgres and rustls failures to it; `params.rs`
//! reads the URL's TLS parameters ([`SslMode`], `sslrootcert`);
//! `trust.rs` builds the rustls connector and the `verify-ca` verifier. Both
//! children are private; [`SslMode`] is re-exported here.

mod params;
mod trust;

pub use params::SslMode;

use std::error::Error as StdError;
use std::path::PathBuf;

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::CertificateError;
use tokio_postgres::config::SslMode as PgSslMode;

use crate::platform::telemetry::error_chain;
use params::{Roots, Transport, parse, pg_config, server_of};
use trust::connector;

/// Why no connection was made. No variant holds the URL or the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not of the `postgres://` form.
    #[error("the database URL is not a postgres:// or postgresql:// URL")]
    NotAUrl,
    /// A parameter deskgate reads appears twice.
    #[error("the database URL sets {0} more than once")]
    Repeated(&'static str),
    /// A query parameter is not valid percent-encoded UTF-8.
    #[error("the database URL has a query parameter that is not valid percent-encoded UTF-8")]
    BadEncoding,
    /// `sslmode` has a value libpq does not know.
    #[error(
        "unknown sslmode `{0}` in the database URL: use disable, prefer, require, verify-ca or verify-full"
    )]
    UnknownSslMode(String),
    /// `sslmode=allow`.
    #[error(
        "sslmode=allow (plain text first) is not supported: use disable, prefer, require, verify-ca or verify-full"
    )]
    AllowUnsupported,
    /// A libpq TLS parameter deskgate does not implement.
    #[error(
        "{0} in the database URL is not supported: deskgate verifies the server with sslmode and sslrootcert only, and has no client certificates"
    )]
    Unsupported(String),
    /// `sslrootcert` without TLS: almost surely a forgotten `sslmode`.
    #[error("sslrootcert is set but {0}: add sslmode=verify-full (or require) to connect with TLS")]
    RootCertWithoutTls(&'static str),
    /// `sslmode=verify-ca` against the OS roots.
    #[error(
        "sslmode=verify-ca needs sslrootcert=<CA file>: against the OS root store a check that ignores the host name accepts any site's certificate; use sslmode=verify-full"
    )]
    VerifyCaNeedsRootCert,
    /// tokio-postgres refused the URL.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The `sslrootcert` file could not be read.
    #[error("cannot read sslrootcert {}: {source}", path.display())]
    ReadRootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `sslrootcert` file holds nothing usable.
    #[error("sslrootcert {}: {reason}", path.display())]
    BadRootCert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The OS root store is empty or unreadable.
    #[error(
        "no trusted root certificates in the OS store ({0}); set sslrootcert=<CA file> in the database URL"
    )]
    NoSystemRoots(String),
    /// rustls could not be configured.
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    /// The server answered the TLS request with "no".
    #[error("the server at {server} does not support TLS, but sslmode={mode} needs it")]
    ServerWithoutTls {
        /// Host and port.
        server: String,
        /// The mode asked for.
        mode: SslMode,
    },
    /// The server's certificate did not verify.
    #[error(
        "the certificate of the server at {server} is not trusted (checked against {roots}): {reason}"
    )]
    UntrustedCertificate {
        /// Host and port.
        server: String,
        /// What it was checked against.
        roots: String,
        /// rustls's verdict.
        reason: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with the server at {server} failed: {reason}")]
    Handshake {
        /// Host and port.
        server: String,
        /// Why.
        reason: String,
    },
    /// Connecting or logging in failed.
    #[error("PostgreSQL at {server}: {reason}")]
    Connect {
        /// Host and port.
        server: String,
        /// Why.
        reason: String,
    },
    /// diesel-async could not set the connection up.
    #[error(transparent)]
    Setup(#[from] ConnectionError),
}

impl From<ConnectError> for ConnectionError {
    fn from(err: ConnectError) -> Self {
        match err {
            ConnectError::Setup(inner) => inner,
            ConnectError::NotAUrl
            | ConnectError::Repeated(_)
            | ConnectError::BadEncoding
            | ConnectError::UnknownSslMode(_)
            | ConnectError::AllowUnsupported
            | ConnectError::Unsupported(_)
            | ConnectError::RootCertWithoutTls(_)
            | ConnectError::VerifyCaNeedsRootCert
            | ConnectError::InvalidUrl(_) => ConnectionError::InvalidConnectionUrl(err.to_string()),
            other => ConnectionError::BadConnection(other.to_string()),
        }
    }
}

/// Checks the URL's form and TLS parameters without connecting, so that a
/// misconfiguration stops start-up instead of surfacing at the first query.
pub fn check(url: &str) -> Result<(), ConnectError> {
    let parsed = parse(url)?;
    pg_config(&parsed)?;
    Ok(())
}

/// Opens one connection, with TLS when the URL's `sslmode` asks for it.
pub async fn connect(url: &str) -> Result<AsyncPgConnection, ConnectError> {
    let parsed = parse(url)?;
    let mut config = pg_config(&parsed)?;
    let server = server_of(&config);
    match &parsed.transport {
        Transport::Plain => {
            config.ssl_mode(PgSslMode::Disable);
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| connect_error(&e, &server, None))?;
            Ok(AsyncPgConnection::try_from_client_and_connection(client, connection).await?)
        }
        Transport::Tls { mode, roots } => {
            let tls = connector(*mode, roots)?;
            config.ssl_mode(match mode {
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            });
            tracing::debug!(%server, sslmode = %mode, %roots, "connecting to PostgreSQL with TLS");
            let (client, connection) = config
                .connect(tls)
                .await
                .map_err(|e| connect_error(&e, &server, Some((*mode, roots))))?;
            Ok(AsyncPgConnection::try_from_client_and_connection(client, connection).await?)
        }
    }
}

/// Turns a tokio-postgres failure into a message that says what went wrong.
/// tokio-postgres's own `Display` stops at "error performing TLS handshake";
/// the reason is in its sources.
fn connect_error(
    err: &tokio_postgres::Error,
    server: &str,
    tls: Option<(SslMode, &Roots)>,
) -> ConnectError {
    let server = server.to_string();
    if let Some((mode, roots)) = tls {
        if let Some(rustls_err) = find_rustls_error(err) {
            return match rustls_err {
                rustls::Error::InvalidCertificate(cert_err) => ConnectError::UntrustedCertificate {
                    server,
                    roots: roots.to_string(),
                    reason: describe_certificate_error(cert_err),
                },
                other => ConnectError::Handshake {
                    server,
                    reason: other.to_string(),
                },
            };
        }
        let reason = error_chain(err);
        // tokio-postgres reports a refused SSLRequest only as this text.
        if reason.contains("server does not support TLS") {
            return ConnectError::ServerWithoutTls { server, mode };
        }
        if reason.starts_with("error performing TLS handshake") {
            return ConnectError::Handshake { server, reason };
        }
        return ConnectError::Connect { server, reason };
    }
    ConnectError::Connect {
        server,
        reason: error_chain(err),
    }
}

fn describe_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "it is not signed by a trusted certificate authority (UnknownIssuer)".to_string()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("it is not valid for the host name connected to ({err})")
        }
        other => format!("invalid certificate: {other}"),
    }
}

/// The rustls error somewhere in `err`'s sources; tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips it, hence the `get_ref`.
fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_become_invalid_url_connection_errors() {
        let err = ConnectionError::from(ConnectError::UnknownSslMode("x".into()));
        assert!(
            matches!(err, ConnectionError::InvalidConnectionUrl(_)),
            "{err:?}"
        );
        let err = ConnectionError::from(ConnectError::ServerWithoutTls {
            server: "h:1".into(),
            mode: SslMode::Require,
        });
        assert_eq!(
            err.to_string(),
            "the server at h:1 does not support TLS, but sslmode=require needs it"
        );
    }
}
