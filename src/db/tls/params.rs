//! The database URL's TLS parameters: `sslmode` and `sslrootcert` are split
//! off and read here (see the parent module for what each value means);
//! every other parameter is left exactly as written for tokio-postgres.
//!
//! Invariants: a parameter deskgate reads may appear once; a contradictory
//! or weak combination (`sslrootcert` without TLS, `verify-ca` against the
//! OS roots) is refused; the URL, which carries the password, is never shown
//! by `Debug` or in an error.

use std::fmt;
use std::path::PathBuf;

use tokio_postgres::config::Host;

use super::ConnectError;
use crate::platform::telemetry::error_chain;

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
pub(super) enum Roots {
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
pub(super) enum Transport {
    Plain,
    Tls { mode: SslMode, roots: Roots },
}

/// A database URL split into what tokio-postgres parses itself and the TLS
/// settings that deskgate handles.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct ParsedUrl {
    /// The URL without `sslmode` and `sslrootcert`; it carries the password.
    pub(super) url: String,
    pub(super) transport: Transport,
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

/// Splits `sslmode` and `sslrootcert` off the query string, leaving every
/// other parameter exactly as written (tokio-postgres decodes them itself).
pub(super) fn parse(url: &str) -> Result<ParsedUrl, ConnectError> {
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

pub(super) fn pg_config(parsed: &ParsedUrl) -> Result<tokio_postgres::Config, ConnectError> {
    let mut config = parsed
        .url
        .parse::<tokio_postgres::Config>()
        .map_err(|e| ConnectError::InvalidUrl(error_chain(&e)))?;
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
pub(super) fn server_of(config: &tokio_postgres::Config) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tls::check;

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
}
