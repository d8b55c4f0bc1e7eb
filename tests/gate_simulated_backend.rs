//! A gate on the simulated launcher backend (`DESKGATE_LAUNCHER_BACKEND=
//! simulated`), as a benchmark runs it: real PostgreSQL, real anvil, no
//! Docker. `/readyz` and the log say the backend starts nothing; a claim is
//! queued, granted, "runs" and ends like any other, and is billed; the
//! simulated containers die with the gate, so recovery ends the session
//! that had one.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_gate_says_so_and_runs_the_whole_session_lifecycle_without_docker() {
    let mut stage = Stage::start(
        "simulated_backend",
        &[
            ("DESKGATE_LAUNCHER_BACKEND", "simulated"),
            ("DESKGATE_GPUS", "fake:1"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "300"),
        ],
    )
    .await;

    // It says what it is, to operators and to probes.
    let ready: Value = reqwest::get(format!("{}/readyz", stage.gate.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"launcher (simulated: starts no desktops)"),
        "{ready}"
    );
    assert!(!names.contains(&"docker"), "no Docker is asked: {ready}");
    assert!(
        stage.gate.output().contains("launcher backend SIMULATED"),
        "{}",
        stage.gate.output()
    );

    // One GPU, two wallets: the second waits for the first.
    let first = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let second = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let running = stage.gate.claim(&first, "small").await;
    assert_eq!(running.0, 202, "{}", running.1);
    let running_path = session_path(&running.1);
    let waiting = stage.gate.claim(&second, "small").await;
    assert_eq!(waiting.0, 202, "{}", waiting.1);
    let waiting_path = session_path(&waiting.1);
    let gate = &stage.gate;
    gate.wait_for(&running_path, &first, Duration::from_secs(10), |s| {
        s["state"] == "running"
    })
    .await;
    gate.wait_for(&waiting_path, &second, Duration::from_secs(5), |s| {
        s["state"] == "queued"
    })
    .await;

    // It is billed like any session, then stopped; the waiter gets the GPU.
    gate.wait_for("/api/v1/account", &first, Duration::from_secs(10), |a| {
        a["credit_seconds"].as_i64().is_some_and(|c| c < 3600)
    })
    .await;
    let (status, body) = gate.delete(&running_path, &first).await;
    assert!(status < 300, "{status} {body}");
    let ended = gate
        .wait_for(&running_path, &first, Duration::from_secs(10), |s| {
            s["state"] == "ended"
        })
        .await;
    assert_eq!(ended["end_reason"]["kind"], "user_stopped", "{ended}");
    gate.wait_for(&waiting_path, &second, Duration::from_secs(10), |s| {
        s["state"] == "running"
    })
    .await;
    assert!(
        gate.output().contains("simulated container started"),
        "{}",
        gate.output()
    );

    // Its "container" lived in the gate: after a crash nothing runs any
    // more, and recovery ends the session instead of leaving it running.
    stage.gate.kill_hard();
    stage.gate.restart().await;
    let after = stage
        .gate
        .wait_for(&waiting_path, &second, Duration::from_secs(20), |s| {
            s["state"] == "ended"
        })
        .await;
    assert_ne!(after["end_reason"]["kind"], "user_stopped", "{after}");
    stage.finish().await;
}
