//! The chain part: the Ethereum node, the chain, where deposits go, which
//! token counts, when a deposit is credited, the prices and the token-holder
//! discount tiers, and how the chain watcher polls.
//!
//! Invariants: addresses in mixed case carry a valid EIP-55 checksum; prices
//! are above 0 (0 would give unlimited credit); tiers are sorted by balance
//! and grow in discount with it. The RPC URL is a [`Secret`]: providers put
//! API keys in it.

use std::time::Duration;

use alloy::primitives::{Address, U256};

use super::Problem;
use super::parse::{comma_list, parse_http_url, parse_key, parse_u64, secret};
use super::raw::RawSettings;
use crate::platform::secret::Secret;

/// How long a deposit waits before it is credited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmations {
    /// This many blocks on top of the deposit's block (1 = the block itself).
    Blocks(u64),
    /// Until the node's `finalized` block includes it.
    Finalized,
}

/// A token-holder discount: at least `min_balance` base units of the token
/// take `percent` off the price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Minimum token balance, base units.
    pub min_balance: U256,
    /// Discount, percent (1 to 90).
    pub percent: u8,
}

/// The chain the gate takes deposits on, and what they buy.
#[derive(Clone, Debug)]
pub struct ChainConfig {
    /// Ethereum JSON-RPC URL (may hold an API key).
    pub rpc_url: Option<Secret>,
    /// Expected chain id.
    pub id: u64,
    /// A public RPC URL of the chain for browsers' wallets, offered when a
    /// wallet does not know the chain (`wallet_addEthereumChain`); never the
    /// gate's own [`ChainConfig::rpc_url`], which may hold a key.
    pub wallet_rpc_url: Option<url::Url>,
    /// Deposit recipient.
    pub revenue_address: Option<Address>,
    /// Accepted ERC-20 token.
    pub token_address: Option<Address>,
    /// Confirmations before crediting.
    pub confirmations: Confirmations,
    /// Wei per GPU-hour for ETH deposits.
    pub price_wei_per_gpu_hour: U256,
    /// Token base units per GPU-hour.
    pub price_token_per_gpu_hour: U256,
    /// Token-holder discount tiers, ascending by minimum balance.
    pub tiers: Vec<Tier>,
    /// Chain polling period.
    pub poll: Duration,
    /// First block to scan on a fresh database.
    pub deposit_start_block: Option<u64>,
}

impl ChainConfig {
    /// Parses the chain settings, recording every problem; `None` if any.
    pub(super) fn parse(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<Self> {
        let before = problems.len();
        let p = &mut *problems;
        let rpc_url = secret(raw, "RPC_URL");
        if let Some(url) = &rpc_url
            && parse_http_url(url.expose()).is_err()
        {
            p.push(Problem::new("RPC_URL", "is not an http:// or https:// URL"));
        }
        let id = parse_key(raw, "CHAIN_ID", p, parse_u64);
        let wallet_rpc_url = parse_key(raw, "WALLET_RPC_URL", p, parse_http_url);
        let revenue_address = parse_key(raw, "REVENUE_ADDRESS", p, parse_address);
        let token_address = parse_key(raw, "TOKEN_ADDRESS", p, parse_address);
        let confirmations = parse_key(raw, "CONFIRMATIONS", p, |t| match t {
            "finalized" => Ok(Confirmations::Finalized),
            _ => parse_u64(t)
                .map(Confirmations::Blocks)
                .map_err(|e| format!("{e} (or `finalized`)")),
        });
        let price_wei_per_gpu_hour = parse_key(raw, "PRICE_WEI_PER_GPU_HOUR", p, parse_price);
        let price_token_per_gpu_hour = parse_key(raw, "PRICE_TOKEN_PER_GPU_HOUR", p, parse_price);
        let tiers = parse_key(raw, "TIERS", p, parse_tiers).unwrap_or_default();
        let poll = parse_key(raw, "CHAIN_POLL_MILLIS", p, |t| match t.parse::<u64>() {
            Ok(ms) if (50..=60_000).contains(&ms) => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "`{t}` is not a number of milliseconds from 50 to 60000"
            )),
        });
        let deposit_start_block = parse_key(raw, "DEPOSIT_START_BLOCK", p, parse_u64);

        if problems.len() > before {
            return None;
        }
        // Every `parse_key` above with a default returned `Some` when no
        // problem was recorded.
        Some(Self {
            rpc_url,
            id: id?,
            wallet_rpc_url,
            revenue_address,
            token_address,
            confirmations: confirmations?,
            price_wei_per_gpu_hour: price_wei_per_gpu_hour?,
            price_token_per_gpu_hour: price_token_per_gpu_hour?,
            tiers,
            poll: poll?,
            deposit_start_block,
        })
    }
}

/// A positive integer amount of base units; `1e15`-style exponents allowed.
fn parse_amount(text: &str) -> Result<U256, String> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (
            m,
            e.parse::<usize>()
                .map_err(|_| format!("`{text}` has a bad exponent"))?,
        ),
        None => (text, 0),
    };
    let mantissa = U256::from_str_radix(mantissa, 10)
        .map_err(|_| format!("`{text}` is not a whole number of base units"))?;
    U256::from(10u8)
        .checked_pow(U256::from(exponent))
        .and_then(|scale| mantissa.checked_mul(scale))
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A price per GPU-hour: an amount above 0.
fn parse_price(text: &str) -> Result<U256, String> {
    match parse_amount(text)? {
        price if price.is_zero() => Err("a price of 0 would give unlimited credit".into()),
        price => Ok(price),
    }
}

/// `MIN_BALANCE:PERCENT` pairs, sorted by balance; a bigger balance must
/// get a bigger discount, or holding more would cost more.
fn parse_tiers(text: &str) -> Result<Vec<Tier>, String> {
    let mut tiers = comma_list(text)
        .map(|pair| {
            let (balance, percent) = pair
                .split_once(':')
                .ok_or_else(|| format!("`{pair}` is not MIN_BALANCE:PERCENT"))?;
            let percent = match percent.trim_end_matches('%').parse::<u8>() {
                Ok(p) if (1..=90).contains(&p) => p,
                _ => {
                    return Err(format!(
                        "`{percent}` is not a discount from 1 to 90 percent"
                    ));
                }
            };
            Ok(Tier {
                min_balance: parse_amount(balance)?,
                percent,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    tiers.sort_by_key(|t| t.min_balance);
    if tiers
        .windows(2)
        .any(|w| w[0].min_balance == w[1].min_balance || w[0].percent >= w[1].percent)
    {
        return Err("tiers must have distinct balances and grow in discount with balance".into());
    }
    Ok(tiers)
}

/// An Ethereum address, `0x` and 40 hex digits.
fn parse_address(text: &str) -> Result<Address, String> {
    Address::parse_checksummed(text, None)
        .or_else(|_| {
            // All-lower-case hex has no checksum to verify; mixed case must be EIP-55.
            if text == text.to_ascii_lowercase() {
                text.parse::<Address>().map_err(|e| e.to_string())
            } else {
                Err("bad EIP-55 checksum".to_string())
            }
        })
        .map_err(|why| {
            format!("`{text}` is not an Ethereum address ({why}): use 0x followed by 40 hex digits")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::env;
    use crate::config::{Role, load};

    #[test]
    fn addresses_must_carry_a_valid_checksum_when_mixed_case() {
        assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_ok());
        assert!(parse_address("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed").is_ok());
        assert!(parse_address("0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_err());
    }

    #[test]
    fn tiers_parse_sorted_and_refuse_nonsense() {
        let tiers = parse_tiers("10000e18:25, 1000e18:10").unwrap();
        assert_eq!(tiers.len(), 2);
        assert_eq!(
            tiers[0].min_balance,
            U256::from(1000u64) * U256::from(10u64).pow(U256::from(18))
        );
        assert_eq!((tiers[0].percent, tiers[1].percent), (10, 25));
        assert!(
            parse_tiers("1000:10,2000:5").is_err(),
            "a bigger balance must not get less"
        );
        assert!(parse_tiers("1000:95").is_err());
        assert!(parse_tiers("1000").is_err());
        assert!(parse_tiers("x:10").is_err());
        assert_eq!(
            parse_price("1e15"),
            Ok(U256::from(1_000_000_000_000_000u64))
        );
        assert!(parse_price("0").is_err());
        assert!(parse_price("1e99").is_err(), "beyond U256");
    }

    #[test]
    fn confirmations_are_a_count_or_finalized() {
        let loaded = load(
            None,
            env(&[("DESKGATE_CONFIRMATIONS", "finalized")]),
            Role::Serve,
        );
        assert_eq!(
            loaded.config.unwrap().chain.confirmations,
            Confirmations::Finalized
        );
        let loaded = load(
            None,
            env(&[("DESKGATE_CONFIRMATIONS", "soon")]),
            Role::Serve,
        );
        assert!(
            loaded
                .problems
                .iter()
                .any(|p| p.to_string().contains("finalized"))
        );
    }
}
