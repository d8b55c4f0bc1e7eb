//! The campaign's figures: faults by kind with recovery p50/p99, checks run,
//! violations, money drift, what the workload did and how sessions ended,
//! and the seed that replays it.

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::invariants::{Downtime, FaultWindow, Tally};
use crate::workload::Record;

/// What the campaign measured.
pub struct Report {
    seed: u64,
    recoveries: BTreeMap<&'static str, Vec<Duration>>,
    /// The checks' counts.
    pub tally: Tally,
    /// Windows the gate was down.
    pub downtimes: Vec<Downtime>,
    /// When each fault was in force.
    pub windows: Vec<FaultWindow>,
    /// The gate's largest resident set while browsers stalled (KiB).
    stalled_rss_kib: Option<u64>,
    /// How long the faults took, recovery included.
    pub campaign: Duration,
    lines: Vec<String>,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Report {
    /// An empty report for the campaign of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            recoveries: BTreeMap::new(),
            tally: Tally::default(),
            downtimes: Vec::new(),
            windows: Vec::new(),
            stalled_rss_kib: None,
            campaign: Duration::ZERO,
            lines: Vec::new(),
        }
    }

    /// One fault of `kind`, recovered from in `recovery`.
    pub fn fault(&mut self, kind: &'static str, recovery: Duration) {
        self.recoveries.entry(kind).or_default().push(recovery);
    }

    /// The gate's resident set while browsers stalled on their streams.
    pub fn gate_rss(&mut self, kib: u64) {
        self.stalled_rss_kib = Some(self.stalled_rss_kib.unwrap_or(0).max(kib));
    }

    /// What the workload sent and how the gate answered.
    pub fn workload(&mut self, record: &Record) {
        let sent: u64 = record.actions.values().sum();
        let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
        for ((_, status), n) in &record.answers {
            let class = match status {
                0 => "no answer".to_string(),
                s => format!("{}xx", s / 100),
            };
            *by_class.entry(class).or_default() += n;
        }
        self.lines.push(format!(
            "workload: {sent} requests and transactions; answers {by_class:?}; {} deposits sent; \
             {} admin keys ({} sent again); {} answers of 500",
            record.deposits.len(),
            record.admin_keys.len(),
            record.admin_keys.values().filter(|k| k.sent > 1).count(),
            record.server_errors.len()
        ));
        self.lines
            .push(format!("workload actions: {:?}", record.actions));
    }

    /// How the sessions ended, from the database.
    pub async fn sessions(&mut self, url: &str) {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            what: String,
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let Ok(mut conn) = AsyncPgConnection::establish(url).await else {
            return;
        };
        let rows = diesel::sql_query(
            "SELECT coalesce(end_reason->>'kind', state) AS what, count(*) AS n FROM sessions \
             GROUP BY 1 ORDER BY 2 DESC",
        )
        .load::<Row>(&mut conn)
        .await
        .unwrap_or_default();
        let ends: Vec<String> = rows.iter().map(|r| format!("{} {}", r.what, r.n)).collect();
        let total: i64 = rows.iter().map(|r| r.n).sum();
        self.lines
            .push(format!("sessions: {total}; ended by {}", ends.join(", ")));
        let deposits = diesel::sql_query(
            "SELECT status || CASE WHEN reorged_at IS NULL THEN '' ELSE ' (reorged)' END AS what, \
             count(*) AS n FROM deposits GROUP BY 1 ORDER BY 1",
        )
        .load::<Row>(&mut conn)
        .await
        .unwrap_or_default();
        let deposits: Vec<String> = deposits
            .iter()
            .map(|r| format!("{} {}", r.what, r.n))
            .collect();
        self.lines
            .push(format!("deposits seen: {}", deposits.join(", ")));
    }

    /// Prints everything.
    pub fn print(&self) {
        let faults: usize = self.recoveries.values().map(Vec::len).sum();
        eprintln!("\n=== chaos campaign, seed {} ===", self.seed);
        eprintln!(
            "faults: {faults} in {:.1} s (recovery included)",
            self.campaign.as_secs_f64()
        );
        eprintln!(
            "{:<22} {:>6} {:>14} {:>14} {:>14}",
            "kind", "count", "recovery p50", "recovery p99", "max"
        );
        for (kind, times) in &self.recoveries {
            let mut sorted = times.clone();
            sorted.sort();
            eprintln!(
                "{:<22} {:>6} {:>12.0}ms {:>12.0}ms {:>12.0}ms",
                kind,
                times.len(),
                quantile(&sorted, 0.5).as_secs_f64() * 1e3,
                quantile(&sorted, 0.99).as_secs_f64() * 1e3,
                sorted.last().unwrap().as_secs_f64() * 1e3,
            );
        }
        eprintln!(
            "invariant checks: {} ({})",
            self.tally.total(),
            self.tally
                .checks
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!("violations: {}", self.tally.violations.len());
        eprintln!("money drift: {} credit-seconds", self.tally.drift);
        if let Some(kib) = self.stalled_rss_kib {
            eprintln!(
                "gate resident set, largest while browsers stalled: {:.1} MiB",
                kib as f64 / 1024.0
            );
        }
        for line in &self.lines {
            eprintln!("{line}");
        }
        eprintln!(
            "replay: DESKGATE_CHAOS_SEED={} DESKGATE_CHAOS_FAULTS={faults} \
             cargo test --test chaos -- --nocapture (after `make services`)",
            self.seed
        );
    }
}
