//! The campaign's users: a seeded random stream of what wallets and an
//! operator do, sent through the gate's HTTP API while faults land.
//!
//! Wallets sign in (and sign in again), deposit ETH and the test token on
//! anvil, claim every profile, stop their sessions or leave the queue, and
//! either heartbeat their sessions or go silent (the gate's presence timeout
//! then ends them). The operator drains and undrains GPUs and adjusts credit
//! under idempotency keys, sometimes sending a key again. The choice of each
//! step comes from the seed; what the gate answers depends on the faults,
//! so every request may fail, and nothing here asserts on answers except
//! that the gate never answers 500. What was sent is kept in [`Record`] for
//! the invariants (which keys were applied, which deposits were sent).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::watch;

alloy::sol! {
    #[sol(rpc)]
    contract TestToken {
        function mint(address to, uint256 amount) external;
        function transfer(address to, uint256 amount) external returns (bool);
    }
}

/// One wallet as its browser knows it.
struct Wallet {
    signer: PrivateKeySigner,
    token: Option<String>,
    /// Its sessions that may still be live, with whether it heartbeats them.
    sessions: Vec<(String, bool)>,
}

/// A deposit the workload sent.
#[derive(Clone, Debug)]
pub struct SentDeposit {
    /// The transaction.
    pub tx: B256,
    /// `eth` or `token`.
    pub asset: &'static str,
}

/// An admin credit adjustment key and what answered it.
#[derive(Clone, Debug, Default)]
pub struct AdminKey {
    /// How many times it was sent.
    pub sent: u32,
    /// Whether any answer was 200 (posted or replayed).
    pub applied: bool,
}

/// What the workload did, for the invariants and the report.
#[derive(Debug, Default)]
pub struct Record {
    /// Requests sent, by action.
    pub actions: BTreeMap<&'static str, u64>,
    /// Answers by action and status (`0`: no answer).
    pub answers: BTreeMap<(&'static str, u16), u64>,
    /// Every 500 the gate gave, with its body.
    pub server_errors: Vec<String>,
    /// Admin credit adjustments by key.
    pub admin_keys: HashMap<String, AdminKey>,
    /// Deposits sent.
    pub deposits: Vec<SentDeposit>,
}

/// Where the workload sends its requests and its transactions.
#[derive(Clone)]
pub struct Targets {
    /// `http://127.0.0.1:<port>`: the gate (it restarts on the same port).
    pub gate: String,
    /// anvil, reached directly (the wallets' own RPC).
    pub anvil: String,
    /// Where deposits go.
    pub revenue: Address,
    /// The ERC-20 the gate accepts.
    pub token: Address,
    /// `DESKGATE_ADMIN_TOKEN`.
    pub admin_token: String,
    /// Profile names and their GPU counts (every profile, also those no
    /// host can run: their claims are refused).
    pub profiles: Vec<(String, u64)>,
    /// Every GPU: (host, index).
    pub gpus: Vec<(u16, u32)>,
    /// Held while anything writes to the chain (see `world::ChainWrites`).
    pub chain_writes: crate::world::ChainWrites,
}

/// The seeded stream of user and operator actions.
pub struct Workload {
    targets: Targets,
    http: reqwest::Client,
    wallets: Vec<Wallet>,
    rng: StdRng,
    drained: HashSet<(u16, u32)>,
    /// What was done; shared with the campaign.
    pub record: Arc<Mutex<Record>>,
    /// The token of each session's wallet, by session id: the campaign's
    /// stalled browser opens streams as the session's owner.
    pub owners: Arc<Mutex<HashMap<String, String>>>,
}

impl Workload {
    /// `wallets` new wallets; every choice comes from `seed`.
    pub fn new(targets: Targets, wallets: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let wallets = (0..wallets)
            .map(|_| {
                let key: [u8; 32] = rng.random();
                Wallet {
                    signer: PrivateKeySigner::from_bytes(&key.into()).expect("a key"),
                    token: None,
                    sessions: Vec::new(),
                }
            })
            .collect();
        Self {
            targets,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(8))
                .build()
                .unwrap(),
            wallets,
            rng,
            drained: HashSet::new(),
            record: Arc::new(Mutex::new(Record::default())),
            owners: Arc::default(),
        }
    }

    /// Runs until `stop` turns true, then undrains what it drained.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Self {
        let mut next_heartbeat = tokio::time::Instant::now();
        while !*stop.borrow() {
            self.step().await;
            if tokio::time::Instant::now() >= next_heartbeat {
                self.heartbeats().await;
                next_heartbeat = tokio::time::Instant::now() + Duration::from_secs(2);
            }
            let pause = Duration::from_millis(self.rng.random_range(20..150));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        for gpu in std::mem::take(&mut self.drained) {
            self.drain(gpu, false).await;
        }
        self
    }

    /// One action, chosen by weight.
    async fn step(&mut self) {
        let w = self.rng.random_range(0..self.wallets.len());
        if self.wallets[w].token.is_none() {
            self.sign_in(w).await;
            return;
        }
        match self.rng.random_range(0..100) {
            0..12 => self.deposit_eth(w).await,
            12..17 => self.deposit_token(w).await,
            17..47 => self.claim(w).await,
            47..62 => self.stop_one(w).await,
            62..72 => self.look(w).await,
            72..82 => self.adjust_credit(w).await,
            82..86 => self.toggle_drain().await,
            86..90 => self.sign_in(w).await,
            _ => self.go_silent(w).await,
        }
    }

    async fn call(
        &self,
        action: &'static str,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.targets.gate));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        let mut record = self.record.lock().unwrap();
        *record.actions.entry(action).or_default() += 1;
        *record.answers.entry((action, status)).or_default() += 1;
        if status == 500 {
            record
                .server_errors
                .push(format!("{action} {path}: {body}"));
        }
        (status, body)
    }

    async fn sign_in(&mut self, w: usize) {
        let address = self.wallets[w].signer.address();
        let (status, challenge) = self
            .call(
                "nonce",
                reqwest::Method::POST,
                "/api/v1/auth/nonce",
                None,
                Some(json!({ "address": address })),
            )
            .await;
        let Some(message) = challenge["message"].as_str().filter(|_| status == 200) else {
            return;
        };
        let signature = self.wallets[w]
            .signer
            .sign_message_sync(message.as_bytes())
            .unwrap();
        let (status, issued) = self
            .call(
                "verify",
                reqwest::Method::POST,
                "/api/v1/auth/verify",
                None,
                Some(json!({
                    "message": message,
                    "signature": alloy::hex::encode_prefixed(signature.as_bytes()),
                })),
            )
            .await;
        if status == 200
            && let Some(token) = issued["token"].as_str()
        {
            self.wallets[w].token = Some(token.to_string());
        }
    }

    fn provider(&self, w: usize) -> impl Provider + use<> {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(self.wallets[w].signer.clone()))
            .connect_http(self.targets.anvil.parse().unwrap())
    }

    /// Sends ETH to the revenue address: mostly enough for minutes, now and
    /// then only seconds (so that credit runs out mid-session).
    async fn deposit_eth(&mut self, w: usize) {
        // 0.001 ETH buys one GPU-hour (3600 credit-seconds).
        let wei: u64 = if self.rng.random_bool(0.2) {
            self.rng.random_range(3..30) * 1_000_000_000_000
        } else {
            self.rng.random_range(50..400) * 1_000_000_000_000
        };
        let provider = self.provider(w);
        let address = self.wallets[w].signer.address();
        let writes = self.targets.chain_writes.clone();
        let sent = async {
            let _writing = writes.lock().await;
            provider
                .anvil_set_balance(address, U256::from(10u64).pow(U256::from(18)))
                .await
                .ok()?;
            // Held until the transfer is mined: anvil answers with the hash
            // and mines it afterwards, which a reorg must not overlap.
            let receipt = provider
                .send_transaction(
                    TransactionRequest::default()
                        .with_to(self.targets.revenue)
                        .with_value(U256::from(wei)),
                )
                .await
                .ok()?
                .get_receipt()
                .await
                .ok()?;
            Some(receipt.transaction_hash)
        };
        let tx = tokio::time::timeout(Duration::from_secs(8), sent)
            .await
            .ok()
            .flatten();
        self.sent_deposit(w, tx, "eth").await;
    }

    /// Sends the test token to the revenue address (minted first).
    async fn deposit_token(&mut self, w: usize) {
        let units = U256::from(self.rng.random_range(60u64..1200));
        let provider = self.provider(w);
        let address = self.wallets[w].signer.address();
        let token = TestToken::new(self.targets.token, &provider);
        let writes = self.targets.chain_writes.clone();
        let sent = async {
            let _writing = writes.lock().await;
            provider
                .anvil_set_balance(address, U256::from(10u64).pow(U256::from(18)))
                .await
                .ok()?;
            token
                .mint(address, units)
                .send()
                .await
                .ok()?
                .get_receipt()
                .await
                .ok()?;
            // Held until mined, as above.
            let receipt = token
                .transfer(self.targets.revenue, units)
                .send()
                .await
                .ok()?
                .get_receipt()
                .await
                .ok()?;
            Some(receipt.transaction_hash)
        };
        let tx = tokio::time::timeout(Duration::from_secs(8), sent)
            .await
            .ok()
            .flatten();
        self.sent_deposit(w, tx, "token").await;
    }

    /// Records a sent deposit and, half the time, tells the gate about it
    /// (the page does; the chain watcher finds it either way).
    async fn sent_deposit(&mut self, w: usize, tx: Option<B256>, asset: &'static str) {
        let Some(tx) = tx else {
            *self
                .record
                .lock()
                .unwrap()
                .actions
                .entry("deposit-not-sent")
                .or_default() += 1;
            return;
        };
        self.record
            .lock()
            .unwrap()
            .deposits
            .push(SentDeposit { tx, asset });
        if self.rng.random_bool(0.5) {
            let token = self.wallets[w].token.clone();
            self.call(
                "deposit",
                reqwest::Method::POST,
                "/api/v1/deposits",
                token.as_deref(),
                Some(json!({ "tx_hash": tx })),
            )
            .await;
        }
    }

    async fn claim(&mut self, w: usize) {
        let (profile, _) =
            self.targets.profiles[self.rng.random_range(0..self.targets.profiles.len())].clone();
        let attentive = self.rng.random_bool(0.8);
        let token = self.wallets[w].token.clone();
        let (status, claimed) = self
            .call(
                "claim",
                reqwest::Method::POST,
                "/api/v1/sessions",
                token.as_deref(),
                Some(json!({ "profile": profile })),
            )
            .await;
        if status == 401 {
            self.wallets[w].token = None;
        }
        if status == 202
            && let Some(id) = claimed["id"].as_str()
        {
            self.wallets[w].sessions.push((id.to_string(), attentive));
            if let Some(token) = token {
                self.owners.lock().unwrap().insert(id.to_string(), token);
            }
        }
    }

    /// Stops (or leaves the queue with) one of the wallet's sessions.
    async fn stop_one(&mut self, w: usize) {
        if self.wallets[w].sessions.is_empty() {
            return self.claim(w).await;
        }
        let i = self.rng.random_range(0..self.wallets[w].sessions.len());
        let (id, _) = self.wallets[w].sessions[i].clone();
        let token = self.wallets[w].token.clone();
        let (status, _) = self
            .call(
                "stop",
                reqwest::Method::DELETE,
                &format!("/api/v1/sessions/{id}"),
                token.as_deref(),
                None,
            )
            .await;
        if matches!(status, 200 | 202 | 204 | 404) {
            self.wallets[w].sessions.remove(i);
        }
    }

    /// Reads the account and a session, as an open page does; forgets
    /// sessions that ended.
    async fn look(&mut self, w: usize) {
        let token = self.wallets[w].token.clone();
        self.call(
            "account",
            reqwest::Method::GET,
            "/api/v1/account",
            token.as_deref(),
            None,
        )
        .await;
        let sessions = self.wallets[w].sessions.clone();
        for (id, _) in sessions {
            let (status, view) = self
                .call(
                    "show",
                    reqwest::Method::GET,
                    &format!("/api/v1/sessions/{id}"),
                    token.as_deref(),
                    None,
                )
                .await;
            if status == 404 || (status == 200 && view["state"] == "ended") {
                self.wallets[w].sessions.retain(|(s, _)| *s != id);
            }
        }
    }

    /// The wallet's browser stops proving presence for one session.
    async fn go_silent(&mut self, w: usize) {
        if let Some(session) = self.wallets[w].sessions.iter_mut().find(|(_, a)| *a) {
            session.1 = false;
        }
    }

    async fn heartbeats(&mut self) {
        for w in 0..self.wallets.len() {
            let token = self.wallets[w].token.clone();
            let attentive: Vec<String> = self.wallets[w]
                .sessions
                .iter()
                .filter(|(_, a)| *a)
                .map(|(id, _)| id.clone())
                .collect();
            for id in attentive {
                self.call(
                    "heartbeat",
                    reqwest::Method::POST,
                    &format!("/api/v1/sessions/{id}/heartbeat"),
                    token.as_deref(),
                    None,
                )
                .await;
            }
        }
    }

    /// An operator adjustment: mostly small gifts, sometimes a charge, and
    /// one time in five a key sent before (it must apply once).
    async fn adjust_credit(&mut self, w: usize) {
        let address = self.wallets[w].signer.address();
        let repeat = {
            let record = self.record.lock().unwrap();
            let mut keys: Vec<&String> = record.admin_keys.keys().collect();
            keys.sort();
            (!keys.is_empty() && self.rng.random_bool(0.2))
                .then(|| keys[self.rng.random_range(0..keys.len())].clone())
        };
        let (key, body) = match repeat {
            Some(key) => {
                let (address, amount) = parse_key(&key);
                (key, json!({ "address": address, "amount": amount }))
            }
            None => {
                let amount: i64 = if self.rng.random_bool(0.8) {
                    self.rng.random_range(30..600)
                } else {
                    -self.rng.random_range(1..120)
                };
                let nonce: u64 = self.rng.random();
                let key = format!("{address:#x}.{amount}.{nonce:016x}");
                (key, json!({ "address": address, "amount": amount }))
            }
        };
        let mut body = body;
        body["reason"] = json!("chaos campaign adjustment");
        body["idempotency_key"] = json!(key);
        let admin = self.targets.admin_token.clone();
        let (status, _) = self
            .call(
                "admin-credit",
                reqwest::Method::POST,
                "/api/v1/admin/credit",
                Some(&admin),
                Some(body),
            )
            .await;
        let mut record = self.record.lock().unwrap();
        let entry = record.admin_keys.entry(key).or_default();
        entry.sent += 1;
        entry.applied |= status == 200;
    }

    /// Drains a GPU, or undrains one drained earlier.
    async fn toggle_drain(&mut self) {
        if !self.drained.is_empty() && self.rng.random_bool(0.6) {
            let mut drained: Vec<_> = self.drained.iter().copied().collect();
            drained.sort();
            let gpu = drained[self.rng.random_range(0..drained.len())];
            self.drain(gpu, false).await;
        } else {
            let gpu = self.targets.gpus[self.rng.random_range(0..self.targets.gpus.len())];
            self.drain(gpu, true).await;
        }
    }

    async fn drain(&mut self, (host, index): (u16, u32), on: bool) {
        let admin = self.targets.admin_token.clone();
        let (status, _) = self
            .call(
                "admin-drain",
                reqwest::Method::POST,
                &format!("/api/v1/admin/gpus/{host}/{index}/drain"),
                Some(&admin),
                Some(json!({ "drain": on })),
            )
            .await;
        if status == 200 {
            if on {
                self.drained.insert((host, index));
            } else {
                self.drained.remove(&(host, index));
            }
        }
    }

    /// Every session the workload may still hold, with its wallet's token.
    pub fn live_sessions(&self) -> Vec<(String, Option<String>)> {
        self.wallets
            .iter()
            .flat_map(|w| {
                w.sessions
                    .iter()
                    .map(|(id, _)| (id.clone(), w.token.clone()))
            })
            .collect()
    }
}

/// The address and amount an admin key was made from
/// (`<address>.<amount>.<nonce>`).
fn parse_key(key: &str) -> (String, i64) {
    let mut parts = key.split('.');
    let address = parts.next().unwrap().to_string();
    let amount = parts.next().unwrap().parse().unwrap();
    (address, amount)
}
