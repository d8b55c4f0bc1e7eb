//! The VNC media socket end to end: a real gate (PostgreSQL, Docker, anvil)
//! launches the real desktop image (TigerVNC's Xvnc with a per-session VNC
//! password); noVNC in Debian's headless Chromium and a raw RFB client go
//! through `GET /api/v1/sessions/{id}/vnc?ticket=`.
//!
//! Needs `make services` (PostgreSQL, Docker with deskgate/desktop:local,
//! anvil, chromium, novnc and playwright-core).

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::api::{ONE_GPU_HOUR_WEI, session_path};
use support::desktop::{
    assert_no_dial_and_tickets_refused, desktop_stage, metric, on_display, open_vnc, read_rfb,
    rfb_handshake, running_desktop, send_rfb, ticket, vnc_secret, wait_for_metric,
    wait_for_pointer,
};
use support::{free_port, scrape_metrics, service_env};
use tokio_tungstenite::tungstenite::Message;

/// The orange the tests paint on the X display.
const PAINTED: [u8; 3] = [0xff, 0x80, 0x00];

#[tokio::test(flavor = "multi_thread")]
async fn novnc_in_chromium_shows_the_painted_desktop_without_the_vnc_password() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = desktop_stage("media_novnc", &metrics_addr, &[]).await;
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let session = running_desktop(&stage, &token).await;
    on_display(&session, &["xsetroot", "-solid", "#ff8000"]);
    let ticket = ticket(&stage, &token, &session, "vnc").await;

    let playwright = service_env("DESKGATE_PLAYWRIGHT_DIR");
    let shot = std::env::temp_dir().join(format!("deskgate-novnc-{session}.png"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/novnc_view.js");
    let out = tokio::process::Command::new("node")
        .arg(script)
        .args([&stage.gate.base, &session, &ticket])
        .arg(service_env("DESKGATE_NOVNC_DIR"))
        .arg(&shot)
        .env("NODE_PATH", format!("{playwright}/node_modules"))
        .env("DESKGATE_CHROMIUM", service_env("DESKGATE_CHROMIUM"))
        .output()
        .await
        .expect("run node (make services installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "noVNC in chromium failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"));
    assert_eq!(
        report["connected"],
        true,
        "{report}\nbrowser:\n{}\ngate log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        stage.gate.output()
    );
    assert_eq!(
        report["credentialsRequired"], false,
        "noVNC was asked for a password: {report}"
    );
    assert_eq!(report["size"], json!([1280, 720]), "{report}");
    for pixel in report["pixels"].as_array().expect("pixels") {
        assert_eq!(pixel, &json!(PAINTED), "a pixel of the canvas: {report}");
    }
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );

    // The browser has gone: the bridge process in the desktop goes with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let processes = on_display(&session, &["ps", "-o", "args"]);
        if !processes.lines().any(|l| l.starts_with("nc ")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VNC bridge outlived its browser:\n{processes}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both directions went through the relay's counters (a solid colour
    // compresses to a few hundred bytes, so only presence is asserted; the
    // pixels above are the proof of content).
    let metrics = scrape_metrics(&metrics_addr).await;
    for direction in ["up", "down"] {
        let series = format!(r#"deskgate_media_bytes_total{{path="vnc",direction="{direction}"}}"#);
        assert!(metric(&metrics, &series) > 0.0, "{series}:\n{metrics}");
    }
    // The secret is in nothing the gate logged.
    let secret = vnc_secret(&session);
    let logs = stage.gate.output();
    assert!(
        !logs.contains(&secret),
        "the VNC secret is in the gate's log"
    );
    assert!(!logs.contains(&ticket), "the ticket is in the gate's log");
    stage.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_reused_or_expired_ticket_never_reaches_the_desktop() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = desktop_stage("media_tickets", &metrics_addr, &[]).await;
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let session = running_desktop(&stage, &token).await;

    // Wrong: never issued.
    assert_eq!(
        open_vnc(&stage, &session, &"ab".repeat(32)).await.err(),
        Some(401)
    );
    // Missing.
    assert_eq!(open_vnc(&stage, &session, "").await.err(), Some(401));
    // A webrtc ticket is not a vnc ticket (and is used up by trying).
    let webrtc = ticket(&stage, &token, &session, "webrtc").await;
    assert_eq!(open_vnc(&stage, &session, &webrtc).await.err(), Some(401));
    // Expired: tickets live 30 s.
    let stale = ticket(&stage, &token, &session, "vnc").await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(open_vnc(&stage, &session, &stale).await.err(), Some(401));
    assert_no_dial_and_tickets_refused(&metrics_addr, 4.0).await;

    // Good once, then reused.
    let good = ticket(&stage, &token, &session, "vnc").await;
    let mut socket = open_vnc(&stage, &session, &good)
        .await
        .expect("a fresh ticket opens the socket");
    let mut held = Vec::new();
    rfb_handshake(&mut socket, &mut held).await;
    assert_eq!(open_vnc(&stage, &session, &good).await.err(), Some(401));
    let metrics = scrape_metrics(&metrics_addr).await;
    assert_eq!(
        metric(&metrics, "deskgate_media_desktop_dials_total"),
        1.0,
        "{metrics}"
    );
    stage.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn input_is_counted_moves_the_x_pointer_and_the_socket_closes_with_the_session() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = desktop_stage("media_input", &metrics_addr, &[]).await;
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let session = running_desktop(&stage, &token).await;
    on_display(&session, &["xdotool", "mousemove", "1", "1"]);
    let input = |m: &str, kind: &str| {
        metric(
            m,
            &format!(r#"deskgate_media_input_events_total{{path="vnc",kind="{kind}"}}"#),
        )
    };

    let ticket = ticket(&stage, &token, &session, "vnc").await;
    let mut socket = open_vnc(&stage, &session, &ticket).await.expect("socket");
    let mut held = Vec::new();
    assert_eq!(rfb_handshake(&mut socket, &mut held).await, (1280, 720));
    // A full update request is not input.
    send_rfb(&mut socket, &[3, 0, 0, 0, 0, 0, 0, 16, 0, 16]).await;
    let update = read_rfb(&mut socket, &mut held, 4).await;
    assert_eq!(update[0], 0, "a FramebufferUpdate comes back");
    let metrics = scrape_metrics(&metrics_addr).await;
    assert_eq!(
        (input(&metrics, "pointer"), input(&metrics, "key")),
        (0.0, 0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, r#"deskgate_media_viewers{path="vnc"}"#),
        1.0
    );

    // Pointer to (321, 123), then a key press and release of Shift.
    send_rfb(&mut socket, &[5, 0, 0x01, 0x41, 0, 0x7b]).await;
    send_rfb(&mut socket, &[4, 1, 0, 0, 0, 0, 0xff, 0xe1]).await;
    send_rfb(&mut socket, &[4, 0, 0, 0, 0, 0, 0xff, 0xe1]).await;
    wait_for_pointer(&session, 321, 123, Duration::from_secs(10), "").await;
    let metrics = scrape_metrics(&metrics_addr).await;
    assert_eq!(
        (input(&metrics, "pointer"), input(&metrics, "key")),
        (1.0, 2.0),
        "{metrics}"
    );

    // Ending the session closes the socket.
    let (status, body) = stage
        .gate
        .delete(&session_path(&json!({ "id": session })), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    let closed_by = Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(closed_by.into(), socket.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("the VNC socket stayed open after the session ended"),
        }
    }
    wait_for_metric(
        &metrics_addr,
        r#"deskgate_media_viewers{path="vnc"}"#,
        0.0,
        Duration::from_secs(5),
    )
    .await;
    stage.finish().await;
}
