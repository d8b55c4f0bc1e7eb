//! The Ethereum JSON-RPC adapter (alloy) behind the chain watcher's port.
//!
//! A block's deposits are read by the block's hash (`eth_getBlockByHash`
//! with full transactions, `eth_getLogs` with `blockHash`), so an answer is
//! always about the block the watcher asked for, never a block that replaced
//! it at the same height in between.

use std::fmt;

use alloy::eips::BlockNumberOrTag;
use alloy::network::TransactionResponse as _;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;
use async_trait::async_trait;
use deskgate_actors::ports::{
    Address20, Amount256, BlockHeader, ChainDeposit, ChainError, ChainReader, DepositAsset,
    ETH_LOG_INDEX, Hash32,
};

alloy::sol! {
    /// The ERC-20 Transfer event.
    #[derive(Debug)]
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// The ERC-20 `Transfer` event's topic 0.
pub const TRANSFER_TOPIC: B256 = Transfer::SIGNATURE_HASH;

/// Converts alloy's hash to the port's.
pub fn hash32(hash: B256) -> Hash32 {
    Hash32(hash.0)
}

/// Converts alloy's address to the port's.
pub fn address20(address: Address) -> Address20 {
    Address20(address.0.0)
}

/// Converts alloy's amount to the port's.
pub fn amount256(amount: U256) -> Amount256 {
    Amount256(amount.to_be_bytes::<32>())
}

/// One ERC-20 Transfer log, from any contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferLog {
    /// The contract that emitted it.
    pub token: Address,
    /// Its index in the block.
    pub log_index: u64,
    /// Sender.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Base units.
    pub amount: U256,
}

/// What the node knows about one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxFacts {
    /// The transaction.
    pub tx_hash: B256,
    /// Its block, `None` while it waits in the mempool.
    pub block: Option<(u64, B256)>,
    /// Sender.
    pub from: Address,
    /// Called or paid address; `None` for a contract creation.
    pub to: Option<Address>,
    /// ETH sent along.
    pub value: U256,
    /// `Some(true)` if it succeeded, `Some(false)` if it reverted, `None`
    /// while unmined.
    pub success: Option<bool>,
    /// ERC-20 Transfer logs it emitted (none for a reverted transaction).
    pub transfers: Vec<TransferLog>,
}

/// Reads deposits to `revenue` (ETH, and `token` if configured) through an
/// HTTP JSON-RPC node.
#[derive(Clone)]
pub struct AlloyChain {
    provider: DynProvider,
    revenue: Address,
    token: Option<Address>,
}

impl fmt::Debug for AlloyChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlloyChain")
            .field("revenue", &self.revenue)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn rpc_error(what: &str, error: impl fmt::Display) -> ChainError {
    metrics::counter!("deskgate_chain_rpc_errors_total").increment(1);
    ChainError(format!("{what}: {error}"))
}

impl AlloyChain {
    /// An adapter for the node at `rpc_url`.
    pub fn new(rpc_url: url::Url, revenue: Address, token: Option<Address>) -> Self {
        let provider = ProviderBuilder::new().connect_http(rpc_url).erased();
        Self {
            provider,
            revenue,
            token,
        }
    }

    /// The revenue address.
    pub fn revenue(&self) -> Address {
        self.revenue
    }

    /// The accepted token, if any.
    pub fn token(&self) -> Option<Address> {
        self.token
    }

    /// The provider, for other reads.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Everything the node knows about `tx_hash`; `None` if it knows nothing.
    pub async fn transaction(&self, tx_hash: B256) -> Result<Option<TxFacts>, ChainError> {
        let Some(tx) = self
            .provider
            .get_transaction_by_hash(tx_hash)
            .await
            .map_err(|e| rpc_error("eth_getTransactionByHash", e))?
        else {
            return Ok(None);
        };
        let mut facts = TxFacts {
            tx_hash,
            block: None,
            from: tx.from(),
            to: alloy::consensus::Transaction::to(&tx),
            value: alloy::consensus::Transaction::value(&tx),
            success: None,
            transfers: Vec::new(),
        };
        if tx.block_hash.is_none() {
            return Ok(Some(facts));
        }
        let Some(receipt) = self
            .provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(|e| rpc_error("eth_getTransactionReceipt", e))?
        else {
            return Ok(Some(facts));
        };
        if let (Some(number), Some(hash)) = (receipt.block_number, receipt.block_hash) {
            facts.block = Some((number, hash));
        }
        facts.success = Some(receipt.status());
        facts.transfers = receipt.logs().iter().filter_map(transfer_log).collect();
        Ok(Some(facts))
    }
}

/// The Transfer in `log`, if it is one.
fn transfer_log(log: &Log) -> Option<TransferLog> {
    if log.topics().first() != Some(&TRANSFER_TOPIC) {
        return None;
    }
    let decoded = log.log_decode::<Transfer>().ok()?;
    Some(TransferLog {
        token: log.address(),
        log_index: log.log_index?,
        from: decoded.inner.data.from,
        to: decoded.inner.data.to,
        amount: decoded.inner.data.value,
    })
}

#[async_trait]
impl ChainReader for AlloyChain {
    async fn latest_block(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| rpc_error("eth_blockNumber", e))
    }

    async fn finalized_block(&self) -> Result<Option<u64>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Finalized)
            .await
            .map_err(|e| rpc_error("eth_getBlockByNumber(finalized)", e))?;
        Ok(block.map(|b| b.header.number))
    }

    async fn block(&self, number: u64) -> Result<Option<BlockHeader>, ChainError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| rpc_error("eth_getBlockByNumber", e))?;
        Ok(block.map(|b| BlockHeader {
            number: b.header.number,
            hash: hash32(b.header.hash),
            parent_hash: hash32(b.header.parent_hash),
        }))
    }

    async fn deposits_in_block(
        &self,
        block: &BlockHeader,
    ) -> Result<Vec<ChainDeposit>, ChainError> {
        let hash = B256::from(block.hash.0);
        let mut deposits = Vec::new();
        let to = address20(self.revenue);

        let full = self
            .provider
            .get_block_by_hash(hash)
            .full()
            .await
            .map_err(|e| rpc_error("eth_getBlockByHash", e))?
            .ok_or_else(|| ChainError(format!("block {} {hash} left the chain", block.number)))?;
        for tx in full.transactions.txns() {
            let value = alloy::consensus::Transaction::value(tx);
            if alloy::consensus::Transaction::to(tx) != Some(self.revenue) || value.is_zero() {
                continue;
            }
            let tx_hash = tx.tx_hash();
            let receipt = self
                .provider
                .get_transaction_receipt(tx_hash)
                .await
                .map_err(|e| rpc_error("eth_getTransactionReceipt", e))?
                .ok_or_else(|| ChainError(format!("no receipt for {tx_hash}")))?;
            if !receipt.status() || receipt.block_hash != Some(hash) {
                continue;
            }
            deposits.push(ChainDeposit {
                tx_hash: hash32(tx_hash),
                log_index: ETH_LOG_INDEX,
                block_number: block.number,
                block_hash: block.hash,
                from: address20(tx.from()),
                to,
                asset: DepositAsset::Eth,
                amount: amount256(value),
            });
        }

        if let Some(token) = self.token {
            let filter = Filter::new()
                .at_block_hash(hash)
                .address(token)
                .event_signature(TRANSFER_TOPIC)
                .topic2(self.revenue.into_word());
            let logs = self
                .provider
                .get_logs(&filter)
                .await
                .map_err(|e| rpc_error("eth_getLogs", e))?;
            for log in logs.iter().filter(|l| !l.removed) {
                let (Some(transfer), Some(tx_hash)) = (transfer_log(log), log.transaction_hash)
                else {
                    continue;
                };
                if transfer.to != self.revenue || transfer.token != token {
                    continue;
                }
                deposits.push(ChainDeposit {
                    tx_hash: hash32(tx_hash),
                    log_index: i64::try_from(transfer.log_index).unwrap_or(i64::MAX),
                    block_number: block.number,
                    block_hash: block.hash,
                    from: address20(transfer.from),
                    to,
                    asset: DepositAsset::Token,
                    amount: amount256(transfer.amount),
                });
            }
        }
        Ok(deposits)
    }
}
