//! Driving a real `deskgate serve` over HTTP and WebSocket, as a browser
//! would: [`GateProcess`] starts the process (and can kill and restart it on the
//! same database), signs in with real keys, claims and watches sessions;
//! [`GateClient`] signs in to a gate something else started;
//! [`deposit_eth`] pays on anvil; [`Events`] reads a session's events socket.

use std::time::{Duration, Instant};

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{
    Cleanup, Deskgate, OwnAnvil, ScratchDatabase, as_env, free_port, serve_env_with, sleeper_image,
};

/// 0.001 ETH: one GPU-hour at the default price, 3600 credit-seconds.
pub const ONE_GPU_HOUR_WEI: u64 = 1_000_000_000_000_000;

/// The settings of a `serve` that runs sessions and takes ETH deposits: the
/// test's own database and anvil node, deposits to `revenue` credited after
/// one confirmation and scanned from block 0, the sleeper image as the
/// desktop, small containers that stop at once, rate limits wide enough for
/// a test that signs in and claims for several wallets.
pub fn session_env(
    port: u16,
    database_url: &str,
    rpc_url: &str,
    revenue: Address,
) -> Vec<(&'static str, String)> {
    let mut env = serve_env_with(port, database_url, rpc_url);
    env.extend([
        ("DESKGATE_REVENUE_ADDRESS", revenue.to_string()),
        // The page offers the test's anvil to wallets lacking the chain.
        ("DESKGATE_WALLET_RPC_URL", rpc_url.to_string()),
        ("DESKGATE_CONFIRMATIONS", "1".into()),
        ("DESKGATE_CHAIN_POLL_MILLIS", "100".into()),
        ("DESKGATE_DEPOSIT_START_BLOCK", "0".into()),
        ("DESKGATE_SESSION_IMAGE", sleeper_image().into()),
        ("DESKGATE_SESSION_MEMORY_MIB", "64".into()),
        ("DESKGATE_SESSION_STOP_GRACE_SECONDS", "0".into()),
        // One test client plays many browsers from one address.
        ("DESKGATE_SIGN_IN_RATE_PER_MINUTE", "600".into()),
        ("DESKGATE_SIGN_IN_RATE_BURST", "100".into()),
        ("DESKGATE_CLAIM_RATE_PER_MINUTE", "600".into()),
        ("DESKGATE_CLAIM_RATE_BURST", "100".into()),
    ]);
    env
}

/// Sets `key` to `value` in `env`, replacing any earlier value.
pub fn set_env(env: &mut Vec<(&'static str, String)>, key: &'static str, value: impl Into<String>) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value.into()));
}

/// Exclusive use of the Docker engine's session containers. A starting
/// `deskgate serve` removes every `deskgate.session` container its own
/// database does not know (crash recovery), so two gates under test on one
/// engine would remove each other's desktops: gates are run one at a time,
/// across test binaries too (a file lock in the temporary directory).
pub struct DockerSessionsLock(#[allow(dead_code)] std::fs::File);

impl DockerSessionsLock {
    /// Waits for the engine's session containers to be this test's.
    pub async fn acquire() -> Self {
        tokio::task::spawn_blocking(|| {
            Self(super::lock_file("deskgate-tests-session-containers.lock"))
        })
        .await
        .expect("lock task")
    }
}

/// An HTTP client for a gate's API at `base`, whoever started the gate.
#[derive(Clone)]
pub struct GateClient {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client requests go through.
    pub http: reqwest::Client,
}

impl GateClient {
    /// A client for the gate at `base`, with a 20 s timeout per request.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    /// Waits until the gate's sessions are open (`GET /profiles` answers
    /// 200: migrations and recovery have run); else the last answer.
    pub async fn sessions_open(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self
                .call(reqwest::Method::GET, "/api/v1/profiles", None, None)
                .await;
            if status == 200 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{status} {body}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a request; returns the status and the JSON body (`null` if none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `POST path` with a JSON body, as `token` if given.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    /// Signs in as `signer` (nonce, EIP-4361 message signed with its key,
    /// verify); returns the session token.
    pub async fn sign_in(&self, signer: &PrivateKeySigner) -> String {
        let (status, challenge) = self
            .post(
                "/api/v1/auth/nonce",
                None,
                json!({ "address": signer.address() }),
            )
            .await;
        assert_eq!(status, 200, "{challenge}");
        let message = challenge["message"].as_str().unwrap();
        let signature = signer.sign_message_sync(message.as_bytes()).unwrap();
        let (status, issued) = self
            .post(
                "/api/v1/auth/verify",
                None,
                json!({ "message": message, "signature": alloy::hex::encode_prefixed(signature.as_bytes()) }),
            )
            .await;
        assert_eq!(status, 200, "{issued}");
        assert_eq!(
            issued["address"].as_str().map(str::to_ascii_lowercase),
            Some(signer.address().to_string().to_ascii_lowercase()),
            "{issued}"
        );
        issued["token"].as_str().unwrap().to_string()
    }
}

/// A `deskgate serve` under test and an HTTP client for it.
pub struct GateProcess {
    process: Option<Deskgate>,
    /// Output of processes killed earlier in the test.
    earlier_output: String,
    env: Vec<(&'static str, String)>,
    /// Its API client (`base` is `http://127.0.0.1:<port>`, also the
    /// Origin its sockets accept); the gate derefs to it.
    client: GateClient,
    /// The port it listens on.
    pub port: u16,
    /// Held while a gate runs on the shared engine; `None` for a gate whose
    /// launchers run on engines of the test's own.
    docker_lock: Option<DockerSessionsLock>,
    /// What the process is started through, if anything (see
    /// [`super::deskgate_command_wrapped`]).
    wrapper: Vec<String>,
}

impl std::ops::Deref for GateProcess {
    type Target = GateClient;

    fn deref(&self) -> &GateClient {
        &self.client
    }
}

/// A gate under test leaves nothing on the shared engine for the next test.
/// A gate killed mid-launch leaves a session network (or container) behind
/// that only the next gate's recovery would remove: the last gate of a test
/// binary would hand it to whatever runs next (`tests/compose_stack.rs`
/// asserts a clean engine). A gate with its own Docker launcher (no
/// `DESKGATE_LAUNCHER_URLS`) holds [`DockerSessionsLock`], so every session
/// container and network on the shared engine is its own, as its start-up
/// recovery already assumes.
impl Drop for GateProcess {
    fn drop(&mut self) {
        // Stop the process first: it would go on launching.
        drop(self.process.take());
        let local_launcher = !self
            .env
            .iter()
            .any(|(key, _)| *key == "DESKGATE_LAUNCHER_URLS");
        if self.docker_lock.is_some() && local_launcher {
            remove_session_leftovers();
        }
    }
}

/// Removes every session container and warm desktop, then their networks, on the
/// engine `DOCKER_HOST` names. Best effort: it runs while a test unwinds.
fn remove_session_leftovers() {
    for (list, remove, label) in [
        (
            &["ps", "-aq"][..],
            &["rm", "-f", "-v"][..],
            "deskgate.session",
        ),
        (&["ps", "-aq"][..], &["rm", "-f", "-v"][..], "deskgate.warm"),
        (
            &["network", "ls", "-q"][..],
            &["network", "rm"][..],
            "deskgate.session",
        ),
        (
            &["network", "ls", "-q"][..],
            &["network", "rm"][..],
            "deskgate.warm",
        ),
    ] {
        let Ok(out) = std::process::Command::new("docker")
            .args(list)
            .args(["--filter", &format!("label={label}")])
            .output()
        else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(remove)
                .args(&ids)
                .output();
        }
    }
}

impl GateProcess {
    /// Starts `deskgate serve` with `env` (which binds `127.0.0.1:port`) and
    /// waits until it is ready and its sessions are open. It holds
    /// [`DockerSessionsLock`] unless it runs on the simulated backend, which
    /// starts nothing on any engine.
    pub async fn start(port: u16, env: Vec<(&'static str, String)>) -> Self {
        let simulated = env
            .iter()
            .any(|(key, value)| *key == "DESKGATE_LAUNCHER_BACKEND" && value == "simulated");
        let docker = if simulated {
            None
        } else {
            Some(DockerSessionsLock::acquire().await)
        };
        Self::start_holding(port, env, docker, Vec::new()).await
    }

    /// [`GateProcess::start`] for a gate whose launchers run on Docker
    /// Engines of the test's own (never the shared one), so it leaves the
    /// shared engine's session containers to other tests.
    pub async fn start_on_own_engines(port: u16, env: Vec<(&'static str, String)>) -> Self {
        Self::start_holding(port, env, None, Vec::new()).await
    }

    async fn start_holding(
        port: u16,
        env: Vec<(&'static str, String)>,
        docker: Option<DockerSessionsLock>,
        wrapper: Vec<String>,
    ) -> Self {
        let mut gate = Self {
            process: None,
            earlier_output: String::new(),
            env,
            client: GateClient::new(&format!("http://127.0.0.1:{port}")),
            port,
            docker_lock: docker,
            wrapper,
        };
        gate.restart().await;
        gate
    }

    /// [`GateProcess::start`] through `wrapper` (see
    /// [`super::deskgate_command_wrapped`]), every restart too.
    pub async fn start_wrapped(
        port: u16,
        env: Vec<(&'static str, String)>,
        wrapper: Vec<String>,
    ) -> Self {
        let docker = Some(DockerSessionsLock::acquire().await);
        Self::start_holding(port, env, docker, wrapper).await
    }

    /// Starts the process again with the same settings (after
    /// [`GateProcess::kill_hard`]) and waits until it is ready and its sessions are
    /// open, i.e. recovery has run.
    pub async fn restart(&mut self) {
        self.restart_ready().await;
        if let Err(last) = self.sessions_open(Duration::from_secs(30)).await {
            panic!(
                "sessions did not open within 30 s: {last}\n{}",
                self.output()
            );
        }
    }

    /// Starts the process again and waits until `/readyz` answers, not for
    /// its sessions (recovery may be waiting on something).
    pub async fn restart_ready(&mut self) {
        assert!(self.process.is_none(), "the gate is still running");
        let env = as_env(&self.env);
        let mut process = if self.wrapper.is_empty() {
            Deskgate::spawn(&["serve"], &env)
        } else {
            Deskgate::spawn_command(super::deskgate_command_wrapped(
                &self.wrapper,
                &["serve"],
                &env,
            ))
        };
        process
            .wait_ready(&self.http, &format!("{}/readyz", self.base))
            .await;
        self.process = Some(process);
    }

    /// SIGKILLs the process: no shutdown, no cleanup of any kind.
    pub fn kill_hard(&mut self) {
        let process = self.process.take().expect("the gate is running");
        self.earlier_output.push_str(&process.output());
        self.earlier_output
            .push_str("\n--- killed with SIGKILL ---\n");
        process.kill_hard();
    }

    /// The running process's id (for signals, or its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the gate is running").pid()
    }

    /// Everything the gate printed, across restarts.
    pub fn output(&self) -> String {
        let current = self.process.as_ref().map(Deskgate::output);
        format!("{}{}", self.earlier_output, current.unwrap_or_default())
    }

    /// `GET path` as `token`.
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// `DELETE path` as `token`.
    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// Polls `path` until `done` holds for its body, or fails after `within`.
    pub async fn wait_for(
        &self,
        path: &str,
        token: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(path, token).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} not as expected within {within:?}: {status} {body}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the wallet behind `token` holds `credit_seconds`.
    pub async fn wait_for_credit(&self, token: &str, credit_seconds: i64) -> Value {
        self.wait_for("/api/v1/account", token, Duration::from_secs(20), |a| {
            a["credit_seconds"] == credit_seconds
        })
        .await
    }

    /// `name`'s entry in `GET /api/v1/profiles` (name, gpus, free, queued).
    pub async fn profile(&self, name: &str) -> Value {
        let (status, profiles) = self
            .call(reqwest::Method::GET, "/api/v1/profiles", None, None)
            .await;
        assert_eq!(status, 200, "{profiles}");
        profiles
            .as_array()
            .and_then(|list| list.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no profile {name}: {profiles}"))
    }

    /// Claims `profile` as `token`: the status and the body.
    pub async fn claim(&self, token: &str, profile: &str) -> (u16, Value) {
        self.post(
            "/api/v1/sessions",
            Some(token),
            json!({ "profile": profile }),
        )
        .await
    }

    /// A handshake request for a session's events socket, from `origin`.
    pub fn socket_request(
        &self,
        session: &str,
        token: &str,
        origin: &str,
    ) -> tungstenite::handshake::client::Request {
        let mut request = format!(
            "ws://127.0.0.1:{}/api/v1/sessions/{session}/events",
            self.port
        )
        .into_client_request()
        .unwrap();
        let headers = request.headers_mut();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers.insert("origin", origin.parse().unwrap());
        request
    }

    /// Opens a session's events socket from the gate's own origin.
    pub async fn events(&self, session: &str, token: &str) -> Events {
        let (socket, _) =
            tokio_tungstenite::connect_async(self.socket_request(session, token, &self.base))
                .await
                .unwrap_or_else(|e| panic!("events socket of {session}: {e}"));
        Events {
            socket,
            seen: Vec::new(),
        }
    }
}

/// A session's events socket, read as JSON messages.
pub struct Events {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Every message received so far, for failure messages.
    pub seen: Vec<Value>,
}

impl Events {
    /// The next JSON message before `deadline`; `None` at the deadline or
    /// once the socket is closed.
    pub async fn next_before(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            match tokio::time::timeout_at(deadline.into(), self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let event: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("event is not JSON ({e}): {text}"));
                    self.seen.push(event.clone());
                    return Some(event);
                }
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return None,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The first message for which `wanted` holds, within `within`; fails
    /// naming `what` and every message seen otherwise.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        while let Some(event) = self.next_before(deadline).await {
            if wanted(&event) {
                return event;
            }
        }
        panic!(
            "no {what} within {within:?}; events seen: {}",
            Value::Array(self.seen.clone())
        );
    }

    /// Closes the socket (the session loses this proof of presence).
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// A gate with everything of its own: an anvil node, a scratch database, a
/// revenue address, and a guard that removes its sessions' containers and
/// networks however the test ends.
pub struct Stage {
    /// The gate.
    pub gate: GateProcess,
    /// Its chain.
    pub anvil: OwnAnvil,
    /// Its database.
    pub db: ScratchDatabase,
    /// Where deposits go.
    pub revenue: Address,
    /// Containers and networks of the sessions claimed through [`Stage::claim`].
    pub cleanup: std::sync::Mutex<Cleanup>,
}

impl Stage {
    /// Starts a gate on [`session_env`] with `settings` on top (fake:2 GPUs
    /// unless they say otherwise).
    pub async fn start(tag: &str, settings: &[(&'static str, &str)]) -> Self {
        Self::start_wrapped(tag, settings, Vec::new()).await
    }

    /// [`Stage::start`] with the gate started through `wrapper` (see
    /// [`super::deskgate_command_wrapped`]; empty = directly).
    pub async fn start_wrapped(
        tag: &str,
        settings: &[(&'static str, &str)],
        wrapper: Vec<String>,
    ) -> Self {
        let anvil = OwnAnvil::start();
        let db = ScratchDatabase::migrated(tag).await;
        let revenue = Address::repeat_byte(0x7a);
        let port = free_port();
        let mut env = session_env(port, &db.url, &anvil.url, revenue);
        for (key, value) in settings {
            set_env(&mut env, key, *value);
        }
        let gate = if wrapper.is_empty() {
            GateProcess::start(port, env).await
        } else {
            GateProcess::start_wrapped(port, env, wrapper).await
        };
        Self {
            gate,
            anvil,
            db,
            revenue,
            cleanup: std::sync::Mutex::new(Cleanup::new()),
        }
    }

    /// A new wallet, signed in, that deposited `wei` and was credited
    /// `credit_seconds` for it; returns its token.
    pub async fn funded_wallet(&self, wei: u64, credit_seconds: i64) -> String {
        let signer = PrivateKeySigner::random();
        let token = self.gate.sign_in(&signer).await;
        deposit_eth(&self.anvil.url, &signer, self.revenue, wei).await;
        self.gate.wait_for_credit(&token, credit_seconds).await;
        token
    }

    /// Claims `profile` as `token`, expecting 202; the session's containers
    /// are cleaned up at the end. Returns the claim's body.
    pub async fn claim(&self, token: &str, profile: &str) -> Value {
        let (status, claimed) = self.gate.claim(token, profile).await;
        assert_eq!(status, 202, "claim {profile}: {claimed}");
        let id = claimed["id"].as_str().expect("a session id");
        self.cleanup
            .lock()
            .unwrap()
            .track(deskgate_actors::ports::SessionId(id.parse().unwrap()));
        claimed
    }

    /// Stops the gate and drops the database.
    pub async fn finish(self) {
        let Self {
            gate, db, cleanup, ..
        } = self;
        drop(gate);
        drop(cleanup);
        db.drop_it().await;
    }
}

/// `/api/v1/sessions/<id>` of a claim's body.
pub fn session_path(claimed: &Value) -> String {
    format!("/api/v1/sessions/{}", claimed["id"].as_str().unwrap())
}

/// Gives `signer` 1 ETH on the anvil node at `rpc_url`, sends `wei` from it
/// to `revenue` and mines one more block; returns the transaction hash.
pub async fn deposit_eth(
    rpc_url: &str,
    signer: &PrivateKeySigner,
    revenue: Address,
    wei: u64,
) -> B256 {
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(rpc_url.parse().unwrap());
    provider
        .anvil_set_balance(signer.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .unwrap();
    let receipt = provider
        .send_transaction(
            TransactionRequest::default()
                .with_to(revenue)
                .with_value(U256::from(wei)),
        )
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status(), "deposit reverted");
    provider.anvil_mine(Some(1), None).await.unwrap();
    receipt.transaction_hash
}
