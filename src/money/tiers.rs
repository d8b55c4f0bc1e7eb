//! A wallet's discount tier from its token balance, now and a day ago.
//!
//! A wallet's tier balance is the **minimum** of its token balance at the
//! latest confirmed block and at the block about 24 hours before it. The
//! minimum is what stops discount farming by moving tokens around: when a
//! holder sends its tokens to a second wallet, the receiver has no day-old
//! balance and the sender's current balance dropped, so neither reaches a
//! tier until a full day has passed, and then only the wallet that still
//! holds the tokens does. One stake therefore earns one discount per day, no
//! matter how many wallets it visits. Balances are read at confirmed blocks
//! only, so a transfer that a reorg may still undo earns nothing either.
//!
//! The day-old block is found from block timestamps by binary search between
//! genesis and the confirmed block. The answer is cached briefly and reused
//! as long as it still is the right block, so a burst of quotes costs a
//! block-number call and two `balanceOf` calls each, not twenty header reads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::eips::{BlockId, BlockNumberOrTag};
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use alloy::transports::TransportError;
use async_trait::async_trait;
use deskgate_actors::ports::CreditSeconds;

use crate::config::Confirmations;
use crate::money::pricing::{Asset, DepositPricer, Pricing};

/// How far back the second balance is read: a token must have been held this
/// long to count.
pub const HOLDING_PERIOD_SECONDS: u64 = 24 * 60 * 60;

/// How long a found day-old block may be reused. Within this time a cached
/// answer is still checked against the new target timestamp, so the TTL only
/// bounds how long a reorged-away timestamp could linger.
pub const DAY_OLD_CACHE_TTL: Duration = Duration::from_secs(60);

alloy::sol! {
    /// The one ERC-20 read the oracle makes.
    function balanceOf(address owner) external view returns (uint256);
}

/// Why a tier could not be determined. Messages never carry the RPC URL,
/// which may embed an API key.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// The RPC node failed or could not be reached.
    #[error("tier lookup: the Ethereum RPC node failed while {during}: {detail}")]
    Rpc {
        /// What the oracle was asking for.
        during: &'static str,
        /// The node's or transport's error, with any URL redacted.
        detail: String,
    },
    /// The node does not know a block it should (pruned, or behind).
    #[error("tier lookup: the Ethereum RPC node has no block {0} (is it pruned or still syncing?)")]
    MissingBlock(String),
    /// `balanceOf` answered something other than one `uint256`.
    #[error(
        "tier lookup: balanceOf on the token at block {block} returned {len} bytes, not a uint256 \
         (is DESKGATE_TOKEN_ADDRESS an ERC-20?)"
    )]
    NotAToken {
        /// The block asked about.
        block: u64,
        /// How many bytes came back.
        len: usize,
    },
}

impl TierError {
    fn rpc(during: &'static str, error: TransportError) -> Self {
        Self::Rpc {
            during,
            detail: redact_urls(&error.to_string()),
        }
    }
}

/// Replaces every `scheme://…` in `text` with `[url redacted]`: transport
/// errors (reqwest's among them) quote the URL they failed on, and an RPC URL
/// often carries an API key in its path or query.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>' | ','))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str("[url redacted]");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A found day-old block and the range of target timestamps it answers.
#[derive(Clone, Copy, Debug)]
struct DayOld {
    /// The confirmed block it was found for.
    confirmed: u64,
    /// The answer: the last block at or before the target time.
    block: u64,
    /// The answer holds for targets from this timestamp (the block's own, or
    /// 0 for block 0 when the chain was younger than a day)...
    from_ts: u64,
    /// ...up to, not including, this one (the next block's timestamp).
    until_ts: u64,
    found_at: Instant,
}

/// The result of one search: the block and its validity range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    block: u64,
    from_ts: u64,
    until_ts: u64,
}

/// The last block in `[lo, hi)` whose timestamp is at most `target`, or `lo`
/// when there is none. With `lo < hi`, `until_ts` is the timestamp of the
/// block after the answer.
///
/// Preconditions: the answer is at least `lo` (`lo_ts`, when known, is at
/// most `target`; it is unknown only for `lo == 0`), and `hi_ts`, the
/// timestamp of `hi`, exceeds `target`. With `gallop`, probes `lo + 1, lo +
/// 2, lo + 4, …` first: cheap when the answer is known to be just past `lo`.
async fn search<F, Fut>(
    (mut lo, mut lo_ts): (u64, Option<u64>),
    (mut hi, mut hi_ts): (u64, u64),
    target: u64,
    gallop: bool,
    timestamp_of: &mut F,
) -> Result<Found, TierError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<u64, TierError>>,
{
    if gallop {
        let mut step = 1u64;
        while let Some(probe) = lo.checked_add(step).filter(|p| *p < hi) {
            let ts = timestamp_of(probe).await?;
            if ts <= target {
                (lo, lo_ts) = (probe, Some(ts));
                step = step.saturating_mul(2);
            } else {
                (hi, hi_ts) = (probe, ts);
                break;
            }
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let ts = timestamp_of(mid).await?;
        if ts <= target {
            (lo, lo_ts) = (mid, Some(ts));
        } else {
            (hi, hi_ts) = (mid, ts);
        }
    }
    Ok(Found {
        block: lo,
        // Unknown only for block 0, which answers every target below the
        // next block's timestamp.
        from_ts: lo_ts.unwrap_or(0),
        until_ts: hi_ts,
    })
}

/// Finds the day-old block for a confirmed block, remembering the last
/// answer.
#[derive(Debug)]
struct DayOldFinder {
    cache: Mutex<Option<DayOld>>,
    ttl: Duration,
}

impl DayOldFinder {
    fn new(ttl: Duration) -> Self {
        Self {
            cache: Mutex::new(None),
            ttl,
        }
    }

    fn fresh(&self) -> Option<DayOld> {
        let cached = *self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cached.filter(|c| c.found_at.elapsed() < self.ttl)
    }

    fn store(&self, entry: DayOld) {
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
    }

    /// The last block at or before `timestamp(confirmed) − 24 h`, or block 0
    /// when the chain is younger than that. `confirmed_ts` is the confirmed
    /// block's timestamp when the caller already has it.
    async fn find<F, Fut>(
        &self,
        confirmed: u64,
        confirmed_ts: Option<u64>,
        mut timestamp_of: F,
    ) -> Result<u64, TierError>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<u64, TierError>>,
    {
        let cached = self.fresh();
        if let Some(hit) = cached.filter(|c| c.confirmed == confirmed) {
            return Ok(hit.block);
        }
        let confirmed_ts = match confirmed_ts {
            Some(ts) => ts,
            None => timestamp_of(confirmed).await?,
        };
        let target = confirmed_ts.saturating_sub(HOLDING_PERIOD_SECONDS);
        let found = match cached {
            // The confirmed block moved but the target still falls between
            // the same two blocks: the common case between two quotes.
            Some(c) if c.from_ts <= target && target < c.until_ts && c.block < confirmed => Found {
                block: c.block,
                from_ts: c.from_ts,
                until_ts: c.until_ts,
            },
            // The target moved forward past the next block: the answer is
            // at least that block and usually just past it, so gallop.
            Some(c) if target >= c.until_ts && c.block + 1 < confirmed => {
                search(
                    (c.block + 1, Some(c.until_ts)),
                    (confirmed, confirmed_ts),
                    target,
                    true,
                    &mut timestamp_of,
                )
                .await?
            }
            // Cold (or the chain went backwards): bisect the whole chain.
            // Block 0's timestamp is never needed: if every block is younger
            // than a day, the search ends at block 0 all the same.
            _ => {
                search(
                    (0, None),
                    (confirmed, confirmed_ts),
                    target,
                    false,
                    &mut timestamp_of,
                )
                .await?
            }
        };
        // With only genesis confirmed there is no next block whose
        // timestamp could bound the answer, so there is nothing to cache.
        if confirmed == 0 {
            return Ok(found.block);
        }
        self.store(DayOld {
            confirmed,
            block: found.block,
            from_ts: found.from_ts,
            until_ts: found.until_ts,
            found_at: Instant::now(),
        });
        Ok(found.block)
    }
}

/// Reads a wallet's tier balance from the chain: the smaller of its token
/// balance at the latest confirmed block and at the block about 24 hours
/// earlier (see the module documentation for why the minimum).
///
/// "Confirmed" follows `DESKGATE_CONFIRMATIONS`, as deposits do: with
/// `Blocks(n)` it is block `latest − n + 1` (`n = 0` counts like 1, the
/// latest block itself); with `Finalized` it is the node's finalized block.
/// When the chain is younger than 24 hours, no block is a day old and block 0
/// (genesis) stands in, so a balance acquired after genesis counts only once
/// a day has passed.
#[derive(Debug)]
pub struct TierOracle<P = RootProvider> {
    provider: P,
    token: Option<Address>,
    pricing: Pricing,
    confirmations: Confirmations,
    day_old: DayOldFinder,
}

impl<P: Provider> TierOracle<P> {
    /// An oracle reading `token` through `provider`. With no token there are
    /// no discounts and the oracle never calls the node.
    pub fn new(
        provider: P,
        token: Option<Address>,
        pricing: Pricing,
        confirmations: Confirmations,
    ) -> Self {
        Self {
            provider,
            token,
            pricing,
            confirmations,
            day_old: DayOldFinder::new(DAY_OLD_CACHE_TTL),
        }
    }

    /// The price list whose tiers this oracle applies.
    pub fn pricing(&self) -> &Pricing {
        &self.pricing
    }

    /// The discount, in percent, that `wallet` gets now. No token or no
    /// tiers configured: 0, without asking the node.
    pub async fn discount_for(&self, wallet: Address) -> Result<u8, TierError> {
        if self.token.is_none() || self.pricing.tiers().is_empty() {
            return Ok(0);
        }
        let balance = self.token_balance_for_tier(wallet).await?;
        Ok(self.pricing.discount_for(balance))
    }

    /// The minimum of `wallet`'s token balance at the latest confirmed block
    /// and at the block about 24 hours before it. Zero when no token is
    /// configured (without asking the node) or when no block is confirmed
    /// yet.
    pub async fn token_balance_for_tier(&self, wallet: Address) -> Result<U256, TierError> {
        let Some(token) = self.token else {
            return Ok(U256::ZERO);
        };
        let Some((confirmed, confirmed_ts)) = self.confirmed_block().await? else {
            return Ok(U256::ZERO);
        };
        let day_old = self
            .day_old
            .find(confirmed, confirmed_ts, |n| self.timestamp_of(n))
            .await?;
        let (now, then) = tokio::try_join!(
            self.balance_at(token, wallet, confirmed),
            self.balance_at(token, wallet, day_old)
        )?;
        Ok(now.min(then))
    }

    /// The latest confirmed block's number, and its timestamp when that came
    /// for free; `None` while the chain is shorter than the confirmations.
    async fn confirmed_block(&self) -> Result<Option<(u64, Option<u64>)>, TierError> {
        match self.confirmations {
            Confirmations::Blocks(n) => {
                let latest = self
                    .provider
                    .get_block_number()
                    .await
                    .map_err(|e| TierError::rpc("reading the latest block number", e))?;
                Ok((latest + 1)
                    .checked_sub(n.max(1))
                    .map(|confirmed| (confirmed, None)))
            }
            Confirmations::Finalized => {
                let block = self
                    .provider
                    .get_block_by_number(BlockNumberOrTag::Finalized)
                    .await
                    .map_err(|e| TierError::rpc("reading the finalized block", e))?
                    .ok_or_else(|| TierError::MissingBlock("`finalized`".to_string()))?;
                Ok(Some((block.header.number, Some(block.header.timestamp))))
            }
        }
    }

    async fn timestamp_of(&self, number: u64) -> Result<u64, TierError> {
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| TierError::rpc("reading a block header", e))?
            .ok_or_else(|| TierError::MissingBlock(number.to_string()))?;
        Ok(block.header.timestamp)
    }

    async fn balance_at(
        &self,
        token: Address,
        wallet: Address,
        block: u64,
    ) -> Result<U256, TierError> {
        let call = TransactionRequest::default()
            .with_to(token)
            .with_input(balanceOfCall { owner: wallet }.abi_encode());
        let out = self
            .provider
            .call(call)
            .block(BlockId::number(block))
            .await
            .map_err(|e| TierError::rpc("reading a token balance", e))?;
        if out.is_empty() {
            // No code at the token address in that block: the token was not
            // deployed yet (a young chain's day-old block), so nobody held
            // any.
            return Ok(U256::ZERO);
        }
        balanceOfCall::abi_decode_returns(&out).map_err(|_| TierError::NotAToken {
            block,
            len: out.len(),
        })
    }
}

/// Prices deposits and quotes at the paying wallet's tier discount.
///
/// `pricing` sets the listed prices; the discount percentages come from the
/// oracle's own `Pricing` tiers (normally the same configuration). The
/// oracle is shared so that deposits and quotes share its day-old-block
/// cache.
#[derive(Clone, Debug)]
pub struct TieredPricer<P = RootProvider> {
    /// Listed prices.
    pub pricing: Pricing,
    /// Where discounts come from.
    pub oracle: Arc<TierOracle<P>>,
}

impl<P: Provider> TieredPricer<P> {
    /// A pricer over `pricing` and `oracle`.
    pub fn new(pricing: Pricing, oracle: Arc<TierOracle<P>>) -> Self {
        Self { pricing, oracle }
    }

    /// Base units of `asset` that buy `gpu_seconds` for `wallet`, after its
    /// discount, rounded up.
    pub async fn quote(
        &self,
        wallet: Address,
        asset: Asset,
        gpu_seconds: u64,
    ) -> Result<U256, TierError> {
        let discount = self.oracle.discount_for(wallet).await?;
        Ok(self.pricing.quote(asset, gpu_seconds, discount))
    }
}

#[async_trait]
impl<P: Provider + 'static> DepositPricer for TieredPricer<P> {
    /// Credit at the depositor's discount. A failed tier lookup is an error,
    /// not "no discount": the deposit then waits and is priced again, rather
    /// than being credited short for good.
    async fn credit_for(
        &self,
        wallet: Address,
        asset: Asset,
        amount: U256,
    ) -> Result<CreditSeconds, String> {
        let discount = self
            .oracle
            .discount_for(wallet)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Pricing::credit_for(&self.pricing, asset, amount, discount))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;
    use crate::config::Tier;

    /// The reference answer: a linear scan.
    fn expected(timestamps: &[u64], confirmed: u64) -> u64 {
        let target = timestamps[confirmed as usize].saturating_sub(HOLDING_PERIOD_SECONDS);
        (0..=confirmed)
            .rev()
            .find(|&n| timestamps[n as usize] <= target)
            .unwrap_or(0)
    }

    /// Runs `finder.find` over a fake chain, counting header reads.
    fn find(finder: &DayOldFinder, timestamps: &[u64], confirmed: u64) -> (u64, usize) {
        let reads = Cell::new(0usize);
        let found = futures::executor::block_on(finder.find(confirmed, None, |n| {
            reads.set(reads.get() + 1);
            std::future::ready(Ok(timestamps[n as usize]))
        }))
        .unwrap();
        (found, reads.get())
    }

    /// A chain with a block every 12 s for two days, starting at 1_000_000.
    fn mainnet_like() -> Vec<u64> {
        (0..14_400u64).map(|n| 1_000_000 + 12 * n).collect()
    }

    #[test]
    fn a_young_chain_uses_genesis() {
        let ts: Vec<u64> = (0..100u64).map(|n| 5_000 + n).collect();
        let finder = DayOldFinder::new(DAY_OLD_CACHE_TTL);
        assert_eq!(find(&finder, &ts, 99).0, 0);
        assert_eq!(find(&DayOldFinder::new(DAY_OLD_CACHE_TTL), &ts, 0).0, 0);
    }

    #[test]
    fn the_cache_spares_header_reads_and_stays_exact() {
        let ts = mainnet_like();
        let finder = DayOldFinder::new(DAY_OLD_CACHE_TTL);
        let (block, cold) = find(&finder, &ts, 10_000);
        assert_eq!(block, expected(&ts, 10_000));
        assert!(cold >= 10, "a cold lookup bisects ({cold} reads)");
        // Same confirmed block: no reads at all.
        assert_eq!(find(&finder, &ts, 10_000), (block, 0));
        // One block later the target moved by one block: the confirmed
        // header plus a short gallop, and still the exact answer.
        let (next, reads) = find(&finder, &ts, 10_001);
        assert_eq!(next, expected(&ts, 10_001));
        assert_ne!(next, block);
        assert!(reads <= 3, "{reads} reads for one block's progress");
        // A big jump is still exact.
        assert_eq!(find(&finder, &ts, 14_000).0, expected(&ts, 14_000));
    }

    #[test]
    fn an_expired_cache_searches_again() {
        let ts = mainnet_like();
        let finder = DayOldFinder::new(Duration::ZERO);
        let (block, _) = find(&finder, &ts, 10_000);
        let (again, reads) = find(&finder, &ts, 10_000);
        assert_eq!(again, block);
        assert!(reads >= 10, "expired entry was reused ({reads} reads)");
    }

    proptest! {
        /// Whatever the block times and the order of lookups, the finder
        /// answers what a linear scan answers.
        #[test]
        fn the_finder_agrees_with_a_linear_scan(
            gaps in proptest::collection::vec(0u64..40_000, 1..60),
            lookups in proptest::collection::vec(any::<prop::sample::Index>(), 1..8),
        ) {
            let mut ts = vec![1_000u64];
            for gap in gaps {
                ts.push(ts.last().unwrap() + gap);
            }
            let finder = DayOldFinder::new(DAY_OLD_CACHE_TTL);
            let mut confirmed: Vec<u64> = lookups.iter().map(|i| i.index(ts.len()) as u64).collect();
            // Mostly forward, as the chain grows, but a step back too.
            confirmed.sort_unstable();
            if confirmed.len() > 2 {
                confirmed.swap(1, 2);
            }
            for c in confirmed {
                prop_assert_eq!(find(&finder, &ts, c).0, expected(&ts, c));
            }
        }
    }

    #[test]
    fn urls_are_redacted_from_error_text() {
        let text = "error sending request for url (https://eth.example/v3/SECRETKEY?x=1): \
                    connection refused; also http://user:pw@host:8545";
        let redacted = redact_urls(text);
        assert!(!redacted.contains("SECRETKEY"), "{redacted}");
        assert!(!redacted.contains("pw@"), "{redacted}");
        assert!(redacted.contains("connection refused"), "{redacted}");
        assert_eq!(
            redacted,
            "error sending request for url ([url redacted]): connection refused; also [url redacted]"
        );
    }

    fn tiers() -> Pricing {
        Pricing::new(
            U256::from(1000),
            U256::from(1000),
            vec![Tier {
                min_balance: U256::from(1),
                percent: 10,
            }],
        )
    }

    /// A provider for a loopback port nothing listens on, with an API key in
    /// its path.
    fn dead_provider() -> RootProvider {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        RootProvider::new_http(
            format!("http://127.0.0.1:{port}/v3/SECRETKEY")
                .parse()
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn no_token_means_no_discount_and_no_rpc() {
        // The node is unreachable: any call would be an error.
        let oracle = TierOracle::new(dead_provider(), None, tiers(), Confirmations::Blocks(1));
        assert_eq!(oracle.discount_for(Address::ZERO).await.unwrap(), 0);
        assert_eq!(
            oracle.token_balance_for_tier(Address::ZERO).await.unwrap(),
            U256::ZERO
        );
    }

    #[tokio::test]
    async fn an_unreachable_node_is_an_error_without_the_url() {
        let oracle = Arc::new(TierOracle::new(
            dead_provider(),
            Some(Address::repeat_byte(7)),
            tiers(),
            Confirmations::Blocks(1),
        ));
        let pricer = TieredPricer::new(tiers(), oracle);
        let error = DepositPricer::credit_for(&pricer, Address::ZERO, Asset::Eth, U256::from(1))
            .await
            .expect_err("an unreachable node cannot price a deposit");
        assert!(error.contains("RPC node failed"), "{error}");
        assert!(!error.contains("SECRETKEY"), "{error}");
        assert!(!error.contains("127.0.0.1"), "{error}");
        let quote = pricer.quote(Address::ZERO, Asset::Eth, 3600).await;
        assert!(matches!(quote, Err(TierError::Rpc { .. })), "{quote:?}");
    }
}
