//! Warm desktops through the gate: `deskgate serve` with
//! `DESKGATE_WARM_DESKTOPS=1` on two fake GPUs and the real desktop image
//! keeps one desktop started; a `small` claim takes it (the session's
//! container is the warm one, counted as a hit), its desktop answers on the
//! gate's VNC socket, the pool refills on the other GPU, and a gate killed
//! and restarted keeps the session (known by its container's name) while
//! it removes the warm desktop nobody took and starts a new one.
//!
//! Needs `make services` (PostgreSQL, Docker with deskgate/desktop:local, anvil).

mod support;

use std::process::Command;
use std::time::Duration;

use support::api::ONE_GPU_HOUR_WEI;
use support::desktop::{
    desktop_stage, metric, open_vnc, rfb_handshake, running_desktop, ticket, wait_for_metric,
};
use support::{free_port, scrape_metrics};

/// `(name, id, GPU label)` of every warm desktop nobody took.
fn untaken_warm() -> Vec<(String, String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=deskgate.warm",
            "--filter",
            "name=deskgate-warm-",
            "--format",
            "{{.Names}} {{.ID}} {{.Label \"deskgate.gpus\"}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            Some((
                fields.next()?.to_string(),
                fields.next()?.to_string(),
                fields.next()?.to_string(),
            ))
        })
        .collect()
}

/// The full id of container `name`, if it exists.
fn container_id(name: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .expect("docker inspect");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

const READY: &str = "deskgate_launcher_warm_desktops";

#[tokio::test(flavor = "multi_thread")]
async fn a_small_claim_takes_the_warm_desktop_and_a_restart_keeps_it_but_reaps_the_rest() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut stage = desktop_stage(
        "warm_desktops",
        &metrics_addr,
        &[("DESKGATE_WARM_DESKTOPS", "1"), ("DESKGATE_GPUS", "fake:2")],
    )
    .await;
    wait_for_metric(&metrics_addr, READY, 1.0, Duration::from_secs(60)).await;
    let warm = untaken_warm();
    assert_eq!(warm.len(), 1, "{warm:?}");
    let (warm_name, _, warm_gpu) = &warm[0];
    assert_eq!(warm_gpu, "0", "the lowest free GPU first");
    let warm_id = container_id(warm_name).expect("warm desktop");

    // The claim gets GPU 0 and the desktop already running there.
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let session = running_desktop(&stage, &token).await;
    let path = format!("/api/v1/sessions/{session}");
    let session_container = format!("deskgate-session-{session}");
    assert_eq!(
        container_id(&session_container),
        Some(warm_id.clone()),
        "the session runs in the warm desktop"
    );
    let metrics = scrape_metrics(&metrics_addr).await;
    assert_eq!(metric(&metrics, "deskgate_launcher_warm_hits_total"), 1.0);

    // Its desktop answers on the gate's VNC socket, authenticated by the
    // gate with the desktop's own secret.
    let vnc_ticket = ticket(&stage, &token, &session, "vnc").await;
    let mut socket = open_vnc(&stage, &session, &vnc_ticket)
        .await
        .expect("VNC socket opens");
    let mut held = Vec::new();
    let (width, height) = rfb_handshake(&mut socket, &mut held).await;
    assert!(width > 0 && height > 0, "{width}x{height}");
    drop(socket);

    // The pool refills on the GPU still free.
    wait_for_metric(&metrics_addr, READY, 1.0, Duration::from_secs(60)).await;
    let refilled = untaken_warm();
    assert_eq!(refilled.len(), 1, "{refilled:?}");
    assert_eq!(refilled[0].2, "1", "GPU 0 is the session's");
    let refilled_id = container_id(&refilled[0].0).expect("warm desktop");

    // A crash and a restart: the session stays in its container; the warm
    // desktop nobody took is removed and a new one started.
    stage.gate.kill_hard();
    stage.gate.restart().await;
    stage
        .gate
        .wait_for(&path, &token, Duration::from_secs(10), |s| {
            s["state"] == "running"
        })
        .await;
    assert_eq!(container_id(&session_container), Some(warm_id));
    wait_for_metric(&metrics_addr, READY, 1.0, Duration::from_secs(60)).await;
    assert_eq!(
        container_id(&refilled[0].0),
        None,
        "the old warm desktop was reaped"
    );
    let after = untaken_warm();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        container_id(&after[0].0).as_deref(),
        Some(refilled_id.as_str())
    );

    // The session ends: its container goes with it.
    let (status, _) = stage.gate.delete(&path, &token).await;
    assert!(status == 200 || status == 202, "stop: {status}");
    stage
        .gate
        .wait_for(&path, &token, Duration::from_secs(30), |s| {
            s["state"] == "ended"
        })
        .await;
    assert_eq!(container_id(&session_container), None);
    stage.finish().await;
}
