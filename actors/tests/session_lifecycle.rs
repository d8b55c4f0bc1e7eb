//! Every way a session can end, on paused time: each test proves the GPUs
//! come back and the bill is exact to the credit-second.

mod support;

use std::time::Duration;

use deskgate_actors::ports::{
    EndReason, RunningContainer, SessionRecord, SessionState, SessionStore,
};
use deskgate_actors::protocol::SessionEvent;
use deskgate_actors::scheduler::PUBLISH_DEBOUNCE;
use deskgate_actors::session::{SessionMsg, SessionSettings};
use deskgate_actors::testing::{FakeLauncher, MemoryLedger, MemoryStore};
use std::sync::Arc;
use support::{Tree, one_host, record_events, settings, wallet};

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

#[tokio::test(start_paused = true)]
async fn user_stop_bills_exactly_the_seconds_held() {
    let tree = Tree::start(one_host(2), settings()).await;
    let w = wallet(1);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 2).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    tokio::time::sleep(Duration::from_millis(25_400)).await;
    assert!(tree.stop(session.id, EndReason::UserStopped).await);
    let (ended, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::UserStopped);
    let held = secs(ended - running);
    assert_eq!(held, 25);
    assert_eq!(tree.ledger.total_debited(session.id), held * 2);
    assert_eq!(tree.ledger.balance_now(&w), 10_000 - 50);
    // Two full intervals and the prorated rest, each under its own key.
    let keys: Vec<u64> = tree
        .ledger
        .debits()
        .iter()
        .map(|(k, _, _)| k.interval)
        .collect();
    assert_eq!(keys, [0, 1, 2]);
    assert!(tree.launcher.stopped(session.id));
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn credit_exhaustion_stops_exactly_when_credit_runs_out() {
    let tree = Tree::start(one_host(2), settings()).await;
    let w = wallet(2);
    tree.fund(&w, 95); // 2 GPUs: 47 whole seconds
    let session = tree.claim(&w, 2).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    let (ended, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::CreditExhausted);
    assert_eq!(ended - running, Duration::from_secs(47));
    assert_eq!(tree.ledger.total_debited(session.id), 94);
    assert_eq!(tree.ledger.balance_now(&w), 1);
    assert!(!tree.launcher.is_running(session.id));
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn low_credit_warnings_come_at_five_and_one_minute() {
    let tree = Tree::start(one_host(1), settings()).await;
    let w = wallet(3);
    tree.fund(&w, 400);
    let session = tree.claim(&w, 1).await;
    let events = record_events(&session);
    let running = tree.wait_for(session.id, SessionState::Running).await;
    let (ended, _) = tree.wait_ended(session.id).await;
    assert_eq!(ended - running, Duration::from_secs(400));
    let warnings: Vec<(u64, u64)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, e)| match e {
            SessionEvent::LowCredit { seconds_left } => {
                Some(((*at - running).as_secs(), *seconds_left))
            }
            _ => None,
        })
        .collect();
    assert_eq!(warnings, [(100, 300), (340, 60)]);
    assert_eq!(tree.ledger.total_debited(session.id), 400);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_starting_short_of_credit_is_warned_once() {
    let tree = Tree::start(one_host(1), settings()).await;
    // Queue it behind another session, so that its events are recorded
    // from before it runs.
    let holder = wallet(5);
    tree.fund(&holder, 600);
    let held = tree.claim(&holder, 1).await;
    tree.wait_for(held.id, SessionState::Running).await;
    let w = wallet(4);
    tree.fund(&w, 30);
    let session = tree.claim(&w, 1).await;
    let events = record_events(&session);
    tree.stop(held.id, EndReason::UserStopped).await;
    tree.wait_ended(session.id).await;
    let warnings: Vec<u64> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, e)| match e {
            SessionEvent::LowCredit { seconds_left } => Some(*seconds_left),
            _ => None,
        })
        .collect();
    assert_eq!(warnings, [30]);
}

#[tokio::test(start_paused = true)]
async fn presence_timeout_stops_a_session_nobody_watches() {
    let settings = SessionSettings {
        presence_timeout: Duration::from_secs(30),
        ..settings()
    };
    let tree = Tree::start(one_host(1), settings).await;
    let w = wallet(4);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    let (ended, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::PresenceTimeout);
    assert_eq!(ended - running, Duration::from_secs(30));
    assert_eq!(tree.ledger.total_debited(session.id), 30);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn presence_keeps_a_session_running() {
    let settings = SessionSettings {
        presence_timeout: Duration::from_secs(30),
        ..settings()
    };
    let tree = Tree::start(one_host(1), settings).await;
    let w = wallet(5);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    for _ in 0..9 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        tree.presence(session.id);
    }
    assert_eq!(tree.record(session.id).state, SessionState::Running);
    tree.stop(session.id, EndReason::UserStopped).await;
    let (ended, _) = tree.wait_ended(session.id).await;
    assert_eq!(secs(ended - running), 180);
    assert_eq!(tree.ledger.total_debited(session.id), 180);
}

/// Idle culling: without input the session ends at the idle timeout,
/// warned once `idle_warning` before; presence alone (an open events
/// socket) does not keep it, input does, and each input earns a new
/// warning before the next idle end.
#[tokio::test(start_paused = true)]
async fn idle_culling_warns_then_ends_a_session_without_input() {
    let settings = SessionSettings {
        presence_timeout: Duration::from_secs(30),
        idle_timeout: Some(Duration::from_secs(300)),
        idle_warning: Duration::from_secs(60),
        ..settings()
    };
    let tree = Tree::start(one_host(1), settings).await;
    let w = wallet(6);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let events = record_events(&session);
    let running = tree.wait_for(session.id, SessionState::Running).await;
    // Presence every 20 s throughout; input once, at 260 s.
    for step in 1..=30 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        if tree.record(session.id).state != SessionState::Running {
            break;
        }
        tree.presence(session.id);
        if step == 13 {
            tree.input(session.id);
        }
    }
    let (_, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::IdleTimeout);
    // When it ended, by its events (the loop above noticed later).
    let ended = events
        .lock()
        .unwrap()
        .iter()
        .find_map(|(at, e)| {
            matches!(
                e,
                SessionEvent::State {
                    state: SessionState::Ended,
                    ..
                }
            )
            .then_some(*at)
        })
        .expect("an ended event");
    // Input at 260 s: idle from there, so the end is at 260 + 300.
    assert_eq!(secs(ended - running), 560);
    assert_eq!(tree.ledger.total_debited(session.id), 560);
    let warnings: Vec<(u64, u64)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(at, e)| match e {
            SessionEvent::IdleWarning { seconds_left } => {
                Some(((*at - running).as_secs(), *seconds_left))
            }
            _ => None,
        })
        .collect();
    // Warned 60 s before the first idle end (300 s); the input at 260 s
    // starts a new stretch, warned again 60 s before its end.
    assert_eq!(warnings, [(240, 60), (500, 60)]);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn container_exit_ends_the_session_and_frees_its_gpus() {
    let tree = Tree::start(one_host(2), settings()).await;
    let w = wallet(6);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(tree.launcher.exit(session.id, 137, true));
    let (ended, reason) = tree.wait_ended(session.id).await;
    assert_eq!(
        reason,
        EndReason::ContainerExited {
            code: 137,
            oom: true
        }
    );
    assert_eq!(secs(ended - running), 12);
    assert_eq!(tree.ledger.total_debited(session.id), 12);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_end_is_on_record_before_its_gpus_go_to_the_next_claim() {
    // Found by the fault campaign: the GPU went to the waiter before the
    // end was saved, so the records showed it held by both at once, and a
    // store outage at that moment left the ended session "running" on it.
    let tree = Tree::start(one_host(1), settings()).await;
    let (a, b) = (wallet(21), wallet(22));
    tree.fund(&a, 10_000);
    tree.fund(&b, 10_000);
    let first = tree.claim(&a, 1).await;
    tree.wait_for(first.id, SessionState::Running).await;
    let second = tree.claim(&b, 1).await;

    tree.store.set_unavailable(true);
    tree.actor(first.id)
        .await
        .cast(SessionMsg::Stop {
            reason: EndReason::UserStopped,
            reply: None,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(tree.launcher.stopped(first.id), "the container is stopped");
    assert!(
        tree.launcher.launched(second.id).is_none(),
        "the GPU went to the next claim while the first session's end was not on record"
    );

    tree.store.set_unavailable(false);
    tree.wait_for(second.id, SessionState::Running).await;
    assert_eq!(tree.record(first.id).state, SessionState::Ended);
    assert_eq!(
        tree.record(first.id).end_reason,
        Some(EndReason::UserStopped)
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_container_cannot_be_stopped_keeps_its_gpus_until_it_is() {
    // Found by the fault campaign: a stop sent while the host was cut off
    // failed, the session ended anyway and its container ran on, on a GPU
    // already given to someone else.
    let tree = Tree::start(one_host(1), settings()).await;
    let (a, b) = (wallet(23), wallet(24));
    tree.fund(&a, 10_000);
    tree.fund(&b, 10_000);
    let first = tree.claim(&a, 1).await;
    tree.wait_for(first.id, SessionState::Running).await;
    let second = tree.claim(&b, 1).await;

    tree.launcher.set_unreachable(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    tree.actor(first.id)
        .await
        .cast(SessionMsg::Stop {
            reason: EndReason::UserStopped,
            reply: None,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(tree.record(first.id).state, SessionState::Stopping);
    assert!(
        tree.launcher.launched(second.id).is_none(),
        "the GPU was handed on"
    );

    tree.launcher.set_unreachable(false);
    let (_, reason) = tree.wait_ended(first.id).await;
    assert_eq!(reason, EndReason::UserStopped);
    assert!(tree.launcher.stopped(first.id));
    // Billed up to the stop, not for the time the stop took.
    assert_eq!(tree.ledger.total_debited(first.id), 3);
    tree.wait_for(second.id, SessionState::Running).await;
}

#[tokio::test(start_paused = true)]
async fn launch_failure_bills_nothing_and_frees_the_gpus() {
    let tree = Tree::start(one_host(1), settings()).await;
    tree.launcher.fail_launches(Some("image not found".into()));
    let w = wallet(7);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let (_, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::LaunchFailed("image not found".into()));
    assert_eq!(tree.ledger.total_debited(session.id), 0);
    tree.assert_all_gpus_free().await;
    // The wallet may claim again.
    tree.launcher.fail_launches(None);
    let again = tree.claim(&w, 1).await;
    tree.wait_for(again.id, SessionState::Running).await;
}

#[tokio::test(start_paused = true)]
async fn admin_kill_bills_up_to_the_kill() {
    let tree = Tree::start(one_host(1), settings()).await;
    let w = wallet(8);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    tree.stop(session.id, EndReason::AdminKilled).await;
    let (ended, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::AdminKilled);
    assert_eq!(tree.ledger.total_debited(session.id), secs(ended - running));
    assert_eq!(secs(ended - running), 7);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn stop_during_launch_stops_the_container_and_bills_nothing() {
    let tree = Tree::start(one_host(1), settings()).await;
    tree.launcher.set_launch_delay(Duration::from_secs(5));
    let w = wallet(9);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    tree.wait_for(session.id, SessionState::Launching).await;
    tree.stop(session.id, EndReason::UserStopped).await;
    let (_, reason) = tree.wait_ended(session.id).await;
    assert_eq!(reason, EndReason::UserStopped);
    assert_eq!(tree.ledger.total_debited(session.id), 0);
    assert!(!tree.launcher.is_running(session.id));
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn a_crashed_session_is_restarted_and_billing_stays_exact() {
    let tree = Tree::start(one_host(1), settings()).await;
    let w = wallet(10);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let first = tree.actor(session.id).await;
    first.cast(SessionMsg::Crash).unwrap();
    // A new actor takes over the same session.
    let mut restarted = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if let Some(h) = tree.lookup(session.id).await
            && h.actor
                .as_ref()
                .is_some_and(|a| a.get_id() != first.get_id())
        {
            restarted = Some(h);
            break;
        }
    }
    let restarted = restarted.expect("the session actor was restarted");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(tree.record(session.id).state, SessionState::Running);
    assert_eq!(
        tree.snapshot().await.free_gpus,
        0,
        "the GPU stayed with the session"
    );
    tree.stop(restarted.id, EndReason::UserStopped).await;
    let (ended, _) = tree.wait_ended(session.id).await;
    let held = secs(ended - running);
    assert_eq!(held, 35);
    assert_eq!(tree.ledger.total_debited(session.id), held);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_that_keeps_crashing_is_ended_and_releases_its_gpus() {
    let tree = Tree::start(one_host(1), settings()).await;
    let w = wallet(11);
    tree.fund(&w, 10_000);
    let session = tree.claim(&w, 1).await;
    let running = tree.wait_for(session.id, SessionState::Running).await;
    let mut last = tree.actor(session.id).await.get_id();
    for _ in 0..4 {
        let handle = tree.lookup(session.id).await.expect("live");
        handle.actor.expect("live").cast(SessionMsg::Crash).unwrap();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            match tree.lookup(session.id).await {
                Some(h) if h.actor.as_ref().is_some_and(|a| a.get_id() != last) => {
                    last = h.actor.expect("checked").get_id();
                    break;
                }
                None => break,
                _ => {}
            }
        }
    }
    let (ended, reason) = tree.wait_ended(session.id).await;
    assert!(matches!(reason, EndReason::Crashed(_)), "{reason:?}");
    assert!(!tree.launcher.is_running(session.id));
    // Never more than was held.
    assert!(tree.ledger.total_debited(session.id) <= secs(ended - running) + 1);
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn a_queued_claim_knows_its_position_before_the_first_publish() {
    let tree = Tree::start(one_host(1), settings()).await;
    let first = wallet(1);
    tree.fund(&first, 600);
    let running = tree.claim(&first, 1).await;
    tree.wait_for(running.id, SessionState::Running).await;
    let second = wallet(2);
    tree.fund(&second, 600);
    let waiting = tree.claim(&second, 1).await;
    // No time passes: the debounced publish has not run.
    let view = deskgate_actors::supervisor::view(&tree.supervisor, waiting.id)
        .await
        .unwrap();
    let status = view.queue.expect("a queue status at once");
    assert_eq!(status.position, 1);
    assert!(status.eta_seconds.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_slow_queued_save_never_lands_after_the_session_runs() {
    let store = Arc::new(MemoryStore::new());
    store.delay_queued_saves(Duration::from_millis(500));
    let tree = Tree::start_with(
        one_host(1),
        settings(),
        Arc::new(MemoryLedger::new()),
        store.clone(),
        Arc::new(FakeLauncher::new()),
    )
    .await;
    let w = wallet(1);
    tree.fund(&w, 600);
    // Granted at once: its grant waits for the queued row.
    let handle = tree.claim(&w, 1).await;
    // The claimant hears of its session only once that row is saved.
    assert!(store.get(handle.id).is_some());
    tree.wait_for(handle.id, SessionState::Running).await;
    let states = store.saved_states(handle.id);
    assert_eq!(states.first(), Some(&SessionState::Queued), "{states:?}");
    assert!(
        !states[1..].contains(&SessionState::Queued),
        "the queued row landed after a later state: {states:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn claims_behind_a_slow_save_do_not_wait_for_it() {
    let store = Arc::new(MemoryStore::new());
    let save = Duration::from_millis(500);
    store.delay_queued_saves(save);
    let tree = Arc::new(
        Tree::start_with(
            one_host(1),
            settings(),
            Arc::new(MemoryLedger::new()),
            store.clone(),
            Arc::new(FakeLauncher::new()),
        )
        .await,
    );
    let wallets: Vec<_> = (0..4).map(|n| wallet(200 + n)).collect();
    for w in &wallets {
        tree.fund(w, 600);
    }
    let started = tokio::time::Instant::now();
    let claims: Vec<_> = wallets
        .iter()
        .map(|w| {
            let (tree, w) = (tree.clone(), w.clone());
            tokio::spawn(async move { tree.claim(&w, 1).await })
        })
        .collect();
    for claim in claims {
        let handle = claim.await.unwrap();
        assert!(store.get(handle.id).is_some());
    }
    // Four saves in series would take four times as long.
    assert!(
        started.elapsed() < save * 2,
        "four claims took {:?} with {save:?} saves",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn contention_queues_fairly_and_a_release_grants_the_head() {
    let tree = Tree::start(one_host(2), settings()).await;
    let mut handles = Vec::new();
    for n in 0..5 {
        let w = wallet(100 + n);
        tree.fund(&w, 600);
        handles.push(tree.claim(&w, 1).await);
    }
    for h in &handles[..2] {
        tree.wait_for(h.id, SessionState::Running).await;
    }
    tokio::time::sleep(PUBLISH_DEBOUNCE * 2).await;
    let mut positions = Vec::new();
    for h in &handles[2..] {
        let view = deskgate_actors::supervisor::view(&tree.supervisor, h.id)
            .await
            .unwrap();
        assert_eq!(view.record.state, SessionState::Queued);
        let status = view.queue.expect("a queue status");
        assert!(status.eta_seconds.is_some());
        positions.push(status.position);
    }
    assert_eq!(positions, [1, 2, 3]);
    // Claiming twice from one wallet is refused.
    assert!(tree.try_claim(&wallet(104), 1).await.is_err());

    // Cancelling position 2 moves position 3 up.
    tree.stop(handles[3].id, EndReason::UserStopped).await;
    tree.wait_ended(handles[3].id).await;
    tokio::time::sleep(PUBLISH_DEBOUNCE * 2).await;
    let last = deskgate_actors::supervisor::view(&tree.supervisor, handles[4].id)
        .await
        .unwrap();
    assert_eq!(last.queue.unwrap().position, 2);

    // A release grants the head.
    tree.stop(handles[0].id, EndReason::UserStopped).await;
    tree.wait_for(handles[2].id, SessionState::Running).await;
    assert_eq!(tree.record(handles[4].id).state, SessionState::Queued);
}

#[tokio::test(start_paused = true)]
async fn recovery_adopts_survivors_ends_the_lost_and_removes_orphans() {
    let ledger = Arc::new(MemoryLedger::new());
    let store = Arc::new(MemoryStore::new());
    let launcher = Arc::new(FakeLauncher::new());
    let gpus = one_host(2);
    let survivor_wallet = wallet(200);
    ledger.deposit(&survivor_wallet, 1_000);

    let survivor = deskgate_actors::ports::SessionRecord::new(
        deskgate_actors::ports::SessionId::new(),
        survivor_wallet.clone(),
        1,
    );
    let survivor = SessionRecord {
        state: SessionState::Running,
        gpu_addrs: vec![gpus[1]],
        container_id: Some("ctr".into()),
        billed_intervals: 3,
        billed_ms: 30_000,
        billed_credit: 30,
        ..survivor
    };
    let lost = SessionRecord {
        state: SessionState::Running,
        gpu_addrs: vec![gpus[0]],
        ..deskgate_actors::ports::SessionRecord::new(
            deskgate_actors::ports::SessionId::new(),
            wallet(201),
            1,
        )
    };
    let queued = deskgate_actors::ports::SessionRecord::new(
        deskgate_actors::ports::SessionId::new(),
        wallet(202),
        1,
    );
    ledger.deposit(&wallet(202), 1_000);
    for r in [&survivor, &lost, &queued] {
        store.save(r).await.unwrap();
    }
    let orphan = deskgate_actors::ports::SessionId::new();
    for (session, id) in [(survivor.id, "ctr"), (orphan, "orphan")] {
        launcher.insert_running(RunningContainer {
            session,
            container_id: id.into(),
            host: 0,
        });
    }

    let tree = Tree::start_with(gpus, settings(), ledger, store, launcher).await;
    let adopted_at = tokio::time::Instant::now();
    let report = match tree
        .supervisor
        .call(
            |reply| deskgate_actors::supervisor::SupervisorMsg::Recovery { reply },
            support::CALL,
        )
        .await
        .unwrap()
    {
        ractor::rpc::CallResult::Success(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.adopted, [survivor.id]);
    assert_eq!(report.ended, [lost.id]);
    assert_eq!(report.requeued, [queued.id]);
    assert_eq!(report.orphans_removed, [orphan]);
    assert!(!tree.launcher.is_running(orphan));
    assert_eq!(
        tree.record(lost.id).end_reason,
        Some(EndReason::LostOnRestart)
    );

    // The queued session gets the free GPU; the survivor keeps its own.
    tree.wait_for(queued.id, SessionState::Running).await;
    assert_eq!(tree.record(queued.id).gpu_addrs, [tree.gpus[0]]);

    // Billing resumes after the 30 s already billed; downtime is not billed.
    tokio::time::sleep(Duration::from_secs(12)).await;
    tree.stop(survivor.id, EndReason::UserStopped).await;
    let (ended, _) = tree.wait_ended(survivor.id).await;
    assert_eq!(secs(ended - adopted_at), 12);
    assert_eq!(tree.ledger.total_debited(survivor.id), 12);
    assert_eq!(tree.record(survivor.id).billed_credit, 42);
}

#[tokio::test(start_paused = true)]
async fn a_session_adopted_mid_launch_has_its_container_stopped_when_it_ends() {
    // Found by the fault campaign: the gate died after recording the session
    // as launching but before it learnt the container's id; the launcher
    // started the container anyway, the next gate adopted it, and when the
    // user stopped the session nothing stopped the container (no id on record).
    let ledger = Arc::new(MemoryLedger::new());
    let store = Arc::new(MemoryStore::new());
    let launcher = Arc::new(FakeLauncher::new());
    let gpus = one_host(1);
    let owner = wallet(210);
    ledger.deposit(&owner, 1_000);
    let launching = SessionRecord {
        state: SessionState::Launching,
        gpu_addrs: vec![gpus[0]],
        ..SessionRecord::new(deskgate_actors::ports::SessionId::new(), owner, 1)
    };
    store.save(&launching).await.unwrap();
    launcher.insert_running(RunningContainer {
        session: launching.id,
        container_id: "started-after-the-crash".into(),
        host: 0,
    });
    let tree = Tree::start_with(gpus, settings(), ledger, store, launcher).await;
    tree.wait_for(launching.id, SessionState::Running).await;
    assert_eq!(
        tree.record(launching.id).container_id.as_deref(),
        Some("started-after-the-crash")
    );
    assert!(tree.stop(launching.id, EndReason::UserStopped).await);
    tree.wait_ended(launching.id).await;
    assert!(
        tree.launcher.stopped(launching.id),
        "the adopted container was left running"
    );
    tree.assert_all_gpus_free().await;
}

#[tokio::test(start_paused = true)]
async fn recovery_stops_what_is_left_of_a_session_whose_container_stopped_running() {
    // Found by the fault campaign: a Docker Engine restart stopped a
    // session's container; the gate restarted before it heard, ended the
    // session (nothing running) and never asked the launcher to stop it, so
    // the exited container and its network stayed for good.
    let store = Arc::new(MemoryStore::new());
    let gpus = one_host(1);
    let lost = SessionRecord {
        state: SessionState::Running,
        gpu_addrs: vec![gpus[0]],
        container_id: Some("exited".into()),
        ..SessionRecord::new(deskgate_actors::ports::SessionId::new(), wallet(220), 1)
    };
    store.save(&lost).await.unwrap();
    let tree = Tree::start_with(
        gpus,
        settings(),
        Arc::new(MemoryLedger::new()),
        store,
        Arc::new(FakeLauncher::new()),
    )
    .await;
    let (_, reason) = tree.wait_ended(lost.id).await;
    assert_eq!(reason, EndReason::LostOnRestart);
    assert!(
        tree.launcher.stopped(lost.id),
        "its remains were never stopped"
    );
}
