//! Media served where the desktops run (issue 16): two `deskgate launcher`s,
//! each in a network namespace of its own (a GPU "host", one fake GPU each,
//! on the real Docker Engine with the real desktop image), and a gate that
//! has no Docker at all (`DOCKER_HOST` names no socket) scheduling across
//! them. Debian's headless Chromium, in a third namespace, views a session
//! on each host through the gate's public media routes only:
//!
//! - by noVNC and by WebRTC, each showing the painted checkerboard and each
//!   moving the X pointer; the WebRTC answer offers only the launcher's
//!   address, so the video comes from the launcher, never the gate;
//! - with four WebRTC viewers on changing desktops, the gate's CPU time is a
//!   small fraction of the launchers' (the figures are printed);
//! - a launcher killed mid-stream (SIGKILL): its viewers' streams end, the
//!   VNC socket with a reason; the session keeps running and being billed,
//!   the other host's viewers are untouched, a new ticket is refused with 502
//!   while the host is away and, once the launcher is back on the same
//!   address, a new ticket shows the desktop again;
//! - a launcher gone silent (its namespace drops every packet, the gate's and
//!   the browser's, resetting nothing): its noVNC stream ends within 25 s with
//!   4001 and a reason, a new ticket is refused with 502 in seconds (not 408
//!   after 30 s), its WebRTC viewer ends and the launcher stops that stream;
//!   the session keeps running and being billed, and once packets flow again
//!   a new ticket shows the desktop (the times are printed);
//! - ending a session closes both of its streams.
//!
//! The browser's namespace and the launchers' share one segment
//! ([`support::netns::NetNs::lan`]), over which the WebRTC media flow; the
//! gate (on loopback) reaches each launcher over that launcher's own veth
//! pair, and the browser reaches the gate through the page harness's
//! forwarder. The driver is `tests/browser/media_on_launchers.js`; its
//! screenshots land in `target/media-on-launchers-shots/`. Needs root,
//! iproute2 and `make services` (PostgreSQL, Docker with
//! deskgate/desktop:local, anvil, chromium, noVNC, playwright-core).

mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};
use support::browser::{PageDriver, PageStage};
use support::desktop::{on_display, paint_checkerboard, ticket};
use support::netns::NetNs;
use support::{Deskgate, docker_cli, free_port, repo_root, service_env, spawn_launcher_in};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The token between the gate and its launchers.
const TOKEN: &str = "5e0b2d8f1a4c7e3b9d6f0a2c4e8b1d3f5a7c9e0b2d4f6a8c1e3b5d7f9a0c2e4b";
/// Where the gate looks for Docker: nowhere.
const NO_DOCKER: &str = "unix:///nonexistent/docker.sock";

/// A `deskgate launcher` for host number `host` in a namespace of its own.
struct Launcher {
    /// The running process (`None` while killed).
    process: Option<Deskgate>,
    /// Output of the processes killed earlier.
    earlier_output: String,
    host: u16,
    /// Its API address, on its namespace's end of its pair to the test's.
    addr: SocketAddr,
    /// Its base URL, which the gate is given.
    url: url::Url,
    /// Its address on the browser's segment, where its WebRTC sockets bind.
    udp_ip: Ipv4Addr,
    env: Vec<(&'static str, String)>,
    /// Dropped last: the namespace outlives the process.
    netns: NetNs,
}

impl Launcher {
    async fn start(host: u16, netns: NetNs, udp_ip: Ipv4Addr) -> Self {
        let addr = SocketAddr::new(netns.ns_ip.into(), free_port());
        let env = vec![
            ("DESKGATE_LAUNCHER_BIND", addr.to_string()),
            ("DESKGATE_ALLOW_PUBLIC_BIND", "true".into()),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN.into()),
            ("DESKGATE_LAUNCHER_HOST", host.to_string()),
            ("DESKGATE_GPUS", "fake:1".into()),
            (
                "DESKGATE_SESSION_IMAGE",
                service_env("DESKGATE_DESKTOP_IMAGE"),
            ),
            ("DESKGATE_SESSION_MEMORY_MIB", "512".into()),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0".into()),
            ("DESKGATE_WEBRTC_UDP_IP", udp_ip.to_string()),
            // The host's engine, through its socket (a path: reachable from
            // any network namespace).
            ("DOCKER_HOST", service_env("DOCKER_HOST")),
        ];
        let (process, url) = spawn_launcher_in(&netns, addr, &env).await;
        let launcher = Self {
            process: Some(process),
            earlier_output: String::new(),
            host,
            addr,
            url,
            udp_ip,
            env,
            netns,
        };
        // `ip netns exec` execs the launcher: the pid is the launcher's.
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", launcher.pid())).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "deskgate",
            "the launcher's pid is not deskgate's"
        );
        launcher
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().expect("the launcher runs").pid()
    }

    /// SIGKILL: no shutdown of any kind.
    fn kill_hard(&mut self) {
        let process = self.process.take().expect("the launcher runs");
        self.earlier_output.push_str(&process.output());
        self.earlier_output
            .push_str("\n--- killed with SIGKILL ---\n");
        process.kill_hard();
    }

    /// Starts it again in its namespace on the same address and settings.
    async fn restart(&mut self) {
        assert!(self.process.is_none(), "the launcher still runs");
        let (process, url) = spawn_launcher_in(&self.netns, self.addr, &self.env).await;
        assert_eq!(url, self.url);
        self.process = Some(process);
    }

    fn output(&self) -> String {
        let current = self.process.as_ref().map(Deskgate::output);
        format!("{}{}", self.earlier_output, current.unwrap_or_default())
    }
}

/// A session on one of the hosts, and the wallet that claimed it.
struct Desk {
    id: String,
    token: String,
    host: u16,
}

/// `utime + stime` of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// [`on_display`] off the async runtime's threads.
async fn on_display_async(session: &str, args: &[&str]) -> String {
    let session = session.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        on_display(&session, &args)
    })
    .await
    .unwrap()
}

/// Waits until the X pointer of `session` is at (`x`, `y`).
async fn pointer_at(session: &str, x: u32, y: u32, within: Duration) -> Result<(), String> {
    let want = format!("x:{x} y:{y} ");
    let deadline = Instant::now() + within;
    loop {
        let location = on_display_async(session, &["xdotool", "getmouselocation"]).await;
        if location.starts_with(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the X pointer of {session} is at {location:?}, not ({x}, {y})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `command` to the driver and returns its answer.
async fn ask(driver: &mut PageDriver, command: Value) -> Result<Value, String> {
    driver.reply(&command.to_string()).await;
    match driver.next().await? {
        Some((stage, answer, _)) if stage == "answer" && answer["to"] == command["do"] => {
            Ok(answer)
        }
        other => Err(format!("asked {}, got {other:?}", command["do"])),
    }
}

/// Asks, and fails unless the answer says `ok`.
async fn ask_ok(driver: &mut PageDriver, command: Value, what: &str) -> Result<Value, String> {
    let answer = ask(driver, command).await?;
    if answer["ok"] == true {
        Ok(answer)
    } else {
        Err(format!("{what}: {answer}"))
    }
}

/// Opens viewer `name` of `kind` on `desk` with a fresh ticket; checks that
/// a WebRTC answer offers only `launcher`'s address.
async fn open_viewer(
    driver: &mut PageDriver,
    stage: &Stage,
    name: &str,
    kind: &str,
    desk: &Desk,
    launcher: &Launcher,
) -> Result<Value, String> {
    let ticket = ticket(stage, &desk.token, &desk.id, kind).await;
    let command =
        json!({ "do": "open", "name": name, "kind": kind, "session": desk.id, "ticket": ticket });
    let opened = ask_ok(
        driver,
        command,
        &format!("{name} ({kind} of host {})", desk.host),
    )
    .await?;
    if kind == "webrtc" {
        let candidates: Vec<&str> = opened["report"]["answerCandidates"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ours = format!(" {} ", launcher.udp_ip);
        if candidates.is_empty() || !candidates.iter().all(|c| c.contains(&ours)) {
            return Err(format!(
                "{name}: the answer's candidates are not all host {}'s {}: {candidates:?}",
                launcher.host, launcher.udp_ip
            ));
        }
    }
    eprintln!(
        "{name}: {kind} of host {} streams after {} ms",
        desk.host, opened["ms"]
    );
    Ok(opened)
}

/// The checkerboard shows in viewer `name`; a screenshot `shot`.png either way.
async fn pattern(driver: &mut PageDriver, name: &str, shot: &str) -> Result<(), String> {
    let command = json!({ "do": "pattern", "name": name, "shot": shot });
    ask_ok(
        driver,
        command,
        &format!("{name}: the pattern did not show"),
    )
    .await
    .map(drop)
}

/// The pointer moved through viewer `name` reaches (`x`, `y`) on the desktop.
async fn point(
    driver: &mut PageDriver,
    name: &str,
    desk: &Desk,
    (x, y): (u32, u32),
) -> Result<(), String> {
    let command = json!({ "do": "pointer", "name": name, "x": x, "y": y });
    ask_ok(driver, command, &format!("{name}: pointer not sent")).await?;
    pointer_at(&desk.id, x, y, Duration::from_secs(15))
        .await
        .map_err(|e| format!("{name}: {e}"))
}

/// Waits until viewer `name`'s stream ended; returns what its page saw.
async fn ended(driver: &mut PageDriver, name: &str, within: Duration) -> Result<Value, String> {
    let command = json!({ "do": "ended", "name": name, "within_ms": within.as_millis() as u64 });
    let answer = ask_ok(
        driver,
        command,
        &format!("{name}: the stream did not end within {within:?}"),
    )
    .await?;
    eprintln!(
        "{name}: ended after {} ms: {}",
        answer["ms"], answer["report"]
    );
    Ok(answer["report"].clone())
}

/// Waits until viewer `name`'s stream ended, up to `within` after `since`;
/// returns what its page saw and when the end was seen, counted from
/// `since`: "after N s" when the wait saw it, "by N s" when it had ended
/// before the wait began.
async fn ended_since(
    driver: &mut PageDriver,
    name: &str,
    since: Instant,
    within: Duration,
) -> Result<(Value, String), String> {
    let left = within.saturating_sub(since.elapsed());
    let command = json!({ "do": "ended", "name": name, "within_ms": left.as_millis() as u64 });
    let answer = ask_ok(
        driver,
        command,
        &format!("{name}: the stream did not end within {within:?}"),
    )
    .await?;
    let seen = since.elapsed().as_secs_f64();
    let waited = answer["ms"].as_u64().unwrap_or_default();
    let when = if waited < 200 {
        format!("by {seen:.1} s")
    } else {
        format!("after {seen:.1} s")
    };
    eprintln!("{name}: ended {when}: {}", answer["report"]);
    Ok((answer["report"].clone(), when))
}

/// What viewer `name`'s page knows now.
async fn state(driver: &mut PageDriver, name: &str) -> Result<Value, String> {
    let answer = ask(driver, json!({ "do": "state", "name": name })).await?;
    Ok(answer["report"].clone())
}

/// A viewer's stream goes on: VNC connected and its socket open, WebRTC
/// connected.
async fn still_streaming(driver: &mut PageDriver, name: &str) -> Result<(), String> {
    let report = state(driver, name).await?;
    let vnc_up = report["connected"] == true && report["closed"].is_null();
    let webrtc_up = report["connectionState"] == "connected";
    if report.get("connectionState").is_some() {
        if webrtc_up {
            return Ok(());
        }
    } else if vnc_up {
        return Ok(());
    }
    Err(format!("{name} stopped streaming: {report}"))
}

/// The session's wallet's credit.
async fn credit(stage: &Stage, desk: &Desk) -> i64 {
    let (status, account) = stage.gate.get("/api/v1/account", &desk.token).await;
    assert_eq!(status, 200, "{account}");
    account["credit_seconds"].as_i64().expect("credit_seconds")
}

/// The session's state as the gate reports it.
async fn session_state(stage: &Stage, desk: &Desk) -> Value {
    let (status, body) = stage
        .gate
        .get(&session_path(&json!({ "id": desk.id })), &desk.token)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// How the gate answered a VNC handshake.
struct Handshake {
    /// 101, or the HTTP status of the refusal.
    status: u16,
    /// The refusal's body (a problem document).
    body: String,
    /// From the request to the answer (the ticket's issue not counted).
    took: Duration,
}

/// Opens the VNC socket from the test's namespace with a fresh ticket (and
/// the gate's public Origin): what the gate answered, within 40 s.
async fn vnc_handshake(page: &PageStage, desk: &Desk) -> Result<Handshake, String> {
    let ticket = ticket(&page.stage, &desk.token, &desk.id, "vnc").await;
    let mut request = format!(
        "ws://127.0.0.1:{}/api/v1/sessions/{}/vnc?ticket={ticket}",
        page.stage.gate.port, desk.id
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("origin", page.public_url.parse().unwrap());
    let asked = Instant::now();
    let connect = tokio_tungstenite::connect_async(request);
    let (status, body) = match tokio::time::timeout(Duration::from_secs(40), connect).await {
        Err(_) => return Err("the VNC handshake hung for 40 s".into()),
        Ok(Ok(_)) => (101, String::new()),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Ok(Err(other)) => return Err(format!("the VNC handshake failed: {other}")),
    };
    Ok(Handshake {
        status,
        body,
        took: asked.elapsed(),
    })
}

/// The handshake was refused with 502 `desktop-unreachable` within `within`.
fn refused_unreachable(answer: &Handshake, within: Duration) -> Result<(), String> {
    let problem: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    ensure(
        answer.status == 502
            && problem["type"] == "urn:deskgate:problem:desktop-unreachable"
            && answer.took < within,
        || {
            format!(
                "a VNC ticket for the unreachable host's session got {} after {:?} \
                 (wanted 502 desktop-unreachable within {within:?}): {}",
                answer.status, answer.took, answer.body
            )
        },
    )
}

/// A launcher's namespace silently dropping every packet from and to the
/// outside (the gate's, the browser's; loopback spared), as a host behind a
/// pulled cable: nothing is reset. Undone by [`Silenced::restore`] or on drop.
struct Silenced<'a> {
    netns: &'a NetNs,
    on: bool,
}

/// The rules: each chain and its interface match (not loopback).
const SILENCE: [[&str; 2]; 2] = [["INPUT", "-i"], ["OUTPUT", "-o"]];

impl<'a> Silenced<'a> {
    fn start(netns: &'a NetNs) -> Result<Self, String> {
        let mut silenced = Self { netns, on: true };
        for [chain, interface] in SILENCE {
            silenced.iptables(&["-I", chain, "1", "!", interface, "lo", "-j", "DROP"])?;
        }
        Ok(silenced)
    }

    fn iptables(&mut self, args: &[&str]) -> Result<(), String> {
        let out = self.netns.exec("iptables", args);
        ensure(out.status.success(), || {
            format!(
                "`ip netns exec {} iptables {}` failed (the test needs iptables): {}",
                self.netns.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// Packets flow again.
    fn restore(mut self) -> Result<(), String> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.on) {
            return Ok(());
        }
        for [chain, interface] in SILENCE {
            self.iptables(&["-D", chain, "!", interface, "lo", "-j", "DROP"])?;
        }
        Ok(())
    }
}

impl Drop for Silenced<'_> {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}

/// Swaps the checkerboard's colours every 100 ms for `seconds` on the
/// session's display (a desktop that changes all over), in the background;
/// the loop in the container stops at its deadline, not when the child is
/// killed.
fn animate(session: &str, seconds: u32) -> tokio::process::Child {
    let script = format!(
        "end=$(( $(date +%s) + {seconds} )); i=0; \
         while [ $(date +%s) -lt $end ]; do \
           if [ $((i % 2)) = 0 ]; then xsetroot -bitmap /tmp/pattern.xbm -fg '#ff8000' -bg '#0040ff'; \
           else xsetroot -bitmap /tmp/pattern.xbm -fg '#0040ff' -bg '#ff8000'; fi; \
           i=$((i + 1)); sleep 0.1; \
         done"
    );
    tokio::process::Command::new("docker")
        .args(["exec", &format!("deskgate-session-{session}")])
        .args(["env", "DISPLAY=:0", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("docker CLI")
}

/// `viewer`'s decoded-frame count and its WebRTC state.
async fn frames_decoded(driver: &mut PageDriver, viewer: &str) -> Result<u64, String> {
    let answer = ask(driver, json!({ "do": "frames", "name": viewer })).await?;
    if answer["report"]["connectionState"] != "connected" {
        return Err(format!("{viewer} is not connected: {answer}"));
    }
    Ok(answer["stats"]["framesDecoded"].as_u64().unwrap_or(0))
}

/// Fails with `message` unless `condition` holds.
fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

#[tokio::test(flavor = "multi_thread")]
async fn launchers_serve_the_media_of_their_desktops_through_a_gate_without_docker() {
    let started = Instant::now();
    let shots = repo_root().join("target/media-on-launchers-shots");
    let _ = std::fs::remove_dir_all(&shots);

    // Three hosts on one segment: the browser's and two GPU hosts.
    let browser_ns = NetNs::create();
    let [ns0, ns1] = [NetNs::create(), NetNs::create()];
    let lan = browser_ns.lan(&[&ns0, &ns1]);
    let mut launchers = [
        Launcher::start(0, ns0, lan.member_ips[0]).await,
        Launcher::start(1, ns1, lan.member_ips[1]).await,
    ];
    let urls = format!("{},{}", launchers[0].url, launchers[1].url);
    let page = PageStage::start_in(
        browser_ns,
        "media_on_launchers",
        &[
            ("DESKGATE_LAUNCHER_URLS", &urls),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN),
            ("DOCKER_HOST", NO_DOCKER),
            // Were the gate still to serve WebRTC itself, the browser could
            // not reach it: its UDP would be on loopback.
            ("DESKGATE_WEBRTC_UDP_IP", "127.0.0.1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "300"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "2"),
        ],
    )
    .await;
    let stage = &page.stage;
    let gate = &stage.gate;
    assert!(
        gate.output().contains("scheduling across remote launchers"),
        "{}",
        gate.output()
    );
    let environ = std::fs::read(format!("/proc/{}/environ", gate.pid())).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == format!("DOCKER_HOST={NO_DOCKER}").as_bytes()),
        "the gate runs with a Docker it cannot reach"
    );
    eprintln!(
        "launchers at {urls} (WebRTC on {:?}), gate ready after {:?}",
        lan.member_ips,
        started.elapsed()
    );

    // A session on each host.
    let mut claims = Vec::new();
    for _ in 0..2 {
        let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
        let claimed = stage.claim(&token, "small").await;
        claims.push((token, claimed));
    }
    let mut desks = Vec::new();
    for (token, claimed) in claims {
        let running = gate
            .wait_for(
                &session_path(&claimed),
                &token,
                Duration::from_secs(60),
                |s| s["state"] == "running",
            )
            .await;
        let host = u16::try_from(running["host"].as_u64().expect("a host")).unwrap();
        let id = claimed["id"].as_str().unwrap().to_string();
        desks.push(Desk { id, token, host });
    }
    desks.sort_by_key(|d| d.host);
    let hosts: HashSet<u16> = desks.iter().map(|d| d.host).collect();
    assert_eq!(hosts, HashSet::from([0, 1]), "one session on each host");
    for desk in &desks {
        let labelled = docker_cli(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"deskgate.host\"}}",
            &format!("deskgate-session-{}", desk.id),
        ]);
        assert_eq!(labelled, desk.host.to_string(), "{}", desk.id);
        let id = desk.id.clone();
        tokio::task::spawn_blocking(move || paint_checkerboard(&id))
            .await
            .unwrap();
    }
    eprintln!(
        "both desktops painted after {:?}: {} on host 0, {} on host 1",
        started.elapsed(),
        desks[0].id,
        desks[1].id
    );

    let novnc = service_env("DESKGATE_NOVNC_DIR");
    let mut driver =
        PageDriver::spawn_with_shots("media_on_launchers.js", &page, &shots, &[&novnc]);
    let mut figures = None;
    let mut silent_figures = None;
    let outcome: Result<(), String> = async {
        match driver.next().await? {
            Some((first, ..)) if first == "ready" => {}
            other => return Err(format!("the driver did not get ready: {other:?}")),
        }

        // WebRTC on each host: the pattern, and the pointer moves.
        for desk in &desks {
            let launcher = &launchers[usize::from(desk.host)];
            let name = format!("rtc-{}", desk.host);
            open_viewer(&mut driver, stage, &name, "webrtc", desk, launcher).await?;
            pattern(&mut driver, &name, &format!("host{}-webrtc", desk.host)).await?;
            point(&mut driver, &name, desk, (321, 123)).await?;
        }

        // Four WebRTC viewers (a second on each host) while both desktops
        // change all over: what the gate and the launchers spend.
        for desk in &desks {
            let launcher = &launchers[usize::from(desk.host)];
            let name = format!("rtc-{}-b", desk.host);
            open_viewer(&mut driver, stage, &name, "webrtc", desk, launcher).await?;
        }
        let viewers = ["rtc-0", "rtc-0-b", "rtc-1", "rtc-1-b"];
        let mut animations: Vec<_> = desks.iter().map(|d| animate(&d.id, 13)).collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut decoded_before = Vec::new();
        for viewer in viewers {
            decoded_before.push(frames_decoded(&mut driver, viewer).await?);
        }
        let pids = [gate.pid(), launchers[0].pid(), launchers[1].pid()];
        let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        let window = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
        let seconds = window.elapsed().as_secs_f64();
        let mut decoded = Vec::new();
        for (viewer, before) in viewers.into_iter().zip(decoded_before) {
            decoded.push(
                frames_decoded(&mut driver, viewer)
                    .await?
                    .saturating_sub(before),
            );
        }
        // Killing `docker exec` would leave the loop running in the
        // container: it ends on its own, and the desktop is then still.
        for animation in &mut animations {
            let waited = tokio::time::timeout(Duration::from_secs(15), animation.wait()).await;
            ensure(matches!(waited, Ok(Ok(_))), || {
                format!("the animation did not end: {waited:?}")
            })?;
        }
        let tick = ticks_per_second();
        let spent: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) as f64 / tick)
            .collect();
        let (gate_cpu, launchers_cpu) = (spent[0], spent[1] + spent[2]);
        let summary = format!(
            "CPU over {seconds:.1} s with 4 WebRTC viewers on changing desktops \
             (frames decoded per viewer: {decoded:?}): gate {gate_cpu:.2} s ({:.1}% of a core), \
             launchers {launchers_cpu:.2} s ({:.2} s host 0, {:.2} s host 1; {:.1}% of a core), \
             gate/launchers = {:.1}%",
            100.0 * gate_cpu / seconds,
            spent[1],
            spent[2],
            100.0 * launchers_cpu / seconds,
            100.0 * gate_cpu / launchers_cpu.max(f64::MIN_POSITIVE),
        );
        eprintln!("{summary}");
        figures = Some(summary.clone());
        ensure(decoded.iter().all(|&n| n >= 5), || {
            format!("a viewer did not watch the changes: {summary}")
        })?;
        ensure(gate_cpu < 0.25 * launchers_cpu, || {
            format!("the gate's CPU is not a small fraction of the launchers': {summary}")
        })?;
        for desk in &desks {
            ask_ok(
                &mut driver,
                json!({ "do": "close", "name": format!("rtc-{}-b", desk.host) }),
                "close",
            )
            .await?;
            let id = desk.id.clone();
            tokio::task::spawn_blocking(move || paint_checkerboard(&id))
                .await
                .unwrap();
            pattern(
                &mut driver,
                &format!("rtc-{}", desk.host),
                &format!("host{}-webrtc-repainted", desk.host),
            )
            .await?;
        }

        // noVNC on each host, next to the WebRTC viewer.
        for desk in &desks {
            let launcher = &launchers[usize::from(desk.host)];
            let name = format!("vnc-{}", desk.host);
            open_viewer(&mut driver, stage, &name, "vnc", desk, launcher).await?;
            pattern(&mut driver, &name, &format!("host{}-novnc", desk.host)).await?;
            point(&mut driver, &name, desk, (555, 333)).await?;
        }

        // Host 1's launcher dies mid-stream.
        let lost = &desks[1];
        let credit_before = credit(stage, lost).await;
        let killed = Instant::now();
        launchers[1].kill_hard();
        let closed = ended(&mut driver, "vnc-1", Duration::from_secs(15)).await?;
        let reason = closed["closed"]["reason"].as_str().unwrap_or_default();
        ensure(!reason.is_empty(), || {
            format!("the VNC socket closed without a reason: {closed}")
        })?;
        eprintln!(
            "launcher 1 killed: noVNC closed after {:?} with {} {reason:?}",
            killed.elapsed(),
            closed["closed"]["code"]
        );
        ended(&mut driver, "rtc-1", Duration::from_secs(40)).await?;
        eprintln!(
            "launcher 1 killed: WebRTC ended after {:?}",
            killed.elapsed()
        );
        // Host 0's viewers go on; the lost host's session runs and is billed.
        still_streaming(&mut driver, "vnc-0").await?;
        still_streaming(&mut driver, "rtc-0").await?;
        let refused = vnc_handshake(&page, lost).await?;
        refused_unreachable(&refused, Duration::from_secs(8))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut credit_now = credit(stage, lost).await;
        while credit_now >= credit_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            credit_now = credit(stage, lost).await;
        }
        ensure(credit_now < credit_before, || {
            format!("no billing while the host was away: {credit_before} -> {credit_now}")
        })?;
        let during = session_state(stage, lost).await;
        ensure(during["state"] == "running", || {
            format!("the lost host's session did not keep running: {during}")
        })?;
        eprintln!(
            "host 1 away for {:?}: session {}, credit {credit_before} -> {credit_now}",
            killed.elapsed(),
            during["state"]
        );

        // The launcher comes back on the same address: a new ticket shows
        // the desktop again, on both paths.
        launchers[1].restart().await;
        eprintln!("launcher 1 back after {:?}", killed.elapsed());
        open_viewer(
            &mut driver,
            stage,
            "vnc-1-again",
            "vnc",
            lost,
            &launchers[1],
        )
        .await?;
        pattern(&mut driver, "vnc-1-again", "host1-novnc-after-restart").await?;
        point(&mut driver, "vnc-1-again", lost, (444, 222)).await?;
        open_viewer(
            &mut driver,
            stage,
            "rtc-1-again",
            "webrtc",
            lost,
            &launchers[1],
        )
        .await?;
        pattern(&mut driver, "rtc-1-again", "host1-webrtc-after-restart").await?;
        point(&mut driver, "rtc-1-again", lost, (123, 456)).await?;

        // Host 0's launcher goes silent: its namespace drops every packet,
        // the gate's and the browser's alike, and resets nothing.
        let silent = &desks[0];
        still_streaming(&mut driver, "vnc-0").await?;
        still_streaming(&mut driver, "rtc-0").await?;
        let credit_before = credit(stage, silent).await;
        let log_before = launchers[0].output().len();
        let cut = Instant::now();
        let silenced = Silenced::start(&launchers[0].netns)?;
        // At once: a new ticket, while the gate may still believe the VNC
        // stream alive, and the end of the WebRTC viewer (the browser sees
        // its peer fall silent); then the end of the noVNC stream.
        let (rtc_ended, refused) = tokio::join!(
            ended_since(&mut driver, "rtc-0", cut, Duration::from_secs(40)),
            vnc_handshake(&page, silent),
        );
        let (_, rtc_ended_after) = rtc_ended?;
        let refused = refused?;
        refused_unreachable(&refused, Duration::from_secs(8))?;
        let (closed, vnc_ended_after) =
            ended_since(&mut driver, "vnc-0", cut, Duration::from_secs(25)).await?;
        let reason = closed["closed"]["reason"].as_str().unwrap_or_default();
        ensure(
            closed["closed"]["code"] == 4001 && !reason.is_empty(),
            || {
                format!(
                    "the silent host's VNC socket did not close with 4001 and a reason: {closed}"
                )
            },
        )?;
        eprintln!(
            "launcher 0 silent: a new VNC ticket got {} after {:?}; WebRTC ended {rtc_ended_after}; \
             noVNC closed {vnc_ended_after} with {} {reason:?}",
            refused.status,
            refused.took,
            closed["closed"]["code"]
        );
        // The other host's viewers go on; the silent host's session runs and
        // is billed; its launcher stops the stream whose gate went silent.
        still_streaming(&mut driver, "vnc-1-again").await?;
        still_streaming(&mut driver, "rtc-1-again").await?;
        let during = session_state(stage, silent).await;
        ensure(during["state"] == "running", || {
            format!("the silent host's session did not keep running: {during}")
        })?;
        let stopped_line = |output: &str| {
            output[log_before.min(output.len())..]
                .lines()
                .find(|l| {
                    l.contains(&silent.id)
                        && (l.contains("the gate went silent")
                            || l.contains("WebRTC stream ended")
                            || l.contains("stream stopped"))
                })
                .map(str::to_string)
        };
        let deadline = cut + Duration::from_secs(30);
        let mut stopped = stopped_line(&launchers[0].output());
        while stopped.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stopped = stopped_line(&launchers[0].output());
        }
        let rtc_stopped_after = cut.elapsed();
        let stopped = stopped.ok_or_else(|| {
            "launcher 0 did not stop its WebRTC stream within 30 s of going silent".to_string()
        })?;
        eprintln!(
            "launcher 0 silent: it stopped its WebRTC stream after {rtc_stopped_after:?}: {stopped}"
        );
        let credit_now = credit(stage, silent).await;
        ensure(credit_now < credit_before, || {
            format!("no billing while the host was silent: {credit_before} -> {credit_now}")
        })?;
        let during = session_state(stage, silent).await;
        ensure(during["state"] == "running", || {
            format!("the silent host's session did not keep running: {during}")
        })?;
        silenced.restore()?;
        let silent_for = cut.elapsed();
        silent_figures = Some(format!(
            "silent launcher: noVNC stream ended {vnc_ended_after} (code {}, reason {reason:?}); \
             a new VNC ticket got {} after {:.2} s; WebRTC viewer ended {rtc_ended_after}; \
             the launcher stopped its WebRTC stream after {:.1} s; session {} and billed \
             ({credit_before} -> {credit_now}) through {:.1} s of silence",
            closed["closed"]["code"],
            refused.status,
            refused.took.as_secs_f64(),
            rtc_stopped_after.as_secs_f64(),
            during["state"],
            silent_for.as_secs_f64(),
        ));
        eprintln!("{}", silent_figures.as_deref().unwrap_or_default());
        for viewer in ["vnc-0", "rtc-0"] {
            ask_ok(
                &mut driver,
                json!({ "do": "close", "name": viewer }),
                "close",
            )
            .await?;
        }

        // Packets flow again: a new ticket shows the desktop again, on both
        // paths.
        let back = &launchers[0];
        open_viewer(&mut driver, stage, "vnc-0-back", "vnc", silent, back).await?;
        pattern(&mut driver, "vnc-0-back", "host0-novnc-after-silence").await?;
        point(&mut driver, "vnc-0-back", silent, (222, 444)).await?;
        open_viewer(&mut driver, stage, "rtc-0-back", "webrtc", silent, back).await?;
        pattern(&mut driver, "rtc-0-back", "host0-webrtc-after-silence").await?;
        point(&mut driver, "rtc-0-back", silent, (456, 123)).await?;
        eprintln!("launcher 0 back after {:?} of silence", silent_for);

        // Ending a session closes both of its streams.
        for (desk, viewers) in desks
            .iter()
            .zip([["vnc-0-back", "rtc-0-back"], ["vnc-1-again", "rtc-1-again"]])
        {
            let (status, body) = gate
                .delete(&session_path(&json!({ "id": desk.id })), &desk.token)
                .await;
            ensure(status == 200, || {
                format!("DELETE {}: {status} {body}", desk.id)
            })?;
            for viewer in viewers {
                ended(&mut driver, viewer, Duration::from_secs(20)).await?;
            }
            let end = gate
                .wait_for(
                    &session_path(&json!({ "id": desk.id })),
                    &desk.token,
                    Duration::from_secs(20),
                    |s| s["state"] == "ended",
                )
                .await;
            ensure(end["end_reason"]["kind"] == "user_stopped", || {
                format!("session on host {} ended as {end}", desk.host)
            })?;
        }
        ask(&mut driver, json!({ "do": "quit" })).await.ok();
        Ok(())
    }
    .await;

    let outcome = outcome.map_err(|why| {
        let logs: Vec<String> = launchers
            .iter()
            .map(|l| format!("launcher {} log:\n{}", l.host, l.output()))
            .collect();
        format!("{why}\n{}", logs.join("\n"))
    });
    driver.finish(outcome, &page, &["ready", "answer"]).await;
    for launcher in &launchers {
        assert!(
            !launcher.output().contains(TOKEN),
            "the token is in launcher {}'s log",
            launcher.host
        );
    }
    assert!(
        !page.stage.gate.output().contains(TOKEN),
        "the token is in the gate's log"
    );
    for figures in [figures, silent_figures].into_iter().flatten() {
        eprintln!("{figures}");
    }
    page.stage.finish().await;
    drop(launchers);
    eprintln!("whole test took {:?}", started.elapsed());
}
