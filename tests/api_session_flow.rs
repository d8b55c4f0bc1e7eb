//! The whole user flow over real HTTP against `deskgate serve` on real
//! PostgreSQL, Docker and an anvil node of its own: sign in with a real key,
//! deposit ETH, get credited, claim `small`, see the container run with its
//! GPU, hold presence over the events socket, get billed GPUs × seconds, stop,
//! and find the container, its network and the GPU freed.

mod support;

use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use deskgate::launcher::docker::{container_name, network_name};
use deskgate_actors::ports::SessionId;
use serde_json::json;
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};
use support::{container_exists, docker_cli};
use tokio_tungstenite::tungstenite;

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_deposit_claim_run_bill_and_stop_end_to_end() {
    let stage = Stage::start(
        "api_flow",
        &[
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "1"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "30"),
        ],
    )
    .await;
    let gate = &stage.gate;

    // Sign in and deposit one GPU-hour of ETH.
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let (_, account) = gate.get("/api/v1/account", &token).await;
    assert!(account["active_session"].is_null(), "{account}");

    // Bad claims are refused with their own problems.
    let (status, problem) = gate.claim(&token, "huge").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("urn:deskgate:problem:unknown-profile"))
    );
    let (status, _) = gate
        .post("/api/v1/sessions", None, json!({"profile": "small"}))
        .await;
    assert_eq!(status, 401);

    // Claim small: it runs, in a container with its one GPU.
    let claimed = stage.claim(&token, "small").await;
    let id = claimed["id"].as_str().unwrap().to_string();
    let session = SessionId(id.parse().unwrap());
    let path = session_path(&claimed);
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
        &container_name(session),
    ]);
    assert!(labels.ends_with("true"), "{labels}");
    assert_eq!(labels, format!("{} true", gpu_ids[0]), "{running}");
    let (_, again) = gate.claim(&token, "small").await;
    assert_eq!(
        again["type"], "urn:deskgate:problem:session-exists",
        "{again}"
    );

    // Another wallet sees nothing of it.
    let stranger = gate.sign_in(&PrivateKeySigner::random()).await;
    let (status, _) = gate.get(&path, &stranger).await;
    assert_eq!(status, 404);
    let (status, _) = gate.delete(&path, &stranger).await;
    assert_eq!(status, 404);

    // A foreign page cannot open the events socket.
    match tokio_tungstenite::connect_async(gate.socket_request(&id, &token, "https://evil.example"))
        .await
    {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("foreign Origin accepted: {other:?}"),
    }

    // The owner's socket: current state first, then billing as it happens.
    let mut events = gate.events(&id, &token).await;
    let first = events
        .next_before(Instant::now() + Duration::from_secs(5))
        .await
        .expect("a first event");
    assert_eq!(
        (first["type"].as_str(), first["state"].as_str()),
        (Some("state"), Some("running")),
        "{first}"
    );
    let mut balances = Vec::new();
    let listen_until = Instant::now() + Duration::from_millis(3500);
    while let Some(event) = events.next_before(listen_until).await {
        if event["type"] == "balance" {
            balances.push(event["credit_seconds"].as_i64().unwrap());
        }
    }
    assert!(balances.len() >= 2, "balance events: {balances:?}");
    assert!(balances.windows(2).all(|w| w[1] < w[0]), "{balances:?}");

    // Stop: billed GPUs × seconds held, container and network gone, GPU free.
    // Billing ends when the stop is asked for, not when the container is
    // gone (stopping takes seconds on a loaded host), so that is "held".
    let held = running_seen.elapsed();
    let (status, stopped) = gate.delete(&path, &token).await;
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
        "billed {billed} credit-seconds for about {held_secs:.1} s held (1 GPU, 1 s interval)\ngate log:\n{}",
        gate.output()
    );
    assert!(
        !container_exists(&container_name(session)),
        "container removed"
    );
    let networks = docker_cli(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !networks.contains(&network_name(session)),
        "network removed"
    );
    let small = gate.profile("small").await;
    assert_eq!(small["free"], true, "{small}");

    let output = gate.output();
    assert!(!output.contains(&token), "a token leaked into the logs");
    stage.finish().await;
}
