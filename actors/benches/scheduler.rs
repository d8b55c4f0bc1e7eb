//! Scheduler figures (DESIGN §10), all from one run:
//!
//! a. grant decisions per second with 10,000 waiters on 64 GPUs, and the
//!    release-to-grant time distribution;
//! b. the cost of `statuses` (every waiter's position and ETA) at that size;
//! c. utilisation of backfill against strict FIFO on one seeded trace,
//!    simulated on a virtual clock;
//! d. resident memory per waiting claim.
//!
//! Criterion measures a and b. The figures it cannot give (percentiles,
//! utilisation, memory) are measured here and printed around its output.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use deskgate_actors::ports::{GpuAddr, SessionId, WalletId};
use deskgate_actors::protocol::{Claim, Millis};
use deskgate_actors::queue::{Policy, Queue};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const HOSTS: u16 = 8;
const GPUS_PER_HOST: u32 = 8;
const TOTAL_GPUS: u32 = HOSTS as u32 * GPUS_PER_HOST;
const WAITERS: usize = 10_000;
const LATENCY_SAMPLES: usize = 20_000;
const TRACE_ARRIVALS: usize = 5_000;
const MEMORY_CLAIMS: usize = 100_000;
const SEED: u64 = 0x5eed_2026;

/// (GPUs asked, weight): mostly single-GPU desktops, some multi-GPU gangs.
const PROFILES: [(u32, u32); 4] = [(1, 50), (2, 25), (4, 15), (8, 10)];
/// Credit runways: ten minutes to two hours.
const RUNWAY_MS: std::ops::RangeInclusive<Millis> = 600_000..=7_200_000;
/// Steady state: the clock moves up to this much between two releases, so
/// that some sessions run out of credit while others stop early.
const MAX_STEP_MS: Millis = 120_000;
/// Trace: mean gap between arrivals. A mean job holds 2.4 GPUs for 0.6 of a
/// 65-minute mean runway, about 5,600 GPU-seconds, so 64 GPUs serve one every
/// ~88 s; arriving every 60 s builds a queue.
const MEAN_ARRIVAL_GAP_MS: Millis = 60_000;

const TARGET_DECISIONS_PER_S: f64 = 100_000.0;
const TARGET_P99_US: f64 = 1_000.0;
const TARGET_BYTES_PER_CLAIM: f64 = 8_192.0;

fn pool() -> Vec<GpuAddr> {
    (0..HOSTS)
        .flat_map(|host| (0..GPUS_PER_HOST).map(move |index| GpuAddr { host, index }))
        .collect()
}

/// Seeded claims of the mixed profile, each from a wallet of its own.
struct ClaimSource {
    rng: StdRng,
    profile: WeightedIndex<u32>,
    issued: u64,
}

impl ClaimSource {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            profile: WeightedIndex::new(PROFILES.map(|(_, weight)| weight))
                .expect("positive weights"),
            issued: 0,
        }
    }

    fn gpus(&mut self) -> u32 {
        PROFILES[self.profile.sample(&mut self.rng)].0
    }

    fn runway_ms(&mut self) -> Millis {
        self.rng.random_range(RUNWAY_MS)
    }

    fn next_claim(&mut self) -> Claim {
        self.issued += 1;
        Claim {
            session: SessionId(Uuid::from_u128(self.issued.into())),
            wallet: WalletId::new(&format!("0x{:040x}", self.issued)),
            gpus: self.gpus(),
            runway_ms: self.runway_ms(),
        }
    }
}

/// A saturated pool with `WAITERS` claims always waiting. Each step ends one
/// running session (its credit ran out, or it stopped early), lets the queue
/// decide who starts, and tops the queue back up.
struct SteadyState {
    queue: Queue,
    claims: ClaimSource,
    /// (latest end, session) of every running session.
    running: Vec<(Millis, SessionId)>,
    rng: StdRng,
    now: Millis,
}

struct Step {
    /// One `release` plus the `schedule` after it.
    release_and_schedule: Duration,
    grants: usize,
}

impl SteadyState {
    fn new(seed: u64) -> Self {
        let mut state = Self {
            queue: Queue::new(pool(), Policy::default()),
            claims: ClaimSource::new(seed),
            running: Vec::new(),
            rng: StdRng::seed_from_u64(seed.rotate_left(32)),
            now: 0,
        };
        state.top_up();
        for grant in state.queue.schedule(0) {
            state.running.push((grant.latest_end, grant.session));
        }
        state.top_up();
        state
    }

    fn top_up(&mut self) {
        while self.queue.waiting_len() < WAITERS {
            let claim = self.claims.next_claim();
            self.queue
                .claim(claim)
                .expect("a fresh wallet and a size that fits");
        }
    }

    fn step(&mut self) -> Step {
        let step = self.rng.random_range(0..=MAX_STEP_MS);
        // With the whole pool free the head always fits, so a queue this
        // long keeps GPUs held.
        let (earliest, &(earliest_end, _)) = self
            .running
            .iter()
            .enumerate()
            .min_by_key(|&(_, &(end, _))| end)
            .expect("a saturated pool has running sessions");
        let index = if earliest_end <= self.now + step {
            self.now = self.now.max(earliest_end);
            earliest
        } else {
            self.now += step;
            self.rng.random_range(0..self.running.len())
        };
        let (_, session) = self.running.swap_remove(index);

        let started = Instant::now();
        self.queue.release(session).expect("a running session");
        let grants = self.queue.schedule(self.now);
        let release_and_schedule = started.elapsed();

        for grant in &grants {
            self.running.push((grant.latest_end, grant.session));
        }
        self.top_up();
        Step {
            release_and_schedule,
            grants: grants.len(),
        }
    }
}

fn bench_grant_decisions(criterion: &mut Criterion) {
    let mut state = SteadyState::new(SEED);
    let mut group = criterion.benchmark_group("scheduler_10k_waiters_64_gpus");
    group.throughput(Throughput::Elements(1));
    group.bench_function("release_schedule_reclaim", |bencher| {
        bencher.iter(|| black_box(state.step().grants))
    });
    group.finish();
}

fn bench_statuses(criterion: &mut Criterion) {
    let state = SteadyState::new(SEED);
    let mut group = criterion.benchmark_group("scheduler_10k_waiters_64_gpus");
    group.throughput(Throughput::Elements(WAITERS as u64));
    group.bench_function("statuses", |bencher| {
        bencher.iter(|| black_box(state.queue.statuses(state.now)))
    });
    group.finish();
}

/// The value at fraction `p` of sorted `values` (nearest rank).
fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn report_release_to_grant() {
    let mut state = SteadyState::new(SEED.rotate_left(8));
    for _ in 0..2_000 {
        state.step();
    }
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    let (mut steps, mut grants, mut spent) = (0u64, 0u64, Duration::ZERO);
    while samples.len() < LATENCY_SAMPLES {
        let step = state.step();
        steps += 1;
        grants += step.grants as u64;
        spent += step.release_and_schedule;
        if step.grants > 0 {
            samples.push(step.release_and_schedule);
        }
    }
    samples.sort_unstable();
    let decisions_per_s = steps as f64 / spent.as_secs_f64();
    let p50 = micros(percentile(&samples, 0.50));
    let p99 = micros(percentile(&samples, 0.99));
    let max = micros(*samples.last().expect("samples"));
    println!(
        "a. grant decisions, {WAITERS} waiters on {TOTAL_GPUS} GPUs ({HOSTS} hosts x {GPUS_PER_HOST}):"
    );
    println!(
        "   decisions/s (release + schedule): {decisions_per_s:.0}  (target >= {TARGET_DECISIONS_PER_S:.0}: {})",
        met(decisions_per_s >= TARGET_DECISIONS_PER_S)
    );
    println!(
        "   grants/s: {:.0}  ({grants} grants over {steps} decisions)",
        grants as f64 / spent.as_secs_f64()
    );
    println!(
        "   release-to-grant over {} granting decisions: p50 {p50:.2} us, p99 {p99:.2} us, max {max:.2} us  (target p99 <= {TARGET_P99_US:.0} us: {})",
        samples.len(),
        met(p99 <= TARGET_P99_US)
    );
}

fn report_statuses() {
    let state = SteadyState::new(SEED);
    let mut runs: Vec<Duration> = (0..50)
        .map(|_| {
            let started = Instant::now();
            black_box(state.queue.statuses(state.now));
            started.elapsed()
        })
        .collect();
    runs.sort_unstable();
    let median = percentile(&runs, 0.5);
    println!("b. statuses (fan-out of positions and ETAs), {WAITERS} waiters:");
    println!(
        "   median {:.0} us per call, {:.3} us per waiter",
        micros(median),
        micros(median) / WAITERS as f64
    );
}

/// One arrival of the utilisation trace.
struct Job {
    arrival: Millis,
    claim: Claim,
    /// How long it actually runs: at most its runway.
    duration_ms: Millis,
}

fn mixed_trace(seed: u64) -> Vec<Job> {
    let mut claims = ClaimSource::new(seed);
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(16));
    let mut arrival = 0;
    (0..TRACE_ARRIVALS)
        .map(|_| {
            let claim = claims.next_claim();
            let duration_ms = claim.runway_ms * rng.random_range(20..=100) / 100;
            let job = Job {
                arrival,
                claim,
                duration_ms,
            };
            arrival += rng.random_range(0..=2 * MEAN_ARRIVAL_GAP_MS);
            job
        })
        .collect()
}

struct Outcome {
    utilisation: f64,
    makespan_ms: Millis,
    mean_wait_s: f64,
    p99_wait_s: f64,
}

/// Runs `jobs` through a queue on a virtual clock: at each event (an arrival
/// or a session's end) release what ended, claim what arrived, schedule.
fn simulate(jobs: &[Job], policy: Policy) -> Outcome {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};

    let mut queue = Queue::new(pool(), policy);
    let job_of: HashMap<SessionId, &Job> =
        jobs.iter().map(|job| (job.claim.session, job)).collect();
    let mut ends = BinaryHeap::<Reverse<(Millis, SessionId)>>::new();
    let mut waits = Vec::with_capacity(jobs.len());
    let (mut busy_gpu_ms, mut makespan_ms) = (0u128, 0);
    let mut next_arrival = 0;
    loop {
        let next_end = ends.peek().map(|&Reverse((end, _))| end);
        let Some(now) = jobs
            .get(next_arrival)
            .map(|job| job.arrival)
            .into_iter()
            .chain(next_end)
            .min()
        else {
            break;
        };
        while let Some(&Reverse((end, session))) = ends.peek()
            && end <= now
        {
            ends.pop();
            queue.release(session).expect("a running session");
        }
        while let Some(job) = jobs.get(next_arrival)
            && job.arrival <= now
        {
            queue
                .claim(job.claim.clone())
                .expect("a fresh wallet and a size that fits");
            next_arrival += 1;
        }
        for grant in queue.schedule(now) {
            let job = job_of[&grant.session];
            let end = now + job.duration_ms;
            waits.push(now - job.arrival);
            busy_gpu_ms += u128::from(job.claim.gpus) * u128::from(job.duration_ms);
            makespan_ms = makespan_ms.max(end);
            ends.push(Reverse((end, grant.session)));
        }
    }
    assert_eq!(waits.len(), jobs.len(), "every job ran");
    waits.sort_unstable();
    Outcome {
        utilisation: busy_gpu_ms as f64 / (f64::from(TOTAL_GPUS) * makespan_ms as f64),
        makespan_ms,
        mean_wait_s: waits.iter().sum::<Millis>() as f64 / waits.len() as f64 / 1e3,
        p99_wait_s: percentile(&waits, 0.99) as f64 / 1e3,
    }
}

fn report_utilisation() {
    let jobs = mixed_trace(SEED.rotate_left(24));
    let backfill = simulate(&jobs, Policy::default());
    let strict = simulate(
        &jobs,
        Policy {
            backfill: false,
            ..Policy::default()
        },
    );
    println!(
        "c. utilisation, {TRACE_ARRIVALS} arrivals on {TOTAL_GPUS} GPUs, profiles {PROFILES:?} (GPUs, weight), runs 20-100% of runway:"
    );
    for (name, outcome) in [("backfill", &backfill), ("strict FIFO", &strict)] {
        println!(
            "   {name:<11}: utilisation {:.2}%, makespan {:.1} h, wait mean {:.0} s, p99 {:.0} s",
            outcome.utilisation * 100.0,
            outcome.makespan_ms as f64 / 3.6e6,
            outcome.mean_wait_s,
            outcome.p99_wait_s
        );
    }
    println!(
        "   backfill / strict FIFO utilisation: {:.3}x",
        backfill.utilisation / strict.utilisation
    );
    assert!(
        backfill.utilisation > strict.utilisation,
        "backfill ({:.4}) no longer beats strict FIFO ({:.4}) on the same trace",
        backfill.utilisation,
        strict.utilisation
    );
}

/// This process's resident set, from procfs; `None` off Linux.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident growth per waiting claim: the queue's own structures plus the
/// wallet address each claim carries.
fn bytes_per_waiting_claim() -> Option<f64> {
    let mut claims = ClaimSource::new(SEED.rotate_left(40));
    let mut queue = Queue::new(pool(), Policy::default());
    let before = resident_bytes()?;
    for _ in 0..MEMORY_CLAIMS {
        queue
            .claim(claims.next_claim())
            .expect("a fresh wallet and a size that fits");
    }
    let after = resident_bytes()?;
    black_box(&queue);
    Some(after.saturating_sub(before) as f64 / MEMORY_CLAIMS as f64)
}

fn main() {
    // First, before other work leaves freed heap that new claims could reuse
    // without the resident set growing.
    let bytes_per_claim = bytes_per_waiting_claim();

    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    bench_grant_decisions(&mut criterion);
    bench_statuses(&mut criterion);
    criterion.final_summary();

    println!();
    println!("== deskgate scheduler figures ==");
    report_release_to_grant();
    report_statuses();
    report_utilisation();
    match bytes_per_claim {
        Some(bytes) => println!(
            "d. memory: {bytes:.0} bytes of resident set per waiting claim over {MEMORY_CLAIMS} claims  (target <= {TARGET_BYTES_PER_CLAIM:.0}: {})",
            met(bytes <= TARGET_BYTES_PER_CLAIM)
        ),
        None => println!("d. memory: not measured (no /proc/self/status here)"),
    }
}
