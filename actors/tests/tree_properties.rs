//! Property test of the whole actor tree on paused time: random claims,
//! cancels, stops, crashes, container exits and credit exhaustion on pools of
//! random size. Checked: never two sessions on one GPU, every GPU released
//! in the end, every accepted claim served unless it was cancelled, and each
//! session debited exactly its held time × GPUs (never more when its actor
//! had to be given up).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deskgate_actors::ports::{
    ContainerExit, EndReason, LaunchError, LaunchSpec, Launcher, RunningContainer, SessionId,
    SessionState,
};
use deskgate_actors::session::SessionMsg;
use deskgate_actors::testing::{FakeLauncher, MemoryLedger, MemoryStore};
use proptest::prelude::*;
use support::{Tree, one_host, settings, wallet};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Wraps the fake launcher to watch GPU exclusivity and container lifetimes.
struct WatchingLauncher {
    inner: Arc<FakeLauncher>,
    state: Mutex<Watch>,
}

#[derive(Default)]
struct Watch {
    /// GPU index -> session whose container holds it.
    holders: HashMap<u32, SessionId>,
    /// Container lifetimes: session -> (started, ended, gpus).
    lifetimes: HashMap<SessionId, (Instant, Option<Instant>, u32)>,
    violations: Vec<String>,
}

impl Watch {
    fn ended(&mut self, session: SessionId) {
        self.holders.retain(|_, s| *s != session);
        if let Some(life) = self.lifetimes.get_mut(&session)
            && life.1.is_none()
        {
            life.1 = Some(Instant::now());
        }
    }
}

#[async_trait]
impl Launcher for WatchingLauncher {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let id = self.inner.launch(spec).await?;
        let mut watch = self.state.lock().unwrap();
        for index in &spec.gpu_indices {
            if let Some(other) = watch.holders.insert(*index, spec.session) {
                watch.violations.push(format!(
                    "GPU {index} given to {} while {other} holds it",
                    spec.session
                ));
            }
        }
        watch.lifetimes.insert(
            spec.session,
            (Instant::now(), None, spec.gpu_indices.len() as u32),
        );
        Ok(id)
    }

    async fn stop(&self, session: SessionId) -> Result<(), LaunchError> {
        self.state.lock().unwrap().ended(session);
        self.inner.stop(session).await
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        self.inner.running().await
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        self.inner.watch_exits(sink);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Claim {
        wallet: usize,
        gpus: u32,
        credit: i64,
    },
    Stop(usize),
    Crash(usize),
    Exit(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..6, prop_oneof![Just(1u32), Just(2)], 0i64..400)
            .prop_map(|(wallet, gpus, credit)| Op::Claim { wallet, gpus, credit }),
        1 => (0usize..16).prop_map(Op::Stop),
        1 => (0usize..16).prop_map(Op::Crash),
        1 => (0usize..16).prop_map(Op::Exit),
        3 => (0u64..90).prop_map(Op::Advance),
    ]
}

async fn scenario(gpu_count: u32, ops: Vec<Op>) {
    let fake = Arc::new(FakeLauncher::new());
    let watching = Arc::new(WatchingLauncher {
        inner: fake.clone(),
        state: Mutex::default(),
    });
    let tree = Tree::start_on(
        one_host(gpu_count),
        settings(),
        Arc::new(MemoryLedger::new()),
        Arc::new(MemoryStore::new()),
        watching.clone(),
        fake,
    )
    .await;

    let mut sessions: Vec<SessionId> = Vec::new();
    let mut deposited: u64 = 0;
    let mut cancelled_while_queued: Vec<SessionId> = Vec::new();
    for op in ops {
        match op {
            Op::Claim {
                wallet: w,
                gpus,
                credit,
            } => {
                let w = wallet(w);
                tree.fund(&w, credit);
                deposited += credit as u64;
                if let Ok(handle) = tree.try_claim(&w, gpus).await {
                    sessions.push(handle.id);
                }
            }
            Op::Stop(i) => {
                if let Some(&id) = sessions.get(i) {
                    let queued = tree
                        .store
                        .get(id)
                        .is_some_and(|r| r.state == SessionState::Queued);
                    if tree.stop(id, EndReason::UserStopped).await && queued {
                        cancelled_while_queued.push(id);
                    }
                }
            }
            Op::Crash(i) => {
                if let Some(&id) = sessions.get(i)
                    && let Some(actor) = tree.lookup(id).await.and_then(|h| h.actor)
                {
                    let _ = actor.cast(SessionMsg::Crash);
                }
            }
            Op::Exit(i) => {
                if let Some(&id) = sessions.get(i) {
                    tree.launcher.exit(id, 1, false);
                }
            }
            Op::Advance(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every running second costs at least one credit-second, so all the
    // credit ever deposited bounds how long the remaining work can take.
    tokio::time::sleep(Duration::from_secs(deposited + 60)).await;

    let snapshot = tree.snapshot().await;
    assert_eq!(snapshot.free_gpus, snapshot.total_gpus, "{snapshot:?}");
    assert_eq!(snapshot.waiting, 0);
    let watch = watching.state.lock().unwrap();
    assert!(watch.violations.is_empty(), "{:?}", watch.violations);
    for id in &sessions {
        let record = tree.record(*id);
        assert_eq!(record.state, SessionState::Ended, "{record:?}");
        let debited = tree.ledger.total_debited(*id);
        assert_eq!(debited, record.billed_credit, "{record:?}");
        match watch.lifetimes.get(id) {
            Some((started, ended, gpus)) => {
                let ended = ended.expect("every container was stopped");
                let held = (ended - *started).as_secs() as i64 * i64::from(*gpus);
                if matches!(record.end_reason, Some(EndReason::Crashed(_))) {
                    assert!(debited <= held, "{record:?} debited {debited} held {held}");
                } else {
                    assert_eq!(debited, held, "{record:?}");
                }
            }
            None => {
                assert_eq!(debited, 0, "{record:?}");
                // Never launched: it left the queue, or its launch failed.
                assert!(
                    cancelled_while_queued.contains(id)
                        || matches!(
                            record.end_reason,
                            Some(EndReason::LaunchFailed(_)) | Some(EndReason::Crashed(_))
                        ),
                    "claim {id} was never served: {record:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_tree_keeps_its_invariants(gpu_count in 1u32..5, ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(scenario(gpu_count, ops));
    }
}
