//! The money reads, the admin API, media tickets and the OpenAPI document,
//! over real HTTP against `deskgate serve` on real PostgreSQL, Docker and an
//! anvil node of its own: quote, pay exactly the quote, see it credited,
//! listed and in the statement; adjust credit, drain and undrain a GPU, end
//! a session as the operator, and find every one of those in the audit log.

mod support;

use std::time::Duration;

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};
use support::api::{Stage, deposit_eth, session_path};
use support::{STRONG_SECRET, free_port, scrape_metrics};

/// The default price of one GPU-hour, in wei.
const WEI_PER_GPU_HOUR: u64 = 1_000_000_000_000_000;

/// `Authorization: Bearer <token>`, or no header for an empty token.
fn admin_headers(token: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if !token.is_empty() {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
    }
    headers
}

async fn admin(
    stage: &Stage,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = stage
        .gate
        .http
        .request(method, format!("{}{path}", stage.gate.base))
        .headers(admin_headers(token));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET path` with the admin token.
async fn admin_get(stage: &Stage, path: &str) -> (u16, Value) {
    admin(stage, reqwest::Method::GET, path, STRONG_SECRET, None).await
}

/// `POST path` with `body` and the admin token.
async fn admin_post(stage: &Stage, path: &str, body: Value) -> (u16, Value) {
    admin(
        stage,
        reqwest::Method::POST,
        path,
        STRONG_SECRET,
        Some(body),
    )
    .await
}

fn gpu_states(gpus: &Value) -> Vec<(u64, String)> {
    gpus["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["index"].as_u64().unwrap(),
                g["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

// Migrating the scratch database blocks: it needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread")]
async fn quote_pay_list_adjust_drain_and_kill_are_all_answered_and_audited() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = Stage::start(
        "api_money_admin",
        &[
            ("DESKGATE_GPUS", "fake:2"),
            ("DESKGATE_ADMIN_TOKEN", STRONG_SECRET),
            ("DESKGATE_DOCS_ENABLED", "true"),
            ("DESKGATE_METRICS_ADDR", &metrics_addr),
        ],
    )
    .await;
    let gate = &stage.gate;

    // The price list needs no sign-in and names where to pay.
    let (status, pricing) = gate
        .call(reqwest::Method::GET, "/api/v1/pricing", None, None)
        .await;
    assert_eq!(status, 200, "{pricing}");
    assert_eq!(pricing["chain_id"], 31337);
    assert_eq!(
        pricing["revenue_address"]
            .as_str()
            .map(str::to_ascii_lowercase),
        Some(stage.revenue.to_string().to_ascii_lowercase())
    );
    assert_eq!(pricing["profiles"].as_array().unwrap().len(), 4);
    assert_eq!(pricing["profiles"][1]["name"], "medium");
    assert_eq!(
        pricing["profiles"][1]["wei_per_hour"],
        (2 * WEI_PER_GPU_HOUR).to_string()
    );
    assert_eq!(pricing["assets"][0]["asset"], "eth");
    assert_eq!(pricing["confirmations"], json!({"blocks": 1}));

    // Quote ten minutes of `medium`, pay exactly that, get at least what
    // was quoted.
    let signer = PrivateKeySigner::random();
    let token = gate.sign_in(&signer).await;
    let (status, quote) = gate
        .get("/api/v1/quote?asset=eth&minutes=10&profile=medium", &token)
        .await;
    assert_eq!(status, 200, "{quote}");
    assert_eq!(quote["credit_seconds"], 1200);
    assert_eq!(quote["discount_percent"], 0);
    // 2 GPUs × 600 s of 1e15 wei per GPU-hour, rounded up.
    let expected = U256::from(2 * WEI_PER_GPU_HOUR * 600).div_ceil(U256::from(3600));
    assert_eq!(quote["amount"], expected.to_string());
    let wei: u64 = quote["amount"].as_str().unwrap().parse().unwrap();
    let tx = deposit_eth(&stage.anvil.url, &signer, stage.revenue, wei).await;
    gate.wait_for_credit(&token, 1200).await;

    let (status, deposits) = gate.get("/api/v1/deposits", &token).await;
    assert_eq!(status, 200, "{deposits}");
    let listed = deposits["deposits"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{deposits}");
    assert_eq!(listed[0]["tx_hash"], tx.to_string());
    assert_eq!(listed[0]["status"], "credited");
    assert_eq!(listed[0]["amount"], wei.to_string());
    assert_eq!(listed[0]["credit_seconds"], 1200);

    let (status, statement) = gate.get("/api/v1/account/ledger", &token).await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!(statement["entries"].as_array().unwrap().len(), 1);
    assert_eq!(statement["entries"][0]["kind"], "credit");
    assert_eq!(statement["entries"][0]["amount"], 1200);
    assert!(
        statement["entries"][0]["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("deposit:{tx}"))),
        "{statement}"
    );

    // Bad quotes are refused, each with its own problem type.
    for (query, status, kind) in [
        ("asset=token&minutes=10&profile=small", 422, "unknown-asset"),
        (
            "asset=eth&minutes=0&profile=small",
            422,
            "minutes-out-of-range",
        ),
        ("asset=eth&minutes=10&profile=huge", 422, "unknown-profile"),
        ("asset=eth&profile=small", 400, "malformed-query"),
    ] {
        let (got, problem) = gate.get(&format!("/api/v1/quote?{query}"), &token).await;
        assert_eq!(got, status, "{query}: {problem}");
        assert_eq!(
            problem["type"],
            format!("urn:deskgate:problem:{kind}"),
            "{query}"
        );
    }
    let (status, _) = gate
        .call(
            reqwest::Method::GET,
            "/api/v1/quote?asset=eth&minutes=10&profile=small",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);

    // The admin API wants its own token, from the header only.
    let address = signer.address().to_string();
    for presented in ["", "not-the-admin-token", &token] {
        let (status, problem) = admin(
            &stage,
            reqwest::Method::GET,
            "/api/v1/admin/gpus",
            presented,
            None,
        )
        .await;
        assert_eq!(status, 401, "{problem}");
    }
    let adjustment = json!({
        "address": address, "amount": 300, "reason": "goodwill", "idempotency_key": "t-1",
    });
    for replayed in [false, true] {
        let (status, adjusted) =
            admin_post(&stage, "/api/v1/admin/credit", adjustment.clone()).await;
        assert_eq!(status, 200, "{adjusted}");
        assert_eq!(adjusted["credit_seconds"], 1500);
        assert_eq!(adjusted["replayed"], replayed);
    }
    let (status, refused) = admin_post(
        &stage,
        "/api/v1/admin/credit",
        json!({
            "address": address, "amount": -5000, "reason": "too much", "idempotency_key": "t-2",
        }),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    gate.wait_for_credit(&token, 1500).await;
    let (_, statement) = gate.get("/api/v1/account/ledger?limit=1", &token).await;
    assert_eq!(statement["entries"][0]["amount"], 300, "{statement}");
    assert_eq!(statement["entries"][0]["reference"], "adjustment: goodwill");
    assert!(statement["next_before"].is_i64(), "{statement}");

    // Claim `small`; the operator sees its GPU leased to it.
    let claimed = stage.claim(&token, "small").await;
    let path = session_path(&claimed);
    let id = claimed["id"].as_str().unwrap().to_owned();
    gate.wait_for(&path, &token, Duration::from_secs(30), |s| {
        s["state"] == "running"
    })
    .await;
    let (status, gpus) = admin_get(&stage, "/api/v1/admin/gpus").await;
    assert_eq!(status, 200, "{gpus}");
    let leased: Vec<&Value> = gpus["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "leased")
        .collect();
    assert_eq!(leased.len(), 1, "{gpus}");
    assert_eq!(leased[0]["lease"]["session"], id);
    let free_index = gpu_states(&gpus)
        .into_iter()
        .find(|(_, state)| state == "free")
        .map(|(index, _)| index)
        .expect("one GPU is free");

    // A media ticket: for the owner only, single-use hex, never cached.
    let response = gate
        .http
        .post(format!("{}{path}/tickets", gate.base))
        .bearer_auth(&token)
        .json(&json!({"purpose": "vnc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let ticket: Value = response.json().await.unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    assert_eq!(ticket.len(), 64);
    assert!(ticket.bytes().all(|b| b.is_ascii_hexdigit()));
    let (status, _) = gate
        .post(
            &format!("{path}/tickets"),
            Some(&token),
            json!({"purpose": "ssh"}),
        )
        .await;
    assert_eq!(status, 400);
    let stranger = gate.sign_in(&PrivateKeySigner::random()).await;
    let (status, _) = gate
        .post(
            &format!("{path}/tickets"),
            Some(&stranger),
            json!({"purpose": "vnc"}),
        )
        .await;
    assert_eq!(status, 404);

    // Drain the free GPU: a second wallet's claim waits; undrain grants it.
    let drain_path = format!("/api/v1/admin/gpus/0/{free_index}/drain");
    let (status, drained) = admin_post(&stage, &drain_path, json!({"drain": true})).await;
    assert_eq!(status, 200, "{drained}");
    let (_, gpus) = admin_get(&stage, "/api/v1/admin/gpus").await;
    assert!(
        gpu_states(&gpus).contains(&(free_index, "draining".to_owned())),
        "{gpus}"
    );
    let second = stage.funded_wallet(WEI_PER_GPU_HOUR, 3600).await;
    let waiting = stage.claim(&second, "small").await;
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert_eq!(waiting["queue_position"], 1, "{waiting}");
    let (status, _) = admin_post(&stage, &drain_path, json!({"drain": false})).await;
    assert_eq!(status, 200);
    let second_path = session_path(&waiting);
    gate.wait_for(&second_path, &second, Duration::from_secs(30), |s| {
        s["state"] == "running"
    })
    .await;

    // The operator lists both sessions and ends the second.
    let (status, sessions) = admin_get(&stage, "/api/v1/admin/sessions").await;
    assert_eq!(status, 200, "{sessions}");
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 2);
    let second_id = waiting["id"].as_str().unwrap();
    let (status, stopped) = admin(
        &stage,
        reqwest::Method::POST,
        &format!("/api/v1/admin/sessions/{second_id}/stop"),
        STRONG_SECRET,
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    let ended = gate
        .wait_for(&second_path, &second, Duration::from_secs(30), |s| {
            s["state"] == "ended"
        })
        .await;
    assert_eq!(ended["end_reason"]["kind"], "admin_killed", "{ended}");

    // Every change is in the audit log.
    let (status, audit) = admin_get(&stage, "/api/v1/admin/audit").await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "credit.adjust",
        "credit.adjust_failed",
        "gpu.drain",
        "gpu.undrain",
        "session.kill",
    ] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }

    // The OpenAPI document is served when enabled.
    let (status, doc) = gate
        .call(reqwest::Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/v1/admin/credit"]["post"].is_object());

    // Metrics: sessions by state and refused admin calls.
    let metrics = scrape_metrics(&metrics_addr).await;
    assert!(
        metrics.contains("deskgate_sessions_current{state=\"running\"} 1"),
        "{metrics}"
    );
    for line in [
        "deskgate_admin_auth_failures_total{reason=\"wrong\"} 2",
        "deskgate_admin_auth_failures_total{reason=\"missing\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    let (status, _) = gate.delete(&path, &token).await;
    assert_eq!(status, 200);

    // Not one secret in the logs.
    let output = gate.output();
    for secret in [STRONG_SECRET, token.as_str(), second.as_str(), &ticket] {
        assert!(
            !output.contains(secret),
            "a secret reached the logs:\n{output}"
        );
    }
    stage.finish().await;
}
