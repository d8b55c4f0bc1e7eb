//! Figures for the whole actor tree (on in-memory ports), printed in one run:
//!
//! - claims per second accepted through the supervisor;
//! - resident memory per waiting claim, everything the tree keeps for it
//!   (target ≤ 8 KiB);
//! - release-to-grant time through the actors with 10,000 waiters on 64
//!   GPUs (a stop, the scheduler's decision, the lease, the grant message);
//! - fan-out: time from a release until the last of 10,000 waiters has its
//!   new queue position.
//!
//! The queue's own decision rate is in the `scheduler` bench; this one
//! shows what the actor layer adds.

mod tree_core;

use tree_core::{FANOUT_SAMPLES, GRANT_SAMPLES, WAITERS};

fn micros(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn run() {
    let f = tree_core::measure().await;
    println!(
        "tree: {WAITERS} claims queued ({:.0} claims/s)",
        f.claims_per_sec
    );
    println!(
        "tree: resident memory per waiting claim (queue entry, event channel, record; actors start at grant): {:.0} bytes (target <= 8192)",
        f.bytes_per_waiter
    );
    println!(
        "tree: release-to-grant with {WAITERS} waiters on {} GPUs: p50 {:.0} us, p99 {:.0} us, max {:.0} us ({GRANT_SAMPLES} samples)",
        f.gpus,
        micros(f.grant_p50),
        micros(f.grant_p99),
        micros(f.grant_max),
    );
    println!(
        "tree: position fan-out to {WAITERS} waiters after a release: p50 {:.1} ms, max {:.1} ms ({FANOUT_SAMPLES} samples)",
        f.fanout_p50.as_secs_f64() * 1e3,
        f.fanout_max.as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too. This
    // binary has nothing to filter.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}
