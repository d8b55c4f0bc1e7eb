//! Shared helpers for integration tests: service addresses from the
//! environment, and a `deskgate` process under test.
//!
//! Service addresses come from the environment that `make test` sets (it
//! sources `.deskgate/services.env`, written by `scripts/services.sh`). When
//! that file exists it is read as a fallback, so `cargo test` works after
//! `make services`. A missing service is a failure naming the command that
//! provides it, never a silent skip.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod api;
pub mod browser;
pub mod desktop;
pub mod netns;
pub mod queue_order;
pub mod sign_in;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, RunQueryDsl};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn services_file() -> &'static HashMap<String, String> {
    static FILE: OnceLock<HashMap<String, String>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = repo_root().join(".deskgate/services.env");
        let Ok(text) = std::fs::read_to_string(path) else {
            return HashMap::new();
        };
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    })
}

/// A service setting such as `DESKGATE_DATABASE_URL`: from the environment,
/// else from `.deskgate/services.env`. Panics with the fix when neither has it.
pub fn service_env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| services_file().get(name).cloned())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: this test needs the real services. Run it through `make test` \
                 (or run `make services` first, which starts them and writes .deskgate/services.env)"
            )
        })
}

/// A client of the test Docker Engine, once it answers. The client and the
/// `docker` CLI the tests' guards run must talk to the same engine: the one
/// `DOCKER_HOST` of the service environment names.
pub async fn docker() -> bollard::Docker {
    let host = service_env("DOCKER_HOST");
    assert!(
        std::env::var("DOCKER_HOST").is_ok_and(|h| h == host)
            || std::env::var("DOCKER_HOST").is_err(),
        "DOCKER_HOST differs from the service environment"
    );
    let docker = deskgate::launcher::docker::connect()
        .await
        .expect("docker client");
    docker
        .ping()
        .await
        .expect("Docker answers: run `bash scripts/services.sh up`");
    docker
}

/// A port on loopback that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A secret that passes the production strength checks.
pub const STRONG_SECRET: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

/// A `deskgate` process started for a test; killed when dropped.
pub struct Deskgate {
    child: Child,
    output: Arc<Mutex<String>>,
}

/// Starts `deskgate launcher` with `env` (which makes it listen on `port`)
/// and waits until it answers on loopback; returns it and its base URL.
pub async fn spawn_launcher(port: u16, env: &[(&str, String)]) -> (Deskgate, url::Url) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut process = Deskgate::spawn(&["launcher"], &env);
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    process
        .wait_ready(
            &reqwest::Client::new(),
            url.join("healthz").unwrap().as_str(),
        )
        .await;
    (process, url)
}

/// Starts `deskgate launcher` with `env` inside network namespace `netns`,
/// listening on `addr` (an address of that namespace, which `env` names as
/// `DESKGATE_LAUNCHER_BIND`), and waits until it answers there from the
/// test's namespace; returns it and its base URL.
pub async fn spawn_launcher_in(
    netns: &netns::NetNs,
    addr: SocketAddr,
    env: &[(&str, String)],
) -> (Deskgate, url::Url) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut process = Deskgate::spawn_command(deskgate_command_in(netns, &["launcher"], &env));
    let url = url::Url::parse(&format!("http://{addr}/")).unwrap();
    process
        .wait_ready(
            &reqwest::Client::new(),
            url.join("healthz").unwrap().as_str(),
        )
        .await;
    (process, url)
}

/// The next exit of `session` from `rx` within `within` (other sessions'
/// exits are passed over).
pub async fn next_exit(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<deskgate_actors::ports::ContainerExit>,
    session: deskgate_actors::ports::SessionId,
    within: Duration,
) -> deskgate_actors::ports::ContainerExit {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let exit = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no exit for {session} within {within:?}"))
            .expect("watcher alive");
        if exit.session == session {
            return exit;
        }
    }
}

/// The Prometheus text of the metrics listener at `addr` (`host:port`).
pub async fn scrape_metrics(addr: &str) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("metrics at {addr}: {e}"));
    assert_eq!(response.status(), 200, "metrics at {addr}");
    response.text().await.unwrap()
}

/// Builds the command line for `deskgate ARGS` with exactly `env` as its
/// `DESKGATE_*` settings: none leak in from the developer's shell.
pub fn deskgate_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_deskgate"));
    command.args(args);
    only_these_settings(&mut command, env);
    command
}

/// [`deskgate_command`] run inside network namespace `netns` (through `ip
/// netns exec`, which execs it: the child's pid is deskgate's).
pub fn deskgate_command_in(netns: &netns::NetNs, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = netns.command(env!("CARGO_BIN_EXE_deskgate"));
    command.args(args);
    only_these_settings(&mut command, env);
    command
}

/// [`deskgate_command`] run through `wrapper` (a program and its arguments
/// that end by exec-ing the deskgate binary and its arguments, which follow
/// them), e.g. `unshare` with a script that mounts a hosts file first.
pub fn deskgate_command_wrapped(
    wrapper: &[String],
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    let (program, wrapper_args) = wrapper.split_first().expect("a wrapper program");
    let mut command = Command::new(program);
    command
        .args(wrapper_args)
        .arg(env!("CARGO_BIN_EXE_deskgate"))
        .args(args);
    only_these_settings(&mut command, env);
    command
}

/// Gives `command` exactly `env` as its `DESKGATE_*` settings, `RUST_LOG=info`
/// unless `env` says otherwise, and no stdin.
fn only_these_settings(command: &mut Command, env: &[(&str, &str)]) {
    for (name, _) in std::env::vars() {
        if name.starts_with("DESKGATE_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info");
    command.envs(env.iter().copied());
    command.stdin(Stdio::null());
}

/// Runs `deskgate ARGS` to completion; returns its status and everything it
/// printed (stdout then stderr).
pub fn run_deskgate(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let output = deskgate_command(args, env)
        .output()
        .expect("run the deskgate binary");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

impl Deskgate {
    /// Starts `deskgate ARGS` in the background, capturing its output.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_command(deskgate_command(args, env))
    }

    /// Starts `command` (one that runs deskgate, maybe through a script
    /// that execs it) in the background, capturing its output.
    pub fn spawn_command(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the deskgate binary");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = output.clone();
            std::thread::spawn(move || copy_into(stream, &sink));
        }
        Self { child, output }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `url` answers 200, failing with the process output if the
    /// process exits first or 30 s pass.
    pub async fn wait_ready(&mut self, client: &reqwest::Client, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                panic!(
                    "deskgate exited with {status} before answering:\n{}",
                    self.output()
                );
            }
            if let Ok(response) = client.get(url).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "deskgate did not answer {url} within 30 s:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns the status
    /// and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "deskgate still running {limit:?} after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deskgate {
    /// Kills the process with SIGKILL (no cleanup of any kind) and reaps it.
    pub fn kill_hard(mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        assert!(!status.success(), "killed process reported success");
    }
}

impl Drop for Deskgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_into(mut stream: Box<dyn Read + Send>, sink: &Mutex<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        sink.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// The settings every `serve` under test needs: the real services and fake
/// GPUs, on `port`.
pub fn serve_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("DESKGATE_BIND", format!("127.0.0.1:{port}")),
        (
            "DESKGATE_DATABASE_URL",
            service_env("DESKGATE_DATABASE_URL"),
        ),
        ("DESKGATE_RPC_URL", service_env("DESKGATE_RPC_URL")),
        ("DESKGATE_CHAIN_ID", service_env("DESKGATE_CHAIN_ID")),
        ("DESKGATE_GPUS", "fake:2".to_string()),
    ]
}

/// Borrows owned settings as the `&[(&str, &str)]` the spawners take.
pub fn as_env<'a>(pairs: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A loopback socket address.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs a project script and fails the test with its output if it fails.
pub fn run_script(script: &Path, args: &[&str]) {
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A database of its own for one test, dropped at the end (the server is the
/// one `DESKGATE_DATABASE_URL` names; its role may create databases).
pub struct ScratchDatabase {
    admin_url: String,
    /// Database name.
    pub name: String,
    /// URL that reaches it.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `deskgate_<tag>_<pid>`, dropping a leftover of that name first.
    pub async fn create(tag: &str) -> Self {
        let admin_url = service_env("DESKGATE_DATABASE_URL");
        let name = format!("deskgate_{tag}_{}", std::process::id());
        let mut conn = diesel_async::AsyncPgConnection::establish(&admin_url)
            .await
            .unwrap();
        drop_leftovers(&mut conn).await;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    /// Creates it and applies the embedded migrations.
    pub async fn migrated(tag: &str) -> Self {
        let db = Self::create(tag).await;
        let url = deskgate::platform::secret::Secret::new(db.url.clone());
        deskgate::db::migrate(&url).await.expect("migrations apply");
        db
    }

    /// Drops it, closing any connection still open. A backend that cannot be
    /// ended yet (an autovacuum worker starting up) makes the drop fail, so it
    /// is tried a few times before the test fails.
    pub async fn drop_it(self) {
        let mut conn = diesel_async::AsyncPgConnection::establish(&self.admin_url)
            .await
            .unwrap();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let mut attempt = 1;
        while let Err(error) = diesel::sql_query(&statement).execute(&mut conn).await {
            assert!(attempt < 10, "dropping {} failed: {error}", self.name);
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Drops scratch databases whose test process is gone (a failed test panics
/// before it can drop its own).
async fn drop_leftovers(conn: &mut diesel_async::AsyncPgConnection) {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let names: Vec<Name> =
        diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'deskgate\\_%\\_%'")
            .load(conn)
            .await
            .unwrap_or_default();
    for Name { datname } in names {
        let Some(pid) = datname
            .rsplit('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {datname} WITH (FORCE)"))
                .execute(conn)
                .await;
        }
    }
}

/// An anvil node of a test's own, on a free port, killed on drop. Tests that
/// mine, revert, reorg, warp time or stop the node use one so that they never
/// disturb the shared node other tests use.
pub struct OwnAnvil {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl OwnAnvil {
    /// Starts anvil (chain id 31337, auto-mining, the standard dev accounts)
    /// and waits until it answers.
    pub fn start() -> Self {
        Self::start_on(free_port(), &[])
    }

    /// Starts anvil on `port` with extra arguments (e.g. `--block-time 1`);
    /// used to restart a stopped node on the same port.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let bin = service_env("DESKGATE_ANVIL_BIN");
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--chain-id",
                "31337",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("anvil starts (run `make services` to install it)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(loopback(port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "anvil did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, url }
    }

    /// Stops the node: SIGTERM (so that `--state FILE` is written), then
    /// SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnAnvil {
    fn drop(&mut self) {
        self.stop();
    }
}

/// anvil's first dev account (public knowledge; a test chain only).
pub const DEV_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// A provider for the node at `url` that signs with [`DEV_KEY`], and that
/// account's address.
pub fn dev_wallet_provider(
    url: &str,
) -> (alloy::providers::DynProvider, alloy::primitives::Address) {
    use alloy::providers::{Provider, ProviderBuilder};
    let signer: alloy::signers::local::PrivateKeySigner = DEV_KEY.parse().unwrap();
    let address = signer.address();
    let provider = ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer))
        .connect_http(url.parse().unwrap())
        .erased();
    (provider, address)
}

/// Deploys `tests/fixtures/artifacts/TestToken.bin` from `provider`'s
/// wallet; returns its address.
pub async fn deploy_test_token(
    provider: &alloy::providers::DynProvider,
) -> alloy::primitives::Address {
    use alloy::network::TransactionBuilder;
    use alloy::providers::Provider;
    let hex = std::fs::read_to_string(repo_root().join("tests/fixtures/artifacts/TestToken.bin"))
        .expect("TestToken.bin");
    let code: alloy::primitives::Bytes = alloy::hex::decode(hex.trim()).unwrap().into();
    let receipt = provider
        .send_transaction(alloy::rpc::types::TransactionRequest::default().with_deploy_code(code))
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status(), "TestToken deployment reverted");
    receipt.contract_address.expect("a deployed address")
}

/// Runs the `docker` CLI (on the engine `DOCKER_HOST` names) and returns its
/// trimmed output; fails the test with Docker's message if it fails.
pub fn docker_cli(args: &[&str]) -> String {
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

/// The host's IPv4 address on a Docker network: the gateway `docker network
/// inspect` reports, or else the first host of the network's IPv4 subnet, which
/// is the address Docker gives the bridge. A freshly started Docker Engine 20.10
/// reports only the subnet of the default bridge, so the gateway field alone
/// cannot be relied on. `None` when the network has no IPv4 subnet.
pub fn network_gateway(network: &str) -> Option<String> {
    let config = docker_cli(&[
        "network",
        "inspect",
        network,
        "--format",
        "{{json .IPAM.Config}}",
    ]);
    gateway_from_ipam(&config).unwrap_or_else(|e| panic!("IPAM of {network}: {e}: {config}"))
}

/// [`network_gateway`] from the JSON of a network's `IPAM.Config`.
pub fn gateway_from_ipam(config: &str) -> Result<Option<String>, serde_json::Error> {
    // A network without IPAM entries prints `null`.
    let config: Vec<serde_json::Value> =
        serde_json::from_str::<Option<_>>(config)?.unwrap_or_default();
    let field = |entry: &serde_json::Value, key: &str| {
        entry
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let reported = config
        .iter()
        .filter_map(|entry| field(entry, "Gateway"))
        .find(|gateway| gateway.parse::<std::net::Ipv4Addr>().is_ok());
    Ok(reported.or_else(|| {
        config
            .iter()
            .filter_map(|entry| field(entry, "Subnet")?.parse::<ipnet::Ipv4Net>().ok())
            .find_map(|subnet| subnet.hosts().next())
            .map(|ip| ip.to_string())
    }))
}

/// Whether Docker knows a container by this name or id.
pub fn container_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["inspect", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The test image with `sleep` as its command (a stand-in desktop that runs
/// until stopped), made once per test process with `docker commit`; no
/// registry needed.
pub fn sleeper_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = "deskgate/test-sleeper:local".to_string();
        let base = service_env("DESKGATE_TEST_IMAGE");
        let name = format!("deskgate-sleeper-build-{}", std::process::id());
        docker_cli(&["create", "--name", &name, &base]);
        docker_cli(&[
            "commit",
            "--change",
            r#"CMD ["sleep", "86400"]"#,
            &name,
            &image,
        ]);
        docker_cli(&["rm", &name]);
        image
    })
}

/// This host's IPv4 addresses other than loopback (`ip -4 -o addr`): where a
/// session container must not reach host services.
pub fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run `ip`");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .filter(|ip| !ip.starts_with("127."))
        .map(str::to_string)
        .collect()
}

/// Session ids a Docker test uses; their containers and networks are removed
/// when it is dropped, also when the test panics.
#[derive(Default)]
pub struct Cleanup(Vec<deskgate_actors::ports::SessionId>);

impl Cleanup {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh session id, cleaned up at the end.
    pub fn session(&mut self) -> deskgate_actors::ports::SessionId {
        let session = deskgate_actors::ports::SessionId::new();
        self.0.push(session);
        session
    }

    /// Cleans up a session id made elsewhere (one a gate under test chose).
    pub fn track(&mut self, session: deskgate_actors::ports::SessionId) {
        self.0.push(session);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        use deskgate::launcher::docker::{container_name, network_name};
        for session in &self.0 {
            for args in [
                vec!["rm", "-f", "-v", &container_name(*session)],
                vec!["network", "rm", &network_name(*session)],
            ] {
                let _ = Command::new("docker").args(&args).output();
            }
        }
    }
}

/// [`serve_env`] on a database and an RPC node of the test's own.
pub fn serve_env_with(port: u16, database_url: &str, rpc_url: &str) -> Vec<(&'static str, String)> {
    let mut env = serve_env(port);
    env.retain(|(k, _)| !matches!(*k, "DESKGATE_DATABASE_URL" | "DESKGATE_RPC_URL"));
    env.extend([
        ("DESKGATE_DATABASE_URL", database_url.to_string()),
        ("DESKGATE_RPC_URL", rpc_url.to_string()),
    ]);
    env
}

/// Opens `name` in the temporary directory and takes an exclusive lock on
/// it, waiting for whoever holds it (another test process, too); the lock
/// lasts as long as the returned file.
pub fn lock_file(name: &str) -> std::fs::File {
    let path = std::env::temp_dir().join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// One row `"<unbalanced> <wrong balances> <misbilled>"`: the ledger's
/// transactions that do not sum to zero, balances that are negative or not
/// the sum of their entries, and sessions billed other than what the ledger
/// debited for them. `"0 0 0"` when the ledger holds; the stack tests run it
/// with `psql` inside their PostgreSQL.
pub const LEDGER_BROKEN_SQL: &str = "SELECT (SELECT count(*) FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id \
         HAVING sum(amount) <> 0) t) || ' ' || \
        (SELECT count(*) FROM balances b WHERE amount < 0 OR amount <> \
         (SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e WHERE e.account = b.account)) || ' ' || \
        (SELECT count(*) FROM sessions s WHERE billed_credit <> \
         (SELECT coalesce(sum(e.amount), 0) FROM ledger_txns t JOIN ledger_entries e ON e.txn_id = t.id \
          WHERE t.reference = 'session:' || s.id AND e.account = 'usage'))";

/// `docker exec` arguments that run `query` with `psql -At` as deskgate in
/// the PostgreSQL container `container` (its local socket: the stacks'
/// database publishes nothing); stops at the first error.
pub fn psql_exec_args<'a>(container: &'a str, query: &'a str) -> [&'a str; 12] {
    [
        "exec",
        container,
        "psql",
        "-U",
        "deskgate",
        "-d",
        "deskgate",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        query,
    ]
}
