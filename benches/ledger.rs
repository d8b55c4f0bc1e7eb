//! Committed debits per second on a real PostgreSQL: one debit per
//! transaction against the batched billing path, on the same server in one
//! run. Prints its figures; `make bench` runs it with the services started.
//!
//! The workload is the billing tick of many sessions at once: every session
//! debits one interval, `ROUNDS` times, each debit under its own key.

mod common;

use std::time::{Duration, Instant};

use deskgate::money::ledger::{BatchingLedger, PgLedger, Posting, SystemAccount};
use deskgate::platform::secret::Secret;
use deskgate_actors::ports::{DebitKey, Ledger, SessionId, WalletId};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

const SESSIONS: usize = 1000;
const ROUNDS: u64 = 3;
const MAX_BATCH: usize = 1000;

fn database_url() -> String {
    common::service_setting("DESKGATE_DATABASE_URL")
}

async fn sql(url: &str, statement: &str) {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .expect("PostgreSQL answers");
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .expect(statement);
}

struct Sessions {
    wallets: Vec<WalletId>,
    ids: Vec<SessionId>,
}

async fn fund(ledger: &PgLedger, prefix: u32) -> Sessions {
    let wallets: Vec<WalletId> = (0..SESSIONS)
        .map(|i| WalletId::new(&format!("0x{prefix:08x}{i:032x}")))
        .collect();
    let credits: Vec<Posting> = wallets
        .iter()
        .enumerate()
        .map(|(i, w)| Posting {
            key: format!("bench-deposit:{prefix}:{i}"),
            operation: deskgate::money::ledger::Operation::Credit {
                wallet: w.clone(),
                amount: 1_000_000,
                from: SystemAccount::Revenue,
            },
            reference: None,
            created_by: "system".into(),
        })
        .collect();
    for answer in ledger.post_batch(&credits).await.expect("funding") {
        answer.expect("credit");
    }
    Sessions {
        ids: (0..SESSIONS).map(|_| SessionId::new()).collect(),
        wallets,
    }
}

/// Every session debits `ROUNDS` intervals through `ledger`, all sessions at
/// once; returns debits committed per second.
async fn billing_ticks(ledger: impl Ledger + Clone, sessions: &Sessions) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(SESSIONS);
    for (wallet, session) in sessions.wallets.iter().zip(&sessions.ids) {
        let (ledger, wallet, session) = (ledger.clone(), wallet.clone(), *session);
        tasks.push(tokio::spawn(async move {
            for interval in 0..ROUNDS {
                ledger
                    .debit(&wallet, 20, DebitKey { session, interval })
                    .await
                    .expect("debit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("session task");
    }
    rate(SESSIONS as u64 * ROUNDS, started.elapsed())
}

/// The same debits as explicit batches of `SESSIONS` postings.
async fn explicit_batches(ledger: &PgLedger, sessions: &Sessions) -> f64 {
    let started = Instant::now();
    for interval in 0..ROUNDS {
        let postings: Vec<Posting> = sessions
            .wallets
            .iter()
            .zip(&sessions.ids)
            .map(|(w, s)| {
                Posting::billing_debit(
                    w,
                    20,
                    DebitKey {
                        session: *s,
                        interval,
                    },
                )
            })
            .collect();
        for answer in ledger.post_batch(&postings).await.expect("batch") {
            answer.expect("debit");
        }
    }
    rate(SESSIONS as u64 * ROUNDS, started.elapsed())
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let admin_url = database_url();
    let name = format!("deskgate_bench_{}", std::process::id());
    sql(&admin_url, &format!("CREATE DATABASE {name}")).await;
    let mut url = url::Url::parse(&admin_url).expect("a URL");
    url.set_path(&name);
    let url = Secret::new(url.to_string());
    deskgate::db::migrate(&url).await.expect("migrations apply");
    let pool = deskgate::db::pool(&url).expect("pool");
    let ledger = PgLedger::new(pool);

    println!(
        "ledger: {SESSIONS} sessions x {ROUNDS} billing debits, each under its own key, same PostgreSQL"
    );
    let single = billing_ticks(ledger.clone(), &fund(&ledger, 1).await).await;
    println!("  one debit per transaction (pool of 16): {single:>9.0} debits/s");
    let batching = BatchingLedger::spawn(ledger.clone(), MAX_BATCH);
    let grouped = billing_ticks(batching, &fund(&ledger, 2).await).await;
    println!("  batched billing path (group commit):    {grouped:>9.0} debits/s");
    let explicit = explicit_batches(&ledger, &fund(&ledger, 3).await).await;
    println!("  explicit batches of {SESSIONS}:              {explicit:>9.0} debits/s");
    println!(
        "  ratio batched / single: {:.1}x (goal >= 10x); explicit / single: {:.1}x",
        grouped / single,
        explicit / single
    );
    drop(ledger);
    sql(&admin_url, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
}
