//! Idle culling through the real API (`deskgate serve` on PostgreSQL,
//! Docker and an anvil node of its own): a running session whose events
//! socket stays open (presence) but that gets no input is warned on that
//! socket (`idle_warning`) and ended with `idle_timeout`; `POST
//! /sessions/{id}/keep` ("Keep my desktop") counts as input and keeps it.

mod support;

use std::time::{Duration, Instant};

use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};

#[tokio::test(flavor = "multi_thread")]
async fn an_open_tab_without_input_is_warned_then_ended_and_keep_holds_it() {
    let stage = Stage::start(
        "api_idle",
        &[
            ("DESKGATE_IDLE_TIMEOUT_SECONDS", "6"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "60"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "1"),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0"),
        ],
    )
    .await;
    let gate = &stage.gate;
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;

    // Kept: "Keep my desktop" every 2 s holds it past three idle timeouts.
    let claimed = stage.claim(&token, "small").await;
    let id = claimed["id"].as_str().unwrap().to_string();
    let path = session_path(&claimed);
    gate.wait_for(&path, &token, Duration::from_secs(30), |s| {
        s["state"] == "running"
    })
    .await;
    let mut events = gate.events(&id, &token).await;
    let kept_until = Instant::now() + Duration::from_secs(18);
    while Instant::now() < kept_until {
        let (status, body) = gate
            .post(&format!("{path}/keep"), Some(&token), serde_json::json!({}))
            .await;
        assert_eq!(status, 200, "keep: {body}");
        assert_eq!(body["state"], "running", "kept: {body}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (_, shown) = gate.get(&path, &token).await;
    assert_eq!(shown["state"], "running", "{shown}");

    // Left alone (the socket still open: presence, but no input): warned
    // half the timeout before, then ended for idleness.
    let left_alone = Instant::now();
    let warning = events
        .wait_for("an idle warning", Duration::from_secs(10), |e| {
            e["type"] == "idle_warning"
        })
        .await;
    let warned_after = left_alone.elapsed();
    // Half the 6 s timeout, rounded up; a loaded machine may fire late.
    let left = warning["seconds_left"].as_u64().unwrap_or(0);
    assert!((1..=3).contains(&left), "{warning}");
    let ended = events
        .wait_for("the idle end", Duration::from_secs(10), |e| {
            e["type"] == "state" && e["state"] == "ended"
        })
        .await;
    let ended_after = left_alone.elapsed();
    assert_eq!(ended["reason"]["kind"], "idle_timeout", "{ended}");
    eprintln!(
        "left alone: warned after {warned_after:?}, ended after {ended_after:?} (timeout 6 s)"
    );
    assert!(
        ended_after <= Duration::from_secs(9),
        "ended {ended_after:?} after the last input, timeout 6 s"
    );
    let (_, shown) = gate.get(&path, &token).await;
    assert_eq!(shown["end_reason"]["kind"], "idle_timeout", "{shown}");
    events.close().await;
    stage.finish().await;
}
