//! The parse helpers the parts share: [`parse_key`], which reads one setting
//! (or its default) and records a problem naming it when it does not parse,
//! and the value parsers more than one part uses.
//!
//! Invariants: a parser returns the message of a [`Problem`] — what is wrong
//! and how to fix it — never the variable name (`parse_key` adds it) and
//! never a secret; values are trimmed before parsing, secrets are not.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::Problem;
use super::keys::key_info;
use super::raw::RawSettings;
use crate::platform::secret::Secret;

/// Parses one setting with `parse`, falling back to its default; records a
/// problem (and returns `None`) when the value does not parse.
pub(super) fn parse_key<T>(
    raw: &RawSettings,
    name: &'static str,
    problems: &mut Vec<Problem>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    let key = key_info(name).expect("every parsed key is in KEYS");
    let text = raw.get(name).or(key.default)?;
    match parse(text.trim()) {
        Ok(value) => Some(value),
        Err(why) => {
            problems.push(Problem::new(name, why));
            None
        }
    }
}

/// `true`/`false` and the usual spellings (1/0, yes/no, on/off); empty is false.
pub(super) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("`{text}` is not a boolean: use true or false")),
    }
}

/// An IP address with a port (no host names: nothing is resolved here).
pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not an IP address with a port: use for example 127.0.0.1:8080 or [::1]:8080")
    })
}

/// A whole number of seconds above 0.
pub(super) fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a whole number of seconds above 0")),
        Ok(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// A whole number.
pub(super) fn parse_u64(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a whole number"))
}

/// An `http://` or `https://` URL.
pub(super) fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "URL scheme `{other}` is not supported: use http:// or https://"
        )),
    }
}

/// The non-empty, trimmed items of a comma-separated list.
pub(super) fn comma_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A secret setting exactly as given: unlike other values it is not trimmed.
pub(super) fn secret(raw: &RawSettings, name: &'static str) -> Option<Secret> {
    raw.get(name).map(Secret::new)
}
