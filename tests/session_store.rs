//! `PgSessionStore` on a real PostgreSQL: records round-trip exactly, the
//! database keeps the timestamps, recovery sees active sessions oldest
//! first, an ended session is final whatever a stale actor saves, and the
//! lease history (`session_leases`) follows the GPUs each save records.

mod support;

use chrono::{DateTime, Utc};
use deskgate::db::DbPool;
use deskgate::db::schema::sessions;
use deskgate::platform::secret::Secret;
use deskgate::sessions::store::PgSessionStore;
use deskgate_actors::ports::{
    EndReason, GpuAddr, SessionId, SessionRecord, SessionState, SessionStore, WalletId,
};
use support::ScratchDatabase;
use uuid::Uuid;

const ALICE: &str = "0x00000000000000000000000000000000000a11ce";
const BOB: &str = "0x0000000000000000000000000000000000000b0b";

async fn setup(tag: &str) -> (ScratchDatabase, DbPool, PgSessionStore) {
    let db = ScratchDatabase::migrated(tag).await;
    let pool = deskgate::db::pool(&Secret::new(db.url.clone())).expect("pool");
    let store = PgSessionStore::new(pool.clone());
    (db, pool, store)
}

async fn teardown(db: ScratchDatabase, pool: DbPool) {
    drop(pool);
    db.drop_it().await;
}

fn record(id: SessionId, wallet: &str, state: SessionState) -> SessionRecord {
    SessionRecord {
        state,
        ..SessionRecord::new(id, WalletId::new(wallet), 2)
    }
}

/// The ids `load_active` lists, in its order.
async fn active_ids(store: &PgSessionStore) -> Vec<SessionId> {
    store
        .load_active()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect()
}

/// Direct reads and writes of the table, for what the port does not show.
/// (In a module: diesel's `RunQueryDsl::load` would shadow the port's.)
mod sql {
    use super::*;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;

    /// The database's timestamps of one session.
    #[derive(Debug, Clone, Copy, PartialEq, Queryable)]
    pub struct Stamps {
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
        pub started_at: Option<DateTime<Utc>>,
        pub ended_at: Option<DateTime<Utc>>,
    }

    pub async fn stamps(pool: &DbPool, id: SessionId) -> Stamps {
        let mut conn = pool.get().await.unwrap();
        sessions::table
            .find(id.0)
            .select((
                sessions::created_at,
                sessions::updated_at,
                sessions::started_at,
                sessions::ended_at,
            ))
            .first(&mut conn)
            .await
            .unwrap()
    }

    /// `(host, index, released)` of every lease on record for `id`.
    pub async fn leases(pool: &DbPool, id: SessionId) -> Vec<(i32, i32, bool)> {
        #[derive(diesel::QueryableByName)]
        struct Lease {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            host: i32,
            #[diesel(sql_type = diesel::sql_types::Integer)]
            gpu_index: i32,
            #[diesel(sql_type = diesel::sql_types::Bool)]
            released: bool,
        }
        let mut conn = pool.get().await.unwrap();
        diesel::sql_query(
            "SELECT host, gpu_index, released_at IS NOT NULL AS released FROM session_leases \
             WHERE session_id = $1 ORDER BY host, gpu_index",
        )
        .bind::<diesel::sql_types::Uuid, _>(id.0)
        .load::<Lease>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.host, l.gpu_index, l.released))
        .collect()
    }

    /// Gives every session the same creation time.
    pub async fn same_created_at(pool: &DbPool) {
        let mut conn = pool.get().await.unwrap();
        diesel::update(sessions::table)
            .set(sessions::created_at.eq(diesel::dsl::now))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}
use sql::stamps;

/// Every field, with values at the edges of their ranges, and every
/// `EndReason` variant, comes back exactly as saved.
#[tokio::test(flavor = "multi_thread")]
async fn records_round_trip_exactly() {
    let (db, pool, store) = setup("sessions_round_trip").await;

    let running = SessionRecord {
        id: SessionId::new(),
        wallet: WalletId::new(&ALICE.to_uppercase().replace("0X", "0x")),
        gpus: 3,
        state: SessionState::Running,
        // Order is kept; host 65535 is the largest u16.
        gpu_addrs: vec![
            GpuAddr {
                host: 65535,
                index: 7,
            },
            GpuAddr {
                host: 65535,
                index: 0,
            },
            GpuAddr {
                host: 65535,
                index: i32::MAX as u32,
            },
        ],
        container_id: Some("3f2a9c0d1e".into()),
        billed_intervals: i64::MAX as u64,
        billed_credit: 1_234_567_890_123,
        billed_ms: 987_654_321,
        end_reason: None,
        queued_at: None,
    };
    store.save(&running).await.unwrap();
    assert_eq!(store.load(running.id).await.unwrap(), Some(running.clone()));

    // A stopping session may already carry its reason.
    let mut stopping = record(SessionId::new(), BOB, SessionState::Stopping);
    stopping.end_reason = Some(EndReason::PresenceTimeout);
    stopping.gpu_addrs = vec![GpuAddr { host: 0, index: 1 }];
    store.save(&stopping).await.unwrap();
    assert_eq!(store.load(stopping.id).await.unwrap(), Some(stopping));

    let reasons = [
        EndReason::UserStopped,
        EndReason::CreditExhausted,
        EndReason::PresenceTimeout,
        EndReason::ContainerExited {
            code: -9,
            oom: true,
        },
        EndReason::ContainerExited {
            code: 0,
            oom: false,
        },
        EndReason::LaunchFailed("image \"x\" not found: ünïcode ok".into()),
        EndReason::Crashed(String::new()),
        EndReason::AdminKilled,
        EndReason::LostOnRestart,
    ];
    for reason in reasons {
        let mut ended = record(SessionId::new(), ALICE, SessionState::Running);
        ended.container_id = Some("c".into());
        ended.billed_intervals = 4;
        ended.billed_credit = 240;
        ended.billed_ms = 240_000;
        ended.end(reason.clone());
        store.save(&ended).await.unwrap();
        assert_eq!(
            store.load(ended.id).await.unwrap(),
            Some(ended),
            "{reason:?}"
        );
    }

    assert_eq!(store.load(SessionId::new()).await.unwrap(), None);
    teardown(db, pool).await;
}

/// Records the store cannot represent are refused with a reason, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn unrepresentable_records_are_refused() {
    let (db, pool, store) = setup("sessions_refused").await;

    let mut spanning = record(SessionId::new(), ALICE, SessionState::Launching);
    spanning.gpu_addrs = vec![GpuAddr { host: 0, index: 0 }, GpuAddr { host: 1, index: 0 }];
    let err = store.save(&spanning).await.unwrap_err();
    assert!(err.0.contains("span hosts 0 and 1"), "{err}");
    assert_eq!(store.load(spanning.id).await.unwrap(), None);

    let mut huge_index = record(SessionId::new(), ALICE, SessionState::Launching);
    huge_index.gpu_addrs = vec![GpuAddr {
        host: 0,
        index: u32::MAX,
    }];
    let err = store.save(&huge_index).await.unwrap_err();
    assert!(err.0.contains("GPU index"), "{err}");

    // The schema's own rules surface as errors naming the constraint.
    let mut ended_without_reason = record(SessionId::new(), ALICE, SessionState::Ended);
    ended_without_reason.end_reason = None;
    let err = store.save(&ended_without_reason).await.unwrap_err();
    assert!(err.0.contains("sessions_ended_has_reason"), "{err}");
    assert!(
        err.0.contains(&ended_without_reason.id.to_string()),
        "{err}"
    );
    assert_eq!(store.load(ended_without_reason.id).await.unwrap(), None);

    teardown(db, pool).await;
}

/// `load_active` leaves ended sessions out and lists the rest by first save,
/// then by id; later saves do not move a session.
#[tokio::test(flavor = "multi_thread")]
async fn load_active_is_oldest_first_without_ended() {
    let (db, pool, store) = setup("sessions_active").await;

    // Ids that sort opposite to creation order, so order by id would fail.
    let ids: Vec<SessionId> = (0..4u128)
        .rev()
        .map(|n| SessionId(Uuid::from_u128(n + 1)))
        .collect();
    let states = [
        SessionState::Queued,
        SessionState::Running,
        SessionState::Launching,
        SessionState::Stopping,
    ];
    for (id, state) in ids.iter().zip(states) {
        store.save(&record(*id, ALICE, state)).await.unwrap();
    }
    let mut ended = record(SessionId(Uuid::from_u128(100)), BOB, SessionState::Running);
    ended.end(EndReason::UserStopped);
    store.save(&ended).await.unwrap();

    // Saving the oldest again keeps its place.
    let mut oldest = record(ids[0], ALICE, SessionState::Launching);
    oldest.gpu_addrs = vec![GpuAddr { host: 0, index: 0 }, GpuAddr { host: 0, index: 1 }];
    store.save(&oldest).await.unwrap();

    let active = active_ids(&store).await;
    assert_eq!(active, ids);
    assert_eq!(store.load_active().await.unwrap()[0], oldest);

    // Sessions created in the same instant come in id order.
    sql::same_created_at(&pool).await;
    let active = active_ids(&store).await;
    let mut by_id = ids.clone();
    by_id.sort();
    assert_eq!(active, by_id);

    teardown(db, pool).await;
}

/// A record that knows when it was queued is created at that instant, to the
/// microsecond, whatever order the saves land in: claims are saved
/// concurrently and recovery re-queues by this column. A later save keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn the_queued_instant_orders_rows_saved_out_of_order() {
    let (db, pool, store) = setup("sessions_queued_at").await;
    let base = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_800_000_000_123_456);
    let mut first = record(SessionId::new(), ALICE, SessionState::Queued);
    first.queued_at = Some(base);
    let mut second = record(SessionId::new(), BOB, SessionState::Queued);
    second.queued_at = Some(base + std::time::Duration::from_micros(1));
    // The later claim's save lands first.
    store.save(&second).await.unwrap();
    store.save(&first).await.unwrap();
    let active = active_ids(&store).await;
    assert_eq!(active, [first.id, second.id]);
    let created = stamps(&pool, first.id).await.created_at;
    let expected: DateTime<Utc> = base.into();
    assert_eq!(created, expected);

    // Running later, saved by an actor that no longer carries the instant.
    first.state = SessionState::Running;
    first.gpu_addrs = vec![GpuAddr { host: 0, index: 0 }];
    first.queued_at = None;
    store.save(&first).await.unwrap();
    assert_eq!(stamps(&pool, first.id).await.created_at, expected);

    teardown(db, pool).await;
}

/// The batching store inserts many new claims' rows together, each created
/// at its queued instant, and a late queued row never overwrites one that
/// has already ended (a claim cancelled before its row landed).
#[tokio::test(flavor = "multi_thread")]
async fn batched_queued_rows_land_once_each_at_their_queued_instant() {
    let (db, pool, _) = setup("sessions_queued_batches").await;
    let store = std::sync::Arc::new(PgSessionStore::batching(pool.clone(), 64));
    let base = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_800_000_000_000_000);
    let records: Vec<SessionRecord> = (0..200u64)
        .map(|n| {
            let mut r = record(
                SessionId::new(),
                &format!("0x{n:040x}"),
                SessionState::Queued,
            );
            r.queued_at = Some(base + std::time::Duration::from_micros(n));
            r
        })
        .collect();
    // Saved concurrently, in reverse order of their queued instants.
    let saves: Vec<_> = records
        .iter()
        .rev()
        .cloned()
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move { store.save(&r).await })
        })
        .collect();
    for save in saves {
        save.await.unwrap().unwrap();
    }
    let expected: Vec<SessionId> = records.iter().map(|r| r.id).collect();
    assert_eq!(active_ids(&store).await, expected);

    // Ended first, its queued row late: the end stands.
    let mut cancelled = record(SessionId::new(), BOB, SessionState::Queued);
    cancelled.end(EndReason::UserStopped);
    store.save(&cancelled).await.unwrap();
    let mut late = record(cancelled.id, BOB, SessionState::Queued);
    late.queued_at = Some(base);
    store.save(&late).await.unwrap();
    assert_eq!(
        store.load(cancelled.id).await.unwrap().unwrap().state,
        SessionState::Ended
    );

    teardown(db, pool).await;
}

/// `started_at` is the first save as running and survives later saves;
/// `updated_at` moves on every save; `ended_at` comes with the end.
#[tokio::test(flavor = "multi_thread")]
async fn timestamps_are_kept_by_the_database() {
    let (db, pool, store) = setup("sessions_stamps").await;
    let mut session = record(SessionId::new(), ALICE, SessionState::Queued);

    store.save(&session).await.unwrap();
    let queued = stamps(&pool, session.id).await;
    assert_eq!(queued.started_at, None);
    assert_eq!(queued.ended_at, None);

    session.state = SessionState::Running;
    session.gpu_addrs = vec![GpuAddr { host: 0, index: 0 }];
    store.save(&session).await.unwrap();
    let first_run = stamps(&pool, session.id).await;
    let started = first_run.started_at.expect("started_at set when running");
    assert!(started > queued.updated_at);
    assert_eq!(first_run.created_at, queued.created_at);

    // Billing saves while running, then the end.
    session.billed_intervals = 1;
    session.billed_credit = 60;
    store.save(&session).await.unwrap();
    let billed = stamps(&pool, session.id).await;
    assert_eq!(billed.started_at, Some(started));
    assert!(billed.updated_at > first_run.updated_at);

    session.state = SessionState::Stopping;
    store.save(&session).await.unwrap();
    session.end(EndReason::CreditExhausted);
    store.save(&session).await.unwrap();
    let ended = stamps(&pool, session.id).await;
    assert_eq!(ended.started_at, Some(started));
    assert_eq!(ended.created_at, queued.created_at);
    let ended_at = ended.ended_at.expect("ended_at set when ended");
    assert!(ended_at > started);
    assert_eq!(ended.updated_at, ended_at);

    // A session that never ran has no start.
    let mut never_ran = record(SessionId::new(), BOB, SessionState::Queued);
    store.save(&never_ran).await.unwrap();
    never_ran.end(EndReason::UserStopped);
    store.save(&never_ran).await.unwrap();
    let stamps_never_ran = stamps(&pool, never_ran.id).await;
    assert_eq!(stamps_never_ran.started_at, None);
    assert!(stamps_never_ran.ended_at.is_some());

    teardown(db, pool).await;
}

/// Once ended, a row never changes: a stale actor's save of an older state,
/// or a second end with another reason, succeeds and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn ended_sessions_never_change() {
    let (db, pool, store) = setup("sessions_final").await;

    let mut running = record(SessionId::new(), ALICE, SessionState::Running);
    running.gpu_addrs = vec![GpuAddr { host: 2, index: 3 }];
    running.container_id = Some("ctr".into());
    running.billed_intervals = 2;
    running.billed_credit = 120;
    running.billed_ms = 120_000;
    store.save(&running).await.unwrap();

    let mut ended = running.clone();
    ended.billed_intervals = 3;
    ended.billed_credit = 150;
    ended.billed_ms = 150_000;
    ended.end(EndReason::ContainerExited {
        code: 137,
        oom: true,
    });
    store.save(&ended).await.unwrap();
    let at_end = stamps(&pool, ended.id).await;

    // The stale actor still holds the running record, and later a billing
    // step; neither may resurrect the session.
    store.save(&running).await.unwrap();
    let mut stale = running.clone();
    stale.billed_intervals = 9;
    store.save(&stale).await.unwrap();
    let mut other_end = running.clone();
    other_end.end(EndReason::AdminKilled);
    store.save(&other_end).await.unwrap();

    assert_eq!(store.load(ended.id).await.unwrap(), Some(ended.clone()));
    assert_eq!(stamps(&pool, ended.id).await, at_end);
    assert!(store.load_active().await.unwrap().is_empty());

    teardown(db, pool).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_history_opens_with_the_gpus_and_closes_with_the_end() {
    let (db, pool, store) = setup("store_leases").await;
    let id = SessionId::new();
    let mut session = record(id, ALICE, SessionState::Queued);
    store.save(&session).await.unwrap();
    assert_eq!(sql::leases(&pool, id).await, []);

    session.state = SessionState::Launching;
    session.gpu_addrs = vec![GpuAddr { host: 1, index: 0 }, GpuAddr { host: 1, index: 3 }];
    store.save(&session).await.unwrap();
    session.state = SessionState::Running;
    store.save(&session).await.unwrap();
    assert_eq!(
        sql::leases(&pool, id).await,
        [(1, 0, false), (1, 3, false)],
        "one open lease per GPU, however often the session is saved"
    );

    session.end(EndReason::UserStopped);
    store.save(&session).await.unwrap();
    assert_eq!(sql::leases(&pool, id).await, [(1, 0, true), (1, 3, true)]);

    // A stale save of the live session changes neither the row nor the history.
    let mut stale = record(id, ALICE, SessionState::Running);
    stale.gpu_addrs = vec![GpuAddr { host: 1, index: 0 }];
    store.save(&stale).await.unwrap();
    assert_eq!(sql::leases(&pool, id).await, [(1, 0, true), (1, 3, true)]);
    teardown(db, pool).await;
}
