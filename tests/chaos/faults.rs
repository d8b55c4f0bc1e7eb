//! What the campaign breaks, and how each fault is lifted.
//!
//! A fault is chosen by weight from the seed, with its target (a host) and
//! its length; [`Fault::inject`] applies it, holds it, lifts it and says
//! from when recovery is timed (when the fault was lifted, or when the
//! broken process was started again) and, for a gate crash, the window the
//! gate was down (which must not be billed). Faults never overlap: the
//! campaign waits for recovery before the next.

use std::time::{Duration, Instant, SystemTime};

use alloy::providers::ext::AnvilApi;
use alloy::rpc::types::anvil::ReorgOptions;
use rand::Rng;
use rand::rngs::StdRng;

use crate::Stack;
use crate::invariants::Downtime;

/// One fault, with its target and length.
#[derive(Clone, Debug)]
pub enum Fault {
    /// SIGKILL of the gate, restarted after `down_ms`.
    GateKill { down_ms: u64 },
    /// PostgreSQL stopped with pg_ctl's `mode`, started after `down_ms`.
    PgRestart { mode: &'static str, down_ms: u64 },
    /// Every connection to the database killed (pg_terminate_backend).
    PgKillConnections,
    /// A host's Docker Engine stopped (its containers with it) and started.
    DockerRestart { host: usize },
    /// SIGKILL of a host's launcher, restarted after `down_ms`.
    LauncherKill { host: usize, down_ms: u64 },
    /// The link between the gate and a host down for `ms`.
    Partition { host: usize, ms: u64 },
    /// `docker kill` of a session's container.
    ContainerKill { pick: usize },
    /// A process inside a session's container that eats memory until the
    /// kernel's OOM killer takes it.
    ContainerOom { pick: usize },
    /// anvil replaces the last `depth` blocks (deeper or shallower than the
    /// confirmation count).
    Reorg { depth: u64 },
    /// The gate's RPC node unreachable for `ms`.
    RpcOutage { ms: u64 },
    /// `streams` browsers open a session's VNC stream through the gate, ask
    /// for full frames again and again, and stop reading for `hold_ms`.
    MediaStall {
        pick: usize,
        streams: usize,
        hold_ms: u64,
    },
}

/// When to time recovery from, and any gate downtime.
pub struct Outcome {
    /// The moment the fault was lifted (or the broken process started again).
    pub recovery_from: Instant,
    /// The window the gate was down.
    pub downtime: Option<Downtime>,
    /// The gate's resident set at the end of a stall (KiB).
    pub gate_rss_kib: Option<u64>,
}

impl Outcome {
    /// Recovery is timed from `at`.
    fn lifted_at(at: Instant) -> Self {
        Self {
            recovery_from: at,
            downtime: None,
            gate_rss_kib: None,
        }
    }

    fn lifted_now() -> Self {
        Self::lifted_at(Instant::now())
    }
}

/// Every kind with its weight (faults per hundred).
const WEIGHTS: [(&str, u32); 12] = [
    ("gate-kill", 12),
    ("pg-restart-fast", 6),
    ("pg-restart-immediate", 6),
    ("pg-kill-connections", 8),
    ("docker-restart", 4),
    ("launcher-kill", 10),
    ("partition", 12),
    ("container-kill", 12),
    ("container-oom", 6),
    ("reorg", 14),
    ("rpc-outage", 10),
    ("media-stall", 8),
];

impl Fault {
    /// The next fault, from `rng`.
    pub fn pick(rng: &mut StdRng, stack: &Stack) -> Self {
        let total: u32 = WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut roll = rng.random_range(0..total);
        let kind = WEIGHTS
            .iter()
            .find(|(_, w)| {
                let hit = roll < *w;
                roll = roll.saturating_sub(*w);
                hit
            })
            .map(|(k, _)| *k)
            .unwrap();
        let host = rng.random_range(0..stack.hosts.len());
        match kind {
            "gate-kill" => Self::GateKill {
                down_ms: rng.random_range(0..800),
            },
            "pg-restart-fast" => Self::PgRestart {
                mode: "fast",
                down_ms: rng.random_range(0..800),
            },
            "pg-restart-immediate" => Self::PgRestart {
                mode: "immediate",
                down_ms: rng.random_range(0..800),
            },
            "pg-kill-connections" => Self::PgKillConnections,
            "docker-restart" => Self::DockerRestart { host },
            "launcher-kill" => Self::LauncherKill {
                host,
                down_ms: rng.random_range(0..800),
            },
            "partition" => Self::Partition {
                host,
                ms: rng.random_range(200..2000),
            },
            "container-kill" => Self::ContainerKill {
                pick: rng.random_range(0..1 << 16),
            },
            "container-oom" => Self::ContainerOom {
                pick: rng.random_range(0..1 << 16),
            },
            // One block is shallower than the two confirmations; three to
            // five are deeper.
            "reorg" => Self::Reorg {
                depth: if rng.random_bool(0.5) {
                    1
                } else {
                    rng.random_range(3..6)
                },
            },
            "rpc-outage" => Self::RpcOutage {
                ms: rng.random_range(200..2000),
            },
            "media-stall" => Self::MediaStall {
                pick: rng.random_range(0..1 << 16),
                streams: rng.random_range(1..4),
                hold_ms: rng.random_range(400..2500),
            },
            other => unreachable!("{other}"),
        }
    }

    /// The kind, for the report (a closed set).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::GateKill { .. } => "gate-kill",
            Self::PgRestart { mode: "fast", .. } => "pg-restart-fast",
            Self::PgRestart { .. } => "pg-restart-immediate",
            Self::PgKillConnections => "pg-kill-connections",
            Self::DockerRestart { .. } => "docker-restart",
            Self::LauncherKill { .. } => "launcher-kill",
            Self::Partition { .. } => "partition",
            Self::ContainerKill { .. } => "container-kill",
            Self::ContainerOom { .. } => "container-oom",
            Self::Reorg { depth: 1 } => "reorg-shallow",
            Self::Reorg { .. } => "reorg-deep",
            Self::RpcOutage { .. } => "rpc-outage",
            Self::MediaStall { .. } => "media-stall",
        }
    }

    /// Whether the fault may delay what the gate records (a grant saved
    /// late), so that the queue-order check leaves its moment alone.
    pub fn delays_records(&self) -> bool {
        matches!(
            self,
            Self::GateKill { .. } | Self::PgRestart { .. } | Self::PgKillConnections
        )
    }

    /// Applies the fault, holds it, lifts it.
    pub async fn inject(&self, stack: &mut Stack, _rng: &mut StdRng) -> Outcome {
        let pause = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
        match *self {
            Self::GateKill { down_ms } => {
                let from = SystemTime::now();
                stack.gate.kill_hard();
                pause(down_ms).await;
                let restarting = Instant::now();
                stack.gate.restart().await;
                Outcome {
                    recovery_from: restarting,
                    downtime: Some(Downtime {
                        from,
                        to: SystemTime::now(),
                    }),
                    gate_rss_kib: None,
                }
            }
            Self::PgRestart { mode, down_ms } => {
                tokio::task::block_in_place(|| stack.pg.stop(mode));
                pause(down_ms).await;
                let starting = Instant::now();
                tokio::task::block_in_place(|| stack.pg.start_again());
                Outcome::lifted_at(starting)
            }
            Self::PgKillConnections => {
                stack.pg.kill_connections().await;
                Outcome::lifted_now()
            }
            Self::DockerRestart { host } => {
                let host = &mut stack.hosts[host];
                tokio::task::block_in_place(|| host.stop_engine());
                let starting = Instant::now();
                host.start_engine().await;
                Outcome::lifted_at(starting)
            }
            Self::LauncherKill { host, down_ms } => {
                let host = &mut stack.hosts[host];
                host.kill_launcher();
                pause(down_ms).await;
                let starting = Instant::now();
                host.start_launcher().await;
                Outcome::lifted_at(starting)
            }
            Self::Partition { host, ms } => {
                stack.hosts[host].netns.cut();
                pause(ms).await;
                stack.hosts[host].netns.restore();
                Outcome::lifted_now()
            }
            Self::ContainerKill { pick } => {
                if let Some((host, id)) = pick_container(stack, pick) {
                    let _ = stack.hosts[host].docker(&["kill", &id]);
                }
                Outcome::lifted_now()
            }
            Self::ContainerOom { pick } => {
                if let Some((host, id)) = pick_container(stack, pick) {
                    // The shell doubles a string until the container's memory
                    // limit is hit and the kernel kills it.
                    let _ = stack.hosts[host].docker(&[
                        "exec",
                        "-d",
                        &id,
                        "sh",
                        "-c",
                        "a=0123456789abcdef; while :; do a=$a$a; done",
                    ]);
                    pause(500).await;
                }
                Outcome::lifted_now()
            }
            Self::Reorg { depth } => {
                let chain = stack.chain();
                let _writing = stack.chain_writes.lock().await;
                let _ = chain
                    .anvil_reorg(ReorgOptions {
                        depth,
                        tx_block_pairs: vec![],
                    })
                    .await;
                Outcome::lifted_now()
            }
            Self::RpcOutage { ms } => {
                stack.rpc.set_up(false);
                pause(ms).await;
                stack.rpc.set_up(true);
                Outcome::lifted_now()
            }
            Self::MediaStall {
                pick,
                streams,
                hold_ms,
            } => {
                let mut stalled = Vec::new();
                if let Some((session, token)) = pick_owned_session(stack, pick) {
                    for _ in 0..streams {
                        if let Some(socket) = stalled_stream(stack, &session, &token).await {
                            stalled.push(socket);
                        }
                    }
                }
                pause(hold_ms).await;
                let rss = resident_kib(stack.gate.pid());
                drop(stalled);
                Outcome {
                    gate_rss_kib: rss,
                    ..Outcome::lifted_now()
                }
            }
        }
    }
}

/// The `pick`-th running session container across the hosts (modulo how
/// many there are), if any runs.
fn pick_container(stack: &Stack, pick: usize) -> Option<(usize, String)> {
    let mut all = Vec::new();
    for (i, host) in stack.hosts.iter().enumerate() {
        let running = host
            .docker(&[
                "ps",
                "-q",
                "--filter",
                "label=deskgate.session",
                "--filter",
                "status=running",
            ])
            .ok()?;
        all.extend(running.lines().map(|id| (i, id.to_string())));
    }
    all.sort();
    (!all.is_empty()).then(|| all[pick % all.len()].clone())
}

/// The `pick`-th running session whose owner the workload knows, with the
/// owner's token.
fn pick_owned_session(stack: &Stack, pick: usize) -> Option<(String, String)> {
    let owners = stack.owners.lock().unwrap();
    let mut running: Vec<(String, String)> = stack
        .hosts
        .iter()
        .flat_map(|h| h.running_sessions())
        .filter_map(|s| owners.get(&s).map(|t| (s, t.clone())))
        .collect();
    running.sort();
    (!running.is_empty()).then(|| running[pick % running.len()].clone())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the session's VNC stream as a browser would (a ticket, then the
/// socket from the gate's origin), sends the whole RFB 3.8 handshake and a
/// burst of full-frame update requests at once, and returns the socket
/// unread: the desktop's frames pile up towards a browser that never takes
/// them.
async fn stalled_stream(stack: &Stack, session: &str, token: &str) -> Option<Socket> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (status, ticket) = stack
        .gate
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/sessions/{session}/tickets"),
            Some(token),
            Some(serde_json::json!({ "purpose": "vnc" })),
        )
        .await;
    let ticket = ticket["ticket"].as_str().filter(|_| status == 201)?;
    let mut request = format!(
        "ws://127.0.0.1:{}/api/v1/sessions/{session}/vnc?ticket={ticket}",
        stack.gate.port
    )
    .into_client_request()
    .ok()?;
    request
        .headers_mut()
        .insert("origin", stack.gate.base.parse().ok()?);
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .ok()?
    .ok()?;
    // Version, security type None, ClientInit (shared), then full-screen
    // FramebufferUpdateRequests (non-incremental, 0,0 to 4096x4096).
    let mut burst = b"RFB 003.008\n".to_vec();
    burst.extend_from_slice(&[1, 1]);
    for _ in 0..64 {
        burst.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0x10, 0, 0x10, 0]);
    }
    socket.send(Message::Binary(burst.into())).await.ok()?;
    Some(socket)
}

/// The resident set of process `pid` in KiB, from /proc.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
