//! Contention over the real API: thousands of wallets signed in and credited,
//! claims for mixed profiles over HTTP, an events WebSocket per claim, and
//! sessions stopped one by one while the rest wait, against a gate on real
//! PostgreSQL. Prints, in one run:
//!
//! - claims/s accepted over HTTP and claim latency p50/p99;
//! - release → grant: from sending a `DELETE` of a running session to the
//!   next waiter's `state` event on its socket, p50/p99;
//! - position-update delivery: from that `DELETE` to each waiter's `queue`
//!   event, p99 across all waiters;
//! - the gate's resident memory per waiting claim, its socket included;
//! - FIFO/backfill violations, checked from PostgreSQL's lease history, not
//!   from the gate's answers (must be 0; the run fails otherwise);
//! - beside them, measured in the same run on the same machine: the actor
//!   tree on in-memory ports (`actors/benches/tree.rs`) and PostgreSQL's own
//!   single-row commit rate (`pgbench -c1 -T5`), as ratios.
//!
//! By default it starts its own gate on the **simulated launcher backend**
//! (64 fake GPUs, nothing started: Docker is out of the measurement), a
//! scratch database and an anvil node, with rate and connection limits
//! raised for one client address. `--gate URL` points it at a running gate
//! instead; the admin token comes from `DESKGATE_BENCH_ADMIN_TOKEN` (never
//! the command line), `--database-url` enables the order check and
//! `--gate-pid` the memory figure. That gate must allow this client's
//! sign-in and claim rates and connection count (a 429 or a refused socket
//! stops the run and names the setting).
//!
//! ```text
//! cargo bench --bench api_contention -- [--waiters N] [--concurrency C]
//!     [--releases R] [--seed S] [--gate URL [--database-url URL] [--gate-pid PID]]
//! ```
//!
//! Invariants: every wallet claims once; a release is a sample only if a
//! waiter was granted after it and before the next release; nothing here
//! retries a failed request (a failure ends the run with the gate's answer).

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "../actors/benches/tree_core/mod.rs"]
mod tree_core;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use support::api::{GateClient, GateProcess, session_env, set_env};
use support::{OwnAnvil, STRONG_SECRET, ScratchDatabase, free_port};
use tree_core::{percentile, resident_bytes};

/// Fake GPUs of the self-started gate (one simulated host).
const GPUS: usize = 64;
/// Credit each wallet gets: far more than the run bills.
const CREDIT_SECONDS: i64 = 10_000_000;
/// Profiles claimed, with their GPUs and weights out of 100.
const MIX: [(&str, usize, u32); 4] = [
    ("small", 1, 70),
    ("medium", 2, 20),
    ("large", 4, 8),
    ("max", 8, 2),
];
/// How long a release may wait for its grant before it counts as one that
/// granted nothing (the head needs more GPUs than are free).
const GRANT_WAIT: Duration = Duration::from_secs(2);
/// A release's position updates are over once none arrived for this long.
const SETTLE: Duration = Duration::from_millis(300);
/// Grants recorded closer than this are not ordered by the order check.
const ORDER_TOLERANCE_MS: f64 = 250.0;

struct Options {
    gate: Option<String>,
    database_url: Option<String>,
    gate_pid: Option<u32>,
    waiters: usize,
    concurrency: usize,
    releases: usize,
    seed: u64,
}

fn options() -> Options {
    let mut o = Options {
        gate: None,
        database_url: None,
        gate_pid: None,
        waiters: 10_000,
        concurrency: 64,
        releases: 200,
        seed: rand::random(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--bench" => {}
            "--gate" => o.gate = Some(value("--gate").trim_end_matches('/').to_string()),
            "--database-url" => o.database_url = Some(value("--database-url")),
            "--gate-pid" => o.gate_pid = Some(number(&value("--gate-pid"), "--gate-pid")),
            "--waiters" => o.waiters = number(&value("--waiters"), "--waiters"),
            "--concurrency" => o.concurrency = number(&value("--concurrency"), "--concurrency"),
            "--releases" => o.releases = number(&value("--releases"), "--releases"),
            "--seed" => o.seed = number(&value("--seed"), "--seed"),
            other => {
                panic!("unknown argument {other}; see the header of benches/api_contention.rs")
            }
        }
    }
    assert!(o.concurrency > 0, "--concurrency must be at least 1");
    o
}

fn number<T: std::str::FromStr>(text: &str, name: &str) -> T {
    text.parse()
        .unwrap_or_else(|_| panic!("{name} takes a number, not {text}"))
}

/// The gate under test: one this run started, or one somebody else runs.
struct Target {
    client: GateClient,
    admin_token: String,
    database_url: Option<String>,
    pid: Option<u32>,
    /// What started it, kept alive until the end.
    own: Option<(GateProcess, OwnAnvil, ScratchDatabase)>,
}

async fn target(o: &Options) -> Target {
    if let Some(base) = &o.gate {
        let admin_token = std::env::var("DESKGATE_BENCH_ADMIN_TOKEN").unwrap_or_else(|_| {
            panic!("--gate needs the gate's admin token in DESKGATE_BENCH_ADMIN_TOKEN (for credit)")
        });
        return Target {
            client: GateClient::new(base),
            admin_token,
            database_url: o.database_url.clone(),
            pid: o.gate_pid,
            own: None,
        };
    }
    let anvil = OwnAnvil::start();
    let db = ScratchDatabase::migrated("api_contention_bench").await;
    let port = free_port();
    let mut env = session_env(port, &db.url, &anvil.url, Address::repeat_byte(0x7a));
    let many = (o.waiters * 4 + 1024).to_string();
    for (key, value) in [
        ("DESKGATE_LAUNCHER_BACKEND", "simulated".to_string()),
        ("DESKGATE_GPUS", format!("fake:{GPUS}")),
        ("DESKGATE_ADMIN_TOKEN", STRONG_SECRET.to_string()),
        ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "3600".to_string()),
        // One client address plays every browser: the highest rates the gate
        // takes, and bursts that hold every request of the run.
        ("DESKGATE_SIGN_IN_RATE_PER_MINUTE", "100000".to_string()),
        ("DESKGATE_SIGN_IN_RATE_BURST", many.clone()),
        ("DESKGATE_CLAIM_RATE_PER_MINUTE", "100000".to_string()),
        ("DESKGATE_CLAIM_RATE_BURST", many.clone()),
        ("DESKGATE_MAX_CONNECTIONS", many.clone()),
        ("DESKGATE_MAX_CONNECTIONS_PER_CLIENT", many),
        ("RUST_LOG", "warn".to_string()),
    ] {
        set_env(&mut env, key, value);
    }
    let gate = GateProcess::start(port, env).await;
    Target {
        client: (*gate).clone(),
        admin_token: STRONG_SECRET.to_string(),
        database_url: Some(db.url.clone()),
        pid: Some(gate.pid()),
        own: Some((gate, anvil, db)),
    }
}

/// One wallet of the run and its claim.
struct Wallet {
    token: String,
    session: String,
}

/// Runs `work(i)` for every `i` in `0..n` on `concurrency` tasks; returns
/// each call's result in order and the wall time.
async fn fan_out<T, F, Fut>(n: usize, concurrency: usize, work: F) -> (Vec<T>, Duration)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.min(n.max(1)) {
        let (work, next) = (work.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return done;
                }
                done.push((i, work(i).await));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.expect("a worker panicked"));
    }
    all.sort_by_key(|(i, _)| *i);
    (all.into_iter().map(|(_, t)| t).collect(), started.elapsed())
}

/// What a socket saw, stamped when it was read.
struct Seen {
    claim: usize,
    at: Instant,
    kind: Kind,
}

enum Kind {
    /// A `state` event naming a state.
    State(String),
    /// A `queue` event (a new position or ETA).
    Queue,
}

/// Only what the benchmark reads of an event.
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    state: Option<&'a str>,
}

/// A client socket as lean as a browser's: 4 KiB read buffer, writes sent
/// at once.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens the events socket of `wallet`'s claim and reads it until it
/// closes, sending what it sees to `seen`.
async fn watch(
    client: &GateClient,
    claim: usize,
    wallet: &Wallet,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<(), String> {
    let url = format!(
        "{}/api/v1/sessions/{}/events",
        client.base.replacen("http", "ws", 1),
        wallet.session
    );
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {}", wallet.token).parse().unwrap(),
    );
    headers.insert("origin", client.base.parse().unwrap());
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(socket_config()), false)
            .await
            .map_err(|e| format!("events socket of claim {claim}: {e}"))?;
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let at = Instant::now();
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<Event>(&text) else {
                continue;
            };
            let kind = match (event.kind, event.state) {
                ("state", Some(state)) => Kind::State(state.to_string()),
                ("queue", _) => Kind::Queue,
                _ => continue,
            };
            if seen.send(Seen { claim, at, kind }).is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn goal(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Explains a refused request in terms of the gate's settings.
fn refused(what: &str, status: u16, body: &serde_json::Value) -> String {
    let hint = match status {
        429 => {
            " (raise the gate's DESKGATE_SIGN_IN_RATE_* / DESKGATE_CLAIM_RATE_* for this client)"
        }
        401 | 403 => " (is DESKGATE_BENCH_ADMIN_TOKEN the gate's admin token?)",
        _ => "",
    };
    format!("{what}: {status} {body}{hint}")
}

/// PostgreSQL's own single-row commit rate: `pgbench -c1 -T5` of one
/// INSERT per transaction into a table of its own in `url`'s database.
async fn pgbench_commits_per_sec(url: &str) -> Result<f64, String> {
    let bin = ["pgbench"]
        .into_iter()
        .map(String::from)
        .chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|d| d.path().join("bin/pgbench").display().to_string()),
        )
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .ok_or("pgbench not found (Debian: postgresql-client)")?;
    let mut conn =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(url)
            .await
            .map_err(|e| e.to_string())?;
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS bench_commit (id bigint, at timestamptz DEFAULT now())",
        ),
        &mut conn,
    )
    .await
    .map_err(|e| e.to_string())?;
    let script = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(
        script.path(),
        "\\set id random(1, 1000000000)\nINSERT INTO bench_commit (id) VALUES (:id);\n",
    )
    .map_err(|e| e.to_string())?;
    let out = Command::new(bin)
        .args(["-n", "-c", "1", "-T", "5", "-f"])
        .arg(script.path())
        .arg(url)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("pgbench: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

async fn run(o: Options) -> bool {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("api_contention: could not raise the open-file limit: {e}");
    }
    println!(
        "api_contention: seed {}, {} waiting claims wanted, {} concurrent clients, {} releases",
        o.seed, o.waiters, o.concurrency, o.releases
    );

    // Peers first, while this process is small and the machine quiet.
    let tree = tree_core::measure().await;
    println!(
        "peer: in-process actor tree ({} waiters, {} GPUs): {:.0} claims/s, release→grant p50 {:.0} µs p99 {:.0} µs max {:.0} µs, position fan-out to every waiter p50 {:.1} ms max {:.1} ms, {:.0} bytes per waiting claim",
        tree_core::WAITERS,
        tree.gpus,
        tree.claims_per_sec,
        tree.grant_p50.as_secs_f64() * 1e6,
        tree.grant_p99.as_secs_f64() * 1e6,
        tree.grant_max.as_secs_f64() * 1e6,
        ms(tree.fanout_p50),
        ms(tree.fanout_max),
        tree.bytes_per_waiter
    );

    let target = target(&o).await;
    let client = target.client.clone();
    let pgbench = match &target.database_url {
        Some(url) => pgbench_commits_per_sec(url).await,
        None => Err("no --database-url".to_string()),
    };
    match &pgbench {
        Ok(tps) => println!("peer: pgbench -c1 -T5, one INSERT per commit: {tps:.0} commits/s"),
        Err(e) => println!("peer: pgbench not run: {e}"),
    }
    println!(
        "gate: {} ({})",
        client.base,
        if target.own.is_some() {
            "started here: simulated launcher, 64 fake GPUs, real PostgreSQL"
        } else {
            "given"
        }
    );

    // Wallets: enough to fill the started gate's GPUs, then `waiters` more
    // (a given gate with more GPUs keeps fewer waiting; the figures say how many).
    let mut rng = StdRng::seed_from_u64(o.seed);
    let count = o.waiters + GPUS;
    let plan: Vec<(&'static str, usize)> = (0..count)
        .map(|_| {
            let mut roll = rng.random_range(0..100);
            MIX.iter()
                .find(|(_, _, weight)| {
                    if roll < *weight {
                        return true;
                    }
                    roll -= weight;
                    false
                })
                .map(|(name, gpus, _)| (*name, *gpus))
                .unwrap()
        })
        .collect();

    let c = client.clone();
    let (signed, took) = fan_out(count, o.concurrency, move |_| {
        let c = c.clone();
        async move {
            let signer = PrivateKeySigner::random();
            let token = c.sign_in(&signer).await;
            (signer, token)
        }
    })
    .await;
    println!(
        "setup: {count} wallets signed in in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    let (c, admin, addresses) = (
        client.clone(),
        target.admin_token.clone(),
        Arc::new(signed.iter().map(|(s, _)| s.address()).collect::<Vec<_>>()),
    );
    let run_id = o.seed;
    let (credited, took) = fan_out(count, o.concurrency, move |i| {
        let (c, admin, addresses) = (c.clone(), admin.clone(), addresses.clone());
        async move {
            let body = json!({
                "address": addresses[i], "amount": CREDIT_SECONDS,
                "reason": "contention benchmark", "idempotency_key": format!("bench-{run_id}-{i}"),
            });
            let (status, answer) = c
                .call(
                    reqwest::Method::POST,
                    "/api/v1/admin/credit",
                    Some(&admin),
                    Some(body),
                )
                .await;
            (status == 200)
                .then_some(())
                .ok_or_else(|| refused("admin credit", status, &answer))
        }
    })
    .await;
    if let Some(Err(e)) = credited.into_iter().find(Result::is_err) {
        panic!("{e}");
    }
    println!(
        "setup: {count} wallets credited in {:.1} s",
        took.as_secs_f64()
    );

    // Claims, as fast as `concurrency` clients can send them.
    let rss_before = target.pid.and_then(|pid| resident_bytes(&pid.to_string()));
    let tokens = Arc::new(signed.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>());
    let (c, t, p) = (client.clone(), tokens.clone(), Arc::new(plan.clone()));
    let (claims, took) = fan_out(count, o.concurrency, move |i| {
        let (c, t, p) = (c.clone(), t.clone(), p.clone());
        async move {
            let started = Instant::now();
            let (status, body) = c
                .post(
                    "/api/v1/sessions",
                    Some(&t[i]),
                    json!({ "profile": p[i].0 }),
                )
                .await;
            let latency = started.elapsed();
            if status != 202 {
                return Err(refused("claim", status, &body));
            }
            Ok((
                body["id"].as_str().unwrap_or_default().to_string(),
                body["state"] == "queued",
                latency,
            ))
        }
    })
    .await;
    let mut wallets = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    let mut waiting = BTreeSet::new();
    let mut running = Vec::new();
    for (i, ((_, token), claim)) in signed.into_iter().zip(claims).enumerate() {
        let (session, queued, latency) = claim.unwrap_or_else(|e| panic!("{e}"));
        latencies.push(latency);
        if queued {
            waiting.insert(i);
        } else {
            running.push(i);
        }
        wallets.push(Wallet { token, session });
    }
    latencies.sort();
    let claims_per_sec = count as f64 / took.as_secs_f64();
    println!(
        "claims: {count} accepted over HTTP in {:.2} s: {claims_per_sec:.0} claims/s (goal >= 2000: {}); latency p50 {:.1} ms, p99 {:.1} ms; {} running, {} waiting",
        took.as_secs_f64(),
        goal(claims_per_sec >= 2000.0),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        running.len(),
        waiting.len()
    );

    // An events socket per claim.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let wallets = Arc::new(wallets);
    let (c, w) = (client.clone(), wallets.clone());
    let (opened, took) = fan_out(count, o.concurrency, move |i| {
        let (c, w, tx) = (c.clone(), w.clone(), seen_tx.clone());
        async move { watch(&c, i, &w[i], tx).await }
    })
    .await;
    if let Some(Err(e)) = opened.into_iter().find(Result::is_err) {
        panic!(
            "{e} (a gate of your own needs DESKGATE_MAX_CONNECTIONS[_PER_CLIENT] above {count})"
        );
    }
    println!(
        "sockets: {count} events sockets open in {:.1} s",
        took.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    while seen.try_recv().is_ok() {}
    let rss_after = target.pid.and_then(|pid| resident_bytes(&pid.to_string()));
    match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            let per = after.saturating_sub(before) as f64 / count as f64;
            println!(
                "memory: gate resident {:.1} MiB before the claims, {:.1} MiB with {count} claims and sockets ({} waiting): {:.1} KiB per claim (goal <= 64 KiB: {})",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                waiting.len(),
                per / 1024.0,
                goal(per <= 65536.0)
            );
        }
        _ => println!("memory: not measured (give --gate-pid for a gate on this machine)"),
    }

    // Releases: stop a random running session; time the next grant and
    // every waiter's new position.
    let mut grants = Vec::new();
    let mut deliveries = Vec::new();
    let mut blocked = 0;
    for _ in 0..o.releases {
        if running.is_empty() {
            break;
        }
        let victim = running.swap_remove(rng.random_range(0..running.len()));
        let path = format!("/api/v1/sessions/{}", wallets[victim].session);
        let t0 = Instant::now();
        let (status, body) = client
            .call(
                reqwest::Method::DELETE,
                &path,
                Some(&wallets[victim].token),
                None,
            )
            .await;
        assert!(status < 300, "{}", refused("stop", status, &body));
        let mut granted = false;
        let mut last = Instant::now();
        let deadline = t0 + GRANT_WAIT;
        loop {
            let wait_until = if granted { last + SETTLE } else { deadline };
            let Ok(Some(event)) = tokio::time::timeout_at(wait_until.into(), seen.recv()).await
            else {
                break;
            };
            match event.kind {
                Kind::State(state) if state != "queued" && waiting.remove(&event.claim) => {
                    if !granted {
                        grants.push(event.at - t0);
                    }
                    granted = true;
                    running.push(event.claim);
                    last = event.at;
                }
                Kind::Queue if waiting.contains(&event.claim) => {
                    deliveries.push(event.at - t0);
                    last = event.at;
                }
                _ => {}
            }
        }
        if !granted {
            blocked += 1;
        }
    }
    grants.sort();
    deliveries.sort();
    let p99 = percentile(&grants, 0.99);
    println!(
        "release→grant: {} samples ({blocked} of {} releases granted nothing: the head needed more GPUs), {} waiting: p50 {:.1} ms, p99 {:.1} ms (goal <= 50 ms: {}), max {:.1} ms",
        grants.len(),
        grants.len() + blocked,
        waiting.len(),
        ms(percentile(&grants, 0.5)),
        ms(p99),
        goal(!grants.is_empty() && p99 <= Duration::from_millis(50)),
        ms(grants.last().copied().unwrap_or_default()),
    );
    println!(
        "position updates: {} delivered to waiters after releases: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        deliveries.len(),
        ms(percentile(&deliveries, 0.5)),
        ms(percentile(&deliveries, 0.99)),
        ms(deliveries.last().copied().unwrap_or_default()),
    );

    // The order, from PostgreSQL.
    let mut clean = true;
    match &target.database_url {
        Some(url) => {
            let lines =
                support::queue_order::queue_order_violations(url, |_| false, ORDER_TOLERANCE_MS)
                    .await
                    .expect("the database answers the order check");
            clean = lines.is_empty();
            println!(
                "violations: {} FIFO/backfill violations over {count} claims (from sessions and session_leases)",
                lines.len()
            );
            for line in lines.iter().take(10) {
                println!("  {line}");
            }
        }
        None => println!("violations: not checked (give --database-url)"),
    }

    let mut by_profile: HashMap<&str, usize> = HashMap::new();
    for (profile, _) in &plan {
        *by_profile.entry(profile).or_default() += 1;
    }
    println!(
        "mix: {} small, {} medium, {} large, {} max",
        by_profile.get("small").unwrap_or(&0),
        by_profile.get("medium").unwrap_or(&0),
        by_profile.get("large").unwrap_or(&0),
        by_profile.get("max").unwrap_or(&0),
    );
    println!(
        "ratios: claims/s over HTTP ÷ in-process tree {:.3}; release→grant p99 over HTTP ÷ tree {:.0}×{}",
        claims_per_sec / tree.claims_per_sec,
        p99.as_secs_f64() / tree.grant_p99.as_secs_f64().max(1e-9),
        match &pgbench {
            Ok(tps) => format!(
                "; claims/s ÷ pgbench single-row commits/s {:.2}",
                claims_per_sec / tps
            ),
            Err(_) => String::new(),
        }
    );

    if let Some((gate, _anvil, db)) = target.own {
        drop(gate);
        db.drop_it().await;
    }
    clean
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clean = runtime.block_on(run(options()));
    if !clean {
        eprintln!("api_contention: the queue order was broken (see above)");
        std::process::exit(1);
    }
}
