//! The gate's page when things go wrong or run out, driven in Debian's
//! headless Chromium (in a network namespace of its own) through the page
//! only, on a gate with one GPU (`tests/browser/web_edges.js`): a second
//! user is queued at position 1 with an ETA and gets the desktop when the
//! first stops; a dropped network is reconnected without ending the session;
//! an idle desktop is warned, kept with "Keep my desktop", then ended; a
//! low-credit desktop is topped up in one click, and another runs out and
//! says so; the operator page drains a GPU, gives credit and stops a
//! desktop. Screenshots land in `target/web-client-shots/`.
//!
//! Needs root, iproute2 and `make services`, like `tests/web_client.rs`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::api::GateProcess;
use support::browser::{PageDriver, PageStage};

/// anvil's dev accounts #0-#3: the users A-D of the driver.
const USERS: [&str; 4] = [
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
];
/// What each starts with, in credit-seconds.
const CREDIT: [i64; 4] = [3600, 3600, 20, 15];
const ADMIN_TOKEN: &str = "web-edges-admin-token-0123456789abcdef";

/// The sessions the admin API lists (not ended), as (id, state).
async fn live_sessions(gate: &GateProcess) -> Vec<(String, String)> {
    let (status, listed) = gate.get("/api/v1/admin/sessions", ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{listed}");
    listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_drop_idle_and_credit_in_the_page() {
    let page = PageStage::start(
        "web_edges",
        &[
            ("DESKGATE_GPUS", "fake:1"),
            ("DESKGATE_IDLE_TIMEOUT_SECONDS", "45"),
            ("DESKGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0"),
        ],
    )
    .await;
    let stage = &page.stage;
    for (user, credit) in USERS.iter().zip(CREDIT) {
        let body = json!({
            "address": user,
            "amount": credit,
            "reason": "web edges test",
            "idempotency_key": format!("web-edges-{user}"),
        });
        let (status, answer) = stage
            .gate
            .post("/api/v1/admin/credit", Some(ADMIN_TOKEN), body)
            .await;
        assert_eq!(status, 200, "credit {user}: {answer}");
    }

    let mut driver = PageDriver::spawn("web_edges.js", &page, &[ADMIN_TOKEN]);

    let mut b_session = None;
    let outcome: Result<(), String> = async {
        while let Some((name, _, _)) = driver.next().await? {
            match name.as_str() {
                "b-running" => {
                    let live = live_sessions(&stage.gate).await;
                    let [(id, state)] = live.as_slice() else {
                        return Err(format!("one live session expected: {live:?}"));
                    };
                    if state != "running" {
                        return Err(format!("B's session is {state}"));
                    }
                    b_session = Some(id.clone());
                }
                "cut" => {
                    page.netns.cut();
                    driver.reply("cut").await;
                }
                "reconnecting" => {
                    // Long enough cut for the page to notice, then back.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    page.netns.restore();
                    driver.reply("restored").await;
                }
                "reconnected" => {
                    let live = live_sessions(&stage.gate).await;
                    let same = b_session.as_ref().is_some_and(|b| {
                        live.iter().any(|(id, state)| id == b && state == "running")
                    });
                    if !same {
                        return Err(format!(
                            "B's session {b_session:?} did not survive the drop: {live:?}"
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;

    page.netns.restore();
    driver
        .finish(
            outcome,
            &page,
            &[
                "no-wallet-help",
                "b-queued",
                "b-running",
                "reconnected",
                "idle-warned",
                "kept",
                "idle-ended",
                "low-credit",
                "topped-up",
                "credit-ended",
                "admin-drained",
                "admin-credited",
                "admin-stopped",
            ],
        )
        .await;
    page.stage.finish().await;
}
