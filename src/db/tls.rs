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

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values that deskgate supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS (verified) when the server offers it, else plain TCP.
    Prefer,
    /// TLS, chain and host name verified.
    Require,
    /// TLS, chain verified, host name not.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, ConnectError> {
        match value {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            "allow" => Err(ConnectError::AllowUnsupported),
            other => Err(ConnectError::UnknownSslMode(other.to_string())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the certificates trusted to sign the server's come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// The OS root store (rustls-native-certs).
    System,
    /// A PEM file (`sslrootcert=<path>`).
    File(PathBuf),
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("the OS root store"),
            Self::File(path) => write!(f, "sslrootcert {}", path.display()),
        }
    }
}

/// How to reach the server, once the URL's TLS parameters are read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls { mode: SslMode, roots: Roots },
}

/// A database URL split into what tokio-postgres parses itself and the TLS
/// settings that deskgate handles.
#[derive(Clone, PartialEq, Eq)]
struct ParsedUrl {
    /// The URL without `sslmode` and `sslrootcert`; it carries the password.
    url: String,
    transport: Transport,
}

// Hand-written so that the URL, and with it the password, never reaches a log.
impl fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedUrl")
            .field("url", &"<redacted>")
            .field("transport", &self.transport)
            .finish()
    }
}

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

/// libpq TLS parameters that tokio-postgres does not know and deskgate does
/// not implement; named in the error rather than reported as "unknown option".
const UNSUPPORTED_PARAMS: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
    "requiressl",
];

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

/// Splits `sslmode` and `sslrootcert` off the query string, leaving every
/// other parameter exactly as written (tokio-postgres decodes them itself).
fn parse(url: &str) -> Result<ParsedUrl, ConnectError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConnectError::NotAUrl);
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_cert = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(raw_key)?;
        match key.as_str() {
            "sslmode" => {
                if mode.is_some() {
                    return Err(ConnectError::Repeated("sslmode"));
                }
                mode = Some(SslMode::parse(&percent_decode(raw_value)?)?);
            }
            "sslrootcert" => {
                if root_cert.is_some() {
                    return Err(ConnectError::Repeated("sslrootcert"));
                }
                let value = percent_decode(raw_value)?;
                root_cert = Some(if value == "system" {
                    Roots::System
                } else {
                    Roots::File(PathBuf::from(value))
                });
            }
            unsupported if UNSUPPORTED_PARAMS.contains(&unsupported) => {
                return Err(ConnectError::Unsupported(key));
            }
            _ => kept.push(pair),
        }
    }
    let transport = match (mode, root_cert) {
        (None, Some(_)) => {
            return Err(ConnectError::RootCertWithoutTls("no sslmode is given"));
        }
        (Some(SslMode::Disable), Some(_)) => {
            return Err(ConnectError::RootCertWithoutTls(
                "sslmode=disable turns TLS off",
            ));
        }
        (None | Some(SslMode::Disable), None) => Transport::Plain,
        (Some(SslMode::VerifyCa), None | Some(Roots::System)) => {
            return Err(ConnectError::VerifyCaNeedsRootCert);
        }
        (Some(mode), roots) => Transport::Tls {
            mode,
            roots: roots.unwrap_or(Roots::System),
        },
    };
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(ParsedUrl { url, transport })
}

/// Percent-decodes one query component (RFC 3986: `+` stays `+`, as in libpq).
fn percent_decode(raw: &str) -> Result<String, ConnectError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or(ConnectError::BadEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ConnectError::BadEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConnectError::BadEncoding)
}

fn pg_config(parsed: &ParsedUrl) -> Result<tokio_postgres::Config, ConnectError> {
    let mut config = parsed
        .url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| ConnectError::InvalidUrl(chain(&e)))?;
    // A session left idle inside a transaction (its client gone mid-way)
    // would hold its row locks forever; the server ends it after a minute.
    // An operator's own setting in `options` wins.
    let mut options = config.get_options().unwrap_or_default().to_string();
    if !options.contains("idle_in_transaction_session_timeout") {
        options.push_str(" -c idle_in_transaction_session_timeout=60000");
    }
    config.options(options.trim());
    Ok(config)
}

/// `host:port` of every server the URL names, for messages.
fn server_of(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = if config.get_hosts().is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .map(ToString::to_string)
            .collect()
    } else {
        config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect()
    };
    let ports = config.get_ports();
    hosts
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The rustls connector for `mode` trusting `roots`.
fn connector(mode: SslMode, roots: &Roots) -> Result<MakeRustlsConnect, ConnectError> {
    ensure_crypto_provider();
    match roots {
        Roots::System => system_connector(),
        Roots::File(path) => {
            let store = Arc::new(load_roots(path)?);
            let config = if mode == SslMode::VerifyCa {
                let verifier = WebPkiServerVerifier::builder(store)
                    .build()
                    .map_err(|e| ConnectError::TlsSetup(e.to_string()))?;
                ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                    .with_no_client_auth()
            } else {
                ClientConfig::builder()
                    .with_root_certificates(store)
                    .with_no_client_auth()
            };
            Ok(MakeRustlsConnect::new(config))
        }
    }
}

/// `main` installs aws-lc-rs as the process's provider; tests and tools that
/// do not start through `main` get the same one here.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// The OS roots, loaded once per process: the store holds hundreds of files
/// and the pool opens connections repeatedly.
fn system_connector() -> Result<MakeRustlsConnect, ConnectError> {
    static SYSTEM: OnceLock<Result<MakeRustlsConnect, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| match MakeRustlsConnect::with_native_certs() {
            Ok((tls, errors)) => {
                for error in errors {
                    tracing::debug!(%error, "skipped an unreadable OS root certificate");
                }
                Ok(tls)
            }
            Err(errors) if errors.is_empty() => Err("the store is empty".to_string()),
            Err(errors) => Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")),
        })
        .clone()
        .map_err(ConnectError::NoSystemRoots)
}

/// Read on every connection, so that a rotated CA file takes effect without
/// a restart.
fn load_roots(path: &Path) -> Result<RootCertStore, ConnectError> {
    let pem = std::fs::read(path).map_err(|source| ConnectError::ReadRootCert {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ConnectError::BadRootCert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".to_string()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| bad(format!("a certificate cannot be a trust anchor ({e})")))?;
    }
    Ok(store)
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the name in
/// the certificate may differ from the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The webpki verifier checks the name only once the chain has
            // verified, so a name error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
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
        let reason = chain(err);
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
        reason: chain(err),
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

/// An error and its sources, joined with ": ".
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "pw-SECRET-7f3a";

    fn url(query: &str) -> String {
        format!("postgres://deskgate:{PASSWORD}@db.internal:5433/deskgate{query}")
    }

    fn parse_err(query: &str) -> String {
        let err = parse(&url(query)).expect_err("must be refused");
        let text = err.to_string();
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
        text
    }

    #[test]
    fn no_sslmode_is_plain_and_leaves_the_url_alone() {
        let parsed = parse(&url("")).unwrap();
        assert_eq!(parsed.transport, Transport::Plain);
        assert_eq!(parsed.url, url(""));
        let parsed = parse(&url("?sslmode=disable")).unwrap();
        assert_eq!(parsed.transport, Transport::Plain);
        assert_eq!(parsed.url, url(""));
    }

    #[test]
    fn every_supported_mode_parses() {
        for (value, mode) in [
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let parsed = parse(&url(&format!("?sslmode={value}"))).unwrap();
            assert_eq!(
                parsed.transport,
                Transport::Tls {
                    mode,
                    roots: Roots::System
                },
                "{value}"
            );
        }
        let parsed = parse(&url("?sslmode=verify-ca&sslrootcert=/etc/ca.pem")).unwrap();
        assert_eq!(
            parsed.transport,
            Transport::Tls {
                mode: SslMode::VerifyCa,
                roots: Roots::File("/etc/ca.pem".into())
            }
        );
    }

    #[test]
    fn other_parameters_are_kept_exactly_as_written() {
        let parsed = parse(&url(
            "?application_name=a%20b+c&sslmode=require&connect_timeout=5&sslrootcert=%2Fsrv%2Fmy%20ca.pem",
        ))
        .unwrap();
        assert_eq!(
            parsed.url,
            url("?application_name=a%20b+c&connect_timeout=5")
        );
        assert_eq!(
            parsed.transport,
            Transport::Tls {
                mode: SslMode::Require,
                roots: Roots::File("/srv/my ca.pem".into())
            }
        );
        let config = pg_config(&parsed).unwrap();
        assert_eq!(config.get_application_name(), Some("a b+c"));
        assert_eq!(server_of(&config), "db.internal:5433");
        assert_eq!(
            parse(&url("?sslmode=require&sslrootcert=system"))
                .unwrap()
                .transport,
            Transport::Tls {
                mode: SslMode::Require,
                roots: Roots::System
            }
        );
    }

    #[test]
    fn an_unknown_sslmode_names_the_value_and_the_choices() {
        let text = parse_err("?sslmode=verify_full");
        assert!(text.contains("unknown sslmode `verify_full`"), "{text}");
        assert!(text.contains("verify-full"), "{text}");
        let text = parse_err("?sslmode=allow");
        assert!(text.contains("sslmode=allow"), "{text}");
        assert!(text.contains("not supported"), "{text}");
    }

    #[test]
    fn contradictory_or_weak_settings_are_refused() {
        let text = parse_err("?sslrootcert=/etc/ca.pem");
        assert!(text.contains("sslrootcert is set but no sslmode"), "{text}");
        let text = parse_err("?sslmode=disable&sslrootcert=/etc/ca.pem");
        assert!(text.contains("sslmode=disable"), "{text}");
        let text = parse_err("?sslmode=verify-ca");
        assert!(text.contains("verify-ca needs sslrootcert"), "{text}");
        let text = parse_err("?sslmode=verify-ca&sslrootcert=system");
        assert!(text.contains("verify-ca needs sslrootcert"), "{text}");
        let text = parse_err("?sslmode=require&sslmode=disable");
        assert!(text.contains("sslmode more than once"), "{text}");
        let text = parse_err("?sslmode=require&sslcert=/etc/client.pem");
        assert!(
            text.starts_with("sslcert in the database URL is not supported"),
            "{text}"
        );
        let text = parse_err("?sslmode=%ZZ");
        assert!(text.contains("percent-encoded"), "{text}");
    }

    #[test]
    fn other_url_errors_never_show_the_password() {
        let err = parse(&format!("mysql://u:{PASSWORD}@h/db")).unwrap_err();
        assert!(err.to_string().contains("not a postgres://"), "{err}");
        assert!(!err.to_string().contains(PASSWORD));
        let err = check(&url("?sslmode=require&bogus_option=1")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown option `bogus_option`"), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!format!("{err:?}").contains(PASSWORD));
        let parsed = parse(&url("?sslmode=require")).unwrap();
        assert!(!format!("{parsed:?}").contains(PASSWORD));
    }

    #[test]
    fn a_missing_or_empty_root_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let Err(err) = connector(SslMode::Require, &Roots::File(missing.clone())) else {
            panic!("a missing sslrootcert must be refused");
        };
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot read sslrootcert {}", missing.display())),
            "{text}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let Err(err) = connector(SslMode::Require, &Roots::File(empty)) else {
            panic!("an empty sslrootcert must be refused");
        };
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }

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
