//! `deskgate launcher` as a real process on the real Docker Engine
//! (`scripts/docker.sh up`), driven over HTTP by [`RemoteLauncher`] and by
//! plain requests: tokens, refused specs, launch/stop end to end, exits over
//! the events socket, and recovery after the launcher is killed with SIGKILL.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};
use deskgate::launcher::docker::{DockerLauncher, LauncherSettings, container_name, network_name};
use deskgate::launcher::remote::client::RemoteLauncher;
use deskgate::platform::secret::Secret;
use deskgate_actors::ports::{LaunchSpec, Launcher, SessionId};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::mpsc;
use url::Url;

use support::{
    Cleanup, Deskgate, docker, docker_cli, free_port, host_addresses, network_gateway, next_exit,
    run_deskgate, service_env, sleeper_image, spawn_launcher,
};

const TOKEN: &str = "5b1e9c7d3a2f4e6081c9d7b5a3f1e2d4c6b8a0f9e7d5c3b1a2f4e6d8c0b9a7e5";

/// The launcher's start-up recovery removes every stopped session container
/// on the engine, so the test that restarts it runs alone.
static RECOVERY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A `deskgate launcher` process on every host address (so that the
/// isolation probe has something real to reach), with small session limits.
struct LauncherProcess {
    process: Deskgate,
    url: Url,
    port: u16,
}

impl LauncherProcess {
    async fn start_on(port: u16) -> Self {
        let env = [
            ("DESKGATE_LAUNCHER_BIND", format!("0.0.0.0:{port}")),
            ("DESKGATE_ALLOW_PUBLIC_BIND", "true".into()),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN.into()),
            ("DESKGATE_GPUS", "fake:2".into()),
            ("DESKGATE_SESSION_IMAGE", sleeper_image().into()),
            ("DESKGATE_SESSION_MEMORY_MIB", "64".into()),
            ("DESKGATE_SESSION_CPUS", "0.5".into()),
            ("DESKGATE_SESSION_PIDS_LIMIT", "64".into()),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "1".into()),
        ];
        let (process, url) = spawn_launcher(port, &env).await;
        Self { process, url, port }
    }

    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    fn remote(&self) -> RemoteLauncher {
        RemoteLauncher::new(self.url.clone(), Secret::new(TOKEN)).unwrap()
    }
}

fn spec(session: SessionId, gpus: &[u32]) -> LaunchSpec {
    LaunchSpec {
        session,
        host: 4,
        gpu_indices: gpus.to_vec(),
    }
}

async fn container_state(docker: &Docker, session: SessionId) -> Option<String> {
    docker
        .inspect_container(&container_name(session), None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state?.status)
        .map(|s| s.to_string())
}

async fn network_exists(docker: &Docker, session: SessionId) -> bool {
    docker
        .inspect_network(&network_name(session), None::<InspectNetworkOptions>)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_launcher_launches_reports_exits_and_stops_over_http() {
    let _shared = RECOVERY.read().await;
    let docker = docker().await;
    let launcher = LauncherProcess::start().await;
    let remote = launcher.remote();
    let mut cleanup = Cleanup::default();
    let (tx, mut exits) = mpsc::unbounded_channel();
    remote.watch_exits(tx);

    let session = cleanup.session();
    let id = remote
        .launch(&spec(session, &[1]))
        .await
        .expect("launch over HTTP");
    let c = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    assert_eq!(c.state.as_ref().and_then(|s| s.running), Some(true));
    let config = c.config.expect("config");
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    let labels = config.labels.expect("labels");
    assert_eq!(labels["deskgate.gpus"], "1");
    assert_eq!(labels["deskgate.host"], "4");
    let host = c.host_config.expect("host config");
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges")),
        "no-new-privileges"
    );
    let networks: Vec<String> = c
        .network_settings
        .and_then(|n| n.networks)
        .expect("networks")
        .into_keys()
        .collect();
    assert_eq!(networks, vec![network_name(session)]);

    let listed = remote.running().await.expect("list over HTTP");
    assert!(
        listed
            .iter()
            .any(|r| r.session == session && r.container_id == id && r.host == 4),
        "{listed:?}"
    );

    // The launcher API listens on every host address; from inside the
    // session it is unreachable on all of them (nc exit 1 = no connection).
    let mut script = String::new();
    for ip in host_addresses() {
        script.push_str(&format!(
            "timeout 4 nc -w 2 {ip} {port} </dev/null >/dev/null 2>&1; echo {ip} rc=$?; ",
            port = launcher.port
        ));
    }
    script.push_str("echo done");
    // Control: from the default bridge the same probe does reach it, so the
    // refusals below mean isolation, not a broken probe.
    let gateway = network_gateway("bridge").expect("the default bridge has an IPv4 subnet");
    let control = docker_cli(&[
        "run",
        "--rm",
        "--network",
        "bridge",
        "--user",
        "1000:1000",
        &service_env("DESKGATE_TEST_IMAGE"),
        "sh",
        "-c",
        &format!(
            "timeout 4 nc -w 2 {gateway} {} </dev/null; echo rc=$?",
            launcher.port
        ),
    ]);
    assert!(control.ends_with("rc=0"), "control probe failed: {control}");
    let out = docker_cli(&["exec", &id, "sh", "-c", &script]);
    eprintln!("probes of the launcher API from inside:\n{out}");
    assert!(out.ends_with("done"), "{out}");
    for line in out.lines().filter(|l| l.contains(" rc=")) {
        assert!(
            line.ends_with(" rc=1"),
            "session reached the launcher: {line}"
        );
    }

    // Killed from outside: the exit arrives over the events socket.
    let killed_at = Instant::now();
    docker_cli(&["kill", &container_name(session)]);
    let exit = next_exit(&mut exits, session, Duration::from_secs(5)).await;
    eprintln!("kill reported after {:?}: {exit:?}", killed_at.elapsed());
    assert_eq!(exit.code, 137);
    assert!(killed_at.elapsed() < Duration::from_secs(2));

    // Stop over HTTP: container and network gone, and no exit reported.
    let stopped = cleanup.session();
    remote
        .launch(&spec(stopped, &[0]))
        .await
        .expect("second launch");
    remote.stop(stopped).await.expect("stop over HTTP");
    assert_eq!(container_state(&docker, stopped).await, None);
    assert!(!network_exists(&docker, stopped).await);
    remote.stop(stopped).await.expect("stopping again is fine");
    remote.stop(session).await.expect("stop the killed one");
    assert_eq!(container_state(&docker, session).await, None);
    assert!(
        tokio::time::timeout(
            Duration::from_millis(1500),
            next_exit(&mut exits, stopped, Duration::from_secs(2))
        )
        .await
        .is_err(),
        "a stop was reported as an exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_get_401_and_privileged_specs_403() {
    let _shared = RECOVERY.read().await;
    let docker = docker().await;
    let launcher = LauncherProcess::start().await;
    let client = reqwest::Client::new();
    let session = SessionId::new();
    let sessions = launcher.url.join("v1/sessions").unwrap();
    let plain = json!({"session": session.0, "host": 0, "gpu_indices": [0]});

    for auth in [None, Some("Bearer wrong-token"), Some(TOKEN)] {
        let mut request = client.post(sessions.clone()).json(&plain);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    let wrong = RemoteLauncher::new(launcher.url.clone(), Secret::new("not-the-token")).unwrap();
    let err = wrong.running().await.expect_err("wrong token refused");
    assert!(err.0.contains("401"), "{err}");
    assert!(!err.0.contains("not-the-token"), "{err}");

    // The events socket refuses the handshake without the token.
    let mut ws = launcher.url.join("v1/events").unwrap();
    ws.set_scheme("ws").unwrap();
    match tokio_tungstenite::connect_async(ws.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("events socket without a token: {other:?}"),
    }

    for (field, value) in [
        ("privileged", json!(true)),
        ("cap_add", json!(["SYS_ADMIN"])),
        (
            "binds",
            json!(["/var/run/docker.sock:/var/run/docker.sock"]),
        ),
        ("network_mode", json!("host")),
    ] {
        let mut body = plain.clone();
        body[field] = value;
        let response = client
            .post(sessions.clone())
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{field}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["type"], "urn:deskgate:problem:privilege-refused");
        assert!(problem["detail"].as_str().unwrap().contains(field));
    }
    assert_eq!(container_state(&docker, session).await, None);
    assert!(!network_exists(&docker, session).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_killed_with_sigkill_adopts_running_containers_and_removes_orphans() {
    let _alone = RECOVERY.write().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::default();
    let port = free_port();
    let first = LauncherProcess::start_on(port).await;
    let remote = first.remote();

    let survivor = cleanup.session();
    let survivor_id = remote.launch(&spec(survivor, &[0])).await.expect("launch");
    let dies_meanwhile = cleanup.session();
    remote
        .launch(&spec(dies_meanwhile, &[1]))
        .await
        .expect("launch");
    // A launch cut short after create (what a crash mid-launch leaves) and a
    // network whose container never came.
    let mut settings = LauncherSettings::new(sleeper_image());
    settings.gpu_runtime = false;
    let local = DockerLauncher::new(docker.clone(), settings).unwrap();
    let half_launched = cleanup.session();
    local
        .create(&spec(half_launched, &[]))
        .await
        .expect("create");
    let stray = cleanup.session();
    docker_cli(&[
        "network",
        "create",
        "--internal",
        "--label",
        &format!("deskgate.session={stray}"),
        &network_name(stray),
    ]);

    first.process.kill_hard();
    // While nobody watches, one session's container dies.
    docker_cli(&["kill", &container_name(dies_meanwhile)]);
    let since_kill = Instant::now();

    let second = LauncherProcess::start_on(port).await;
    let remote = second.remote();
    let (tx, mut exits) = mpsc::unbounded_channel();
    remote.watch_exits(tx);

    let running: HashSet<SessionId> = remote
        .running()
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.session)
        .collect();
    assert!(running.contains(&survivor), "survivor adopted: {running:?}");
    for gone in [dies_meanwhile, half_launched] {
        assert!(!running.contains(&gone));
        assert_eq!(container_state(&docker, gone).await, None, "{gone} removed");
        assert!(
            !network_exists(&docker, gone).await,
            "{gone}'s network removed"
        );
    }
    assert!(
        !network_exists(&docker, stray).await,
        "stray network removed"
    );
    let adopted = docker
        .inspect_container(&container_name(survivor), None::<InspectContainerOptions>)
        .await
        .expect("survivor still there");
    assert_eq!(adopted.id.as_deref(), Some(survivor_id.as_str()));
    assert_eq!(adopted.state.and_then(|s| s.running), Some(true));

    // The exit that happened while the launcher was down is reported.
    let exit = next_exit(&mut exits, dies_meanwhile, Duration::from_secs(5)).await;
    assert_eq!(exit.code, 137);
    eprintln!(
        "missed exit reported {:?} after the kill: {exit:?}",
        since_kill.elapsed()
    );

    remote
        .stop(survivor)
        .await
        .expect("stop the adopted session");
    assert_eq!(container_state(&docker, survivor).await, None);
    assert!(!network_exists(&docker, survivor).await);
    let output = second.process.output();
    assert!(output.contains("session containers recovered"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deskgate_healthcheck_exits_0_for_a_running_launcher_and_1_once_it_is_gone() {
    let _shared = RECOVERY.read().await;
    let _docker = docker().await;
    let launcher = LauncherProcess::start().await;
    let bind = format!("0.0.0.0:{}", launcher.port);
    let env = [
        ("DESKGATE_LAUNCHER_BIND", bind.as_str()),
        ("DESKGATE_ALLOW_PUBLIC_BIND", "true"),
        ("DESKGATE_LAUNCHER_TOKEN", TOKEN),
    ];
    let asked = format!("http://127.0.0.1:{}/healthz", launcher.port);
    let healthcheck = || run_deskgate(&["healthcheck", "--for", "launcher"], &env);
    let (status, output) = healthcheck();
    assert!(status.success(), "{output}");
    assert!(
        output.contains(&asked) && output.contains("200"),
        "{output}"
    );

    launcher.process.kill_hard();
    let (status, output) = healthcheck();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(&asked) && output.contains("did not answer"),
        "{output}"
    );
}
