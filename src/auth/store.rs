//! Sign-in storage: EIP-4361 challenges and bearer tokens.
//!
//! Only storage lives here; the sign-in protocol (building the message,
//! checking the signature) is built on top. Two rules matter:
//!
//! - A challenge is consumed by one atomic `UPDATE ... WHERE used_at IS NULL
//!   ... RETURNING`, so of two concurrent sign-ins with one nonce exactly one
//!   succeeds. Finding out *why* a consume failed is a separate read.
//! - A token is stored only as its SHA-256 ([`hash_token`]): a copy of the
//!   table signs no one in.
//!
//! Times are passed in rather than read from the database clock, so the
//! caller (and a test) decides what "now" is.

use chrono::{DateTime, Utc};
use deskgate_actors::ports::WalletId;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};

use crate::db::schema::{auth_tokens, challenges};
use crate::db::{DbError, DbPool};

/// A sign-in challenge as stored.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = challenges, check_for_backend(diesel::pg::Pg))]
pub struct Challenge {
    /// The nonce in the EIP-4361 message.
    pub nonce: String,
    /// The lower-case address it was issued to.
    pub address: String,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// It is accepted only before this instant.
    pub expires_at: DateTime<Utc>,
    /// When it was consumed.
    pub used_at: Option<DateTime<Utc>>,
}

/// Why a challenge could not be consumed.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// No challenge has this nonce (never issued, or already deleted).
    #[error("unknown sign-in nonce")]
    Unknown,
    /// The challenge was issued to another address.
    #[error("the sign-in nonce was issued to another address")]
    WrongAddress,
    /// The challenge was consumed before.
    #[error("the sign-in nonce was already used")]
    AlreadyUsed,
    /// The challenge expired.
    #[error("the sign-in nonce has expired")]
    Expired,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The SHA-256 of a bearer token: the only form in which it is stored.
pub fn hash_token(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Stores a new challenge for `address`. A nonce that exists already is an
/// error (nonces are random, so it means a bug or a replay).
pub async fn issue_challenge(
    pool: &DbPool,
    nonce: &str,
    address: &WalletId,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let mut conn = pool.get().await?;
    diesel::insert_into(challenges::table)
        .values((
            challenges::nonce.eq(nonce),
            challenges::address.eq(address.as_str()),
            challenges::issued_at.eq(issued_at),
            challenges::expires_at.eq(expires_at),
        ))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Consumes the challenge `nonce` for `address` at `now`: marks it used and
/// returns it. It succeeds at most once per nonce, however many callers race.
///
/// A failed attempt does not consume the challenge (a wrong address does not
/// burn it for its owner); whether it should is the protocol's decision.
pub async fn consume_challenge(
    pool: &DbPool,
    nonce: &str,
    address: &WalletId,
    now: DateTime<Utc>,
) -> Result<Challenge, ChallengeError> {
    let mut conn = pool.get().await.map_err(DbError::from)?;
    // The whole success path is this one statement: PostgreSQL re-checks
    // `used_at IS NULL` on the locked row, so a concurrent winner makes it
    // match nothing.
    let consumed = diesel::update(
        challenges::table
            .filter(challenges::nonce.eq(nonce))
            .filter(challenges::address.eq(address.as_str()))
            .filter(challenges::used_at.is_null())
            .filter(challenges::expires_at.gt(now)),
    )
    .set(challenges::used_at.eq(now))
    .returning(Challenge::as_returning())
    .get_result(&mut conn)
    .await
    .optional()
    .map_err(DbError::from)?;
    if let Some(challenge) = consumed {
        return Ok(challenge);
    }

    // Failed: read the row to say why.
    let found = challenges::table
        .find(nonce)
        .select(Challenge::as_select())
        .first(&mut conn)
        .await
        .optional()
        .map_err(DbError::from)?;
    Err(match found {
        None => ChallengeError::Unknown,
        Some(c) if c.address != address.as_str() => ChallengeError::WrongAddress,
        Some(c) if c.used_at.is_some() => ChallengeError::AlreadyUsed,
        Some(c) if c.expires_at <= now => ChallengeError::Expired,
        // Issued between the two statements: it did not exist when we tried.
        Some(_) => ChallengeError::Unknown,
    })
}

/// Deletes every challenge that expired before `before`, used or not;
/// returns how many.
pub async fn delete_expired_challenges(
    pool: &DbPool,
    before: DateTime<Utc>,
) -> Result<usize, DbError> {
    let mut conn = pool.get().await?;
    let deleted = diesel::delete(challenges::table.filter(challenges::expires_at.lt(before)))
        .execute(&mut conn)
        .await?;
    Ok(deleted)
}

/// Stores a new token for `address` by its SHA-256 ([`hash_token`]).
pub async fn store_token(
    pool: &DbPool,
    sha256: [u8; 32],
    address: &WalletId,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    let mut conn = pool.get().await?;
    diesel::insert_into(auth_tokens::table)
        .values((
            auth_tokens::token_sha256.eq(sha256.as_slice()),
            auth_tokens::address.eq(address.as_str()),
            auth_tokens::expires_at.eq(expires_at),
        ))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The address a token signs in at `now`: `None` for an unknown, expired
/// or revoked token.
pub async fn token_owner(
    pool: &DbPool,
    sha256: [u8; 32],
    now: DateTime<Utc>,
) -> Result<Option<WalletId>, DbError> {
    let mut conn = pool.get().await?;
    let address: Option<String> = auth_tokens::table
        .find(sha256.as_slice())
        .filter(auth_tokens::expires_at.gt(now))
        .filter(auth_tokens::revoked_at.is_null())
        .select(auth_tokens::address)
        .first(&mut conn)
        .await
        .optional()?;
    Ok(address.as_deref().map(WalletId::new))
}

/// Revokes one token (sign-out); returns whether a not-yet-revoked token
/// was found. Revoking twice keeps the first revocation time.
pub async fn revoke_token(pool: &DbPool, sha256: [u8; 32]) -> Result<bool, DbError> {
    let mut conn = pool.get().await?;
    let revoked = diesel::update(
        auth_tokens::table
            .find(sha256.as_slice())
            .filter(auth_tokens::revoked_at.is_null()),
    )
    .set(auth_tokens::revoked_at.eq(diesel::dsl::now))
    .execute(&mut conn)
    .await?;
    Ok(revoked > 0)
}

/// Revokes every token of `address` (sign out everywhere); returns how many
/// were not revoked before.
pub async fn revoke_all_tokens(pool: &DbPool, address: &WalletId) -> Result<usize, DbError> {
    let mut conn = pool.get().await?;
    let revoked = diesel::update(
        auth_tokens::table
            .filter(auth_tokens::address.eq(address.as_str()))
            .filter(auth_tokens::revoked_at.is_null()),
    )
    .set(auth_tokens::revoked_at.eq(diesel::dsl::now))
    .execute(&mut conn)
    .await?;
    tracing::info!(%address, revoked, "revoked every token of a wallet");
    Ok(revoked)
}

/// Whether [`consume_challenge`] would accept `nonce` for `address` at
/// `now`, read without consuming anything. It lets the protocol refuse a
/// dead nonce before doing costly signature checks; only
/// [`consume_challenge`] decides, since the state can change in between.
pub async fn check_challenge(
    pool: &DbPool,
    nonce: &str,
    address: &WalletId,
    now: DateTime<Utc>,
) -> Result<Challenge, ChallengeError> {
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let found = challenges::table
        .find(nonce)
        .select(Challenge::as_select())
        .first(&mut conn)
        .await
        .optional()
        .map_err(DbError::from)?;
    match found {
        None => Err(ChallengeError::Unknown),
        Some(c) if c.address != address.as_str() => Err(ChallengeError::WrongAddress),
        Some(c) if c.used_at.is_some() => Err(ChallengeError::AlreadyUsed),
        Some(c) if c.expires_at <= now => Err(ChallengeError::Expired),
        Some(c) => Ok(c),
    }
}
