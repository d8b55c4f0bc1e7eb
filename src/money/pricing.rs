//! Prices: what a deposit buys and what a session costs, in integers only.
//!
//! A price is base units of an asset (wei, or the token's smallest unit) per
//! GPU-hour. A deposit buys `amount × 3600 / discounted price` credit-seconds,
//! rounded down; a quote asks `discounted price × gpu-seconds / 3600`,
//! rounded up. Rounding always favours the house by less than one unit, so
//! quoting then depositing the quote always buys at least what was quoted.

use alloy::primitives::{Address, U256};
use async_trait::async_trait;
use deskgate_actors::ports::CreditSeconds;
use serde::Serialize;

use crate::config::{Config, Tier};

/// What a deposit is paid in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Asset {
    /// Native ETH, in wei.
    Eth,
    /// The configured ERC-20, in its base units.
    Token,
}

impl Asset {
    /// The name used in the API and the `deposits` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eth => "eth",
            Self::Token => "token",
        }
    }
}

/// The price list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pricing {
    wei_per_gpu_hour: U256,
    token_per_gpu_hour: U256,
    tiers: Vec<Tier>,
}

const SECONDS_PER_HOUR: u64 = 3600;
const PERCENT: u64 = 100;

impl Pricing {
    /// Prices and tiers; `tiers` ascending by minimum balance.
    pub fn new(wei_per_gpu_hour: U256, token_per_gpu_hour: U256, tiers: Vec<Tier>) -> Self {
        Self {
            wei_per_gpu_hour,
            token_per_gpu_hour,
            tiers,
        }
    }

    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self::new(
            config.chain.price_wei_per_gpu_hour,
            config.chain.price_token_per_gpu_hour,
            config.chain.tiers.clone(),
        )
    }

    /// Undiscounted base units per GPU-hour.
    pub fn per_gpu_hour(&self, asset: Asset) -> U256 {
        match asset {
            Asset::Eth => self.wei_per_gpu_hour,
            Asset::Token => self.token_per_gpu_hour,
        }
    }

    /// The tiers, ascending.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The discount, in percent, for a wallet holding `token_balance`: the
    /// highest tier it reaches, or 0.
    pub fn discount_for(&self, token_balance: U256) -> u8 {
        self.tiers
            .iter()
            .rev()
            .find(|tier| token_balance >= tier.min_balance)
            .map_or(0, |tier| tier.percent)
    }

    /// Credit-seconds that `amount` of `asset` buys at `discount` percent off,
    /// rounded down; saturates at `CreditSeconds::MAX`.
    pub fn credit_for(&self, asset: Asset, amount: U256, discount: u8) -> CreditSeconds {
        let price = self.discounted_price_times_100(asset, discount);
        let bought = amount.saturating_mul(U256::from(SECONDS_PER_HOUR * PERCENT)) / price;
        CreditSeconds::try_from(bought).unwrap_or(CreditSeconds::MAX)
    }

    /// Base units of `asset` that buy `gpu_seconds` at `discount` percent
    /// off, rounded up.
    pub fn quote(&self, asset: Asset, gpu_seconds: u64, discount: u8) -> U256 {
        let total = self
            .discounted_price_times_100(asset, discount)
            .saturating_mul(U256::from(gpu_seconds));
        total.div_ceil(U256::from(SECONDS_PER_HOUR * PERCENT))
    }

    /// `price × (100 − discount)`: the discounted price scaled by 100 so that
    /// no precision is lost before the final division. Never zero.
    fn discounted_price_times_100(&self, asset: Asset, discount: u8) -> U256 {
        let keep = PERCENT - u64::from(discount.min(90));
        self.per_gpu_hour(asset)
            .saturating_mul(U256::from(keep))
            .max(U256::from(1))
    }
}

/// Prices a deposit for the wallet that made it: the seam between the chain
/// watcher (which credits deposits) and the tier oracle (which knows a
/// wallet's discount from chain history).
#[async_trait]
pub trait DepositPricer: Send + Sync + 'static {
    /// Credit-seconds that `amount` of `asset` deposited by `wallet` buys.
    /// An error means "cannot price it now" (the RPC node is down, say); the
    /// deposit stays pending and is priced again later.
    async fn credit_for(
        &self,
        wallet: Address,
        asset: Asset,
        amount: U256,
    ) -> Result<CreditSeconds, String>;
}

/// The listed price for everyone, no discounts.
#[async_trait]
impl DepositPricer for Pricing {
    async fn credit_for(
        &self,
        _wallet: Address,
        asset: Asset,
        amount: U256,
    ) -> Result<CreditSeconds, String> {
        Ok(Pricing::credit_for(self, asset, amount, 0))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pricing() -> Pricing {
        Pricing::new(
            U256::from(1_000_000_000_000_000u64), // 0.001 ETH
            U256::from(10u64).pow(U256::from(18)),
            vec![
                Tier {
                    min_balance: U256::from(1000),
                    percent: 10,
                },
                Tier {
                    min_balance: U256::from(10_000),
                    percent: 25,
                },
            ],
        )
    }

    #[test]
    fn one_gpu_hour_costs_the_configured_price() {
        let p = pricing();
        assert_eq!(
            p.quote(Asset::Eth, 3600, 0),
            U256::from(1_000_000_000_000_000u64)
        );
        assert_eq!(
            p.credit_for(Asset::Eth, U256::from(1_000_000_000_000_000u64), 0),
            3600
        );
        // 25 % off: the same hour costs three quarters, and a full price buys 4800 s.
        assert_eq!(
            p.quote(Asset::Eth, 3600, 25),
            U256::from(750_000_000_000_000u64)
        );
        assert_eq!(
            p.credit_for(Asset::Eth, U256::from(1_000_000_000_000_000u64), 25),
            4800
        );
    }

    #[test]
    fn the_highest_reached_tier_applies() {
        let p = pricing();
        assert_eq!(p.discount_for(U256::from(999)), 0);
        assert_eq!(p.discount_for(U256::from(1000)), 10);
        assert_eq!(p.discount_for(U256::from(9_999)), 10);
        assert_eq!(p.discount_for(U256::MAX), 25);
    }

    #[test]
    fn a_huge_deposit_saturates_instead_of_wrapping() {
        assert_eq!(
            pricing().credit_for(Asset::Eth, U256::MAX, 0),
            CreditSeconds::MAX
        );
    }

    proptest! {
        /// Paying a quote always buys at least the seconds quoted, and one
        /// base unit less would not: the quote is the least that suffices.
        #[test]
        fn a_paid_quote_buys_what_it_promised(
            price in 1u64..=u64::MAX,
            seconds in 0u64..10_000_000,
            discount in 0u8..=90,
        ) {
            let p = Pricing::new(U256::from(price), U256::from(price), vec![]);
            let asked = p.quote(Asset::Token, seconds, discount);
            let bought = p.credit_for(Asset::Token, asked, discount);
            prop_assert!(bought >= seconds as i64);
            if asked > U256::ZERO {
                let short = p.credit_for(Asset::Token, asked - U256::from(1), discount);
                prop_assert!(short < seconds as i64);
            }
        }
    }
}
