//! The docker compose stack end to end, driven as a self-hoster and a browser
//! user meet it (issue 17's acceptance): `compose/init-env.sh --dev`, then
//! `docker-compose --profile dev up -d` from a clean state with the images
//! `scripts/compose-stack.sh build` made (`make test` runs it first), on the
//! real Docker Engine; everything the browser does goes through the gate's
//! published port only.
//!
//! - Every service comes up healthy and `/readyz` answers 200 (cold `up`
//!   time printed).
//! - Headless Chromium connects the test wallet, signs in, deposits on the
//!   stack's anvil, starts `small` and sees the XFCE desktop over WebRTC (the
//!   page's own choice; the video comes from the launcher through the stack's
//!   coturn, the only way it can) and then over noVNC: frames that are not
//!   blank (many colours, none dominant), the panel's window mapped on the
//!   desktop's display; a command typed into a terminal opened by XFCE's
//!   keyboard shortcut runs there. Screenshots are kept in
//!   `target/compose-stack-shots/`; claim → first frame is printed.
//! - Isolation, read from Docker and the kernel, never by probing addresses
//!   (a connection to an address outside the machine's own networks may
//!   leave the machine): the gate has no Docker socket and runs unprivileged;
//!   PostgreSQL publishes no port and sits only on internal networks the host
//!   has no address on; the desktop's only networks are its own, it has no
//!   route to PostgreSQL or the launcher, and connecting there fails at once.
//! - `docker-compose restart` with the desktop running: the session is
//!   adopted with its container, the ledger still balances and the session
//!   was billed exactly what the ledger debited; the wallet stops it.
//! - `docker-compose down` keeps the volume and leaves no container of the
//!   stack, no session container and no session network; `up` again brings
//!   back the same balances, ledger and session history.
//!
//! The stack is torn down (`down -v`) when the test ends, passing or not.
//! Needs root (Docker), `make services` and `scripts/compose-stack.sh build`.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use support::api::{DockerSessionsLock, GateClient};
use support::browser::PageDriver;
use support::{docker_cli, free_port, repo_root};

/// The compose project the test runs (not `compose`, a self-hoster's own).
const PROJECT: &str = "deskgate-acceptance";
/// anvil's first dev account: the browser's wallet, and the test's to stop the
/// session with.
const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// The services that run for good, and those of them with a healthcheck.
const RUNNING: [&str; 5] = ["gate", "launcher", "postgres", "turn", "anvil"];
const HEALTHCHECKED: [&str; 3] = ["gate", "launcher", "postgres"];
/// What the browser types into the desktop's terminal (a file it creates).
const TYPED_FILE: &str = "/tmp/typed-through-the-page";

/// The stack under test: its `.env`, published ports and settings.
struct Stack {
    _dir: tempfile::TempDir,
    env_file: PathBuf,
    /// Variables that override `.env` (the shell's win in compose).
    vars: Vec<(&'static str, String)>,
    /// `http://127.0.0.1:<port>`: the gate's published port.
    gate_url: String,
    /// The stack's anvil at its published port.
    anvil_url: String,
}

impl Stack {
    /// `.env` written by `compose/init-env.sh --dev` for ports of this test.
    fn configure() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let gate_port = free_port();
        let anvil_port = free_port();
        let gate_url = format!("http://127.0.0.1:{gate_port}");
        let anvil_url = format!("http://127.0.0.1:{anvil_port}");
        let env_file = dir.path().join(".env");
        let init = Command::new(repo_root().join("compose/init-env.sh"))
            .args(["--dev", "--public-url", &gate_url, "--file"])
            .arg(&env_file)
            .output()
            .expect("run compose/init-env.sh");
        assert!(init.status.success(), "init-env.sh: {}", text(&init));
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        let vars = vec![
            ("DESKGATE_PUBLISH", format!("127.0.0.1:{gate_port}")),
            ("DESKGATE_ANVIL_PORT", anvil_port.to_string()),
            ("DESKGATE_WALLET_RPC_URL", anvil_url.clone()),
            ("DESKGATE_TURN_PUBLISH_IP", "127.0.0.1".to_string()),
            (
                "DESKGATE_TLS_DIR",
                dir.path().join("tls").display().to_string(),
            ),
        ];
        Self {
            _dir: dir,
            env_file,
            vars,
            gate_url,
            anvil_url,
        }
    }

    /// A value of the stack's `.env`.
    fn setting(&self, key: &str) -> String {
        let env = std::fs::read_to_string(&self.env_file).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} is not in the stack's .env"))
            .to_string()
    }

    /// `docker-compose … ARGS` for this project; its output, whatever the outcome.
    fn try_compose(&self, args: &[&str]) -> Output {
        let dir = repo_root().join("compose");
        let mut command = Command::new("docker-compose");
        // Compose lets the shell's variables win over .env: the test
        // services' DESKGATE_* (make test exports them) are not the stack's.
        for (key, _) in std::env::vars() {
            if key.starts_with("DESKGATE_") || key.starts_with("POSTGRES_") {
                command.env_remove(key);
            }
        }
        command
            .arg("--project-name")
            .arg(PROJECT)
            .arg("--project-directory")
            .arg(&dir)
            .arg("-f")
            .arg(dir.join("compose.yaml"))
            .arg("--env-file")
            .arg(&self.env_file)
            .args(["--profile", "dev"])
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("docker-compose (scripts/compose-stack.sh build installs it)")
    }

    /// `docker-compose … ARGS`, failing the test (with the stack's logs) if it fails.
    fn compose(&self, args: &[&str]) {
        let out = self.try_compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}\n{}",
            text(&out),
            self.logs()
        );
    }

    /// The last lines each service logged, for failure reports.
    fn logs(&self) -> String {
        text(&self.try_compose(&["logs", "--no-color", "--tail", "60"]))
    }

    /// The container of `service` (running or not).
    fn container(&self, service: &str) -> String {
        let id = docker_cli(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// Every container of the project, running or not.
    fn containers(&self) -> Vec<String> {
        lines(&docker_cli(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
        ]))
    }

    /// Waits until the long-running services run (healthy where they have a
    /// healthcheck), the desktop image's check exited 0 and `/readyz` answers
    /// 200.
    async fn wait_ready(&self, within: Duration) {
        let started = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        loop {
            let mut waiting = Vec::new();
            for service in RUNNING {
                let state = docker_cli(&[
                    "inspect",
                    "--format",
                    "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                    &self.container(service),
                ]);
                let wanted = if HEALTHCHECKED.contains(&service) {
                    "running healthy"
                } else {
                    "running"
                };
                if state.trim() != wanted {
                    waiting.push(format!("{service}: {state}"));
                }
            }
            let check = docker_cli(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                &self.container("desktop-image"),
            ]);
            if check != "exited 0" {
                waiting.push(format!("desktop-image: {check}"));
            }
            if waiting.is_empty() {
                let ready = client.get(format!("{}/readyz", self.gate_url)).send().await;
                match ready {
                    Ok(r) if r.status() == 200 => return,
                    Ok(r) => waiting.push(format!("/readyz: {}", r.status())),
                    Err(e) => waiting.push(format!("/readyz: {e}")),
                }
            }
            assert!(
                started.elapsed() < within,
                "the stack was not ready within {within:?}: {waiting:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `psql -At` inside the PostgreSQL container (its local socket: the
    /// database publishes nothing, and the test reads it from the outside).
    fn sql(&self, query: &str) -> String {
        docker_cli(&support::psql_exec_args(&self.container("postgres"), query))
    }

    /// Balances, ledger, deposits and session history, as one comparable text.
    fn money_and_history(&self) -> String {
        self.sql(
            "SELECT concat_ws(' | ', \
               (SELECT string_agg(account || '=' || amount, ',' ORDER BY account) FROM balances), \
               (SELECT count(*) || ' txns, ' || coalesce(sum(abs(amount)), 0) || ' moved' FROM ledger_entries), \
               (SELECT count(*) || ' deposits' FROM deposits), \
               (SELECT string_agg(id || ':' || state || ':' || billed_credit || ':' || coalesce(end_reason->>'kind', '-'), ',' ORDER BY created_at) FROM sessions))",
        )
    }

    /// The ledger's own rules, checked in the database: every transaction sums
    /// to zero, every balance is the sum of its entries and not negative, and
    /// every session was billed exactly what the ledger debited for it.
    fn assert_ledger_holds(&self) {
        let broken = self.sql(support::LEDGER_BROKEN_SQL);
        assert_eq!(
            broken, "0 0 0",
            "unbalanced transactions, wrong balances, sessions billed other than the ledger says"
        );
    }

    /// Session containers and networks on this engine.
    fn session_leftovers(&self) -> Vec<String> {
        let mut left = lines(&docker_cli(&[
            "ps",
            "-a",
            "--filter",
            "label=deskgate.session",
            "--format",
            "container {{.Names}}",
        ]));
        left.extend(lines(&docker_cli(&[
            "network",
            "ls",
            "--filter",
            "label=deskgate.session",
            "--format",
            "network {{.Name}}",
        ])));
        left
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let out = self.try_compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        if !out.status.success() {
            eprintln!("cleanup: docker-compose down -v: {}", text(&out));
        }
        // Desktops a failed test left: the launcher that owned them is gone.
        for (list, remove) in [
            (&["ps", "-aq"][..], &["rm", "-f"][..]),
            (&["network", "ls", "-q"][..], &["network", "rm"][..]),
        ] {
            let ids = Command::new("docker")
                .args(list)
                .args(["--filter", "label=deskgate.session"])
                .output()
                .map(|o| lines(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_default();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(remove).args(&ids).output();
            }
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `docker exec` as the desktop's user with its display; the output, or the
/// error output of a command that failed.
fn on_desktop(container: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(["exec", "-e", "DISPLAY=:0", container])
        .args(args)
        .output()
        .expect("docker exec");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(text(&out))
    }
}

/// The image sizes the stack runs, as "name: N MB" lines.
fn image_sizes() -> Vec<String> {
    let out = Command::new(repo_root().join("scripts/compose-stack.sh"))
        .arg("images")
        .output()
        .expect("scripts/compose-stack.sh images");
    lines(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|image| {
            let size = Command::new("docker")
                .args(["image", "inspect", "--format", "{{.Size}}", &image])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            let size = size.unwrap_or_else(|| {
                panic!(
                    "the image {image} is missing: run `scripts/compose-stack.sh build` \
                     (make test runs it before the tests)"
                )
            });
            let mb = size.parse::<u64>().unwrap_or(0) / 1_000_000;
            format!("{image}: {mb} MB")
        })
        .collect()
}

/// The networks a container is on: name → (IPv4 address, network id).
fn networks_of(container: &str) -> Vec<(String, String, String)> {
    let json = docker_cli(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Networks}}",
        container,
    ]);
    let networks: serde_json::Map<String, Value> = serde_json::from_str(&json).unwrap();
    networks
        .into_iter()
        .map(|(name, n)| {
            (
                name,
                n["IPAddress"].as_str().unwrap_or_default().to_string(),
                n["NetworkID"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Whether Docker made network `id` internal (no way out, nothing forwarded in).
fn network_is_internal(id: &str) -> bool {
    docker_cli(&["network", "inspect", "--format", "{{.Internal}}", id]) == "true"
}

/// The IPv4 routes of the desktop's network namespace: (destination, mask),
/// from `/proc/net/route` (hexadecimal, little-endian).
fn routes_of(container: &str) -> Vec<(u32, u32)> {
    let table = on_desktop(container, &["cat", "/proc/net/route"]).expect("read the routes");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let parse = |f: &str| u32::from_str_radix(f, 16).ok().map(u32::from_be);
            Some((parse(fields.get(1)?)?, parse(fields.get(7)?)?))
        })
        .collect()
}

fn ip_to_u32(ip: &str) -> u32 {
    u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap())
}

/// Checks what the stack promises about who reaches what (see the module docs).
fn assert_isolation(stack: &Stack, desktop: &str) {
    let gate = stack.container("gate");
    let mounts = docker_cli(&["inspect", "--format", "{{json .Mounts}}", &gate]);
    assert!(
        !mounts.contains("docker.sock"),
        "the gate has the Docker socket: {mounts}"
    );
    assert!(
        on_desktop(&gate, &["ls", "/var/run/docker.sock", "/run/docker.sock"]).is_err(),
        "a Docker socket is visible in the gate"
    );
    let ids = on_desktop(&gate, &["id", "-u"]).unwrap();
    assert_eq!(ids, "10001", "the gate runs as its own unprivileged user");
    let groups = on_desktop(&gate, &["id", "-G"]).unwrap();
    let docker_gid = stack.setting("DESKGATE_DOCKER_GID");
    assert!(
        !groups.split_whitespace().any(|g| g == docker_gid),
        "the gate is in the Docker socket's group {docker_gid}: {groups}"
    );

    let postgres = stack.container("postgres");
    let ports = docker_cli(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Ports}}",
        &postgres,
    ]);
    assert!(
        !ports.contains("HostPort"),
        "PostgreSQL publishes a port: {ports}"
    );
    let postgres_nets = networks_of(&postgres);
    let launcher_nets = networks_of(&stack.container("launcher"));
    for (name, _, id) in postgres_nets.iter().chain(&launcher_nets) {
        assert!(network_is_internal(id), "{name} is not internal");
        assert_host_has_no_address(name, id);
    }

    // The desktop: on its own internal networks only, which the host holds
    // no address on (so its default route, if Docker gave it one, leads to a
    // gateway nobody answers for), no route of its own to PostgreSQL or the
    // launcher, and a connection there fails inside the session's bridge.
    let desktop_nets = networks_of(desktop);
    let stack_net_ids: BTreeSet<&str> = postgres_nets
        .iter()
        .chain(&launcher_nets)
        .map(|(_, _, id)| id.as_str())
        .collect();
    for (name, _, id) in &desktop_nets {
        assert!(
            !stack_net_ids.contains(id.as_str()),
            "the desktop is on the stack's network {name}"
        );
        assert!(
            network_is_internal(id),
            "the desktop's {name} is not internal"
        );
        assert_host_has_no_address(name, id);
    }
    let routes = routes_of(desktop);
    let targets: Vec<(&str, &str, u16)> = postgres_nets
        .iter()
        .map(|(_, ip, _)| ("PostgreSQL", ip.as_str(), 5432))
        .chain(
            launcher_nets
                .iter()
                .map(|(_, ip, _)| ("the launcher", ip.as_str(), 8090)),
        )
        .collect();
    for (what, ip, port) in targets {
        let addr = ip_to_u32(ip);
        let routed = routes
            .iter()
            .find(|(dest, mask)| *mask != 0 && addr & mask == *dest);
        assert!(
            routed.is_none(),
            "the desktop has a route to {what} at {ip}: {routes:x?}"
        );
        let tried = on_desktop(
            desktop,
            &[
                "timeout",
                "15",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{ip}/{port}"),
            ],
        );
        let error = tried.expect_err("the desktop connected");
        assert!(
            error.contains("unreachable") || error.contains("No route to host"),
            "connecting to {what} from the desktop: {error}"
        );
    }
}

/// The host has no IPv4 address on network `id`'s bridge (inhibit_ipv4): it
/// neither answers there nor routes from there.
fn assert_host_has_no_address(name: &str, id: &str) {
    let bridge = format!("br-{}", &id[..12]);
    let addresses = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge])
        .output()
        .expect("ip (iproute2)");
    assert!(
        addresses.status.success() && !String::from_utf8_lossy(&addresses.stdout).contains("inet "),
        "the host has an address on {name} ({bridge}): {}",
        text(&addresses)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_hoster_brings_up_the_stack_and_a_browser_user_gets_an_xfce_desktop_that_survives_restarts()
 {
    let sizes = image_sizes();
    // The stack's launcher reaps session containers its gate does not know.
    let _sessions = DockerSessionsLock::acquire().await;
    let stack = Stack::configure();
    let leftovers = stack.session_leftovers();
    assert!(
        leftovers.is_empty(),
        "session desktops from before: {leftovers:?}"
    );
    // A clean start: nothing of an earlier run of this project.
    stack.compose(&["down", "-v", "--remove-orphans"]);

    let up = Instant::now();
    stack.compose(&["up", "-d", "--no-build"]);
    stack.wait_ready(Duration::from_secs(180)).await;
    let cold_up = up.elapsed();

    // The browser user, through the published port only.
    let shots = repo_root().join("target/compose-stack-shots");
    let typed = format!("touch {TYPED_FILE}");
    let mut driver = PageDriver::spawn_at(
        "compose_stack.js",
        "/usr/bin/chromium",
        &shots,
        &[&stack.gate_url, &stack.anvil_url, &typed],
    );
    let mut desktop = None;
    let mut first_frame_ms = 0;
    let mut novnc_ms = 0;
    let outcome: Result<(), String> = async {
        while let Some((name, event, _)) = driver.next().await? {
            match name.as_str() {
                "page" if event["status"] != 200 => {
                    return Err(format!("GET / answered {}", event["status"]));
                }
                "webrtc" => {
                    // The browser's own candidates are mDNS names and the
                    // launcher sits on an internal network: the video can only
                    // have come through the stack's TURN server.
                    if event["candidate"] != "relay" {
                        return Err(format!("the WebRTC video did not come through TURN: {event}"));
                    }
                    first_frame_ms = event["ms"].as_u64().unwrap_or_default();
                }
                "desktop" => {
                    novnc_ms = event["ms"].as_u64().unwrap_or_default();
                    let session = stack.sql("SELECT id FROM sessions WHERE state = 'running'");
                    let container = format!("deskgate-session-{session}");
                    let panel = on_desktop(
                        &container,
                        &["xdotool", "search", "--onlyvisible", "--class", "xfce4-panel"],
                    );
                    if !matches!(&panel, Ok(windows) if !windows.is_empty()) {
                        return Err(format!("no XFCE panel window on the desktop: {panel:?}"));
                    }
                    assert_isolation(&stack, &container);
                    desktop = Some((session, container));
                    driver.reply("the panel is there").await;
                }
                "typed" => {
                    let (_, container) = desktop.as_ref().expect("a desktop");
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while on_desktop(container, &["test", "-e", TYPED_FILE]).is_err() {
                        if Instant::now() > deadline {
                            let windows = on_desktop(container, &["xdotool", "search", "--onlyvisible", "--name", "."]);
                            return Err(format!(
                                "the terminal did not run what was typed ({TYPED_FILE} missing); windows: {windows:?}"
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    driver.reply("the desktop ran it").await;
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    driver
        .finish_with(
            outcome,
            || stack.logs(),
            &[
                "signed-in",
                "credited",
                "webrtc",
                "desktop",
                "typed",
                "holding",
            ],
        )
        .await;
    let (session, container) = desktop.expect("a desktop");

    // The wallet's API token, to keep the session present (the browser has
    // gone) and to stop it later.
    let gate = GateClient::new(&stack.gate_url);
    let token = gate
        .sign_in(&DEV_KEY.parse::<PrivateKeySigner>().unwrap())
        .await;
    let path = format!("/api/v1/sessions/{session}");
    let heartbeat = format!("{path}/heartbeat");
    let (status, body) = gate.post(&heartbeat, Some(&token), Value::Null).await;
    assert_eq!(status, 200, "heartbeat: {body}");

    // A restart of every service, then a down and up, with the desktop
    // running: each time it is adopted with its container, not relaunched.
    // (down leaves running desktops to the next up, as the README says.)
    let started_at = |c: &str| docker_cli(&["inspect", "--format", "{{.State.StartedAt}}", c]);
    let container_started = started_at(&container);
    for disruption in [
        &[&["restart"][..]][..],
        &[&["down"][..], &["up", "-d", "--no-build"][..]][..],
    ] {
        let before = stack.money_and_history();
        for command in disruption {
            stack.compose(command);
            if command[0] == "down" {
                assert!(stack.containers().is_empty(), "containers left after down");
                let running =
                    docker_cli(&["inspect", "--format", "{{.State.Running}}", &container]);
                assert_eq!(running, "true", "down stopped the running desktop");
            }
        }
        stack.wait_ready(Duration::from_secs(120)).await;
        let (status, body) = gate.post(&heartbeat, Some(&token), Value::Null).await;
        assert_eq!(status, 200, "heartbeat after {disruption:?}: {body}");
        let state = stack.sql(&format!(
            "SELECT state FROM sessions WHERE id = '{session}'"
        ));
        assert_eq!(state, "running", "the running session after {disruption:?}");
        assert_eq!(
            started_at(&container),
            container_started,
            "the desktop container was restarted by {disruption:?}"
        );
        stack.assert_ledger_holds();
        let after = stack.money_and_history();
        assert!(
            after.contains(&session),
            "the session's history is gone after {disruption:?}: {before} → {after}"
        );
    }

    // The user stops it.
    let (status, body) = gate
        .call(reqwest::Method::DELETE, &path, Some(&token), None)
        .await;
    assert!(status == 200 || status == 202, "stop: {status} {body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = gate
            .call(reqwest::Method::GET, &path, Some(&token), None)
            .await;
        if body["state"] == "ended" {
            break;
        }
        assert!(Instant::now() < deadline, "the session did not end: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.assert_ledger_holds();
    let billed = stack.sql(&format!(
        "SELECT billed_credit FROM sessions WHERE id = '{session}'"
    ));

    // down (volume kept) leaves nothing behind; up brings back the same money.
    let kept = stack.money_and_history();
    stack.compose(&["down", "--timeout", "10"]);
    assert!(stack.containers().is_empty(), "containers left after down");
    let left = stack.session_leftovers();
    assert!(
        left.is_empty(),
        "session desktops left after down: {left:?}"
    );
    stack.compose(&["up", "-d", "--no-build"]);
    stack.wait_ready(Duration::from_secs(120)).await;
    assert_eq!(
        stack.money_and_history(),
        kept,
        "money or history changed across down/up"
    );
    stack.assert_ledger_holds();

    eprintln!(
        "figures: cold up (built images) → all healthy and /readyz 200: {:.1} s; \
         claim → first XFCE frame in Chromium (WebRTC through TURN): {first_frame_ms} ms; \
         switch to noVNC → first frame: {novnc_ms} ms; billed {billed} credit-seconds; \
         image sizes: {}",
        cold_up.as_secs_f64(),
        sizes.join(", ")
    );
}
