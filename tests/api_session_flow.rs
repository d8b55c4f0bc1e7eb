//! The whole user flow over real HTTP against `deskgate serve` on real
//! PostgreSQL, Docker and an anvil node of its own: sign in with a real key,
//! deposit ETH, get credited, claim `small`, see the container run with its
//! GPU, hold presence over the events socket, get billed GPUs × seconds, stop,
//! and find the container, its network and the GPU freed.

mod support;

use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use deskgate::docker_launcher::{container_name, network_name};
use deskgate_actors::ports::SessionId;
use futures::StreamExt;
use serde_json::{Value, json};
use support::{
    Deskgate, OwnAnvil, ScratchDatabase, as_env, docker_cli, free_port, serve_env_with,
    sleeper_image,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// 0.001 ETH: one GPU-hour at the default price, 3600 credit-seconds.
const ONE_GPU_HOUR_WEI: u64 = 1_000_000_000_000_000;

struct Gate {
    process: Deskgate,
    base: String,
    port: u16,
    http: reqwest::Client,
}

impl Gate {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// Polls `path` until `done` holds for its body, or fails after `within`.
    async fn wait_for(
        &self,
        path: &str,
        token: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(path, token).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} not as expected within {within:?}: {status} {body}\n{}",
                self.process.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn socket_request(
        &self,
        session: &str,
        token: &str,
        origin: &str,
    ) -> tungstenite::handshake::client::Request {
        let mut request = format!(
            "ws://127.0.0.1:{}/api/v1/sessions/{session}/events",
            self.port
        )
        .into_client_request()
        .unwrap();
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert("origin", origin.parse().unwrap());
        request
    }
}

async fn sign_in(gate: &Gate, signer: &PrivateKeySigner) -> String {
    let (status, challenge) = gate
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/nonce",
            None,
            Some(json!({ "address": signer.address() })),
        )
        .await;
    assert_eq!(status, 200, "{challenge}");
    let message = challenge["message"].as_str().unwrap();
    let signature = signer.sign_message_sync(message.as_bytes()).unwrap();
    let (status, issued) = gate
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/verify",
            None,
            Some(json!({ "message": message, "signature": alloy::hex::encode_prefixed(signature.as_bytes()) })),
        )
        .await;
    assert_eq!(status, 200, "{issued}");
    issued["token"].as_str().unwrap().to_string()
}

fn container_exists(name: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_deposit_claim_run_bill_and_stop_end_to_end() {
    let anvil = OwnAnvil::start();
    let db = ScratchDatabase::migrated("api_flow").await;
    let revenue = Address::repeat_byte(0x7a);
    let port = free_port();
    let mut env = serve_env_with(port, &db.url, &anvil.url);
    env.extend([
        ("DESKGATE_REVENUE_ADDRESS", revenue.to_string()),
        ("DESKGATE_CONFIRMATIONS", "1".into()),
        ("DESKGATE_CHAIN_POLL_MILLIS", "100".into()),
        ("DESKGATE_DEPOSIT_START_BLOCK", "0".into()),
        ("DESKGATE_SESSION_IMAGE", sleeper_image().into()),
        ("DESKGATE_SESSION_MEMORY_MIB", "64".into()),
        ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "1".into()),
        ("DESKGATE_BILLING_INTERVAL_SECONDS", "1".into()),
        ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "30".into()),
    ]);
    let mut process = Deskgate::spawn(&["serve"], &as_env(&env));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    process.wait_ready(&http, &format!("{base}/readyz")).await;
    let gate = Gate {
        process,
        base,
        port,
        http,
    };

    // Sign in and deposit one GPU-hour of ETH.
    let signer = PrivateKeySigner::random();
    let token = sign_in(&gate, &signer).await;
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(anvil.url.parse().unwrap());
    provider
        .anvil_set_balance(signer.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .unwrap();
    provider
        .send_transaction(
            TransactionRequest::default()
                .with_to(revenue)
                .with_value(U256::from(ONE_GPU_HOUR_WEI)),
        )
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    provider.anvil_mine(Some(1), None).await.unwrap();
    let account = gate
        .wait_for("/api/v1/account", &token, Duration::from_secs(20), |a| {
            a["credit_seconds"] == 3600
        })
        .await;
    assert!(account["active_session"].is_null(), "{account}");

    // Bad claims are refused with their own problems.
    let (status, problem) = gate
        .call(
            reqwest::Method::POST,
            "/api/v1/sessions",
            Some(&token),
            Some(json!({"profile": "huge"})),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("urn:deskgate:problem:unknown-profile"))
    );
    let (status, _) = gate
        .call(
            reqwest::Method::POST,
            "/api/v1/sessions",
            None,
            Some(json!({"profile": "small"})),
        )
        .await;
    assert_eq!(status, 401);

    // Claim small: it runs, in a container with its one GPU.
    let (status, claimed) = gate
        .call(
            reqwest::Method::POST,
            "/api/v1/sessions",
            Some(&token),
            Some(json!({"profile": "small"})),
        )
        .await;
    assert_eq!(status, 202, "{claimed}");
    let id = claimed["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/sessions/{id}");
    let running = gate
        .wait_for(&path, &token, Duration::from_secs(30), |s| {
            s["state"] == "running"
        })
        .await;
    let running_seen = Instant::now();
    let gpu_ids = running["gpu_ids"].as_array().unwrap().clone();
    assert_eq!(gpu_ids.len(), 1, "{running}");
    let labels = docker_cli(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"deskgate.gpus\"}} {{.State.Running}}",
        &format!("deskgate-session-{id}"),
    ]);
    assert!(labels.ends_with("true"), "{labels}");
    assert_eq!(labels, format!("{} true", gpu_ids[0]), "{running}");
    let (_, again) = gate
        .call(
            reqwest::Method::POST,
            "/api/v1/sessions",
            Some(&token),
            Some(json!({"profile": "small"})),
        )
        .await;
    assert_eq!(
        again["type"], "urn:deskgate:problem:session-exists",
        "{again}"
    );

    // Another wallet sees nothing of it.
    let stranger = sign_in(&gate, &PrivateKeySigner::random()).await;
    let (status, _) = gate.get(&path, &stranger).await;
    assert_eq!(status, 404);
    let (status, _) = gate
        .call(reqwest::Method::DELETE, &path, Some(&stranger), None)
        .await;
    assert_eq!(status, 404);

    // A foreign page cannot open the events socket.
    match tokio_tungstenite::connect_async(gate.socket_request(&id, &token, "https://evil.example"))
        .await
    {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("foreign Origin accepted: {other:?}"),
    }

    // The owner's socket: current state first, then billing as it happens.
    let origin = format!("http://127.0.0.1:{port}");
    let (mut socket, _) =
        tokio_tungstenite::connect_async(gate.socket_request(&id, &token, &origin))
            .await
            .expect("events socket");
    let first: Value = match socket.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("no first event: {other:?}"),
    };
    assert_eq!(
        (first["type"].as_str(), first["state"].as_str()),
        (Some("state"), Some("running"))
    );
    let mut balances = Vec::new();
    let listen_until = Instant::now() + Duration::from_millis(3500);
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout_at(listen_until.into(), socket.next()).await
    {
        if let Message::Text(text) = message {
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["type"] == "balance" {
                balances.push(event["credit_seconds"].as_i64().unwrap());
            }
        }
    }
    assert!(balances.len() >= 2, "balance events: {balances:?}");
    assert!(balances.windows(2).all(|w| w[1] < w[0]), "{balances:?}");

    // Stop: billed GPUs × seconds held, container and network gone, GPU free.
    let (status, stopped) = gate
        .call(reqwest::Method::DELETE, &path, Some(&token), None)
        .await;
    let held = running_seen.elapsed();
    assert_eq!(status, 200, "{stopped}");
    let ended = gate
        .wait_for(&path, &token, Duration::from_secs(10), |s| {
            s["state"] == "ended"
        })
        .await;
    let billed = ended["billed_credit_seconds"].as_i64().unwrap();
    let account = gate
        .wait_for("/api/v1/account", &token, Duration::from_secs(5), |a| {
            a["active_session"].is_null()
        })
        .await;
    assert_eq!(account["credit_seconds"].as_i64().unwrap(), 3600 - billed);
    let held_secs = held.as_secs_f64();
    assert!(
        (billed as f64 - held_secs).abs() <= 2.0,
        "billed {billed} credit-seconds for about {held_secs:.1} s held (1 GPU, 1 s interval)"
    );
    let session = SessionId(id.parse().unwrap());
    assert!(
        !container_exists(&container_name(session)),
        "container removed"
    );
    let networks = docker_cli(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !networks.contains(&network_name(session)),
        "network removed"
    );
    let (_, profiles) = gate.get("/api/v1/profiles", &token).await;
    let small = profiles
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "small")
        .unwrap();
    assert_eq!(small["free"], true, "{profiles}");

    let output = gate.process.output();
    assert!(!output.contains(&token), "a token leaked into the logs");
    drop(gate);
    db.drop_it().await;
}
