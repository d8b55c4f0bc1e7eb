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

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::desktop::desktop_stage;
use support::netns::{NetNs, forward_to_loopback};
use support::{free_port, repo_root, service_env};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
async fn live_sessions(http: &reqwest::Client, base: &str) -> Vec<(String, String)> {
    let listed: Value = http
        .get(format!("{base}/api/v1/admin/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let netns = NetNs::create();
    let host_ip = netns.host_ip.to_string();
    let public = SocketAddr::new(netns.host_ip.into(), free_port());
    let public_url = format!("http://{public}");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = desktop_stage(
        "web_edges",
        &metrics_addr,
        &[
            ("DESKGATE_GPUS", "fake:1"),
            ("DESKGATE_WEBRTC_UDP_IP", &host_ip),
            ("DESKGATE_PUBLIC_URL", &public_url),
            ("DESKGATE_IDLE_TIMEOUT_SECONDS", "45"),
            ("DESKGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0"),
        ],
    )
    .await;
    forward_to_loopback(public, stage.gate.port).await;
    let http = stage.gate.http.clone();
    let base = stage.gate.base.clone();
    for (user, credit) in USERS.iter().zip(CREDIT) {
        let response = http
            .post(format!("{base}/api/v1/admin/credit"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({
                "address": user,
                "amount": credit,
                "reason": "web edges test",
                "idempotency_key": format!("web-edges-{user}"),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "credit {user}");
    }

    let shots = repo_root().join("target/web-client-shots");
    let chromium = netns.chromium_wrapper(&service_env("DESKGATE_CHROMIUM"));
    let mut driver = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/browser/web_edges.js"))
        .args([&public_url, &stage.anvil.url])
        .arg(&shots)
        .arg(ADMIN_TOKEN)
        .env(
            "NODE_PATH",
            format!("{}/node_modules", service_env("DESKGATE_PLAYWRIGHT_DIR")),
        )
        .env("DESKGATE_CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node (make services installs it)");
    let mut to_driver = driver.stdin.take().unwrap();
    let mut stages = BufReader::new(driver.stdout.take().unwrap()).lines();
    let mut stderr = driver.stderr.take().unwrap();
    let driver_log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });

    let mut reached = Vec::new();
    let mut b_session = None;
    let outcome: Result<(), String> = async {
        while let Some(line) = stages
            .next_line()
            .await
            .map_err(|e| format!("driver output: {e}"))?
        {
            let event: Value =
                serde_json::from_str(&line).map_err(|_| format!("driver said: {line}"))?;
            let name = event["stage"].as_str().unwrap_or_default().to_string();
            eprintln!("driver: {line}");
            match name.as_str() {
                "b-running" => {
                    let live = live_sessions(&http, &base).await;
                    let [(id, state)] = live.as_slice() else {
                        return Err(format!("one live session expected: {live:?}"));
                    };
                    if state != "running" {
                        return Err(format!("B's session is {state}"));
                    }
                    b_session = Some(id.clone());
                }
                "cut" => {
                    netns.cut();
                    to_driver.write_all(b"cut\n").await.unwrap();
                }
                "reconnecting" => {
                    // Long enough cut for the page to notice, then back.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    netns.restore();
                    to_driver.write_all(b"restored\n").await.unwrap();
                }
                "reconnected" => {
                    let live = live_sessions(&http, &base).await;
                    let same = b_session.as_ref().is_some_and(|b| {
                        live.iter().any(|(id, state)| id == b && state == "running")
                    });
                    if !same {
                        return Err(format!(
                            "B's session {b_session:?} did not survive the drop: {live:?}"
                        ));
                    }
                }
                "failed" => return Err(format!("the page failed: {}", event["error"])),
                "done" => return Ok(()),
                _ => {}
            }
            reached.push(name);
        }
        Err("the driver stopped without a verdict".to_string())
    }
    .await;

    netns.restore();
    let status = tokio::time::timeout(Duration::from_secs(30), driver.wait()).await;
    let log = driver_log.await.unwrap_or_default();
    if let Err(why) = outcome {
        panic!(
            "{why}\nstages reached: {reached:?}\nscreenshots: {}\ndriver log:\n{log}\ngate log:\n{}",
            shots.display(),
            stage.gate.output()
        );
    }
    assert!(
        matches!(status, Ok(Ok(s)) if s.success()),
        "driver exit: {status:?}\n{log}"
    );
    for wanted in [
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
    ] {
        assert!(
            reached.iter().any(|r| r == wanted),
            "the page never reached {wanted}: {reached:?}"
        );
    }
    stage.finish().await;
}
