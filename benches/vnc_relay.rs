//! deskgate's VNC relay against websockify, both relaying the same Xvnc, in
//! one run. Prints a table of figures; `make bench` runs it with the others.
//!
//! Set-up (all on 127.0.0.1, torn down at the end, also on panic):
//!
//! - a host Xvnc (TigerVNC) on a free display, 1920x1080x24, VNC
//!   authentication with a fresh random password;
//! - websockify in front of it (Python; one forked process per connection);
//! - deskgate's relay in front of it: one route that, per WebSocket upgrade,
//!   connects to Xvnc, authenticates with [`deskgate_media::authenticate`]
//!   and runs [`deskgate::http::media::relay_websocket`], exactly what the
//!   gate runs after upgrading, served by the gate's own
//!   [`deskgate::server::run`]. It runs in a child process (this binary,
//!   re-executed with `DESKGATE_VNC_BENCH_SERVE` set) on a multi-threaded
//!   tokio runtime, so that its memory and CPU are its own, as websockify's
//!   are. The gate reaches real desktops through `docker exec`; here the
//!   desktop is a TCP connection, so this measures the relay code itself.
//!
//! The client speaks RFB over a binary WebSocket (tokio-tungstenite, with
//! TCP_NODELAY as browsers set it): VNC authentication itself through
//! websockify, security type None through deskgate. After ServerInit it asks
//! for 32 bpp true colour and Raw encoding only, so that what comes down is
//! the same number of bytes whatever the screen shows.
//!
//! Measured, for both relays with the same parameters, after a warm-up:
//!
//! 1. upstream: PointerEvents (6 bytes each, inside the screen) batched into
//!    ~64 KiB WebSocket messages as noVNC batches its sends, then a 1x1
//!    non-incremental FramebufferUpdateRequest whose reply proves everything
//!    before it reached Xvnc (Xvnc handles client messages in order). Twice:
//!    with the pointer held still (Xvnc drops each event early, so the
//!    relays carry ~40x more) and with it walking the screen;
//! 2. downstream: full-screen non-incremental FramebufferUpdateRequests, one
//!    at a time, ~8.3 MB each in Raw;
//! 3. round trip: a 1x1 non-incremental FramebufferUpdateRequest to its
//!    reply, interleaved in blocks between the relays;
//! 4. memory per idle connection (handshake done, formats set): the growth
//!    of the relay's processes (deskgate's child; websockify and all its
//!    children) with `CONNS` connections open, as PSS (shared pages split
//!    between the processes sharing them) and as the plain sum of RSS.
//!
//! With the throughput runs it reports the CPU of the relay, Xvnc, the client
//! and the rest of the machine: on a small machine Xvnc is often the limit,
//! and the relay's CPU per MB is then the figure that tells the relays apart.
//!
//! Knobs: sizes for a quick look (`DESKGATE_VNC_BENCH_UP_MB`,
//! `_UP_MOVING_MB`, `_DOWN_UPDATES`, `_RTT_ITERS`, `_CONNS`, `_ROUNDS`);
//! `DESKGATE_VNC_BENCH_KEEP=1` keeps the Xvnc and websockify logs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use bytes::{Buf, Bytes};
use deskgate_media::{RelayLimits, StreamCounters};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Set in the re-executed child that serves deskgate's relay:
/// "<listen port> <vnc port> <password>".
const SERVE_ENV: &str = "DESKGATE_VNC_BENCH_SERVE";
const WIDTH: u16 = 1920;
const HEIGHT: u16 = 1080;
/// PointerEvents per upstream WebSocket message: 10922 x 6 = 65532 bytes.
const EVENTS_PER_MESSAGE: usize = 65536 / 6;
/// The gate's limit for one browser message (src/http/media.rs).
const VNC_MAX_MESSAGE_BYTES: usize = 1024 * 1024 + 64;
/// Round trips per interleaved block.
const RTT_BLOCK: usize = 100;
/// Linux reports process CPU time in ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

struct Params {
    up_mb: usize,
    up_moving_mb: usize,
    down_updates: usize,
    rtt_iters: usize,
    conns: usize,
    rounds: usize,
}

impl Params {
    fn from_env() -> Self {
        let get = |name: &str, default: usize| {
            std::env::var(format!("DESKGATE_VNC_BENCH_{name}"))
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("DESKGATE_VNC_BENCH_{name}={v}: not a number"))
                })
                .unwrap_or(default)
                .max(1)
        };
        Self {
            up_mb: get("UP_MB", 64),
            up_moving_mb: get("UP_MOVING_MB", 4),
            down_updates: get("DOWN_UPDATES", 30),
            rtt_iters: get("RTT_ITERS", 2000),
            conns: get("CONNS", 100),
            rounds: get("ROUNDS", 3),
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(SERVE_ENV) {
        serve_deskgate_relay(&spec);
        return;
    }
    let params = Params::from_env();
    let xvnc = tool("DESKGATE_XVNC", "Xvnc");
    let vncpasswd = tool("DESKGATE_VNCPASSWD", "vncpasswd");
    let websockify = tool("DESKGATE_WEBSOCKIFY", "websockify");

    let dir = tempfile::Builder::new()
        .prefix("deskgate-vnc-bench")
        .tempdir()
        .expect("a temporary directory");
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    let password_file = dir.path().join("passwd");
    write_password_file(&vncpasswd, &password, &password_file);

    progress("starting Xvnc");
    let (xvnc_proc, display, vnc_port) = start_xvnc(&xvnc, &password_file, dir.path());
    paint(display);
    progress(&format!("Xvnc on display :{display}, RFB port {vnc_port}"));

    let ws_port = free_port();
    let websockify_proc = start_websockify(&websockify, ws_port, vnc_port, dir.path());
    progress(&format!("websockify on port {ws_port}"));

    let dg_port = free_port();
    let deskgate_proc = start_deskgate_relay(dg_port, vnc_port, &password);
    progress(&format!("deskgate relay on port {dg_port}"));

    let relays = [
        Relay {
            name: "deskgate",
            url: format!("ws://127.0.0.1:{dg_port}/"),
            password: None,
            pid: deskgate_proc.child.id(),
        },
        Relay {
            name: "websockify",
            url: format!("ws://127.0.0.1:{ws_port}/"),
            password: Some(password.clone()),
            pid: websockify_proc.child.id(),
        },
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = runtime
        .block_on(measure(&relays, xvnc_proc.child.id(), &params))
        .unwrap_or_else(|err| panic!("the benchmark failed: {err:#}"));
    print_report(&results, &params, &xvnc);
    if std::env::var("DESKGATE_VNC_BENCH_KEEP").is_ok_and(|v| v == "1") {
        let kept = dir.keep();
        progress(&format!("logs kept in {}", kept.display()));
    }
    drop(deskgate_proc);
    drop(websockify_proc);
    drop(xvnc_proc);
}

// ---------------------------------------------------------------------------
// Processes

fn progress(line: &str) {
    eprintln!("vnc_relay: {line}");
}

/// A program from the services: its variable, else `.deskgate/services.env`,
/// else PATH; missing, the benchmark stops and names `make services`.
fn tool(variable: &str, name: &str) -> PathBuf {
    let from_file = || {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/.deskgate/services.env");
        let text = std::fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            let l = l.trim().strip_prefix("export ").unwrap_or(l.trim());
            l.strip_prefix(variable)?
                .strip_prefix('=')
                .map(|v| v.trim_matches('"').to_string())
        })
    };
    let from_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| executable(p))
        })
    };
    let path = std::env::var(variable)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(from_file)
        .map(PathBuf::from)
        .or_else(from_path);
    match path {
        Some(p) if executable(&p) => p,
        other => {
            let seen = other.map_or_else(
                || "not on PATH".into(),
                |p| format!("{} is missing", p.display()),
            );
            eprintln!(
                "vnc_relay: error: {name} is not available ({variable}: {seen}).\n\
                 vnc_relay: run `make services` (it installs Xvnc, vncpasswd and websockify and \
                 records them in .deskgate/services.env), or `make bench`"
            );
            std::process::exit(1);
        }
    }
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A child process ended when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    /// It leads a process group: end the whole group.
    group: bool,
    /// Ask it to stop (SIGTERM) and give it a moment before killing it.
    term_first: bool,
    /// Files it leaves behind when killed, removed after it is gone.
    leftovers: Vec<PathBuf>,
    _stdin: Option<ChildStdin>,
}

impl Proc {
    fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child,
            group: false,
            term_first: false,
            leftovers: Vec::new(),
            _stdin: None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        if self.term_first {
            // Xvnc removes its display's lock file and socket on SIGTERM.
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.group {
            // websockify forks one process per connection: end them all.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for file in &self.leftovers {
            let _ = std::fs::remove_file(file);
        }
        progress(&format!("stopped {}", self.name));
    }
}

fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn write_password_file(vncpasswd: &Path, password: &str, file: &Path) {
    let mut child = Command::new(vncpasswd)
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vncpasswd starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("vncpasswd reads the password");
    let out = child.wait_with_output().expect("vncpasswd ends");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "vncpasswd -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(file, &out.stdout).expect("the password file is written");
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits until `port` accepts TCP connections while `proc` still runs.
fn wait_for_port(proc: &mut Proc, port: u16, log: Option<&Path>) {
    let log_tail = |log: Option<&Path>| log.map(log_tail).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "{} exited ({status}) before listening:\n{}",
                proc.name,
                log_tail(log)
            );
        }
        if StdTcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within 20 s:\n{}",
            proc.name,
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_xvnc(xvnc: &Path, password_file: &Path, dir: &Path) -> (Proc, u16, u16) {
    // Free: no lock file, or one whose process is gone (Xvnc replaces stale ones).
    let display = (37..=60)
        .find(|n| {
            std::fs::read_to_string(format!("/tmp/.X{n}-lock")).map_or(true, |pid| {
                !Path::new(&format!("/proc/{}", pid.trim())).exists()
            })
        })
        .expect("a free X display among :37..:60");
    let port = free_port();
    let log = dir.join("xvnc.log");
    let out = std::fs::File::create(&log).expect("the Xvnc log");
    let child = Command::new(xvnc)
        .arg(format!(":{display}"))
        .args(["-rfbport", &port.to_string(), "-interface", "127.0.0.1"])
        .args(["-SecurityTypes", "VncAuth", "-PasswordFile"])
        .arg(password_file)
        .args(["-geometry", &format!("{WIDTH}x{HEIGHT}"), "-depth", "24"])
        .args(["-AlwaysShared", "-nolisten", "tcp"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("Xvnc starts");
    let mut proc = Proc::new("Xvnc", child);
    proc.term_first = true;
    proc.leftovers = vec![
        PathBuf::from(format!("/tmp/.X{display}-lock")),
        PathBuf::from(format!("/tmp/.X11-unix/X{display}")),
    ];
    wait_for_port(&mut proc, port, Some(&log));
    (proc, display, port)
}

/// A tiled root window, so the screen is not one flat colour.
fn paint(display: u16) {
    let _ = Command::new("xsetroot")
        .args(["-display", &format!(":{display}")])
        .args(["-mod", "16", "16", "-fg", "#2a6fdb", "-bg", "#f5c242"])
        .stderr(Stdio::null())
        .status();
}

fn start_websockify(websockify: &Path, port: u16, vnc_port: u16, dir: &Path) -> Proc {
    let log = dir.join("websockify.log");
    let out = std::fs::File::create(&log).expect("the websockify log");
    // Not verbose: it logs one line per connection only, to the file.
    let child = Command::new(websockify)
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("127.0.0.1:{vnc_port}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("websockify starts");
    let mut proc = Proc::new("websockify", child);
    proc.group = true;
    wait_for_port(&mut proc, port, Some(&log));
    proc
}

/// Re-executes this binary as deskgate's relay server on `port`.
fn start_deskgate_relay(port: u16, vnc_port: u16, password: &str) -> Proc {
    let child = Command::new(std::env::current_exe().expect("this binary"))
        .env(SERVE_ENV, format!("{port} {vnc_port} {password}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the relay server starts");
    let mut proc = Proc::new("deskgate relay", child);
    proc._stdin = proc.child.stdin.take();
    wait_for_port(&mut proc, port, None);
    proc
}

// ---------------------------------------------------------------------------
// deskgate's relay (the child process)

struct Desktop {
    vnc_port: u16,
    password: String,
}

fn serve_deskgate_relay(spec: &str) {
    let mut parts = spec.split(' ');
    let mut port = || -> u16 { parts.next().and_then(|p| p.parse().ok()).expect("a port") };
    let (listen, vnc_port) = (port(), port());
    let password = spec.splitn(3, ' ').nth(2).expect("a password").to_string();
    let desktop = Arc::new(Desktop { vnc_port, password });
    // The parent holds our stdin; when it goes (even on a crash), so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let app = Router::new().route("/", get(upgrade)).with_state(desktop);
    let addr = SocketAddr::from(([127, 0, 0, 1], listen));
    runtime.block_on(async move {
        // The gate's own server code (plain HTTP), so the benchmark serves as the gate does.
        let service = deskgate::server::Service {
            app,
            addr,
            variable: SERVE_ENV,
        };
        deskgate::server::run(service, None, None, Duration::from_secs(1))
            .await
            .expect("the relay server runs");
    });
}

/// As the gate's `GET …/vnc` after its checks: dial and authenticate to the
/// desktop, then upgrade and relay.
async fn upgrade(
    State(desktop): State<Arc<Desktop>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, (StatusCode, String)> {
    let bad_gateway = |err: String| (StatusCode::BAD_GATEWAY, err);
    let tcp = TcpStream::connect(("127.0.0.1", desktop.vnc_port))
        .await
        .map_err(|e| bad_gateway(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| bad_gateway(e.to_string()))?;
    let stream = deskgate_media::authenticate(tcp, desktop.password.as_bytes())
        .await
        .map_err(|e| bad_gateway(e.to_string()))?;
    Ok(upgrade
        .protocols(["binary"])
        .max_message_size(VNC_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let counters = StreamCounters::default();
            let limits = RelayLimits::default();
            if let Err(err) =
                deskgate::http::media::relay_websocket(socket, stream, &counters, &limits).await
            {
                eprintln!("vnc_relay: deskgate relay ended: {err}");
            }
        }))
}

// ---------------------------------------------------------------------------
// The RFB client

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

struct Relay {
    name: &'static str,
    url: String,
    /// The VNC password if the relay passes VNC authentication through.
    password: Option<String>,
    /// The relay's (main) process.
    pid: u32,
}

struct Rfb {
    ws: Ws,
    /// Received bytes not read yet.
    held: Bytes,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn update_request(incremental: bool, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental)];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

impl Rfb {
    /// Connects through `relay`, completes the RFB handshake, and sets 32 bpp
    /// true colour with Raw encoding only.
    async fn open(relay: &Relay) -> anyhow::Result<Self> {
        let mut request = relay.url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "binary".parse()?);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .with_context(|| format!("WebSocket to {}", relay.name))?;
        let mut rfb = Self {
            ws,
            held: Bytes::new(),
        };
        let version = rfb.read_exact(12).await?;
        ensure!(version.starts_with(b"RFB "), "not RFB: {version:?}");
        rfb.send(b"RFB 003.008\n".to_vec()).await?;
        let count = rfb.read_exact(1).await?[0];
        if count == 0 {
            let len = be32(&rfb.read_exact(4).await?) as usize;
            let reason = rfb.read_exact(len).await?;
            bail!("refused: {}", String::from_utf8_lossy(&reason));
        }
        let types = rfb.read_exact(usize::from(count)).await?;
        if types.contains(&1) {
            rfb.send(vec![1]).await?;
        } else if let (true, Some(password)) = (types.contains(&2), &relay.password) {
            rfb.send(vec![2]).await?;
            let challenge: [u8; 16] = rfb.read_exact(16).await?.try_into().expect("16 bytes");
            let answer = deskgate_media::rfb::vnc_auth_response(&challenge, password.as_bytes());
            rfb.send(answer.to_vec()).await?;
        } else {
            bail!("{} offers security types {types:?}", relay.name);
        }
        if be32(&rfb.read_exact(4).await?) != 0 {
            let len = be32(&rfb.read_exact(4).await?) as usize;
            let reason = rfb.read_exact(len).await?;
            bail!("security failed: {}", String::from_utf8_lossy(&reason));
        }
        rfb.send(vec![1]).await?; // ClientInit, shared
        let init = rfb.read_exact(24).await?;
        let (w, h) = (be16(&init[0..2]), be16(&init[2..4]));
        ensure!((w, h) == (WIDTH, HEIGHT), "the screen is {w}x{h}");
        let name_len = be32(&init[20..24]) as usize;
        rfb.read_exact(name_len).await?;
        // SetPixelFormat: 32 bpp, depth 24, little-endian true colour 8:8:8.
        let mut format = vec![0, 0, 0, 0, 32, 24, 0, 1];
        format.extend_from_slice(&[0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        rfb.send(format).await?;
        // SetEncodings: Raw only.
        rfb.send(vec![2, 0, 0, 1, 0, 0, 0, 0]).await?;
        Ok(rfb)
    }

    async fn next_message(&mut self) -> anyhow::Result<()> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    self.held = bytes;
                    return Ok(());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => bail!("the relay closed: {frame:?}"),
                Some(Ok(other)) => bail!("unexpected message {other:?}"),
                Some(Err(err)) => return Err(err.into()),
                None => bail!("the relay closed the connection"),
            }
        }
    }

    async fn read_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.held.is_empty() {
                self.next_message().await?;
                continue;
            }
            let take = (n - out.len()).min(self.held.len());
            out.extend_from_slice(&self.held.split_to(take));
        }
        Ok(out)
    }

    async fn skip(&mut self, mut n: usize) -> anyhow::Result<()> {
        while n > 0 {
            if self.held.is_empty() {
                self.next_message().await?;
                continue;
            }
            let take = n.min(self.held.len());
            self.held.advance(take);
            n -= take;
        }
        Ok(())
    }

    async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Reads server messages up to the end of the next FramebufferUpdate;
    /// returns the update's size in bytes.
    async fn read_update(&mut self) -> anyhow::Result<u64> {
        loop {
            match self.read_exact(1).await?[0] {
                0 => {
                    let head = self.read_exact(3).await?;
                    let mut bytes = 4u64;
                    for _ in 0..be16(&head[1..3]) {
                        let rect = self.read_exact(12).await?;
                        let (w, h) = (be16(&rect[4..6]), be16(&rect[6..8]));
                        let encoding = be32(&rect[8..12]) as i32;
                        ensure!(encoding == 0, "a rectangle in encoding {encoding}, not Raw");
                        let pixels = usize::from(w) * usize::from(h) * 4;
                        self.skip(pixels).await?;
                        bytes += 12 + pixels as u64;
                    }
                    return Ok(bytes);
                }
                1 => {
                    let head = self.read_exact(5).await?;
                    self.skip(usize::from(be16(&head[3..5])) * 6).await?;
                }
                2 => {} // Bell
                3 => {
                    let head = self.read_exact(7).await?;
                    self.skip(be32(&head[3..7]) as usize).await?;
                }
                other => bail!("server message type {other}"),
            }
        }
    }

    async fn round_trip(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        self.send(update_request(false, 0, 0, 1, 1)).await?;
        self.read_update().await?;
        Ok(start.elapsed())
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Batches of PointerEvents, one WebSocket message each: walking the screen
/// (`moving`), or all at the centre, which Xvnc drops as no change.
fn pointer_batches(moving: bool) -> Vec<Bytes> {
    (0..16usize)
        .map(|batch| {
            let mut m = Vec::with_capacity(EVENTS_PER_MESSAGE * 6);
            for i in 0..EVENTS_PER_MESSAGE {
                let step = batch * EVENTS_PER_MESSAGE + i;
                let (x, y) = if moving {
                    (
                        (step * 7 % usize::from(WIDTH)) as u16,
                        (step * 3 % usize::from(HEIGHT)) as u16,
                    )
                } else {
                    (WIDTH / 2, HEIGHT / 2)
                };
                m.push(5);
                m.push(0); // no buttons
                m.extend_from_slice(&x.to_be_bytes());
                m.extend_from_slice(&y.to_be_bytes());
            }
            Bytes::from(m)
        })
        .collect()
}

/// Sends `messages` pointer batches, then waits for a 1x1 update that can
/// only come after all of them were read by Xvnc. Returns the time taken.
async fn upstream_once(
    rfb: &mut Rfb,
    batches: &[Bytes],
    messages: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for i in 0..messages {
        rfb.ws
            .feed(Message::Binary(batches[i % batches.len()].clone()))
            .await?;
    }
    rfb.send(update_request(false, 0, 0, 1, 1)).await?;
    rfb.read_update().await?;
    Ok(start.elapsed())
}

/// `updates` full-screen updates, one request at a time. Returns the bytes
/// received and the time taken.
async fn downstream_once(rfb: &mut Rfb, updates: usize) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..updates {
        rfb.send(update_request(false, 0, 0, WIDTH, HEIGHT)).await?;
        bytes += rfb.read_update().await?;
    }
    Ok((bytes, start.elapsed()))
}

// ---------------------------------------------------------------------------
// Processes' memory and CPU

/// `pid` and all its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(fields) = stat_fields(child)
                && let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok())
            {
                parents.entry(ppid).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(children) = parents.get(&tree[i]) {
            tree.extend(children);
        }
        i += 1;
    }
    tree
}

/// The fields of /proc/<pid>/stat after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU seconds (user + system) used so far by one process.
fn cpu(pid: u32) -> f64 {
    stat_fields(pid).map_or(0.0, |f| {
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND
    })
}

/// CPU seconds used so far by the live processes of the tree.
fn tree_cpu(pid: u32) -> f64 {
    process_tree(pid).into_iter().map(cpu).sum()
}

/// CPU seconds used so far on the whole machine: (time in processes, user
/// and system, all cores; time stolen by the hypervisor). Interrupt time is
/// left out: it is mostly the loopback traffic of the benchmark itself.
fn machine_cpu() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // cpu  user nice system idle iowait irq softirq steal ...
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0) as f64 / TICKS_PER_SECOND;
    (at(0) + at(1) + at(2), at(7))
}

/// CPU seconds used so far by this process alone (its children are the
/// relays and Xvnc).
fn own_cpu() -> f64 {
    cpu(std::process::id())
}

/// (PSS, RSS) of the tree in KiB.
fn tree_memory(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    for p in process_tree(pid) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("Pss:");
        total.1 += field("Rss:");
    }
    total
}

/// CPU seconds of the relay, Xvnc and this client over timed runs, with
/// their wall time and the MB moved.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    relay: f64,
    xvnc: f64,
    client: f64,
    /// Other processes on the machine.
    other: f64,
    /// CPU the hypervisor gave to someone else.
    steal: f64,
    wall: f64,
    mb: f64,
}

impl CpuUse {
    /// In % of one core.
    fn share(&self, seconds: f64) -> f64 {
        seconds / self.wall * 100.0
    }

    /// The relay's CPU milliseconds per MB relayed.
    fn relay_ms_per_mb(&self) -> f64 {
        self.relay * 1000.0 / self.mb
    }
}

struct CpuMeter {
    relay: u32,
    xvnc: u32,
    start: (f64, f64, f64, (f64, f64)),
}

impl CpuMeter {
    fn start(relay: u32, xvnc: u32) -> Self {
        Self {
            relay,
            xvnc,
            start: (tree_cpu(relay), tree_cpu(xvnc), own_cpu(), machine_cpu()),
        }
    }

    fn add_to(self, total: &mut CpuUse, wall: Duration, mb: f64) {
        let relay = tree_cpu(self.relay) - self.start.0;
        let xvnc = tree_cpu(self.xvnc) - self.start.1;
        let client = own_cpu() - self.start.2;
        let machine = machine_cpu();
        total.relay += relay;
        total.xvnc += xvnc;
        total.client += client;
        total.other += (machine.0 - self.start.3.0 - relay - xvnc - client).max(0.0);
        total.steal += machine.1 - self.start.3.1;
        total.wall += wall.as_secs_f64();
        total.mb += mb;
    }
}

// ---------------------------------------------------------------------------
// The measurements

/// A throughput phase on one relay.
#[derive(Clone, Copy, Default)]
struct Throughput {
    /// The median over the rounds.
    mb_s: f64,
    /// Summed over the rounds.
    cpu: CpuUse,
}

#[derive(Default)]
struct Figures {
    up_still: Throughput,
    up_moving: Throughput,
    down: Throughput,
    rtt: Vec<Duration>,
    /// Other processes' and stolen CPU during the round trips, % of one core.
    rtt_other_steal: (f64, f64),
    mem_pss_kib: f64,
    mem_rss_kib: f64,
    mem_base_pss_kib: u64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until the relay is back to its processes before any connection
/// (websockify's per-connection children take a moment to exit).
async fn settle(relay: &Relay) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while process_tree(relay.pid).len() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Runs `run` (MB moved, time taken) `rounds` times on each relay, the
/// relays alternating which goes first, with the CPU each run used.
async fn timed_rounds(
    what: &str,
    relays: &[Relay; 2],
    conns: &mut [Rfb],
    xvnc: u32,
    rounds: usize,
    mut run: impl AsyncFnMut(&mut Rfb) -> anyhow::Result<(f64, Duration)>,
) -> anyhow::Result<[Throughput; 2]> {
    let mut mb_s = [Vec::new(), Vec::new()];
    let mut out = [Throughput::default(); 2];
    for round in 0..rounds {
        for k in 0..2 {
            let i = (k + round) % 2;
            progress(&format!(
                "{what}: round {}/{rounds} via {}",
                round + 1,
                relays[i].name
            ));
            let meter = CpuMeter::start(relays[i].pid, xvnc);
            let (mb, took) = run(&mut conns[i]).await?;
            meter.add_to(&mut out[i].cpu, took, mb);
            mb_s[i].push(mb / took.as_secs_f64());
        }
    }
    for (t, m) in out.iter_mut().zip(&mut mb_s) {
        t.mb_s = median(m);
    }
    Ok(out)
}

async fn measure(relays: &[Relay; 2], xvnc: u32, p: &Params) -> anyhow::Result<[Figures; 2]> {
    let mut figures = [Figures::default(), Figures::default()];

    progress("warm-up: one connection through each relay");
    for relay in relays {
        let mut rfb = Rfb::open(relay).await?;
        for _ in 0..50 {
            rfb.round_trip().await?;
        }
        downstream_once(&mut rfb, 2).await?;
        upstream_once(&mut rfb, &pointer_batches(true), 16).await?;
        rfb.close().await;
    }

    // Memory first, while deskgate's allocator holds nothing from bulk transfers.
    for (relay, fig) in relays.iter().zip(&mut figures) {
        settle(relay).await;
        progress(&format!(
            "memory: {} idle connections through {}",
            p.conns, relay.name
        ));
        let before = tree_memory(relay.pid);
        let mut open = Vec::with_capacity(p.conns);
        for _ in 0..p.conns {
            open.push(Rfb::open(relay).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = tree_memory(relay.pid);
        fig.mem_base_pss_kib = before.0;
        fig.mem_pss_kib = (after.0 as f64 - before.0 as f64) / p.conns as f64;
        fig.mem_rss_kib = (after.1 as f64 - before.1 as f64) / p.conns as f64;
        for rfb in open {
            rfb.close().await;
        }
        settle(relay).await;
    }

    let mut conns = Vec::new();
    for relay in relays {
        conns.push(Rfb::open(relay).await?);
    }

    // 1. Upstream: the pointer held still (Xvnc drops each event early), then moving.
    for (moving, mb) in [(false, p.up_mb), (true, p.up_moving_mb)] {
        let batches = pointer_batches(moving);
        let messages = (mb * 1_000_000).div_ceil(EVENTS_PER_MESSAGE * 6);
        let total_mb = (messages * EVENTS_PER_MESSAGE * 6) as f64 / 1e6;
        for rfb in conns.iter_mut() {
            upstream_once(rfb, &batches, (messages / 8).max(1)).await?;
        }
        let label = if moving { "moving" } else { "still" };
        let what = format!("upstream, {total_mb:.0} MB of PointerEvents ({label})");
        let result = timed_rounds(&what, relays, &mut conns, xvnc, p.rounds, async |rfb| {
            let took = upstream_once(rfb, &batches, messages).await?;
            Ok((total_mb, took))
        })
        .await?;
        for (fig, r) in figures.iter_mut().zip(result) {
            if moving {
                fig.up_moving = r;
            } else {
                fig.up_still = r;
            }
        }
    }

    // 2. Downstream.
    for rfb in conns.iter_mut() {
        downstream_once(rfb, 3).await?;
    }
    let what = format!("downstream, {} full-screen updates", p.down_updates);
    let result = timed_rounds(&what, relays, &mut conns, xvnc, p.rounds, async |rfb| {
        let (bytes, took) = downstream_once(rfb, p.down_updates).await?;
        Ok((bytes as f64 / 1e6, took))
    })
    .await?;
    for (fig, r) in figures.iter_mut().zip(result) {
        fig.down = r;
    }

    // 3. Round trip.
    progress(&format!(
        "round trip: {} x 1x1 update per relay, in blocks of {RTT_BLOCK}",
        p.rtt_iters
    ));
    for rfb in conns.iter_mut() {
        for _ in 0..200 {
            rfb.round_trip().await?;
        }
    }
    let ours = || tree_cpu(relays[0].pid) + tree_cpu(relays[1].pid) + tree_cpu(xvnc) + own_cpu();
    let (machine_then, ours_then, then) = (machine_cpu(), ours(), Instant::now());
    let mut done = 0;
    while done < p.rtt_iters {
        let n = RTT_BLOCK.min(p.rtt_iters - done);
        for (rfb, fig) in conns.iter_mut().zip(&mut figures) {
            for _ in 0..n {
                fig.rtt.push(rfb.round_trip().await?);
            }
        }
        done += n;
    }
    let (machine, wall) = (machine_cpu(), then.elapsed().as_secs_f64());
    let other = (machine.0 - machine_then.0 - (ours() - ours_then)).max(0.0);
    let steal = machine.1 - machine_then.1;
    for fig in &mut figures {
        fig.rtt.sort();
        fig.rtt_other_steal = (other / wall * 100.0, steal / wall * 100.0);
    }
    for rfb in conns {
        rfb.close().await;
    }
    Ok(figures)
}

// ---------------------------------------------------------------------------
// The report

fn xvnc_version(xvnc: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut child) = Command::new(xvnc)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        let _ = child.wait();
    }
    text.lines().find(|l| l.starts_with("Xvnc")).map_or_else(
        || "Xvnc".into(),
        |l| l.split(" - ").next().unwrap_or(l).to_string(),
    )
}

fn print_report(f: &[Figures; 2], p: &Params, xvnc: &Path) {
    let (d, w) = (&f[0], &f[1]);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let us = |t: Duration| t.as_secs_f64() * 1e6;
    println!();
    println!(
        "vnc_relay: deskgate's relay vs websockify, relaying the same {} ({WIDTH}x{HEIGHT}, 32 bpp Raw)",
        xvnc_version(xvnc)
    );
    println!(
        "  Both relays reach Xvnc over TCP on 127.0.0.1. The gate reaches desktops through docker exec,"
    );
    println!("  so this measures the relay code itself, not the path to a container.");
    println!(
        "  deskgate: relay_websocket in a child process (tokio, multi-threaded), served by the gate's"
    );
    println!(
        "  own deskgate::server::run (TCP_NODELAY on accepted sockets, as websockify sets it)."
    );
    println!("  websockify: Python, one forked process per connection.");
    println!(
        "  {cores} CPU cores are shared by the client, the relay and Xvnc. MB = 10^6 bytes. Throughput is the"
    );
    println!(
        "  median of {} rounds: upstream {} MB (pointer still) and {} MB (pointer moving) of PointerEvents",
        p.rounds, p.up_mb, p.up_moving_mb
    );
    println!(
        "  in ~64 KiB messages; downstream {} full-screen updates. Round trip: {} 1x1 updates per relay.",
        p.down_updates, p.rtt_iters
    );
    println!("  Memory: {} idle connections per relay.", p.conns);
    println!();

    struct Row {
        metric: &'static str,
        deskgate: f64,
        websockify: f64,
        decimals: usize,
        /// (goal text, met)
        goal: Option<(&'static str, bool)>,
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let row = |metric, deskgate, websockify, decimals| Row {
        metric,
        deskgate,
        websockify,
        decimals,
        goal: None,
    };
    let p99 = (us(percentile(&d.rtt, 0.99)), us(percentile(&w.rtt, 0.99)));
    let events = |t: &Throughput| t.mb_s * 1e6 / 6.0;
    let rows = [
        Row {
            goal: Some((">= 3x", ratio(d.up_still.mb_s, w.up_still.mb_s) >= 3.0)),
            ..row("upstream MB/s (still)", d.up_still.mb_s, w.up_still.mb_s, 1)
        },
        row(
            "  PointerEvents/s (still)",
            events(&d.up_still),
            events(&w.up_still),
            0,
        ),
        row(
            "upstream MB/s (moving)",
            d.up_moving.mb_s,
            w.up_moving.mb_s,
            2,
        ),
        row(
            "  PointerEvents/s (moving)",
            events(&d.up_moving),
            events(&w.up_moving),
            0,
        ),
        Row {
            goal: Some((">= 1.2x", ratio(d.down.mb_s, w.down.mb_s) >= 1.2)),
            ..row("downstream MB/s", d.down.mb_s, w.down.mb_s, 1)
        },
        row(
            "round trip p50 µs",
            us(percentile(&d.rtt, 0.5)),
            us(percentile(&w.rtt, 0.5)),
            0,
        ),
        Row {
            goal: Some(("<= 0.6x", ratio(p99.0, p99.1) <= 0.6)),
            ..row("round trip p99 µs", p99.0, p99.1, 0)
        },
        row(
            "round trip max µs",
            us(*d.rtt.last().expect("samples")),
            us(*w.rtt.last().expect("samples")),
            0,
        ),
        row(
            "relay CPU ms/MB up (still)",
            d.up_still.cpu.relay_ms_per_mb(),
            w.up_still.cpu.relay_ms_per_mb(),
            2,
        ),
        row(
            "relay CPU ms/MB down",
            d.down.cpu.relay_ms_per_mb(),
            w.down.cpu.relay_ms_per_mb(),
            2,
        ),
        row(
            "memory/idle conn KiB (PSS)",
            d.mem_pss_kib,
            w.mem_pss_kib,
            0,
        ),
        row(
            "memory/idle conn KiB (RSS)",
            d.mem_rss_kib,
            w.mem_rss_kib,
            0,
        ),
    ];
    let line = "-".repeat(86);
    println!(
        "{:<28} {:>12} {:>12} {:>8}   {:<8} verdict",
        "metric", "deskgate", "websockify", "ratio", "goal"
    );
    println!("{line}");
    let mut missed = Vec::new();
    for r in &rows {
        let (goal, verdict) = match r.goal {
            Some((text, true)) => (text, "met"),
            Some((text, false)) => {
                missed.push(r.metric);
                (text, "MISSED")
            }
            None => ("", ""),
        };
        println!(
            "{:<28} {:>12.*} {:>12.*} {:>7.2}x   {:<8} {}",
            r.metric,
            r.decimals,
            r.deskgate,
            r.decimals,
            r.websockify,
            ratio(r.deskgate, r.websockify),
            goal,
            verdict
        );
    }
    println!("{line}");
    println!("ratio = deskgate / websockify; the goals (from the issue) are on that ratio.");
    println!(
        "relay CPU ms/MB: CPU time of the relay's processes per MB relayed (lower is cheaper)."
    );
    println!(
        "memory: growth of the relay's processes; before the connections, PSS was {} KiB (deskgate)",
        d.mem_base_pss_kib
    );
    println!(
        "and {} KiB (websockify). PSS splits pages shared between processes; RSS counts them in each.",
        w.mem_base_pss_kib
    );
    println!();
    println!("CPU during the timed runs, % of one core (other: other processes on the machine;");
    println!(
        "steal: time the hypervisor gave to other guests; either well above a few % means the"
    );
    println!("figures were disturbed):");
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "phase / relay", "relay", "Xvnc", "client", "other", "steal"
    );
    type Pick = fn(&Figures) -> CpuUse;
    let phases: [(&str, Pick); 3] = [
        ("upstream (still)", |f| f.up_still.cpu),
        ("upstream (moving)", |f| f.up_moving.cpu),
        ("downstream", |f| f.down.cpu),
    ];
    for (phase, pick) in phases {
        for (name, fig) in [("deskgate", d), ("websockify", w)] {
            let c = pick(fig);
            println!(
                "{:<30} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                format!("{phase} / {name}"),
                c.share(c.relay),
                c.share(c.xvnc),
                c.share(c.client),
                c.share(c.other),
                c.share(c.steal)
            );
        }
    }
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>8.0} {:>8.0}",
        "round trip / both", "", "", "", d.rtt_other_steal.0, d.rtt_other_steal.1
    );
    println!();
    for (phase, pick) in phases {
        let (a, b) = (pick(d), pick(w));
        if a.share(a.xvnc) >= 85.0 && b.share(b.xvnc) >= 85.0 {
            println!(
                "note: {phase}: Xvnc used ~one core through both relays, so this throughput is Xvnc's \
                 limit more than the relay's; relay CPU ms/MB shows the relays' own cost."
            );
        }
    }
    if missed.is_empty() {
        println!("deskgate meets all three goals in this run.");
    } else {
        println!(
            "deskgate MISSES its goal for: {} (in this run).",
            missed.join(", ")
        );
    }
}
