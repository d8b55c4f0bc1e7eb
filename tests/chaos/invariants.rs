//! What must hold whatever the faults did, checked from the outside: from
//! PostgreSQL (one read-only snapshot per round), the hosts' Docker Engines
//! and the chain, never from the gate's own answers.
//!
//! Each check is a query that returns one line per violation, so a clean
//! check returns nothing and a violation says what it is. Checks that need
//! the campaign's own knowledge (when the gate was down, which admin keys
//! were sent, which deposits are on the chain) take it as arguments.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use alloy::primitives::B256;
use alloy::providers::Provider;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::workload::{AdminKey, SentDeposit};
use crate::world::Host;

/// One violation line.
#[derive(diesel::QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    what: String,
}

/// Every transaction has entries and sums to zero.
const LEDGER_BALANCED: &str = "
SELECT 'ledger txn ' || t.id || ' (' || t.idempotency_key || ') sums to '
       || coalesce(sum(e.amount), 0) || ' over ' || count(e.txn_id) || ' entries' AS what
FROM ledger_txns t LEFT JOIN ledger_entries e ON e.txn_id = t.id
GROUP BY t.id HAVING count(e.txn_id) = 0 OR sum(e.amount) <> 0";

/// Every wallet's balance is its entries' sum, and none is negative.
const BALANCES_MATCH: &str = "
SELECT 'balance of ' || coalesce(b.account, e.account) || ' is ' || coalesce(b.amount, 0)
       || ' but its entries sum to ' || coalesce(e.total, 0) AS what
FROM balances b
FULL JOIN (SELECT account, sum(amount) AS total FROM ledger_entries
           WHERE account LIKE 'wallet:%' GROUP BY account) e USING (account)
WHERE coalesce(b.amount, 0) <> coalesce(e.total, 0) OR b.amount < 0";

/// A deposit is credited by exactly one ledger transaction of its
/// credit-seconds when credited, and by none otherwise.
const DEPOSITS_CREDITED_ONCE: &str = "
SELECT 'deposit ' || d.tx_hash || ':' || d.log_index || ' is ' || d.status || ' with '
       || count(t.id) || ' ledger credits summing to ' || coalesce(sum(e.amount), 0)
       || ' (bought ' || coalesce(d.credit_seconds, 0) || ')' AS what
FROM deposits d
LEFT JOIN ledger_txns t ON t.reference = 'deposit:' || d.tx_hash || ':' || d.log_index
LEFT JOIN ledger_entries e ON e.txn_id = t.id AND e.account LIKE 'wallet:%'
GROUP BY d.id
HAVING (d.status = 'credited' AND coalesce(d.credit_seconds, 0) > 0
        AND (count(t.id) <> 1 OR sum(e.amount) <> d.credit_seconds))
    OR (d.status <> 'credited' AND count(t.id) <> 0)";

/// Money in equals money held plus money spent: credited deposits and
/// admin adjustments against wallet balances and usage debits.
const MONEY_DRIFT: &str = "
SELECT (SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e JOIN ledger_txns t ON t.id = e.txn_id
        WHERE t.reference LIKE 'deposit:%' AND e.account LIKE 'wallet:%')
     + (SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e JOIN ledger_txns t ON t.id = e.txn_id
        WHERE t.idempotency_key LIKE 'admin:%' AND e.account LIKE 'wallet:%')
     - (SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE account = 'usage')
     - (SELECT coalesce(sum(amount), 0) FROM balances) AS n";

/// No GPU was held by two sessions at any instant.
const LEASES_EXCLUSIVE: &str = "
SELECT 'GPU ' || a.host || '/' || a.gpu_index || ' held by ' || a.session_id || ' ['
       || a.leased_at || ', ' || coalesce(a.released_at::text, 'open') || ') and ' || b.session_id
       || ' [' || b.leased_at || ', ' || coalesce(b.released_at::text, 'open') || ')' AS what
FROM session_leases a JOIN session_leases b
  ON a.host = b.host AND a.gpu_index = b.gpu_index AND a.session_id < b.session_id
 AND a.leased_at < coalesce(b.released_at, 'infinity')
 AND b.leased_at < coalesce(a.released_at, 'infinity')";

/// An ended session holds nothing; a launching or running one holds a
/// lease on every GPU its row names.
const LEASES_MATCH_SESSIONS: &str = "
SELECT 'session ' || s.id || ' is ' || s.state || ' with GPUs ' || s.gpu_indices::text
       || ' and ' || count(l.gpu_index) FILTER (WHERE l.released_at IS NULL) || ' open leases' AS what
FROM sessions s LEFT JOIN session_leases l ON l.session_id = s.id
GROUP BY s.id
HAVING (s.state = 'ended' AND (count(l.gpu_index) FILTER (WHERE l.released_at IS NULL) > 0
                               OR s.gpu_indices <> '{}'))
    OR (s.state IN ('launching', 'running')
        AND count(l.gpu_index) FILTER (WHERE l.released_at IS NULL) <> cardinality(s.gpu_indices))";

/// An ended session's row says what the ledger took from its wallet; a live
/// one's lags the ledger by at most its newest debit (committed, the row's
/// save in flight). That debit may be larger than one interval: a session
/// whose interval debits failed while PostgreSQL was down bills the backlog
/// in one final debit when it ends (seed 3 caught the old one-interval
/// bound between that debit and the end's save).
const BILLING_MATCHES_LEDGER: &str = "
WITH taken AS (
    SELECT t.id, t.reference, -sum(e.amount) AS amount
    FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id AND e.account LIKE 'wallet:%'
    WHERE t.reference LIKE 'session:%'
    GROUP BY t.id, t.reference
), per_session AS (
    SELECT reference, sum(amount) AS total, (array_agg(amount ORDER BY id DESC))[1] AS newest
    FROM taken GROUP BY reference
)
SELECT 'session ' || s.id || ' (' || s.state || ') billed ' || s.billed_credit
       || ' but the ledger took ' || coalesce(p.total, 0) AS what
FROM sessions s
LEFT JOIN per_session p ON p.reference = 'session:' || s.id
WHERE coalesce(p.total, 0) <> s.billed_credit
  AND (s.state = 'ended' OR coalesce(p.total - p.newest, 0) <> s.billed_credit)";

/// The counts a round of checks ran and found.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Checks run, by name.
    pub checks: BTreeMap<&'static str, u64>,
    /// Violations, each with the check that found it.
    pub violations: Vec<String>,
    /// The last money drift seen (credit-seconds).
    pub drift: i64,
}

impl Tally {
    fn found(&mut self, check: &'static str, lines: Vec<String>) {
        *self.checks.entry(check).or_default() += 1;
        self.violations
            .extend(lines.into_iter().map(|l| format!("{check}: {l}")));
    }

    /// Adds another round's counts.
    /// A violation seen again in a later round is counted once.
    pub fn absorb(&mut self, other: Tally) {
        for (check, n) in other.checks {
            *self.checks.entry(check).or_default() += n;
        }
        for violation in other.violations {
            if !self.violations.contains(&violation) {
                self.violations.push(violation);
            }
        }
        self.drift = other.drift;
    }

    /// Checks run in all.
    pub fn total(&self) -> u64 {
        self.checks.values().sum()
    }
}

async fn lines(conn: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    match diesel::sql_query(sql).load::<Line>(conn).await {
        Ok(rows) => rows.into_iter().map(|l| l.what).collect(),
        Err(e) => vec![format!("the check's query failed: {e}")],
    }
}

/// The checks that hold at every moment, on one snapshot of the database.
/// `None` when the database does not answer (the round is not counted).
pub async fn snapshot_checks(url: &str, admin_keys: &HashMap<String, AdminKey>) -> Option<Tally> {
    let mut conn = AsyncPgConnection::establish(url).await.ok()?;
    diesel::sql_query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut conn)
        .await
        .ok()?;
    let mut tally = Tally::default();
    tally.found("ledger-balanced", lines(&mut conn, LEDGER_BALANCED).await);
    tally.found("balances-match", lines(&mut conn, BALANCES_MATCH).await);
    tally.found(
        "deposit-credited-once",
        lines(&mut conn, DEPOSITS_CREDITED_ONCE).await,
    );
    tally.found("lease-exclusive", lines(&mut conn, LEASES_EXCLUSIVE).await);
    tally.found(
        "leases-match-sessions",
        lines(&mut conn, LEASES_MATCH_SESSIONS).await,
    );
    tally.found(
        "billing-matches-ledger",
        lines(&mut conn, BILLING_MATCHES_LEDGER).await,
    );

    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let drift = diesel::sql_query(MONEY_DRIFT)
        .get_result::<N>(&mut conn)
        .await
        .map_or(i64::MIN, |r| r.n);
    tally.drift = drift;
    tally.found(
        "money-drift",
        if drift == 0 {
            vec![]
        } else {
            vec![format!(
                "deposits + adjustments - usage - balances = {drift}"
            )]
        },
    );
    tally.found(
        "admin-key-once",
        admin_key_lines(&mut conn, admin_keys).await,
    );
    let _ = diesel::sql_query("COMMIT").execute(&mut conn).await;
    Some(tally)
}

/// Every admin key whose request was answered 200 was applied exactly once
/// (with the amount it names); one never answered 200 at most once.
async fn admin_key_lines(
    conn: &mut AsyncPgConnection,
    keys: &HashMap<String, AdminKey>,
) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = Text)]
        key: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let applied: HashMap<String, i64> = match diesel::sql_query(
        "SELECT substr(idempotency_key, 7) AS key, count(*) AS n FROM ledger_txns \
         WHERE idempotency_key LIKE 'admin:%' GROUP BY idempotency_key",
    )
    .load::<Applied>(conn)
    .await
    {
        Ok(rows) => rows.into_iter().map(|r| (r.key, r.n)).collect(),
        Err(e) => return vec![format!("the check's query failed: {e}")],
    };
    let mut lines = Vec::new();
    for (key, sent) in keys {
        let n = applied.get(key).copied().unwrap_or(0);
        if (sent.applied && n != 1) || n > 1 {
            lines.push(format!(
                "key {key} sent {} times (answered 200: {}) applied {n} times",
                sent.sent, sent.applied
            ));
        }
    }
    lines
}

/// The state of each session as the database has it: `(state, seconds since
/// it ended)`.
async fn session_states(url: &str) -> Option<HashMap<String, (String, Option<f64>)>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
        ended_ago: Option<f64>,
    }
    let mut conn = AsyncPgConnection::establish(url).await.ok()?;
    let rows = diesel::sql_query(
        "SELECT id::text AS id, state, extract(epoch FROM now() - ended_at)::float8 AS ended_ago \
         FROM sessions",
    )
    .load::<Row>(&mut conn)
    .await
    .ok()?;
    Some(
        rows.into_iter()
            .map(|r| (r.id, (r.state, r.ended_ago)))
            .collect(),
    )
}

/// After recovery, no host has a session container or network whose
/// session ended more than `grace_secs` ago or that the database does not
/// know. The container and network lists are read first, so a session that
/// starts in between is known by the time the states are read.
pub async fn orphan_checks(url: &str, hosts: &[Host], grace_secs: f64) -> Option<Tally> {
    let mut seen = Vec::new();
    for host in hosts {
        for (kind, list) in [
            ("container", host.session_containers()),
            ("network", host.session_networks()),
        ] {
            for (id, session) in list? {
                seen.push((host.number, kind, id, session));
            }
        }
    }
    let states = session_states(url).await?;
    let mut tally = Tally::default();
    let mut lines = Vec::new();
    for (host, kind, id, session) in seen {
        match states.get(&session) {
            None => lines.push(format!(
                "{kind} {id} on host {host}: session {session} unknown"
            )),
            Some((state, Some(ago))) if state == "ended" && *ago > grace_secs => {
                lines.push(format!(
                    "{kind} {id} on host {host}: session {session} ended over {grace_secs} s ago"
                ))
            }
            _ => {}
        }
    }
    tally.found("no-orphans", lines);
    Some(tally)
}

/// A window when the gate was down (SIGKILL to sessions open again).
#[derive(Clone, Copy, Debug)]
pub struct Downtime {
    /// When it was killed.
    pub from: SystemTime,
    /// When its sessions were open again.
    pub to: SystemTime,
}

/// Billing against time, for ended sessions (at the end): what was billed
/// is at most the time the session ran while the gate was up, plus one
/// interval; and at least that time less one interval per gate restart it
/// lived through (each loses the part-interval in flight) and `slack_ms`.
/// The lower bound is left out for a session whose end was recorded during
/// or just after a fault: the bill ends when the session is told to stop,
/// but `ended_at` waits until its container is gone and the end is saved,
/// which a cut-off host or a database restart delays.
pub async fn billed_time_checks(
    url: &str,
    interval_ms: i64,
    downtimes: &[Downtime],
    windows: &[FaultWindow],
    slack_ms: i64,
) -> Option<Tally> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = BigInt)]
        billed_ms: i64,
        #[diesel(sql_type = BigInt)]
        billed_credit: i64,
        #[diesel(sql_type = BigInt)]
        gpus: i64,
        #[diesel(sql_type = Double)]
        started: f64,
        #[diesel(sql_type = Double)]
        ended: f64,
        #[diesel(sql_type = Text)]
        reason: String,
    }
    use diesel::sql_types::Double;
    let mut conn = AsyncPgConnection::establish(url).await.ok()?;
    let rows = diesel::sql_query(
        "SELECT id::text AS id, billed_ms, billed_credit, gpus::bigint AS gpus, \
                extract(epoch FROM started_at)::float8 AS started, \
                extract(epoch FROM ended_at)::float8 AS ended, \
                coalesce(end_reason->>'kind', '') AS reason \
         FROM sessions WHERE state = 'ended' AND started_at IS NOT NULL",
    )
    .load::<Row>(&mut conn)
    .await
    .ok()?;
    let epoch = |t: SystemTime| epoch_ms(t) / 1000.0;
    let mut lines = Vec::new();
    for row in rows {
        let (mut down_ms, mut restarts) = (0.0, 0);
        for d in downtimes {
            let overlap = (epoch(d.to).min(row.ended) - epoch(d.from).max(row.started)).max(0.0);
            if overlap > 0.0 {
                down_ms += overlap * 1000.0;
                restarts += 1;
            }
        }
        let up_ms = ((row.ended - row.started) * 1000.0 - down_ms) as i64;
        let most = up_ms + interval_ms + 1000;
        let least = up_ms - (restarts + 1) * interval_ms - slack_ms;
        // The last part-interval is billed in whole seconds.
        let whole = row.billed_credit / row.gpus.max(1);
        if row.billed_ms > most {
            lines.push(format!(
                "session {} billed {} ms ({whole} s × {} GPUs) but ran {up_ms} ms while the gate was up",
                row.id, row.billed_ms, row.gpus
            ));
        } else if row.billed_ms < least
            && row.reason != "credit_exhausted"
            && !windows.iter().any(|w| {
                let ended = row.ended * 1000.0;
                ended > epoch_ms(w.from) - 1000.0 && ended < epoch_ms(w.to) + 15_000.0
            })
        {
            lines.push(format!(
                "session {} billed {} ms but ran {up_ms} ms while the gate was up ({restarts} restarts; ended {})",
                row.id, row.billed_ms, row.reason
            ));
        }
    }
    let mut tally = Tally::default();
    tally.found("billed-time", lines);
    Some(tally)
}

/// At the end, against the chain: every deposit the workload sent that is
/// on the canonical chain with `confirmations` is credited; every credited
/// deposit whose block left the chain is flagged (`reorged_at`).
pub async fn chain_checks(
    url: &str,
    provider: &impl Provider,
    sent: &[SentDeposit],
    confirmations: u64,
) -> Option<Tally> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        tx_hash: String,
        #[diesel(sql_type = Text)]
        block_hash: String,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        flagged: bool,
    }
    let mut conn = AsyncPgConnection::establish(url).await.ok()?;
    let rows = diesel::sql_query(
        "SELECT tx_hash, block_hash, status, reorged_at IS NOT NULL AS flagged FROM deposits",
    )
    .load::<Row>(&mut conn)
    .await
    .ok()?;
    let head = provider.get_block_number().await.ok()?;
    let mut lines = Vec::new();
    let mut by_tx: HashMap<String, Vec<&Row>> = HashMap::new();
    for row in &rows {
        by_tx.entry(row.tx_hash.clone()).or_default().push(row);
    }
    for row in &rows {
        if row.status != "credited" || row.flagged {
            continue;
        }
        let tx: B256 = row.tx_hash.parse().ok()?;
        let receipt = provider.get_transaction_receipt(tx).await.ok()?;
        let canonical = receipt
            .as_ref()
            .and_then(|r| r.block_hash)
            .is_some_and(|h| format!("{h:#x}") == row.block_hash);
        if !canonical {
            lines.push(format!(
                "deposit {} credited in block {} which left the chain, not flagged",
                row.tx_hash, row.block_hash
            ));
        }
    }
    for deposit in sent {
        let Some(receipt) = provider.get_transaction_receipt(deposit.tx).await.ok()? else {
            continue; // reorged away, never mined again
        };
        let Some(block) = receipt.block_number else {
            continue;
        };
        if !receipt.status() || head + 1 < block + confirmations {
            continue; // reverted, or not yet confirmed
        }
        let key = format!("{:#x}", deposit.tx);
        let credited = by_tx
            .get(&key)
            .is_some_and(|rows| rows.iter().any(|r| r.status == "credited"));
        if !credited {
            lines.push(format!(
                "{} deposit {key} confirmed in block {block} (head {head}) is not credited: {:?}",
                deposit.asset,
                by_tx
                    .get(&key)
                    .map(|rows| rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
            ));
        }
    }
    let mut tally = Tally::default();
    tally.found("chain-deposits", lines);
    Some(tally)
}

/// When a fault was in force, from its injection to its lifting.
#[derive(Clone, Copy, Debug)]
pub struct FaultWindow {
    /// Whether it delays what the gate records (a gate crash, a PostgreSQL
    /// restart or connection kill): grant times near it are not compared.
    pub delays_records: bool,
    /// When the fault began.
    pub from: SystemTime,
    /// When it was lifted.
    pub to: SystemTime,
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// The queue served the claims that waited in order
/// ([`crate::support::queue_order`]); no grant near a window of a fault that
/// delays records is compared.
pub async fn queue_order_checks(
    url: &str,
    windows: &[FaultWindow],
    tolerance_ms: f64,
) -> Option<Tally> {
    let blurred = |t: f64| {
        windows.iter().any(|w| {
            w.delays_records && t > epoch_ms(w.from) - 5000.0 && t < epoch_ms(w.to) + 5000.0
        })
    };
    let lines =
        crate::support::queue_order::queue_order_violations(url, blurred, tolerance_ms).await?;
    let mut tally = Tally::default();
    tally.found("queue-order", lines);
    Some(tally)
}
