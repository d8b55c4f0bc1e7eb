//! A gate scheduling across two GPU hosts: two real `deskgate launcher`
//! processes (one fake GPU each) on the real Docker Engine, and a real
//! `deskgate serve` with `DESKGATE_LAUNCHER_URLS` naming both. Two wallets
//! claim `small`, one desktop runs on each host, a stop goes through its own
//! launcher, and a killed container ends its session. Also: launchers scoped
//! to host numbers share one Docker daemon without touching each other's
//! containers, and a gate whose recovery cannot list every host does not
//! start (and ends nothing) until it can.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskgate::launcher::docker::{DockerLauncher, LauncherSettings, container_name, network_name};
use deskgate::launcher::remote::client::RemoteLauncher;
use deskgate::launcher::remote::pool::LauncherPool;
use deskgate::platform::secret::Secret;
use deskgate::sessions::store::PgSessionStore;
use deskgate::sessions::tree::SessionTree;
use deskgate_actors::ports::{
    GpuAddr, LaunchSpec, Launcher, RunningContainer, SessionId, SessionRecord, SessionState,
    SessionStore, WalletId,
};
use deskgate_actors::session::SessionSettings;
use deskgate_actors::testing::FakeLauncher;
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};
use support::{
    Cleanup, Deskgate, ScratchDatabase, container_exists, docker_cli, free_port, sleeper_image,
    spawn_launcher,
};
use tokio::sync::mpsc;
use url::Url;

const TOKEN: &str = "3c7a9e1f5b2d4c6e8a0f1b3d5c7e9a2b4d6f8e0c1a3b5d7f9e2c4a6b8d0f1e3c";

/// A `deskgate launcher` for host number `host`, with one fake GPU.
struct LauncherProcess {
    process: Deskgate,
    url: Url,
}

impl LauncherProcess {
    async fn start(host: u16) -> Self {
        let port = free_port();
        let env = [
            ("DESKGATE_LAUNCHER_BIND", format!("127.0.0.1:{port}")),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN.into()),
            ("DESKGATE_LAUNCHER_HOST", host.to_string()),
            ("DESKGATE_GPUS", "fake:1".into()),
            ("DESKGATE_SESSION_IMAGE", sleeper_image().into()),
            ("DESKGATE_SESSION_MEMORY_MIB", "64".into()),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0".into()),
        ];
        let (process, url) = spawn_launcher(port, &env).await;
        Self { process, url }
    }

    /// The sessions this launcher lists itself (`GET /v1/sessions`).
    async fn sessions(&self) -> Vec<RunningContainer> {
        RemoteLauncher::new(self.url.clone(), Secret::new(TOKEN))
            .unwrap()
            .running()
            .await
            .expect("the launcher lists its sessions")
    }
}

fn label(session: SessionId, name: &str) -> String {
    docker_cli(&[
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{name}\"}}}}"),
        &container_name(session),
    ])
}

async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_runs_one_session_on_each_of_two_launchers_and_follows_them() {
    let started = Instant::now();
    let hosts = [
        LauncherProcess::start(0).await,
        LauncherProcess::start(1).await,
    ];
    let urls = format!("{},{}", hosts[0].url, hosts[1].url);
    let stage = Stage::start(
        "remote_launchers",
        &[
            ("DESKGATE_LAUNCHER_URLS", &urls),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN),
            ("DESKGATE_SIGN_IN_RATE_BURST", "100"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "300"),
        ],
    )
    .await;
    let gate = &stage.gate;
    let output = gate.output();
    assert!(
        output.contains("scheduling across remote launchers"),
        "{output}"
    );

    // Two wallets, each claims small: the pool has one GPU on each host.
    let mut claims = Vec::new();
    for _ in 0..2 {
        let token = stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await;
        let claimed = stage.claim(&token, "small").await;
        claims.push((token, claimed));
    }
    let mut sessions = Vec::new();
    for (token, claimed) in &claims {
        let running = gate
            .wait_for(
                &session_path(claimed),
                token,
                Duration::from_secs(30),
                |s| s["state"] == "running",
            )
            .await;
        let id = SessionId(claimed["id"].as_str().unwrap().parse().unwrap());
        let host = u16::try_from(running["host"].as_u64().expect("a host")).unwrap();
        sessions.push((id, host));
    }
    let on_hosts: HashSet<u16> = sessions.iter().map(|(_, h)| *h).collect();
    assert_eq!(
        on_hosts,
        HashSet::from([0, 1]),
        "one per host: {sessions:?}"
    );
    eprintln!("both sessions running after {:?}", started.elapsed());

    for &(session, host) in &sessions {
        // One container, labelled with its session and its host, running.
        let ids = docker_cli(&[
            "ps",
            "--filter",
            &format!("label=deskgate.session={session}"),
            "--format",
            "{{.ID}}",
        ]);
        assert_eq!(ids.lines().count(), 1, "{session}: {ids:?}");
        assert_eq!(label(session, "deskgate.host"), host.to_string());
        assert_eq!(label(session, "deskgate.gpus"), "0");
        // Its own launcher lists it; the other one does not.
        let own = hosts[usize::from(host)].sessions().await;
        assert!(
            own.iter().any(|c| c.session == session && c.host == host),
            "host {host} lists {own:?}"
        );
        let other = hosts[usize::from(1 - host)].sessions().await;
        assert!(
            other.iter().all(|c| c.session != session),
            "host {} lists {session}: {other:?}",
            1 - host
        );
    }
    let small = gate.profile("small").await;
    assert_eq!(small["free"], false, "{small}");

    // The user stops the first session: its launcher removes its container.
    let (stopped, stopped_host) = sessions[0];
    let (token, claimed) = &claims[0];
    let (status, body) = gate.delete(&session_path(claimed), token).await;
    assert_eq!(status, 200, "{body}");
    gate.wait_for(
        &session_path(claimed),
        token,
        Duration::from_secs(15),
        |s| s["state"] == "ended" && s["end_reason"]["kind"] == "user_stopped",
    )
    .await;
    wait_until(
        "stopped container removed",
        Duration::from_secs(10),
        async || !container_exists(&container_name(stopped)),
    )
    .await;
    let listed = hosts[usize::from(stopped_host)].sessions().await;
    assert!(listed.iter().all(|c| c.session != stopped), "{listed:?}");
    let networks = docker_cli(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        !networks.contains(&network_name(stopped)),
        "network removed"
    );

    // The second session's container is killed behind the gate's back: its
    // launcher reports the exit and the session ends for it.
    let (killed, _) = sessions[1];
    let (token, claimed) = &claims[1];
    let killed_at = Instant::now();
    docker_cli(&["kill", &container_name(killed)]);
    let ended = gate
        .wait_for(
            &session_path(claimed),
            token,
            Duration::from_secs(15),
            |s| s["state"] == "ended",
        )
        .await;
    eprintln!("kill ended the session after {:?}", killed_at.elapsed());
    assert_eq!(ended["end_reason"]["kind"], "container_exited", "{ended}");
    assert_eq!(ended["end_reason"]["detail"]["code"], 137, "{ended}");
    wait_until(
        "both GPUs free again",
        Duration::from_secs(10),
        async || gate.profile("small").await["free"] == true,
    )
    .await;

    let output = gate.output();
    assert!(
        !output.contains(TOKEN),
        "the launcher token leaked into the gate's logs"
    );
    for host in &hosts {
        assert!(
            !host.process.output().contains(TOKEN),
            "token in a launcher's logs"
        );
    }
    stage.finish().await;
    eprintln!("whole flow took {:?}", started.elapsed());
}

async fn scoped(host: u16) -> DockerLauncher {
    let mut settings = LauncherSettings::new(sleeper_image());
    settings.gpu_runtime = false;
    settings.memory_bytes = 64 << 20;
    settings.stop_grace = Duration::from_secs(0);
    settings.host = Some(host);
    let docker = deskgate::launcher::docker::connect()
        .await
        .expect("docker client");
    DockerLauncher::new(docker, settings).unwrap()
}

fn spec(session: SessionId, host: u16) -> LaunchSpec {
    LaunchSpec {
        session,
        host,
        gpu_indices: vec![0],
    }
}

/// Host numbers no other test uses, so that nothing else on the shared
/// engine carries their labels.
const HOST_A: u16 = 40_001;
const HOST_B: u16 = 40_002;

#[tokio::test(flavor = "multi_thread")]
async fn launchers_of_two_hosts_on_one_daemon_keep_to_their_own_containers() {
    let mut cleanup = Cleanup::new();
    let (a, b) = (scoped(HOST_A).await, scoped(HOST_B).await);
    let (tx_a, mut exits_a) = mpsc::unbounded_channel();
    let (tx_b, mut exits_b) = mpsc::unbounded_channel();
    a.watch_exits(tx_a);
    b.watch_exits(tx_b);

    let on_a = cleanup.session();
    let on_b = cleanup.session();
    let half_on_b = cleanup.session();
    a.launch(&spec(on_a, HOST_A)).await.expect("launch on A");
    b.launch(&spec(on_b, HOST_B)).await.expect("launch on B");
    // Created, never started: what B's crash mid-launch would leave.
    b.create(&spec(half_on_b, HOST_B))
        .await
        .expect("create on B");

    // A refuses to launch for B's host number.
    let err = a
        .launch(&spec(cleanup.session(), HOST_B))
        .await
        .expect_err("A launches only for its own host");
    assert!(err.0.contains(&HOST_A.to_string()), "{err}");

    let sessions = |list: Vec<RunningContainer>| -> HashSet<SessionId> {
        list.into_iter().map(|c| c.session).collect()
    };
    assert_eq!(sessions(a.running().await.unwrap()), HashSet::from([on_a]));
    assert_eq!(sessions(b.running().await.unwrap()), HashSet::from([on_b]));

    // A's start-up recovery adopts its own container only and leaves B's
    // half-launched one alone.
    let recovered = a.recover().await.expect("recover A");
    assert_eq!(
        sessions(recovered.adopted),
        HashSet::from([on_a]),
        "A adopted only its own"
    );
    assert!(recovered.exited.is_empty(), "{:?}", recovered.exited);
    assert!(
        container_exists(&container_name(half_on_b)),
        "B's created container kept"
    );

    // A reconciling with nothing known removes its own container only.
    let (_, removed) = a.reconcile(&HashSet::new()).await.expect("reconcile A");
    assert_eq!(removed, vec![on_a]);
    assert!(!container_exists(&container_name(on_a)));
    assert!(
        container_exists(&container_name(on_b)),
        "B's container kept"
    );
    let networks = docker_cli(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(networks.contains(&network_name(on_b)), "B's network kept");

    // A stop through A of B's session leaves it running.
    a.stop(on_b).await.expect("not A's: nothing to do");
    assert_eq!(sessions(b.running().await.unwrap()), HashSet::from([on_b]));

    // B's container is killed: B reports it, A does not.
    docker_cli(&["kill", &container_name(on_b)]);
    let exit = tokio::time::timeout(Duration::from_secs(5), exits_b.recv())
        .await
        .expect("B reports the kill")
        .unwrap();
    assert_eq!((exit.session, exit.code), (on_b, 137));
    // (A may report its own container, which its reconcile removed.)
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(exit)) = tokio::time::timeout_at(deadline, exits_a.recv()).await {
        assert_ne!(exit.session, on_b, "A reported B's exit");
    }

    // B's own recovery still finds and clears its leftovers.
    let recovered = b.recover().await.expect("recover B");
    let exited: HashSet<SessionId> = recovered.exited.iter().map(|e| e.session).collect();
    assert_eq!(exited, HashSet::from([on_b, half_on_b]));
    assert!(!container_exists(&container_name(half_on_b)));
}

#[tokio::test(flavor = "multi_thread")]
async fn recovery_with_a_host_down_fails_the_start_and_ends_nothing() {
    let db = ScratchDatabase::migrated("remote_recovery").await;
    let pool = deskgate::db::pool(&Secret::new(db.url.clone())).unwrap();
    let store = PgSessionStore::new(pool.clone());
    // A session that ran on host 1 when the previous gate stopped.
    let session = SessionId::new();
    let gpu = GpuAddr { host: 1, index: 0 };
    let record = SessionRecord {
        state: SessionState::Running,
        gpu_addrs: vec![gpu],
        container_id: Some(FakeLauncher::container_id(session)),
        ..SessionRecord::new(
            session,
            WalletId::new("0x00000000000000000000000000000000000000b1"),
            1,
        )
    };
    store.save(&record).await.unwrap();
    let gpus = vec![GpuAddr { host: 0, index: 0 }, gpu];
    let settings = SessionSettings::default();

    // Host 1 does not answer: the start fails and the session is kept.
    let host0 = Arc::new(FakeLauncher::new());
    let host1 = Arc::new(FakeLauncher::new());
    host1.insert_running(RunningContainer {
        session,
        container_id: FakeLauncher::container_id(session),
        host: 1,
    });
    host1.set_unreachable(true);
    let launchers = LauncherPool::new(vec![host0.clone(), host1.clone()]).unwrap();
    let err = SessionTree::start(
        pool.clone(),
        Arc::new(launchers),
        gpus.clone(),
        settings.clone(),
    )
    .await
    .expect_err("a gate that cannot list host 1 does not start");
    eprintln!("start with host 1 down: {err}");
    let kept = store.load(session).await.unwrap().unwrap();
    assert_eq!(kept.state, SessionState::Running, "{kept:?}");
    assert_eq!(kept.end_reason, None);

    // Host 1 is back with the container: the retry adopts the session.
    host1.set_unreachable(false);
    let up = LauncherPool::new(vec![host0.clone(), host1.clone()]).unwrap();
    let gate = SessionTree::start(pool.clone(), Arc::new(up), gpus, settings)
        .await
        .expect("the retry starts");
    assert_eq!(gate.recovery().await.adopted, vec![session]);
    assert!(!host0.stopped(session), "host 0 was never asked to stop it");
    drop(gate);
    drop(pool);
    db.drop_it().await;
}
