//! A gate whose sessions run the real desktop image (TigerVNC's Xvnc), and
//! what the media tests do with it: run X clients on the session's display
//! (a known checkerboard to look for), take media tickets, read the
//! session's VNC secret and the gate's metrics, open the gate's VNC socket
//! as a browser would and do the RFB handshake on it.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::api::{Stage, session_path};
use super::{scrape_metrics, service_env};

/// A gate whose sessions run the desktop image, with metrics on
/// `metrics_addr` and `settings` on top.
pub async fn desktop_stage(
    tag: &str,
    metrics_addr: &str,
    settings: &[(&'static str, &str)],
) -> Stage {
    let image = service_env("DESKGATE_DESKTOP_IMAGE");
    let mut all: Vec<(&'static str, &str)> = vec![
        ("DESKGATE_SESSION_IMAGE", &image),
        ("DESKGATE_SESSION_MEMORY_MIB", "512"),
        ("DESKGATE_METRICS_ADDR", metrics_addr),
    ];
    all.extend_from_slice(settings);
    Stage::start(tag, &all).await
}

/// Claims `small` and waits until the session runs; returns its id.
pub async fn running_desktop(stage: &Stage, token: &str) -> String {
    let claimed = stage.claim(token, "small").await;
    stage
        .gate
        .wait_for(
            &session_path(&claimed),
            token,
            Duration::from_secs(30),
            |s| s["state"] == "running",
        )
        .await;
    claimed["id"].as_str().unwrap().to_string()
}

/// Runs `args` in the session's desktop container as its X client, retrying
/// while the X server is still starting; returns stdout.
pub fn on_display(session: &str, args: &[&str]) -> String {
    let container = format!("deskgate-session-{session}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("docker")
            .args(["exec", &container, "env", "DISPLAY=:0"])
            .args(args)
            .output()
            .expect("docker CLI");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} on the desktop of {session}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The checkerboard painted on the X display: `FG` squares where the square's
/// column plus row is even, `BG` elsewhere, from the top-left corner.
pub const SQUARE: u32 = 32;
pub const FG: [u8; 3] = [0x00, 0x40, 0xff];
pub const BG: [u8; 3] = [0xff, 0x80, 0x00];
/// What the pattern has at (`x`, `y`).
pub fn painted(x: u32, y: u32) -> [u8; 3] {
    if (x / SQUARE + y / SQUARE).is_multiple_of(2) {
        FG
    } else {
        BG
    }
}

/// The pattern's tile as an XBM bitmap for `xsetroot -bitmap`: two squares
/// each way, set bits (least significant first) in `FG`.
fn checkerboard_xbm() -> String {
    let side = 2 * SQUARE;
    let bytes: Vec<String> = (0..side)
        .flat_map(|y| (0..side / 8).map(move |byte| (y, byte)))
        .map(|(y, byte)| {
            let bits = (0..8)
                .filter(|bit| painted(byte * 8 + bit, y) == FG)
                .fold(0u8, |acc, bit| acc | (1 << bit));
            format!("0x{bits:02x}")
        })
        .collect();
    format!(
        "#define pattern_width {side}\n#define pattern_height {side}\nstatic unsigned char pattern_bits[] = {{\n{}}};\n",
        bytes.join(",")
    )
}

/// Paints the checkerboard on the session's X root window and parks the
/// pointer in the bottom-right corner.
pub fn paint_checkerboard(session: &str) {
    on_display(
        session,
        &[
            "sh",
            "-c",
            "printf '%s' \"$1\" > /tmp/pattern.xbm",
            "sh",
            &checkerboard_xbm(),
        ],
    );
    on_display(
        session,
        &[
            "xsetroot",
            "-bitmap",
            "/tmp/pattern.xbm",
            "-fg",
            "#0040ff",
            "-bg",
            "#ff8000",
        ],
    );
    on_display(session, &["xdotool", "mousemove", "1279", "719"]);
}

/// Polls `xdotool getmouselocation` on the session's display until the X
/// pointer is at (`x`, `y`), failing after `within`.
pub async fn wait_for_pointer(session: &str, x: u32, y: u32, within: Duration, context: &str) {
    let want = format!("x:{x} y:{y} ");
    let deadline = Instant::now() + within;
    loop {
        let location = on_display(session, &["xdotool", "getmouselocation"]);
        if location.starts_with(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the X pointer did not move to ({x}, {y}): {location}\n{context}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh single-use ticket of `purpose` for the session: the whole 201 body.
pub async fn ticket_body(stage: &Stage, token: &str, session: &str, purpose: &str) -> Value {
    let (status, body) = stage
        .gate
        .post(
            &format!("/api/v1/sessions/{session}/tickets"),
            Some(token),
            json!({ "purpose": purpose }),
        )
        .await;
    assert_eq!(status, 201, "ticket: {body}");
    body
}

/// A fresh single-use ticket of `purpose` for the session.
pub async fn ticket(stage: &Stage, token: &str, session: &str, purpose: &str) -> String {
    ticket_body(stage, token, session, purpose).await["ticket"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The session's VNC secret, from its container's environment.
pub fn vnc_secret(session: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &format!("deskgate-session-{session}"),
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("DESKGATE_VNC_PASSWORD="))
        .expect("the session has a VNC secret")
        .to_string()
}

/// The value of one Prometheus series (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Scrapes `metrics_addr` until `series` reads `value`, failing after `within`.
pub async fn wait_for_metric(metrics_addr: &str, series: &str, value: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let metrics = scrape_metrics(metrics_addr).await;
        if metric(&metrics, series) == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not read {value} within {within:?}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts from the gate's metrics that nothing reached a desktop and that
/// `refused` tickets were refused.
pub async fn assert_no_dial_and_tickets_refused(metrics_addr: &str, refused: f64) {
    let metrics = scrape_metrics(metrics_addr).await;
    assert_eq!(
        metric(&metrics, "deskgate_media_desktop_dials_total"),
        0.0,
        "a refused request reached the desktop:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, r#"deskgate_media_refused_total{reason="ticket"}"#),
        refused,
        "{metrics}"
    );
}

/// The gate's VNC media socket, as a browser holds it.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the VNC socket with `ticket` from the gate's own origin; the HTTP
/// status on refusal.
pub async fn open_vnc(stage: &Stage, session: &str, ticket: &str) -> Result<Socket, u16> {
    let mut request = format!(
        "ws://127.0.0.1:{}/api/v1/sessions/{session}/vnc?ticket={ticket}",
        stage.gate.port
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("origin", stage.gate.base.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("VNC socket of {session}: {other}"),
    }
}

/// Reads exactly `n` bytes of the RFB stream.
pub async fn read_rfb(socket: &mut Socket, held: &mut Vec<u8>, n: usize) -> Vec<u8> {
    while held.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => held.extend_from_slice(&bytes),
            Ok(Some(Ok(_))) => {}
            other => panic!("RFB stream ended early: {other:?}"),
        }
    }
    held.drain(..n).collect()
}

/// Sends `bytes` of RFB on the socket.
pub async fn send_rfb(socket: &mut Socket, bytes: &[u8]) {
    socket
        .send(Message::Binary(bytes.to_vec().into()))
        .await
        .expect("send on the VNC socket");
}

/// The RFB 3.8 client handshake against the relay: it must offer None only.
/// Returns the desktop's size from ServerInit.
pub async fn rfb_handshake(socket: &mut Socket, held: &mut Vec<u8>) -> (u16, u16) {
    assert_eq!(read_rfb(socket, held, 12).await, b"RFB 003.008\n");
    send_rfb(socket, b"RFB 003.008\n").await;
    assert_eq!(
        read_rfb(socket, held, 2).await,
        [1, 1],
        "the relay offers exactly security type None"
    );
    send_rfb(socket, &[1]).await;
    assert_eq!(read_rfb(socket, held, 4).await, [0, 0, 0, 0]);
    send_rfb(socket, &[1]).await; // ClientInit, shared
    let init = read_rfb(socket, held, 24).await;
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    read_rfb(socket, held, name_len).await;
    (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    )
}
