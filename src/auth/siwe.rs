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
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The full example message of EIP-4361, with every optional field.
    const FULL: &str = "https://example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Expiration Time: 2021-10-01T16:25:24.000Z
Not Before: 2021-09-30T16:25:24+02:00
Request ID: some_id-1
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json";

    /// The shortest form: no scheme, no statement, no optional lines.
    const MINIMAL: &str = "example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2


URI: https://example.com
Version: 1
Chain ID: 31337
Nonce: abcdEFGH1234
Issued At: 2021-09-30T16:25:24Z";

    #[test]
    fn parses_every_field_of_a_full_message() {
        let m = SiweMessage::parse(FULL).unwrap();
        assert_eq!(m.scheme.as_deref(), Some("https"));
        assert_eq!(m.domain, "example.com");
        assert_eq!(
            m.address.to_checksum(None),
            "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
        );
        assert_eq!(
            m.statement.as_deref(),
            Some("I accept the ExampleOrg Terms of Service: https://example.com/tos")
        );
        assert_eq!(m.uri, "https://example.com/login");
        assert_eq!(m.chain_id, 1);
        assert_eq!(m.nonce, "32891756");
        assert_eq!(m.issued_at.as_str(), "2021-09-30T16:25:24Z");
        let not_before = m.not_before.as_ref().unwrap();
        assert_eq!(
            not_before.instant(),
            "2021-09-30T14:25:24Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(m.request_id.as_deref(), Some("some_id-1"));
        assert_eq!(m.resources.len(), 2);
        assert_eq!(m.to_string(), FULL, "renders back byte for byte");
    }

    #[test]
    fn parses_the_minimal_form() {
        let m = SiweMessage::parse(MINIMAL).unwrap();
        assert_eq!(m.scheme, None);
        assert_eq!(m.statement, None);
        assert_eq!(m.expiration_time, None);
        assert!(m.resources.is_empty());
        assert_eq!(m.to_string(), MINIMAL);
        m.validate().unwrap();
    }

    fn replaced(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from} not in the sample");
        text.replacen(from, to, 1)
    }

    fn err(text: &str) -> SiweError {
        SiweMessage::parse(text).expect_err("must be refused")
    }

    #[test]
    fn refuses_each_broken_rule_with_its_own_reason() {
        use SiweError::*;
        let cases: Vec<(String, SiweError)> = vec![
            (format!("{FULL}{}", " ".repeat(4096)), TooLong { max: 4096 }),
            (
                FULL.replace('\n', "\r\n"),
                InvalidCharacter {
                    offset: FULL.find('\n').unwrap(),
                },
            ),
            (
                replaced(FULL, "Terms", "Térms"),
                InvalidCharacter {
                    offset: FULL.find("Terms").unwrap() + 1,
                },
            ),
            (replaced(FULL, "wants you", "want you"), BadHeader),
            (
                replaced(
                    FULL,
                    "https://example.com wants",
                    "ht_tp://example.com wants",
                ),
                InvalidScheme,
            ),
            (
                replaced(FULL, "example.com wants", "exa/mple.com wants"),
                InvalidDomain,
            ),
            (replaced(FULL, "example.com wants", " wants"), InvalidDomain),
            (
                replaced(FULL, "example.com wants", "example.com:80x wants"),
                InvalidDomain,
            ),
            (
                replaced(
                    FULL,
                    "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                    "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc",
                ),
                InvalidAddress,
            ),
            (
                replaced(
                    FULL,
                    "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                    "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
                ),
                AddressChecksum,
            ),
            (
                replaced(FULL, "Cc2\n\n", "Cc2\nx\n"),
                ExpectedBlankLine { line: 3 },
            ),
            (
                replaced(FULL, "tos\n\n", "tos\nmore\n"),
                ExpectedBlankLine { line: 5 },
            ),
            (replaced(FULL, "I accept", "I \"accept\""), InvalidStatement),
            (
                replaced(FULL, "URI: ", "Uri: "),
                ExpectedField {
                    line: 6,
                    prefix: "URI: ",
                },
            ),
            (
                replaced(FULL, "Version: 1", "Version: 2"),
                UnsupportedVersion,
            ),
            (
                replaced(FULL, "Chain ID: 1", "Chain ID: 01"),
                InvalidChainId,
            ),
            (
                replaced(FULL, "Chain ID: 1", "Chain ID: 99999999999999999999"),
                InvalidChainId,
            ),
            (
                replaced(FULL, "Nonce: 32891756", "Nonce: 3289175"),
                InvalidNonce,
            ),
            (
                replaced(FULL, "Nonce: 32891756", "Nonce: 32891756-"),
                InvalidNonce,
            ),
            (
                replaced(
                    FULL,
                    "Issued At: 2021-09-30T16:25:24Z",
                    "Issued At: 2021-09-30 16:25:24Z",
                ),
                InvalidTimestamp {
                    field: "issued-at time",
                },
            ),
            (
                replaced(FULL, "2021-10-01T16:25:24.000Z", "tomorrow"),
                InvalidTimestamp {
                    field: "expiration time",
                },
            ),
            (
                replaced(FULL, "https://example.com/login", "example.com/login"),
                InvalidUri { field: "uri" },
            ),
            (
                replaced(
                    FULL,
                    "- https://example.com/my",
                    "- https://example.com/ my",
                ),
                InvalidUri { field: "resource" },
            ),
            (replaced(FULL, "some_id-1", "some/id"), InvalidRequestId),
            (
                replaced(
                    FULL,
                    "Resources:\n- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n- https://example.com/my-web2-claim.json",
                    "Resources:",
                ),
                EmptyResources,
            ),
            (format!("{FULL}\n"), UnexpectedLine { line: 17 }),
            (format!("{FULL}\nExtra: 1"), UnexpectedLine { line: 17 }),
            (
                MINIMAL.lines().take(8).collect::<Vec<_>>().join("\n"),
                Truncated {
                    expected: "Issued At: ",
                },
            ),
            (
                // Not Before before Expiration Time: out of order.
                replaced(
                    FULL,
                    "Expiration Time: 2021-10-01T16:25:24.000Z\nNot Before: 2021-09-30T16:25:24+02:00",
                    "Not Before: 2021-09-30T16:25:24+02:00\nExpiration Time: 2021-10-01T16:25:24.000Z",
                ),
                UnexpectedLine { line: 12 },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err(&text), expected, "for:\n{text}");
        }
    }

    #[test]
    fn length_limits_hold() {
        let long_domain = format!("{}.org", "a".repeat(252));
        assert_eq!(
            err(&MINIMAL.replacen("example.com wants", &format!("{long_domain} wants"), 1)),
            SiweError::FieldTooLong {
                field: "domain",
                max: MAX_DOMAIN_BYTES
            }
        );
        assert_eq!(
            err(&replaced(FULL, "I accept", &"x".repeat(513))),
            SiweError::FieldTooLong {
                field: "statement",
                max: MAX_STATEMENT_BYTES
            }
        );
        let resources: String = (0..17)
            .map(|i| format!("\n- https://example.com/{i}"))
            .collect();
        assert_eq!(
            err(&format!("{MINIMAL}\nResources:{resources}")),
            SiweError::TooManyResources { max: MAX_RESOURCES }
        );
        let nonce = "N".repeat(65);
        assert_eq!(
            err(&MINIMAL.replacen("abcdEFGH1234", &nonce, 1)),
            SiweError::InvalidNonce
        );
        assert!(SiweMessage::parse(&MINIMAL.replacen("abcdEFGH1234", &"N".repeat(64), 1)).is_ok());
    }

    #[test]
    fn domains_may_carry_ports_and_ip_literals() {
        for domain in [
            "localhost:3000",
            "127.0.0.1:8080",
            "[::1]:8443",
            "user@host.org",
        ] {
            let text = MINIMAL.replacen("example.com wants", &format!("{domain} wants"), 1);
            assert_eq!(SiweMessage::parse(&text).unwrap().domain, domain);
        }
        for domain in ["[::1", "[::1]x", "a:b:c", "a@b@c"] {
            let text = MINIMAL.replacen("example.com wants", &format!("{domain} wants"), 1);
            assert_eq!(err(&text), SiweError::InvalidDomain, "{domain}");
        }
    }

    #[test]
    fn validate_catches_built_messages_that_do_not_read_back() {
        let mut m = SiweMessage::parse(MINIMAL).unwrap();
        m.statement = Some(String::new());
        assert!(m.validate().is_err(), "an empty statement is ambiguous");
        m.statement = Some("two\nlines".into());
        assert!(m.validate().is_err());
        m.statement = Some("Sign in to deskgate".into());
        m.validate().unwrap();
    }

    fn uri() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("https"), Just("http"), Just("ipfs"), Just("urn")],
            "[a-z]{1,10}(\\.[a-z]{2,4})?(:[0-9]{1,5})?",
            "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,10}){0,3}",
        )
            .prop_map(|(scheme, host, path)| {
                format!("{scheme}://{host}{}", path.replace('%', "%2F"))
            })
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        // Years 0000 to 9999: what RFC 3339 can write.
        (-62_167_219_200i64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
            Timestamp::from(DateTime::from_timestamp(secs, nanos).unwrap_or_default())
        })
    }

    prop_compose! {
        fn message()(
            scheme in proptest::option::of("[a-z][a-z0-9+.-]{0,8}"),
            domain in "[a-z0-9-]{1,20}(\\.[a-z]{2,6})?(:[0-9]{1,5})?",
            address in any::<[u8; 20]>(),
            statement in proptest::option::of("[A-Za-z0-9 .,!?'()*+;=:/@#$&~_\\[\\]-]{1,100}"),
            uri in uri(),
            chain_id in any::<u64>(),
            nonce in "[A-Za-z0-9]{8,64}",
            issued_at in timestamp(),
            expiration_time in proptest::option::of(timestamp()),
            not_before in proptest::option::of(timestamp()),
            request_id in proptest::option::of("[A-Za-z0-9._~!$&'()*+,;=:@-]{0,40}"),
            resources in proptest::collection::vec(uri(), 0..5),
        ) -> SiweMessage {
            SiweMessage {
                scheme, domain, address: Address::from(address), statement, uri,
                version: Version::V1, chain_id, nonce, issued_at, expiration_time,
                not_before, request_id, resources,
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,600}") {
            let _ = SiweMessage::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SiweMessage::parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn valid_messages_round_trip(m in message()) {
            let text = m.to_string();
            prop_assert_eq!(SiweMessage::parse(&text), Ok(m.clone()));
            prop_assert!(m.validate().is_ok());
        }

        /// Mutated valid messages: never a panic, and whatever is still
        /// accepted renders back to exactly the text that was parsed.
        #[test]
        fn accepted_text_renders_back_exactly(
            m in message(),
            at in any::<prop::sample::Index>(),
            cut in 0usize..8,
            insert in "[\\x20-\\x7e\\n]{0,4}",
        ) {
            let mut text = m.to_string();
            let start = at.index(text.len());
            let end = (start + cut).min(text.len());
            text.replace_range(start..end, &insert);
            if let Ok(parsed) = SiweMessage::parse(&text) {
                prop_assert_eq!(parsed.to_string(), text);
            }
        }
    }
}
