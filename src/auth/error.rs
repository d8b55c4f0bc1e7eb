//! Why a sign-in was refused, [`SignInError`], each reason with a stable
//! [`code`](SignInError::code) for metrics labels and problem types; and why
//! the service could not be built from the configuration,
//! [`SignInSetupError`].
//!
//! Invariant: no variant holds a token, a signature or the RPC URL (which may
//! carry an API key).

use super::siwe::SiweError;
use super::store::ChallengeError;
use crate::db::DbError;

/// Why a sign-in (or a token) was refused. Each reason has its own variant
/// and a stable [`code`](SignInError::code).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The message is not an acceptable EIP-4361 text.
    #[error("malformed sign-in message: {0}")]
    MalformedMessage(#[source] SiweError),
    /// The signature is not hex of 1 to 16,384 bytes, or is an ERC-6492
    /// wrapper that does not decode.
    #[error(
        "malformed signature: expected hex (0x optional) of 1 to {} bytes; an ERC-6492 wrapper must decode as (address, bytes, bytes)",
        super::MAX_SIGNATURE_BYTES
    )]
    MalformedSignature,
    /// The message names another domain.
    #[error("the message is for another domain than {expected}")]
    WrongDomain {
        /// This gate's domain.
        expected: String,
    },
    /// The message names another scheme (an absent scheme means https).
    #[error("the message is for another scheme than {expected}")]
    WrongScheme {
        /// This gate's scheme.
        expected: String,
    },
    /// The message's URI is not this gate's public URL.
    #[error("the message's URI is not {expected}")]
    WrongUri {
        /// This gate's public URL.
        expected: String,
    },
    /// The message names another chain.
    #[error("the message is for another chain than {expected}")]
    WrongChainId {
        /// This gate's chain id.
        expected: u64,
    },
    /// Issued-at or not-before lies in the future.
    #[error("the message is not valid yet")]
    MessageNotYetValid,
    /// The message's expiration time has passed.
    #[error("the message has expired")]
    MessageExpired,
    /// No challenge has this nonce.
    #[error("unknown sign-in nonce")]
    UnknownNonce,
    /// The nonce was used before (a replay).
    #[error("the sign-in nonce was already used")]
    NonceAlreadyUsed,
    /// The nonce expired.
    #[error("the sign-in nonce has expired")]
    NonceExpired,
    /// The nonce was issued to another address than the message names.
    #[error("the sign-in nonce was issued to another address")]
    NonceWrongAddress,
    /// The signature was not made by the message's address, which holds no
    /// contract.
    #[error("the signature does not match the message's address")]
    SignatureMismatch,
    /// The address is a contract whose EIP-1271 check refused the signature.
    #[error("the contract wallet did not accept the signature")]
    ContractWalletRejected,
    /// The EIP-1271 check could not be made: the RPC node is unreachable,
    /// slow or failing, or none is configured.
    #[error("the Ethereum RPC node is unavailable")]
    RpcUnavailable,
    /// The database failed.
    #[error("the database is unavailable")]
    DatabaseUnavailable(#[source] DbError),
    /// A token that is unknown, malformed, expired or revoked.
    #[error("invalid or expired token")]
    InvalidToken,
}

impl SignInError {
    /// A stable short code, for metrics labels and problem types.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedMessage(_) => "malformed_message",
            Self::MalformedSignature => "malformed_signature",
            Self::WrongDomain { .. } => "wrong_domain",
            Self::WrongScheme { .. } => "wrong_scheme",
            Self::WrongUri { .. } => "wrong_uri",
            Self::WrongChainId { .. } => "wrong_chain_id",
            Self::MessageNotYetValid => "message_not_yet_valid",
            Self::MessageExpired => "message_expired",
            Self::UnknownNonce => "unknown_nonce",
            Self::NonceAlreadyUsed => "nonce_already_used",
            Self::NonceExpired => "nonce_expired",
            Self::NonceWrongAddress => "nonce_wrong_address",
            Self::SignatureMismatch => "signature_mismatch",
            Self::ContractWalletRejected => "contract_wallet_rejected",
            Self::RpcUnavailable => "rpc_unavailable",
            Self::DatabaseUnavailable(_) => "database_unavailable",
            Self::InvalidToken => "invalid_token",
        }
    }

    /// True when the failure is ours (RPC node or database), not the
    /// client's: worth a 503 and a retry rather than a 4xx.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::RpcUnavailable | Self::DatabaseUnavailable(_))
    }
}

impl From<ChallengeError> for SignInError {
    fn from(e: ChallengeError) -> Self {
        match e {
            ChallengeError::Unknown => Self::UnknownNonce,
            ChallengeError::WrongAddress => Self::NonceWrongAddress,
            ChallengeError::AlreadyUsed => Self::NonceAlreadyUsed,
            ChallengeError::Expired => Self::NonceExpired,
            ChallengeError::Db(e) => Self::DatabaseUnavailable(e),
        }
    }
}

impl From<DbError> for SignInError {
    fn from(e: DbError) -> Self {
        Self::DatabaseUnavailable(e)
    }
}

/// Why the sign-in service cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SignInSetupError {
    /// The public URL has no host to put in messages.
    #[error("DESKGATE_PUBLIC_URL has no host name to sign in to")]
    NoHost,
    /// The public URL does not make an acceptable EIP-4361 message.
    #[error("DESKGATE_PUBLIC_URL cannot be used in a sign-in message: {0}")]
    PublicUrl(#[source] SiweError),
    /// The RPC URL does not parse (it is not shown: it may hold a key).
    #[error("DESKGATE_RPC_URL is not a URL")]
    RpcUrl,
    /// The token lifetime is zero or out of range.
    #[error("DESKGATE_TOKEN_TTL_SECONDS must be between 1 second and 10 years")]
    TokenTtl,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_reason_has_its_own_code() {
        let all = [
            SignInError::MalformedMessage(SiweError::BadHeader),
            SignInError::MalformedSignature,
            SignInError::WrongDomain {
                expected: String::new(),
            },
            SignInError::WrongScheme {
                expected: String::new(),
            },
            SignInError::WrongUri {
                expected: String::new(),
            },
            SignInError::WrongChainId { expected: 1 },
            SignInError::MessageNotYetValid,
            SignInError::MessageExpired,
            SignInError::UnknownNonce,
            SignInError::NonceAlreadyUsed,
            SignInError::NonceExpired,
            SignInError::NonceWrongAddress,
            SignInError::SignatureMismatch,
            SignInError::ContractWalletRejected,
            SignInError::RpcUnavailable,
            SignInError::DatabaseUnavailable(DbError::Timeout(Duration::from_secs(1))),
            SignInError::InvalidToken,
        ];
        let codes: HashSet<&str> = all.iter().map(SignInError::code).collect();
        assert_eq!(codes.len(), all.len());
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        let unavailable: Vec<_> = all.iter().filter(|e| e.is_unavailable()).collect();
        assert_eq!(unavailable.len(), 2);
    }
}
