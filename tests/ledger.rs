//! The credit ledger on a real PostgreSQL: exact amounts, idempotent keys,
//! invariants the schema keeps by itself, invariants under concurrent chaos
//! (killed backends, cancelled requests), and exactly-once effects across a
//! process killed with SIGKILL.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskgate::db::DbPool;
use deskgate::money::ledger::{
    Account, BatchingLedger, Operation, PgLedger, Posting, SystemAccount,
};
use deskgate::platform::secret::Secret;
use deskgate_actors::ports::{CreditSeconds, DebitKey, Ledger, LedgerError, SessionId, WalletId};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::ScratchDatabase;
use tokio::io::{AsyncBufReadExt, BufReader};

fn wallet(n: usize) -> WalletId {
    WalletId::new(&format!("0x{:040x}", n + 1))
}

fn posting(key: &str, operation: Operation) -> Posting {
    Posting {
        key: key.into(),
        operation,
        reference: None,
        created_by: "system".into(),
    }
}

fn pool_for(db: &ScratchDatabase) -> DbPool {
    deskgate::db::pool(&Secret::new(db.url.clone())).expect("pool builds")
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(pool: &DbPool, sql: &str) -> i64 {
    let mut conn = pool.get().await.expect("connection");
    let row: Count = diesel::sql_query(sql)
        .get_result(&mut conn)
        .await
        .expect(sql);
    row.n
}

/// The invariants the ledger promises, checked over the whole database.
async fn assert_ledger_invariants(pool: &DbPool) {
    let unbalanced = count(
        pool,
        "SELECT count(*) AS n FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id HAVING sum(amount) <> 0) x",
    )
    .await;
    assert_eq!(unbalanced, 0, "every transaction sums to zero");
    let empty = count(
        pool,
        "SELECT count(*) AS n FROM ledger_txns t WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.txn_id = t.id)",
    )
    .await;
    assert_eq!(empty, 0, "every transaction has entries");
    let negative = count(pool, "SELECT count(*) AS n FROM balances WHERE amount < 0").await;
    assert_eq!(negative, 0, "no wallet balance is negative");
    let drifted = count(
        pool,
        "SELECT count(*) AS n FROM balances b FULL JOIN \
         (SELECT account, sum(amount) AS total FROM ledger_entries WHERE account LIKE 'wallet:%' GROUP BY account) e \
         USING (account) WHERE COALESCE(b.amount, 0) <> COALESCE(e.total, 0)",
    )
    .await;
    assert_eq!(
        drifted, 0,
        "every wallet balance equals the sum of its entries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_debits_and_transfers_move_exact_amounts() {
    let db = ScratchDatabase::migrated("ledger_exact").await;
    let ledger = PgLedger::new(pool_for(&db));
    let (alice, bob) = (wallet(1), wallet(2));

    let credited = ledger
        .credit(&alice, 1000, SystemAccount::Revenue, "deposit:1")
        .await
        .unwrap();
    assert_eq!(credited.balance_after, 1000);
    assert!(!credited.replayed);
    let moved = ledger.transfer(&alice, &bob, 300, "gift:1").await.unwrap();
    assert_eq!(
        moved.balance_after, 700,
        "a transfer answers the payer's balance"
    );
    let key = DebitKey {
        session: SessionId::new(),
        interval: 0,
    };
    assert_eq!(ledger.debit(&bob, 120, key).await, Ok(180));

    assert_eq!(ledger.balance(&alice).await, Ok(700));
    assert_eq!(ledger.balance(&bob).await, Ok(180));
    assert_eq!(
        ledger.balance(&wallet(3)).await,
        Ok(0),
        "an unknown wallet holds nothing"
    );
    let revenue = ledger
        .account_balance(&Account::System(SystemAccount::Revenue))
        .await;
    let usage = ledger
        .account_balance(&Account::System(SystemAccount::Usage))
        .await;
    assert_eq!((revenue, usage), (Ok(-1000), Ok(120)));

    assert_eq!(
        ledger
            .debit(&bob, 181, DebitKey { interval: 1, ..key })
            .await,
        Err(LedgerError::InsufficientCredit {
            balance: 180,
            asked: 181
        })
    );
    assert_eq!(
        ledger.balance(&bob).await,
        Ok(180),
        "a refused debit takes nothing"
    );
    assert_ledger_invariants(&pool_for(&db)).await;
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_key_returns_the_first_result_and_changed_parameters_are_refused() {
    let db = ScratchDatabase::migrated("ledger_keys").await;
    let ledger = PgLedger::new(pool_for(&db));
    let alice = wallet(1);
    ledger
        .credit(&alice, 100, SystemAccount::Revenue, "deposit:1")
        .await
        .unwrap();
    let key = DebitKey {
        session: SessionId::new(),
        interval: 4,
    };

    assert_eq!(ledger.debit(&alice, 30, key).await, Ok(70));
    ledger
        .credit(&alice, 50, SystemAccount::Admin, "adjust:1")
        .await
        .unwrap();
    // The replay answers what the first debit answered, and takes nothing.
    assert_eq!(ledger.debit(&alice, 30, key).await, Ok(70));
    assert_eq!(ledger.balance(&alice).await, Ok(120));
    assert_eq!(
        ledger.debit(&alice, 31, key).await,
        Err(LedgerError::KeyConflict(key.to_string()))
    );
    let other_kind = ledger
        .credit(&alice, 30, SystemAccount::Admin, key.to_string())
        .await;
    assert_eq!(other_kind, Err(LedgerError::KeyConflict(key.to_string())));

    // 100 - 30 + 50 = 120 when the adjustment was posted; 100 now.
    let later = DebitKey { interval: 5, ..key };
    assert_eq!(ledger.debit(&alice, 20, later).await, Ok(100));
    let replayed = ledger
        .credit(&alice, 50, SystemAccount::Admin, "adjust:1")
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(
        replayed.balance_after, 120,
        "the first result, not today's balance"
    );
    assert_eq!(
        count(&pool_for(&db), "SELECT count(*) AS n FROM ledger_txns").await,
        4
    );
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_schema_refuses_unbalanced_negative_or_rewritten_entries() {
    let db = ScratchDatabase::migrated("ledger_schema").await;
    let pool = pool_for(&db);
    let ledger = PgLedger::new(pool.clone());
    let alice = wallet(1);
    let receipt = ledger
        .credit(&alice, 10, SystemAccount::Revenue, "deposit:1")
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let account = Account::Wallet(alice.clone()).to_string();

    let txn = "INSERT INTO ledger_txns (kind, idempotency_key, balance_after, created_by) \
               VALUES ('debit', 'manual:1', 0, 'admin') RETURNING id AS n";
    let attempts = [
        // entries that do not sum to zero
        format!("WITH t AS ({txn}) INSERT INTO ledger_entries SELECT n, 0, '{account}', -5 FROM t"),
        // a balanced transaction that overdraws the wallet
        format!(
            "WITH t AS ({txn}) INSERT INTO ledger_entries \
             SELECT n, s, a, m FROM t, (VALUES (0, '{account}', -11), (1, 'usage', 11)) v(s, a, m)"
        ),
        // history rewritten
        format!(
            "UPDATE ledger_entries SET amount = 1000 WHERE txn_id = {}",
            receipt.txn_id
        ),
        format!("DELETE FROM ledger_txns WHERE id = {}", receipt.txn_id),
        // an account that is not a wallet address or a system account
        format!(
            "WITH t AS ({txn}) INSERT INTO ledger_entries \
             SELECT n, s, a, m FROM t, (VALUES (0, 'wallet:alice', -1), (1, 'usage', 1)) v(s, a, m)"
        ),
    ];
    for sql in attempts {
        let result = diesel::sql_query(&sql).execute(&mut conn).await;
        assert!(result.is_err(), "the schema must refuse: {sql}");
    }
    drop(conn);
    assert_eq!(ledger.balance(&alice).await, Ok(10));
    assert_ledger_invariants(&pool).await;
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_commits_each_posting_once_and_fails_postings_alone() {
    let db = ScratchDatabase::migrated("ledger_batch").await;
    let ledger = PgLedger::new(pool_for(&db));
    let wallets: Vec<WalletId> = (0..50).map(wallet).collect();
    for (i, w) in wallets.iter().enumerate() {
        ledger
            .credit(w, 100, SystemAccount::Revenue, format!("deposit:{i}"))
            .await
            .unwrap();
    }
    let mut batch: Vec<Posting> = wallets
        .iter()
        .enumerate()
        .map(|(i, w)| {
            posting(
                &format!("bill:{i}"),
                Operation::Debit {
                    wallet: w.clone(),
                    amount: 40,
                    to: SystemAccount::Usage,
                },
            )
        })
        .collect();
    // Too much for wallet 0 after its first debit; and a zero amount.
    batch.push(posting(
        "bill:extra",
        Operation::Debit {
            wallet: wallets[0].clone(),
            amount: 61,
            to: SystemAccount::Usage,
        },
    ));
    batch.push(posting(
        "bill:zero",
        Operation::Debit {
            wallet: wallets[1].clone(),
            amount: 0,
            to: SystemAccount::Usage,
        },
    ));

    let first = ledger.post_batch(&batch).await.unwrap();
    assert!(
        first[..50]
            .iter()
            .all(|a| matches!(a, Ok(r) if r.balance_after == 60 && !r.replayed))
    );
    assert_eq!(
        first[50],
        Err(LedgerError::InsufficientCredit {
            balance: 60,
            asked: 61
        })
    );
    assert_eq!(first[51], Err(LedgerError::InvalidAmount(0)));

    let again = ledger.post_batch(&batch).await.unwrap();
    for (a, b) in first[..50].iter().zip(&again[..50]) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!((a.txn_id, a.balance_after), (b.txn_id, b.balance_after));
        assert!(b.replayed);
    }
    for w in &wallets {
        assert_eq!(ledger.balance(w).await, Ok(60));
    }
    assert_ledger_invariants(&pool_for(&db)).await;
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_batching_ledger_serves_concurrent_sessions_exactly_once() {
    let db = ScratchDatabase::migrated("ledger_batching").await;
    let pg = PgLedger::new(pool_for(&db));
    let batching = BatchingLedger::spawn(pg.clone(), 256);
    let sessions = 200;
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let w = wallet(i);
        pg.credit(&w, 1000, SystemAccount::Revenue, format!("deposit:{i}"))
            .await
            .unwrap();
        let ledger = batching.clone();
        tasks.push(tokio::spawn(async move {
            let session = SessionId::new();
            let mut last = 0;
            for interval in 0..5 {
                let key = DebitKey { session, interval };
                last = ledger.debit(&w, 10, key).await.unwrap();
                // Every session also replays its interval once.
                assert_eq!(ledger.debit(&w, 10, key).await, Ok(last));
            }
            last
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 950);
    }
    let pool = pool_for(&db);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM ledger_txns WHERE kind = 'debit'"
        )
        .await,
        sessions as i64 * 5
    );
    assert_ledger_invariants(&pool).await;
    db.drop_it().await;
}

/// A random operation over a few wallets, with small amounts so that
/// refusals for insufficient credit happen often.
fn random_operation(rng: &mut impl Rng, wallets: usize) -> Operation {
    let w = |rng: &mut dyn rand::RngCore| wallet(rng.random_range(0..wallets));
    match rng.random_range(0..10) {
        0..=2 => Operation::Credit {
            wallet: w(rng),
            amount: rng.random_range(1..=100),
            from: SystemAccount::Revenue,
        },
        3..=7 => Operation::Debit {
            wallet: w(rng),
            amount: rng.random_range(1..=80),
            to: SystemAccount::Usage,
        },
        _ => loop {
            let (from, to) = (w(rng), w(rng));
            if from != to {
                break Operation::Transfer {
                    from,
                    to,
                    amount: rng.random_range(1..=60),
                };
            }
        },
    }
}

fn effect(operation: &Operation, balances: &mut BTreeMap<WalletId, CreditSeconds>) {
    match operation {
        Operation::Credit { wallet, amount, .. } => {
            *balances.entry(wallet.clone()).or_default() += amount
        }
        Operation::Debit { wallet, amount, .. } => {
            *balances.entry(wallet.clone()).or_default() -= amount
        }
        Operation::Transfer { from, to, amount } => {
            *balances.entry(from.clone()).or_default() -= amount;
            *balances.entry(to.clone()).or_default() += amount;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invariants_hold_after_concurrent_random_operations_with_killed_connections() {
    const TASKS: usize = 16;
    const OPS_PER_TASK: usize = 60;
    const WALLETS: usize = 6;
    let db = ScratchDatabase::migrated("ledger_chaos").await;
    let pool = pool_for(&db);
    let ledger = PgLedger::new(pool.clone());
    // Every key posted, with its parameters; settled at the end.
    let posted: Arc<Mutex<HashMap<String, Operation>>> = Arc::default();

    // Chaos: kill a random share of this database's backends every 50 ms.
    let chaos_pool =
        deskgate::db::pool(&Secret::new(support::service_env("DESKGATE_DATABASE_URL"))).unwrap();
    let chaos_db = db.name.clone();
    let chaos = tokio::spawn(async move {
        let mut killed = 0i64;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(mut conn) = chaos_pool.get().await else {
                continue;
            };
            let row: Result<Count, _> = diesel::sql_query(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid() AND random() < 0.2",
            )
            .bind::<Text, _>(&chaos_db)
            .get_result(&mut conn)
            .await;
            killed += row.map_or(0, |r| r.n);
            if killed > 1_000_000 {
                break killed;
            }
        }
    });

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let posted = posted.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::from_rng(&mut rand::rng());
            let mut outcomes = (0usize, 0usize, 0usize); // (ok, refused, uncertain)
            let mut mine: Vec<(String, Operation)> = Vec::new();
            for op in 0..OPS_PER_TASK {
                // A fifth of the time, repeat an earlier key of this task.
                let (key, operation) = if !mine.is_empty() && rng.random_bool(0.2) {
                    mine[rng.random_range(0..mine.len())].clone()
                } else {
                    let fresh = (
                        format!("chaos:{task}:{op}"),
                        random_operation(&mut rng, WALLETS),
                    );
                    posted
                        .lock()
                        .unwrap()
                        .insert(fresh.0.clone(), fresh.1.clone());
                    mine.push(fresh.clone());
                    fresh
                };
                let request = ledger.post(posting(&key, operation));
                // Some requests are abandoned mid-flight: the connection is
                // dropped with the transaction in whatever state it was.
                let answer = if rng.random_bool(0.1) {
                    tokio::time::timeout(
                        Duration::from_micros(rng.random_range(100..3000)),
                        request,
                    )
                    .await
                    .ok()
                } else {
                    Some(request.await)
                };
                match answer {
                    Some(Ok(_)) => outcomes.0 += 1,
                    Some(Err(LedgerError::InsufficientCredit { .. })) => outcomes.1 += 1,
                    Some(Err(LedgerError::Unavailable(_))) | None => outcomes.2 += 1,
                    Some(Err(other)) => panic!("unexpected answer for {key}: {other}"),
                }
            }
            outcomes
        }));
    }
    let mut totals = (0, 0, 0);
    for task in tasks {
        let (ok, refused, uncertain) = task.await.unwrap();
        totals = (totals.0 + ok, totals.1 + refused, totals.2 + uncertain);
    }
    chaos.abort();
    eprintln!(
        "ok {} refused {} uncertain {}",
        totals.0, totals.1, totals.2
    );
    assert!(
        totals.0 > 100 && totals.1 > 10,
        "the mix exercises both paths: {totals:?}"
    );
    assert!(totals.2 > 0, "some requests were cut off: {totals:?}");

    // Settle: replay every key once more (its definitive answer), then the
    // ledger must hold exactly the keys that answered Ok, each once.
    let posted = posted.lock().unwrap().clone();
    let mut expected: BTreeMap<WalletId, CreditSeconds> = BTreeMap::new();
    let mut applied = Vec::new();
    for (key, operation) in &posted {
        match ledger.post(posting(key, operation.clone())).await {
            Ok(_) => {
                effect(operation, &mut expected);
                applied.push((key, operation));
            }
            Err(LedgerError::InsufficientCredit { .. }) => {}
            Err(other) => panic!("settling {key}: {other}"),
        }
    }
    // Every applied key, posted once more, is a replay.
    for (key, operation) in &applied {
        let receipt = ledger
            .post(posting(key, (*operation).clone()))
            .await
            .unwrap();
        assert!(receipt.replayed, "{key} applied twice");
    }
    let applied = applied.len() as i64;
    assert_eq!(
        count(&pool, "SELECT count(*) AS n FROM ledger_txns").await,
        applied
    );
    for (w, balance) in &expected {
        assert_eq!(ledger.balance(w).await, Ok(*balance), "balance of {w}");
    }
    // A changed amount under an applied key is refused.
    let (key, wallet, amount, from) = posted
        .iter()
        .find_map(|(key, op)| match op {
            Operation::Credit {
                wallet,
                amount,
                from,
            } => Some((key, wallet.clone(), *amount, *from)),
            _ => None,
        })
        .expect("the mix posted credits");
    let changed = posting(
        key,
        Operation::Credit {
            wallet,
            amount: amount + 1,
            from,
        },
    );
    assert_eq!(
        ledger.post(changed).await,
        Err(LedgerError::KeyConflict(key.clone()))
    );
    assert_ledger_invariants(&pool).await;
    db.drop_it().await;
}

/// Runs the load binary over `0..to`; kills it with SIGKILL after `kill_after`
/// when given. Returns the last index it reported committed.
async fn run_load(
    url: &str,
    wallet: &WalletId,
    to: u64,
    batch: usize,
    kill_after: Option<Duration>,
) -> Option<u64> {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskgate-ledger-load"))
        .args([
            "--wallet",
            wallet.as_str(),
            "--credit",
            "100000",
            "--to",
            &to.to_string(),
            "--batch",
            &batch.to_string(),
        ])
        .env("DESKGATE_DATABASE_URL", url)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the load binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = None;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            last = line.strip_prefix("committed ").and_then(|n| n.parse().ok());
        }
    };
    match kill_after {
        Some(delay) => {
            let _ = tokio::time::timeout(delay, read).await;
            child.start_kill().expect("SIGKILL");
            child.wait().await.unwrap();
        }
        None => {
            read.await;
            let status = child.wait().await.unwrap();
            assert!(status.success(), "the load run completes: {status}");
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn debits_replayed_after_sigkill_take_effect_exactly_once() {
    const DEBITS: u64 = 600;
    let db = ScratchDatabase::migrated("ledger_crash").await;
    let pool = pool_for(&db);
    let alice = wallet(7);
    let mut rng = rand::rng();
    let mut interrupted_mid_run = 0;
    for _ in 0..20 {
        let batch = *[1, 1, 3, 17].get(rng.random_range(0..4)).unwrap();
        let delay = Duration::from_millis(rng.random_range(30..700));
        let last = run_load(&db.url, &alice, DEBITS, batch, Some(delay)).await;
        if last.is_some_and(|n| n + 1 < DEBITS) {
            interrupted_mid_run += 1;
        }
    }
    assert!(
        interrupted_mid_run >= 5,
        "only {interrupted_mid_run} kills landed mid-run"
    );
    // Replay the whole range to the end, twice: the effects are those of
    // one clean run.
    assert_eq!(
        run_load(&db.url, &alice, DEBITS, 5, None).await,
        Some(DEBITS - 1)
    );
    assert_eq!(
        run_load(&db.url, &alice, DEBITS, 50, None).await,
        Some(DEBITS - 1)
    );
    let ledger = PgLedger::new(pool.clone());
    assert_eq!(ledger.balance(&alice).await, Ok(100_000 - DEBITS as i64));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM ledger_txns WHERE idempotency_key LIKE 'load:%'"
        )
        .await,
        DEBITS as i64
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) AS n FROM ledger_txns WHERE kind = 'credit'"
        )
        .await,
        1
    );
    assert_ledger_invariants(&pool).await;
    db.drop_it().await;
}
