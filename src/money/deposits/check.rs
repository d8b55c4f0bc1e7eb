//! [`check_transaction`]: what `POST /api/v1/deposits {tx_hash}` runs to
//! check one transaction at once by the chain watcher's rules, and its
//! answer, [`TxCheck`].
//!
//! Invariant: a deposit found here is recorded and credited through the same
//! [`PgDepositBook`] and under the same key as the watcher's, so the two
//! never credit one deposit twice.

use alloy::primitives::B256;
use deskgate_actors::chain_watcher::{Required, confirmations};
use deskgate_actors::ports::{
    BookError, ChainDeposit, ChainError, ChainReader, CreditSeconds, DepositAsset, DepositBook,
    DepositStatus, ETH_LOG_INDEX,
};
use serde::Serialize;
use tracing::info;

use super::PgDepositBook;
use crate::money::chain::{AlloyChain, address20, amount256, hash32};

/// Where a checked transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// A valid deposit waiting for confirmations (or not yet mined).
    Pending,
    /// Credited (now or before).
    Credited,
    /// Not a deposit deskgate accepts; `reason` says why.
    Rejected,
}

/// The answer to `POST /api/v1/deposits {tx_hash}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TxCheck {
    /// Where it stands.
    pub status: CheckStatus,
    /// Confirmations now (0 while unmined or unknown).
    pub confirmations: u64,
    /// Confirmations needed; `None` when deposits wait for the finalized block.
    pub required: Option<u64>,
    /// Credit-seconds it bought (credited) or buys at today's price (pending).
    pub credit_seconds: Option<CreditSeconds>,
    /// Why it was rejected, or what it waits for.
    pub reason: Option<String>,
}

impl TxCheck {
    fn rejected(required: Required, reason: String) -> Self {
        Self {
            status: CheckStatus::Rejected,
            confirmations: 0,
            required: required_blocks(required),
            credit_seconds: None,
            reason: Some(reason),
        }
    }
}

fn required_blocks(required: Required) -> Option<u64> {
    match required {
        Required::Blocks(n) => Some(n),
        Required::Finalized => None,
    }
}

/// Why a transaction could not be checked now (try again later).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The RPC node failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The database failed.
    #[error(transparent)]
    Book(#[from] BookError),
}

/// Checks one transaction now, by the chain watcher's rules: a successful
/// transaction that sends ETH to the revenue address, or whose logs hold a
/// Transfer of the configured token to it, is a deposit. It is recorded as
/// pending and, once it has enough confirmations, credited exactly once
/// (the same key as the watcher's, so the two never credit it twice).
/// Idempotent: asking again answers the same, credited at most once.
pub async fn check_transaction(
    chain: &AlloyChain,
    book: &PgDepositBook,
    required: Required,
    tx_hash: B256,
) -> Result<TxCheck, CheckError> {
    let known = book.deposits_of(hash32(tx_hash)).await?;
    let Some(facts) = chain.transaction(tx_hash).await? else {
        let credited: Vec<_> = known
            .iter()
            .filter(|(r, _)| r.status == DepositStatus::Credited)
            .collect();
        if !credited.is_empty() {
            // Credited, then reorged away (flagged for an administrator).
            return Ok(TxCheck {
                status: CheckStatus::Credited,
                confirmations: 0,
                required: required_blocks(required),
                credit_seconds: Some(credited.iter().filter_map(|(_, c)| *c).sum()),
                reason: Some("credited, but the node no longer knows the transaction".into()),
            });
        }
        return Ok(TxCheck::rejected(
            required,
            format!("unknown transaction: the node does not know {tx_hash}"),
        ));
    };
    let revenue = chain.revenue();
    let token = chain.token();

    let Some((block_number, block_hash)) = facts.block else {
        return Ok(TxCheck {
            status: CheckStatus::Pending,
            confirmations: 0,
            required: required_blocks(required),
            credit_seconds: None,
            reason: Some("not yet mined".into()),
        });
    };
    if facts.success == Some(false) {
        return Ok(TxCheck::rejected(
            required,
            "failed transaction: it reverted, so nothing was transferred".into(),
        ));
    }

    let mut deposits = Vec::new();
    if facts.to == Some(revenue) && !facts.value.is_zero() {
        deposits.push(ChainDeposit {
            tx_hash: hash32(tx_hash),
            log_index: ETH_LOG_INDEX,
            block_number,
            block_hash: hash32(block_hash),
            from: address20(facts.from),
            to: address20(revenue),
            asset: DepositAsset::Eth,
            amount: amount256(facts.value),
        });
    }
    for transfer in &facts.transfers {
        if transfer.to == revenue && Some(transfer.token) == token {
            deposits.push(ChainDeposit {
                tx_hash: hash32(tx_hash),
                log_index: i64::try_from(transfer.log_index).unwrap_or(i64::MAX),
                block_number,
                block_hash: hash32(block_hash),
                from: address20(transfer.from),
                to: address20(revenue),
                asset: DepositAsset::Token,
                amount: amount256(transfer.amount),
            });
        }
    }

    if deposits.is_empty() {
        let reason = if let Some(other) = facts.transfers.iter().find(|t| t.to == revenue) {
            match token {
                Some(token) => format!(
                    "wrong token: {} is not the accepted token {token}",
                    other.token
                ),
                None => format!("wrong token: {} is not accepted; only ETH is", other.token),
            }
        } else if let Some(transfer) = facts.transfers.iter().find(|t| Some(t.token) == token) {
            format!(
                "wrong recipient: the token went to {}, not the revenue address {revenue}",
                transfer.to
            )
        } else if facts.to == Some(revenue) {
            "no value: the transaction sends no ETH and no token to the revenue address".into()
        } else {
            let to = facts
                .to
                .map_or("a new contract".to_string(), |a| a.to_string());
            format!("wrong recipient: the transaction pays {to}, not the revenue address {revenue}")
        };
        info!(tx = %tx_hash, reason, "deposit check rejected");
        return Ok(TxCheck::rejected(required, reason));
    }

    book.record_pending(&deposits).await?;
    let latest = chain.latest_block().await?;
    let confirmations = confirmations(block_number, latest);
    let finalized = match required {
        Required::Finalized => chain.finalized_block().await?,
        Required::Blocks(_) => None,
    };
    let ready = required.met(block_number, latest, finalized);
    let mut total = 0;
    let mut all_credited = true;
    for deposit in &deposits {
        if ready {
            total += book.credit(deposit).await?;
        } else {
            all_credited = false;
            total += book.price(deposit).await.unwrap_or(0);
        }
    }
    Ok(TxCheck {
        status: if all_credited {
            CheckStatus::Credited
        } else {
            CheckStatus::Pending
        },
        confirmations,
        required: required_blocks(required),
        credit_seconds: Some(total),
        reason: (!all_credited).then(|| "waiting for confirmations".to_string()),
    })
}
