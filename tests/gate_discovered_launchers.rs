//! A gate that finds its GPU hosts by DNS (`DESKGATE_LAUNCHER_DISCOVERY`):
//! real `deskgate launcher` processes, each in a network namespace the test
//! creates, on the real Docker Engine; a real `deskgate serve` whose
//! resolver answers the discovery name with both namespaces' addresses (a
//! hosts file mounted over `/etc/hosts` in a mount namespace of the gate's
//! own: nothing of the machine's resolver changes).
//!
//! One story, in order, as an operator meets it:
//! - the gate starts with one host answering (`gpu-a`, 1 GPU); a second
//!   claim waits; `gpu-b` (3 GPUs) starts later and the waiting claim runs
//!   there, without a gate restart; `GET /admin/hosts` lists both by name;
//! - `medium` waits while two GPUs are free but on different hosts, and
//!   runs once one host has two;
//! - `gpu-b`'s launcher is killed: the host turns unreachable, its session
//!   keeps running, and a claim waits rather than go to its free GPU;
//!   restarted, it adopts its session and the waiting claim runs there;
//! - draining `gpu-b` on the operator page (Chromium, `fleet_admin.js`)
//!   stops new leases there; undraining there brings them back;
//! - the gate is killed while `gpu-a`'s launcher is down: recovery waits
//!   for it (sessions stay closed) rather than end what it cannot see, the
//!   host routes still answer from PostgreSQL, a host that answers cannot be
//!   declared gone, and declaring `gpu-a` gone lets the gate start: its
//!   session ends, `gpu-b`'s are adopted.

mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api::{ONE_GPU_HOUR_WEI, Stage, session_path};
use support::browser::{PageDriver, shots_dir};
use support::netns::NetNs;
use support::{
    Deskgate, STRONG_SECRET, docker_cli, free_port, service_env, sleeper_image, spawn_launcher_in,
};

const TOKEN: &str = "5e2b8d1f4a7c0e3b6d9f2a5c8e1b4d7f0a3c6e9b2d5f8a1c4e7b0d3f6a9c2e5b";
/// The discovery name the gate resolves.
const NAME: &str = "launchers.deskgate.test";
/// Seconds within which a change on a host shows at the gate: two 5 s
/// discovery rounds and slack.
const DISCOVERY_WITHIN: Duration = Duration::from_secs(25);

/// One GPU host: a namespace and the launcher in it.
struct Host {
    process: Option<Deskgate>,
    addr: SocketAddr,
    env: Vec<(&'static str, String)>,
    /// Dropped last: the namespace outlives the process.
    netns: NetNs,
}

impl Host {
    /// A namespace with a launcher named `name` on `port` offering `gpus`
    /// fake GPUs. Launchers of this test share the host's Docker daemon, so
    /// each is scoped to the host number the gate will give it (the order
    /// it meets them in, on a fresh database).
    fn new(name: &str, number: u16, gpus: u32, port: u16) -> Self {
        let netns = NetNs::create();
        let addr = SocketAddr::new(netns.ns_ip.into(), port);
        let env = vec![
            ("DESKGATE_LAUNCHER_BIND", addr.to_string()),
            ("DESKGATE_ALLOW_PUBLIC_BIND", "true".into()),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN.into()),
            ("DESKGATE_LAUNCHER_NAME", name.into()),
            ("DESKGATE_LAUNCHER_HOST", number.to_string()),
            ("DESKGATE_GPUS", format!("fake:{gpus}")),
            ("DESKGATE_SESSION_IMAGE", sleeper_image().into()),
            ("DESKGATE_SESSION_MEMORY_MIB", "64".into()),
            ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0".into()),
            ("DOCKER_HOST", service_env("DOCKER_HOST")),
        ];
        Self {
            process: None,
            addr,
            env,
            netns,
        }
    }

    async fn start(&mut self) {
        assert!(self.process.is_none(), "the launcher runs");
        let (process, _) = spawn_launcher_in(&self.netns, self.addr, &self.env).await;
        self.process = Some(process);
    }

    fn kill_hard(&mut self) {
        self.process.take().expect("the launcher runs").kill_hard();
    }

    fn ip(&self) -> Ipv4Addr {
        self.netns.ns_ip
    }
}

/// `unshare` into a mount namespace where `/etc/hosts` answers [`NAME`] with
/// `ips` (and `/etc/host.conf` asks for every address), then exec the gate.
fn resolver_wrapper(dir: &std::path::Path, ips: &[Ipv4Addr]) -> Vec<String> {
    let hosts = dir.join("hosts");
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} {NAME}\n"));
    }
    std::fs::write(&hosts, text).unwrap();
    let host_conf = dir.join("host.conf");
    std::fs::write(&host_conf, "multi on\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/host.conf && exec \"$@\"",
        hosts.display(),
        host_conf.display()
    );
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]
    .map(String::from)
    .to_vec()
}

async fn wait_until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An admin call.
async fn admin(
    stage: &Stage,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    stage
        .gate
        .call(method, path, Some(STRONG_SECRET), body)
        .await
}

async fn hosts(stage: &Stage) -> Value {
    let (status, body) = stage
        .gate
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/hosts",
            Some(STRONG_SECRET),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn host_named<'a>(hosts: &'a Value, name: &str) -> Option<&'a Value> {
    hosts["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == name)
}

async fn host_state(stage: &Stage, name: &str) -> String {
    host_named(&hosts(stage).await, name)
        .map(|h| h["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// A claim of `profile` as `token`, and the host it runs on once running.
async fn running_host(stage: &Stage, token: &str, claimed: &Value) -> u64 {
    let running = stage
        .gate
        .wait_for(&session_path(claimed), token, DISCOVERY_WITHIN, |s| {
            s["state"] == "running"
        })
        .await;
    running["host"]
        .as_u64()
        .expect("a running session has a host")
}

async fn state_of(stage: &Stage, token: &str, claimed: &Value) -> Value {
    let (status, body) = stage.gate.get(&session_path(claimed), token).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Asserts the claim is still queued `for_at_least` from now.
async fn stays_queued(stage: &Stage, token: &str, claimed: &Value, for_at_least: Duration) {
    let until = Instant::now() + for_at_least;
    while Instant::now() < until {
        let state = state_of(stage, token, claimed).await;
        assert_eq!(state["state"], "queued", "{state}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The id of the container that runs `claimed`, from the engine.
fn container_id(claimed: &Value) -> String {
    let id = claimed["id"].as_str().expect("a session id");
    docker_cli(&[
        "inspect",
        "--format",
        "{{.Id}}",
        &format!("deskgate-session-{id}"),
    ])
}

async fn stop(stage: &Stage, token: &str, claimed: &Value) {
    let (status, body) = stage.gate.delete(&session_path(claimed), token).await;
    assert!(status == 200 || status == 202, "{status} {body}");
    stage
        .gate
        .wait_for(
            &session_path(claimed),
            token,
            Duration::from_secs(30),
            |s| s["state"] == "ended",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gate_follows_hosts_that_join_vanish_come_back_drain_and_are_declared_gone() {
    let started = Instant::now();
    let port = free_port();
    let mut a = Host::new("gpu-a", 0, 1, port);
    let mut b = Host::new("gpu-b", 1, 3, port);
    let dir = tempfile::tempdir().unwrap();
    let discovery = format!("dns:{NAME}:{port}");
    a.start().await;
    let stage = Stage::start_wrapped(
        "discovered_launchers",
        &[
            ("DESKGATE_LAUNCHER_DISCOVERY", &discovery),
            ("DESKGATE_LAUNCHER_TOKEN", TOKEN),
            ("DESKGATE_ADMIN_TOKEN", STRONG_SECRET),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "600"),
        ],
        resolver_wrapper(dir.path(), &[a.ip(), b.ip()]),
    )
    .await;
    let mut stage = stage;
    let output = stage.gate.output();
    assert!(
        output.contains("scheduling across discovered launchers"),
        "{output}"
    );

    // One host answers: it is host 0, by name.
    let listed = hosts(&stage).await;
    assert_eq!(listed["discovery"], true, "{listed}");
    let gpu_a = host_named(&listed, "gpu-a").expect("gpu-a is listed");
    assert_eq!(gpu_a["number"], 0, "{listed}");
    assert_eq!(gpu_a["state"], "up", "{listed}");
    assert_eq!(gpu_a["gpus"].as_array().unwrap().len(), 1, "{listed}");
    assert!(host_named(&listed, "gpu-b").is_none(), "{listed}");

    let mut wallets = Vec::new();
    for _ in 0..6 {
        wallets.push(stage.funded_wallet(ONE_GPU_HOUR_WEI, 3600).await);
    }
    let first = stage.claim(&wallets[0], "small").await;
    assert_eq!(running_host(&stage, &wallets[0], &first).await, 0);
    let second = stage.claim(&wallets[1], "small").await;
    stays_queued(&stage, &wallets[1], &second, Duration::from_secs(6)).await;

    // gpu-b starts: it joins as host 1 and the waiting claim runs there.
    b.start().await;
    assert_eq!(running_host(&stage, &wallets[1], &second).await, 1);
    let listed = hosts(&stage).await;
    let gpu_b = host_named(&listed, "gpu-b").expect("gpu-b is listed");
    assert_eq!(gpu_b["number"], 1, "{listed}");
    assert_eq!(gpu_b["state"], "up", "{listed}");
    assert_eq!(gpu_b["sessions"], 1, "{listed}");
    assert!(gpu_b["url"].as_str().unwrap().contains(&b.ip().to_string()));
    eprintln!(
        "gpu-b joined and ran a session after {:?}",
        started.elapsed()
    );

    // medium waits while host 0 has 1 free and host 1 has 2 free of 3 …
    let third = stage.claim(&wallets[2], "small").await;
    assert_eq!(running_host(&stage, &wallets[2], &third).await, 1);
    stop(&stage, &wallets[0], &first).await;
    // … now 1 + 1 free: two in all, none with two.
    let medium = stage.claim(&wallets[3], "medium").await;
    stays_queued(&stage, &wallets[3], &medium, Duration::from_secs(6)).await;
    stop(&stage, &wallets[2], &third).await;
    assert_eq!(running_host(&stage, &wallets[3], &medium).await, 1);
    let medium_container = container_id(&medium);
    let medium_name = format!("deskgate-session-{}", medium["id"].as_str().unwrap());
    let labelled = docker_cli(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"deskgate.host\"}} {{index .Config.Labels \"deskgate.host.name\"}}",
        &medium_name,
    ]);
    assert_eq!(labelled.trim(), "1 gpu-b", "the container names its host");

    // gpu-b's launcher dies with one GPU free there: unreachable, its
    // session kept, no new leases.
    stop(&stage, &wallets[1], &second).await;
    b.kill_hard();
    let lost_at = Instant::now();
    wait_until("gpu-b unreachable", DISCOVERY_WITHIN, async || {
        host_state(&stage, "gpu-b").await == "unreachable"
    })
    .await;
    eprintln!(
        "gpu-b unreachable {:?} after its launcher died",
        lost_at.elapsed()
    );
    assert_eq!(
        state_of(&stage, &wallets[3], &medium).await["state"],
        "running"
    );
    // Host 0's GPU is free: the next claim goes there; the one after waits
    // although gpu-b has a GPU free.
    let fifth = stage.claim(&wallets[4], "small").await;
    assert_eq!(running_host(&stage, &wallets[4], &fifth).await, 0);
    let sixth = stage.claim(&wallets[5], "small").await;
    stays_queued(&stage, &wallets[5], &sixth, Duration::from_secs(6)).await;

    // Back: it adopts its sessions and takes the waiting claim.
    b.start().await;
    assert_eq!(running_host(&stage, &wallets[5], &sixth).await, 1);
    assert_eq!(host_state(&stage, "gpu-b").await, "up");
    let medium_now = state_of(&stage, &wallets[3], &medium).await;
    assert_eq!(medium_now["state"], "running", "{medium_now}");
    assert_eq!(
        container_id(&medium),
        medium_container,
        "the same container"
    );

    // Drain gpu-b from the operator page: a GPU freed there takes no new
    // lease until it is undrained there.
    let mut page = PageDriver::spawn_at(
        "fleet_admin.js",
        service_env("DESKGATE_CHROMIUM"),
        &shots_dir(),
        &[&stage.gate.base, &stage.anvil.url, STRONG_SECRET],
    );
    let mut again = None;
    let outcome: Result<(), String> = async {
        while let Some((name, _, _)) = page.next().await? {
            match name.as_str() {
                "listed" => {}
                "drained" => {
                    let listed = hosts(&stage).await;
                    let gpu_b = host_named(&listed, "gpu-b").unwrap();
                    if gpu_b["drained"] != true {
                        return Err(format!("the page drained nothing: {listed}"));
                    }
                    stop(&stage, &wallets[5], &sixth).await;
                    let claimed = stage.claim(&wallets[1], "small").await;
                    stays_queued(&stage, &wallets[1], &claimed, Duration::from_secs(6)).await;
                    again = Some(claimed);
                    page.reply("go").await;
                }
                "undrained" => {}
                other => return Err(format!("unexpected stage {other}")),
            }
        }
        Ok(())
    }
    .await;
    page.finish_with(
        outcome,
        || stage.gate.output(),
        &["listed", "drained", "undrained"],
    )
    .await;
    let again = again.expect("the drained stage ran");
    assert_eq!(running_host(&stage, &wallets[1], &again).await, 1);
    let (status, _) = admin(
        &stage,
        reqwest::Method::POST,
        "/api/v1/admin/hosts/no-such-host/drain",
        Some(json!({ "drain": true })),
    )
    .await;
    assert_eq!(status, 404);

    // The gate dies while gpu-a's launcher is down too: recovery waits.
    a.kill_hard();
    stage.gate.kill_hard();
    stage.gate.restart_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = stage.gate.get(&session_path(&fifth), &wallets[4]).await;
    assert_eq!(status, 503, "sessions must wait for gpu-a: {body}");
    let listed = hosts(&stage).await;
    assert_eq!(
        host_named(&listed, "gpu-a").unwrap()["state"],
        "missing",
        "{listed}"
    );
    assert!(
        stage
            .gate
            .output()
            .contains("host 0 (gpu-a) has not answered"),
        "{}",
        stage.gate.output()
    );

    // gpu-b answers: the gate will not call it gone. gpu-a is declared gone.
    wait_until(
        "gpu-b seen by the restarted gate",
        DISCOVERY_WITHIN,
        async || host_state(&stage, "gpu-b").await == "up",
    )
    .await;
    let (status, body) = admin(
        &stage,
        reqwest::Method::DELETE,
        "/api/v1/admin/hosts/gpu-b",
        None,
    )
    .await;
    assert_eq!(
        status, 409,
        "gpu-b must not be declared gone while it answers: {body}"
    );
    let (status, body) = admin(
        &stage,
        reqwest::Method::DELETE,
        "/api/v1/admin/hosts/gpu-a",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    if let Err(last) = stage.gate.sessions_open(Duration::from_secs(45)).await {
        panic!(
            "sessions did not open once gpu-a was gone: {last}\n{}",
            stage.gate.output()
        );
    }
    let ended = state_of(&stage, &wallets[4], &fifth).await;
    assert_eq!(ended["state"], "ended", "{ended}");
    for (token, claimed) in [(&wallets[3], &medium), (&wallets[1], &again)] {
        let adopted = state_of(&stage, token, claimed).await;
        assert_eq!(adopted["state"], "running", "{adopted}");
        assert_eq!(adopted["host"], 1, "{adopted}");
    }
    let (status, sessions) =
        admin(&stage, reqwest::Method::GET, "/api/v1/admin/sessions", None).await;
    assert_eq!(status, 200, "{sessions}");
    let listed_medium = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == medium["id"])
        .expect("medium is listed");
    assert_eq!(listed_medium["host_name"], "gpu-b", "{listed_medium}");
    let listed = hosts(&stage).await;
    assert_eq!(
        host_named(&listed, "gpu-a").unwrap()["state"],
        "gone",
        "{listed}"
    );
    let numbers: HashSet<u64> = listed["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, HashSet::from([0, 1]), "{listed}");
    eprintln!("done after {:?}", started.elapsed());
    drop(b);
    stage.finish().await;
}
