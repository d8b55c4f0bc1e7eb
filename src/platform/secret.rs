//! Secrets: values that are never logged, never printed and compared only in
//! constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Values that ship in example files or docs and must never guard a real
/// deployment. Compared case-insensitively.
const KNOWN_PLACEHOLDERS: &[&str] = &[
    "changeme",
    "password",
    "secret",
    "example",
    "placeholder",
    "token",
    "admin",
    // The local development database password that `scripts/postgres.sh` sets.
    "deskgate-dev-only",
];

/// Prefixes that mark a value as "fill me in".
const PLACEHOLDER_PREFIXES: &[&str] = &["change-me", "change_me", "changeme", "replace-me", "xxx"];

/// The example environment file shipped for docker compose; every value in it
/// is a placeholder by definition.
const EXAMPLE_ENV_FILE: &str = include_str!("../../compose/.env.example");

/// Shortest acceptable secret in the TLS (production) posture, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Least estimated entropy of a secret, in bits. Catches long but repetitive
/// values such as `aaaa…` or `abab…` that pass a length check.
const MIN_ESTIMATED_ENTROPY_BITS: f64 = 128.0;

/// A secret string. `Debug` and `Display` never show its value.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a value read from configuration.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// The value itself, for the few places that must hand it on (a TLS
    /// handshake, a database connection). Never log what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares `candidate` with the secret in constant time. Both sides are
    /// hashed first so that neither the content nor the length of the secret
    /// leaks through timing.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate);
        expected.ct_eq(&given).into()
    }

    /// Why this value is unfit to guard a production deployment, if it is.
    pub fn weakness(&self) -> Option<Weakness> {
        weakness_of(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret is too weak for the TLS posture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weakness {
    /// The value is empty.
    Empty,
    /// The value is a known placeholder or comes from the example env file.
    Placeholder,
    /// The value has fewer than [`MIN_SECRET_BYTES`] bytes.
    TooShort,
    /// The value is long enough but too repetitive to be random.
    LowEntropy,
}

impl fmt::Display for Weakness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self {
            Weakness::Empty => "is empty",
            Weakness::Placeholder => "is a placeholder value",
            Weakness::TooShort => "is shorter than 32 bytes",
            Weakness::LowEntropy => "is too repetitive to be a random secret",
        };
        f.write_str(why)
    }
}

/// Judges a candidate secret. `None` means it is fit for production.
pub fn weakness_of(value: &str) -> Option<Weakness> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Some(Weakness::Empty);
    }
    if is_placeholder(trimmed) {
        return Some(Weakness::Placeholder);
    }
    if value.len() < MIN_SECRET_BYTES {
        return Some(Weakness::TooShort);
    }
    if estimated_entropy_bits(value.as_bytes()) < MIN_ESTIMATED_ENTROPY_BITS {
        return Some(Weakness::LowEntropy);
    }
    None
}

/// True for known placeholder values, including every value of the example
/// env file.
pub fn is_placeholder(value: &str) -> bool {
    let lower = value.trim().to_ascii_lowercase();
    KNOWN_PLACEHOLDERS.contains(&lower.as_str())
        || PLACEHOLDER_PREFIXES.iter().any(|p| lower.starts_with(p))
        || example_env_values().any(|example| example.eq_ignore_ascii_case(&lower))
}

fn example_env_values() -> impl Iterator<Item = &'static str> {
    EXAMPLE_ENV_FILE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('=').map(|(_, v)| v.trim()))
        .filter(|v| !v.is_empty())
}

/// Shannon entropy of the byte distribution times the length: an upper bound
/// on the real entropy that is good at spotting repetitive values.
fn estimated_entropy_bits(bytes: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let len = bytes.len() as f64;
    let per_byte: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum();
    per_byte * len
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{secret}"), "<redacted>");
    }

    #[test]
    fn matches_only_the_exact_value() {
        let secret = Secret::new(STRONG);
        assert!(secret.matches(STRONG.as_bytes()));
        assert!(!secret.matches(&STRONG.as_bytes()[..63]));
        assert!(!secret.matches(b""));
        assert!(!secret.matches(STRONG.to_uppercase().as_bytes()));
    }

    #[test]
    fn placeholders_are_weak_whatever_their_length() {
        assert_eq!(weakness_of("change-me"), Some(Weakness::Placeholder));
        assert_eq!(
            weakness_of("change-me-to-something-long-and-random-please"),
            Some(Weakness::Placeholder)
        );
        assert_eq!(weakness_of("CHANGEME"), Some(Weakness::Placeholder));
        assert_eq!(
            weakness_of("deskgate-dev-only"),
            Some(Weakness::Placeholder)
        );
        assert_eq!(weakness_of("  "), Some(Weakness::Empty));
    }

    #[test]
    fn values_from_the_example_env_file_are_placeholders() {
        let values: Vec<_> = example_env_values().collect();
        assert!(values.contains(&"change-me-admin-token"), "{values:?}");
        // Caught only because it is in the example file, not by a prefix rule.
        assert!(is_placeholder("https://desk.example.org"));
        assert!(!is_placeholder("https://desk.example.net"));
    }

    #[test]
    fn short_and_repetitive_values_are_weak() {
        assert_eq!(
            weakness_of("a-random-but-short-one"),
            Some(Weakness::TooShort)
        );
        assert_eq!(weakness_of(&"ab".repeat(40)), Some(Weakness::LowEntropy));
        assert_eq!(weakness_of(STRONG), None);
    }
}
