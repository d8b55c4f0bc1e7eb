//! What a wallet can read about money (DESIGN §6): the price list, a quote
//! for a deposit, its own ledger lines and its own deposits.
//!
//! Amounts of chain assets are decimal strings of base units (a U256 does
//! not fit a JSON number); credit is integer credit-seconds.

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use deskgate_actors::ports::WalletId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiState, signed_in};
use super::problem::{Problem, bad_query, ledger_unavailable, unknown_profile};
use crate::config::{Config, Confirmations};
use crate::money::chain::address20;
use crate::money::deposits::amount_u256;
use crate::money::pricing::{Asset, Pricing};
use crate::sessions::profiles::{PROFILES, profile_named};

/// Most lines one page of a statement or deposit list holds.
const MAX_PAGE: i64 = 200;

/// Longest a quote may cover: a week.
const MAX_QUOTE_MINUTES: u64 = 7 * 24 * 60;

/// What `/pricing` shows: the price list and where to pay.
#[derive(Clone, Debug)]
pub struct Offer {
    /// Prices and tiers.
    pub pricing: Pricing,
    /// The chain deposits are made on.
    pub chain_id: u64,
    /// Where deposits go; `None` when deposits are off.
    pub revenue_address: Option<Address>,
    /// The ERC-20 accepted besides ETH, if any.
    pub token_address: Option<Address>,
    /// When a deposit is credited.
    pub confirmations: Confirmations,
}

impl Offer {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            pricing: Pricing::from_config(config),
            chain_id: config.chain_id,
            revenue_address: config.revenue_address,
            token_address: config.token_address,
            confirmations: config.confirmations,
        }
    }

    fn accepts(&self, asset: Asset) -> bool {
        match asset {
            Asset::Eth => true,
            Asset::Token => self.token_address.is_some(),
        }
    }
}

/// The money routes (the deposit list is routed with its POST in [`super::api`]).
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/pricing", get(pricing))
        .route("/api/v1/quote", get(quote))
        .route("/api/v1/account/ledger", get(statement))
        .with_state(api)
}

fn confirmations_json(confirmations: Confirmations) -> Value {
    match confirmations {
        Confirmations::Blocks(n) => json!({"blocks": n}),
        Confirmations::Finalized => json!("finalized"),
    }
}

#[utoipa::path(get, path = "/api/v1/pricing", tag = "money",
    responses((status = 200, description = "profiles, prices, revenue address, chain id, assets, tiers, confirmations", body = Object)))]
async fn pricing(State(api): State<Arc<ApiState>>) -> Json<Value> {
    let offer = &api.offer;
    let assets: Vec<Value> = [Asset::Eth, Asset::Token]
        .into_iter()
        .filter(|&asset| offer.accepts(asset))
        .map(|asset| {
            json!({
                "asset": asset.as_str(),
                "address": match asset {
                    Asset::Eth => None,
                    Asset::Token => offer.token_address.map(|a| a.to_string()),
                },
                "per_gpu_hour": offer.pricing.per_gpu_hour(asset).to_string(),
            })
        })
        .collect();
    let profiles: Vec<Value> = PROFILES
        .iter()
        .map(|p| {
            let per_hour =
                |asset| (offer.pricing.per_gpu_hour(asset) * U256::from(p.gpus)).to_string();
            json!({
                "name": p.name,
                "gpus": p.gpus,
                "credit_seconds_per_second": p.gpus,
                "wei_per_hour": per_hour(Asset::Eth),
                "token_per_hour": offer.accepts(Asset::Token).then(|| per_hour(Asset::Token)),
            })
        })
        .collect();
    let tiers: Vec<Value> = offer
        .pricing
        .tiers()
        .iter()
        .map(|t| json!({"min_token_balance": t.min_balance.to_string(), "discount_percent": t.percent}))
        .collect();
    Json(json!({
        "chain_id": offer.chain_id,
        "revenue_address": offer.revenue_address.map(|a| a.to_string()),
        "deposits_enabled": api.deposits.is_some(),
        "assets": assets,
        "profiles": profiles,
        "tiers": tiers,
        "confirmations": confirmations_json(offer.confirmations),
    }))
}

#[derive(Deserialize)]
struct QuoteQuery {
    asset: String,
    minutes: u64,
    profile: String,
}

#[utoipa::path(get, path = "/api/v1/quote", tag = "money", security(("bearer" = []), ("cookie" = [])),
    params(("asset" = String, Query, description = "`eth` or `token`"), ("minutes" = u64, Query, description = "1 to 10080"), ("profile" = String, Query, description = "small, medium, large or max")),
    responses((status = 200, description = "amount in base units after the wallet's discount", body = Object), (status = 422, description = "unknown asset or profile, or minutes out of range", body = Object, content_type = "application/problem+json"), (status = 503, description = "deposits are off, or the RPC node is down", body = Object, content_type = "application/problem+json")))]
async fn quote(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<QuoteQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let Query(query) = query.map_err(bad_query)?;
    let invalid = |kind: &'static str, detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            kind,
            "This quote cannot be made",
        )
        .detail(detail)
    };
    let asset = match query.asset.as_str() {
        "eth" => Asset::Eth,
        "token" if api.offer.accepts(Asset::Token) => Asset::Token,
        other => {
            return Err(invalid(
                "unknown-asset",
                format!("`{other}` is not accepted; see /api/v1/pricing for the assets"),
            ));
        }
    };
    let profile = profile_named(&query.profile)
        .ok_or_else(|| unknown_profile("This quote cannot be made"))?;
    if !(1..=MAX_QUOTE_MINUTES).contains(&query.minutes) {
        return Err(invalid(
            "minutes-out-of-range",
            format!("minutes must be 1 to {MAX_QUOTE_MINUTES}"),
        ));
    }
    let desk = api.deposits_state()?;
    let address = wallet_address(&wallet)?;
    let gpu_seconds = query.minutes * 60 * u64::from(profile.gpus);
    let discount = desk
        .pricer
        .oracle
        .discount_for(address)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "tier lookup failed");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "quote-unavailable",
                "The discount cannot be read right now",
            )
            .detail("the RPC node did not answer; try again")
        })?;
    let amount = desk.pricer.pricing.quote(asset, gpu_seconds, discount);
    Ok(Json(json!({
        "asset": asset.as_str(),
        "profile": profile.name,
        "minutes": query.minutes,
        "credit_seconds": gpu_seconds,
        "discount_percent": discount,
        "amount": amount.to_string(),
        "revenue_address": api.offer.revenue_address.map(|a| a.to_string()),
    })))
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

impl PageQuery {
    /// Lines asked for: 50 unless said, at most [`MAX_PAGE`].
    fn limit(&self) -> i64 {
        self.limit.unwrap_or(50).clamp(1, MAX_PAGE)
    }
}

/// The signed-in wallet as an address (sign-in only admits addresses).
fn wallet_address(wallet: &WalletId) -> Result<Address, Problem> {
    wallet.as_str().parse().map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad-wallet",
            "The signed-in wallet is not an address",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/account/ledger", tag = "money", security(("bearer" = []), ("cookie" = [])),
    params(("limit" = Option<i64>, Query, description = "1 to 200, default 50"), ("before" = Option<i64>, Query, description = "only transactions older than this id")),
    responses((status = 200, description = "the wallet's ledger lines, newest first, and next_before", body = Object), (status = 401, description = "not signed in", body = Object, content_type = "application/problem+json")))]
async fn statement(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let Query(page) = query.map_err(bad_query)?;
    let limit = page.limit();
    let lines = api
        .ledger
        .statement(&wallet, limit, page.before)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot read a statement");
            ledger_unavailable()
        })?;
    // A full page may have more behind it: the client asks again with
    // `before` set to the last transaction id it saw.
    let next_before = (lines.len() as i64 == limit)
        .then(|| lines.last().map(|l| l.txn_id))
        .flatten();
    Ok(Json(
        json!({ "entries": lines, "next_before": next_before }),
    ))
}

/// `GET /api/v1/deposits` (routed with its POST in [`super::api`]).
#[utoipa::path(get, path = "/api/v1/deposits", tag = "money", security(("bearer" = []), ("cookie" = [])),
    params(("limit" = Option<i64>, Query, description = "1 to 200, default 50")),
    responses((status = 200, description = "the wallet's deposits, newest first", body = Object), (status = 401, description = "not signed in", body = Object, content_type = "application/problem+json")))]
pub(super) async fn deposits(
    State(api): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, Problem> {
    let wallet = signed_in(&api, &headers).await?;
    let Query(page) = query.map_err(bad_query)?;
    let Some(desk) = &api.deposits else {
        return Ok(Json(json!({ "deposits": [] })));
    };
    let from = wallet_address(&wallet)?;
    let limit = page.limit();
    let rows = desk
        .book
        .deposits_from(address20(from), limit)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "cannot list deposits");
            ledger_unavailable()
        })?;
    let list: Vec<Value> = rows
        .iter()
        .map(|(record, credit)| {
            let d = &record.deposit;
            json!({
                "tx_hash": d.tx_hash.to_string(),
                "log_index": d.log_index,
                "block_number": d.block_number,
                "asset": serde_json::to_value(d.asset).unwrap_or(Value::Null),
                "amount": amount_u256(d.amount).to_string(),
                "status": serde_json::to_value(record.status).unwrap_or(Value::Null),
                "credit_seconds": credit,
            })
        })
        .collect();
    Ok(Json(json!({ "deposits": list })))
}
