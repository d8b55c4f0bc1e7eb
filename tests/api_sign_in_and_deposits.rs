//! The gate's sign-in and deposit API over real HTTP, on a real PostgreSQL
//! and an anvil node of its own: sign in with a real key, deposit ETH, ask
//! for the deposit by hash until it is credited, and let the chain watcher
//! credit a deposit nobody asked about.

mod support;

use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use deskgate::money::ledger::PgLedger;
use deskgate::platform::secret::Secret;
use deskgate_actors::ports::{Ledger, WalletId};
use serde_json::json;
use support::api::{GateProcess, ONE_GPU_HOUR_WEI};
use support::{OwnAnvil, ScratchDatabase, free_port, serve_env_with};

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_wallet_deposits_eth_and_is_credited_once() {
    let anvil = OwnAnvil::start();
    let db = ScratchDatabase::migrated("api_deposits").await;
    let revenue = Address::repeat_byte(0x5e);
    let port = free_port();
    let mut env = serve_env_with(port, &db.url, &anvil.url);
    env.extend([
        ("DESKGATE_REVENUE_ADDRESS", revenue.to_string()),
        ("DESKGATE_CONFIRMATIONS", "2".into()),
        ("DESKGATE_CHAIN_POLL_MILLIS", "100".into()),
        ("DESKGATE_DEPOSIT_START_BLOCK", "0".into()),
    ]);
    let gate = GateProcess::start(port, env).await;

    // Bad input is refused with a problem, not a crash.
    let (status, problem) = gate
        .post("/api/v1/auth/nonce", None, json!({ "address": "alice" }))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("urn:deskgate:problem:malformed-json"))
    );
    let (status, problem) = gate
        .post(
            "/api/v1/auth/verify",
            None,
            json!({ "message": "hello", "signature": "0x00" }),
        )
        .await;
    assert_eq!(
        (status, problem["reason"].as_str()),
        (400, Some("malformed_message"))
    );
    let (status, _) = gate
        .post(
            "/api/v1/deposits",
            None,
            json!({ "tx_hash": format!("0x{}", "11".repeat(32)) }),
        )
        .await;
    assert_eq!(status, 401, "deposits need a signed-in wallet");

    let signer = PrivateKeySigner::random();
    let token = gate.sign_in(&signer).await;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(anvil.url.parse().unwrap());
    provider
        .anvil_set_balance(signer.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .unwrap();
    let send = |value: u64| {
        let provider = provider.clone();
        async move {
            provider
                .send_transaction(
                    TransactionRequest::default()
                        .with_to(revenue)
                        .with_value(U256::from(value)),
                )
                .await
                .unwrap()
                .get_receipt()
                .await
                .unwrap()
                .transaction_hash
        }
    };

    // Asked about at once: pending at 1 of 2 confirmations, credited at 2.
    let tx = send(ONE_GPU_HOUR_WEI).await;
    let (status, check) = gate
        .post("/api/v1/deposits", Some(&token), json!({ "tx_hash": tx }))
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["status"], "pending", "{check}");
    assert_eq!(
        (check["confirmations"].as_u64(), check["required"].as_u64()),
        (Some(1), Some(2))
    );
    provider.anvil_mine(Some(1), None).await.unwrap();
    let (_, check) = gate
        .post("/api/v1/deposits", Some(&token), json!({ "tx_hash": tx }))
        .await;
    assert_eq!(check["status"], "credited", "{check}");
    assert_eq!(check["credit_seconds"].as_i64(), Some(3600));
    let (_, again) = gate
        .post("/api/v1/deposits", Some(&token), json!({ "tx_hash": tx }))
        .await;
    assert_eq!(again["status"], "credited");

    // Not asked about: the chain watcher credits it by itself.
    send(ONE_GPU_HOUR_WEI / 2).await;
    provider.anvil_mine(Some(2), None).await.unwrap();
    let pool = deskgate::db::pool(&Secret::new(db.url.clone())).unwrap();
    let ledger = PgLedger::new(pool);
    let wallet = WalletId::new(&signer.address().to_string());
    let deadline = Instant::now() + Duration::from_secs(15);
    while ledger.balance(&wallet).await.unwrap() != 5400 {
        assert!(
            Instant::now() < deadline,
            "the watcher did not credit the second deposit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both credited exactly once, however often they were seen.
    provider.anvil_mine(Some(3), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ledger.balance(&wallet).await.unwrap(), 5400);

    // Logged out, the token opens nothing, and the browser is told to drop
    // its cookie (same attributes, empty, Max-Age=0).
    let logout = gate
        .http
        .post(format!("{}/api/v1/auth/logout", gate.base))
        .header("authorization", format!("bearer {token}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let cleared = logout
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(
        cleared, "deskgate_token=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        "logout clears the cookie"
    );
    let (status, _) = gate
        .post("/api/v1/deposits", Some(&token), json!({ "tx_hash": tx }))
        .await;
    assert_eq!(status, 401);
    let output = gate.output();
    assert!(!output.contains(&token), "the token leaked into the logs");
    drop(gate);
    db.drop_it().await;
}
