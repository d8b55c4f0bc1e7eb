//! The actor tree on the real adapters: `PgLedger`/`BatchingLedger` for the
//! money and `PgSessionStore` for the records, with a fake launcher, on real
//! time (PostgreSQL is real I/O, so time cannot be paused). Billing runs on
//! a 1 s interval so that a few seconds of wall time cover several debits.
//!
//! Every bill is checked three ways: the debits in `ledger_txns` /
//! `ledger_entries` under the session's `debit:<session>:<interval>` keys,
//! the `sessions` row (and the session's own events), and the wallet's
//! balance. Wall-clock bounds are taken around every step, so a check of
//! "seconds billed" is an interval that real time cannot leave.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskgate::db::DbPool;
use deskgate::money::ledger::{Account, BatchingLedger, PgLedger, SystemAccount};
use deskgate::platform::secret::Secret;
use deskgate::sessions::store::PgSessionStore;
use deskgate_actors::ask::ask;
use deskgate_actors::ports::{
    CreditSeconds, EndReason, GpuAddr, Ledger, RunningContainer, SessionId, SessionState,
    SessionStore, WalletId,
};
use deskgate_actors::protocol::{ClaimError, PoolSnapshot, SessionEvent};
use deskgate_actors::queue::Policy;
use deskgate_actors::session::SessionSettings;
use deskgate_actors::supervisor::{
    RecoveryReport, RestartPolicy, SessionHandle, StartError, Supervisor, SupervisorArgs,
    SupervisorMsg,
};
use deskgate_actors::testing::FakeLauncher;
use support::ScratchDatabase;
use tokio::time::Instant;

/// Longest any state change may take to show in PostgreSQL.
const STATE_DEADLINE: Duration = Duration::from_secs(10);

fn wallet(n: usize) -> WalletId {
    WalletId::new(&format!("0x{n:040x}"))
}

fn two_gpus() -> Vec<GpuAddr> {
    (0..2).map(|index| GpuAddr { host: 0, index }).collect()
}

/// 1 s billing, presence never in the way, no warnings.
fn settings() -> SessionSettings {
    SessionSettings {
        billing_interval: Duration::from_secs(1),
        presence_timeout: Duration::from_secs(3600),
        idle_timeout: None,
        idle_warning: Duration::from_secs(60),
        low_credit_warnings: Vec::new(),
    }
}

fn pool_for(db: &ScratchDatabase) -> DbPool {
    deskgate::db::pool(&Secret::new(db.url.clone())).expect("pool builds")
}

/// Whole seconds in `d`, as credit-seconds per GPU.
fn whole_secs(d: Duration) -> CreditSeconds {
    d.as_secs() as CreditSeconds
}

/// Direct reads of the tables, for what the ports do not show. (In a
/// module: diesel's `RunQueryDsl::load` would shadow `SessionStore::load`.)
mod sql {
    use deskgate::db::DbPool;
    use deskgate_actors::ports::{CreditSeconds, SessionId, WalletId};
    use diesel::QueryableByName;
    use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Uuid};
    use diesel_async::RunQueryDsl;

    /// A `sessions` row, as the database holds it.
    #[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
    pub struct SessionRow {
        #[diesel(sql_type = Text)]
        pub state: String,
        /// `end_reason->>'kind'`, e.g. `user_stopped`.
        #[diesel(sql_type = Nullable<Text>)]
        pub end_kind: Option<String>,
        #[diesel(sql_type = BigInt)]
        pub billed_intervals: i64,
        #[diesel(sql_type = BigInt)]
        pub billed_credit: i64,
        #[diesel(sql_type = BigInt)]
        pub billed_ms: i64,
        #[diesel(sql_type = Array<Integer>)]
        pub gpu_indices: Vec<i32>,
        #[diesel(sql_type = Nullable<Text>)]
        pub container_id: Option<String>,
        #[diesel(sql_type = Bool)]
        pub has_started_at: bool,
        #[diesel(sql_type = Bool)]
        pub has_ended_at: bool,
    }

    pub async fn session(pool: &DbPool, id: SessionId) -> Option<SessionRow> {
        let mut conn = pool.get().await.expect("connection");
        let mut rows: Vec<SessionRow> = diesel::sql_query(
            "SELECT state, end_reason->>'kind' AS end_kind, billed_intervals, billed_credit, \
             billed_ms, gpu_indices, container_id, started_at IS NOT NULL AS has_started_at, \
             ended_at IS NOT NULL AS has_ended_at FROM sessions WHERE id = $1",
        )
        .bind::<Uuid, _>(id.0)
        .load(&mut conn)
        .await
        .expect("sessions row query");
        rows.pop()
    }

    /// One billing debit as the ledger holds it.
    #[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
    pub struct Debit {
        #[diesel(sql_type = Text)]
        pub key: String,
        #[diesel(sql_type = Text)]
        pub kind: String,
        #[diesel(sql_type = Nullable<Text>)]
        pub reference: Option<String>,
        /// The wallet's entry: negative for a debit.
        #[diesel(sql_type = Text)]
        pub account: String,
        #[diesel(sql_type = BigInt)]
        pub amount: i64,
        /// The other side.
        #[diesel(sql_type = Text)]
        pub counter_account: String,
        #[diesel(sql_type = BigInt)]
        pub counter_amount: i64,
        #[diesel(sql_type = BigInt)]
        pub balance_after: i64,
    }

    /// Every transaction under the session's `debit:<session>:` keys, in
    /// the order committed.
    pub async fn debits(pool: &DbPool, session: SessionId) -> Vec<Debit> {
        let mut conn = pool.get().await.expect("connection");
        diesel::sql_query(
            "SELECT t.idempotency_key AS key, t.kind, t.reference, \
             w.account, w.amount, o.account AS counter_account, o.amount AS counter_amount, \
             t.balance_after \
             FROM ledger_txns t \
             JOIN ledger_entries w ON w.txn_id = t.id AND w.seq = 0 \
             JOIN ledger_entries o ON o.txn_id = t.id AND o.seq = 1 \
             WHERE t.idempotency_key LIKE $1 ORDER BY t.id",
        )
        .bind::<Text, _>(format!("debit:{session}:%"))
        .load(&mut conn)
        .await
        .expect("debits query")
    }

    /// The materialised balance row, if the wallet has one.
    pub async fn balance_row(pool: &DbPool, wallet: &WalletId) -> Option<CreditSeconds> {
        #[derive(QueryableByName)]
        struct Amount {
            #[diesel(sql_type = BigInt)]
            amount: i64,
        }
        let mut conn = pool.get().await.expect("connection");
        let mut rows: Vec<Amount> =
            diesel::sql_query("SELECT amount FROM balances WHERE account = $1")
                .bind::<Text, _>(format!("wallet:{wallet}"))
                .load(&mut conn)
                .await
                .expect("balance query");
        rows.pop().map(|r| r.amount)
    }
}

/// Checks that a session's debits are exactly its billing: one `debit`
/// transaction per key, keys `debit:<session>:0..n` without a gap, each
/// taken from `wallet` into `usage`, referencing the session, every amount a
/// multiple of its GPU count, and balances after that fall step by step
/// without going below zero. Returns the total taken.
fn check_debits(
    debits: &[sql::Debit],
    session: SessionId,
    wallet: &WalletId,
    gpus: i64,
) -> CreditSeconds {
    let keys: Vec<String> = debits.iter().map(|d| d.key.clone()).collect();
    let expected: Vec<String> = (0..debits.len())
        .map(|i| format!("debit:{session}:{i}"))
        .collect();
    assert_eq!(keys, expected, "one debit per interval, in order, no gap");
    let mut previous: Option<i64> = None;
    for d in debits {
        assert_eq!(d.kind, "debit", "{d:?}");
        assert_eq!(d.account, format!("wallet:{wallet}"), "{d:?}");
        assert_eq!(d.counter_account, "usage", "{d:?}");
        assert!(d.amount < 0, "a debit takes credit: {d:?}");
        assert_eq!(d.counter_amount, -d.amount, "{d:?}");
        assert_eq!(d.amount % gpus, 0, "billed per GPU: {d:?}");
        assert_eq!(d.reference.as_deref(), Some(&*format!("session:{session}")));
        assert!(d.balance_after >= 0, "{d:?}");
        if let Some(before) = previous {
            assert_eq!(d.balance_after, before + d.amount, "{d:?}");
        }
        previous = Some(d.balance_after);
    }
    -debits.iter().map(|d| d.amount).sum::<i64>()
}

/// A running actor tree on the given ports.
struct Tree {
    supervisor: ractor::ActorRef<SupervisorMsg>,
    launcher: Arc<FakeLauncher>,
    pool: DbPool,
}

impl Tree {
    async fn start(
        ledger: Arc<dyn Ledger>,
        pool: DbPool,
        launcher: Arc<FakeLauncher>,
        settings: SessionSettings,
    ) -> Self {
        let args = SupervisorArgs {
            gpus: two_gpus(),
            gpus_out: Vec::new(),
            policy: Policy::default(),
            profile_sizes: vec![1, 2, 4, 8],
            ledger,
            store: Arc::new(PgSessionStore::new(pool.clone())),
            launcher: launcher.clone(),
            settings,
            restart: RestartPolicy::default(),
        };
        let (supervisor, _) = ractor::Actor::spawn(None, Supervisor, args)
            .await
            .expect("supervisor starts");
        Self {
            supervisor,
            launcher,
            pool,
        }
    }

    async fn try_claim(&self, wallet: &WalletId, gpus: u32) -> Result<SessionHandle, StartError> {
        let wallet = wallet.clone();
        ask(&self.supervisor, |reply| SupervisorMsg::StartSession {
            wallet,
            gpus,
            balance: None,
            reply,
        })
        .await
        .expect("the supervisor answers a claim")
    }

    async fn claim(&self, wallet: &WalletId, gpus: u32) -> SessionHandle {
        self.try_claim(wallet, gpus).await.expect("claim accepted")
    }

    async fn stop(&self, session: SessionId) {
        let live = ask(&self.supervisor, |reply| SupervisorMsg::StopSession {
            session,
            reason: EndReason::UserStopped,
            reply,
        })
        .await
        .expect("the supervisor answers a stop");
        assert!(live, "session {session} was live when stopped");
    }

    async fn snapshot(&self) -> PoolSnapshot {
        ask(&self.supervisor, |reply| SupervisorMsg::Snapshot { reply })
            .await
            .expect("the supervisor answers a snapshot")
    }

    async fn recovery(&self) -> RecoveryReport {
        ask(&self.supervisor, |reply| SupervisorMsg::Recovery { reply })
            .await
            .expect("the supervisor answers")
    }

    /// Waits until the session's row in PostgreSQL is in `state`; returns the
    /// row and the moment it was seen.
    async fn wait_for(&self, session: SessionId, state: &str) -> (sql::SessionRow, Instant) {
        let deadline = Instant::now() + STATE_DEADLINE;
        loop {
            let row = sql::session(&self.pool, session).await;
            if let Some(row) = row.as_ref().filter(|r| r.state == state) {
                return (row.clone(), Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "session {session} not {state} in PostgreSQL within {STATE_DEADLINE:?}: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every GPU is free and nothing runs (releases travel as messages).
    async fn assert_all_gpus_free(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let snapshot = self.snapshot().await;
            if snapshot.free_gpus == snapshot.total_gpus && snapshot.running == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "GPUs still held: {snapshot:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Kills the whole tree at once, as a crash of the gate would.
    async fn kill(self) {
        self.supervisor
            .kill_and_wait(Some(Duration::from_secs(5)))
            .await
            .expect("the tree dies");
    }
}

/// Collects every event a session sends from now on.
fn collect_events(handle: &SessionHandle) -> Arc<Mutex<Vec<SessionEvent>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut rx = handle.events.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = rx.recv().await {
            sink.lock().unwrap().push(event);
        }
    });
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_session_is_billed_exactly_on_postgres_and_frees_its_gpu() {
    let db = ScratchDatabase::migrated("actors_pg_stop").await;
    let pool = pool_for(&db);
    let pg = PgLedger::new(pool.clone());
    let w = wallet(1);
    const FUNDS: CreditSeconds = 1_000;
    pg.credit(&w, FUNDS, SystemAccount::Revenue, "deposit:stop-test")
        .await
        .expect("deposit credited");
    let batching = BatchingLedger::spawn(pg.clone(), 64);
    let tree = Tree::start(
        Arc::new(batching),
        pool.clone(),
        Arc::new(FakeLauncher::new()),
        settings(),
    )
    .await;

    let claimed_at = Instant::now();
    let session = tree.claim(&w, 1).await;
    let events = collect_events(&session);
    let (running, running_seen) = tree.wait_for(session.id, "running").await;
    assert_eq!(running.gpu_indices.len(), 1, "{running:?}");
    assert!(running.has_started_at, "{running:?}");
    assert_eq!(
        running.container_id.as_deref(),
        Some(&*FakeLauncher::container_id(session.id))
    );

    tokio::time::sleep_until(running_seen + Duration::from_millis(3_400)).await;
    let stop_sent = Instant::now();
    tree.stop(session.id).await;
    let (ended, ended_seen) = tree.wait_for(session.id, "ended").await;

    // The record in PostgreSQL.
    assert_eq!(ended.end_kind.as_deref(), Some("user_stopped"), "{ended:?}");
    assert!(ended.has_ended_at, "{ended:?}");
    assert!(ended.gpu_indices.is_empty(), "{ended:?}");
    // 1 GPU: one credit-second per second held, whole seconds only. The
    // session ran from somewhere in [claimed, running seen] to somewhere in
    // [stop sent, end seen].
    let least = whole_secs(stop_sent - running_seen);
    let most = whole_secs(ended_seen - claimed_at);
    assert!(
        (least..=most).contains(&ended.billed_credit),
        "billed {} credit-seconds for between {least} and {most} whole seconds held",
        ended.billed_credit
    );
    assert_eq!(ended.billed_ms, ended.billed_credit * 1_000, "{ended:?}");

    // The ledger: its debits are the bill, to the credit-second.
    let debits = sql::debits(&pool, session.id).await;
    let debited = check_debits(&debits, session.id, &w, 1);
    assert_eq!(debited, ended.billed_credit, "ledger vs record: {debits:?}");
    // The full intervals are 1 credit each; a last partial one may follow.
    assert!(
        debits.len() as i64 == ended.billed_intervals
            || debits.len() as i64 == ended.billed_intervals + 1,
        "{} debits for {} intervals",
        debits.len(),
        ended.billed_intervals
    );
    assert!(ended.billed_intervals >= 3, "{ended:?}");

    // The wallet fell by exactly the bill, and usage took exactly it.
    let balance = pg.balance(&w).await.unwrap();
    assert_eq!(balance, FUNDS - ended.billed_credit);
    assert_eq!(sql::balance_row(&pool, &w).await, Some(balance));
    assert_eq!(
        pg.account_balance(&Account::System(SystemAccount::Usage))
            .await
            .unwrap(),
        ended.billed_credit
    );

    // What the session told its subscribers agrees.
    let events = events.lock().unwrap().clone();
    let last_balance = events.iter().rev().find_map(|e| match e {
        SessionEvent::Balance {
            credit_seconds,
            billed_credit,
        } => Some((*credit_seconds, *billed_credit)),
        _ => None,
    });
    assert_eq!(
        last_balance,
        Some((balance, ended.billed_credit)),
        "{events:?}"
    );
    assert!(
        events.contains(&SessionEvent::State {
            state: SessionState::Ended,
            reason: Some(EndReason::UserStopped),
        }),
        "{events:?}"
    );

    // The container is stopped and the GPU is free: a claim of both GPUs
    // (which needs the one just released) is granted.
    assert!(tree.launcher.stopped(session.id));
    assert!(!tree.launcher.is_running(session.id));
    tree.assert_all_gpus_free().await;
    let both = tree.claim(&w, 2).await;
    let (row, _) = tree.wait_for(both.id, "running").await;
    let mut indices = row.gpu_indices.clone();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1]);
    tree.stop(both.id).await;
    tree.wait_for(both.id, "ended").await;
    tree.assert_all_gpus_free().await;

    tree.kill().await;
    drop(pool);
    db.drop_it().await;
}

/// A wallet funded for `seconds` on `gpus` GPUs claims them and runs out.
async fn credit_runs_out(tag: &str, batching: bool, gpus: u32, seconds: CreditSeconds) {
    let db = ScratchDatabase::migrated(tag).await;
    let pool = pool_for(&db);
    let pg = PgLedger::new(pool.clone());
    let w = wallet(2);
    let funds = seconds * CreditSeconds::from(gpus);
    pg.credit(&w, funds, SystemAccount::Revenue, "deposit:exhaustion-test")
        .await
        .expect("deposit credited");
    let ledger: Arc<dyn Ledger> = if batching {
        Arc::new(BatchingLedger::spawn(pg.clone(), 64))
    } else {
        Arc::new(pg.clone())
    };
    let tree = Tree::start(
        ledger,
        pool.clone(),
        Arc::new(FakeLauncher::new()),
        settings(),
    )
    .await;

    let claimed_at = Instant::now();
    let session = tree.claim(&w, gpus).await;
    let (_, running_seen) = tree.wait_for(session.id, "running").await;
    let (ended, ended_seen) = tree.wait_for(session.id, "ended").await;

    assert_eq!(
        ended.end_kind.as_deref(),
        Some("credit_exhausted"),
        "{ended:?}"
    );
    // It ran exactly as long as the credit lasted: `seconds` after it started
    // running, which was between the claim and seeing it run.
    let ran_at_least = ended_seen - running_seen;
    let ran_at_most = ended_seen - claimed_at;
    let lasted = Duration::from_secs(seconds as u64);
    assert!(
        ran_at_most >= lasted,
        "ended after at most {ran_at_most:?}, before the credit ran out ({lasted:?})"
    );
    assert!(
        ran_at_least < lasted + Duration::from_millis(900),
        "ended {ran_at_least:?} after running, well after the credit ran out ({lasted:?})"
    );

    // Every credit-second was billed, none more, and the balance never went
    // below zero on the way.
    assert_eq!(ended.billed_credit, funds, "{ended:?}");
    let debits = sql::debits(&pool, session.id).await;
    let debited = check_debits(&debits, session.id, &w, i64::from(gpus));
    assert_eq!(debited, funds, "{debits:?}");
    assert_eq!(
        debits.last().map(|d| d.balance_after),
        Some(0),
        "{debits:?}"
    );
    assert_eq!(pg.balance(&w).await.unwrap(), 0);
    assert_eq!(sql::balance_row(&pool, &w).await, Some(0));

    assert!(tree.launcher.stopped(session.id));
    assert!(!tree.launcher.is_running(session.id));
    tree.assert_all_gpus_free().await;
    // With nothing left, the wallet cannot claim again.
    match tree.try_claim(&w, 1).await {
        Err(StartError::Claim(ClaimError::NoCredit { gpus: 1 })) => {}
        other => panic!("a wallet at 0 claimed: {other:?}"),
    }

    tree.kill().await;
    drop(pool);
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn credit_exhaustion_on_the_batching_ledger_ends_at_exactly_zero() {
    // 2 GPUs for 3 s: debits of 2 credit-seconds each.
    credit_runs_out("actors_pg_exhaust_batch", true, 2, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn credit_exhaustion_on_pg_ledger_ends_at_exactly_zero() {
    credit_runs_out("actors_pg_exhaust_direct", false, 1, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_tree_recovers_from_postgres_after_a_crash() {
    let db = ScratchDatabase::migrated("actors_pg_recover").await;
    const FUNDS: CreditSeconds = 1_000;
    let (survivor_w, lost_w, waiting_w) = (wallet(10), wallet(11), wallet(12));
    {
        let pg = PgLedger::new(pool_for(&db));
        for (n, w) in [&survivor_w, &lost_w, &waiting_w].into_iter().enumerate() {
            pg.credit(w, FUNDS, SystemAccount::Revenue, format!("deposit:{n}"))
                .await
                .expect("deposit credited");
        }
    }

    // The first gate: two sessions run, a third waits for a GPU; then the
    // gate dies at once, between two billing ticks.
    let pool_a = pool_for(&db);
    let launcher_a = Arc::new(FakeLauncher::new());
    let tree_a = Tree::start(
        Arc::new(BatchingLedger::spawn(PgLedger::new(pool_a.clone()), 64)),
        pool_a.clone(),
        launcher_a.clone(),
        settings(),
    )
    .await;
    let survivor = tree_a.claim(&survivor_w, 1).await.id;
    let lost = tree_a.claim(&lost_w, 1).await.id;
    tree_a.wait_for(survivor, "running").await;
    let (_, running_seen) = tree_a.wait_for(lost, "running").await;
    let waiting = tree_a.claim(&waiting_w, 1).await.id;
    tree_a.wait_for(waiting, "queued").await;
    // Both started within moments of each other: 1.4 s after the later one
    // was seen running, each is past its first tick and well before its
    // second, so the record and the ledger agree when the gate dies.
    tokio::time::sleep_until(running_seen + Duration::from_millis(1_400)).await;
    tree_a.kill().await;
    drop(pool_a);

    let pool = pool_for(&db);
    let pg = PgLedger::new(pool.clone());
    let survivor_before = sql::session(&pool, survivor).await.expect("row");
    let lost_before = sql::session(&pool, lost).await.expect("row");
    for (id, row, w) in [
        (survivor, &survivor_before, &survivor_w),
        (lost, &lost_before, &lost_w),
    ] {
        assert_eq!(row.state, "running", "the crash left it running: {row:?}");
        assert_eq!(row.gpu_indices.len(), 1, "{row:?}");
        assert!(row.billed_intervals >= 1, "it was billed: {row:?}");
        let debited = check_debits(&sql::debits(&pool, id).await, id, w, 1);
        assert_eq!(debited, row.billed_credit, "{row:?}");
    }
    assert_ne!(survivor_before.gpu_indices, lost_before.gpu_indices);
    assert_eq!(
        sql::session(&pool, waiting).await.expect("row").state,
        "queued"
    );
    // The records are what the store gives recovery.
    let active: Vec<SessionId> = PgSessionStore::new(pool.clone())
        .load_active()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(active, [survivor, lost, waiting]);

    // Down for a while: this time must not be billed.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The second gate, on the same database: the survivor's container still
    // runs, the lost one's is gone, and a container nobody owns runs too.
    let launcher_b = Arc::new(FakeLauncher::new());
    launcher_b.insert_running(RunningContainer {
        session: survivor,
        container_id: FakeLauncher::container_id(survivor),
        host: 0,
    });
    let orphan = SessionId::new();
    launcher_b.insert_running(RunningContainer {
        session: orphan,
        container_id: "orphan".into(),
        host: 0,
    });
    let before_start = Instant::now();
    let tree = Tree::start(
        Arc::new(BatchingLedger::spawn(pg.clone(), 64)),
        pool.clone(),
        launcher_b.clone(),
        settings(),
    )
    .await;
    let after_start = Instant::now();
    let report = tree.recovery().await;
    assert_eq!(report.adopted, [survivor]);
    assert_eq!(report.ended, [lost]);
    assert_eq!(report.requeued, [waiting]);
    assert_eq!(report.orphans_removed, [orphan]);
    assert!(!launcher_b.is_running(orphan));

    // The lost session is ended in PostgreSQL, its bill as it was.
    let lost_after = sql::session(&pool, lost).await.expect("row");
    assert_eq!(lost_after.state, "ended", "{lost_after:?}");
    assert_eq!(
        lost_after.end_kind.as_deref(),
        Some("lost_on_restart"),
        "{lost_after:?}"
    );
    assert!(lost_after.has_ended_at && lost_after.gpu_indices.is_empty());
    assert_eq!(lost_after.billed_credit, lost_before.billed_credit);
    let lost_debited = check_debits(&sql::debits(&pool, lost).await, lost, &lost_w, 1);
    assert_eq!(lost_debited, lost_after.billed_credit);
    assert_eq!(pg.balance(&lost_w).await.unwrap(), FUNDS - lost_debited);

    // The waiting session gets the GPU the lost one had; the survivor keeps
    // its own.
    let (waiting_row, _) = tree.wait_for(waiting, "running").await;
    assert_eq!(waiting_row.gpu_indices, lost_before.gpu_indices);
    let survivor_row = sql::session(&pool, survivor).await.expect("row");
    assert_eq!(survivor_row.state, "running");
    assert_eq!(survivor_row.gpu_indices, survivor_before.gpu_indices);
    assert_eq!(survivor_row.container_id, survivor_before.container_id);
    assert_eq!(tree.snapshot().await.free_gpus, 0);

    // Billing resumes where it stopped, under new keys; the downtime is free.
    tokio::time::sleep_until(after_start + Duration::from_millis(1_500)).await;
    let stop_sent = Instant::now();
    tree.stop(survivor).await;
    let (ended, ended_seen) = tree.wait_for(survivor, "ended").await;
    assert_eq!(ended.end_kind.as_deref(), Some("user_stopped"), "{ended:?}");
    let since_restart = ended.billed_credit - survivor_before.billed_credit;
    let least = whole_secs(stop_sent - after_start);
    let most = whole_secs(ended_seen - before_start);
    assert!(
        (least..=most).contains(&since_restart),
        "billed {since_restart} after the restart for between {least} and {most} whole seconds"
    );
    let debits = sql::debits(&pool, survivor).await;
    let debited = check_debits(&debits, survivor, &survivor_w, 1);
    assert_eq!(debited, ended.billed_credit, "{debits:?}");
    assert!(debits.len() as i64 > survivor_before.billed_intervals);
    assert_eq!(pg.balance(&survivor_w).await.unwrap(), FUNDS - debited);
    assert!(launcher_b.stopped(survivor));

    tree.stop(waiting).await;
    tree.wait_for(waiting, "ended").await;
    tree.assert_all_gpus_free().await;

    tree.kill().await;
    drop(pool);
    db.drop_it().await;
}
