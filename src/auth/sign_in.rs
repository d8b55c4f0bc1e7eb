//! The sign-in service, [`SignIn`]: it issues challenges, verifies signed
//! messages in the order the [`auth`](crate::auth) module documentation
//! lists, and hands out, checks and revokes bearer tokens.
//!
//! Invariants: a nonce is consumed only once the signature has checked out;
//! neither tokens nor signatures reach logs or errors; of a token only its
//! SHA-256 is stored.

use std::fmt;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, Signature, eip191_hash_message};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use alloy::transports::{RpcError, TransportError};
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use deskgate_actors::ports::WalletId;
use rand::Rng;
use url::Url;

use super::siwe::{SiweMessage, Version};
use super::store;
use super::{SignInError, SignInSetupError};
use crate::config::Config;
use crate::db::DbPool;
use crate::platform::secret::Secret;

/// How long a challenge may be answered.
pub const CHALLENGE_LIFE: TimeDelta = TimeDelta::minutes(5);

/// How far a browser's clock may run ahead of ours: issued-at and not-before
/// may lie this far in the future.
pub const CLOCK_SKEW: TimeDelta = TimeDelta::seconds(60);

/// The longest an RPC call of the EIP-1271 check may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Characters in a nonce, drawn uniformly from the 62 ASCII letters and
/// digits: 22 × log2(62) ≈ 131 bits, above the 128 we want (EIP-4361 asks
/// for at least 64).
pub const NONCE_CHARS: usize = 22;

/// Random bytes in a token (sent as 64 lower-case hex digits).
const TOKEN_BYTES: usize = 32;

/// The statement in issued messages.
pub const STATEMENT: &str = "Sign in to deskgate";

/// What EIP-1271 `isValidSignature` returns for a valid signature (its own
/// selector).
const EIP1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

/// Name of the refusal counter; `reason` is [`SignInError::code`].
pub const FAILURES_METRIC: &str = "deskgate_sign_in_failures_total";
/// Name of the success counter.
pub const SUCCESSES_METRIC: &str = "deskgate_sign_in_successes_total";

alloy::sol! {
    /// EIP-1271: signature validation for contract accounts.
    interface IERC1271 {
        /// Returns `0x1626ba7e` when `signature` is valid for `hash`.
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4 magicValue);
    }
}

/// A challenge for the browser to have signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedChallenge {
    /// The nonce inside the message.
    pub nonce: String,
    /// The EIP-4361 text to sign, exactly.
    pub message: String,
    /// The nonce is refused from this instant.
    pub expires_at: DateTime<Utc>,
}

/// A bearer token for a signed-in wallet. `Debug` does not show the token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The token, for the client only: 64 lower-case hex digits.
    pub token: Secret,
    /// The wallet it signs in.
    pub address: WalletId,
    /// It is refused from this instant.
    pub expires_at: DateTime<Utc>,
}

/// The sign-in service. Cheap to clone.
#[derive(Clone)]
pub struct SignIn {
    pool: DbPool,
    /// Scheme of `DESKGATE_PUBLIC_URL`.
    scheme: String,
    /// Authority of `DESKGATE_PUBLIC_URL`: host, and port when not the
    /// scheme's default (what a browser's `location.host` shows).
    domain: String,
    uri: Url,
    chain_id: u64,
    /// `None`: no RPC node, so only EOAs can sign in.
    provider: Option<RootProvider>,
    token_ttl: TimeDelta,
    challenge_life: TimeDelta,
    clock_skew: TimeDelta,
}

impl fmt::Debug for SignIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignIn")
            .field("domain", &self.domain)
            .field("uri", &self.uri.as_str())
            .field("chain_id", &self.chain_id)
            .field("rpc", &self.provider.is_some())
            .finish_non_exhaustive()
    }
}

/// `at + by`, saturating instead of panicking far in the future.
fn later(at: DateTime<Utc>, by: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(by)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl SignIn {
    /// A service for the gate at `public_url` on chain `chain_id`, checking
    /// contract wallets through `provider`.
    pub fn new(
        pool: DbPool,
        public_url: &Url,
        chain_id: u64,
        provider: Option<RootProvider>,
        token_ttl: Duration,
    ) -> Result<Self, SignInSetupError> {
        let host = public_url.host_str().ok_or(SignInSetupError::NoHost)?;
        let domain = match public_url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let token_ttl = TimeDelta::from_std(token_ttl)
            .ok()
            .filter(|ttl| *ttl >= TimeDelta::seconds(1) && *ttl <= TimeDelta::days(3650))
            .ok_or(SignInSetupError::TokenTtl)?;
        let service = Self {
            pool,
            scheme: public_url.scheme().to_string(),
            domain,
            uri: public_url.clone(),
            chain_id,
            provider,
            token_ttl,
            challenge_life: CHALLENGE_LIFE,
            clock_skew: CLOCK_SKEW,
        };
        // Find out now, not at the first sign-in, if the URL cannot be put in
        // a message.
        service
            .message(Address::ZERO, random_nonce(), Utc::now().trunc_subsecs(0))
            .validate()
            .map_err(SignInSetupError::PublicUrl)?;
        Ok(service)
    }

    /// The service as configured: `public_url`, `chain_id`, `rpc_url`,
    /// `token_ttl`.
    pub fn from_config(pool: DbPool, config: &Config) -> Result<Self, SignInSetupError> {
        let provider = config
            .chain
            .rpc_url
            .as_ref()
            .map(|url| Url::parse(url.expose()).map(RootProvider::new_http))
            .transpose()
            .map_err(|_| SignInSetupError::RpcUrl)?;
        Self::new(
            pool,
            &config.server.public_url,
            config.chain.id,
            provider,
            config.auth.token_ttl,
        )
    }

    /// Replaces the challenge lifetime (default [`CHALLENGE_LIFE`]).
    pub fn with_challenge_life(mut self, life: TimeDelta) -> Self {
        self.challenge_life = life;
        self
    }

    /// Replaces the allowed clock skew (default [`CLOCK_SKEW`]).
    pub fn with_clock_skew(mut self, skew: TimeDelta) -> Self {
        self.clock_skew = skew;
        self
    }

    /// The domain messages must name.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn message(&self, address: Address, nonce: String, now: DateTime<Utc>) -> SiweMessage {
        SiweMessage {
            scheme: Some(self.scheme.clone()),
            domain: self.domain.clone(),
            address,
            statement: Some(STATEMENT.to_string()),
            uri: self.uri.to_string(),
            version: Version::V1,
            chain_id: self.chain_id,
            nonce,
            issued_at: now.into(),
            expiration_time: Some(later(now, self.challenge_life).into()),
            not_before: None,
            request_id: None,
            resources: Vec::new(),
        }
    }

    /// Issues a challenge for `address` now.
    pub async fn issue(&self, address: Address) -> Result<IssuedChallenge, SignInError> {
        self.issue_at(address, Utc::now()).await
    }

    /// Issues a challenge for `address` as of `now`.
    pub async fn issue_at(
        &self,
        address: Address,
        now: DateTime<Utc>,
    ) -> Result<IssuedChallenge, SignInError> {
        // Whole seconds: the message shows exactly the times stored.
        let now = now.trunc_subsecs(0);
        let expires_at = later(now, self.challenge_life);
        let nonce = random_nonce();
        let wallet = WalletId::new(&address.to_string());
        store::issue_challenge(&self.pool, &nonce, &wallet, now, expires_at).await?;
        let message = self.message(address, nonce.clone(), now).to_string();
        Ok(IssuedChallenge {
            nonce,
            message,
            expires_at,
        })
    }

    /// Checks a signed message (the steps are listed in the
    /// [`auth`](crate::auth) module documentation) and signs the wallet in
    /// now.
    pub async fn verify(&self, message: &str, signature: &str) -> Result<IssuedToken, SignInError> {
        self.verify_at(message, signature, Utc::now()).await
    }

    /// [`SignIn::verify`] as of `now`.
    pub async fn verify_at(
        &self,
        message: &str,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, SignInError> {
        let outcome = self.check_and_sign_in(message, signature, now).await;
        match &outcome {
            Ok(issued) => {
                metrics::counter!(SUCCESSES_METRIC).increment(1);
                tracing::info!(address = %issued.address, "wallet signed in");
            }
            Err(e) => {
                metrics::counter!(FAILURES_METRIC, "reason" => e.code()).increment(1);
                if let SignInError::DatabaseUnavailable(db) = e {
                    // Database errors name no credential; RPC ones were
                    // logged, redacted, where they happened.
                    tracing::warn!(reason = e.code(), error = %db, "sign-in could not be checked");
                } else if e.is_unavailable() {
                    tracing::warn!(reason = e.code(), "sign-in could not be checked");
                } else {
                    tracing::info!(reason = e.code(), "sign-in refused");
                }
            }
        }
        outcome
    }

    async fn check_and_sign_in(
        &self,
        text: &str,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, SignInError> {
        let message = SiweMessage::parse(text).map_err(SignInError::MalformedMessage)?;
        let (signature, raw_signature) = parse_signature(signature)?;
        self.check_binding(&message)?;
        self.check_times(&message, now)?;

        let wallet = WalletId::new(&message.address.to_string());
        store::check_challenge(&self.pool, &message.nonce, &wallet, now).await?;
        self.check_signature(text, message.address, &signature, &raw_signature)
            .await?;
        store::consume_challenge(&self.pool, &message.nonce, &wallet, now).await?;

        let mut raw = [0u8; TOKEN_BYTES];
        rand::rng().fill(&mut raw);
        let token = alloy::hex::encode(raw);
        let expires_at = later(now, self.token_ttl);
        store::store_token(
            &self.pool,
            store::hash_token(token.as_bytes()),
            &wallet,
            expires_at,
        )
        .await?;
        Ok(IssuedToken {
            token: Secret::new(token),
            address: wallet,
            expires_at,
        })
    }

    /// The message must be for this gate, on this chain.
    fn check_binding(&self, message: &SiweMessage) -> Result<(), SignInError> {
        // EIP-4361: without a scheme, https is meant.
        let scheme = message.scheme.as_deref().unwrap_or("https");
        if !scheme.eq_ignore_ascii_case(&self.scheme) {
            return Err(SignInError::WrongScheme {
                expected: self.scheme.clone(),
            });
        }
        if !message.domain.eq_ignore_ascii_case(&self.domain) {
            return Err(SignInError::WrongDomain {
                expected: self.domain.clone(),
            });
        }
        // Compared parsed, so `https://h` and `https://h/` are one URL.
        if Url::parse(&message.uri).ok().as_ref() != Some(&self.uri) {
            return Err(SignInError::WrongUri {
                expected: self.uri.to_string(),
            });
        }
        if message.chain_id != self.chain_id {
            return Err(SignInError::WrongChainId {
                expected: self.chain_id,
            });
        }
        Ok(())
    }

    fn check_times(&self, message: &SiweMessage, now: DateTime<Utc>) -> Result<(), SignInError> {
        let horizon = later(now, self.clock_skew);
        let not_before = message.not_before.as_ref().map(|t| t.instant());
        if message.issued_at.instant() > horizon || not_before.is_some_and(|t| t > horizon) {
            return Err(SignInError::MessageNotYetValid);
        }
        // No skew here: the nonce expires with our clock anyway.
        if message
            .expiration_time
            .as_ref()
            .is_some_and(|t| t.instant() <= now)
        {
            return Err(SignInError::MessageExpired);
        }
        Ok(())
    }

    /// EIP-191 recovery for an externally owned account, else EIP-1271 for a
    /// contract wallet.
    async fn check_signature(
        &self,
        text: &str,
        address: Address,
        signature: &Signature,
        raw_signature: &[u8; 65],
    ) -> Result<(), SignInError> {
        let hash = eip191_hash_message(text);
        if signature.recover_address_from_prehash(&hash).ok() == Some(address) {
            return Ok(());
        }
        // Not the key of `address`: only a contract at `address` can vouch.
        let provider = self.provider.as_ref().ok_or(SignInError::RpcUnavailable)?;
        let code = rpc(provider.get_code_at(address)).await?;
        if code.is_empty() {
            return Err(SignInError::SignatureMismatch);
        }
        self.ask_contract(provider, address, hash, raw_signature)
            .await
    }

    async fn ask_contract(
        &self,
        provider: &RootProvider,
        address: Address,
        hash: B256,
        raw_signature: &[u8; 65],
    ) -> Result<(), SignInError> {
        let call = IERC1271::isValidSignatureCall {
            hash,
            signature: Bytes::copy_from_slice(raw_signature),
        };
        let request = TransactionRequest::default()
            .with_to(address)
            .with_input(call.abi_encode());
        let returned = match tokio::time::timeout(RPC_TIMEOUT, provider.call(request)).await {
            Ok(Ok(returned)) => returned,
            // The node ran the call and it reverted: the wallet's answer.
            Ok(Err(RpcError::ErrorResp(payload)))
                if payload.code == 3 || payload.message.contains("revert") =>
            {
                return Err(SignInError::ContractWalletRejected);
            }
            Ok(Err(e)) => return Err(rpc_unavailable(&e)),
            Err(_) => return Err(rpc_timeout()),
        };
        // Strict decoding: exactly the magic value, zero-padded.
        match IERC1271::isValidSignatureCall::abi_decode_returns_validate(&returned) {
            Ok(magic) if magic.0 == EIP1271_MAGIC => Ok(()),
            _ => Err(SignInError::ContractWalletRejected),
        }
    }

    /// The wallet a token signs in now.
    pub async fn authenticate(&self, token: &str) -> Result<WalletId, SignInError> {
        self.authenticate_at(token, Utc::now()).await
    }

    /// [`SignIn::authenticate`] as of `now`.
    pub async fn authenticate_at(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<WalletId, SignInError> {
        if !is_token_shaped(token) {
            return Err(SignInError::InvalidToken);
        }
        store::token_owner(&self.pool, store::hash_token(token.as_bytes()), now)
            .await?
            .ok_or(SignInError::InvalidToken)
    }

    /// Revokes one token (sign-out); returns whether a live one was found.
    pub async fn logout(&self, token: &str) -> Result<bool, SignInError> {
        if !is_token_shaped(token) {
            return Ok(false);
        }
        let revoked = store::revoke_token(&self.pool, store::hash_token(token.as_bytes())).await?;
        if revoked {
            tracing::info!("token revoked (sign-out)");
        }
        Ok(revoked)
    }

    /// Revokes every token of `address` (sign out everywhere); returns how
    /// many were live.
    pub async fn revoke_all(&self, address: &WalletId) -> Result<usize, SignInError> {
        Ok(store::revoke_all_tokens(&self.pool, address).await?)
    }
}

/// A fresh nonce of [`NONCE_CHARS`] letters and digits from the thread's
/// CSPRNG.
fn random_nonce() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(NONCE_CHARS)
        .map(char::from)
        .collect()
}

/// Tokens are exactly what [`SignIn::verify`] hands out: 64 lower-case hex
/// digits. Anything else is refused without a database round trip.
fn is_token_shaped(token: &str) -> bool {
    token.len() == 2 * TOKEN_BYTES
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// 65 bytes (`r`, `s`, `v`) as hex, `0x` optional, `v` one of 0, 1, 27, 28
/// (or EIP-155 style).
fn parse_signature(text: &str) -> Result<(Signature, [u8; 65]), SignInError> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.len() != 130 {
        return Err(SignInError::MalformedSignature);
    }
    let mut raw = [0u8; 65];
    alloy::hex::decode_to_slice(hex, &mut raw).map_err(|_| SignInError::MalformedSignature)?;
    let signature = Signature::from_raw_array(&raw).map_err(|_| SignInError::MalformedSignature)?;
    Ok((signature, raw))
}

/// Runs one RPC call under [`RPC_TIMEOUT`].
async fn rpc<T>(
    call: impl std::future::IntoFuture<Output = Result<T, TransportError>>,
) -> Result<T, SignInError> {
    match tokio::time::timeout(RPC_TIMEOUT, call.into_future()).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(rpc_unavailable(&e)),
        Err(_) => Err(rpc_timeout()),
    }
}

fn rpc_unavailable(e: &TransportError) -> SignInError {
    // A transport error's text can hold the RPC URL and with it an API key:
    // log the node's own error answers only.
    match e {
        RpcError::ErrorResp(payload) => tracing::warn!(
            code = payload.code,
            message = %payload.message,
            "the RPC node refused an EIP-1271 check"
        ),
        _ => tracing::warn!("the RPC node could not be reached for an EIP-1271 check"),
    }
    SignInError::RpcUnavailable
}

fn rpc_timeout() -> SignInError {
    tracing::warn!(timeout = ?RPC_TIMEOUT, "the RPC node did not answer an EIP-1271 check in time");
    SignInError::RpcUnavailable
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn nonces_are_long_random_alphanumerics() {
        let nonces: HashSet<String> = (0..1000).map(|_| random_nonce()).collect();
        assert_eq!(nonces.len(), 1000);
        for nonce in &nonces {
            assert_eq!(nonce.len(), NONCE_CHARS);
            assert!(nonce.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let bits = NONCE_CHARS as f64 * 62f64.log2();
        assert!(bits >= 128.0, "{bits} bits");
    }

    #[test]
    fn signatures_must_be_65_bytes_of_hex() {
        let good = format!("{}1b", "11".repeat(64));
        assert!(parse_signature(&good).is_ok());
        assert!(parse_signature(&format!("0x{good}")).is_ok());
        for bad in [
            String::new(),
            "0x".to_string(),
            good[2..].to_string(),
            format!("{good}00"),
            format!("{}zz", "11".repeat(64)),
            format!("{}05", "11".repeat(64)),
        ] {
            assert!(
                matches!(parse_signature(&bad), Err(SignInError::MalformedSignature)),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_token_shaped_text_reaches_the_database() {
        assert!(is_token_shaped(&"a1".repeat(32)));
        assert!(!is_token_shaped(&"A1".repeat(32)));
        assert!(!is_token_shaped(&"a1".repeat(31)));
        assert!(!is_token_shaped(""));
    }

    #[test]
    fn time_arithmetic_saturates() {
        assert_eq!(
            later(DateTime::<Utc>::MAX_UTC, TimeDelta::days(1)),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
