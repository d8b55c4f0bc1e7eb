//! The fleet test's view of the gate: the operator's admin client and
//! users (wallets) that sign in, get credit from the admin API, claim, keep
//! their sessions present and stop them.
//!
//! Invariants: each wallet's requests come from an address of its own on the
//! rig's bridge (the gate limits sign-ins per client address, as it should);
//! every claimed session gets a heartbeat every 5 s until it is stopped here,
//! so presence never ends one behind the test's back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use serde_json::{Value, json};

use crate::support::api::GateClient;

/// The admin token the test's stack runs with (a Docker secret there).
pub const ADMIN_TOKEN: &str = "a1d3f5e7c9b1a3d5f7e9c1b3a5d7f9e1c3b5a7d9f1e3c5b7a9d1f3e5c7b9a1d3";

/// The gate seen from the test: an admin client, and one client per wallet,
/// each from its own address on the rig's bridge (the gate limits sign-ins
/// per client address, as it should).
pub struct Fleet {
    base: String,
    /// The operator's client (the admin token).
    pub admin: GateClient,
    next_address: Mutex<u8>,
    /// Sessions kept present (heartbeats) until they end: path, token, client.
    present: Arc<Mutex<Vec<(String, String, GateClient)>>>,
}

/// A signed-in, credited wallet.
pub struct User {
    /// Its client, from its own address.
    pub client: GateClient,
    /// Its API token.
    pub token: String,
}

impl Fleet {
    pub fn new(base: &str) -> Self {
        let fleet = Self {
            base: base.to_string(),
            admin: GateClient::new(base),
            next_address: Mutex::new(2),
            present: Arc::default(),
        };
        let present = fleet.present.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let list = present.lock().unwrap().clone();
                for (path, token, client) in list {
                    let _ = client
                        .post(&format!("{path}/heartbeat"), Some(&token), json!({}))
                        .await;
                }
            }
        });
        fleet
    }

    /// A client whose connections come from the next of the bridge's test
    /// addresses.
    pub fn client(&self) -> GateClient {
        let mut next = self.next_address.lock().unwrap();
        let ip = Ipv4Addr::new(10, 215, 0, *next);
        *next = if *next >= 9 { 2 } else { *next + 1 };
        GateClient {
            base: self.base.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .local_address(IpAddr::V4(ip))
                .build()
                .unwrap(),
        }
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let (status, body) = self
            .admin
            .call(reqwest::Method::GET, path, Some(ADMIN_TOKEN), None)
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// `GET /api/v1/admin/hosts`: name → (state, GPUs, number).
    pub async fn hosts(&self) -> BTreeMap<String, (String, usize, u64)> {
        let body = self.admin_get("/api/v1/admin/hosts").await;
        body["hosts"]
            .as_array()
            .unwrap_or_else(|| panic!("no hosts list: {body}"))
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap_or_default().to_string(),
                    (
                        h["state"].as_str().unwrap_or_default().to_string(),
                        h["gpus"].as_array().map_or(0, Vec::len),
                        h["number"].as_u64().unwrap_or(u64::MAX),
                    ),
                )
            })
            .collect()
    }

    /// Waits until the hosts list satisfies `done`; returns it.
    pub async fn wait_hosts(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&BTreeMap<String, (String, usize, u64)>) -> bool,
    ) -> BTreeMap<String, (String, usize, u64)> {
        let deadline = Instant::now() + within;
        loop {
            let hosts = self.hosts().await;
            if done(&hosts) {
                return hosts;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {within:?}: {hosts:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A new wallet, signed in from its own address and credited an hour
    /// of one GPU by the admin API.
    pub async fn user(&self) -> User {
        let client = self.client();
        let signer = PrivateKeySigner::random();
        let token = client.sign_in(&signer).await;
        let address = signer.address().to_string();
        let (status, body) = self
            .admin
            .post(
                "/api/v1/admin/credit",
                Some(ADMIN_TOKEN),
                json!({
                    "address": address,
                    "amount": 3600,
                    "reason": "fleet test",
                    "idempotency_key": format!("fleet-{address}"),
                }),
            )
            .await;
        assert_eq!(status, 200, "admin credit: {body}");
        User { client, token }
    }

    /// Claims `profile` as `user` (202); the session's path. It is kept
    /// present until it ends.
    pub async fn claim(&self, user: &User, profile: &str) -> String {
        let (status, body) = user
            .client
            .post(
                "/api/v1/sessions",
                Some(&user.token),
                json!({ "profile": profile }),
            )
            .await;
        assert_eq!(status, 202, "claim {profile}: {body}");
        let path = format!("/api/v1/sessions/{}", body["id"].as_str().unwrap());
        self.present
            .lock()
            .unwrap()
            .push((path.clone(), user.token.clone(), user.client.clone()));
        path
    }

    /// The session as its user reads it.
    pub async fn session(&self, user: &User, path: &str) -> Value {
        let (status, body) = user
            .client
            .call(reqwest::Method::GET, path, Some(&user.token), None)
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Waits until the session is `state`; returns it.
    pub async fn wait_state(
        &self,
        user: &User,
        path: &str,
        state: &str,
        within: Duration,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.session(user, path).await;
            if body["state"] == state {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} is not {state} within {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The host number the gate placed session `path` on (admin list).
    pub async fn host_of(&self, path: &str) -> u64 {
        let id = path.rsplit('/').next().unwrap();
        let body = self.admin_get("/api/v1/admin/sessions").await;
        body["sessions"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["id"] == id))
            .and_then(|s| s["host"].as_u64())
            .unwrap_or_else(|| panic!("session {id} has no host: {body}"))
    }

    /// The user stops the session; waits until it ended; returns it.
    pub async fn stop(&self, user: &User, path: &str) -> Value {
        let (status, body) = user
            .client
            .call(reqwest::Method::DELETE, path, Some(&user.token), None)
            .await;
        assert!(status == 200 || status == 202, "stop: {status} {body}");
        let ended = self
            .wait_state(user, path, "ended", Duration::from_secs(30))
            .await;
        self.present.lock().unwrap().retain(|(p, _, _)| p != path);
        ended
    }
}
