//! Tier discounts against a real anvil node of each test's own (the tests
//! warp its clock): the tier balance is the minimum of the balance at the
//! confirmed block and a day before it, so moving tokens between wallets
//! earns no extra discount.

mod support;

use std::sync::Arc;

use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, PendingTransactionBuilder, Provider, RootProvider};
use alloy::rpc::types::TransactionReceipt;
use deskgate::config::{Confirmations, Tier};
use deskgate::money::pricing::{Asset, DepositPricer, Pricing};
use deskgate::money::tiers::{TierOracle, TieredPricer};
use support::{OwnAnvil, deploy_test_token, dev_wallet_provider};

alloy::sol! {
    #[sol(rpc)]
    contract TestToken {
        function mint(address to, uint256 value) external;
        function transfer(address to, uint256 value) external returns (bool);
        function balanceOf(address owner) external view returns (uint256);
    }
}

const DAY: u64 = 24 * 60 * 60;

/// One whole token of 18 decimals, in base units.
fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// 0.001 ETH or 1 token per GPU-hour; 1000 tokens take 10 % off, 10000
/// tokens 25 %.
fn pricing() -> Pricing {
    Pricing::new(
        U256::from(1_000_000_000_000_000u64),
        tokens(1),
        vec![
            Tier {
                min_balance: tokens(1000),
                percent: 10,
            },
            Tier {
                min_balance: tokens(10_000),
                percent: 25,
            },
        ],
    )
}

/// An anvil of the test's own with TestToken deployed by the first dev
/// account, which signs every transaction below.
struct Chain {
    anvil: OwnAnvil,
    provider: DynProvider,
    token: Address,
    deployer: Address,
}

/// Waits for `pending`'s receipt and asserts it succeeded.
async fn confirmed(pending: PendingTransactionBuilder<Ethereum>, what: &str) -> TransactionReceipt {
    let receipt = pending.get_receipt().await.unwrap();
    assert!(receipt.status(), "{what} reverted");
    receipt
}

impl Chain {
    async fn start(extra: &[&str]) -> Self {
        let anvil = OwnAnvil::start_on(support::free_port(), extra);
        let (provider, deployer) = dev_wallet_provider(&anvil.url);
        let token = deploy_test_token(&provider).await;
        Self {
            anvil,
            provider,
            token,
            deployer,
        }
    }

    fn contract(&self) -> TestToken::TestTokenInstance<&DynProvider> {
        TestToken::new(self.token, &self.provider)
    }

    /// Mints `amount` to `to`; returns the block it landed in.
    async fn mint(&self, to: Address, amount: U256) -> u64 {
        let pending = self.contract().mint(to, amount).send().await.unwrap();
        confirmed(pending, "mint").await.block_number.unwrap()
    }

    /// Sends `amount` from the deployer to `to`.
    async fn transfer(&self, to: Address, amount: U256) {
        let pending = self.contract().transfer(to, amount).send().await.unwrap();
        confirmed(pending, "transfer").await;
    }

    /// Balance at the latest block.
    async fn balance(&self, who: Address) -> U256 {
        self.contract().balanceOf(who).call().await.unwrap()
    }

    /// Moves the clock forward and mines one block at the new time.
    async fn warp(&self, seconds: u64) {
        self.provider.anvil_increase_time(seconds).await.unwrap();
        self.mine(1).await;
    }

    async fn mine(&self, blocks: u64) {
        self.provider.anvil_mine(Some(blocks), None).await.unwrap();
    }

    async fn latest(&self) -> u64 {
        self.provider.get_block_number().await.unwrap()
    }

    /// A read-only oracle as the gate builds it: a plain HTTP provider.
    fn oracle(&self, confirmations: Confirmations) -> TierOracle {
        TierOracle::new(
            RootProvider::new_http(self.anvil.url.parse().unwrap()),
            Some(self.token),
            pricing(),
            confirmations,
        )
    }
}

#[tokio::test]
async fn moving_tokens_to_a_second_wallet_does_not_give_both_the_discount() {
    let chain = Chain::start(&[]).await;
    let holder = chain.deployer;
    let receiver = Address::repeat_byte(0x22);
    let oracle = chain.oracle(Confirmations::Blocks(1));

    chain.mint(holder, tokens(10_000)).await;
    chain.warp(DAY + 60).await;
    assert_eq!(
        oracle.token_balance_for_tier(holder).await.unwrap(),
        tokens(10_000),
        "held for more than a day, the whole balance counts"
    );
    assert_eq!(oracle.discount_for(holder).await.unwrap(), 25);

    chain.transfer(receiver, tokens(10_000)).await;
    // The premise: the tokens really moved.
    assert_eq!(chain.balance(holder).await, U256::ZERO);
    assert_eq!(chain.balance(receiver).await, tokens(10_000));

    assert_eq!(
        oracle.discount_for(holder).await.unwrap(),
        0,
        "the sender's current balance is 0"
    );
    assert_eq!(
        oracle.token_balance_for_tier(receiver).await.unwrap(),
        U256::ZERO,
        "the receiver has no day-old balance"
    );
    assert_eq!(oracle.discount_for(receiver).await.unwrap(), 0);
    let pricer = TieredPricer::new(pricing(), Arc::new(chain.oracle(Confirmations::Blocks(1))));
    for wallet in [holder, receiver] {
        assert_eq!(
            pricer.quote(wallet, Asset::Token, 3600).await.unwrap(),
            tokens(1),
            "neither wallet gets a discounted quote"
        );
    }

    // A day later the stake earns its discount again, for the one wallet
    // that holds it.
    chain.warp(DAY + 60).await;
    assert_eq!(oracle.discount_for(receiver).await.unwrap(), 25);
    assert_eq!(oracle.discount_for(holder).await.unwrap(), 0);
}

#[tokio::test]
async fn a_fresh_holder_gets_the_discount_only_once_a_day_has_passed() {
    let chain = Chain::start(&[]).await;
    let big = Address::repeat_byte(0x33);
    let small = Address::repeat_byte(0x44);
    chain.mint(big, tokens(10_000)).await;
    chain.mint(small, tokens(1000)).await;
    let oracle = chain.oracle(Confirmations::Blocks(1));

    // The chain itself is younger than a day: genesis stands in for the
    // day-old block, and the token did not exist then.
    assert_eq!(
        oracle.token_balance_for_tier(big).await.unwrap(),
        U256::ZERO
    );
    assert_eq!(oracle.discount_for(big).await.unwrap(), 0);
    assert_eq!(oracle.discount_for(small).await.unwrap(), 0);

    chain.warp(23 * 60 * 60).await;
    assert_eq!(
        oracle.discount_for(big).await.unwrap(),
        0,
        "23 hours is not a day"
    );
    assert_eq!(oracle.discount_for(small).await.unwrap(), 0);

    chain.warp(60 * 60 + 60).await;
    assert_eq!(oracle.discount_for(big).await.unwrap(), 25);
    assert_eq!(
        oracle.discount_for(small).await.unwrap(),
        10,
        "1000 tokens reach the lower tier only"
    );
    // An oracle without the cache's history agrees.
    assert_eq!(
        chain
            .oracle(Confirmations::Blocks(1))
            .discount_for(big)
            .await
            .unwrap(),
        25
    );
}

#[tokio::test]
async fn a_balance_in_an_unconfirmed_block_does_not_count() {
    let chain = Chain::start(&[]).await;
    let holder = Address::repeat_byte(0x55);
    let minted_in = chain.mint(holder, tokens(10_000)).await;
    chain.warp(DAY + 60).await;
    assert_eq!(chain.latest().await, minted_in + 1);

    let shallow = chain.oracle(Confirmations::Blocks(1));
    let deep = chain.oracle(Confirmations::Blocks(3));
    // The same chain state: one confirmation sees the day-old mint, three
    // confirmations put the confirmed block before it.
    assert_eq!(shallow.discount_for(holder).await.unwrap(), 25);
    assert_eq!(
        deep.token_balance_for_tier(holder).await.unwrap(),
        U256::ZERO
    );
    assert_eq!(deep.discount_for(holder).await.unwrap(), 0);

    // Block `minted_in` is now 3 deep, but a day before it nobody held
    // anything.
    chain.mine(1).await;
    assert_eq!(deep.discount_for(holder).await.unwrap(), 0);

    // Now the block a day after the mint is 3 deep as well.
    chain.mine(1).await;
    assert_eq!(
        deep.token_balance_for_tier(holder).await.unwrap(),
        tokens(10_000)
    );
    assert_eq!(deep.discount_for(holder).await.unwrap(), 25);
}

#[tokio::test]
async fn finalized_confirmations_read_the_finalized_block() {
    // One slot per epoch: anvil then finalizes the block two below latest.
    let chain = Chain::start(&["--slots-in-an-epoch", "1"]).await;
    let holder = Address::repeat_byte(0x66);
    let minted_in = chain.mint(holder, tokens(10_000)).await;
    chain.warp(DAY + 60).await;
    let oracle = chain.oracle(Confirmations::Finalized);
    let finalized = || async {
        chain
            .provider
            .get_block_by_number(BlockNumberOrTag::Finalized)
            .await
            .unwrap()
            .unwrap()
            .header
            .number
    };

    assert!(
        finalized().await < minted_in,
        "premise: the mint is not final"
    );
    assert_eq!(oracle.discount_for(holder).await.unwrap(), 0);
    assert_eq!(
        chain
            .oracle(Confirmations::Blocks(1))
            .discount_for(holder)
            .await
            .unwrap(),
        25,
        "premise: unfinalized, the holding would count"
    );

    chain.mine(2).await;
    assert!(
        finalized().await > minted_in,
        "premise: a day later is final"
    );
    assert_eq!(oracle.discount_for(holder).await.unwrap(), 25);
}

#[tokio::test]
async fn quotes_and_deposit_credit_differ_by_exactly_the_discount() {
    let mut chain = Chain::start(&[]).await;
    let big = Address::repeat_byte(0x77);
    let small = Address::repeat_byte(0x88);
    let stranger = Address::repeat_byte(0x99);
    chain.mint(big, tokens(10_000)).await;
    chain.mint(small, tokens(1000)).await;
    chain.warp(DAY + 60).await;
    let pricer = TieredPricer::new(pricing(), Arc::new(chain.oracle(Confirmations::Blocks(1))));

    let full = pricer.quote(stranger, Asset::Token, 3600).await.unwrap();
    assert_eq!(full, tokens(1), "no tokens: the listed price");
    assert_eq!(
        pricer.quote(big, Asset::Token, 3600).await.unwrap(),
        full - full * U256::from(25) / U256::from(100)
    );
    assert_eq!(
        pricer.quote(small, Asset::Token, 3600).await.unwrap(),
        full - full * U256::from(10) / U256::from(100)
    );
    assert_eq!(
        pricer.quote(big, Asset::Eth, 3600).await.unwrap(),
        U256::from(750_000_000_000_000u64),
        "the discount applies to ETH prices too"
    );

    // A deposit of one listed GPU-hour buys 1 h, 1 h 6 m 40 s, or 1 h 20 m.
    let hour_of_tokens = tokens(1);
    for (wallet, seconds) in [(stranger, 3600), (small, 4000), (big, 4800)] {
        assert_eq!(
            DepositPricer::credit_for(&pricer, wallet, Asset::Token, hour_of_tokens)
                .await
                .unwrap(),
            seconds
        );
    }

    // The node goes away: the deposit cannot be priced now (it is retried
    // later), and the error does not show the node's URL.
    chain.anvil.stop();
    let error = DepositPricer::credit_for(&pricer, big, Asset::Token, hour_of_tokens)
        .await
        .expect_err("no node, no price");
    assert!(
        !error.contains(&chain.anvil.port.to_string()),
        "the error names the node's address: {error}"
    );
}
