//! How deposits and processed blocks are stored as text and read back: the
//! row types the book's queries load, and the conversions between them and
//! the chain watcher's types.
//!
//! Invariant: a row that does not read back (an unknown status or asset, a
//! malformed hash, address or amount) is a [`BookError`] naming what was
//! unreadable, never a panic and never a guess.

use std::str::FromStr;

use alloy::primitives::{Address, B256, U256};
use deskgate_actors::ports::{
    Address20, Amount256, BookError, ChainDeposit, CreditSeconds, DepositAsset, DepositRecord,
    DepositStatus, Hash32,
};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};

use crate::money::chain::{address20, amount256, hash32};
use crate::money::pricing::Asset;

/// The columns every deposit query selects, as [`DepositRow`] reads them.
pub(super) const COLUMNS: &str = "tx_hash, log_index, block_number, block_hash, \"from\", \"to\", \
                                  asset, amount::text AS amount, status, credit_seconds";

#[derive(QueryableByName)]
pub(super) struct DepositRow {
    #[diesel(sql_type = Text)]
    tx_hash: String,
    #[diesel(sql_type = BigInt)]
    log_index: i64,
    #[diesel(sql_type = BigInt)]
    block_number: i64,
    #[diesel(sql_type = Text)]
    block_hash: String,
    #[diesel(sql_type = Text)]
    from: String,
    #[diesel(sql_type = Text)]
    to: String,
    #[diesel(sql_type = Text)]
    asset: String,
    #[diesel(sql_type = Text)]
    amount: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    credit_seconds: Option<i64>,
}

#[derive(QueryableByName)]
pub(super) struct BlockRow {
    #[diesel(sql_type = BigInt)]
    pub(super) number: i64,
    #[diesel(sql_type = Text)]
    pub(super) hash: String,
    #[diesel(sql_type = Text)]
    pub(super) parent_hash: String,
}

#[derive(QueryableByName)]
pub(super) struct StatusRow {
    #[diesel(sql_type = Text)]
    pub(super) status: String,
}

pub(super) fn bad(what: &str, value: &str) -> BookError {
    BookError(format!(
        "unreadable {what} {value:?} in the deposits tables"
    ))
}

pub(super) fn parse_hash(value: &str) -> Result<Hash32, BookError> {
    B256::from_str(value)
        .map(hash32)
        .map_err(|_| bad("hash", value))
}

fn parse_address(value: &str) -> Result<Address20, BookError> {
    Address::from_str(value)
        .map(address20)
        .map_err(|_| bad("address", value))
}

pub(super) fn parse_status(value: &str) -> Result<DepositStatus, BookError> {
    Ok(match value {
        "pending" => DepositStatus::Pending,
        "credited" => DepositStatus::Credited,
        "rejected" => DepositStatus::Rejected,
        "removed" => DepositStatus::Removed,
        other => return Err(bad("status", other)),
    })
}

pub(super) fn asset_name(asset: DepositAsset) -> &'static str {
    match asset {
        DepositAsset::Eth => Asset::Eth.as_str(),
        DepositAsset::Token => Asset::Token.as_str(),
    }
}

pub(super) fn pricing_asset(asset: DepositAsset) -> Asset {
    match asset {
        DepositAsset::Eth => Asset::Eth,
        DepositAsset::Token => Asset::Token,
    }
}

/// The amount as a U256.
pub fn amount_u256(amount: Amount256) -> U256 {
    U256::from_be_bytes(amount.0)
}

pub(super) fn number(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Each row as a record with the credit-seconds it bought, if credited.
pub(super) fn with_credit(
    rows: Vec<DepositRow>,
) -> Result<Vec<(DepositRecord, Option<CreditSeconds>)>, BookError> {
    rows.into_iter()
        .map(|row| {
            let credit = row.credit_seconds;
            row.into_record().map(|r| (r, credit))
        })
        .collect()
}

impl DepositRow {
    pub(super) fn into_record(self) -> Result<DepositRecord, BookError> {
        let amount =
            U256::from_str_radix(&self.amount, 10).map_err(|_| bad("amount", &self.amount))?;
        Ok(DepositRecord {
            deposit: ChainDeposit {
                tx_hash: parse_hash(&self.tx_hash)?,
                log_index: self.log_index,
                block_number: u64::try_from(self.block_number)
                    .map_err(|_| bad("block number", &self.block_number.to_string()))?,
                block_hash: parse_hash(&self.block_hash)?,
                from: parse_address(&self.from)?,
                to: parse_address(&self.to)?,
                asset: match self.asset.as_str() {
                    "eth" => DepositAsset::Eth,
                    "token" => DepositAsset::Token,
                    other => return Err(bad("asset", other)),
                },
                amount: amount256(amount),
            },
            status: parse_status(&self.status)?,
        })
    }
}
