//! Wallet sign-in: nonces, signature checks (EIP-191, EIP-1271), tokens.
//!
//! The browser asks for a challenge ([`SignIn::issue`]): a random nonce,
//! stored for five minutes, inside a ready EIP-4361 message. The wallet signs
//! the message with `personal_sign` and the browser hands both back
//! ([`SignIn::verify`]). A good signature consumes the nonce and yields a
//! bearer token, random 32 bytes of which only the SHA-256 is stored.
//!
//! [`SignIn::verify`] checks, in this order, and stops at the first failure:
//!
//! 1. the text parses as EIP-4361 and the signature is hex, at most
//!    16 KiB;
//! 2. the message is bound to this gate: scheme, domain and URI of
//!    `DESKGATE_PUBLIC_URL`, and `DESKGATE_CHAIN_ID`;
//! 3. its times: issued-at and not-before reached (allowing some clock skew
//!    of the browser), expiration not passed;
//! 4. the nonce is alive and was issued to the message's address — read
//!    only, so that a dead nonce costs no RPC call below;
//! 5. the signature: EIP-191 recovery of a 65-byte signature gives the
//!    address, or else the address holds code (or an ERC-6492 wrapper's
//!    factory would deploy it) and its EIP-1271 `isValidSignature`,
//!    handed the signature bytes as they came, returns the magic value —
//!    asked in one deployless `eth_call` (`contract_wallet.rs`), where a
//!    wallet that reverts or runs out of gas refuses, and only the node's
//!    own failure is "RPC unavailable";
//! 6. only now the nonce is consumed, atomically. A wrong signature
//!    therefore never burns the owner's nonce, and a replayed good signature
//!    fails as "nonce already used" (at step 4, or here when two race).
//!
//! Neither tokens nor signatures appear in logs or errors. Every refusal
//! counts in `deskgate_sign_in_failures_total{reason=<code>}`, every
//! success in `deskgate_sign_in_successes_total`.
//!
//! Its parts: [`siwe`] parses and checks EIP-4361 messages, [`store`] keeps
//! nonces and token hashes in PostgreSQL, [`tickets`] hands out the
//! single-use tickets that WebSocket and media routes take in their URL.
//! The flow itself, [`SignIn`], is in `sign_in.rs`, and its refusals,
//! [`SignInError`] and [`SignInSetupError`], in `error.rs`; both are private
//! and re-exported here, so callers name `crate::auth::SignIn` and so on.

pub mod siwe;
pub mod store;
pub mod tickets;

mod contract_wallet;
mod error;
mod sign_in;

pub use contract_wallet::MAX_SIGNATURE_BYTES;
pub use error::{SignInError, SignInSetupError};
pub use sign_in::{
    CHALLENGE_LIFE, CLOCK_SKEW, FAILURES_METRIC, IssuedChallenge, IssuedToken, NONCE_CHARS,
    STATEMENT, SUCCESSES_METRIC, SignIn,
};
