//! The sign-in service, [`SignIn`]: it issues challenges, verifies signed
//! messages in the order the [`auth`](crate::auth) module documentation
//! lists, and hands out, checks and revokes bearer tokens.
//!
//! Invariants: a nonce is consumed only once the signature has checked out;
//! neither tokens nor signatures reach logs or errors; of a token only its
//! SHA-256 is stored.

use std::fmt;
use std::time::Duration;

use alloy::primitives::{Address, Signature, eip191_hash_message};
use alloy::providers::RootProvider;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use deskgate_actors::ports::WalletId;
use rand::Rng;
use url::Url;

use super::contract_wallet::{self, MAX_SIGNATURE_BYTES, Verdict, WalletSignature};
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

/// Characters in a nonce, drawn uniformly from the 62 ASCII letters and
/// digits: 22 × log2(62) ≈ 131 bits, above the 128 we want (EIP-4361 asks
/// for at least 64).
pub const NONCE_CHARS: usize = 22;

/// Random bytes in a token (sent as 64 lower-case hex digits).
const TOKEN_BYTES: usize = 32;

/// The statement in issued messages.
pub const STATEMENT: &str = "Sign in to deskgate";

/// Name of the refusal counter; `reason` is [`SignInError::code`].
pub const FAILURES_METRIC: &str = "deskgate_sign_in_failures_total";
/// Name of the success counter.
pub const SUCCESSES_METRIC: &str = "deskgate_sign_in_successes_total";

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
        let signature = parse_signature(signature)?;
        self.check_binding(&message)?;
        self.check_times(&message, now)?;

        let wallet = WalletId::new(&message.address.to_string());
        store::check_challenge(&self.pool, &message.nonce, &wallet, now).await?;
        self.check_signature(text, message.address, &signature)
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

    /// EIP-191 recovery for an externally owned account, else the contract
    /// at the address (EIP-1271), or the one an ERC-6492 wrapper deploys.
    async fn check_signature(
        &self,
        text: &str,
        address: Address,
        raw: &[u8],
    ) -> Result<(), SignInError> {
        let hash = eip191_hash_message(text);
        let signature = WalletSignature::parse(raw)?;
        if signature.deploy.is_none() && recovers_to(raw, &hash) == Some(address) {
            return Ok(());
        }
        // Not the key of `address`: only a contract at `address` can vouch.
        let provider = self.provider.as_ref().ok_or(SignInError::RpcUnavailable)?;
        match contract_wallet::ask(provider, address, hash, &signature).await? {
            Verdict::Valid => Ok(()),
            Verdict::Rejected => Err(SignInError::ContractWalletRejected),
            Verdict::NoContract => Err(SignInError::SignatureMismatch),
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

/// The signature's bytes, from hex (`0x` optional): one or more bytes, at
/// most [`MAX_SIGNATURE_BYTES`]. Its shape is the signer's business: 65
/// bytes for a key, anything its contract understands for a wallet.
fn parse_signature(text: &str) -> Result<Vec<u8>, SignInError> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    if hex.is_empty() || hex.len() > 2 * MAX_SIGNATURE_BYTES {
        return Err(SignInError::MalformedSignature);
    }
    alloy::hex::decode(hex).map_err(|_| SignInError::MalformedSignature)
}

/// The address whose key made `raw` over `hash`, when `raw` is a 65-byte
/// (`r`, `s`, `v`) signature with a recovery byte of 0, 1, 27 or 28 (or
/// EIP-155 style).
fn recovers_to(raw: &[u8], hash: &alloy::primitives::B256) -> Option<Address> {
    let raw: &[u8; 65] = raw.try_into().ok()?;
    Signature::from_raw_array(raw)
        .ok()?
        .recover_address_from_prehash(hash)
        .ok()
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
    fn signatures_are_bounded_hex_of_any_length() {
        let key = format!("{}1b", "11".repeat(64));
        assert_eq!(parse_signature(&key).unwrap().len(), 65);
        assert_eq!(parse_signature(&format!("0x{key}")).unwrap().len(), 65);
        // A 2-of-3 Safe's eth_sign signatures: 130 bytes, v = 31 and 32.
        let safe = format!("{}1f{}20", "11".repeat(64), "22".repeat(64));
        assert_eq!(parse_signature(&safe).unwrap().len(), 130);
        let largest = "ab".repeat(MAX_SIGNATURE_BYTES);
        assert_eq!(
            parse_signature(&largest).unwrap().len(),
            MAX_SIGNATURE_BYTES
        );
        for bad in [
            String::new(),
            "0x".to_string(),
            key[1..].to_string(),
            format!("{}zz", "11".repeat(64)),
            format!("{largest}ab"),
        ] {
            assert!(
                matches!(parse_signature(&bad), Err(SignInError::MalformedSignature)),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_well_formed_65_byte_signatures_recover() {
        let signer = alloy::signers::local::PrivateKeySigner::random();
        let hash = eip191_hash_message("hello");
        let signature = alloy::signers::SignerSync::sign_hash_sync(&signer, &hash).unwrap();
        let mut raw = signature.as_bytes().to_vec();
        assert_eq!(recovers_to(&raw, &hash), Some(signer.address()));
        raw[64] += 4; // eth_sign style v: a contract's business, not a key's
        assert_eq!(recovers_to(&raw, &hash), None);
        raw.push(0);
        assert_eq!(recovers_to(&raw, &hash), None);
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
