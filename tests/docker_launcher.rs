//! `DockerLauncher` against the real Docker Engine (`scripts/docker.sh up`),
//! with the busybox test image from `DESKGATE_TEST_IMAGE`. Every test uses
//! fresh session ids and a guard that removes its containers and networks
//! even when it fails.

mod support;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};
use deskgate::launcher::docker::{
    DockerLauncher, LABEL_GPUS, LABEL_HOST, LABEL_SESSION, LauncherSettings, container_name,
    network_name,
};
use deskgate_actors::ports::{LaunchSpec, Launcher, SessionId};
use futures::StreamExt;
use tokio::sync::mpsc;

use support::{
    Cleanup, docker, gateway_from_ipam, host_addresses, network_gateway, next_exit, service_env,
};

/// `reconcile` removes every deskgate container it does not know, so the test
/// that calls it runs alone (write lock); the others share (read lock).
static RECONCILE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn settings(command: &[&str]) -> LauncherSettings {
    let mut settings = LauncherSettings::new(service_env("DESKGATE_TEST_IMAGE"));
    settings.command = Some(command.iter().map(|s| s.to_string()).collect());
    settings.memory_bytes = 64 << 20;
    settings.nano_cpus = 500_000_000;
    settings.pids_limit = 64;
    settings.tmp_size_bytes = 8 << 20;
    settings.home_size_bytes = 16 << 20;
    settings.stop_grace = Duration::from_secs(1);
    settings.gpu_runtime = false;
    settings.extra_env = vec![("LANG".into(), "C.UTF-8".into())];
    settings
}

fn spec(session: SessionId, gpus: &[u32]) -> LaunchSpec {
    LaunchSpec {
        session,
        host: 0,
        gpu_indices: gpus.to_vec(),
    }
}

async fn container_exists(docker: &Docker, session: SessionId) -> bool {
    docker
        .inspect_container(&container_name(session), None::<InspectContainerOptions>)
        .await
        .is_ok()
}

async fn network_exists(docker: &Docker, session: SessionId) -> bool {
    docker
        .inspect_network(&network_name(session), None::<InspectNetworkOptions>)
        .await
        .is_ok()
}

async fn is_running(docker: &Docker, session: SessionId) -> bool {
    docker
        .inspect_container(&container_name(session), None::<InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state?.running)
        .unwrap_or(false)
}

/// Runs `script` with `sh -c` in the container; returns (exit code, output).
async fn exec(docker: &Docker, container: &str, script: &str) -> (i64, String) {
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec!["sh", "-c", script]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    let mut text = String::new();
    match docker
        .start_exec(&created.id, None)
        .await
        .expect("start exec")
    {
        StartExecResults::Attached { mut output, .. } => {
            while let Some(chunk) = output.next().await {
                text.push_str(&chunk.expect("exec output").to_string());
            }
        }
        StartExecResults::Detached => panic!("exec detached"),
    }
    let inspect = docker
        .inspect_exec(&created.id)
        .await
        .expect("inspect exec");
    assert_eq!(inspect.running, Some(false), "exec still running");
    (inspect.exit_code.expect("exec exit code"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_container_is_hardened_and_alone_on_its_network() {
    let _shared = RECONCILE.read().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();
    let session = cleanup.session();
    let launcher = DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap();

    let started = Instant::now();
    let id = launcher
        .launch(&spec(session, &[0, 2]))
        .await
        .expect("launch");
    eprintln!("launch took {:?}", started.elapsed());

    let c = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    assert_eq!(
        c.name.as_deref(),
        Some(&*format!("/{}", container_name(session)))
    );
    assert_eq!(c.state.as_ref().and_then(|s| s.running), Some(true));
    let config = c.config.expect("config");
    let user = config.user.unwrap_or_default();
    assert_eq!(user, "1000:1000");
    let labels = config.labels.expect("labels");
    assert_eq!(labels[LABEL_SESSION], session.to_string());
    assert_eq!(labels[LABEL_GPUS], "0,2");
    assert_eq!(labels[LABEL_HOST], "0");
    assert!(
        !labels.values().any(|v| v.len() == 64),
        "no secret in labels"
    );

    // Environment: only ours (plus the PATH Docker adds).
    let env = config.env.expect("env");
    let names: HashSet<&str> = env.iter().map(|e| e.split('=').next().unwrap()).collect();
    let allowed: HashSet<&str> = [
        "DESKGATE_SESSION_ID",
        "DESKGATE_VNC_PASSWORD",
        "DESKGATE_GPUS",
        "LANG",
        "PATH",
    ]
    .into();
    assert!(names.is_subset(&allowed), "unexpected env names: {names:?}");
    assert!(env.contains(&format!("DESKGATE_SESSION_ID={session}")));
    assert!(env.contains(&"DESKGATE_GPUS=0,2".to_string()));
    let secret = launcher.vnc_secret(session).expect("VNC secret kept");
    let secret = secret.expose();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(env.contains(&format!("DESKGATE_VNC_PASSWORD={secret}")));

    let host = c.host_config.expect("host config");
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o == "no-new-privileges:true" || o == "no-new-privileges"),
        "no-new-privileges"
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.pids_limit, Some(64));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert!(host.binds.unwrap_or_default().is_empty(), "no binds");
    assert!(host.mounts.unwrap_or_default().is_empty(), "no mounts");
    assert!(c.mounts.unwrap_or_default().is_empty(), "no mount points");
    assert!(
        host.device_requests.unwrap_or_default().is_empty(),
        "no GPU requests without the runtime"
    );
    assert_eq!(host.network_mode.as_deref(), Some(&*network_name(session)));
    let tmpfs = host.tmpfs.expect("tmpfs");
    for path in ["/tmp", "/home"] {
        let opts = &tmpfs[path];
        assert!(
            opts.contains("noexec") && opts.contains("nosuid") && opts.contains("size="),
            "{path}: {opts}"
        );
    }

    let networks = c
        .network_settings
        .and_then(|n| n.networks)
        .expect("networks");
    let names: Vec<&String> = networks.keys().collect();
    assert_eq!(
        names,
        vec![&network_name(session)],
        "exactly its own network"
    );
    let net = docker
        .inspect_network(&network_name(session), None::<InspectNetworkOptions>)
        .await
        .expect("network");
    assert_eq!(net.internal, Some(true));

    // Inside: not root, root filesystem read-only, tmpfs not executable.
    let (code, out) = exec(
        &docker,
        &id,
        "id -u; touch /probe 2>/dev/null && echo rootfs-writable; \
         cp /bin/busybox /tmp/bb && /tmp/bb true 2>/dev/null && echo tmp-exec; echo done",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("1000\n"), "{out}");
    assert!(!out.contains("rootfs-writable"), "{out}");
    assert!(!out.contains("tmp-exec"), "{out}");
    assert!(out.contains("done"), "{out}");

    launcher.stop(session).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_device_requests_name_the_leased_ids_when_the_runtime_is_on() {
    let _shared = RECONCILE.read().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();
    let mut with_gpus = settings(&["sleep", "3600"]);
    with_gpus.gpu_runtime = true;
    let launcher = DockerLauncher::new(docker.clone(), with_gpus).unwrap();

    // Create only: this host has no NVIDIA runtime, so it could not start.
    let session = cleanup.session();
    let id = launcher
        .create(&spec(session, &[1, 3]))
        .await
        .expect("create");
    let host = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .host_config
        .expect("host config");
    let requests = host.device_requests.expect("device requests");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
    assert_eq!(
        requests[0].device_ids,
        Some(vec!["1".to_string(), "3".to_string()])
    );
    // One AND-list: the devices plus every driver capability a desktop uses.
    assert_eq!(
        requests[0].capabilities,
        Some(vec![
            deskgate::launcher::docker::GPU_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect()
        ])
    );
    assert!(requests[0].count.unwrap_or(0) == 0, "never 'all GPUs'");
    launcher.stop(session).await.expect("stop");
    assert!(!container_exists(&docker, session).await);

    // A launch that Docker refuses fails clearly and leaves nothing behind.
    let session = cleanup.session();
    let err = launcher
        .launch(&spec(session, &[0]))
        .await
        .expect_err("no NVIDIA runtime here");
    eprintln!("expected failure: {err}");
    assert!(err.0.contains("starting container"), "{err}");
    assert!(!err.0.contains("DESKGATE_VNC_PASSWORD"), "{err}");
    assert!(!container_exists(&docker, session).await);
    assert!(!network_exists(&docker, session).await);
    assert!(launcher.vnc_secret(session).is_none());
}

/// What a freshly started Docker Engine 20.10 reports for the default bridge
/// (no gateway), what later engines report, and an IPv6-only network.
#[test]
fn the_gateway_is_the_reported_one_or_else_the_subnets_first_host() {
    let gateway = |json: &str| gateway_from_ipam(json).expect("IPAM JSON");
    assert_eq!(
        gateway(r#"[{"Subnet":"172.17.0.0/16"}]"#).as_deref(),
        Some("172.17.0.1")
    );
    assert_eq!(
        gateway(r#"[{"Subnet":"172.17.0.0/16","Gateway":"172.17.0.254"}]"#).as_deref(),
        Some("172.17.0.254")
    );
    assert_eq!(
        gateway(r#"[{"Subnet":"fd00::/64","Gateway":"fd00::1"},{"Subnet":"10.9.0.0/24"}]"#)
            .as_deref(),
        Some("10.9.0.1")
    );
    assert_eq!(gateway(r#"[{"Subnet":"fd00::/64"}]"#), None);
    assert_eq!(gateway("null"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cannot_reach_the_database_or_host_services() {
    let _shared = RECONCILE.read().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();
    let session = cleanup.session();
    let launcher = DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap();
    let id = launcher.launch(&spec(session, &[])).await.expect("launch");

    // Stand-in for the launcher API: a listener on every host address.
    let api = TcpListener::bind("0.0.0.0:0").expect("listen");
    let api_port = api.local_addr().unwrap().port();
    // Accept and close at once, so that a probe that connects ends too.
    std::thread::spawn(move || {
        for stream in api.incoming() {
            drop(stream);
        }
    });
    let db = url::Url::parse(&service_env("DESKGATE_DATABASE_URL")).expect("database URL");
    let db_host = db.host_str().expect("db host").to_string();
    let db_port = db.port().unwrap_or(5432);

    let bridge_gateway = network_gateway("bridge");
    let own_gateway = network_gateway(&network_name(session));
    let mut addresses: Vec<String> = vec![db_host.clone()];
    addresses.extend(bridge_gateway.clone());
    addresses.extend(own_gateway.clone());
    addresses.extend(host_addresses());
    addresses.sort();
    addresses.dedup();
    eprintln!(
        "probing {addresses:?} on ports {db_port} (PostgreSQL) and {api_port} (host listener)"
    );
    let bridge_gateway = bridge_gateway.expect("the default bridge has an IPv4 subnet");
    let own_gateway = own_gateway.expect("the session network has an IPv4 subnet");
    assert!(
        addresses.contains(&bridge_gateway) && addresses.contains(&own_gateway),
        "both gateways are probed: {addresses:?}"
    );

    // Control: the same probe from a container on the default bridge does
    // reach the host listener, so a refusal below means isolation, not a
    // broken probe.
    let control = Command::new("docker")
        .args(["run", "--rm", "--network", "bridge", "--user", "1000:1000"])
        .arg(service_env("DESKGATE_TEST_IMAGE"))
        .args([
            "sh",
            "-c",
            &format!("timeout 4 nc -w 2 {bridge_gateway} {api_port} </dev/null; echo rc=$?"),
        ])
        .output()
        .expect("docker run");
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    assert!(
        control.contains("rc=0"),
        "control probe from the default bridge failed: {control}"
    );

    let mut script = String::from(
        "nc -l -p 7777 </dev/null >/dev/null 2>&1 & sleep 1; \
         timeout 4 nc -w 2 127.0.0.1 7777 </dev/null >/dev/null 2>&1; echo self:7777 rc=$?; ",
    );
    for ip in &addresses {
        for port in [db_port, api_port] {
            script.push_str(&format!(
                "timeout 4 nc -w 2 {ip} {port} </dev/null >/dev/null 2>&1; echo {ip}:{port} rc=$?; "
            ));
        }
    }
    script.push_str("echo done");
    let started = Instant::now();
    let (code, out) = exec(&docker, &id, &script).await;
    eprintln!("probes took {:?}:\n{out}", started.elapsed());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done"), "{out}");
    // The probe works inside the container: it reaches its own listener
    // (0: connected and closed; 143: connected, then cut by `timeout`).
    assert!(
        out.contains("self:7777 rc=0") || out.contains("self:7777 rc=143"),
        "probe tool broken: {out}"
    );
    for ip in &addresses {
        for port in [db_port, api_port] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{ip}:{port} rc=")))
                .unwrap_or_else(|| panic!("probe of {ip}:{port} did not run: {out}"));
            // 1: nc could not connect. 0 or 143 would mean it connected.
            assert!(
                line.ends_with(" rc=1"),
                "session reached {ip}:{port}: {out}"
            );
        }
    }
    launcher.stop(session).await.expect("stop");
}

/// How long after Docker recorded the container's end the exit arrived.
async fn report_latency(docker: &Docker, session: SessionId) -> Duration {
    let now = chrono::Utc::now();
    let finished = docker
        .inspect_container(&container_name(session), None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .state
        .and_then(|s| s.finished_at)
        .expect("finished at");
    let finished = chrono::DateTime::parse_from_rfc3339(&finished).expect("timestamp");
    (now - finished.with_timezone(&chrono::Utc))
        .to_std()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_ooms_and_kills_are_reported_within_two_seconds() {
    let _shared = RECONCILE.read().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();

    // Exit code.
    let exiting =
        DockerLauncher::new(docker.clone(), settings(&["sh", "-c", "sleep 1; exit 3"])).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    exiting.watch_exits(tx);
    let session = cleanup.session();
    exiting.launch(&spec(session, &[])).await.expect("launch");
    let exit = next_exit(&mut rx, session, Duration::from_secs(5)).await;
    let latency = report_latency(&docker, session).await;
    eprintln!("exit 3 reported {latency:?} after the end");
    assert_eq!((exit.code, exit.oom), (3, false));
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    exiting.stop(session).await.expect("stop");

    // Out of memory.
    let mut oom_settings = settings(&["sh", "-c", "x=a; while true; do x=$x$x; done"]);
    oom_settings.memory_bytes = 16 << 20;
    let ooming = DockerLauncher::new(docker.clone(), oom_settings).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    ooming.watch_exits(tx);
    let session = cleanup.session();
    ooming.launch(&spec(session, &[])).await.expect("launch");
    let exit = next_exit(&mut rx, session, Duration::from_secs(20)).await;
    let latency = report_latency(&docker, session).await;
    eprintln!("OOM reported {latency:?} after the end: {exit:?}");
    assert!(exit.oom, "{exit:?}");
    assert_eq!(exit.code, 137);
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    ooming.stop(session).await.expect("stop");

    // Killed from outside.
    let sleeping = DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    sleeping.watch_exits(tx);
    let session = cleanup.session();
    sleeping.launch(&spec(session, &[])).await.expect("launch");
    let killed_at = Instant::now();
    docker
        .kill_container(
            &container_name(session),
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .expect("docker kill");
    let exit = next_exit(&mut rx, session, Duration::from_secs(2)).await;
    eprintln!("kill reported {:?} after docker kill", killed_at.elapsed());
    assert_eq!((exit.code, exit.oom), (137, false));
    sleeping.stop(session).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_launcher_adopts_known_sessions_and_removes_orphans() {
    let _alone = RECONCILE.write().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();
    let known = cleanup.session();
    let orphan = cleanup.session();

    let first = DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap();
    let known_id = first.launch(&spec(known, &[0])).await.expect("launch");
    first.launch(&spec(orphan, &[1])).await.expect("launch");
    let secret = first.vnc_secret(known).unwrap().expose().to_string();
    drop(first); // the gate died without stopping anything

    let second = DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap();
    let (adopted, removed) = second
        .reconcile(&HashSet::from([known]))
        .await
        .expect("reconcile");
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0].session, known);
    assert_eq!(adopted[0].container_id, known_id);
    assert_eq!(removed, vec![orphan]);
    assert!(
        is_running(&docker, known).await,
        "adopted session still runs"
    );
    assert!(network_exists(&docker, known).await);
    assert!(
        !container_exists(&docker, orphan).await,
        "orphan container removed"
    );
    assert!(
        !network_exists(&docker, orphan).await,
        "orphan network removed"
    );
    assert_eq!(
        second.vnc_secret(known).map(|s| s.expose().to_string()),
        Some(secret),
        "the adopted session's VNC secret is recovered"
    );
    let running = second.running().await.expect("running");
    assert!(
        running
            .iter()
            .any(|r| r.session == known && r.container_id == known_id)
    );
    assert!(!running.iter().any(|r| r.session == orphan));
    second.stop(known).await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_removes_container_and_network_and_is_idempotent() {
    let _shared = RECONCILE.read().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();
    let session = cleanup.session();
    let launcher = DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    launcher.watch_exits(tx);
    launcher.launch(&spec(session, &[])).await.expect("launch");
    assert!(
        launcher
            .running()
            .await
            .unwrap()
            .iter()
            .any(|r| r.session == session)
    );

    let started = Instant::now();
    launcher.stop(session).await.expect("stop");
    eprintln!("stop took {:?}", started.elapsed());
    assert!(
        !container_exists(&docker, session).await,
        "container removed"
    );
    assert!(!network_exists(&docker, session).await, "network removed");
    assert!(launcher.vnc_secret(session).is_none(), "secret forgotten");
    launcher.stop(session).await.expect("second stop succeeds");
    launcher
        .stop(SessionId::new())
        .await
        .expect("stopping an unknown session succeeds");

    // A stop the gate asked for is not reported as the container exiting.
    // The event stream carries every session container on this dockerd,
    // including other tests' running in parallel; only ours must stay quiet.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(exit)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        assert_ne!(exit.session, session, "stop reported as an exit: {exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_arrives_while_the_container_starts_leaves_nothing_behind() {
    // Found by the fault campaign: the gate gave up on a launch across a
    // partition and stopped the session; the stop reached the launcher
    // before the container existed, found nothing, and the launch then
    // created a container and a network that nobody would ever stop.
    let _shared = RECONCILE.read().await;
    let docker = docker().await;
    let mut cleanup = Cleanup::new();
    let launcher = std::sync::Arc::new(
        DockerLauncher::new(docker.clone(), settings(&["sleep", "3600"])).unwrap(),
    );
    for delay_ms in [0u64, 5, 20, 60, 150] {
        let session = cleanup.session();
        let launching = {
            let launcher = launcher.clone();
            tokio::spawn(async move { launcher.launch(&spec(session, &[])).await })
        };
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        launcher.stop(session).await.expect("stop");
        let launched = launching.await.unwrap();
        assert!(
            !container_exists(&docker, session).await,
            "a container outlived the stop (stop after {delay_ms} ms, launch gave {launched:?})"
        );
        assert!(
            !network_exists(&docker, session).await,
            "a network outlived the stop (stop after {delay_ms} ms)"
        );
    }
}
