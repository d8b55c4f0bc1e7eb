//! The actor tree's figures on in-memory ports, measured once and returned
//! (not printed): `tree.rs` prints them, and the API contention benchmark
//! (`benches/api_contention.rs`) sets its own figures beside them.
//!
//! Invariants: the tree runs with one claim per wallet, billing and presence
//! far out of the way (nothing ends a session but the benchmark), and the
//! waiters stay at [`WAITERS`] through every sample (each grant is replaced
//! by a new claim at the back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deskgate_actors::ports::{EndReason, GpuAddr, SessionState, WalletId};
use deskgate_actors::protocol::SessionEvent;
use deskgate_actors::queue::Policy;
use deskgate_actors::session::SessionSettings;
use deskgate_actors::supervisor::{
    RestartPolicy, SessionHandle, Supervisor, SupervisorArgs, SupervisorMsg,
};
use deskgate_actors::testing::{FakeLauncher, MemoryLedger, MemoryStore};
use ractor::ActorRef;
use ractor::rpc::CallResult;

const HOSTS: u16 = 8;
const GPUS_PER_HOST: u32 = 8;
/// Claims waiting while grants and fan-out are measured.
pub const WAITERS: usize = 10_000;
/// Release-to-grant samples.
pub const GRANT_SAMPLES: usize = 200;
/// Fan-out samples.
pub const FANOUT_SAMPLES: usize = 20;
const CALL: Option<Duration> = Some(Duration::from_secs(30));

fn wallet(n: usize) -> WalletId {
    WalletId::new(&format!("0x{n:040x}"))
}

/// Resident bytes of process `pid` ("self" for this one), from `/proc`;
/// `None` if it cannot be read.
pub fn resident_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn rss_bytes() -> u64 {
    resident_bytes("self").unwrap_or(0)
}

async fn claim(supervisor: &ActorRef<SupervisorMsg>, wallet: WalletId) -> SessionHandle {
    match supervisor
        .call(
            |reply| SupervisorMsg::StartSession {
                wallet,
                gpus: 1,
                balance: None,
                reply,
            },
            CALL,
        )
        .await
        .expect("supervisor answers")
    {
        CallResult::Success(Ok(handle)) => handle,
        other => panic!("claim failed: {other:?}"),
    }
}

async fn stop(supervisor: &ActorRef<SupervisorMsg>, handle: &SessionHandle) {
    let session = handle.id;
    let _ = supervisor
        .call(
            |reply| SupervisorMsg::StopSession {
                session,
                reason: EndReason::UserStopped,
                reply,
            },
            CALL,
        )
        .await;
}

/// The `p` quantile (0 to 1) of `sorted`, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one run of the tree measured.
#[derive(Clone, Copy, Debug)]
pub struct TreeFigures {
    /// GPUs in the tree (hosts × GPUs per host).
    pub gpus: usize,
    /// Claims queued through the supervisor per second, one after another.
    pub claims_per_sec: f64,
    /// Resident bytes per waiting claim.
    pub bytes_per_waiter: f64,
    /// Release (a stop) to the head waiter's grant.
    pub grant_p50: Duration,
    /// As `grant_p50`.
    pub grant_p99: Duration,
    /// As `grant_p50`.
    pub grant_max: Duration,
    /// Release to the last waiter's new queue position.
    pub fanout_p50: Duration,
    /// As `fanout_p50`.
    pub fanout_max: Duration,
}

/// Runs the tree with [`WAITERS`] claims waiting on 64 GPUs and measures it.
pub async fn measure() -> TreeFigures {
    let gpus: Vec<GpuAddr> = (0..HOSTS)
        .flat_map(|host| (0..GPUS_PER_HOST).map(move |index| GpuAddr { host, index }))
        .collect();
    let total_gpus = gpus.len();
    let ledger = Arc::new(MemoryLedger::new());
    let args = SupervisorArgs {
        gpus,
        gpus_out: Vec::new(),
        policy: Policy::default(),
        profile_sizes: vec![1, 2, 4, 8],
        ledger: ledger.clone(),
        store: Arc::new(MemoryStore::new()),
        launcher: Arc::new(FakeLauncher::new()),
        settings: SessionSettings {
            billing_interval: Duration::from_secs(3600),
            presence_timeout: Duration::from_secs(86_400),
            idle_timeout: None,
            ..SessionSettings::default()
        },
        restart: RestartPolicy::default(),
    };
    let (supervisor, _) = ractor::Actor::spawn(None, Supervisor, args).await.unwrap();

    let total = total_gpus + WAITERS + GRANT_SAMPLES + FANOUT_SAMPLES;
    for n in 0..total {
        ledger.deposit(&wallet(n), 1_000_000);
    }
    let mut running = Vec::with_capacity(total_gpus);
    for n in 0..total_gpus {
        running.push(claim(&supervisor, wallet(n)).await);
    }

    let before = rss_bytes();
    let started = Instant::now();
    let mut waiting = std::collections::VecDeque::with_capacity(WAITERS);
    for n in total_gpus..total_gpus + WAITERS {
        waiting.push_back(claim(&supervisor, wallet(n)).await);
    }
    let took = started.elapsed();
    // Let the coalesced position pass finish before measuring memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    let claims_per_sec = WAITERS as f64 / took.as_secs_f64();
    let bytes_per_waiter = after.saturating_sub(before) as f64 / WAITERS as f64;

    // Release-to-grant: stop a running session, time until the head waiter
    // is granted (its Launching state). A new claim keeps 10k waiting.
    let mut next_wallet = total_gpus + WAITERS;
    let mut grant_times = Vec::with_capacity(GRANT_SAMPLES);
    for _ in 0..GRANT_SAMPLES {
        let head = waiting.pop_front().expect("a waiter");
        let mut events = head.events.subscribe();
        let victim = running.remove(0);
        let t0 = Instant::now();
        stop(&supervisor, &victim).await;
        loop {
            match events.recv().await {
                Ok(SessionEvent::State {
                    state: SessionState::Launching,
                    ..
                }) => break,
                Ok(_) => {}
                Err(e) => panic!("head lost its events: {e}"),
            }
        }
        grant_times.push(t0.elapsed());
        running.push(head);
        waiting.push_back(claim(&supervisor, wallet(next_wallet)).await);
        next_wallet += 1;
    }
    grant_times.sort();

    // Fan-out: time until the last waiter hears its new position.
    let mut fanout_times = Vec::with_capacity(FANOUT_SAMPLES);
    for _ in 0..FANOUT_SAMPLES {
        let last = waiting.back().expect("a waiter");
        let mut events = last.events.subscribe();
        let victim = running.remove(0);
        let t0 = Instant::now();
        stop(&supervisor, &victim).await;
        loop {
            match events.recv().await {
                Ok(SessionEvent::Queue(_)) => break,
                Ok(_) => {}
                Err(e) => panic!("last waiter lost its events: {e}"),
            }
        }
        fanout_times.push(t0.elapsed());
        running.push(waiting.pop_front().unwrap());
        waiting.push_back(claim(&supervisor, wallet(next_wallet)).await);
        next_wallet += 1;
    }
    fanout_times.sort();
    supervisor.stop(None);
    TreeFigures {
        gpus: total_gpus,
        claims_per_sec,
        bytes_per_waiter,
        grant_p50: percentile(&grant_times, 0.5),
        grant_p99: percentile(&grant_times, 0.99),
        grant_max: *grant_times.last().unwrap(),
        fanout_p50: percentile(&fanout_times, 0.5),
        fanout_max: *fanout_times.last().unwrap(),
    }
}
