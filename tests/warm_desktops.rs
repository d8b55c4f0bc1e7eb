//! Warm desktops (`DESKGATE_WARM_DESKTOPS`) on the real Docker Engine with
//! the real desktop image (`DESKGATE_DESKTOP_IMAGE`, Xvnc): a one-GPU launch
//! takes the warm desktop on its GPU and the pool refills on a free GPU; no
//! desktop ever serves two sessions; a launch that needs a warm desktop's
//! GPU for more is never held up by it; recovery removes what nobody took
//! and keeps what a session took; an exit of a taken desktop reaches its
//! session; a desktop that died in the pool is not given out and its end is
//! nobody's exit; a running desktop the pool does not hold (a launch
//! cancelled mid-take) is removed. Each test scopes its launchers to a host number of its own, so
//! the pools of parallel tests never see each other's desktops.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::InspectContainerOptions;
use deskgate::launcher::docker::{
    DockerLauncher, LABEL_SESSION, LABEL_WARM, LauncherSettings, container_name,
};
use deskgate_actors::ports::{LaunchSpec, Launcher, SessionId};
use tokio::sync::mpsc;

use support::{Cleanup, docker, next_exit, service_env};

/// Long enough for the desktop image to start Xvnc on a loaded machine.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A launcher for `host` keeping `warm` desktops of the desktop image on
/// `gpus` (its pool started).
fn launcher(docker: &Docker, host: u16, warm: usize, gpus: Vec<u32>) -> Arc<DockerLauncher> {
    let mut settings = LauncherSettings::new(service_env("DESKGATE_DESKTOP_IMAGE"));
    settings.memory_bytes = 256 << 20;
    settings.stop_grace = Duration::from_secs(1);
    settings.gpu_runtime = false;
    settings.host = Some(host);
    settings.warm_desktops = warm;
    let launcher = Arc::new(DockerLauncher::new(docker.clone(), settings).expect("settings"));
    launcher.keep_warm(gpus);
    launcher
}

fn spec(session: SessionId, host: u16, gpus: &[u32]) -> LaunchSpec {
    LaunchSpec {
        session,
        host,
        gpu_indices: gpus.to_vec(),
    }
}

/// The test engine and a host number of the test's own (so the pools of
/// parallel tests never see each other's desktops); every container and
/// network labelled with it is removed however the test ends.
struct Rig {
    docker: Docker,
    host: u16,
}

impl Rig {
    async fn new() -> Self {
        Self {
            docker: docker().await,
            host: host_number(),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let filter = format!("label=deskgate.host={}", self.host);
        for (list, remove) in [
            (
                vec!["ps", "-aq", "--filter", &filter],
                vec!["rm", "-f", "-v"],
            ),
            (
                vec!["network", "ls", "-q", "--filter", &filter],
                vec!["network", "rm"],
            ),
        ] {
            let Ok(out) = Command::new("docker").args(&list).output() else {
                continue;
            };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(&remove).args(&ids).output();
            }
        }
    }
}

/// A host number no other test (or run) uses.
fn host_number() -> u16 {
    40_000 + (rand::random::<u16>() % 20_000)
}

/// `docker ps -a` names (without `/`) and GPU labels of the warm desktops
/// nobody took on `host`.
fn untaken_warm(host: u16) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={LABEL_WARM}"),
            "--filter",
            &format!("label=deskgate.host={host}"),
            "--filter",
            "name=deskgate-warm-",
            "--format",
            "{{.Names}} {{.Label \"deskgate.gpus\"}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, gpus) = l.split_once(' ')?;
            Some((name.to_string(), gpus.to_string()))
        })
        .collect()
}

/// Networks on `host` (any label).
fn networks_of(host: u16) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("label=deskgate.host={host}"),
            "--format",
            "{{.Name}}",
        ])
        .output()
        .expect("docker network ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until `launcher` has `count` warm desktops ready.
async fn until_ready(launcher: &DockerLauncher, count: usize) {
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    while launcher.warm_desktops_ready() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} warm desktops not ready within {READY_WITHIN:?} (ready: {})",
            launcher.warm_desktops_ready()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds, for at most `within`.
async fn until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn container_id(docker: &Docker, name: &str) -> Option<String> {
    docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()?
        .id
}

async fn env_secret(docker: &Docker, name: &str) -> String {
    docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .config
        .and_then(|c| c.env)
        .into_iter()
        .flatten()
        .find_map(|e| e.strip_prefix("DESKGATE_VNC_PASSWORD=").map(str::to_string))
        .expect("the desktop has a VNC secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gpu_launch_takes_the_warm_desktop_and_no_desktop_serves_two_sessions() {
    let rig = Rig::new().await;
    let (docker, host) = (&rig.docker, rig.host);
    let mut cleanup = Cleanup::new();
    let launcher = launcher(docker, host, 1, vec![0, 1]);
    let (tx, mut exits) = mpsc::unbounded_channel();
    launcher.watch_exits(tx);

    // The pool fills the lowest free GPU.
    until_ready(&launcher, 1).await;
    let warm = untaken_warm(host);
    assert_eq!(warm.len(), 1, "{warm:?}");
    assert_eq!(warm[0].1, "0", "lowest GPU first: {warm:?}");
    let warm_id = container_id(docker, &warm[0].0)
        .await
        .expect("warm container");
    let warm_secret = env_secret(docker, &warm[0].0).await;

    // A one-GPU launch on it takes it: same container, now the session's.
    let first = cleanup.session();
    let taken = launcher
        .launch(&spec(first, host, &[0]))
        .await
        .expect("launch");
    assert_eq!(taken, warm_id, "the warm container was taken");
    assert_eq!(
        container_id(docker, &container_name(first)).await,
        Some(warm_id.clone())
    );
    assert_eq!(
        launcher.vnc_secret(first).map(|s| s.expose().to_string()),
        Some(warm_secret.clone()),
        "the session authenticates with the desktop's own secret"
    );
    let running = launcher.running().await.expect("running");
    assert!(
        running
            .iter()
            .any(|r| r.session == first && r.container_id == warm_id && r.host == host),
        "a taken desktop is a session container: {running:?}"
    );

    // The pool refills on the GPU still free, with a new desktop.
    until_ready(&launcher, 1).await;
    let refilled = untaken_warm(host);
    assert_eq!(refilled.len(), 1, "{refilled:?}");
    assert_eq!(refilled[0].1, "1", "GPU 0 is the session's: {refilled:?}");
    let second_warm_id = container_id(docker, &refilled[0].0).await.expect("warm");
    assert_ne!(second_warm_id, warm_id);

    // The first session ends: its desktop goes with it, never back to the pool.
    launcher.stop(first).await.expect("stop");
    assert_eq!(
        container_id(docker, &warm_id).await,
        None,
        "removed, not pooled"
    );
    assert!(launcher.vnc_secret(first).is_none());

    // Later sessions get other containers and other secrets, warm or cold.
    let second = cleanup.session();
    let on_one = launcher
        .launch(&spec(second, host, &[1]))
        .await
        .expect("launch on GPU 1");
    assert_eq!(on_one, second_warm_id);
    let third = cleanup.session();
    let on_zero = launcher
        .launch(&spec(third, host, &[0]))
        .await
        .expect("launch on GPU 0");
    let ids: HashSet<&String> = [&warm_id, &on_one, &on_zero].into_iter().collect();
    assert_eq!(ids.len(), 3, "three sessions, three containers");
    let secrets: HashSet<String> = [first, second, third]
        .iter()
        .filter_map(|s| launcher.vnc_secret(*s).map(|s| s.expose().to_string()))
        .chain([warm_secret])
        .collect();
    assert_eq!(secrets.len(), 3, "every desktop has its own secret");

    // An exit of a taken desktop reaches its session (known by its name).
    docker
        .kill_container(
            &container_name(second),
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .expect("docker kill");
    let exit = next_exit(&mut exits, second, Duration::from_secs(5)).await;
    assert_eq!(exit.code, 137);
    for session in [second, third] {
        launcher.stop(session).await.expect("stop");
    }
    // Both GPUs free again: the pool holds its one desktop, no more.
    until_ready(&launcher, 1).await;
    assert_eq!(untaken_warm(host).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_on_warm_gpus_is_never_held_up_and_the_pool_keeps_off_busy_gpus() {
    let rig = Rig::new().await;
    let (docker, host) = (&rig.docker, rig.host);
    let mut cleanup = Cleanup::new();
    let launcher = launcher(docker, host, 2, vec![0, 1]);
    until_ready(&launcher, 2).await;
    let warm_before: Vec<String> = untaken_warm(host).into_iter().map(|(n, _)| n).collect();
    assert_eq!(warm_before.len(), 2);

    // Two GPUs: no warm desktop fits, both give way, the launch goes on cold.
    let session = cleanup.session();
    let id = launcher
        .launch(&spec(session, host, &[0, 1]))
        .await
        .expect("a claim on warm GPUs launches");
    let labels = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .config
        .and_then(|c| c.labels)
        .unwrap_or_default();
    assert_eq!(labels.get(LABEL_SESSION), Some(&session.to_string()));
    until(
        Duration::from_secs(20),
        "the warm desktops give way",
        || untaken_warm(host).is_empty(),
    )
    .await;
    // Every GPU is the session's: the pool starts nothing while it runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(untaken_warm(host).is_empty(), "{:?}", untaken_warm(host));
    assert_eq!(launcher.warm_desktops_ready(), 0);

    // The session ends: the pool fills both GPUs again.
    launcher.stop(session).await.expect("stop");
    until_ready(&launcher, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_removes_untaken_warm_desktops_and_keeps_taken_ones() {
    let rig = Rig::new().await;
    let (docker, host) = (&rig.docker, rig.host);
    let mut cleanup = Cleanup::new();
    let before = launcher(docker, host, 2, vec![0, 1, 2]);
    until_ready(&before, 2).await;
    let session = cleanup.session();
    let taken = before
        .launch(&spec(session, host, &[0]))
        .await
        .expect("launch");
    until_ready(&before, 2).await;
    assert_eq!(untaken_warm(host).len(), 2);
    // The process "dies": its pool task ends with it.
    drop(before);

    // The next run, with the pool off, removes what nobody took...
    let after = launcher(docker, host, 0, vec![0, 1, 2]);
    until(
        Duration::from_secs(20),
        "untaken warm desktops removed",
        || untaken_warm(host).is_empty(),
    )
    .await;
    // ...keeps the session's, which it adopts by name...
    let (adopted, removed) = after
        .reconcile(&HashSet::from([session]))
        .await
        .expect("reconcile");
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(
        (adopted[0].session, &adopted[0].container_id),
        (session, &taken)
    );
    assert!(after.vnc_secret(session).is_some(), "secret adopted");
    // ...and its stop leaves no network behind, warm or not.
    after.stop(session).await.expect("stop");
    until(
        Duration::from_secs(10),
        "no network left on the host",
        || networks_of(host).is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_warm_desktop_is_not_given_out_and_its_end_is_no_session_exit() {
    let rig = Rig::new().await;
    let (docker, host) = (&rig.docker, rig.host);
    let mut cleanup = Cleanup::new();
    let launcher = launcher(docker, host, 1, vec![0]);
    let (tx, mut exits) = mpsc::unbounded_channel();
    launcher.watch_exits(tx);
    until_ready(&launcher, 1).await;
    let (name, _) = untaken_warm(host).pop().expect("a warm desktop");
    let dead_id = container_id(docker, &name).await.expect("warm container");
    docker
        .kill_container(
            &name,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .expect("docker kill");

    // The pool may still count it; the launch must not end up in it.
    let session = cleanup.session();
    let id = launcher
        .launch(&spec(session, host, &[0]))
        .await
        .expect("the launch goes on cold");
    assert_ne!(id, dead_id);
    assert!(
        docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
            .expect("inspect")
            .state
            .and_then(|s| s.running)
            .unwrap_or(false),
        "the session's container runs"
    );
    // The dead desktop's end is nobody's exit: none reaches the session.
    let exit = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match exits.recv().await {
                Some(exit) if exit.session == session => return exit,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(exit.is_err(), "a false exit: {exit:?}");
    launcher.stop(session).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_warm_desktop_the_pool_does_not_hold_is_removed() {
    let rig = Rig::new().await;
    let (docker, host) = (&rig.docker, rig.host);
    let launcher = launcher(docker, host, 1, vec![0, 1]);
    until_ready(&launcher, 1).await;
    // What a launch cancelled between taking a desktop and renaming it
    // leaves: a running warm desktop nobody holds.
    let stray = uuid::Uuid::new_v4();
    let out = Command::new("docker")
        .args(["run", "-d", "--name"])
        .arg(format!("deskgate-warm-{stray}"))
        .args(["--label", &format!("{LABEL_WARM}={stray}")])
        .args(["--label", &format!("deskgate.host={host}")])
        .args(["--label", "deskgate.gpus=1"])
        .args(["-e", "DESKGATE_VNC_PASSWORD=stray-secret"])
        .arg(service_env("DESKGATE_DESKTOP_IMAGE"))
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(
        Duration::from_secs(20),
        "the stray warm desktop removed",
        || {
            !untaken_warm(host)
                .iter()
                .any(|(name, _)| name.ends_with(&stray.to_string()))
        },
    )
    .await;
    assert_eq!(launcher.warm_desktops_ready(), 1, "the pool's own stays");
}
