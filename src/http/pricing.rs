//! What a deposit buys (DESIGN §6): the price list with where to pay, and a
//! quote for a deposit after the signed-in wallet's discount.
//!
//! Amounts of chain assets are decimal strings of base units (a U256 does
//! not fit a JSON number); credit is integer credit-seconds.

use std::sync::Arc;

use alloy::primitives::U256;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

use super::extract::{signed_in, wallet_address};
use super::problem::{Problem, ProfileName, bad_query, unknown_profile};
use super::state::ApiState;
use crate::config::Confirmations;
use crate::money::pricing::Asset;
use crate::sessions::profiles::{PROFILES, profile_named};

/// Longest a quote may cover: a week.
const MAX_QUOTE_MINUTES: u64 = 7 * 24 * 60;

/// The price routes.
pub fn routes(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/pricing", get(pricing))
        .route("/api/v1/quote", get(quote))
        .with_state(api)
}

/// This file's part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(paths(pricing, quote))]
pub struct Doc;

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
        "wallet_rpc_url": offer.wallet_rpc_url.as_ref().map(|u| u.as_str()),
        "revenue_address": offer.revenue_address.map(|a| a.to_string()),
        "deposits_enabled": api.deposits.is_some(),
        "assets": assets,
        "profiles": profiles,
        "tiers": tiers,
        "confirmations": confirmations_json(offer.confirmations),
    }))
}

/// An asset name in the OpenAPI document.
struct AssetName;

impl utoipa::PartialSchema for AssetName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([Asset::Eth, Asset::Token].map(Asset::as_str)))
            .into()
    }
}

impl utoipa::ToSchema for AssetName {}

#[derive(Deserialize)]
struct QuoteQuery {
    asset: String,
    minutes: u64,
    profile: String,
}

#[utoipa::path(get, path = "/api/v1/quote", tag = "money", security(("bearer" = []), ("cookie" = [])),
    params(("asset" = inline(AssetName), Query, description = "the asset to pay in; `token` only where the gate accepts one (see /api/v1/pricing)"), ("minutes" = u64, Query, minimum = 1, maximum = 10080, description = "minutes of the profile to buy"), ("profile" = ProfileName, Query, description = "the profile to buy")),
    responses((status = 200, description = "amount in base units after the wallet's discount", body = Object), (status = 400, description = "a parameter is missing or not a number", body = Problem, content_type = "application/problem+json"), (status = 401, description = "not signed in", body = Problem, content_type = "application/problem+json"), (status = 422, description = "an asset this gate does not accept, an unknown profile, or minutes out of range", body = Problem, content_type = "application/problem+json"), (status = 503, description = "deposits are off, or the RPC node is down", body = Problem, content_type = "application/problem+json")))]
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
