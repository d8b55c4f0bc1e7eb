//! `make run` gives a newcomer a working local economy: the gate it starts
//! (through `scripts/run-gate.sh`, as `make run` does) takes deposits on the
//! local anvil out of the box. A deposit of ETH from an anvil dev account to
//! the revenue address the script prints is credited within 10 s, and so is
//! one of the test token the script deployed; the printed admin token opens
//! the admin API.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use serde_json::Value;
use support::api::{DockerSessionsLock, GateClient};
use support::{Deskgate, ScratchDatabase, free_port, repo_root, service_env};

/// anvil's dev account #1 (its key is public: a local chain only).
const DEV_ACCOUNT_1_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

/// The most a deposit may take to be credited (issue 14's acceptance).
const CREDIT_WITHIN: Duration = Duration::from_secs(10);

alloy::sol! {
    interface TestToken {
        function transfer(address to, uint256 value) external returns (bool);
    }
}

/// The first `0x…` word on the output line that contains `marker`.
fn printed_after(output: &str, marker: &str) -> String {
    output
        .lines()
        .find(|line| line.contains(marker))
        .and_then(|line| {
            line[line.find(marker).unwrap()..]
                .split_whitespace()
                .find(|word| word.starts_with("0x") || word.len() == 64)
        })
        .unwrap_or_else(|| panic!("no `{marker}` line in:\n{output}"))
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Polls the account until its credit reaches `at_least`; returns how long
/// that took.
async fn credited(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    at_least: i64,
    since: Instant,
) -> Duration {
    loop {
        let account: Value = http
            .get(format!("{base}/api/v1/account"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if account["credit_seconds"].as_i64().unwrap_or(0) >= at_least {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < CREDIT_WITHIN,
            "not credited with {at_least} credit-seconds within {CREDIT_WITHIN:?}: {account}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn make_run_credits_a_dev_account_deposit_within_ten_seconds() {
    let _docker = DockerSessionsLock::acquire().await;
    let db = ScratchDatabase::migrated("make_run_economy").await;
    let state = tempfile::tempdir().unwrap();
    let rpc_url = service_env("DESKGATE_RPC_URL");
    // What `make services` writes, with this test's own database.
    std::fs::write(
        state.path().join("services.env"),
        format!(
            "export DESKGATE_DATABASE_URL={}\nexport DESKGATE_RPC_URL={rpc_url}\nexport DESKGATE_CHAIN_ID={}\n",
            db.url,
            service_env("DESKGATE_CHAIN_ID"),
        ),
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new("bash");
    command.arg(repo_root().join("scripts/run-gate.sh"));
    for (name, _) in std::env::vars() {
        if name.starts_with("DESKGATE_") {
            command.env_remove(name);
        }
    }
    command
        .env("DESKGATE_STATE_DIR", state.path())
        .env("DESKGATE_BIN", env!("CARGO_BIN_EXE_deskgate"))
        .env("DESKGATE_BIND", format!("127.0.0.1:{port}"))
        .env(
            "DESKGATE_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("DESKGATE_GPUS", "fake:2")
        .stdin(std::process::Stdio::null());
    let mut gate = Deskgate::spawn_command(command);
    let base = format!("http://127.0.0.1:{port}");
    let client = GateClient::new(&base);
    let http = &client.http;
    gate.wait_ready(http, &format!("{base}/readyz")).await;
    // /readyz answers before the session tree (and with it the admin API)
    // is up: wait for that as a user would.
    if let Err(last) = client.sessions_open(Duration::from_secs(30)).await {
        panic!(
            "sessions did not open within 30 s: {last}\n{}",
            gate.output()
        );
    }
    let output = gate.output();

    let revenue: Address = printed_after(&output, "pay to").parse().unwrap();
    let token_address: Address = printed_after(&output, "or DGT at").parse().unwrap();
    let admin_token = printed_after(&output, "admin token for the local operator");
    assert_eq!(admin_token.len(), 64, "{output}");

    let pricing: Value = http
        .get(format!("{base}/api/v1/pricing"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pricing["deposits_enabled"], true, "{pricing}");
    assert_eq!(
        pricing["revenue_address"].as_str().map(str::to_lowercase),
        Some(revenue.to_string().to_lowercase())
    );
    assert_eq!(pricing["confirmations"]["blocks"], 1, "{pricing}");
    let token_asset = pricing["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["asset"] == "token")
        .unwrap_or_else(|| panic!("no token asset: {pricing}"));
    assert_eq!(
        token_asset["address"].as_str().map(str::to_lowercase),
        Some(token_address.to_string().to_lowercase())
    );

    let admin = http
        .get(format!("{base}/api/v1/admin/gpus"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        200,
        "the printed admin token opens the admin API"
    );

    // A browser with anvil's dev account #1 signs in and pays.
    let signer: PrivateKeySigner = DEV_ACCOUNT_1_KEY.parse().unwrap();
    let token = client.sign_in(&signer).await;
    let chain = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(rpc_url.parse().unwrap());
    let per_hour = |asset: &str| -> U256 {
        pricing["assets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["asset"] == asset)
            .and_then(|a| a["per_gpu_hour"].as_str())
            .unwrap()
            .parse()
            .unwrap()
    };

    let sent = Instant::now();
    let receipt = chain
        .send_transaction(
            TransactionRequest::default()
                .with_to(revenue)
                .with_value(per_hour("eth")),
        )
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    let eth_took = credited(http, &base, &token, 3600, sent).await;

    let sent = Instant::now();
    let transfer = TestToken::transferCall {
        to: revenue,
        value: per_hour("token"),
    };
    let receipt = chain
        .send_transaction(
            TransactionRequest::default()
                .with_to(token_address)
                .with_input(transfer.abi_encode()),
        )
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(
        receipt.status(),
        "dev account #1 holds the DGT the script minted"
    );
    let token_took = credited(http, &base, &token, 2 * 3600, sent).await;
    eprintln!(
        "make run economy: 1 GPU-hour of ETH credited in {eth_took:?}, of DGT in {token_took:?} (limit {CREDIT_WITHIN:?})"
    );

    drop(gate);
    db.drop_it().await;
}
