//! EIP-4361 (Sign-In with Ethereum) messages: build and parse.
//!
//! [`SiweMessage::parse`] follows the EIP-4361 ABNF strictly: every line in
//! its place, exact prefixes, optional lines only in their order, nothing
//! after the last one, LF line ends only. On top of the grammar it bounds
//! every field, so a hostile message costs little to reject:
//!
//! - the whole message at most [`MAX_MESSAGE_BYTES`], printable ASCII and LF
//!   only (every field the grammar allows is ASCII);
//! - domain ≤ [`MAX_DOMAIN_BYTES`], statement ≤ [`MAX_STATEMENT_BYTES`],
//!   URIs ≤ [`MAX_URI_BYTES`], at most [`MAX_RESOURCES`] resources;
//! - the address must carry its EIP-55 checksum;
//! - the nonce is 8 to 64 letters and digits; the chain id has no leading
//!   zeros, so one chain id has one spelling.
//!
//! Two readings of the grammar are made stricter on purpose, because the
//! looser form is ambiguous: an empty statement is refused (it would render
//! like "no statement"), and so is a `Resources:` line with no resource.
//!
//! Timestamps keep the text they were parsed from, so for every accepted
//! text `parse(text)?.to_string() == text`: what is verified is exactly what
//! was signed.
//!
//! The unit tests, property tests included, are in `tests.rs` beside this
//! file.

use std::fmt;

use alloy::primitives::Address;
use chrono::{DateTime, SecondsFormat, Utc};

/// Longest message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest domain (RFC 3986 authority) accepted, in bytes.
pub const MAX_DOMAIN_BYTES: usize = 255;
/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 512;
/// Longest URI (the `URI:` line or one resource) accepted, in bytes.
pub const MAX_URI_BYTES: usize = 512;
/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 255;
/// Most resources accepted.
pub const MAX_RESOURCES: usize = 16;
/// Fewest characters in a nonce (the grammar's minimum).
pub const MIN_NONCE_CHARS: usize = 8;
/// Most characters in a nonce.
pub const MAX_NONCE_CHARS: usize = 64;
/// Longest timestamp accepted, in bytes (RFC 3339 with nanoseconds and an
/// offset is 35).
const MAX_TIMESTAMP_BYTES: usize = 64;
/// Longest scheme accepted, in bytes.
const MAX_SCHEME_BYTES: usize = 64;

/// What follows the (optional scheme and) domain on the first line.
const HEADER_SUFFIX: &str = " wants you to sign in with your Ethereum account:";

const URI_PREFIX: &str = "URI: ";
const VERSION_PREFIX: &str = "Version: ";
const CHAIN_ID_PREFIX: &str = "Chain ID: ";
const NONCE_PREFIX: &str = "Nonce: ";
const ISSUED_AT_PREFIX: &str = "Issued At: ";
const EXPIRATION_TIME_PREFIX: &str = "Expiration Time: ";
const NOT_BEFORE_PREFIX: &str = "Not Before: ";
const REQUEST_ID_PREFIX: &str = "Request ID: ";
const RESOURCES_LINE: &str = "Resources:";
const RESOURCE_PREFIX: &str = "- ";

/// Why a text is not an acceptable EIP-4361 message. The variants name the
/// rule broken and the line, never the offending text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SiweError {
    /// The message is over [`MAX_MESSAGE_BYTES`].
    #[error("the message is longer than {max} bytes")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// A byte other than printable ASCII or LF (CR, tab, non-ASCII ...).
    #[error("the message holds a character other than printable ASCII or LF at byte {offset}")]
    InvalidCharacter {
        /// Byte offset of the first such character.
        offset: usize,
    },
    /// The first line does not end with the EIP-4361 sentence.
    #[error("line 1 must be `[scheme://]domain{HEADER_SUFFIX}`")]
    BadHeader,
    /// The scheme is not an RFC 3986 scheme.
    #[error("the scheme is not an RFC 3986 scheme")]
    InvalidScheme,
    /// The domain is empty or not an RFC 3986 authority.
    #[error("the domain is not an RFC 3986 authority")]
    InvalidDomain,
    /// The address is not `0x` and 40 hexadecimal digits.
    #[error("the address is not 0x followed by 40 hexadecimal digits")]
    InvalidAddress,
    /// The address is hexadecimal but not in its EIP-55 mixed-case form.
    #[error("the address is not EIP-55 checksummed")]
    AddressChecksum,
    /// A line that must be empty is not.
    #[error("line {line} must be empty")]
    ExpectedBlankLine {
        /// 1-based line number.
        line: usize,
    },
    /// The statement is empty or holds a character the grammar excludes.
    #[error(
        "the statement must be non-empty and hold only RFC 3986 reserved or unreserved characters and spaces"
    )]
    InvalidStatement,
    /// A line does not start with the prefix its position requires.
    #[error("line {line} must start with `{prefix}`")]
    ExpectedField {
        /// 1-based line number.
        line: usize,
        /// The prefix required there.
        prefix: &'static str,
    },
    /// The message ends where a required line should be.
    #[error("the message ends before the required `{expected}` line")]
    Truncated {
        /// The line that is missing.
        expected: &'static str,
    },
    /// A field is over its length limit.
    #[error("the {field} is longer than {max} bytes")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// The `URI:` value or a resource is not an RFC 3986 URI.
    #[error("the {field} is not an RFC 3986 URI")]
    InvalidUri {
        /// `uri` or `resource`.
        field: &'static str,
    },
    /// The version is not `1`.
    #[error("the version is not 1")]
    UnsupportedVersion,
    /// The chain id is not a canonical decimal `u64`.
    #[error("the chain id is not a decimal number without leading zeros that fits 64 bits")]
    InvalidChainId,
    /// The nonce is not 8 to 64 ASCII letters and digits.
    #[error("the nonce is not {MIN_NONCE_CHARS} to {MAX_NONCE_CHARS} letters and digits")]
    InvalidNonce,
    /// A timestamp is not an RFC 3339 date-time.
    #[error("the {field} is not an RFC 3339 date-time")]
    InvalidTimestamp {
        /// Which timestamp.
        field: &'static str,
    },
    /// The request id holds a character outside RFC 3986 `pchar`.
    #[error("the request id holds a character outside RFC 3986 pchar")]
    InvalidRequestId,
    /// More than [`MAX_RESOURCES`] resources.
    #[error("the message lists more than {max} resources")]
    TooManyResources {
        /// The limit.
        max: usize,
    },
    /// A `Resources:` line followed by no resource.
    #[error("`Resources:` is followed by no resource")]
    EmptyResources,
    /// A line where the message should have ended or where no optional line
    /// of that kind may stand (a repeated or out-of-order field, a trailing
    /// newline).
    #[error("line {line} is not expected there")]
    UnexpectedLine {
        /// 1-based line number.
        line: usize,
    },
    /// A built message does not parse back to itself (see
    /// [`SiweMessage::validate`]).
    #[error("the message does not read back as itself")]
    NotCanonical,
}

/// The message version; EIP-4361 defines only `1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Version {
    /// Version `1`.
    #[default]
    V1,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("1")
    }
}

/// An RFC 3339 date-time together with the exact text it was written as, so
/// a parsed message renders back byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timestamp {
    text: String,
    instant: DateTime<Utc>,
}

impl Timestamp {
    /// Parses RFC 3339 text (`T` between date and time; the `t`, `z`
    /// lower-case forms RFC 3339 allows are accepted too).
    pub fn parse(text: &str) -> Option<Self> {
        // chrono also takes a space for the `T`; the grammar does not.
        if text.len() > MAX_TIMESTAMP_BYTES || !matches!(text.as_bytes().get(10), Some(b'T' | b't'))
        {
            return None;
        }
        let instant = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
        Some(Self {
            text: text.to_string(),
            instant,
        })
    }

    /// The instant.
    pub fn instant(&self) -> DateTime<Utc> {
        self.instant
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl From<DateTime<Utc>> for Timestamp {
    /// Writes the instant as RFC 3339 in UTC (`Z`), with as many fractional
    /// digits as it needs.
    fn from(instant: DateTime<Utc>) -> Self {
        Self {
            text: instant.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            instant,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An EIP-4361 message. Build one and render it with `to_string()`, or read
/// one with [`SiweMessage::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiweMessage {
    /// Scheme of the requesting origin (`https`); absent means `https`.
    pub scheme: Option<String>,
    /// RFC 3986 authority of the requesting origin (`desk.example.org:8443`).
    pub domain: String,
    /// The signing account; rendered in its EIP-55 form.
    pub address: Address,
    /// Human-readable assertion; never contains a line break.
    pub statement: Option<String>,
    /// RFC 3986 URI of the resource being signed in to.
    pub uri: String,
    /// Message version.
    pub version: Version,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Server-issued random nonce (letters and digits).
    pub nonce: String,
    /// When the message was made.
    pub issued_at: Timestamp,
    /// The message is void from this instant.
    pub expiration_time: Option<Timestamp>,
    /// The message is void before this instant.
    pub not_before: Option<Timestamp>,
    /// An identifier the relying party may use.
    pub request_id: Option<String>,
    /// RFC 3986 URIs the user asks to be authorised for.
    pub resources: Vec<String>,
}

impl fmt::Display for SiweMessage {
    /// Renders the exact EIP-4361 text that a wallet signs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = &self.scheme {
            write!(f, "{scheme}://")?;
        }
        writeln!(f, "{}{HEADER_SUFFIX}", self.domain)?;
        writeln!(f, "{}", self.address.to_checksum(None))?;
        writeln!(f)?;
        if let Some(statement) = &self.statement {
            writeln!(f, "{statement}")?;
        }
        writeln!(f)?;
        writeln!(f, "{URI_PREFIX}{}", self.uri)?;
        writeln!(f, "{VERSION_PREFIX}{}", self.version)?;
        writeln!(f, "{CHAIN_ID_PREFIX}{}", self.chain_id)?;
        writeln!(f, "{NONCE_PREFIX}{}", self.nonce)?;
        write!(f, "{ISSUED_AT_PREFIX}{}", self.issued_at)?;
        if let Some(at) = &self.expiration_time {
            write!(f, "\n{EXPIRATION_TIME_PREFIX}{at}")?;
        }
        if let Some(at) = &self.not_before {
            write!(f, "\n{NOT_BEFORE_PREFIX}{at}")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, "\n{REQUEST_ID_PREFIX}{id}")?;
        }
        if !self.resources.is_empty() {
            write!(f, "\n{RESOURCES_LINE}")?;
            for resource in &self.resources {
                write!(f, "\n{RESOURCE_PREFIX}{resource}")?;
            }
        }
        Ok(())
    }
}

/// The lines of a message, numbered from 1 for error messages.
struct Lines<'a> {
    inner: std::iter::Peekable<std::iter::Enumerate<std::str::Split<'a, char>>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            inner: text.split('\n').enumerate().peekable(),
        }
    }

    /// The next line and its number, or `Truncated` naming what was due.
    fn required(&mut self, expected: &'static str) -> Result<(usize, &'a str), SiweError> {
        self.inner
            .next()
            .map(|(i, line)| (i + 1, line))
            .ok_or(SiweError::Truncated { expected })
    }

    fn blank(&mut self) -> Result<(), SiweError> {
        match self.required("empty")? {
            (_, "") => Ok(()),
            (line, _) => Err(SiweError::ExpectedBlankLine { line }),
        }
    }

    /// The value of the next line, which must start with `prefix`.
    fn field(&mut self, prefix: &'static str) -> Result<&'a str, SiweError> {
        let (line, text) = self.required(prefix)?;
        text.strip_prefix(prefix)
            .ok_or(SiweError::ExpectedField { line, prefix })
    }

    /// The value of the next line if it starts with `prefix`; the line is
    /// left in place otherwise.
    fn optional(&mut self, prefix: &str) -> Option<&'a str> {
        let (_, text) = self.inner.peek()?;
        let value = text.strip_prefix(prefix)?;
        self.inner.next();
        Some(value)
    }

    /// Whether the next line is exactly `expected`; it is consumed if so.
    fn exact(&mut self, expected: &str) -> bool {
        self.inner.next_if(|(_, line)| *line == expected).is_some()
    }

    fn next_line(&mut self) -> Option<(usize, &'a str)> {
        self.inner.next().map(|(i, line)| (i + 1, line))
    }
}

impl SiweMessage {
    /// Parses an EIP-4361 message strictly (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, SiweError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(SiweError::TooLong {
                max: MAX_MESSAGE_BYTES,
            });
        }
        // Everything below may slice by byte offsets: ASCII makes that safe.
        if let Some(offset) = text
            .bytes()
            .position(|b| b != b'\n' && !(0x20..=0x7e).contains(&b))
        {
            return Err(SiweError::InvalidCharacter { offset });
        }
        let mut lines = Lines::new(text);

        let (_, header) = lines.required("domain")?;
        let origin = header
            .strip_suffix(HEADER_SUFFIX)
            .ok_or(SiweError::BadHeader)?;
        let (scheme, domain) = match origin.split_once("://") {
            Some((scheme, domain)) => (Some(scheme), domain),
            None => (None, origin),
        };
        if let Some(scheme) = scheme {
            check_scheme(scheme)?;
        }
        check_domain(domain)?;

        let (_, address) = lines.required("address")?;
        let address = parse_address(address)?;
        lines.blank()?;

        let (_, line) = lines.required("statement or empty")?;
        let statement = if line.is_empty() {
            None
        } else {
            check_statement(line)?;
            lines.blank()?;
            Some(line)
        };

        let uri = lines.field(URI_PREFIX)?;
        check_uri(uri, "uri")?;
        if lines.field(VERSION_PREFIX)? != "1" {
            return Err(SiweError::UnsupportedVersion);
        }
        let chain_id = parse_chain_id(lines.field(CHAIN_ID_PREFIX)?)?;
        let nonce = lines.field(NONCE_PREFIX)?;
        check_nonce(nonce)?;
        let issued_at = parse_timestamp(lines.field(ISSUED_AT_PREFIX)?, "issued-at time")?;

        let expiration_time = lines
            .optional(EXPIRATION_TIME_PREFIX)
            .map(|t| parse_timestamp(t, "expiration time"))
            .transpose()?;
        let not_before = lines
            .optional(NOT_BEFORE_PREFIX)
            .map(|t| parse_timestamp(t, "not-before time"))
            .transpose()?;
        let request_id = lines
            .optional(REQUEST_ID_PREFIX)
            .map(|id| check_request_id(id).map(|()| id))
            .transpose()?;

        let mut resources = Vec::new();
        if lines.exact(RESOURCES_LINE) {
            while let Some(resource) = lines.optional(RESOURCE_PREFIX) {
                if resources.len() == MAX_RESOURCES {
                    return Err(SiweError::TooManyResources { max: MAX_RESOURCES });
                }
                check_uri(resource, "resource")?;
                resources.push(resource.to_string());
            }
            if resources.is_empty() {
                return Err(SiweError::EmptyResources);
            }
        }

        if let Some((line, _)) = lines.next_line() {
            return Err(SiweError::UnexpectedLine { line });
        }

        Ok(Self {
            scheme: scheme.map(str::to_string),
            domain: domain.to_string(),
            address,
            statement: statement.map(str::to_string),
            uri: uri.to_string(),
            version: Version::V1,
            chain_id,
            nonce: nonce.to_string(),
            issued_at,
            expiration_time,
            not_before,
            request_id: request_id.map(str::to_string),
            resources,
        })
    }

    /// Checks that this message, as rendered, is one [`SiweMessage::parse`]
    /// accepts and reads back unchanged. Use it on messages built in code.
    pub fn validate(&self) -> Result<(), SiweError> {
        if Self::parse(&self.to_string())? == *self {
            Ok(())
        } else {
            Err(SiweError::NotCanonical)
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn is_gen_delim(b: u8) -> bool {
    matches!(b, b':' | b'/' | b'?' | b'#' | b'[' | b']' | b'@')
}

/// True when every `%` starts a `%XX` escape.
fn percent_escapes_ok(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || matches!(
                (bytes.get(i + 1), bytes.get(i + 2)),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()
            )
    })
}

fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn check_scheme(scheme: &str) -> Result<(), SiweError> {
    if scheme.len() <= MAX_SCHEME_BYTES && is_scheme(scheme) {
        Ok(())
    } else {
        Err(SiweError::InvalidScheme)
    }
}

/// RFC 3986 `authority = [ userinfo "@" ] host [ ":" port ]`, checked by its
/// character set, its `@`, and a numeric port.
fn check_domain(domain: &str) -> Result<(), SiweError> {
    if domain.len() > MAX_DOMAIN_BYTES {
        return Err(SiweError::FieldTooLong {
            field: "domain",
            max: MAX_DOMAIN_BYTES,
        });
    }
    let chars_ok = domain.bytes().all(|b| {
        is_unreserved(b) || is_sub_delim(b) || matches!(b, b'%' | b':' | b'@' | b'[' | b']')
    });
    if !chars_ok || !percent_escapes_ok(domain) || domain.matches('@').count() > 1 {
        return Err(SiweError::InvalidDomain);
    }
    let host_port = domain.rsplit_once('@').map_or(domain, |(_, hp)| hp);
    let (host, port) = if host_port.starts_with('[') {
        // IP literal: `[...]` then an optional `:port`.
        let Some(end) = host_port.find(']') else {
            return Err(SiweError::InvalidDomain);
        };
        let (host, rest) = host_port.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(SiweError::InvalidDomain),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') || !host.bytes().any(|b| matches!(b, b'[' | b']' | b':')));
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(SiweError::InvalidDomain)
    }
}

fn parse_address(text: &str) -> Result<Address, SiweError> {
    let hex = text.strip_prefix("0x").ok_or(SiweError::InvalidAddress)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SiweError::InvalidAddress);
    }
    Address::parse_checksummed(text, None).map_err(|_| SiweError::AddressChecksum)
}

/// `statement = *( reserved / unreserved / " " )`, non-empty (see the module
/// documentation).
fn check_statement(statement: &str) -> Result<(), SiweError> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(SiweError::FieldTooLong {
            field: "statement",
            max: MAX_STATEMENT_BYTES,
        });
    }
    let ok = !statement.is_empty()
        && statement
            .bytes()
            .all(|b| is_unreserved(b) || is_sub_delim(b) || is_gen_delim(b) || b == b' ');
    if ok {
        Ok(())
    } else {
        Err(SiweError::InvalidStatement)
    }
}

/// An RFC 3986 URI: a scheme, `:`, then only URI characters with well-formed
/// percent escapes.
fn check_uri(uri: &str, field: &'static str) -> Result<(), SiweError> {
    if uri.len() > MAX_URI_BYTES {
        return Err(SiweError::FieldTooLong {
            field,
            max: MAX_URI_BYTES,
        });
    }
    let scheme_ok = uri
        .split_once(':')
        .is_some_and(|(scheme, _)| is_scheme(scheme));
    let chars_ok = uri
        .bytes()
        .all(|b| is_unreserved(b) || is_sub_delim(b) || is_gen_delim(b) || b == b'%');
    if scheme_ok && chars_ok && percent_escapes_ok(uri) {
        Ok(())
    } else {
        Err(SiweError::InvalidUri { field })
    }
}

fn parse_chain_id(text: &str) -> Result<u64, SiweError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(SiweError::InvalidChainId);
    }
    text.parse().map_err(|_| SiweError::InvalidChainId)
}

fn check_nonce(nonce: &str) -> Result<(), SiweError> {
    let ok = (MIN_NONCE_CHARS..=MAX_NONCE_CHARS).contains(&nonce.len())
        && nonce.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(SiweError::InvalidNonce)
    }
}

fn parse_timestamp(text: &str, field: &'static str) -> Result<Timestamp, SiweError> {
    Timestamp::parse(text).ok_or(SiweError::InvalidTimestamp { field })
}

/// `request-id = *pchar`.
fn check_request_id(id: &str) -> Result<(), SiweError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(SiweError::FieldTooLong {
            field: "request id",
            max: MAX_REQUEST_ID_BYTES,
        });
    }
    let ok = id
        .bytes()
        .all(|b| is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'%'))
        && percent_escapes_ok(id);
    if ok {
        Ok(())
    } else {
        Err(SiweError::InvalidRequestId)
    }
}

#[cfg(test)]
mod tests;
