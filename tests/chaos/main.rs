//! The fault campaign: a seeded stream of crashes, restarts, partitions and
//! reorgs against the real stack while a seeded workload uses it, with the
//! invariants checked from the outside after every fault and at the end.
//!
//! The stack is real: `deskgate serve` on loopback, a PostgreSQL cluster, an
//! anvil node (behind a proxy that can cut the gate's RPC), and GPU hosts
//! that are each a network namespace with a Docker Engine and a `deskgate
//! launcher` (`DESKGATE_GPUS=fake:2`), billing every second. See
//! [`world`] for the processes, [`workload`] for the users, [`faults`] for
//! what breaks and [`invariants`] for what must hold.
//!
//! `make test` runs a short campaign: 50 faults on the newest seed kept in
//! `tests/chaos/kept-seeds` (seeds that once found a violation). `make
//! chaos` (`scripts/chaos.sh`) replays every kept seed, then runs 1,000
//! faults on a new seed. `DESKGATE_CHAOS_SEED` and `DESKGATE_CHAOS_FAULTS`
//! replay a campaign: the same seed gives the same sequence of workload
//! steps and faults at the same pace (what the processes answer, and so the
//! exact interleaving, is up to them). The seed is printed first, and again
//! with any violation.

#[path = "../support/mod.rs"]
mod support;

mod faults;
mod invariants;
mod report;
mod workload;
mod world;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use alloy::primitives::Address;
use alloy::providers::ext::AnvilApi;
use alloy::providers::{Provider, ProviderBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;

use faults::Fault;
use invariants::Tally;
use report::Report;
use support::api::{GateProcess, session_env, set_env};
use support::{OwnAnvil, STRONG_SECRET, deploy_test_token, dev_wallet_provider, free_port};
use workload::{Targets, Workload};
use world::{Host, LAUNCHER_TOKEN, Postgres, RpcProxy, poll_until};

/// GPU hosts, and fake GPUs on each.
const HOSTS: u16 = 2;
const GPUS_PER_HOST: u32 = 2;
/// Wallets in the workload.
const WALLETS: usize = 12;
/// The gate bills every second.
const BILLING_INTERVAL_SECS: i64 = 1;
/// Deposits are credited after two blocks.
const CONFIRMATIONS: u64 = 2;
/// How long recovery from any fault may take before the campaign fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);
/// How long a session's container or network may outlive its session.
const ORPHAN_GRACE_SECS: f64 = 20.0;

/// The campaign's size and seed, from the environment.
struct Plan {
    faults: u32,
    seed: u64,
}

/// A setting from the environment; empty counts as unset.
fn setting(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

impl Plan {
    /// `DESKGATE_CHAOS_FAULTS` faults (default 50) with `DESKGATE_CHAOS_SEED`.
    /// With neither set (`make test`), the first kept seed
    /// (`tests/chaos/kept-seeds`); with only the count set, a new seed.
    fn from_env() -> Self {
        let faults = setting("DESKGATE_CHAOS_FAULTS");
        let seed = setting("DESKGATE_CHAOS_SEED").unwrap_or_else(|| match faults {
            None => kept_seeds()[0],
            Some(_) => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        });
        Self {
            faults: faults.map_or(50, |f| f as u32),
            seed,
        }
    }
}

/// The seeds that once found a violation, newest first.
fn kept_seeds() -> Vec<u64> {
    let path = support::repo_root().join("tests/chaos/kept-seeds");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Everything the campaign runs.
struct Stack {
    pg: Postgres,
    anvil: OwnAnvil,
    rpc: RpcProxy,
    hosts: Vec<Host>,
    gate: GateProcess,
    http: reqwest::Client,
    /// Each session's owner's token (the workload's), for stalled streams.
    owners: Arc<Mutex<HashMap<String, String>>>,
    /// Held while writing to the chain.
    chain_writes: world::ChainWrites,
}

impl Stack {
    async fn start() -> (Self, Targets) {
        let pg = Postgres::start();
        let anvil = OwnAnvil::start();
        let rpc = RpcProxy::start(anvil.port).await;
        let (deployer, _) = dev_wallet_provider(&anvil.url);
        let token = deploy_test_token(&deployer).await;
        let mut hosts = Vec::new();
        let image = support::service_env("DESKGATE_DESKTOP_IMAGE");
        for number in 0..HOSTS {
            hosts.push(Host::start(number, GPUS_PER_HOST, &image).await);
        }
        let urls: Vec<String> = hosts.iter().map(|h| h.url.to_string()).collect();
        let revenue = Address::repeat_byte(0x7a);
        let port = free_port();
        let mut env = session_env(port, &pg.url, &rpc.url, revenue);
        for (key, value) in [
            ("DESKGATE_LAUNCHER_URLS", urls.join(",")),
            ("DESKGATE_LAUNCHER_TOKEN", LAUNCHER_TOKEN.to_string()),
            ("DESKGATE_CONFIRMATIONS", CONFIRMATIONS.to_string()),
            ("DESKGATE_CHAIN_POLL_MILLIS", "200".to_string()),
            ("DESKGATE_TOKEN_ADDRESS", token.to_string()),
            // One token base unit buys one credit-second.
            ("DESKGATE_PRICE_TOKEN_PER_GPU_HOUR", "3600".to_string()),
            (
                "DESKGATE_BILLING_INTERVAL_SECONDS",
                BILLING_INTERVAL_SECS.to_string(),
            ),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "6".to_string()),
            ("DESKGATE_ADMIN_TOKEN", STRONG_SECRET.to_string()),
            ("DESKGATE_SIGN_IN_RATE_PER_MINUTE", "6000".to_string()),
            ("DESKGATE_SIGN_IN_RATE_BURST", "1000".to_string()),
            ("DESKGATE_CLAIM_RATE_PER_MINUTE", "6000".to_string()),
            ("DESKGATE_CLAIM_RATE_BURST", "1000".to_string()),
        ] {
            set_env(&mut env, key, value);
        }
        let gate = GateProcess::start_on_own_engines(port, env).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let (_, profiles) = gate
            .call(reqwest::Method::GET, "/api/v1/profiles", None, None)
            .await;
        let profiles: Vec<(String, u64)> = profiles
            .as_array()
            .expect("profiles")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["gpus"].as_u64().unwrap(),
                )
            })
            .collect();
        let targets = Targets {
            gate: gate.base.clone(),
            anvil: anvil.url.clone(),
            revenue,
            token,
            admin_token: STRONG_SECRET.to_string(),
            profiles,
            gpus: (0..HOSTS)
                .flat_map(|h| (0..GPUS_PER_HOST).map(move |i| (h, i)))
                .collect(),
            chain_writes: world::ChainWrites::default(),
        };
        let stack = Self {
            pg,
            anvil,
            rpc,
            hosts,
            gate,
            http,
            owners: Arc::default(),
            chain_writes: targets.chain_writes.clone(),
        };
        (stack, targets)
    }

    /// Whether everything answers: the gate is ready with its sessions open,
    /// and every host's engine and launcher answer.
    async fn serving(&self) -> bool {
        let ready = |path: &'static str| {
            let url = format!("{}{path}", self.gate.base);
            async move { matches!(self.http.get(url).send().await, Ok(r) if r.status() == 200) }
        };
        if !ready("/readyz").await || !ready("/api/v1/profiles").await {
            return false;
        }
        for host in &self.hosts {
            if !host.launcher_answers(&self.http).await || host.session_containers().is_none() {
                return false;
            }
        }
        true
    }

    /// A provider on the campaign's anvil node (the dev key's wallet).
    fn chain(&self) -> impl Provider + use<> {
        ProviderBuilder::new().connect_http(self.anvil.url.parse().unwrap())
    }

    /// What the gate and the launchers logged about the sessions that
    /// `violations` name, to explain a violation when it is found.
    fn lines_about(&self, violations: &[String]) -> String {
        let sessions: std::collections::BTreeSet<&str> = violations
            .iter()
            .flat_map(|v| v.split(|c: char| !(c.is_ascii_hexdigit() || c == '-')))
            .filter(|w| w.len() == 36 && w.matches('-').count() == 4)
            .collect();
        let mut logs = vec![("gate".to_string(), self.gate.output())];
        for host in &self.hosts {
            logs.push((format!("launcher {}", host.number), host.launcher_output()));
        }
        let mut text = String::new();
        for (who, log) in logs {
            for line in log
                .lines()
                .filter(|l| sessions.iter().any(|s| l.contains(s)))
            {
                text.push_str(&format!("    [{who}] {line}\n"));
            }
        }
        text
    }

    /// Writes the whole logs of the gate and of every launcher to
    /// `target/chaos-logs/<seed>/`, for a failure.
    fn keep_logs(&self, seed: u64) {
        let dir = support::repo_root().join(format!("target/chaos-logs/{seed}"));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("gate.log"), self.gate.output());
        for host in &self.hosts {
            let _ = std::fs::write(
                dir.join(format!("launcher-{}.log", host.number)),
                host.launcher_output(),
            );
        }
        eprintln!("chaos: the whole logs are in {}", dir.display());
    }

    /// Everything the gate and the launchers printed, for a failure.
    fn logs(&self) -> String {
        let mut text = format!("--- gate ---\n{}", tail(&self.gate.output(), 200));
        for host in &self.hosts {
            text.push_str(&format!(
                "\n--- launcher {} ---\n{}\n--- dockerd {} ---\n{}",
                host.number,
                tail(&host.launcher_output(), 60),
                host.number,
                host.engine_log()
            ));
        }
        text
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Mines a block every 700 ms until `stop`, so that deposits confirm.
fn spawn_miner(
    url: String,
    writes: world::ChainWrites,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let chain = ProviderBuilder::new().connect_http(url.parse().unwrap());
        while !*stop.borrow() {
            {
                let _writing = writes.lock().await;
                let _ = chain.anvil_mine(Some(1), None).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(700)) => {}
                _ = stop.changed() => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_fault_campaign_keeps_every_invariant() {
    let plan = Plan::from_env();
    eprintln!(
        "chaos: seed {} ({} faults); replay with DESKGATE_CHAOS_SEED={} DESKGATE_CHAOS_FAULTS={}",
        plan.seed, plan.faults, plan.seed, plan.faults
    );
    let began = Instant::now();
    let (mut stack, targets) = Stack::start().await;
    eprintln!("chaos: stack up in {:.1} s", began.elapsed().as_secs_f64());

    let (stop_tx, stop_rx) = watch::channel(false);
    let miner = spawn_miner(
        stack.anvil.url.clone(),
        stack.chain_writes.clone(),
        stop_rx.clone(),
    );
    let workload = Workload::new(targets, WALLETS, plan.seed);
    let record = workload.record.clone();
    stack.owners = workload.owners.clone();
    let users = tokio::spawn(workload.run(stop_rx));

    let mut rng = StdRng::seed_from_u64(plan.seed.rotate_left(17) ^ 0xfa17);
    let mut report = Report::new(plan.seed);
    let campaign = Instant::now();
    for n in 0..plan.faults {
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..300))).await;
        let fault = Fault::pick(&mut rng, &stack);
        let injected = SystemTime::now();
        let outcome = fault.inject(&mut stack, &mut rng).await;
        report.windows.push(invariants::FaultWindow {
            delays_records: fault.delays_records(),
            from: injected,
            to: SystemTime::now(),
        });
        let recovered = poll_until(RECOVERY_LIMIT, async || stack.serving().await).await;
        assert!(
            recovered,
            "chaos: fault {n} ({fault:?}) not recovered from within {RECOVERY_LIMIT:?}; seed {}\n{}",
            plan.seed,
            stack.logs()
        );
        let recovery = outcome.recovery_from.elapsed();
        report.fault(fault.kind(), recovery);
        if let Some(down) = outcome.downtime {
            report.downtimes.push(down);
        }
        if let Some(rss) = outcome.gate_rss_kib {
            report.gate_rss(rss);
        }
        let round = checks(&stack, &record).await;
        if round
            .violations
            .iter()
            .any(|v| !report.tally.violations.contains(v))
        {
            eprintln!(
                "chaos: VIOLATION after fault {n} ({fault:?}), seed {}:\n  {}\n{}",
                plan.seed,
                round.violations.join("\n  "),
                stack.lines_about(&round.violations)
            );
        }
        report.tally.absorb(round);
        if (n + 1) % 25 == 0 {
            eprintln!(
                "chaos: {} faults in {:.0} s, {} checks, {} violations",
                n + 1,
                campaign.elapsed().as_secs_f64(),
                report.tally.total(),
                report.tally.violations.len()
            );
        }
    }
    report.campaign = campaign.elapsed();

    // Quiesce: the users leave, every session ends, the chain settles.
    stop_tx.send_replace(true);
    let workload = users.await.expect("the workload task");
    miner.await.expect("the miner task");
    end_every_session(&stack, &workload).await;
    let chain = stack.chain();
    chain
        .anvil_mine(Some(CONFIRMATIONS + 1), None)
        .await
        .unwrap();
    let sent = record.lock().unwrap().deposits.clone();
    let settled = poll_until(Duration::from_secs(60), async || {
        invariants::chain_checks(&stack.pg.url, &chain, &sent, CONFIRMATIONS)
            .await
            .is_some_and(|t| t.violations.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_secs_f64(ORPHAN_GRACE_SECS.min(5.0))).await;
    let mut last = checks(&stack, &record).await;
    last.absorb(
        invariants::chain_checks(&stack.pg.url, &chain, &sent, CONFIRMATIONS)
            .await
            .expect("the database and the chain answer"),
    );
    last.absorb(
        invariants::billed_time_checks(
            &stack.pg.url,
            BILLING_INTERVAL_SECS * 1000,
            &report.downtimes,
            &report.windows,
            3000,
        )
        .await
        .expect("the database answers"),
    );
    last.absorb(
        invariants::queue_order_checks(&stack.pg.url, &report.windows, 1000.0)
            .await
            .expect("the database answers"),
    );
    if !settled {
        eprintln!("chaos: deposits did not settle within 60 s");
    }
    report.tally.absorb(last);
    report.workload(&record.lock().unwrap());
    report.sessions(&stack.pg.url).await;
    report.print();

    let record = record.lock().unwrap();
    let failed = !report.tally.violations.is_empty() || !record.server_errors.is_empty();
    if failed {
        eprintln!("{}", stack.logs());
        stack.keep_logs(plan.seed);
    }
    assert!(
        report.tally.violations.is_empty(),
        "chaos: {} violations (seed {}):\n{}",
        report.tally.violations.len(),
        plan.seed,
        report.tally.violations.join("\n")
    );
    assert!(
        record.server_errors.is_empty(),
        "chaos: the gate answered 500 (seed {}):\n{}",
        plan.seed,
        record.server_errors.join("\n")
    );
}

/// One round of the checks that hold at any moment, plus orphans.
async fn checks(stack: &Stack, record: &Mutex<workload::Record>) -> Tally {
    let keys = record.lock().unwrap().admin_keys.clone();
    let mut tally = invariants::snapshot_checks(&stack.pg.url, &keys)
        .await
        .unwrap_or_default();
    if let Some(orphans) =
        invariants::orphan_checks(&stack.pg.url, &stack.hosts, ORPHAN_GRACE_SECS).await
    {
        tally.absorb(orphans);
    }
    tally
}

/// Ends what the users left running: each wallet stops its own, then the
/// operator stops the rest; waits until the database has no live session.
async fn end_every_session(stack: &Stack, workload: &Workload) {
    for (id, token) in workload.live_sessions() {
        if let Some(token) = token {
            let _ = stack
                .gate
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/v1/sessions/{id}"),
                    Some(&token),
                    None,
                )
                .await;
        }
    }
    let ended = poll_until(Duration::from_secs(60), async || {
        let (status, body) = stack
            .gate
            .call(
                reqwest::Method::GET,
                "/api/v1/admin/sessions",
                Some(STRONG_SECRET),
                None,
            )
            .await;
        let live: Vec<String> = body
            .as_array()
            .or_else(|| body["sessions"].as_array())
            .map(|list| {
                list.iter()
                    .filter(|s| s["state"] != "ended")
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for id in &live {
            let _ = stack
                .gate
                .call(
                    reqwest::Method::POST,
                    &format!("/api/v1/admin/sessions/{id}/stop"),
                    Some(STRONG_SECRET),
                    Some(Value::Null),
                )
                .await;
        }
        status == 200 && live.is_empty()
    })
    .await;
    assert!(
        ended,
        "sessions still live 60 s after the end\n{}",
        stack.logs()
    );
}
