//! The queue's order, checked from PostgreSQL alone (the `sessions` rows and
//! the lease history in `session_leases`), never from the gate's answers:
//! shared by the fault campaign (`tests/chaos`) and the API contention
//! benchmark (`benches/api_contention.rs`).
//!
//! The rule: claims that waited were served first come, first served, with
//! backfill that cannot pass the head. No claim was granted while an earlier
//! claim for no more GPUs headed the queue (waiting, with nobody before it
//! waiting). A later claim for fewer GPUs may go first (backfill); so may
//! any claim while the head needs more GPUs than it.

use diesel::sql_types::{BigInt, Double, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

#[derive(diesel::QueryableByName, Clone)]
struct Claim {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    gpus: i64,
    #[diesel(sql_type = Double)]
    claimed: f64,
    #[diesel(sql_type = Nullable<Double>)]
    granted: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    ended: Option<f64>,
}

/// One line per grant that broke the rule, from the database at `url`;
/// `None` if it did not answer. Grant times are the first lease on record
/// (epoch milliseconds), taken `tolerance_ms` apart (session actors record
/// their grants concurrently); a grant at a time for which `blurred` holds
/// (near a fault that delays records) is not compared.
pub async fn queue_order_violations(
    url: &str,
    blurred: impl Fn(f64) -> bool,
    tolerance_ms: f64,
) -> Option<Vec<String>> {
    let mut conn = AsyncPgConnection::establish(url).await.ok()?;
    let mut claims = diesel::sql_query(
        "SELECT s.id::text AS id, s.gpus::bigint AS gpus, \
                extract(epoch FROM s.created_at)::float8 * 1000 AS claimed, \
                extract(epoch FROM f.leased_at)::float8 * 1000 AS granted, \
                extract(epoch FROM s.ended_at)::float8 * 1000 AS ended \
         FROM sessions s LEFT JOIN (SELECT session_id, min(leased_at) AS leased_at \
                                    FROM session_leases GROUP BY session_id) f \
           ON f.session_id = s.id \
         ORDER BY s.created_at",
    )
    .load::<Claim>(&mut conn)
    .await
    .ok()?;
    claims.sort_by(|a, b| a.claimed.total_cmp(&b.claimed));
    // Waiting at `t`: claimed before it, not ended by then (a claim that
    // left the queue just after `t` was still in it), and not granted within
    // `tolerance_ms` after it (it may have been granted first and recorded
    // later).
    let waiting = |c: &Claim, t: f64| {
        c.claimed < t
            && c.granted.is_none_or(|g| g > t + tolerance_ms)
            && c.ended.is_none_or(|e| e > t)
    };
    let mut lines = Vec::new();
    for later in &claims {
        let Some(t) = later.granted else { continue };
        if blurred(t) {
            continue;
        }
        // The head when `later` was granted: the first claim still waiting.
        let Some(head) = claims
            .iter()
            .take_while(|c| c.claimed < later.claimed)
            .find(|c| waiting(c, t))
        else {
            continue;
        };
        if head.gpus <= later.gpus {
            lines.push(format!(
                "claim {} ({} GPUs) was granted while {} ({} GPUs, claimed {:.0} ms earlier) \
                 headed the queue",
                later.id,
                later.gpus,
                head.id,
                head.gpus,
                later.claimed - head.claimed
            ));
        }
    }
    Some(lines)
}
