//! Contention, credit exhaustion and presence over real HTTP against
//! `deskgate serve` (real PostgreSQL, Docker and an anvil node of its own),
//! with wallets that sign in with real keys and pay in ETH:
//!
//! - on two GPUs, five wallets: two run, three wait at positions 1–3 with
//!   ETAs; a release grants the head and moves the others up, a cancel moves
//!   everyone behind it, live over their events sockets;
//! - a session stops when its credit runs out, at the computed moment, not at
//!   the next billing interval;
//! - a session whose browser stops proving presence stops after the presence
//!   timeout, while one with an open events socket keeps running.

mod support;

use std::time::{Duration, Instant};

use deskgate::launcher::docker::container_name;
use deskgate_actors::ports::SessionId;
use serde_json::Value;
use support::api::{Events, GateProcess, ONE_GPU_HOUR_WEI, Stage, session_path};
use support::container_exists;

/// Credit of one GPU-hour: what [`ONE_GPU_HOUR_WEI`] buys at the default price.
const ONE_GPU_HOUR: i64 = 3600;

fn is_state(event: &Value, state: &str) -> bool {
    event["type"] == "state" && event["state"] == state
}

fn is_queue_at(event: &Value, position: u64) -> bool {
    event["type"] == "queue" && event["position"].as_u64() == Some(position)
}

fn eta(body: &Value) -> u64 {
    body["eta_seconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ETA: {body}"))
}

/// Opens the events socket of a claimed session.
async fn open(gate: &GateProcess, claimed: &Value, token: &str) -> Events {
    gate.events(claimed["id"].as_str().unwrap(), token).await
}

/// Waits until the queued session at `path` reports `position` with an ETA;
/// returns its body.
async fn queued_at(stage: &Stage, path: &str, token: &str, position: u64) -> Value {
    stage
        .gate
        .wait_for(path, token, Duration::from_secs(10), |s| {
            s["state"] == "queued"
                && s["queue_position"].as_u64() == Some(position)
                && s["eta_seconds"].is_u64()
        })
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gpus_five_wallets_two_run_three_queue_and_release_and_cancel_move_the_queue_live() {
    let stage = Stage::start(
        "api_contention",
        &[
            ("DESKGATE_GPUS", "fake:2"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "120"),
        ],
    )
    .await;
    let gate = &stage.gate;
    let mut wallets = Vec::new();
    for _ in 0..5 {
        wallets.push(stage.funded_wallet(ONE_GPU_HOUR_WEI, ONE_GPU_HOUR).await);
    }
    let [a, b, c, d, e] = &wallets[..] else {
        unreachable!()
    };

    // Two claims take the two GPUs, one each.
    let a_claim = stage.claim(a, "small").await;
    let b_claim = stage.claim(b, "small").await;
    let (a_path, b_path) = (session_path(&a_claim), session_path(&b_claim));
    let running = |s: &Value| s["state"] == "running";
    let a_running = gate
        .wait_for(&a_path, a, Duration::from_secs(30), running)
        .await;
    let b_running = gate
        .wait_for(&b_path, b, Duration::from_secs(30), running)
        .await;
    let mut held: Vec<u64> = [&a_running, &b_running]
        .iter()
        .flat_map(|s| s["gpu_ids"].as_array().unwrap().clone())
        .map(|g| g.as_u64().unwrap())
        .collect();
    held.sort_unstable();
    assert_eq!(
        held,
        [0, 1],
        "one distinct GPU each: {a_running} {b_running}"
    );

    // Three more wait, at positions 1, 2, 3 in claim order, each with an ETA.
    let mut queued = Vec::new();
    for token in [c, d, e] {
        let claimed = stage.claim(token, "small").await;
        assert_eq!(claimed["state"], "queued", "{claimed}");
        queued.push(claimed);
    }
    let [c_claim, d_claim, e_claim] = &queued[..] else {
        unreachable!()
    };
    let (c_path, d_path, e_path) = (
        session_path(c_claim),
        session_path(d_claim),
        session_path(e_claim),
    );
    let c_queued = queued_at(&stage, &c_path, c, 1).await;
    let d_queued = queued_at(&stage, &d_path, d, 2).await;
    let e_queued = queued_at(&stage, &e_path, e, 3).await;
    // Upper bounds from the credit: each running session ends within its
    // wallet's hour, so the first two waiters start within the hour; the
    // third waits for one of them to end too, which is more than an hour
    // (neither can end before it started) and at most two.
    let hour = ONE_GPU_HOUR as u64;
    assert!(eta(&c_queued) <= hour, "{c_queued}");
    assert!(eta(&d_queued) <= hour, "{d_queued}");
    assert!(
        eta(&e_queued) > hour && eta(&e_queued) <= 2 * hour,
        "{e_queued}"
    );
    assert!(c_queued["gpu_ids"].as_array().unwrap().is_empty());
    let small = gate.profile("small").await;
    assert_eq!(
        (small["free"].clone(), small["queued"].clone()),
        (false.into(), 3.into()),
        "{small}"
    );

    // Each waiter's socket opens on its state and place in the queue.
    let mut c_events = open(gate, c_claim, c).await;
    let mut d_events = open(gate, d_claim, d).await;
    let mut e_events = open(gate, e_claim, e).await;
    for (events, position) in [(&mut c_events, 1), (&mut d_events, 2), (&mut e_events, 3)] {
        let first = events
            .next_before(Instant::now() + Duration::from_secs(5))
            .await
            .expect("a first event");
        assert!(is_state(&first, "queued"), "{first}");
        assert_eq!(first["queue_position"].as_u64(), Some(position), "{first}");
        assert!(first["eta_seconds"].is_u64(), "{first}");
    }

    // A release grants the head A's GPU; the others move up to 1 and 2.
    let a_gpus = a_running["gpu_ids"].clone();
    let (status, stopped) = gate.delete(&a_path, a).await;
    assert_eq!(status, 200, "{stopped}");
    c_events
        .wait_for("the head's grant", Duration::from_secs(15), |ev| {
            is_state(ev, "launching") || is_state(ev, "running")
        })
        .await;
    d_events
        .wait_for("position 1", Duration::from_secs(10), |ev| {
            is_queue_at(ev, 1)
        })
        .await;
    e_events
        .wait_for("position 2", Duration::from_secs(10), |ev| {
            is_queue_at(ev, 2)
        })
        .await;
    let c_running = gate
        .wait_for(&c_path, c, Duration::from_secs(30), running)
        .await;
    assert_eq!(c_running["gpu_ids"], a_gpus, "the head got the freed GPU");
    let a_ended = gate
        .wait_for(&a_path, a, Duration::from_secs(10), |s| {
            s["state"] == "ended"
        })
        .await;
    assert_eq!(a_ended["end_reason"]["kind"], "user_stopped", "{a_ended}");
    queued_at(&stage, &d_path, d, 1).await;
    queued_at(&stage, &e_path, e, 2).await;

    // A's wallet claims again and queues last, at 3.
    let a_again = stage.claim(a, "small").await;
    let a_again_path = session_path(&a_again);
    queued_at(&stage, &a_again_path, a, 3).await;
    let mut a_events = open(gate, &a_again, a).await;
    a_events
        .wait_for("its place", Duration::from_secs(5), |ev| {
            is_state(ev, "queued") && ev["queue_position"].as_u64() == Some(3)
        })
        .await;

    // The head cancels: everyone behind it moves up, live.
    let (status, cancelled) = gate.delete(&d_path, d).await;
    assert_eq!(status, 200, "{cancelled}");
    let d_end = d_events
        .wait_for("the cancel", Duration::from_secs(10), |ev| {
            is_state(ev, "ended")
        })
        .await;
    assert_eq!(d_end["reason"]["kind"], "user_stopped", "{d_end}");
    e_events
        .wait_for("position 1", Duration::from_secs(10), |ev| {
            is_queue_at(ev, 1)
        })
        .await;
    a_events
        .wait_for("position 2", Duration::from_secs(10), |ev| {
            is_queue_at(ev, 2)
        })
        .await;
    let e_now = queued_at(&stage, &e_path, e, 1).await;
    let a_now = queued_at(&stage, &a_again_path, a, 2).await;
    assert!(e_now["eta_seconds"].is_u64() && a_now["eta_seconds"].is_u64());
    let (status, d_ended) = gate.get(&d_path, d).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            d_ended["state"].as_str(),
            d_ended["end_reason"]["kind"].as_str()
        ),
        (Some("ended"), Some("user_stopped")),
        "{d_ended}"
    );
    assert_eq!(
        d_ended["billed_credit_seconds"], 0,
        "never ran, never billed"
    );
    // Nobody moved into a GPU: B and C still hold the two.
    let (_, b_now) = gate.get(&b_path, b).await;
    let (_, c_now) = gate.get(&c_path, c).await;
    assert_eq!(
        (b_now["state"].as_str(), c_now["state"].as_str()),
        (Some("running"), Some("running"))
    );

    drop((a_events, c_events, d_events, e_events));
    stage.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_claim_answers_its_queue_position_and_eta() {
    let stage = Stage::start(
        "api_claim_answer",
        &[
            ("DESKGATE_GPUS", "fake:1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "120"),
        ],
    )
    .await;
    let first = stage.funded_wallet(ONE_GPU_HOUR_WEI, ONE_GPU_HOUR).await;
    let second = stage.funded_wallet(ONE_GPU_HOUR_WEI, ONE_GPU_HOUR).await;
    let running = stage.claim(&first, "small").await;
    stage
        .gate
        .wait_for(
            &session_path(&running),
            &first,
            Duration::from_secs(30),
            |s| s["state"] == "running",
        )
        .await;

    // DESIGN §6: the 202 is `{id, state, queue_position, eta_seconds}`; a
    // claim that has to wait is told where it stands at once.
    let claimed = stage.claim(&second, "small").await;
    assert_eq!(claimed["state"], "queued", "{claimed}");
    let later = queued_at(&stage, &session_path(&claimed), &second, 1).await;
    assert_eq!(
        (
            claimed["queue_position"].as_u64(),
            claimed["eta_seconds"].is_u64()
        ),
        (Some(1), true),
        "the claim's answer (a read moments later says {later})"
    );

    stage.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn credit_exhaustion_stops_the_session_when_the_credit_runs_out() {
    // One wei buys one credit-second; debits every 4 s.
    const CREDIT: i64 = 6;
    const INTERVAL_SECS: u64 = 4;
    let stage = Stage::start(
        "api_credit_out",
        &[
            ("DESKGATE_PRICE_WEI_PER_GPU_HOUR", "3600"),
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "4"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "120"),
        ],
    )
    .await;
    let gate = &stage.gate;
    let token = stage.funded_wallet(CREDIT as u64, CREDIT).await;

    let claimed_at = Instant::now();
    let claimed = stage.claim(&token, "small").await;
    let id = claimed["id"].as_str().unwrap();
    let mut events: Events = gate.events(id, &token).await;
    let first = events
        .next_before(Instant::now() + Duration::from_secs(5))
        .await
        .expect("a first event");
    assert!(
        is_state(&first, "queued") || is_state(&first, "launching"),
        "the socket opened before the container ran, so that the start is timed: {first}"
    );
    events
        .wait_for("running", Duration::from_secs(30), |ev| {
            is_state(ev, "running")
        })
        .await;
    let running_seen = Instant::now();
    // 6 credit-seconds on one GPU: it must stop 6 s after it started, which
    // is between two debits (at 4 s and 8 s), not at the next one.
    let runs_for = Duration::from_secs(CREDIT as u64);
    assert!(!runs_for.as_secs().is_multiple_of(INTERVAL_SECS));
    let computed = running_seen + runs_for;

    let ended = events
        .wait_for("the end", runs_for + Duration::from_secs(10), |ev| {
            is_state(ev, "ended")
        })
        .await;
    let ended_at = Instant::now();
    assert_eq!(ended["reason"]["kind"], "credit_exhausted", "{ended}");
    assert!(
        ended_at <= computed + Duration::from_secs(1),
        "ended {:?} after the computed time",
        ended_at - computed
    );
    assert!(
        ended_at >= claimed_at + runs_for && ended_at + Duration::from_millis(500) >= computed,
        "ended {:?} before the computed time",
        computed.saturating_duration_since(ended_at)
    );
    // One full interval debited at 4 s, then the last 2 s when it ended.
    let debits: Vec<(i64, i64)> = events
        .seen
        .iter()
        .filter(|ev| ev["type"] == "balance")
        .map(|ev| {
            (
                ev["credit_seconds"].as_i64().unwrap(),
                ev["billed_credit_seconds"].as_i64().unwrap(),
            )
        })
        .collect();
    let full = INTERVAL_SECS as i64;
    assert_eq!(
        debits,
        [(CREDIT - full, full), (0, CREDIT)],
        "balance events: {:?}",
        events.seen
    );
    eprintln!(
        "credit ran out: ended {:.3} s after it was seen running (computed {} s)",
        (ended_at - running_seen).as_secs_f64(),
        runs_for.as_secs()
    );

    // Billed exactly the credit it had, nothing left, container gone.
    let path = session_path(&claimed);
    let (status, session) = gate.get(&path, &token).await;
    assert_eq!(status, 200);
    assert_eq!(session["state"], "ended", "{session}");
    assert_eq!(
        session["end_reason"]["kind"], "credit_exhausted",
        "{session}"
    );
    assert_eq!(session["billed_credit_seconds"], CREDIT, "{session}");
    let account = gate
        .wait_for("/api/v1/account", &token, Duration::from_secs(5), |a| {
            a["active_session"].is_null()
        })
        .await;
    assert_eq!(account["credit_seconds"], 0, "{account}");
    assert!(!container_exists(&container_name(SessionId(
        id.parse().unwrap()
    ))));

    drop(events);
    stage.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_timeout_stops_a_session_whose_browser_is_gone() {
    const TIMEOUT_SECS: u64 = 3;
    const INTERVAL_SECS: u64 = 1;
    let stage = Stage::start(
        "api_presence",
        &[
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "1"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "3"),
        ],
    )
    .await;
    let gate = &stage.gate;
    let silent = stage.funded_wallet(ONE_GPU_HOUR_WEI, ONE_GPU_HOUR).await;
    let watched = stage.funded_wallet(ONE_GPU_HOUR_WEI, ONE_GPU_HOUR).await;

    // One browser keeps its events socket open; the other never opens one
    // and sends no heartbeat (reading the session is no proof of presence).
    let watched_claim = stage.claim(&watched, "small").await;
    let mut watched_events = gate
        .events(watched_claim["id"].as_str().unwrap(), &watched)
        .await;
    let silent_claimed_at = Instant::now();
    let silent_claim = stage.claim(&silent, "small").await;
    let silent_path = session_path(&silent_claim);
    gate.wait_for(&silent_path, &silent, Duration::from_secs(30), |s| {
        s["state"] == "running"
    })
    .await;
    let running_seen = Instant::now();
    let timeout = Duration::from_secs(TIMEOUT_SECS);
    let ended = gate
        .wait_for(
            &silent_path,
            &silent,
            timeout + Duration::from_secs(10),
            |s| s["state"] == "ended",
        )
        .await;
    let ended_at = Instant::now();
    eprintln!(
        "presence timed out: ended {:.3} s after it was seen running (timeout {TIMEOUT_SECS} s)",
        (ended_at - running_seen).as_secs_f64()
    );
    assert_eq!(ended["end_reason"]["kind"], "presence_timeout", "{ended}");
    assert!(
        ended_at <= running_seen + timeout + Duration::from_secs(INTERVAL_SECS),
        "ended {:?} after it started running; the timeout is {timeout:?}",
        ended_at - running_seen
    );
    assert!(
        ended_at >= silent_claimed_at + timeout,
        "ended before the timeout"
    );
    assert!(
        ended["billed_credit_seconds"].as_i64().unwrap() <= (TIMEOUT_SECS + INTERVAL_SECS) as i64,
        "{ended}"
    );

    // The watched session outlives the timeout by far, still running.
    let watched_until = Instant::now() + timeout + Duration::from_secs(2);
    while let Some(event) = watched_events.next_before(watched_until).await {
        assert!(
            !is_state(&event, "ended") && !is_state(&event, "stopping"),
            "the session with an open socket was stopped: {event}"
        );
    }
    let (_, watched_now) = gate.get(&session_path(&watched_claim), &watched).await;
    assert_eq!(watched_now["state"], "running", "{watched_now}");
    assert!(
        watched_events.seen.iter().any(|ev| ev["type"] == "balance"),
        "it was billed while watched: {:?}",
        watched_events.seen
    );

    drop(watched_events);
    stage.finish().await;
}
