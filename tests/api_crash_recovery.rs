//! `kill -9` of `deskgate serve` with sessions running, and a restart on the
//! same database (real PostgreSQL, Docker and an anvil node of its own): the
//! running sessions are adopted with their containers, nothing is charged
//! twice and the downtime is not charged at all, no container is left without
//! a live session, and no GPU is leased twice.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use deskgate::launcher::docker::{LABEL_SESSION, container_name};
use deskgate_actors::ports::SessionId;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};
use support::{container_exists, docker_cli, sleeper_image};

#[derive(diesel::QueryableByName, Debug)]
struct SessionRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    container_id: Option<String>,
    #[diesel(sql_type = Array<Integer>)]
    gpu_indices: Vec<i32>,
    #[diesel(sql_type = BigInt)]
    billed_credit: i64,
}

#[derive(diesel::QueryableByName, Debug)]
struct Debit {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
}

async fn connect(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap()
}

/// Every session the gate recorded.
async fn sessions(url: &str) -> Vec<SessionRow> {
    diesel::sql_query(
        "SELECT id::text AS id, state, container_id, gpu_indices, billed_credit \
         FROM sessions ORDER BY created_at",
    )
    .load(&mut connect(url).await)
    .await
    .unwrap()
}

fn row<'a>(rows: &'a [SessionRow], id: &str) -> &'a SessionRow {
    rows.iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no row for {id}: {rows:?}"))
}

/// The billing debits of one session: idempotency key and credit taken
/// from the wallet.
async fn debits(url: &str, session: &str) -> Vec<Debit> {
    diesel::sql_query(
        "SELECT t.idempotency_key AS key, (-e.amount)::int8 AS amount \
         FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id \
         WHERE t.kind = 'debit' AND t.reference = $1 AND e.account LIKE 'wallet:%' \
         ORDER BY t.id",
    )
    .bind::<Text, _>(format!("session:{session}"))
    .load(&mut connect(url).await)
    .await
    .unwrap()
}

/// Idempotency keys posted more than once (the UNIQUE constraint says none).
async fn repeated_keys(url: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        idempotency_key: String,
    }
    let keys: Vec<Key> = diesel::sql_query(
        "SELECT idempotency_key FROM ledger_txns GROUP BY idempotency_key HAVING count(*) > 1",
    )
    .load(&mut connect(url).await)
    .await
    .unwrap();
    keys.into_iter().map(|k| k.idempotency_key).collect()
}

/// Docker's full id of a session's container and when it started.
fn container_of(session: &str) -> (String, String) {
    let name = container_name(SessionId(session.parse().unwrap()));
    let out = docker_cli(&[
        "inspect",
        "--format",
        "{{.Id}} {{.State.StartedAt}} {{.State.Running}}",
        &name,
    ]);
    let mut parts = out.split_whitespace();
    let id = parts.next().unwrap().to_string();
    let started = parts.next().unwrap().to_string();
    assert_eq!(parts.next(), Some("true"), "{name} is not running: {out}");
    (id, started)
}

/// Session ids of every `deskgate.session` container, running or not.
fn labelled_containers() -> BTreeSet<String> {
    docker_cli(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={LABEL_SESSION}"),
        "--format",
        &format!("{{{{.Label \"{LABEL_SESSION}\"}}}}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn gpu_ids(session: &Value) -> Vec<u64> {
    session["gpu_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no gpu_ids: {session}"))
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect()
}

fn billed(session: &Value) -> i64 {
    session["billed_credit_seconds"]
        .as_i64()
        .unwrap_or_else(|| panic!("no billed_credit_seconds: {session}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_adopts_sessions_without_double_charge_orphans_or_double_leases() {
    const DOWNTIME: Duration = Duration::from_secs(5);
    let mut stage = Stage::start(
        "api_crash",
        &[
            ("DESKGATE_GPUS", "fake:2"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "120"),
        ],
    )
    .await;
    let db_url = stage.db.url.clone();
    let mut wallets = Vec::new();
    for _ in 0..3 {
        wallets.push(stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await);
    }
    let [a, b, c] = &wallets[..] else {
        unreachable!()
    };

    // Two sessions run, one GPU each, and are billed for a while.
    let a_claimed_at = Instant::now();
    let a_claim = stage.claim(a, "small").await;
    let b_claimed_at = Instant::now();
    let b_claim = stage.claim(b, "small").await;
    let running_twice = [(a, &a_claim, a_claimed_at), (b, &b_claim, b_claimed_at)];
    let mut before = Vec::new();
    for (token, claim, _) in running_twice {
        let seen = stage
            .gate
            .wait_for(&session_path(claim), token, Duration::from_secs(30), |s| {
                s["state"] == "running"
            })
            .await;
        before.push((seen, Instant::now()));
    }
    let ids = [
        a_claim["id"].as_str().unwrap().to_string(),
        b_claim["id"].as_str().unwrap().to_string(),
    ];
    let gpus_before = [gpu_ids(&before[0].0), gpu_ids(&before[1].0)];
    assert_ne!(gpus_before[0], gpus_before[1], "one GPU each");
    for (token, claim, _) in running_twice {
        stage
            .gate
            .wait_for(&session_path(claim), token, Duration::from_secs(10), |s| {
                s["billed_credit_seconds"].as_i64() >= Some(2)
            })
            .await;
    }
    let containers_before = [container_of(&ids[0]), container_of(&ids[1])];
    let rows = sessions(&db_url).await;
    for (id, (container, _)) in ids.iter().zip(&containers_before) {
        assert_eq!(
            row(&rows, id).container_id.as_deref(),
            Some(container.as_str())
        );
    }

    // kill -9, with both running. While the gate is down, a container that
    // no session owns appears (as a crash between launch and record leaves).
    let killed_at = Instant::now();
    stage.gate.kill_hard();
    let rows = sessions(&db_url).await;
    let billed_at_kill: Vec<i64> = ids.iter().map(|id| row(&rows, id).billed_credit).collect();
    let orphan = stage.cleanup.lock().unwrap().session();
    docker_cli(&[
        "run",
        "-d",
        "--name",
        &container_name(orphan),
        "--label",
        &format!("{LABEL_SESSION}={orphan}"),
        sleeper_image(),
    ]);
    // The gate stays down for a while: that time must not be billed.
    tokio::time::sleep(DOWNTIME.saturating_sub(killed_at.elapsed())).await;
    let restarted_at = Instant::now();
    stage.gate.restart().await;
    let ready_at = Instant::now();
    let gate = &stage.gate;

    // Adopted: the same sessions still run, on the same GPUs, in the same
    // containers (not restarted), billing resumed from what was committed.
    for (i, (token, claim, _)) in running_twice.into_iter().enumerate() {
        let (status, now) = gate.get(&session_path(claim), token).await;
        assert_eq!(status, 200, "{now}");
        assert_eq!(now["state"], "running", "adopted: {now}\n{}", gate.output());
        assert_eq!(gpu_ids(&now), gpus_before[i], "{now}");
        assert!(billed(&now) >= billed_at_kill[i], "{now}");
        assert_eq!(
            container_of(&ids[i]),
            containers_before[i],
            "same container"
        );
    }
    let rows = sessions(&db_url).await;
    for (i, (id, (container, _))) in ids.iter().zip(&containers_before).enumerate() {
        let r = row(&rows, id);
        assert_eq!(r.state, "running", "{r:?}");
        assert_eq!(r.container_id.as_deref(), Some(container.as_str()));
        let held: Vec<u64> = r.gpu_indices.iter().map(|&g| g as u64).collect();
        assert_eq!(held, gpus_before[i], "{r:?}");
    }

    // No orphan: the stray container is gone, and every session container
    // of this gate belongs to a live session.
    assert!(
        !container_exists(&container_name(orphan)),
        "the orphan container was not removed\n{}",
        gate.output()
    );
    let known: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    let ours: BTreeSet<String> = labelled_containers()
        .into_iter()
        .filter(|s| known.contains(s) || *s == orphan.to_string())
        .collect();
    assert_eq!(
        ours,
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "session containers after the restart"
    );

    // No GPU leased twice: both are held, so a third claim waits.
    let c_claim = stage.claim(c, "small").await;
    assert_eq!(c_claim["state"], "queued", "{c_claim}");
    let c_path = session_path(&c_claim);
    let c_queued = gate
        .wait_for(&c_path, c, Duration::from_secs(10), |s| {
            s["queue_position"].as_u64() == Some(1) && s["eta_seconds"].is_u64()
        })
        .await;
    assert_eq!(c_queued["state"], "queued", "{c_queued}");
    assert!(gpu_ids(&c_queued).is_empty(), "{c_queued}");
    let small = gate.profile("small").await;
    assert_eq!(small["free"], false, "{small}");

    // Billing goes on after the restart.
    let a_path = session_path(&a_claim);
    let b_path = session_path(&b_claim);
    let a_resumed = billed_at_kill[0];
    gate.wait_for(&a_path, a, Duration::from_secs(10), |s| {
        s["billed_credit_seconds"].as_i64() >= Some(a_resumed + 2)
    })
    .await;

    // A stops: C gets A's GPU, never B's.
    let (status, _) = gate.delete(&a_path, a).await;
    let a_stopped_at = Instant::now();
    assert_eq!(status, 200);
    let c_running = gate
        .wait_for(&c_path, c, Duration::from_secs(30), |s| {
            s["state"] == "running"
        })
        .await;
    assert_eq!(gpu_ids(&c_running), gpus_before[0], "{c_running}");
    let (status, _) = gate.delete(&b_path, b).await;
    let b_stopped_at = Instant::now();
    assert_eq!(status, 200);
    let (status, _) = gate.delete(&c_path, c).await;
    assert_eq!(status, 200);

    // No double charge: each session's debits are one per interval, under
    // distinct keys, and sum to what it was billed; the downtime is not
    // billed (running time is at most the time the gate was up).
    let stopped_at = [a_stopped_at, b_stopped_at];
    for (i, (token, claim, claimed_at)) in running_twice.into_iter().enumerate() {
        let ended = gate
            .wait_for(&session_path(claim), token, Duration::from_secs(10), |s| {
                s["state"] == "ended"
            })
            .await;
        assert_eq!(ended["end_reason"]["kind"], "user_stopped", "{ended}");
        let billed = billed(&ended);
        let debits = debits(&db_url, &ids[i]).await;
        assert_eq!(
            debits.iter().map(|d| d.amount).sum::<i64>(),
            billed,
            "{debits:?}"
        );
        let intervals: Vec<u64> = debits
            .iter()
            .map(|d| {
                let prefix = format!("debit:{}:", ids[i]);
                d.key
                    .strip_prefix(&prefix)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected key {}", d.key))
            })
            .collect();
        assert_eq!(
            intervals,
            (0..debits.len() as u64).collect::<Vec<_>>(),
            "each interval billed once, in order"
        );
        let (_, account) = gate.get("/api/v1/account", token).await;
        assert_eq!(account["credit_seconds"], 3600 - billed, "{account}");
        let up = (killed_at - claimed_at) + (stopped_at[i] - restarted_at);
        let surely_up = (killed_at - before[i].1) + (stopped_at[i] - ready_at);
        eprintln!(
            "session {i}: billed {billed} s; up at most {:.2} s, surely running {:.2} s, down {:.2} s",
            up.as_secs_f64(),
            surely_up.as_secs_f64(),
            (restarted_at - killed_at).as_secs_f64()
        );
        assert!(
            billed as f64 <= up.as_secs_f64() + 1.0,
            "billed {billed} s but the gate was up only {up:?} of its life \
             ({DOWNTIME:?} down); the downtime was billed"
        );
        assert!(
            billed as f64 >= surely_up.as_secs_f64() - 2.0,
            "billed {billed} s for at least {surely_up:?} of running"
        );
    }
    assert_eq!(repeated_keys(&db_url).await, Vec::<String>::new());
    let c_ended = gate
        .wait_for(&c_path, c, Duration::from_secs(10), |s| {
            s["state"] == "ended"
        })
        .await;
    assert_eq!(
        debits(&db_url, c_claim["id"].as_str().unwrap())
            .await
            .iter()
            .map(|d| d.amount)
            .sum::<i64>(),
        billed(&c_ended)
    );
    for id in &ids {
        assert!(!container_exists(&container_name(SessionId(
            id.parse().unwrap()
        ))));
    }

    stage.finish().await;
}
