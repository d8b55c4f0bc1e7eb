//! Claim-to-running against `docker run`, on the real Docker Engine, in one
//! run. Prints its figures; `make bench` runs it with the services started.
//!
//! - **claim → running**: a claim of one GPU goes through the actor tree
//!   (supervisor, scheduler, GPU lease, session actor) to [`DockerLauncher`],
//!   which creates the session's own network and the hardened container and
//!   starts it; timed until the session reports `Running`.
//! - **launcher only**: [`DockerLauncher::launch`] alone, to show what the
//!   actors add.
//! - **docker run**: `docker run -d` of the same image and command, timed
//!   until the CLI returns (it returns once the container has started).
//! - **same isolation**: `docker network create` of an internal network
//!   plus `docker run` on it with the session's hardening flags: what
//!   the CLI costs for what a session gets.
//!
//! Measured here (Docker 20.10), a container's first start on a fresh
//! user-defined network costs ~80-100 ms more than on the default bridge,
//! and creating the network ~80 ms: a session's own network is most of
//! the gap to a plain `docker run`.
//!
//! All are interleaved round by round so that drift in the engine
//! affects all of them alike; each is cleaned up outside the timed part.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskgate::launcher::docker::{DockerLauncher, LauncherSettings};
use deskgate_actors::ask::ask;
use deskgate_actors::ports::EndReason;
use deskgate_actors::ports::{GpuAddr, LaunchSpec, Launcher, SessionId, SessionState, WalletId};
use deskgate_actors::protocol::SessionEvent;
use deskgate_actors::queue::Policy;
use deskgate_actors::session::SessionSettings;
use deskgate_actors::supervisor::{RestartPolicy, Supervisor, SupervisorArgs, SupervisorMsg};
use deskgate_actors::testing::{MemoryLedger, MemoryStore};

const ROUNDS: usize = 25;
const WARMUP: usize = 2;

fn test_image() -> String {
    common::service_setting("DESKGATE_TEST_IMAGE")
}

fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[rank]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One claim through the actor tree, timed until the session runs; then
/// stopped (not timed).
async fn claim_to_running(
    supervisor: &ractor::ActorRef<SupervisorMsg>,
    ledger: &MemoryLedger,
    round: usize,
) -> Duration {
    let wallet = WalletId::new(&format!("0x{round:040x}"));
    ledger.deposit(&wallet, 1_000_000);
    let started = Instant::now();
    let handle = ask(supervisor, |reply| SupervisorMsg::StartSession {
        wallet,
        gpus: 1,
        balance: None,
        reply,
    })
    .await
    .expect("the supervisor answers")
    .expect("claim accepted");
    let mut events = handle.events.subscribe();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("the session runs within 30 s")
            .expect("event channel open");
        match event {
            SessionEvent::State {
                state: SessionState::Running,
                ..
            } => break,
            SessionEvent::State {
                state: SessionState::Ended,
                reason,
            } => panic!("session ended before running: {reason:?}"),
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let session = handle.id;
    let stopped = ask(supervisor, |reply| SupervisorMsg::StopSession {
        session,
        reason: EndReason::UserStopped,
        reply,
    })
    .await
    .expect("the supervisor answers");
    assert!(stopped, "session live at stop");
    // Wait until it has ended (container removed, GPU free) before the next round.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(SessionEvent::State {
                state: SessionState::Ended,
                ..
            })) => break,
            Ok(Ok(_)) => {}
            other => panic!("session did not end: {other:?}"),
        }
    }
    elapsed
}

async fn launcher_only(launcher: &DockerLauncher) -> Duration {
    let session = SessionId::new();
    let spec = LaunchSpec {
        session,
        host: 0,
        gpu_indices: vec![0],
    };
    let started = Instant::now();
    launcher.launch(&spec).await.expect("launch");
    let elapsed = started.elapsed();
    launcher.stop(session).await.expect("stop");
    elapsed
}

/// `docker run` with the isolation a session gets: a fresh internal network
/// without a host address, read-only root, tmpfs, no capabilities.
fn docker_run_isolated(image: &str, round: usize) -> Duration {
    let name = format!("deskgate-bench-iso-{}-{round}", std::process::id());
    let started = Instant::now();
    docker_cli(&[
        "network",
        "create",
        "--internal",
        "-o",
        "com.docker.network.bridge.inhibit_ipv4=true",
        &name,
    ]);
    docker_cli(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        &name,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/home",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "1000:1000",
        image,
        "sleep",
        "86400",
    ]);
    let elapsed = started.elapsed();
    docker_cli(&["rm", "-f", &name]);
    docker_cli(&["network", "rm", &name]);
    elapsed
}

fn docker_run(image: &str, round: usize) -> Duration {
    let name = format!("deskgate-bench-run-{}-{round}", std::process::id());
    let started = Instant::now();
    docker_cli(&["run", "-d", "--name", &name, image, "sleep", "86400"]);
    let elapsed = started.elapsed();
    docker_cli(&["rm", "-f", &name]);
    elapsed
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let image = test_image();
    let docker = deskgate::launcher::docker::connect()
        .await
        .expect("docker client");
    docker
        .ping()
        .await
        .expect("Docker answers: run `make bench` (it starts dockerd)");
    let mut settings = LauncherSettings::new(image.clone());
    settings.command = Some(vec!["sleep".into(), "86400".into()]);
    settings.memory_bytes = 256 << 20;
    settings.gpu_runtime = false;
    settings.stop_grace = Duration::from_secs(1);
    let launcher = Arc::new(DockerLauncher::new(docker, settings).expect("settings"));
    let ledger = Arc::new(MemoryLedger::new());
    let args = SupervisorArgs {
        gpus: vec![GpuAddr { host: 0, index: 0 }],
        policy: Policy::default(),
        profile_sizes: vec![1],
        ledger: ledger.clone(),
        store: Arc::new(MemoryStore::new()),
        launcher: launcher.clone(),
        settings: SessionSettings {
            billing_interval: Duration::from_secs(3600),
            presence_timeout: Duration::from_secs(3600),
            idle_timeout: None,
            idle_warning: Duration::from_secs(60),
            low_credit_warnings: Vec::new(),
        },
        restart: RestartPolicy::default(),
    };
    let (supervisor, _) = ractor::Actor::spawn(None, Supervisor, args)
        .await
        .expect("supervisor starts");

    println!(
        "spawn: {ROUNDS} rounds (+{WARMUP} warm-up) on {}, image {image}",
        docker_cli(&["version", "--format", "Docker {{.Server.Version}}"])
    );
    let (mut claim, mut direct, mut run, mut isolated) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..WARMUP + ROUNDS {
        let c = claim_to_running(&supervisor, &ledger, round).await;
        let d = launcher_only(&launcher).await;
        let r = tokio::task::spawn_blocking({
            let image = image.clone();
            move || docker_run(&image, round)
        })
        .await
        .expect("docker run");
        let i = tokio::task::spawn_blocking({
            let image = image.clone();
            move || docker_run_isolated(&image, round)
        })
        .await
        .expect("docker run (isolated)");
        if round >= WARMUP {
            claim.push(c);
            direct.push(d);
            run.push(r);
            isolated.push(i);
        }
    }
    supervisor.stop(None);

    let rows = [
        ("claim -> running (actors + DockerLauncher)", &mut claim),
        ("DockerLauncher::launch alone", &mut direct),
        ("docker run -d (CLI)", &mut run),
        ("network create + docker run, same isolation", &mut isolated),
    ];
    let mut medians = Vec::new();
    for (name, samples) in rows {
        let m = median(samples);
        medians.push(m);
        println!(
            "  {name:<44} median {:>7.1} ms  p90 {:>7.1} ms  min {:>7.1} ms",
            ms(m),
            ms(percentile(samples, 0.9)),
            ms(samples[0]),
        );
    }
    println!(
        "  ratio claim->running / docker run (median): {:.2}x (goal <= 1.0x)",
        ms(medians[0]) / ms(medians[2])
    );
    println!(
        "  ratio claim->running / same-isolation docker run (median): {:.2}x",
        ms(medians[0]) / ms(medians[3])
    );
}
