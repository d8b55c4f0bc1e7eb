//! The WebRTC media route end to end: a real gate (PostgreSQL, Docker, anvil)
//! launches the real desktop image; Debian's headless Chromium, in a network
//! namespace of its own, posts its offer to `POST
//! /api/v1/sessions/{id}/webrtc?ticket=` (through its driver on the host) and
//! receives the desktop as VP8 over a veth pair, with input going back on an
//! `input` data channel.
//!
//! Chromium gathers no ICE candidates on a loopback-only host, so the browser
//! runs in a namespace whose one interface is a veth pair
//! ([`support::netns`]); the gate's WebRTC sockets bind the host end
//! (`DESKGATE_WEBRTC_UDP_IP`). Needs root, iproute2 and `make services`
//! (PostgreSQL, Docker with deskgate/desktop:local, anvil, chromium,
//! playwright-core).

mod support;

use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};
use support::desktop::{
    assert_no_dial_and_tickets_refused, desktop_stage, metric, on_display, paint_checkerboard,
    painted, running_desktop, ticket, ticket_body, vnc_secret, wait_for_metric,
};
use support::netns::NetNs;
use support::{free_port, scrape_metrics, service_env};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How far VP8 (4:2:0, lossy) may move a channel at a square's centre.
const TOLERANCE: i32 = 24;
/// Where the video is sampled: square centres across the screen, away from
/// the X pointer parked in the bottom-right corner.
const SAMPLES: [(u32, u32); 13] = [
    (16, 16),
    (48, 16),
    (16, 48),
    (48, 48),
    (624, 336),
    (656, 336),
    (624, 368),
    (656, 368),
    (1232, 16),
    (1264, 16),
    (16, 688),
    (48, 688),
    (1200, 656),
];

/// What Chromium offers for a recvonly video transceiver and an `input` data
/// channel (Chromium 156, trimmed to VP8 and without candidates; webrtc-rs
/// 0.21.1 answers it).
const OFFER: &str = "v=0\r\n\
o=- 1324952531715957845 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:vCbn\r\n\
a=ice-pwd:lriOdrgT52FqLJr5yz+5kVSI\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 72:3C:80:9A:84:66:0B:4F:33:CA:1A:73:93:04:A0:27:EA:BA:49:3B:67:B1:8A:70:6C:BA:70:F2:E2:7A:60:51\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:vCbn\r\n\
a=ice-pwd:lriOdrgT52FqLJr5yz+5kVSI\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 72:3C:80:9A:84:66:0B:4F:33:CA:1A:73:93:04:A0:27:EA:BA:49:3B:67:B1:8A:70:6C:BA:70:F2:E2:7A:60:51\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=sctp-port:5000\r\n\
a=max-message-size:262144\r\n";

/// Reads `stream` to its end into a shared string.
fn capture(
    mut stream: impl AsyncRead + Unpin + Send + 'static,
) -> (Arc<Mutex<String>>, tokio::task::JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, task)
}

/// What `webrtc_view.js` logs once the page streams and has sent its input;
/// it then waits for a line on stdin.
/// The TURN REST shared secret of the refusal test's gate.
const TURN_SECRET: &str = "turn-secret-for-the-webrtc-refusal-test";

/// coturn's `use-auth-secret` password for `username`, computed by openssl
/// (an oracle independent of the gate's code).
fn turn_rest_password(username: &str) -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "printf %s \"$1\" | openssl dgst -sha1 -hmac \"$2\" -binary | base64",
            "sh",
            username,
            TURN_SECRET,
        ])
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const STREAMING: &str = "waiting for the end of the session";

/// `tests/browser/webrtc_view.js` running Chromium in a namespace.
struct Viewer {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: (Arc<Mutex<String>>, tokio::task::JoinHandle<()>),
    stderr: (Arc<Mutex<String>>, tokio::task::JoinHandle<()>),
}

/// How the viewer ended: its exit, its report and its diagnostics.
struct Viewed {
    success: bool,
    report: Value,
    stderr: String,
}

impl Viewer {
    /// Starts the viewer of the gate at `origin` on `issued` (a ticket's 201
    /// body) with `chromium` (the namespace's wrapper); the screenshot goes
    /// to `shot`.
    fn start(origin: &str, session: &str, issued: &Value, chromium: &Path, shot: &Path) -> Self {
        let playwright = service_env("DESKGATE_PLAYWRIGHT_DIR");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/webrtc_view.js");
        let points = json!(SAMPLES.iter().map(|&(x, y)| [x, y]).collect::<Vec<_>>());
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .args([origin, session])
            .arg(issued["ticket"].as_str().expect("a ticket"))
            .arg(shot)
            .arg(points.to_string())
            .env("NODE_PATH", format!("{playwright}/node_modules"))
            .env("DESKGATE_CHROMIUM", chromium)
            .env("DESKGATE_ICE_SERVERS", issued["ice_servers"].to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run node (make services installs it)");
        let stdin = child.stdin.take();
        let stdout = capture(child.stdout.take().expect("stdout"));
        let stderr = capture(child.stderr.take().expect("stderr"));
        Self {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// The browser's diagnostics so far.
    fn stderr(&self) -> String {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits until the page streams and has sent its pointer message (true),
    /// or the viewer exits or `within` passes (false).
    async fn streaming(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.stderr().contains(STREAMING) {
                return true;
            }
            if self.child.try_wait().expect("poll node").is_some() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Tells the viewer the session has ended and waits for its report.
    async fn finish(mut self) -> Viewed {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"ended\n").await;
            let _ = stdin.flush().await;
        }
        let status = tokio::time::timeout(Duration::from_secs(70), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the viewer hung:\n{}", self.stderr()))
            .expect("wait for node");
        let _ = (&mut self.stdout.1).await;
        let _ = (&mut self.stderr.1).await;
        let stdout = self.stdout.0.lock().unwrap().clone();
        let stderr = self.stderr();
        let report = serde_json::from_str(stdout.trim().lines().last().unwrap_or_default())
            .unwrap_or_else(|e| {
                panic!("the viewer's report is not JSON ({e}): {stdout}\nbrowser:\n{stderr}")
            });
        Viewed {
            success: status.success(),
            report,
            stderr,
        }
    }
}

/// `report[key]` as `u64` (0 when absent).
fn count(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn webrtc_in_chromium_shows_the_painted_pattern_and_moves_the_x_pointer() {
    let netns = NetNs::create();
    let udp_ip = netns.host_ip.to_string();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = desktop_stage(
        "media_webrtc",
        &metrics_addr,
        &[
            ("DESKGATE_WEBRTC_UDP_IP", &udp_ip),
            ("DESKGATE_WEBRTC_MAX_FPS", "30"),
            ("DESKGATE_WEBRTC_BITRATE_KBPS", "2500"),
        ],
    )
    .await;
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let session = running_desktop(&stage, &token).await;
    let secret = vnc_secret(&session);
    paint_checkerboard(&session);
    let issued = ticket_body(&stage, &token, &session, "webrtc").await;
    assert_eq!(issued["purpose"], "webrtc", "{issued}");
    assert_eq!(
        issued["ice_servers"],
        json!([]),
        "no TURN is configured: {issued}"
    );
    let ticket = issued["ticket"].as_str().unwrap().to_string();

    let chromium = netns.chromium_wrapper(&service_env("DESKGATE_CHROMIUM"));
    let shot = std::env::temp_dir().join(format!("deskgate-webrtc-{session}.png"));
    let mut viewer = Viewer::start(&stage.gate.base, &session, &issued, &chromium, &shot);
    if !viewer.streaming(Duration::from_secs(55)).await {
        let viewed = viewer.finish().await;
        panic!(
            "the browser did not get to stream the desktop: {}\nbrowser:\n{}\ngate log:\n{}",
            viewed.report,
            viewed.stderr,
            stage.gate.output()
        );
    }
    // While it streams: the pointer message reached X, and it alone was
    // counted (asserted below, after the browser's own report).
    let at_321_123 = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let location = on_display(&session, &["xdotool", "getmouselocation"]);
            if location.starts_with("x:321 y:123 ") || Instant::now() >= deadline {
                return location;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let streaming_metrics = scrape_metrics(&metrics_addr).await;

    // Ending the session closes the stream.
    let (status, body) = stage
        .gate
        .delete(&session_path(&json!({ "id": session })), &token)
        .await;
    assert_eq!(status, 200, "{body}");
    let Viewed {
        success,
        report,
        stderr,
    } = viewer.finish().await;
    eprintln!("the viewer's report: {report}");
    let context = format!(
        "report: {report}\nbrowser:\n{stderr}\ngate log:\n{}",
        stage.gate.output()
    );
    assert!(success, "the viewer failed\n{context}");
    assert_eq!(report["error"], Value::Null, "{context}");
    assert_eq!(report["offerStatus"], 200, "{context}");
    assert_eq!(report["answerType"], "answer", "{context}");
    assert_eq!(
        report["iceServers"],
        json!([]),
        "the answer's ice_servers\n{context}"
    );
    assert_eq!(report["connected"], true, "{context}");
    assert_eq!(report["dcOpen"], true, "the input channel\n{context}");
    let has_candidate = |key: &str, ip: &str| {
        report[key]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c.as_str().is_some_and(|c| c.contains(ip))))
    };
    assert!(
        has_candidate("localCandidates", &netns.ns_ip.to_string()),
        "Chromium offered no candidate on its namespace's address\n{context}"
    );
    assert!(
        has_candidate("answerCandidates", &udp_ip),
        "the gate's answer has no candidate on DESKGATE_WEBRTC_UDP_IP {udp_ip}\n{context}"
    );
    assert_eq!(report["videoSize"], json!([1280, 720]), "{context}");
    let idle = &report["idle"];
    assert_eq!(idle["before"]["codec"], "video/VP8", "{context}");

    // The picture is the pattern on the display.
    let pixels = report["pixels"].as_array().expect("sampled pixels");
    assert_eq!(pixels.len(), SAMPLES.len(), "{context}");
    for (&(x, y), pixel) in SAMPLES.iter().zip(pixels) {
        let want = painted(x, y);
        let got: Vec<i32> = pixel
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(Value::as_i64)
                    .map(|v| v as i32)
                    .collect()
            })
            .unwrap_or_default();
        let close = got.len() == 3
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| (g - i32::from(w)).abs() <= TOLERANCE);
        assert!(
            close,
            "pixel ({x}, {y}) is {got:?}, the display has {want:?} (±{TOLERANCE})\n{context}"
        );
    }

    // The desktop was idle for the window: no new frames at all. Chromium
    // asks for a keyframe after 3 s without a frame; the gate does not
    // answer while the last frame it sent was a keyframe of this picture.
    let delta = |key: &str| count(&idle["after"], key) as i64 - count(&idle["before"], key) as i64;
    assert_eq!(
        delta("framesReceived"),
        0,
        "an idle desktop sent frames ({} keyframe requests in the window {idle})\n{context}",
        delta("pliCount") + delta("firCount")
    );

    // The pointer message, and nothing else, reached the desktop.
    assert_eq!(report["pointerSent"], true, "{context}");
    assert!(
        at_321_123.starts_with("x:321 y:123 "),
        "the X pointer did not move to (321, 123): {at_321_123}\n{context}"
    );
    let input = |kind: &str| {
        metric(
            &streaming_metrics,
            &format!(r#"deskgate_media_input_events_total{{path="webrtc",kind="{kind}"}}"#),
        )
    };
    assert_eq!(
        (input("pointer"), input("key")),
        (1.0, 0.0),
        "input events while streaming:\n{streaming_metrics}"
    );
    assert_eq!(
        metric(
            &streaming_metrics,
            r#"deskgate_media_viewers{path="webrtc"}"#
        ),
        1.0,
        "{streaming_metrics}"
    );
    assert_eq!(
        metric(&streaming_metrics, "deskgate_media_desktop_dials_total"),
        1.0,
        "{streaming_metrics}"
    );
    assert!(
        metric(
            &streaming_metrics,
            r#"deskgate_media_bytes_total{path="webrtc",direction="down"}"#
        ) > 0.0,
        "{streaming_metrics}"
    );
    let sent = metric(
        &streaming_metrics,
        r#"deskgate_media_frames_total{path="webrtc"}"#,
    );
    let received = count(&idle["after"], "framesReceived") as f64;
    assert!(
        sent >= 1.0 && sent >= received,
        "the gate counted {sent} frames sent, the browser received {received}:\n{streaming_metrics}"
    );

    // The end of the session closed the stream in the browser and in the gate.
    assert_eq!(
        report["openBeforeEnd"], true,
        "the stream closed before the session ended\n{context}"
    );
    assert!(
        report["closeMs"].is_u64(),
        "the browser's stream stayed open after the session ended\n{context}"
    );
    wait_for_metric(
        &metrics_addr,
        r#"deskgate_media_viewers{path="webrtc"}"#,
        0.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );

    // Neither the ticket nor the desktop's secret is in what the gate logged.
    let logs = stage.gate.output();
    assert!(!logs.contains(&ticket), "the ticket is in the gate's log");
    assert!(
        !logs.contains(&secret),
        "the VNC secret is in the gate's log"
    );
    stage.finish().await;
    drop(netns);
}

/// Posts `body` as the offer with `ticket` (none: no query) from `origin`
/// (none: no header); returns the status, the content type and the body.
async fn post_offer(
    stage: &Stage,
    session: &str,
    ticket: Option<&str>,
    origin: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, String, Value) {
    let mut url = format!("{}/api/v1/sessions/{session}/webrtc", stage.gate.base);
    if let Some(ticket) = ticket {
        url.push_str(&format!("?ticket={ticket}"));
    }
    let mut request = stage
        .gate
        .http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(origin) = origin {
        request = request.header(reqwest::header::ORIGIN, origin);
    }
    let response = request.send().await.expect("the offer request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        content_type,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts an offer that must be refused with `want` as problem+json.
async fn assert_refused(
    stage: &Stage,
    session: &str,
    what: &str,
    ticket: Option<&str>,
    origin: Option<&str>,
    body: String,
    want: u16,
) {
    let (status, content_type, problem) = post_offer(stage, session, ticket, origin, body).await;
    assert_eq!(
        status,
        want,
        "{what}: {problem}\ngate log:\n{}",
        stage.gate.output()
    );
    assert!(
        content_type.starts_with("application/problem+json"),
        "{what}: answered as {content_type:?}: {problem}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webrtc_offer_is_refused_before_the_desktop_is_dialled() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let stage = desktop_stage(
        "media_webrtc_refusals",
        &metrics_addr,
        &[
            ("DESKGATE_WEBRTC_UDP_IP", "127.0.0.1"),
            (
                "DESKGATE_TURN_URLS",
                "stun:127.0.0.1:3478,turn:127.0.0.1:3478?transport=udp",
            ),
            ("DESKGATE_TURN_SECRET", TURN_SECRET),
        ],
    )
    .await;
    let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
    let session = running_desktop(&stage, &token).await;
    let origin = stage.gate.base.as_str();
    let offer = json!({ "sdp": OFFER }).to_string();

    // A webrtc ticket comes with the ICE servers: STUN as it is, TURN with a
    // credential for this session that expires in an hour, never the secret.
    let issued = ticket_body(&stage, &token, &session, "webrtc").await;
    let servers = issued["ice_servers"].as_array().expect("ice_servers");
    assert_eq!(servers.len(), 2, "{issued}");
    assert_eq!(
        servers[0],
        json!({ "urls": ["stun:127.0.0.1:3478"] }),
        "{issued}"
    );
    assert_eq!(
        servers[1]["urls"],
        json!(["turn:127.0.0.1:3478?transport=udp"])
    );
    let username = servers[1]["username"].as_str().expect("TURN username");
    let (expiry, label) = username.split_once(':').expect("<expiry>:<label>");
    assert_eq!(label, session, "{issued}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().expect("expiry in unix seconds");
    assert!(
        (now + 3590..=now + 3610).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    assert_eq!(
        servers[1]["credential"].as_str(),
        Some(turn_rest_password(username).as_str()),
        "the TURN credential is not coturn's HMAC of the username"
    );
    assert!(!issued.to_string().contains(TURN_SECRET));

    // Each request below is wrong in one way only.
    let never_issued = "ab".repeat(32);
    assert_refused(
        &stage,
        &session,
        "a ticket never issued",
        Some(&never_issued),
        Some(origin),
        offer.clone(),
        401,
    )
    .await;
    assert_refused(
        &stage,
        &session,
        "no ticket",
        None,
        Some(origin),
        offer.clone(),
        401,
    )
    .await;
    let vnc = ticket(&stage, &token, &session, "vnc").await;
    assert_refused(
        &stage,
        &session,
        "a vnc ticket",
        Some(&vnc),
        Some(origin),
        offer.clone(),
        401,
    )
    .await;
    let webrtc = || ticket(&stage, &token, &session, "webrtc");
    let fresh = webrtc().await;
    let foreign = Some("http://evil.example");
    assert_refused(
        &stage,
        &session,
        "a foreign Origin",
        Some(&fresh),
        foreign,
        offer.clone(),
        403,
    )
    .await;
    let fresh = webrtc().await;
    assert_refused(
        &stage,
        &session,
        "no Origin",
        Some(&fresh),
        None,
        offer.clone(),
        403,
    )
    .await;
    let fresh = webrtc().await;
    let malformed = r#"{"sdp": "v=0"#.to_string();
    assert_refused(
        &stage,
        &session,
        "malformed JSON",
        Some(&fresh),
        Some(origin),
        malformed,
        400,
    )
    .await;
    let fresh = webrtc().await;
    let no_offer = json!({ "type": "offer" }).to_string();
    assert_refused(
        &stage,
        &session,
        "JSON without an offer",
        Some(&fresh),
        Some(origin),
        no_offer,
        400,
    )
    .await;
    let fresh = webrtc().await;
    let padding = "x".repeat(65 * 1024);
    let too_big = json!({ "sdp": format!("{OFFER}a=x-padding:{padding}\r\n") }).to_string();
    assert_refused(
        &stage,
        &session,
        "a 65 KiB body",
        Some(&fresh),
        Some(origin),
        too_big,
        413,
    )
    .await;
    assert_no_dial_and_tickets_refused(&metrics_addr, 3.0).await;

    // A good ticket with an offer that is not SDP: 400, and the ticket is
    // spent.
    let spent = webrtc().await;
    let garbage = json!({ "sdp": "v=0 nonsense" }).to_string();
    assert_refused(
        &stage,
        &session,
        "a garbage offer",
        Some(&spent),
        Some(origin),
        garbage,
        400,
    )
    .await;
    // An offer that cannot receive VP8 (here: H.264 only).
    let h264_only = json!({ "sdp": OFFER.replace("VP8/90000", "H264/90000") }).to_string();
    assert_refused(
        &stage,
        &session,
        "an offer without VP8",
        Some(&webrtc().await),
        Some(origin),
        h264_only,
        400,
    )
    .await;
    assert_refused(
        &stage,
        &session,
        "a spent ticket",
        Some(&spent),
        Some(origin),
        offer.clone(),
        401,
    )
    .await;
    assert_no_dial_and_tickets_refused(&metrics_addr, 4.0).await;
    assert!(
        !stage.gate.output().contains(TURN_SECRET),
        "the TURN secret is in the gate's log"
    );
    stage.finish().await;
}

#[test]
fn the_browser_namespace_reaches_its_host_end_and_is_gone_when_dropped() {
    let netns = NetNs::create();
    let name = netns.name.clone();
    let host_if = netns.host_if.clone();
    assert!(NetNs::exists(&name), "{name} is not listed");
    assert!(name.len() < 64 && host_if.len() <= 15, "{name} / {host_if}");

    // The wrapper enters the namespace: there, only loopback and the veth.
    let wrapper = netns.chromium_wrapper("ip");
    let out = std::process::Command::new(&wrapper)
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run the wrapper");
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{wrapper:?}: {out:?}");
    assert!(
        addrs.contains(&format!(" {}/30", netns.ns_ip)) && addrs.contains(" 127.0.0.1/8"),
        "addresses in {name}:\n{addrs}"
    );
    assert_eq!(addrs.lines().count(), 2, "addresses in {name}:\n{addrs}");

    // TCP and UDP from the namespace reach a socket on the host end.
    let tcp = TcpListener::bind((netns.host_ip, 0)).expect("bind the host end");
    let tcp_port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind((netns.host_ip, 0)).expect("bind the host end");
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{tcp_port} && echo hello >&3 && echo datagram > /dev/udp/{ip}/{udp_port}",
        ip = netns.host_ip
    );
    let out = netns.exec("bash", &["-c", &script]);
    assert!(
        out.status.success(),
        "from {name} to {}: {}",
        netns.host_ip,
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut stream, peer) = tcp.accept().expect("the namespace's connection");
    assert_eq!(peer.ip(), netns.ns_ip, "the connection's source");
    let mut line = String::new();
    std::io::Read::read_to_string(&mut stream, &mut line).unwrap();
    assert_eq!(line, "hello\n");
    let mut buf = [0u8; 64];
    let (n, from) = udp.recv_from(&mut buf).expect("the namespace's datagram");
    assert_eq!(
        (&buf[..n], from.ip()),
        (&b"datagram\n"[..], netns.ns_ip.into())
    );

    drop(netns);
    assert!(!NetNs::exists(&name), "{name} outlived its drop");
    assert!(
        !std::process::Command::new("ip")
            .args(["link", "show", "dev", &host_if])
            .output()
            .expect("ip")
            .status
            .success(),
        "{host_if} outlived its namespace"
    );
    assert!(!wrapper.exists(), "the wrapper outlived its namespace");
}
