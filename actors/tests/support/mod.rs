//! A whole actor tree on in-memory ports and paused time.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use deskgate_actors::ports::{
    CreditSeconds, EndReason, GpuAddr, Launcher, SessionId, SessionRecord, SessionState, WalletId,
};
use deskgate_actors::protocol::{PoolSnapshot, SessionEvent};
use deskgate_actors::queue::Policy;
use deskgate_actors::session::{SessionMsg, SessionSettings};
use deskgate_actors::supervisor::{
    RestartPolicy, SessionHandle, StartError, Supervisor, SupervisorArgs, SupervisorMsg,
};
use deskgate_actors::testing::{FakeLauncher, MemoryLedger, MemoryStore};
use ractor::ActorRef;
use ractor::rpc::CallResult;
use tokio::time::Instant;

pub const CALL: Option<Duration> = Some(Duration::from_secs(5));

pub struct Tree {
    pub supervisor: ActorRef<SupervisorMsg>,
    pub ledger: Arc<MemoryLedger>,
    pub store: Arc<MemoryStore>,
    pub launcher: Arc<FakeLauncher>,
    pub gpus: Vec<GpuAddr>,
}

pub fn settings() -> SessionSettings {
    SessionSettings {
        billing_interval: Duration::from_secs(10),
        presence_timeout: Duration::from_secs(3600),
        idle_timeout: None,
        idle_warning: Duration::from_secs(60),
        low_credit_warnings: vec![Duration::from_secs(300), Duration::from_secs(60)],
    }
}

pub fn one_host(gpus: u32) -> Vec<GpuAddr> {
    (0..gpus).map(|index| GpuAddr { host: 0, index }).collect()
}

pub fn wallet(n: usize) -> WalletId {
    WalletId::new(&format!("0x{n:040x}"))
}

impl Tree {
    pub async fn start(gpus: Vec<GpuAddr>, settings: SessionSettings) -> Self {
        Self::start_with(
            gpus,
            settings,
            Arc::new(MemoryLedger::new()),
            Arc::new(MemoryStore::new()),
            Arc::new(FakeLauncher::new()),
        )
        .await
    }

    pub async fn start_with(
        gpus: Vec<GpuAddr>,
        settings: SessionSettings,
        ledger: Arc<MemoryLedger>,
        store: Arc<MemoryStore>,
        launcher: Arc<FakeLauncher>,
    ) -> Self {
        Self::start_on(gpus, settings, ledger, store, launcher.clone(), launcher).await
    }

    /// Starts the tree on `port` as its launcher; `fake` is the fake behind
    /// it (the same object, or the one a wrapper delegates to).
    pub async fn start_on(
        gpus: Vec<GpuAddr>,
        settings: SessionSettings,
        ledger: Arc<MemoryLedger>,
        store: Arc<MemoryStore>,
        port: Arc<dyn Launcher>,
        launcher: Arc<FakeLauncher>,
    ) -> Self {
        let args = SupervisorArgs {
            gpus: gpus.clone(),
            gpus_out: Vec::new(),
            policy: Policy::default(),
            profile_sizes: vec![1, 2, 4, 8],
            ledger: ledger.clone(),
            store: store.clone(),
            launcher: port,
            settings,
            restart: RestartPolicy::default(),
        };
        let (supervisor, _) = ractor::Actor::spawn(None, Supervisor, args)
            .await
            .expect("supervisor starts");
        Self {
            supervisor,
            ledger,
            store,
            launcher,
            gpus,
        }
    }

    pub fn fund(&self, wallet: &WalletId, credit: CreditSeconds) {
        self.ledger.deposit(wallet, credit);
    }

    pub async fn try_claim(
        &self,
        wallet: &WalletId,
        gpus: u32,
    ) -> Result<SessionHandle, StartError> {
        let w = wallet.clone();
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::StartSession {
                    wallet: w,
                    gpus,
                    balance: None,
                    reply,
                },
                CALL,
            )
            .await
            .expect("supervisor answers")
        {
            CallResult::Success(result) => result,
            other => panic!("no answer: {other:?}"),
        }
    }

    pub async fn claim(&self, wallet: &WalletId, gpus: u32) -> SessionHandle {
        self.try_claim(wallet, gpus).await.expect("claim accepted")
    }

    pub async fn stop(&self, session: SessionId, reason: EndReason) -> bool {
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::StopSession {
                    session,
                    reason,
                    reply,
                },
                CALL,
            )
            .await
            .unwrap()
        {
            CallResult::Success(live) => live,
            other => panic!("no answer: {other:?}"),
        }
    }

    pub async fn snapshot(&self) -> PoolSnapshot {
        match self
            .supervisor
            .call(|reply| SupervisorMsg::Snapshot { reply }, CALL)
            .await
            .unwrap()
        {
            CallResult::Success(s) => s,
            other => panic!("no answer: {other:?}"),
        }
    }

    pub async fn lookup(&self, session: SessionId) -> Option<SessionHandle> {
        deskgate_actors::supervisor::lookup(&self.supervisor, session).await
    }

    /// The live actor of a granted session.
    pub async fn actor(&self, session: SessionId) -> ActorRef<SessionMsg> {
        self.lookup(session)
            .await
            .and_then(|h| h.actor)
            .expect("a live session actor")
    }

    /// Proves presence for a session.
    pub fn presence(&self, session: SessionId) {
        self.supervisor
            .cast(SupervisorMsg::Presence { session })
            .expect("supervisor alive");
    }

    /// The user gives input to a session.
    pub fn input(&self, session: SessionId) {
        self.supervisor
            .cast(SupervisorMsg::Input { session })
            .expect("supervisor alive");
    }

    pub fn record(&self, session: SessionId) -> SessionRecord {
        self.store.get(session).expect("record persisted")
    }

    /// Waits until the session reaches `state` and returns the instant it
    /// did (on the paused clock, state changes are seen at the same instant
    /// through the session's event channel).
    pub async fn wait_for(&self, session: SessionId, state: SessionState) -> Instant {
        let reached = |tree: &Self| tree.store.get(session).is_some_and(|r| r.state == state);
        let mut events = self.lookup(session).await.map(|h| h.events.subscribe());
        loop {
            if reached(self) {
                return Instant::now();
            }
            match &mut events {
                Some(rx) => {
                    match tokio::time::timeout(Duration::from_secs(86_400), rx.recv()).await {
                        Ok(Ok(_))
                        | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                        Ok(Err(_)) => events = None,
                        Err(_) => panic!(
                            "session {session} never reached {state:?}: {:?}",
                            self.store.get(session)
                        ),
                    }
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    assert!(
                        reached(self),
                        "session {session} is gone without reaching {state:?}: {:?}",
                        self.store.get(session)
                    );
                }
            }
        }
    }

    /// Waits for the session to end; returns when, and why.
    pub async fn wait_ended(&self, session: SessionId) -> (Instant, EndReason) {
        let at = self.wait_for(session, SessionState::Ended).await;
        (at, self.record(session).end_reason.expect("an end reason"))
    }

    /// Every GPU is free again.
    pub async fn assert_all_gpus_free(&self) {
        // Releases travel as messages; give them a moment of virtual time.
        for _ in 0..100 {
            let snapshot = self.snapshot().await;
            if snapshot.free_gpus == snapshot.total_gpus && snapshot.running == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("GPUs still held: {:?}", self.snapshot().await);
    }
}

/// Collects the events a session sends, with the instant each arrived.
pub fn record_events(
    handle: &SessionHandle,
) -> Arc<std::sync::Mutex<Vec<(Instant, SessionEvent)>>> {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut rx = handle.events.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = rx.recv().await {
            sink.lock().unwrap().push((Instant::now(), event));
        }
    });
    events
}
